#include "dcpp/engine/staging.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>

namespace dcpp::engine {
namespace {

TEST(StagingTest, ZeroSizeExpandedAndNestedTensorsAreStaged) {
  StagingPool pool({});
  Tensor row = *Tensor::Zeros(DType::kInt32, {4});
  for (int i = 0; i < 4; ++i) static_cast<int32_t*>(row.data())[i] = i + 1;
  TensorView expanded = row.view();  // stride 0: 3 rows sharing one
  expanded.shape = {3, 4};
  expanded.strides = {0, 1};
  Value sd;
  sd["empty"] = *Tensor::Zeros(DType::kFloat32, {0, 5});
  sd["expanded"] = Tensor::Borrow(expanded);
  sd["list"] = Value::List({Value(row), Value(int64_t{3})});
  sd["sharded"] = ShardedTensor{{8}, {{{4}, row}}};
  auto r = Stage(sd, pool, 3);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->pool_grew);
  EXPECT_EQ(r->bytes, 48u + 16u + 16u);
  std::memset(row.data(), 0, row.nbytes());
  const Tensor& e = r->staged.Find("expanded")->tensor();
  EXPECT_TRUE(e.view().is_contiguous());
  EXPECT_EQ(static_cast<const int32_t*>(e.data())[11], 4);
  EXPECT_EQ(r->staged.Find("empty")->tensor().shape(), (Shape{0, 5}));
  EXPECT_EQ(static_cast<const int32_t*>(r->staged.Find("list")->items()[0].tensor().data())[2], 3);
  EXPECT_EQ(r->staged.Find("list")->items()[1].as_int(), 3);
  const auto& shard = r->staged.Find("sharded")->sharded().shards[0];
  EXPECT_EQ(shard.offsets, Shape{4});
  EXPECT_EQ(static_cast<const int32_t*>(shard.local.data())[0], 1);
  // Staged tensors live in the pool.
  const uint8_t* p = static_cast<const uint8_t*>(shard.local.data());
  EXPECT_TRUE(p >= pool.data() && p < pool.data() + pool.capacity());
}

TEST(StagingTest, ReserveGrowsOnlyWhenNeededAndHonoursTheCap) {
  StagingPool pool({.max_bytes = 8 << 20});
  bool grew = false;
  ASSERT_TRUE(pool.Reserve(100, &grew).ok());
  EXPECT_TRUE(grew);
  const uint64_t cap = pool.capacity();
  EXPECT_GE(cap, 100u);
  ASSERT_TRUE(pool.Reserve(cap, &grew).ok());
  EXPECT_FALSE(grew);
  ASSERT_TRUE(pool.Reserve(cap + 1, &grew).ok());
  EXPECT_TRUE(grew);
  Status over = pool.Reserve((8 << 20) + 1, &grew);
  EXPECT_EQ(over.code(), StatusCode::kResourceExhausted);
}

TEST(StagingTest, AMappingInUseIsNeverReused) {
  StagingPool pool({});
  bool grew = false;
  ASSERT_TRUE(pool.Reserve(1000, &grew).ok());
  std::shared_ptr<void> snapshot = pool.keepalive();  // a save still writing
  const uint8_t* first = pool.data();
  ASSERT_TRUE(pool.Reserve(1000, &grew).ok());
  EXPECT_TRUE(grew);
  EXPECT_NE(pool.data(), first);
  EXPECT_EQ(pool.total_bytes(), 2 * pool.capacity());
  snapshot.reset();  // the save ended
  ASSERT_TRUE(pool.Reserve(1000, &grew).ok());
  EXPECT_FALSE(grew);
}

}  // namespace
}  // namespace dcpp::engine
