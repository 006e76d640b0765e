// Casting between the floating dtypes as torch's .to() does on CPU
// (float16, bfloat16, float32, float64; rounding to nearest even, NaN kept
// a NaN, overflow to infinity).
#ifndef DCPP_BASE_FLOAT_CAST_H_
#define DCPP_BASE_FLOAT_CAST_H_

#include "dcpp/tensor.h"

namespace dcpp {

// Whether `d` is one of the dtypes CastFloats converts.
inline bool IsCastableFloat(DType d) {
  return d == DType::kFloat16 || d == DType::kBFloat16 || d == DType::kFloat32 ||
         d == DType::kFloat64;
}

// Casts the contiguous tensor `src` into the contiguous `dst` of the same
// shape. REQUIRES: both dtypes IsCastableFloat, both views contiguous and
// not overlapping. Thread-safe.
void CastFloats(const TensorView& src, const TensorView& dst);

}  // namespace dcpp

#endif  // DCPP_BASE_FLOAT_CAST_H_
