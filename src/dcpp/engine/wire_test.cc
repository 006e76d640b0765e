#include "dcpp/engine/wire.h"

#include <gtest/gtest.h>

#include <limits>

namespace dcpp::engine {
namespace {

using namespace std::string_literals;

TEST(WireTest, PrimitivesRoundTrip) {
  const uint64_t values[] = {0,
                             1,
                             127,
                             128,
                             (uint64_t{1} << 14) - 1,
                             uint64_t{1} << 14,
                             uint64_t{1} << 35,
                             uint64_t{1} << 63,
                             std::numeric_limits<uint64_t>::max()};
  WireWriter w;
  for (uint64_t v : values) w.U64(v);
  w.I64(-1);
  w.I64(std::numeric_limits<int64_t>::min());
  w.Str("");
  w.Str("hello\0world"s);
  w.Shape(Shape{3, -4, 0});
  w.Status(NotFoundError("gone"));
  const std::string msg = w.Take();
  EXPECT_EQ(msg.substr(0, 4), "\x00\x01\x7f\x80"s);  // LEB128

  WireReader r(msg);
  for (uint64_t v : values) {
    auto got = r.U64();
    ASSERT_TRUE(got.ok());
    EXPECT_EQ(*got, v);
  }
  EXPECT_EQ(*r.I64(), -1);
  EXPECT_EQ(*r.I64(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(*r.Str(), "");
  EXPECT_EQ(*r.StrView(), "hello\0world"s);
  EXPECT_EQ(*r.Shape(), (Shape{3, -4, 0}));
  Status s;
  ASSERT_TRUE(r.ReadStatus(&s).ok());
  EXPECT_EQ(s, NotFoundError("gone"));
  EXPECT_TRUE(r.done());
  EXPECT_FALSE(r.U64().ok());
}

TEST(WireTest, RejectsBadVarints) {
  // Eleven continuation bytes, and a tenth byte beyond 64 bits.
  for (const std::string& bad : {std::string(11, '\x80'), std::string(9, '\xff') + "\x02"s, "\x80"s,
                                 "\x05"
                                 "abc"s}) {
    WireReader r(bad);
    EXPECT_FALSE(r.Str().ok()) << testing::PrintToString(bad);
  }
  const std::string short_shape = "\x09\x01"s;  // 9 elements announced, 1 byte left
  WireReader shape(short_shape);
  EXPECT_EQ(shape.Shape().status().code(), StatusCode::kDataLoss);
}

plan::LocalPlan SamplePlan() {
  plan::LocalPlan p;
  p.AddTensor("model.layers.0.w", {"model"s, "layers"s, int64_t{0}, "w"s}, DType::kBFloat16,
              Shape{4, 0}, Shape{4, 300}, Shape{16, 300}, 4800);
  p.AddValue("step", {"step"s}, 700);
  p.AddTensor("a.b", {"a.b"s}, DType::kFloat64, Shape{}, Shape{}, Shape{}, 8);
  p.AddTensor("big", {"big"s}, DType::kInt8, Shape{int64_t{1} << 40}, Shape{-1},
              Shape{int64_t{1} << 41}, uint64_t{1} << 63);
  return p;
}

TEST(WireTest, LocalPlanRoundTrip) {
  const plan::LocalPlan p = SamplePlan();
  const std::string msg = EncodeLocalPlan(InvalidArgumentError("bad value"), p);
  Status rank_status;
  auto back = DecodeLocalPlan(msg, &rank_status);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(rank_status, InvalidArgumentError("bad value"));
  ASSERT_EQ(back->size(), p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    const plan::PlannedItem a = p.item(i), b = back->item(i);
    EXPECT_EQ(a.fqn, b.fqn);
    EXPECT_EQ(a.is_tensor, b.is_tensor);
    EXPECT_EQ(a.dtype, b.dtype);
    EXPECT_TRUE(std::ranges::equal(a.offsets, b.offsets));
    EXPECT_TRUE(std::ranges::equal(a.sizes, b.sizes));
    EXPECT_TRUE(std::ranges::equal(a.global_shape, b.global_shape));
    EXPECT_EQ(a.nbytes, b.nbytes);
    EXPECT_EQ(p.path(i), back->path(i));
  }
  // An empty plan, sent with OK.
  auto empty = DecodeLocalPlan(EncodeLocalPlan(Status(), plan::LocalPlan()), &rank_status);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(rank_status.ok());
  EXPECT_EQ(empty->size(), 0u);
}

TEST(WireTest, EveryTruncationAndTrailingByteIsDataLoss) {
  const std::string msg = EncodeLocalPlan(Status(), SamplePlan());
  for (size_t n = 0; n < msg.size(); ++n) {
    Status rank_status;
    auto r = DecodeLocalPlan(msg.substr(0, n), &rank_status);
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes";
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  }
  Status rank_status;
  auto r = DecodeLocalPlan(msg + "x", &rank_status);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("trailing"), std::string::npos);
}

TEST(WireTest, GarbledPlansAreDataLossNamingTheItem) {
  const std::string head = "\x00\x00"s;  // OK status, empty message
  // One item: fqn "w", derived path, flags, three shapes, nbytes.
  const std::string item = "\x01w\x02\x00\x00"s;
  Status rank_status;
  auto bad_dtype =
      DecodeLocalPlan(head + "\x01"s + item + "\x7f"s + "\x00\x00\x00\x00"s, &rank_status);
  EXPECT_EQ(bad_dtype.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad_dtype.status().message().find("item 0"), std::string::npos);
  auto bad_path =
      DecodeLocalPlan(head + "\x01" + "\x01w\x02\x00\x05"s + "\x02\x00" + "\x00"s, &rank_status);
  EXPECT_EQ(bad_path.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad_path.status().message().find("path"), std::string::npos)
      << bad_path.status().message();
  auto huge_count = DecodeLocalPlan(head + "\xff\xff\xff\xff\x0f"s, &rank_status);
  EXPECT_EQ(huge_count.status().code(), StatusCode::kDataLoss);
  auto huge_shape = DecodeLocalPlan(head + "\x01"s + item + "\x03\xff\xff\x03"s, &rank_status);
  EXPECT_EQ(huge_shape.status().code(), StatusCode::kDataLoss);
}

TEST(WireTest, DecodeLocalPlansMatchesOneByOne) {
  std::vector<std::string> messages;
  messages.push_back(EncodeLocalPlan(Status(), SamplePlan()));
  messages.push_back("garbage");
  messages.push_back(EncodeLocalPlan(NotFoundError("no file"), plan::LocalPlan()));
  for (int threads : {1, 3}) {
    std::vector<Status> statuses;
    std::vector<plan::LocalPlan> plans = DecodeLocalPlans(messages, &statuses, threads);
    ASSERT_EQ(plans.size(), 3u);
    ASSERT_EQ(statuses.size(), 3u);
    EXPECT_TRUE(statuses[0].ok());
    EXPECT_EQ(plans[0].size(), 4u);
    EXPECT_EQ(statuses[1].code(), StatusCode::kDataLoss);
    EXPECT_EQ(plans[1].size(), 0u);
    EXPECT_EQ(statuses[2], NotFoundError("no file"));
  }
}

TEST(WireTest, CombineRankFailures) {
  EXPECT_TRUE(CombineRankFailures("save", {Status(), Status()}).ok());
  Status s = CombineRankFailures(
      "save", {Status(), NotFoundError("x"), NotFoundError("x"), NotFoundError("y")});
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "save failed on ranks 1, 2 (NOT_FOUND: x); rank 3 (NOT_FOUND: y)");
  s = CombineRankFailures("save", {NotFoundError("x"), DataLossError("y")});
  EXPECT_EQ(s.code(), StatusCode::kAborted);
}

}  // namespace
}  // namespace dcpp::engine
