#include "dcpp/base/float_cast.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace dcpp {
namespace {

std::vector<uint16_t> ToBF16(const std::vector<uint32_t>& bits) {
  std::vector<float> f(bits.size());
  std::memcpy(f.data(), bits.data(), bits.size() * 4);
  std::vector<uint16_t> out(bits.size());
  CastFloats(MakeView(f.data(), DType::kFloat32, {static_cast<int64_t>(f.size())}),
             MakeView(out.data(), DType::kBFloat16, {static_cast<int64_t>(f.size())}));
  return out;
}

TEST(FloatCastTest, Float32ToBFloat16RoundsToNearestEven) {
  const std::vector<uint32_t> in = {
      0x3f800000,  // 1.0
      0x3f808000,  // halfway between 0x3f80 and 0x3f81: even is 0x3f80
      0x3f818000,  // halfway between 0x3f81 and 0x3f82: even is 0x3f82
      0x3f808001,  // just above halfway: up
      0x7f800000,  // inf
      0xff800000,  // -inf
      0x7f7fffff,  // largest float rounds to inf
      0x00000001,  // smallest subnormal rounds to 0
      0x80000000,  // -0
  };
  const std::vector<uint16_t> want = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x7f80,
                                      0xff80, 0x7f80, 0x0000, 0x8000};
  EXPECT_EQ(ToBF16(in), want);
  // A NaN stays a NaN (quiet), even one whose payload sits in the low bits.
  const uint16_t nan = ToBF16({0x7f800001})[0];
  EXPECT_EQ(nan & 0x7f80, 0x7f80);
  EXPECT_NE(nan & 0x007f, 0);
}

TEST(FloatCastTest, WideningIsExactAndNarrowingToHalfRounds) {
  const std::vector<uint16_t> bf = {0x3f80, 0xc2f7, 0x7f80, 0x0001};
  std::vector<float> f(bf.size());
  CastFloats(MakeView(const_cast<uint16_t*>(bf.data()), DType::kBFloat16, {4}),
             MakeView(f.data(), DType::kFloat32, {4}));
  for (size_t i = 0; i < bf.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &f[i], 4);
    EXPECT_EQ(bits, static_cast<uint32_t>(bf[i]) << 16) << i;
  }
  // float32 -> float16 (the general path): 1 + 2^-11 is a tie, kept even.
  const std::vector<float> x = {1.0f, 1.0f + 1.0f / 2048, 65520.0f, -2.0f};
  std::vector<uint16_t> h(x.size());
  CastFloats(MakeView(const_cast<float*>(x.data()), DType::kFloat32, {4}),
             MakeView(h.data(), DType::kFloat16, {4}));
  EXPECT_EQ(h, (std::vector<uint16_t>{0x3c00, 0x3c00, 0x7c00, 0xc000}));
}

}  // namespace
}  // namespace dcpp
