#include "dcpp/plan/compact_load_planner.h"

#include <algorithm>
#include <unordered_map>

#include "dcpp/plan/validate.h"

namespace dcpp::plan {
namespace {

using format::CompactEntry;
using format::CompactMetadata;

std::string Quoted(std::string_view fqn) { return "'" + std::string(fqn) + "'"; }

// As load_planner.cc's CheckTiling, over the flat coordinates.
Status CheckTiling(const CompactEntry& e) {
  for (int64_t d : e.size)
    if (d < 0)
      return DataLossError(Quoted(e.fqn) + ": the checkpoint declares the shape " +
                           ShapeToString(e.size) + ", with a negative dimension");
  std::vector<BoxView> views;
  views.reserve(e.num_chunks());
  for (size_t k = 0; k < e.num_chunks(); ++k) views.push_back({e.offsets(k), e.sizes(k)});
  Status s = ValidateChunkViews(e.fqn, e.size, views, /*require_full_coverage=*/true);
  if (s.ok()) return s;
  return DataLossError("the checkpoint's chunks do not tile the tensor they belong to: " +
                       s.message());
}

bool Inside(const Box& box, const Shape& shape) {
  for (size_t d = 0; d < shape.size(); ++d)
    if (box.offsets[d] < 0 || box.sizes[d] < 0 || box.offsets[d] > shape[d] ||
        box.sizes[d] > shape[d] - box.offsets[d])
      return false;
  return true;
}

int64_t CoveredElements(const Box& box, const Shape& shape) {
  int64_t n = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    const int64_t lo = std::max<int64_t>(box.offsets[d], 0);
    const int64_t hi = std::min<int64_t>(box.offsets[d] + box.sizes[d], shape[d]);
    n *= std::max<int64_t>(hi - lo, 0);
  }
  return n;
}

// plan::Intersect for a chunk seen through spans; false when they do not
// overlap (then `out` is unspecified).
bool Overlap(std::span<const int64_t> offsets, std::span<const int64_t> sizes, const Box& b,
             Box* out) {
  const size_t nd = offsets.size();
  for (size_t d = 0; d < nd; ++d) {
    const int64_t lo = std::max(offsets[d], b.offsets[d]);
    const int64_t hi = std::min(offsets[d] + sizes[d], b.offsets[d] + b.sizes[d]);
    if (hi <= lo) return false;
  }
  out->offsets.resize(nd);
  out->sizes.resize(nd);
  for (size_t d = 0; d < nd; ++d) {
    const int64_t lo = std::max(offsets[d], b.offsets[d]);
    out->offsets[d] = lo;
    out->sizes[d] = std::min(offsets[d] + sizes[d], b.offsets[d] + b.sizes[d]) - lo;
  }
  return true;
}

}  // namespace

Result<CompactReadPlan> PlanCompactReads(const CompactMetadata& md,
                                         std::span<const CompactRequest> requests) {
  CompactReadPlan plan;
  std::vector<bool> checked(md.entries.size(), false);
  // (entry, chunk) -> index into plan.reads.
  std::unordered_map<uint64_t, size_t> read_index;
  for (size_t r = 0; r < requests.size(); ++r) {
    const CompactRequest& req = requests[r];
    if (req.entry >= md.entries.size() || !md.entries[req.entry].is_tensor())
      return InvalidArgumentError("load planning: request " + std::to_string(r) +
                                  " names no tensor entry");
    const CompactEntry& e = md.entries[req.entry];
    const size_t nd = e.dims();
    if (req.box.offsets.size() != nd || req.box.sizes.size() != nd)
      return InvalidArgumentError(Quoted(e.fqn) + ": the requested box has offsets " +
                                  ShapeToString(req.box.offsets) + " and sizes " +
                                  ShapeToString(req.box.sizes) + ", the tensor has " +
                                  std::to_string(nd) + " dimensions");
    for (int64_t d : req.box.sizes)
      if (d < 0)
        return InvalidArgumentError(Quoted(e.fqn) + ": the requested box has negative sizes " +
                                    ShapeToString(req.box.sizes));
    if (!checked[req.entry]) {
      checked[req.entry] = true;
      DCPP_RETURN_IF_ERROR(CheckTiling(e));
    }
    if (!Inside(req.box, e.size)) {
      return DataLossError(Quoted(e.fqn) + ": the checkpoint's chunks cover " +
                           std::to_string(CoveredElements(req.box, e.size)) + " of the " +
                           std::to_string(NumElements(req.box.sizes)) + " elements requested");
    }
    Box overlap;
    for (size_t i = 0; i < e.num_chunks(); ++i) {
      if (!Overlap(e.offsets(i), e.sizes(i), req.box, &overlap)) continue;
      const uint64_t key = (static_cast<uint64_t>(req.entry) << 32) | i;
      auto [it, fresh] = read_index.try_emplace(key, plan.reads.size());
      if (fresh) plan.reads.push_back({req.entry, i, {}});
      plan.reads[it->second].pieces.push_back({r, std::move(overlap)});
      overlap = Box();
    }
  }
  return plan;
}

Result<PrunedLoad> PlanLoad(const CompactMetadata& md, std::span<const CompactRequest> requests,
                            std::span<const size_t> values) {
  for (size_t v : values)
    if (v >= md.entries.size() || md.entries[v].is_tensor())
      return InvalidArgumentError("load planning: value " + std::to_string(v) +
                                  " names no bytes entry");
  DCPP_ASSIGN_OR_RETURN(CompactReadPlan compact, PlanCompactReads(md, requests));

  // Which entries are kept, and for each the chunks read, in plan order.
  constexpr uint32_t kUnused = UINT32_MAX;
  std::vector<uint32_t> slot(md.entries.size(), kUnused);
  for (const CompactRequest& r : requests) slot[r.entry] = 0;
  for (size_t v : values) slot[v] = 0;
  std::vector<size_t> kept;
  for (size_t e = 0; e < md.entries.size(); ++e) {
    if (slot[e] == kUnused) continue;
    slot[e] = static_cast<uint32_t>(kept.size());
    kept.push_back(e);
  }
  std::vector<std::vector<uint32_t>> chunks(kept.size());
  std::vector<size_t> renumbered(compact.reads.size());
  for (size_t i = 0; i < compact.reads.size(); ++i) {
    std::vector<uint32_t>& list = chunks[slot[compact.reads[i].entry]];
    renumbered[i] = list.size();
    list.push_back(static_cast<uint32_t>(compact.reads[i].chunk));
  }

  PrunedLoad out;
  out.metadata = std::make_unique<Metadata>();
  Metadata& pruned = *out.metadata;
  pruned.entries.reserve(kept.size());
  for (size_t k = 0; k < kept.size(); ++k)
    pruned.entries.push_back(md.ExpandEntry(kept[k], chunks[k]));
  pruned.storage_meta = md.storage_meta;
  pruned.version = md.version;

  out.requests.reserve(requests.size());
  for (const CompactRequest& r : requests)
    out.requests.push_back({&pruned.entries[slot[r.entry]], r.box});
  out.values.reserve(values.size());
  for (size_t v : values) out.values.push_back(&pruned.entries[slot[v]]);
  out.plan.reads.reserve(compact.reads.size());
  for (size_t i = 0; i < compact.reads.size(); ++i) {
    CompactChunkRead& r = compact.reads[i];
    out.plan.reads.push_back(
        {&pruned.entries[slot[r.entry]], renumbered[i], std::move(r.pieces)});
  }
  return out;
}

}  // namespace dcpp::plan
