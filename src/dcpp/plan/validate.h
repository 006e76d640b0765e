// Checks that the chunks saved for one tensor tile it: each inside the
// global shape, no two overlapping, and (when required) together covering
// every element. Pure: no I/O.
#ifndef DCPP_PLAN_VALIDATE_H_
#define DCPP_PLAN_VALIDATE_H_

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "dcpp/plan/reshard.h"
#include "dcpp/status.h"

namespace dcpp::plan {

// A chunk as views of its offsets and sizes (borrowed; valid while the
// shapes they view are).
struct BoxView {
  std::span<const int64_t> offsets;
  std::span<const int64_t> sizes;
};

// InvalidArgument naming `fqn` and the offending chunk(s) otherwise.
// O(n log n): chunks are sorted along the dimension of largest extent (as DCP
// sweeps); chunks that then follow one another without overlapping along it
// (row or column shards) need no further test, others are swept against the
// chunks still open. O(n) when they already arrive sorted. 0-d and
// zero-size tensors are handled. Volumes are computed with overflow checks.
// Thread-safe.
Status ValidateChunks(std::string_view fqn, const Shape& global_shape,
                      const std::vector<Box>& chunks, bool require_full_coverage);
// The same, for chunks viewed where they already are (no copies).
Status ValidateChunkViews(std::string_view fqn, std::span<const int64_t> global_shape,
                          std::span<const BoxView> chunks, bool require_full_coverage);

}  // namespace dcpp::plan

#endif  // DCPP_PLAN_VALIDATE_H_
