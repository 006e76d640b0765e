// Global save planning, as DCP's DefaultSavePlanner does it on the
// coordinator: merge every rank's local plan, keep one copy of each
// replicated item, check that each tensor's chunks tile it, and lay out the
// metadata. Pure: no I/O, no collectives (the engine moves plans between
// ranks).
#ifndef DCPP_PLAN_SAVE_PLANNER_H_
#define DCPP_PLAN_SAVE_PLANNER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/status.h"

namespace dcpp::plan {

// One item a rank can write: a tensor chunk, or a whole non-tensor value.
struct PlannedItem {
  std::string fqn;
  ObjectPath path;
  bool is_tensor = false;
  DType dtype = DType::kFloat32;  // tensors only
  Shape offsets;                  // tensors: the chunk within the global tensor
  Shape sizes;
  Shape global_shape;
  uint64_t nbytes = 0;  // bytes the item stores (tensor chunk bytes, or the value's archive)
};

struct LocalPlan {
  std::vector<PlannedItem> items;
};

struct GlobalPlan {
  // For each rank, the indices (into its LocalPlan::items) it must write.
  std::vector<std::vector<size_t>> keep;
  // The checkpoint's entries in DCP's order (plans in rank order, items in
  // plan order, first occurrence of each FQN); storage info still empty.
  Metadata metadata;
  // Where each written item lands in `metadata`: for rank r and its k-th kept
  // item, slots[r][k] = {entry index, chunk index} (chunk index is unused for
  // BYTE_IO entries).
  std::vector<std::vector<std::pair<size_t, size_t>>> slots;
};

struct DedupOptions {
  // DCP's dedup_save_to_lowest_rank: replicated items are written by the
  // lowest rank holding them. Default: by the rank with the fewest bytes
  // planned so far (DCP's default; dcpp weighs items by their own bytes, not
  // by the global tensor size as DCP does).
  bool to_lowest_rank = false;
};

// Merges `plans` (element r from rank r). Items with the same (FQN, chunk
// offsets) on several ranks are replicas: one rank writes each. Errors
// (InvalidArgument, naming the FQN and the ranks involved): an FQN that is a
// tensor on one rank and a value on another, or whose dtype or global shape
// differs between ranks; chunks outside the tensor, overlapping, or not
// covering it. O(n log n) in the number of items.
Result<GlobalPlan> CreateGlobalSavePlan(const std::vector<LocalPlan>& plans,
                                        const DedupOptions& options = {});

}  // namespace dcpp::plan

#endif  // DCPP_PLAN_SAVE_PLANNER_H_
