#include "dcpp/engine/staging.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "dcpp/base/thread_pool.h"
#include "dcpp/stateful.h"

namespace dcpp::engine {
namespace {

constexpr uint64_t kAlignment = 64;               // each tensor starts on a cache line
constexpr uint64_t kGranule = uint64_t{2} << 20;  // the pool grows in huge-page steps
constexpr size_t kPiece = size_t{4} << 20;        // copy tasks of at most this many bytes

uint64_t RoundUp(uint64_t n, uint64_t to) { return (n + to - 1) / to * to; }

constexpr uint64_t kBytesPerThread = uint64_t{16} << 20;  // below this, fewer threads

std::string MiB(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

// Every tensor of the (copied) tree, in a stable order.
void CollectTensors(Value& v, std::vector<Tensor*>* out) {
  switch (v.kind()) {
    case Value::Kind::kTensor:
      out->push_back(&v.tensor());
      break;
    case Value::Kind::kSharded:
      for (auto& shard : v.sharded().shards) out->push_back(&shard.local);
      break;
    case Value::Kind::kDict:
      for (Value& child : v.dict().mutable_values()) CollectTensors(child, out);
      break;
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (Value& child : v.items()) CollectTensors(child, out);
      break;
    default:
      break;
  }
}

// One copy into the pool: a byte range of a dense tensor, or a whole
// non-dense tensor made contiguous.
struct CopyTask {
  const uint8_t* src = nullptr;
  uint8_t* dst = nullptr;
  size_t bytes = 0;
  const TensorView* strided_src = nullptr;  // set for a non-dense tensor
  TensorView contiguous_dst;
};

}  // namespace

StagingPool::Region::~Region() {
  if (base == nullptr) return;
  if (locked) munlock(base, size);
  munmap(base, size);
}

uint64_t StagingPool::total_bytes() const {
  uint64_t total = 0;
  for (const auto& r : regions_) total += r->size;
  return total;
}

Status StagingPool::Reserve(uint64_t bytes, bool* grew) {
  *grew = false;
  current_.reset();
  // A mapping only the pool references is free (its snapshot is gone).
  auto is_free = [](const std::shared_ptr<Region>& r) { return r.use_count() == 1; };
  for (const auto& r : regions_) {
    if (is_free(r) && r->size >= bytes) {
      current_ = r;
      return Status();
    }
  }
  // None fits: the free ones are too small and go first, so growing does
  // not need old and new at once.
  std::erase_if(regions_, is_free);
  uint64_t size = RoundUp(std::max<uint64_t>(bytes, 1), kGranule);
  const uint64_t in_use = total_bytes();
  if (options_.max_bytes != 0) {
    if (in_use + bytes > options_.max_bytes) {
      return ResourceExhaustedError(
          "staging the state needs " + std::to_string(bytes) + " bytes (" + MiB(bytes) + ")" +
          (in_use ? " besides " + std::to_string(in_use) + " bytes still in use by earlier saves"
                  : std::string()) +
          ", more than the pool's cap of " + std::to_string(options_.max_bytes) +
          " bytes (AsyncCheckpointerOptions.max_staging_bytes)");
    }
    size = std::min(size, options_.max_bytes - in_use);
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return ResourceExhaustedError("could not map a staging pool of " + MiB(size) + ": " +
                                  std::strerror(errno));
  }
  auto region = std::make_shared<Region>();
  region->base = static_cast<uint8_t*>(p);
  region->size = size;
#ifdef MADV_HUGEPAGE
  // Fewer page faults on the first staging (a hint; failure is harmless).
  (void)madvise(p, size, MADV_HUGEPAGE);
#endif
  if (options_.lock_memory) {
    if (mlock(p, size) != 0) {
      return ResourceExhaustedError("could not mlock a staging pool of " + MiB(size) + ": " +
                                    std::strerror(errno) +
                                    " (raise RLIMIT_MEMLOCK, `ulimit -l`, or turn lock_memory off)");
    }
    region->locked = true;
  }
  regions_.push_back(region);
  current_ = std::move(region);
  *grew = true;
  return Status();
}

Result<StageResult> Stage(const Value& state_dict, StagingPool& pool, int threads) {
  StageResult result;
  // The tree is copied first (a shallow copy for tensors, a deep one for
  // everything else), with top-level Stateful objects asked for their state
  // now: the snapshot is of the call.
  result.staged = state_dict;
  if (result.staged.is_dict()) {
    const Dict& d = result.staged.dict();
    for (size_t i = 0; i < d.size(); ++i) {
      Value& v = result.staged.dict().mutable_values()[i];
      if (v.kind() != Value::Kind::kStateful) continue;
      Result<Value> sd = v.stateful()->StateDict();
      if (!sd.ok()) {
        return sd.status().WithContext("staging: StateDict() of the Stateful at key " +
                                       d.keys()[i].DebugString());
      }
      v = std::move(*sd);
    }
  }
  std::vector<Tensor*> tensors;
  CollectTensors(result.staged, &tensors);

  std::vector<uint64_t> offsets(tensors.size());
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    offsets[i] = total;
    total = RoundUp(total + tensors[i]->nbytes(), kAlignment);
  }
  DCPP_RETURN_IF_ERROR(pool.Reserve(total, &result.pool_grew));

  // Source views are kept here, so a task can point at one while the tree's
  // tensor is replaced by its staged copy.
  std::vector<TensorView> sources(tensors.size());
  std::vector<CopyTask> tasks;
  for (size_t i = 0; i < tensors.size(); ++i) {
    sources[i] = tensors[i]->view();
    const TensorView& src = sources[i];
    uint8_t* dst = pool.data() + offsets[i];
    const size_t n = src.nbytes();
    TensorView staged = src;
    staged.data = dst;
    if (n > 0 && src.is_dense()) {
      for (size_t at = 0; at < n; at += kPiece) {
        CopyTask t;
        t.src = static_cast<const uint8_t*>(src.data) + at;
        t.dst = dst + at;
        t.bytes = std::min(kPiece, n - at);
        tasks.push_back(t);
      }
    } else if (n > 0) {
      staged = MakeView(dst, src.dtype, src.shape);
      CopyTask t;
      t.strided_src = &src;
      t.contiguous_dst = staged;
      t.bytes = n;
      tasks.push_back(t);
    }
    *tensors[i] = Tensor::Adopt(staged, pool.keepalive());
    result.bytes += n;
  }
  // Big pieces first, so the threads finish together.
  std::stable_sort(tasks.begin(), tasks.end(), [](const CopyTask& a, const CopyTask& b) {
    return a.bytes > b.bytes;
  });
  if (threads <= 0) threads = DefaultThreadCount();
  threads = static_cast<int>(std::clamp<uint64_t>(total / kBytesPerThread, 1, threads));
  DCPP_RETURN_IF_ERROR(ParallelFor(tasks.size(), threads, [&](size_t k) -> Status {
    const CopyTask& t = tasks[k];
    if (t.strided_src != nullptr) return CopyTensor(*t.strided_src, t.contiguous_dst);
    std::memcpy(t.dst, t.src, t.bytes);
    return Status();
  }));
  return result;
}

}  // namespace dcpp::engine
