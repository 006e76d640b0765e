#include "dcpp/plan/load_planner.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_set>

#include "dcpp/plan/validate.h"

namespace dcpp::plan {
namespace {

std::string Quoted(std::string_view fqn) { return "'" + std::string(fqn) + "'"; }

// The entry's chunks must tile its declared size: then any box inside the
// tensor is covered by exactly one piece, which is what lets the engine skip
// zero-filling, and the declared size cannot exceed what the chunks (whose
// bytes CheckStoredSizes bounds by the stored bytes) hold.
Status CheckTiling(const EntryMeta& e) {
  for (int64_t d : e.size)
    if (d < 0)
      return DataLossError(Quoted(e.fqn) + ": the checkpoint declares the shape " +
                           ShapeToString(e.size) + ", with a negative dimension");
  std::vector<BoxView> views;
  views.reserve(e.chunks.size());
  for (const ChunkMeta& c : e.chunks) views.push_back({c.offsets, c.sizes});
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

// The elements of `box` a tiling of `shape` covers: those inside `shape`.
// REQUIRES: non-negative box sizes.
int64_t CoveredElements(const Box& box, const Shape& shape) {
  int64_t n = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    const int64_t lo = std::max<int64_t>(box.offsets[d], 0);
    const int64_t hi = std::min<int64_t>(box.offsets[d] + box.sizes[d], shape[d]);
    n *= std::max<int64_t>(hi - lo, 0);
  }
  return n;
}

std::string Range(uint64_t offset, uint64_t length) {
  return std::to_string(length) + " bytes at offset " + std::to_string(offset);
}

Status CheckInFile(std::string_view what, const StorageInfo& s, const FileSizes& sizes,
                   uint64_t* file_size) {
  auto it = sizes.find(s.relative_path);
  if (it == sizes.end())
    return InternalError(std::string(what) + ": no size for data file '" + s.relative_path + "'");
  *file_size = it->second;
  if (s.offset > it->second || s.length > it->second - s.offset)
    return DataLossError(std::string(what) + " is stored as " + Range(s.offset, s.length) +
                         " of '" + s.relative_path + "', which holds only " +
                         std::to_string(it->second) +
                         " bytes (truncated file or corrupt metadata)");
  return Status();
}

}  // namespace

Result<TensorReadPlan> PlanTensorReads(std::span<const TensorRequest> requests) {
  TensorReadPlan plan;
  std::unordered_set<const EntryMeta*> checked;
  std::map<std::pair<const EntryMeta*, size_t>, size_t> read_index;
  for (size_t r = 0; r < requests.size(); ++r) {
    const TensorRequest& req = requests[r];
    if (req.entry == nullptr || !req.entry->is_tensor())
      return InvalidArgumentError("load planning: request " + std::to_string(r) +
                                  " names no tensor entry");
    const EntryMeta& e = *req.entry;
    const size_t nd = e.size.size();
    if (req.box.offsets.size() != nd || req.box.sizes.size() != nd)
      return InvalidArgumentError(Quoted(e.fqn) + ": the requested box has offsets " +
                                  ShapeToString(req.box.offsets) + " and sizes " +
                                  ShapeToString(req.box.sizes) + ", the tensor has " +
                                  std::to_string(nd) + " dimensions");
    for (int64_t d : req.box.sizes)
      if (d < 0)
        return InvalidArgumentError(Quoted(e.fqn) + ": the requested box has negative sizes " +
                                    ShapeToString(req.box.sizes));
    if (checked.insert(&e).second) DCPP_RETURN_IF_ERROR(CheckTiling(e));
    if (!Inside(req.box, e.size)) {
      // Only the part inside the tensor is saved.
      return DataLossError(Quoted(e.fqn) + ": the checkpoint's chunks cover " +
                           std::to_string(CoveredElements(req.box, e.size)) + " of the " +
                           std::to_string(NumElements(req.box.sizes)) + " elements requested");
    }
    for (size_t i = 0; i < e.chunks.size(); ++i) {
      const ChunkMeta& c = e.chunks[i];
      auto overlap = Intersect({c.offsets, c.sizes}, req.box);
      if (!overlap) continue;
      auto [it, fresh] = read_index.try_emplace({&e, i}, plan.reads.size());
      if (fresh) plan.reads.push_back({&e, i, {}});
      plan.reads[it->second].pieces.push_back({r, std::move(*overlap)});
    }
  }
  return plan;
}

std::vector<std::string> DataFilesRead(const TensorReadPlan& plan,
                                       std::span<const EntryMeta* const> values) {
  std::set<std::string_view> files;
  for (const ChunkRead& r : plan.reads)
    files.insert(r.entry->chunks[r.chunk].storage.relative_path);
  for (const EntryMeta* v : values) files.insert(v->storage.relative_path);
  return std::vector<std::string>(files.begin(), files.end());
}

Status CheckStoredSizes(const TensorReadPlan& plan, std::span<const EntryMeta* const> values,
                        const FileSizes& sizes, const DecodedBound& max_decoded) {
  uint64_t file_size = 0;
  for (const EntryMeta* v : values)
    DCPP_RETURN_IF_ERROR(CheckInFile(Quoted(v->fqn), v->storage, sizes, &file_size));
  for (const ChunkRead& r : plan.reads) {
    const EntryMeta& e = *r.entry;
    const ChunkMeta& c = e.chunks[r.chunk];
    const std::string what = Quoted(e.fqn) + " chunk at offsets " + ShapeToString(c.offsets);
    DCPP_RETURN_IF_ERROR(CheckInFile(what, c.storage, sizes, &file_size));
    // PlanTensorReads checked the tiling, so the volume fits in int64.
    uint64_t tensor_bytes = static_cast<uint64_t>(NumElements(c.sizes));
    if (__builtin_mul_overflow(tensor_bytes, ElementSize(e.properties.dtype), &tensor_bytes))
      tensor_bytes = UINT64_MAX;
    uint64_t room = c.storage.length;
    std::string room_text = std::to_string(room) + " bytes";
    if (!c.storage.transform_descriptors.empty()) {
      Result<uint64_t> bound =
          max_decoded ? max_decoded(c.storage) : Result<uint64_t>(UINT64_MAX);
      if (!bound.ok())
        return bound.status().WithContext(what + " in '" + c.storage.relative_path + "'");
      room = *bound;
      room_text += ", at most " + std::to_string(room) + " once its transforms are undone";
    }
    if (tensor_bytes > room)
      return DataLossError(what + " (sizes " + ShapeToString(c.sizes) + ", " +
                           std::string(TorchName(e.properties.dtype)) + ") needs " +
                           std::to_string(tensor_bytes) + " bytes, but '" +
                           c.storage.relative_path + "' stores " + room_text +
                           " for it (corrupt metadata?)");
  }
  return Status();
}

}  // namespace dcpp::plan
