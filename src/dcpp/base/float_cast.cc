#include "dcpp/base/float_cast.h"

#include <cstdint>
#include <cstring>

namespace dcpp {
namespace {

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400));
      x = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    x = sign | 0x7f800000 | (mant << 13);
  } else {
    x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// Round to nearest even, as torch's .half() does.
uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  uint32_t mant = x & 0x7fffff;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xff);
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (mant ? 0x200 : 0));
  const int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000;
    const uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;  // a carry rounds up to inf
  return static_cast<uint16_t>(sign | half);
}

float BF16ToFloat(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t FloatToBF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN
  x += 0x7fff + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace

void CastFloats(const TensorView& src, const TensorView& dst) {
  const int64_t n = NumElements(src.shape);
  const auto* s = static_cast<const uint8_t*>(src.data);
  auto* d = static_cast<uint8_t*>(dst.data);
  // The common exports (float32 <-> bfloat16) in loops the compiler
  // vectorizes; the general path below converts through double, one
  // element at a time, at a few hundred MiB/s.
  if (src.dtype == DType::kFloat32 && dst.dtype == DType::kBFloat16) {
    for (int64_t i = 0; i < n; ++i) {
      float f;
      std::memcpy(&f, s + 4 * i, 4);
      const uint16_t h = FloatToBF16(f);
      std::memcpy(d + 2 * i, &h, 2);
    }
    return;
  }
  if (src.dtype == DType::kBFloat16 && dst.dtype == DType::kFloat32) {
    for (int64_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, s + 2 * i, 2);
      const uint32_t x = static_cast<uint32_t>(h) << 16;
      std::memcpy(d + 4 * i, &x, 4);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    double v = 0;
    switch (src.dtype) {
      case DType::kFloat16: {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        v = HalfToFloat(h);
        break;
      }
      case DType::kBFloat16: {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        v = BF16ToFloat(h);
        break;
      }
      case DType::kFloat32: {
        float f;
        std::memcpy(&f, s + 4 * i, 4);
        v = f;
        break;
      }
      default: {
        std::memcpy(&v, s + 8 * i, 8);
        break;
      }
    }
    switch (dst.dtype) {
      case DType::kFloat16: {
        const uint16_t h = FloatToHalf(static_cast<float>(v));
        std::memcpy(d + 2 * i, &h, 2);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t h = FloatToBF16(static_cast<float>(v));
        std::memcpy(d + 2 * i, &h, 2);
        break;
      }
      case DType::kFloat32: {
        const float f = static_cast<float>(v);
        std::memcpy(d + 4 * i, &f, 4);
        break;
      }
      default:
        std::memcpy(d + 8 * i, &v, 8);
        break;
    }
  }
}


}  // namespace dcpp
