// Staging for async saves: a reusable block of host memory (StagingPool)
// and the snapshot of a state dict copied into it (Stage).
#ifndef DCPP_ENGINE_STAGING_H_
#define DCPP_ENGINE_STAGING_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "dcpp/status.h"
#include "dcpp/value.h"

namespace dcpp::engine {

// Anonymous mappings reused from save to save. Tensors staged into a
// mapping hold a reference to it (their owner), which is what marks it in
// use: Reserve() picks a mapping nobody else references that is big enough
// (so a snapshot still being written is never overwritten, and with one
// save in flight at a time the same mapping serves every save), and maps a
// new one only when none is free and large enough, unmapping the free ones
// that were too small. Not thread-safe: one staging at a time (snapshots
// may be released on any thread).
class StagingPool {
 public:
  struct Options {
    uint64_t max_bytes = 0;    // 0 = no cap
    bool lock_memory = false;  // mlock the mapping
  };
  explicit StagingPool(Options options) : options_(options) {}

  // Makes a free mapping of at least `bytes` current; ResourceExhausted
  // when the pool's mappings would pass the cap, or mapping or mlock fails.
  // *grew tells whether it had to map memory.
  Status Reserve(uint64_t bytes, bool* grew);

  // The current mapping (after Reserve).
  uint64_t capacity() const { return current_ ? current_->size : 0; }
  uint8_t* data() const { return current_ ? current_->base : nullptr; }
  // Keeps the current mapping alive and in use (the owner of staged tensors).
  std::shared_ptr<void> keepalive() const { return current_; }
  // Bytes of all mappings, in use or not.
  uint64_t total_bytes() const;

 private:
  struct Region {
    uint8_t* base = nullptr;
    uint64_t size = 0;
    bool locked = false;
    ~Region();
  };
  Options options_;
  std::vector<std::shared_ptr<Region>> regions_;
  std::shared_ptr<Region> current_;
};

struct StageResult {
  Value staged;         // same tree; tensors live in the pool
  uint64_t bytes = 0;   // tensor bytes copied
  bool pool_grew = false;
};

// Copies `state_dict` into `pool`: top-level Stateful objects are replaced
// by their StateDict() (called here, on the caller's thread), every tensor
// and ShardedTensor shard is copied into the pool on up to `threads`
// threads (0: min(8, hardware threads); fewer for small states, where
// starting threads costs more than it saves) (dense tensors, transposed ones included, keep their layout and
// are copied in pieces of a few MiB; others become contiguous), and every
// other value is copied. After it returns the caller may change the
// original freely. The staged tensors reference pool memory: do not stage
// again until the previous snapshot is no longer used.
Result<StageResult> Stage(const Value& state_dict, StagingPool& pool, int threads);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_STAGING_H_
