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

// Every proper prefix of `msg` must fail to decode with DataLoss.
template <typename Decode>
void ExpectPrefixesAreDataLoss(const std::string& msg, Decode decode) {
  for (size_t n = 0; n < msg.size(); ++n) {
    const Status s = decode(std::string_view(msg).substr(0, n));
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << "prefix of " << n << " bytes";
  }
}

TEST(WireTest, AssignmentRoundTrip) {
  const Assignment a{NotFoundError("gone"), "1a2b3c4d", Assignment::Plan::kReused,
                     {0, 3, 300, uint64_t{1} << 40}};
  const std::string msg = EncodeAssignment(a);
  Assignment b;
  ASSERT_TRUE(DecodeAssignment(msg, &b).ok());
  EXPECT_EQ(b.status, a.status);
  EXPECT_EQ(b.tag, a.tag);
  EXPECT_EQ(b.plan, a.plan);
  EXPECT_EQ(b.keep, a.keep);
  ExpectPrefixesAreDataLoss(msg, [](std::string_view m) {
    Assignment x;
    return DecodeAssignment(m, &x);
  });
}

TEST(WireTest, PlanOffers) {
  std::string full = EncodePlanOffer("plan bytes");
  uint64_t a = 0, b = 0;
  auto kind = DecodeOffer(&full, &a, &b);
  ASSERT_TRUE(kind.ok());
  EXPECT_FALSE(*kind);
  EXPECT_EQ(full, "plan bytes");
  std::string fp = EncodeFingerprintOffer(0x0123456789abcdefULL, 42);
  kind = DecodeOffer(&fp, &a, &b);
  ASSERT_TRUE(kind.ok());
  EXPECT_TRUE(*kind);
  EXPECT_EQ(a, 0x0123456789abcdefULL);
  EXPECT_EQ(b, 42u);
  for (std::string bad : {std::string(), std::string("xyz\7"), std::string(10, '\1')}) {
    EXPECT_EQ(DecodeOffer(&bad, &a, &b).status().code(), StatusCode::kDataLoss);
  }
}

TEST(WireTest, WriteResultsRoundTrip) {
  std::vector<WriteItem> items(3);
  items[0].storage = {"__0_0.distcp", 0, 100, {}};
  items[1].storage = {"__0_1.distcp", 64, 5, {"stream.zstd/1"}};
  items[2].storage = {"__0_0.distcp", 128, 7, {"dcpp.byteshuffle/1", "stream.zstd/1"}};
  items[1].stored_crc32 = 0xCBF43926u;
  items[2].stored_crc32 = 7;
  const std::string msg = EncodeWriteResults(Status(), items, {2, 1});
  Status rank_status = InternalError("not set");
  std::vector<StorageInfo> infos;
  std::vector<uint32_t> crcs;
  ASSERT_TRUE(DecodeWriteResults(msg, &rank_status, &infos, &crcs).ok());
  EXPECT_TRUE(rank_status.ok());
  ASSERT_EQ(infos.size(), 2u);
  EXPECT_EQ(infos[0], items[2].storage);
  EXPECT_EQ(infos[1], items[1].storage);
  EXPECT_EQ(crcs, (std::vector<uint32_t>{7, 0xCBF43926u}));
  ExpectPrefixesAreDataLoss(msg, [](std::string_view m) {
    Status s;
    std::vector<StorageInfo> out;
    std::vector<uint32_t> c;
    return DecodeWriteResults(m, &s, &out, &c);
  });

  // A failed rank sends its status and no items.
  infos.clear();
  crcs.clear();
  ASSERT_TRUE(DecodeWriteResults(EncodeWriteResults(DataLossError("disk"), items, {0, 1, 2}),
                                 &rank_status, &infos, &crcs)
                  .ok());
  EXPECT_EQ(rank_status, DataLossError("disk"));
  EXPECT_TRUE(infos.empty());
  EXPECT_TRUE(crcs.empty());

  // More transforms on one item than any pipeline has.
  WireWriter w;
  w.Status(Status());
  w.U64(1);
  w.Str("f");
  w.U64(0);
  w.U64(1);
  w.U64(65);
  EXPECT_EQ(DecodeWriteResults(w.Take(), &rank_status, &infos, &crcs).code(),
            StatusCode::kDataLoss);
}

TEST(WireTest, CommitOutcomeRoundTrip) {
  for (bool committed : {false, true}) {
    const std::string metadata = committed ? "\x80\x02pickled\0metadata"s : ""s;
    const std::string msg = EncodeCommitOutcome(AbortedError("late"), committed, metadata);
    Status s;
    bool got = !committed;
    std::string got_metadata = "not set";
    ASSERT_TRUE(DecodeCommitOutcome(msg, &s, &got, &got_metadata).ok());
    EXPECT_EQ(s, AbortedError("late"));
    EXPECT_EQ(got, committed);
    EXPECT_EQ(got_metadata, metadata);
    ExpectPrefixesAreDataLoss(msg, [](std::string_view m) {
      Status x;
      bool c;
      std::string md;
      return DecodeCommitOutcome(m, &x, &c, &md);
    });
  }
}

TEST(WireTest, SharedMetadataRoundTrip) {
  const std::string bytes = "\x80\x02pickled\0metadata"s;
  const std::string msg = EncodeSharedMetadata(Status(), bytes);
  Status s = InternalError("not set");
  std::string got;
  ASSERT_TRUE(DecodeSharedMetadata(msg, &s, &got).ok());
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(got, bytes);
  ExpectPrefixesAreDataLoss(msg, [](std::string_view m) {
    Status x;
    std::string b;
    return DecodeSharedMetadata(m, &x, &b);
  });
  // An error travels without the bytes.
  const std::string failed = EncodeSharedMetadata(NotFoundError("no .metadata"), bytes);
  EXPECT_LT(failed.size(), msg.size());
  got = "untouched";
  ASSERT_TRUE(DecodeSharedMetadata(failed, &s, &got).ok());
  EXPECT_EQ(s, NotFoundError("no .metadata"));
  EXPECT_EQ(got, "untouched");
}

TEST(WireTest, DecodeStatusesKeepsEachRanksStatus) {
  const std::vector<std::string> messages = {EncodeStatus(Status()), "\x05"s,
                                             EncodeStatus(NotFoundError("x"))};
  const std::vector<Status> statuses = DecodeStatuses(messages);
  ASSERT_EQ(statuses.size(), 3u);
  EXPECT_TRUE(statuses[0].ok());
  EXPECT_EQ(statuses[1].code(), StatusCode::kDataLoss);
  EXPECT_EQ(statuses[2], NotFoundError("x"));
}

}  // namespace
}  // namespace dcpp::engine
