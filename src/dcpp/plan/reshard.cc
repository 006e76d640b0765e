#include "dcpp/plan/reshard.h"

#include <algorithm>

namespace dcpp::plan {

std::optional<Box> Intersect(const Box& a, const Box& b) {
  Box out;
  const size_t nd = a.offsets.size();
  out.offsets.resize(nd);
  out.sizes.resize(nd);
  for (size_t d = 0; d < nd; ++d) {
    const int64_t lo = std::max(a.offsets[d], b.offsets[d]);
    const int64_t hi = std::min(a.offsets[d] + a.sizes[d], b.offsets[d] + b.sizes[d]);
    if (hi <= lo) return std::nullopt;
    out.offsets[d] = lo;
    out.sizes[d] = hi - lo;
  }
  return out;
}

TensorView SubView(const TensorView& whole, const Box& whole_box, const Box& part) {
  TensorView v = whole;
  int64_t offset = 0;
  for (size_t d = 0; d < part.offsets.size(); ++d)
    offset += (part.offsets[d] - whole_box.offsets[d]) * whole.strides[d];
  v.data = static_cast<char*>(whole.data) + offset * static_cast<int64_t>(ElementSize(whole.dtype));
  v.shape = part.sizes;
  return v;
}

}  // namespace dcpp::plan
