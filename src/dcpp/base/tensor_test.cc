#include "dcpp/tensor.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "dcpp/value.h"

namespace dcpp {
namespace {

TEST(DTypeTest, NamesRoundTrip) {
  for (int i = 0; i < kNumDTypes; ++i) {
    DType d = static_cast<DType>(i);
    ASSERT_EQ(DTypeFromTorchName(TorchName(d)), d) << TorchName(d);
    if (!LegacyStorageName(d).empty()) EXPECT_EQ(DTypeFromLegacyStorageName(LegacyStorageName(d)), d);
  }
  EXPECT_EQ(DTypeFromTorchName("half"), DType::kFloat16);
  EXPECT_FALSE(DTypeFromTorchName("qint8").has_value());
  EXPECT_EQ(ElementSize(DType::kComplex128), 16u);
  EXPECT_EQ(ElementSize(DType::kFloat8E8M0FNU), 1u);
}

TEST(TensorTest, ContiguityAndDensity) {
  TensorView v = MakeView(nullptr, DType::kFloat32, {2, 3});
  EXPECT_EQ(v.strides, (Shape{3, 1}));
  EXPECT_TRUE(v.is_contiguous());
  v.strides = {1, 2};  // transpose of a 3x2
  EXPECT_FALSE(v.is_contiguous());
  EXPECT_TRUE(v.is_dense());
  v.strides = {6, 1};  // every other row
  EXPECT_FALSE(v.is_dense());
  EXPECT_EQ(NumElements({}), 1);
  EXPECT_EQ(NumElements({3, 0}), 0);
}

TEST(TensorTest, CopyTransposed) {
  std::vector<int32_t> src(6);
  std::iota(src.begin(), src.end(), 0);  // 2x3 row-major
  TensorView s = MakeView(src.data(), DType::kInt32, {3, 2});
  s.strides = {1, 3};  // its transpose, viewed as 3x2
  auto dst = Tensor::Zeros(DType::kInt32, {3, 2});
  ASSERT_TRUE(dst.ok());
  ASSERT_TRUE(CopyTensor(s, dst->view()).ok());
  const int32_t* d = static_cast<const int32_t*>(dst->data());
  EXPECT_EQ(std::vector<int32_t>(d, d + 6), (std::vector<int32_t>{0, 3, 1, 4, 2, 5}));
  EXPECT_TRUE(Tensor::Borrow(s).BitwiseEquals(*dst));
  EXPECT_FALSE(Tensor::Borrow(MakeView(src.data(), DType::kInt32, {3, 2})).BitwiseEquals(*dst));
}

TEST(TensorTest, CopyRejectsMismatch) {
  auto a = Tensor::Zeros(DType::kInt32, {2});
  auto b = Tensor::Zeros(DType::kFloat32, {2});
  EXPECT_EQ(CopyTensor(a->view(), b->view()).code(), StatusCode::kInvalidArgument);
  auto c = Tensor::Zeros(DType::kInt32, {3});
  EXPECT_EQ(CopyTensor(a->view(), c->view()).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Tensor::Zeros(DType::kInt32, {-1}).status().code(), StatusCode::kInvalidArgument);
}

TEST(ValueTest, NestedDictsAndEquality) {
  Value sd;
  sd["model"]["w"] = Value(*Tensor::Zeros(DType::kFloat32, {2, 2}));
  sd["step"] = 7;
  sd["names"] = Value::List({"a", "b"});
  EXPECT_TRUE(sd.is_dict());
  EXPECT_EQ(sd.dict().keys()[0].as_string(), "model");
  ASSERT_NE(sd.Find("step"), nullptr);
  EXPECT_EQ(sd.Find("step")->as_int(), 7);
  Value copy = sd;
  EXPECT_TRUE(copy.Equals(sd));
  copy["step"] = 8;
  EXPECT_FALSE(copy.Equals(sd));
  EXPECT_EQ(sd.dict().size(), 3u);
  EXPECT_EQ(Value::Tuple({1}).DebugString(), "(1,)");
  Dict d;
  d.Set(Value(3), "three");
  ASSERT_NE(d.FindKey(Value(3)), nullptr);
  EXPECT_EQ(d.FindKey(Value(3))->as_string(), "three");
}

}  // namespace
}  // namespace dcpp

namespace dcpp {
namespace {

TEST(TensorEmptyTest, AllocatesLikeZerosWithoutFilling) {
  Result<Tensor> t = Tensor::Empty(DType::kInt16, {3, 5});
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->shape(), (Shape{3, 5}));
  EXPECT_EQ(t->strides(), (Shape{5, 1}));
  EXPECT_EQ(t->nbytes(), 30u);
  EXPECT_TRUE(t->owns_data());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 64, 0u);
  std::memset(t->data(), 0x7F, t->nbytes());  // the bytes are ours to write
  EXPECT_TRUE(Tensor::Empty(DType::kFloat32, {0, 4})->owns_data());
  EXPECT_EQ(Tensor::Empty(DType::kFloat32, {2, -1}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Tensor::Empty(DType::kFloat64, {int64_t{1} << 62, 4}).status().code(),
            StatusCode::kResourceExhausted);
  // Clone (which now starts from Empty) still copies every element.
  Result<Tensor> c = t->Clone();
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->BitwiseEquals(*t));
}

// Large tensors come from their own 2 MiB aligned mapping (huge pages):
// every byte writable, released with the last owner, Clone and views intact.
TEST(TensorEmptyTest, LargeTensorsAreMappedAlignedAndUsable) {
  const int64_t n = (int64_t{5} << 20) / 4 + 3;  // above the threshold, not a page multiple
  Result<Tensor> t = Tensor::Empty(DType::kInt32, {n});
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->nbytes(), static_cast<size_t>(n) * 4);
  EXPECT_TRUE(t->owns_data());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data()) % 64, 0u);
  auto* p = static_cast<int32_t*>(t->data());
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<int32_t>(i * 7);
  Result<Tensor> c = t->Clone();
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(c->BitwiseEquals(*t));
  EXPECT_EQ(static_cast<const int32_t*>(c->data())[n - 1], static_cast<int32_t>((n - 1) * 7));
  // Many in a row: each mapping is returned when its tensor goes.
  for (int i = 0; i < 64; ++i) {
    Result<Tensor> u = Tensor::Empty(DType::kUInt8, {int64_t{8} << 20});
    ASSERT_TRUE(u.ok());
    static_cast<uint8_t*>(u->data())[(size_t{8} << 20) - 1] = 1;
  }
  Result<Tensor> z = Tensor::Zeros(DType::kFloat32, {n});
  ASSERT_TRUE(z.ok());
  const auto* zp = static_cast<const uint8_t*>(z->data());
  EXPECT_TRUE(std::all_of(zp, zp + z->nbytes(), [](uint8_t b) { return b == 0; }));
}

}  // namespace
}  // namespace dcpp
