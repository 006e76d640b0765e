#include "dcpp/plan/validate.h"

#include <algorithm>
#include <numeric>
#include <set>

namespace dcpp::plan {
namespace {

std::string Describe(const Box& b) {
  return "offsets " + ShapeToString(b.offsets) + " sizes " + ShapeToString(b.sizes);
}

}  // namespace

Status ValidateChunks(std::string_view fqn, const Shape& global, const std::vector<Box>& chunks,
                      bool require_full_coverage) {
  auto fail = [&](const std::string& why) {
    return InvalidArgumentError("'" + std::string(fqn) + "' (global shape " +
                                ShapeToString(global) + "): " + why);
  };
  const size_t nd = global.size();
  int64_t covered = 0;
  bool overflow = false;
  for (const Box& b : chunks) {
    if (b.offsets.size() != nd || b.sizes.size() != nd)
      return fail("chunk " + Describe(b) + " has the wrong number of dimensions");
    int64_t volume = 1;
    for (size_t d = 0; d < nd; ++d) {
      if (b.offsets[d] < 0 || b.sizes[d] < 0 || b.offsets[d] > global[d] ||
          b.sizes[d] > global[d] - b.offsets[d])
        return fail("chunk " + Describe(b) + " lies outside the tensor");
      if (__builtin_mul_overflow(volume, b.sizes[d], &volume)) overflow = true;
    }
    if (__builtin_add_overflow(covered, volume, &covered)) overflow = true;
  }
  if (overflow) return fail("chunk volumes overflow");

  // Sweep along the largest dimension: a chunk can only overlap chunks that
  // are still "open" (end beyond its start) along that dimension.
  if (nd > 0) {
    const size_t sweep = static_cast<size_t>(std::max_element(global.begin(), global.end()) -
                                             global.begin());
    std::vector<size_t> order(chunks.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return chunks[a].offsets[sweep] < chunks[b].offsets[sweep];
    });
    std::set<std::pair<int64_t, size_t>> open;  // (end along sweep, chunk)
    for (size_t i : order) {
      const Box& c = chunks[i];
      if (NumElements(c.sizes) == 0) continue;
      while (!open.empty() && open.begin()->first <= c.offsets[sweep]) open.erase(open.begin());
      for (const auto& [end, j] : open)
        if (Intersect(c, chunks[j]))
          return fail("chunks " + Describe(chunks[j]) + " and " + Describe(c) + " overlap");
      open.insert({c.offsets[sweep] + c.sizes[sweep], i});
    }
  } else if (chunks.size() > 1) {
    return fail(std::to_string(chunks.size()) + " chunks of a 0-d tensor overlap");
  }
  if (require_full_coverage && covered != NumElements(global))
    return fail("chunks cover " + std::to_string(covered) + " of " +
                std::to_string(NumElements(global)) + " elements");
  return Status();
}

}  // namespace dcpp::plan
