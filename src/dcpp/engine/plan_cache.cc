#include "dcpp/engine/plan_cache.h"

#include <cstring>

namespace dcpp {

SavePlanCache::SavePlanCache() : state_(std::make_unique<State>()) {}
SavePlanCache::~SavePlanCache() = default;
uint64_t SavePlanCache::hits() const { return state_->hits; }
uint64_t SavePlanCache::misses() const { return state_->misses; }

namespace engine {
namespace {

uint64_t Mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

// A multiply-rotate hash over 8-byte words; two seeds give two
// independent 64-bit values.
uint64_t Hash(std::string_view s, uint64_t seed, uint64_t mul) {
  uint64_t h = seed ^ (s.size() * mul);
  size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    uint64_t w;
    std::memcpy(&w, s.data() + i, 8);
    h = (h ^ Mix(w * mul)) * 0x9e3779b97f4a7c15ULL;
    h = (h << 31) | (h >> 33);
  }
  uint64_t tail = 0;
  std::memcpy(&tail, s.data() + i, s.size() - i);
  h = (h ^ Mix(tail * mul + s.size() - i)) * 0x9e3779b97f4a7c15ULL;
  return Mix(h);
}

}  // namespace

PlanFingerprint FingerprintPlan(std::string_view encoded) {
  return {Hash(encoded, 0x243f6a8885a308d3ULL, 0x87c37b91114253d5ULL),
          Hash(encoded, 0x13198a2e03707344ULL, 0x4cf5ad432745937fULL)};
}

}  // namespace engine
}  // namespace dcpp
