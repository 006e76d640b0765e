// Box geometry for resharding: which part of a saved chunk a requested chunk
// needs. Boxes are half-open: [offsets, offsets + sizes) in every dimension.
// Pure: no I/O.
#ifndef DCPP_PLAN_RESHARD_H_
#define DCPP_PLAN_RESHARD_H_

#include <optional>

#include "dcpp/tensor.h"

namespace dcpp::plan {

struct Box {
  Shape offsets;
  Shape sizes;
};

// The overlap of `a` and `b`, or nullopt when they do not overlap (including
// when either is empty). Two 0-d boxes overlap (a scalar is one element).
// REQUIRES: equal ranks.
std::optional<Box> Intersect(const Box& a, const Box& b);

// A view of the part of `whole` (a view of the box `whole_box`) that covers
// `part` (REQUIRES: inside whole_box). Shares `whole`'s memory and strides.
TensorView SubView(const TensorView& whole, const Box& whole_box, const Box& part);

}  // namespace dcpp::plan

#endif  // DCPP_PLAN_RESHARD_H_
