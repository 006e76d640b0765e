#include "dcpp/plan/save_planner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace dcpp::plan {
namespace {

using namespace std::string_literals;

struct Spec {
  std::string fqn;
  bool is_tensor = true;
  Shape offsets, sizes, global;
  DType dtype = DType::kFloat32;
};

Spec Tensor(std::string fqn, Shape offsets, Shape sizes, Shape global,
            DType dtype = DType::kFloat32) {
  return {std::move(fqn), true, std::move(offsets), std::move(sizes), std::move(global), dtype};
}

Spec Bytes(std::string fqn) { return {std::move(fqn), false, {}, {}, {}}; }

LocalPlan Plan(const std::vector<Spec>& specs) {
  LocalPlan p;
  for (const Spec& s : specs) {
    if (s.is_tensor) {
      p.AddTensor(s.fqn, {s.fqn}, s.dtype, s.offsets, s.sizes, s.global,
                  static_cast<uint64_t>(NumElements(s.sizes)) * ElementSize(s.dtype));
    } else {
      p.AddValue(s.fqn, {s.fqn}, 100);
    }
  }
  return p;
}

Shape ToShape(std::span<const int64_t> s) { return Shape(s.begin(), s.end()); }

TEST(LocalPlanTest, KeepsEveryField) {
  LocalPlan p;
  p.AddTensor("model.w", {"model"s, "w"s}, DType::kBFloat16, Shape{2, 0}, Shape{3, 4}, Shape{5, 4},
              24);
  p.AddValue("step", {"step"s}, 7);
  p.AddTensor("s", {"s"s}, DType::kInt64, Shape{}, Shape{}, Shape{}, 8);
  ASSERT_EQ(p.size(), 3u);
  PlannedItem w = p.item(0);
  EXPECT_EQ(w.fqn, "model.w");
  EXPECT_TRUE(w.is_tensor);
  EXPECT_EQ(w.dtype, DType::kBFloat16);
  EXPECT_EQ(ToShape(w.offsets), (Shape{2, 0}));
  EXPECT_EQ(ToShape(w.sizes), (Shape{3, 4}));
  EXPECT_EQ(ToShape(w.global_shape), (Shape{5, 4}));
  EXPECT_EQ(w.nbytes, 24u);
  PlannedItem step = p.item(1);
  EXPECT_EQ(step.fqn, "step");
  EXPECT_FALSE(step.is_tensor);
  EXPECT_TRUE(step.offsets.empty() && step.global_shape.empty());
  EXPECT_EQ(step.nbytes, 7u);
  EXPECT_TRUE(p.item(2).is_tensor);
  EXPECT_TRUE(p.item(2).global_shape.empty());
  EXPECT_EQ(p.path(0), (ObjectPath{"model"s, "w"s}));
}

TEST(LocalPlanTest, PathsSurviveTheCompactEncoding) {
  const std::vector<std::pair<std::string, ObjectPath>> cases = {
      {"model.layers.3.w", {"model"s, "layers"s, int64_t{3}, "w"s}},
      {"model.layers.3.w", {"model"s, "layers"s, "3"s, "w"s}},  // a string that looks like an int
      {"opt.state.-12.exp_avg", {"opt"s, "state"s, int64_t{-12}, "exp_avg"s}},
      {"0.1", {int64_t{0}, int64_t{1}}},
      {"a.b", {"a.b"s}},  // a key with a dot: not recoverable from the FQN
      {"a.", {"a"s, ""s}},
      {"", {""s}},
      {"", {}},
      {"x.07", {"x"s, "07"s}},
      {"big.9223372036854775807", {"big"s, int64_t{9223372036854775807}}},
      {"neg.-9223372036854775808", {"neg"s, std::numeric_limits<int64_t>::min()}},
      {"mismatch", {"other"s}},  // a path that does not produce the FQN is kept as given
      {"a.b.c.d.e.f.g.h", {"a"s, "b"s, "c"s, "d"s, "e"s, "f"s, "g"s, "h"s}},
  };
  LocalPlan p;
  for (const auto& [fqn, path] : cases) p.AddValue(fqn, path, 1);
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(p.fqn(i), cases[i].first);
    EXPECT_EQ(p.path(i), cases[i].second) << "case " << i;
  }
  // The usual path (strings that join to the FQN) takes two bytes.
  EXPECT_EQ(p.EncodedPath(1).size(), 2u);
  // Re-adding each encoded path reproduces it.
  LocalPlan copy;
  for (size_t i = 0; i < p.size(); ++i) {
    Status s = copy.AddEncoded(p.item(i), p.EncodedPath(i));
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(copy.path(i), cases[i].second);
  }
}

TEST(LocalPlanTest, AddEncodedRejectsMalformedPaths) {
  PlannedItem item;
  item.fqn = "model.layers.3.w";
  const std::vector<std::string> bad = {
      ""s,                   // empty
      "\x02"s,               // unknown form
      "\x00"s,               // truncated count
      "\x00\x01"s,           // truncated position
      "\x00\x01\x07"s,       // position beyond the parts
      "\x00\x01\x01"s,       // part "layers" is not an integer
      "\x00\x02\x02\x02"s,   // positions not ascending
      "\x00\x00\x00"s,       // trailing byte
      "\x01\x01\x00\x05x"s,  // string longer than the encoding
      "\x01\x02\x01\x02"s,   // truncated second element
      "\x01\x01\x07\x00"s,   // unknown element tag
      "\x00\x01\xff"s,       // truncated varint
  };
  for (const std::string& enc : bad) {
    LocalPlan p;
    Status s = p.AddEncoded(item, enc);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << testing::PrintToString(enc);
    EXPECT_EQ(p.size(), 0u);
  }
  PlannedItem padded;
  padded.fqn = "x.03";
  LocalPlan p;
  EXPECT_FALSE(p.AddEncoded(padded, "\x00\x01\x01"s).ok());  // "03" is not canonical
  EXPECT_TRUE(p.AddEncoded(item, "\x00\x01\x02"s).ok());
  EXPECT_EQ(p.path(0), (ObjectPath{"model"s, "layers"s, int64_t{3}, "w"s}));
}

TEST(SavePlannerTest, ReplicasAreWrittenOnceAndBalanced) {
  // Every rank holds the same two replicated tensors and a value.
  std::vector<LocalPlan> plans;
  for (int r = 0; r < 3; ++r)
    plans.push_back(
        Plan({Tensor("a", {0}, {100}, {100}), Tensor("b", {0}, {100}, {100}), Bytes("step")}));
  auto gp = CreateGlobalSavePlan(plans);
  ASSERT_TRUE(gp.ok()) << gp.status().ToString();
  // "a" -> rank 0 (all empty), "b" -> rank 1 (rank 0 has 400 bytes), "step" -> rank 2.
  EXPECT_EQ(gp->keep[0], std::vector<size_t>{0});
  EXPECT_EQ(gp->keep[1], std::vector<size_t>{1});
  EXPECT_EQ(gp->keep[2], std::vector<size_t>{2});
  ASSERT_EQ(gp->metadata.entries.size(), 3u);
  EXPECT_EQ(gp->metadata.entries[0].fqn, "a");
  EXPECT_EQ(gp->metadata.entries[1].fqn, "b");
  EXPECT_EQ(gp->metadata.entries[2].kind, EntryMeta::Kind::kBytes);
  EXPECT_EQ(gp->metadata.entries[2].path, (ObjectPath{"step"s}));

  auto lowest = CreateGlobalSavePlan(plans, {.to_lowest_rank = true});
  ASSERT_TRUE(lowest.ok());
  EXPECT_EQ(lowest->keep[0], (std::vector<size_t>{0, 1, 2}));
  EXPECT_TRUE(lowest->keep[1].empty());
}

TEST(SavePlannerTest, UnevenShardsBecomeChunksInRankOrder) {
  // 10 rows over 4 ranks: 3, 3, 2, 2; plus a replicated bias.
  std::vector<LocalPlan> plans;
  const int64_t rows[] = {3, 3, 2, 2};
  int64_t start = 0;
  for (int r = 0; r < 4; ++r) {
    plans.push_back(
        Plan({Tensor("w", {start, 0}, {rows[r], 4}, {10, 4}), Tensor("bias", {0}, {4}, {4})}));
    start += rows[r];
  }
  auto gp = CreateGlobalSavePlan(plans);
  ASSERT_TRUE(gp.ok()) << gp.status().ToString();
  const EntryMeta& w = gp->metadata.entries[0];
  ASSERT_EQ(w.chunks.size(), 4u);
  EXPECT_EQ(w.chunks[2].offsets, (Shape{6, 0}));
  EXPECT_EQ(w.chunks[2].sizes, (Shape{2, 4}));
  size_t bias_writers = 0;
  for (int r = 0; r < 4; ++r) {
    ASSERT_EQ(gp->slots[r].size(), gp->keep[r].size());
    for (size_t k = 0; k < gp->keep[r].size(); ++k) {
      const auto [entry, chunk] = gp->slots[r][k];
      if (plans[r].fqn(gp->keep[r][k]) == "bias") {
        ++bias_writers;
        continue;
      }
      EXPECT_EQ(entry, 0u);
      EXPECT_EQ(chunk, static_cast<size_t>(r));
    }
  }
  EXPECT_EQ(bias_writers, 1u);
}

TEST(SavePlannerTest, MixedReplicasInAnyOrder) {
  // Two data-parallel groups of two ranks each hold the same two row shards
  // of "w"; the ranks list their items in different orders, and one rank
  // holds an extra copy of its own shard.
  std::vector<LocalPlan> plans;
  plans.push_back(Plan({Tensor("w", {0}, {4}, {8}), Bytes("v")}));
  plans.push_back(Plan({Bytes("v"), Tensor("w", {4}, {4}, {8})}));
  plans.push_back(Plan({Tensor("w", {4}, {4}, {8}), Tensor("w", {4}, {4}, {8})}));
  plans.push_back(Plan({Tensor("w", {0}, {4}, {8}), Bytes("v")}));
  for (bool lowest : {false, true}) {
    auto gp = CreateGlobalSavePlan(plans, {.to_lowest_rank = lowest});
    ASSERT_TRUE(gp.ok()) << gp.status().ToString();
    ASSERT_EQ(gp->metadata.entries.size(), 2u);
    const EntryMeta& w =
        gp->metadata.entries[0].fqn == "w" ? gp->metadata.entries[0] : gp->metadata.entries[1];
    ASSERT_EQ(w.chunks.size(), 2u);
    size_t written = 0;
    for (size_t r = 0; r < plans.size(); ++r) written += gp->keep[r].size();
    EXPECT_EQ(written, 3u);  // two chunks and the value
    if (lowest) {
      EXPECT_EQ(gp->keep[0], (std::vector<size_t>{0, 1}));
      EXPECT_EQ(gp->keep[1], (std::vector<size_t>{1}));
      EXPECT_EQ(w.chunks[1].offsets, (Shape{4}));
    } else {
      // w[0:4] -> rank 0; v -> rank 1 (fewest bytes); w[4:8] -> rank 2 (rank
      // 1 already writes v, so its planned weight is 1 > 0).
      EXPECT_EQ(gp->keep[0], (std::vector<size_t>{0}));
      EXPECT_EQ(gp->keep[1], (std::vector<size_t>{0}));
      EXPECT_EQ(gp->keep[2], (std::vector<size_t>{0}));
      EXPECT_TRUE(gp->keep[3].empty());
      EXPECT_EQ(gp->metadata.entries[0].fqn, "w");
    }
  }
}

TEST(SavePlannerTest, ThreadsDoNotChangeTheResult) {
  // Big enough for the threaded paths: 96 ranks x 1400 row shards.
  std::vector<LocalPlan> plans;
  for (int r = 0; r < 96; ++r) {
    LocalPlan p;
    for (int t = 0; t < 1400; ++t) {
      const std::string fqn = "m." + std::to_string(t);
      p.AddTensor(fqn, {"m"s, int64_t{t}}, DType::kFloat16, Shape{r * 2, 0}, Shape{2, 3},
                  Shape{192, 3}, 12);
    }
    p.AddValue("step", {"step"s}, 5);
    plans.push_back(std::move(p));
  }
  auto one = CreateGlobalSavePlan(plans, {.threads = 1});
  auto four = CreateGlobalSavePlan(plans, {.threads = 4});
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  ASSERT_TRUE(four.ok()) << four.status().ToString();
  EXPECT_EQ(one->keep, four->keep);
  EXPECT_EQ(one->slots, four->slots);
  EXPECT_EQ(one->metadata, four->metadata);
  ASSERT_EQ(one->metadata.entries.size(), 1401u);
  const EntryMeta& e = one->metadata.entries[700];
  EXPECT_EQ(e.fqn, "m.700");
  EXPECT_EQ(e.path, (ObjectPath{"m"s, int64_t{700}}));
  ASSERT_EQ(e.chunks.size(), 96u);
  for (int r = 0; r < 96; ++r) EXPECT_EQ(e.chunks[r].offsets, (Shape{r * 2, 0}));

  // A gap is found (and named) whichever thread checks the tensor.
  plans[50] = LocalPlan();
  auto gap = CreateGlobalSavePlan(plans, {.threads = 4});
  ASSERT_FALSE(gap.ok());
  EXPECT_NE(gap.status().message().find("'m.0'"), std::string::npos) << gap.status().message();
}

TEST(SavePlannerTest, RejectsInconsistentPlans) {
  auto r = CreateGlobalSavePlan(
      {Plan({Tensor("w", {0}, {4}, {10})}), Plan({Tensor("w", {5}, {5}, {10})})});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("cover 9 of 10"), std::string::npos) << r.status().message();

  r = CreateGlobalSavePlan(
      {Plan({Tensor("w", {0}, {5}, {10})}), Plan({Tensor("w", {5}, {5}, {10}, DType::kBFloat16)})});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "'w' has dtype float32 on one rank and bfloat16 on rank 1");

  r = CreateGlobalSavePlan(
      {Plan({Tensor("w", {0}, {5}, {10})}), Plan({Tensor("w", {5}, {5}, {11})})});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "'w' has global shape [10] on one rank and [11] on rank 1");

  r = CreateGlobalSavePlan(
      {Plan({Tensor("x", {0}, {5}, {5})}), Plan({Bytes("y")}), Plan({Bytes("x")})});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "'x' is a tensor on some ranks and a value on others (ranks 0, 2)");

  r = CreateGlobalSavePlan(
      {Plan({Tensor("w", {0}, {6}, {10})}), Plan({Tensor("w", {4}, {6}, {10})})});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("overlap"), std::string::npos) << r.status().message();
}

TEST(SavePlannerTest, EmptyInputs) {
  auto none = CreateGlobalSavePlan({});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->metadata.entries.empty());
  auto empty = CreateGlobalSavePlan({LocalPlan(), LocalPlan()});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->keep.size(), 2u);
  EXPECT_TRUE(empty->metadata.entries.empty());
}

}  // namespace
}  // namespace dcpp::plan
