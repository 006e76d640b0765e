// Checks that the chunks saved for one tensor tile it: each inside the
// global shape, no two overlapping, and (when required) together covering
// every element. Pure: no I/O.
#ifndef DCPP_PLAN_VALIDATE_H_
#define DCPP_PLAN_VALIDATE_H_

#include <string_view>
#include <vector>

#include "dcpp/plan/reshard.h"
#include "dcpp/status.h"

namespace dcpp::plan {

// InvalidArgument naming `fqn` and the offending chunk(s) otherwise.
// O(n log n) for chunks laid out along one dimension (a sweep over the
// dimension of largest extent, as DCP does); 0-d and zero-size tensors are
// handled. Volumes are computed with overflow checks.
Status ValidateChunks(std::string_view fqn, const Shape& global_shape,
                      const std::vector<Box>& chunks, bool require_full_coverage);

}  // namespace dcpp::plan

#endif  // DCPP_PLAN_VALIDATE_H_
