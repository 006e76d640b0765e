// Load planning over the compact form of `.metadata`
// (format/compact_metadata.h), for loads at scale: a rank plans its reads
// over the whole checkpoint's chunks held compactly, then keeps only the
// entries it loads, each with only the chunks it reads.
//
// PlanCompactReads is load_planner.h's PlanTensorReads over that form: the
// same checks, errors and plan (reads in the same order, with the same
// pieces). PlanLoad then expands the result into the TensorReadPlan the
// engine runs, over a Metadata that holds only what the plan needs, so the
// compact form can be freed before any data is read. Pure: no I/O.
#ifndef DCPP_PLAN_COMPACT_LOAD_PLANNER_H_
#define DCPP_PLAN_COMPACT_LOAD_PLANNER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "dcpp/format/compact_metadata.h"
#include "dcpp/metadata.h"
#include "dcpp/plan/load_planner.h"
#include "dcpp/plan/reshard.h"
#include "dcpp/status.h"

namespace dcpp::plan {

// One destination: the part `box` of the global tensor of entry `entry`
// (an index into CompactMetadata::entries).
struct CompactRequest {
  size_t entry = 0;
  Box box;
};

struct CompactChunkRead {
  size_t entry = 0;  // index into CompactMetadata::entries
  size_t chunk = 0;  // chunk index within that entry
  std::vector<ChunkRead::Piece> pieces;
};

struct CompactReadPlan {
  std::vector<CompactChunkRead> reads;  // in PlanTensorReads' order
};

// PlanTensorReads (load_planner.h) over `md`: the same errors for the same
// input, plus InvalidArgument for an entry index out of range. Cost: the
// tiling check O(c log c) once per distinct entry with c chunks (O(c) when
// they arrive sorted), plus O(c) per request. Thread-safe.
Result<CompactReadPlan> PlanCompactReads(const format::CompactMetadata& md,
                                         std::span<const CompactRequest> requests);

// What a rank keeps of the metadata once its load is planned.
struct PrunedLoad {
  // Entries the requests and `values` name (in md's order), each with only
  // the chunks `plan` reads (in the order the plan first reads them), plus
  // md's storage_meta and version. Heap-allocated so the pointers below
  // stay valid when a PrunedLoad moves.
  std::unique_ptr<Metadata> metadata;
  std::vector<TensorRequest> requests;   // the requests given, into `metadata`
  std::vector<const EntryMeta*> values;  // the values given, into `metadata`
  TensorReadPlan plan;                   // PlanTensorReads' plan, into `metadata`
};

// PlanCompactReads, then the pruning above. `values` are indices of bytes
// entries (InvalidArgument if out of range or a tensor). PlanTensorReads on
// the whole Metadata gives the same plan up to the chunks' renumbering.
Result<PrunedLoad> PlanLoad(const format::CompactMetadata& md,
                            std::span<const CompactRequest> requests,
                            std::span<const size_t> values);

}  // namespace dcpp::plan

#endif  // DCPP_PLAN_COMPACT_LOAD_PLANNER_H_
