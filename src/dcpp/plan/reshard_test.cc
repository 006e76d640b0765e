#include "dcpp/plan/reshard.h"

#include <gtest/gtest.h>

#include <numeric>

namespace dcpp::plan {
namespace {

TEST(ReshardTest, IntersectHalfOpen) {
  auto r = Intersect({{0, 0}, {4, 4}}, {{2, 3}, {4, 4}});
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->offsets, (Shape{2, 3}));
  EXPECT_EQ(r->sizes, (Shape{2, 1}));
  EXPECT_FALSE(Intersect({{0}, {4}}, {{4}, {4}}).has_value());  // touching is not overlapping
  EXPECT_FALSE(Intersect({{0}, {0}}, {{0}, {4}}).has_value());
  EXPECT_TRUE(Intersect({{}, {}}, {{}, {}}).has_value());  // 0-d
}

TEST(ReshardTest, SubViewAddressesThePart) {
  std::vector<int32_t> data(12);
  std::iota(data.begin(), data.end(), 0);  // 3x4 at global offset (10, 0)
  TensorView whole = MakeView(data.data(), DType::kInt32, {3, 4});
  TensorView part = SubView(whole, {{10, 0}, {3, 4}}, {{11, 1}, {2, 2}});
  EXPECT_EQ(part.shape, (Shape{2, 2}));
  EXPECT_EQ(*static_cast<int32_t*>(part.data), 5);
  std::vector<int32_t> out(4);
  ASSERT_TRUE(CopyTensor(part, MakeView(out.data(), DType::kInt32, {2, 2})).ok());
  EXPECT_EQ(out, (std::vector<int32_t>{5, 6, 9, 10}));
}

}  // namespace
}  // namespace dcpp::plan
