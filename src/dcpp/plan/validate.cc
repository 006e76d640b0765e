#include "dcpp/plan/validate.h"

#include <algorithm>
#include <functional>
#include <limits>
#include <numeric>
#include <utility>

namespace dcpp::plan {
namespace {

Shape ToShape(std::span<const int64_t> s) { return Shape(s.begin(), s.end()); }

std::string Describe(const BoxView& b) {
  return "offsets " + ShapeToString(ToShape(b.offsets)) + " sizes " +
         ShapeToString(ToShape(b.sizes));
}

bool IsEmpty(const BoxView& b) {
  return std::find(b.sizes.begin(), b.sizes.end(), 0) != b.sizes.end();
}

// As Intersect(), for boxes of equal rank known to lie inside one tensor.
bool Overlap(const BoxView& a, const BoxView& b) {
  for (size_t d = 0; d < a.offsets.size(); ++d) {
    const int64_t lo = std::max(a.offsets[d], b.offsets[d]);
    const int64_t hi = std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
    if (hi <= lo) return false;
  }
  return true;
}

}  // namespace

Status ValidateChunkViews(std::string_view fqn, std::span<const int64_t> global,
                          std::span<const BoxView> chunks, bool require_full_coverage) {
  auto fail = [&](const std::string& why) {
    return InvalidArgumentError("'" + std::string(fqn) + "' (global shape " +
                                ShapeToString(ToShape(global)) + "): " + why);
  };
  const size_t nd = global.size();
  int64_t covered = 0;
  bool overflow = false;
  for (const BoxView& b : chunks) {
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

  if (nd > 0) {
    // Order the chunks along the largest dimension (usually they already are).
    const size_t sweep =
        static_cast<size_t>(std::max_element(global.begin(), global.end()) - global.begin());
    auto start = [&](size_t i) { return chunks[i].offsets[sweep]; };
    std::vector<size_t> order;
    for (size_t i = 1; i < chunks.size(); ++i) {
      if (start(i) < start(i - 1)) {
        order.resize(chunks.size());
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return start(a) < start(b); });
        break;
      }
    }
    auto at = [&](size_t k) { return order.empty() ? k : order[k]; };

    // Chunks that each begin where all earlier ones have ended cannot overlap.
    bool disjoint = true;
    int64_t reach = std::numeric_limits<int64_t>::min();
    for (size_t k = 0; k < chunks.size() && disjoint; ++k) {
      const BoxView& c = chunks[at(k)];
      if (IsEmpty(c)) continue;
      if (c.offsets[sweep] < reach) disjoint = false;
      reach = std::max(reach, c.offsets[sweep] + c.sizes[sweep]);
    }
    if (!disjoint) {
      // Sweep: a chunk can only overlap chunks still "open" (ending beyond
      // its start along the sweep dimension). open is a min-heap on
      // (end, chunk); of several overlapping chunks the first in that order
      // is named.
      std::vector<std::pair<int64_t, size_t>> open;
      const auto later = std::greater<std::pair<int64_t, size_t>>();
      for (size_t k = 0; k < chunks.size(); ++k) {
        const size_t i = at(k);
        const BoxView& c = chunks[i];
        if (IsEmpty(c)) continue;
        while (!open.empty() && open.front().first <= c.offsets[sweep]) {
          std::pop_heap(open.begin(), open.end(), later);
          open.pop_back();
        }
        const std::pair<int64_t, size_t>* hit = nullptr;
        for (const auto& o : open)
          if ((hit == nullptr || o < *hit) && Overlap(c, chunks[o.second])) hit = &o;
        if (hit != nullptr)
          return fail("chunks " + Describe(chunks[hit->second]) + " and " + Describe(c) +
                      " overlap");
        open.push_back({c.offsets[sweep] + c.sizes[sweep], i});
        std::push_heap(open.begin(), open.end(), later);
      }
    }
  } else if (chunks.size() > 1) {
    return fail(std::to_string(chunks.size()) + " chunks of a 0-d tensor overlap");
  }
  if (!require_full_coverage) return Status();
  int64_t total = 1;
  bool huge = false;
  for (int64_t d : global) huge |= __builtin_mul_overflow(total, d, &total);
  if (huge || covered != total)
    return fail("chunks cover " + std::to_string(covered) + " of " +
                (huge ? std::string("more than 2^63 - 1") : std::to_string(total)) + " elements");
  return Status();
}

Status ValidateChunks(std::string_view fqn, const Shape& global_shape,
                      const std::vector<Box>& chunks, bool require_full_coverage) {
  std::vector<BoxView> views;
  views.reserve(chunks.size());
  for (const Box& b : chunks) views.push_back({b.offsets, b.sizes});
  return ValidateChunkViews(fqn, global_shape, views, require_full_coverage);
}

}  // namespace dcpp::plan
