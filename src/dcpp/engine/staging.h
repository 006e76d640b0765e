// Staging for async saves: a reusable block of host memory (StagingPool)
// and the snapshot of a state dict copied into it (Stage).
#ifndef DCPP_ENGINE_STAGING_H_
#define DCPP_ENGINE_STAGING_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "dcpp/status.h"
#include "dcpp/value.h"

namespace dcpp::engine {

// One anonymous mapping, reused from save to save. Reserve() reallocates it
// only when asked for more than it holds. Tensors staged into it hold a
// reference to the mapping, so a reallocation never frees memory a save in
// flight still writes from. Not thread-safe: one staging at a time.
class StagingPool {
 public:
  struct Options {
    uint64_t max_bytes = 0;    // 0 = no cap
    bool lock_memory = false;  // mlock the mapping
  };
  explicit StagingPool(Options options) : options_(options) {}

  // Makes at least `bytes` available; ResourceExhausted past the cap, when
  // the mapping fails, or when mlock fails. *grew tells whether it had to
  // reallocate.
  Status Reserve(uint64_t bytes, bool* grew);

  uint64_t capacity() const { return region_ ? region_->size : 0; }
  uint8_t* data() const { return region_ ? region_->base : nullptr; }
  // Keeps the current mapping alive (the owner of staged tensors).
  std::shared_ptr<void> keepalive() const { return region_; }

 private:
  struct Region {
    uint8_t* base = nullptr;
    uint64_t size = 0;
    bool locked = false;
    ~Region();
  };
  Options options_;
  std::shared_ptr<Region> region_;
};

struct StageResult {
  Value staged;         // same tree; tensors live in the pool
  uint64_t bytes = 0;   // tensor bytes copied
  bool pool_grew = false;
};

// Copies `state_dict` into `pool`: top-level Stateful objects are replaced
// by their StateDict() (called here, on the caller's thread), every tensor
// and ShardedTensor shard is copied into the pool on up to `threads`
// threads (dense tensors, transposed ones included, keep their layout and
// are copied in pieces of a few MiB; others become contiguous), and every
// other value is copied. After it returns the caller may change the
// original freely. The staged tensors reference pool memory: do not stage
// again until the previous snapshot is no longer used.
Result<StageResult> Stage(const Value& state_dict, StagingPool& pool, int threads);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_STAGING_H_
