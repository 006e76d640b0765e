// What a SavePlanCache (include/dcpp/checkpoint.h) remembers between saves,
// and the fingerprint that decides whether it still applies.
#ifndef DCPP_ENGINE_PLAN_CACHE_H_
#define DCPP_ENGINE_PLAN_CACHE_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "dcpp/checkpoint.h"
#include "dcpp/plan/save_planner.h"

namespace dcpp::engine {

// 128 bits over a rank's encoded local plan: equal fingerprints stand for
// equal plans (two independent 64-bit hashes, so a false match is
// vanishingly unlikely).
struct PlanFingerprint {
  uint64_t a = 0, b = 0;
  bool operator==(const PlanFingerprint&) const = default;
};
PlanFingerprint FingerprintPlan(std::string_view encoded_local_plan);

}  // namespace dcpp::engine

namespace dcpp {

struct SavePlanCache::State {
  // Every rank: the fingerprint its last successful save sent, and the
  // group size it was sent in.
  bool valid = false;
  engine::PlanFingerprint fingerprint;
  int group_size = 0;
  // The coordinator: that save's global plan (storage infos are
  // overwritten by every save) and every rank's fingerprint.
  bool has_global = false;
  bool dedup_to_lowest_rank = false;
  std::vector<engine::PlanFingerprint> fingerprints;
  plan::GlobalPlan global;

  uint64_t hits = 0, misses = 0;
};

}  // namespace dcpp

#endif  // DCPP_ENGINE_PLAN_CACHE_H_
