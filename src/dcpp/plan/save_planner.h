// Global save planning, as DCP's DefaultSavePlanner does it on the
// coordinator: merge every rank's local plan, keep one copy of each
// replicated item, check that each tensor's chunks tile it, and lay out the
// metadata. Pure: no I/O, no collectives (the engine moves plans between
// ranks).
#ifndef DCPP_PLAN_SAVE_PLANNER_H_
#define DCPP_PLAN_SAVE_PLANNER_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/status.h"

namespace dcpp::plan {

// One item a rank can write: a tensor chunk, or a whole non-tensor value.
// A view into the LocalPlan that handed it out: valid until that plan is
// changed or destroyed.
struct PlannedItem {
  std::string_view fqn;
  bool is_tensor = false;
  DType dtype = DType::kFloat32;     // tensors only
  std::span<const int64_t> offsets;  // tensors: the chunk within the global tensor
  std::span<const int64_t> sizes;
  std::span<const int64_t> global_shape;
  uint64_t nbytes = 0;  // bytes the item stores (tensor chunk bytes, or the value's archive)
};

// A rank's items, in plan order. Stored in a few flat buffers rather than
// several heap blocks per item, because the coordinator of a large job holds
// one plan per rank (millions of items in all). Each item's ObjectPath is
// kept in a compact encoding (usually a byte or two: the path is recovered
// from the FQN) and decoded on request. Not thread-safe for writing; const
// methods may be called concurrently.
class LocalPlan {
 public:
  // Appends a tensor chunk. REQUIRES: fqn and each shape shorter than 2^32
  // (elements); `path` is the state dict path that produced `fqn`.
  void AddTensor(std::string_view fqn, const ObjectPath& path, DType dtype,
                 std::span<const int64_t> offsets, std::span<const int64_t> sizes,
                 std::span<const int64_t> global_shape, uint64_t nbytes);
  // Appends a non-tensor value (stored as `nbytes` of torch.save archive).
  void AddValue(std::string_view fqn, const ObjectPath& path, uint64_t nbytes);

  // Appends an item whose path is given in this class's compact encoding
  // (as EncodedPath returns it), for decoders of plans sent between ranks.
  // `item.offsets/sizes/global_shape` are ignored for values. DataLoss
  // (nothing appended) when the encoding is malformed or does not fit the
  // FQN, or a length exceeds 2^32 - 1.
  Status AddEncoded(const PlannedItem& item, std::string_view encoded_path);

  // Capacity hints: `items` items holding `text_bytes` bytes of FQNs and
  // encoded paths and `dims` shape elements in all.
  void Reserve(size_t items, size_t text_bytes, size_t dims);

  size_t size() const { return items_.size(); }
  bool empty() const { return items_.empty(); }
  // REQUIRES: i < size().
  PlannedItem item(size_t i) const {
    const Item& it = items_[i];
    const int64_t* d = dims_.data() + it.dims;
    return {std::string_view(text_.data() + it.text, it.fqn_size),
            it.is_tensor,
            it.dtype,
            {d, it.ndim[0]},
            {d + it.ndim[0], it.ndim[1]},
            {d + it.ndim[0] + it.ndim[1], it.ndim[2]},
            it.nbytes};
  }
  std::string_view fqn(size_t i) const {
    return std::string_view(text_.data() + items_[i].text, items_[i].fqn_size);
  }
  ObjectPath path(size_t i) const;
  std::string_view EncodedPath(size_t i) const {
    return std::string_view(text_.data() + items_[i].text + items_[i].fqn_size,
                            items_[i].path_size);
  }

 private:
  struct Item {
    uint64_t nbytes;
    uint64_t text;  // fqn, then encoded path, at text_[text]
    uint64_t dims;  // offsets, sizes, global_shape at dims_[dims]
    uint32_t fqn_size;
    uint32_t path_size;
    uint32_t ndim[3];
    bool is_tensor;
    DType dtype;
  };
  void Add(const PlannedItem& item, std::string_view encoded_path);

  std::vector<Item> items_;
  std::string text_;
  std::vector<int64_t> dims_;
};

struct GlobalPlan {
  // For each rank, the indices (into its LocalPlan) it must write, ascending.
  std::vector<std::vector<size_t>> keep;
  // The checkpoint's entries in DCP's order (plans in rank order, items in
  // plan order, first occurrence of each FQN); storage info still empty.
  Metadata metadata;
  // Where each written item lands in `metadata`: for rank r and its k-th kept
  // item, slots[r][k] = {entry index, chunk index} (chunk index is unused for
  // BYTE_IO entries).
  std::vector<std::vector<std::pair<size_t, size_t>>> slots;
};

struct GlobalPlanOptions {
  // DCP's dedup_save_to_lowest_rank: replicated items are written by the
  // lowest rank holding them. Default: by the rank with the fewest bytes
  // planned so far (DCP's default; dcpp weighs items by their own bytes, not
  // by the global tensor size as DCP does).
  bool to_lowest_rank = false;
  // Threads for the parts that parallelize (building and checking the
  // entries' chunk lists); 0: DefaultThreadCount(). The result does not
  // depend on it.
  int threads = 0;
};

// Merges `plans` (element r from rank r). Items with the same (FQN, chunk
// offsets) on several ranks are replicas: one rank writes each; replicas
// are decided in order of first appearance (ranks ascending, items in plan
// order). Errors (InvalidArgument, naming the FQN and the ranks involved):
// an FQN that is a tensor on one rank and a value on another, or whose
// dtype or global shape differs between ranks; chunks outside the tensor,
// overlapping, or not covering it. ResourceExhausted with 2^32 or more items
// in all. O(n log n) in the number of items, O(n) when each tensor's chunks
// arrive in rank order along one dimension (the usual row or column shard).
Result<GlobalPlan> CreateGlobalSavePlan(const std::vector<LocalPlan>& plans,
                                        const GlobalPlanOptions& options = {});

}  // namespace dcpp::plan

#endif  // DCPP_PLAN_SAVE_PLANNER_H_
