#include "dcpp/plan/save_planner.h"

#include <gtest/gtest.h>

namespace dcpp::plan {
namespace {

PlannedItem Tensor(std::string fqn, Shape offsets, Shape sizes, Shape global,
                   DType dtype = DType::kFloat32) {
  PlannedItem it;
  it.fqn = fqn;
  it.path = {fqn};
  it.is_tensor = true;
  it.dtype = dtype;
  it.offsets = std::move(offsets);
  it.sizes = std::move(sizes);
  it.global_shape = std::move(global);
  it.nbytes = static_cast<uint64_t>(NumElements(it.sizes)) * ElementSize(dtype);
  return it;
}

PlannedItem Bytes(std::string fqn) {
  PlannedItem it;
  it.fqn = fqn;
  it.path = {fqn};
  it.nbytes = 100;
  return it;
}

TEST(SavePlannerTest, ReplicasAreWrittenOnceAndBalanced) {
  // Every rank holds the same two replicated tensors and a value.
  std::vector<LocalPlan> plans(3);
  for (auto& p : plans) {
    p.items = {Tensor("a", {0}, {100}, {100}), Tensor("b", {0}, {100}, {100}), Bytes("step")};
  }
  auto gp = CreateGlobalSavePlan(plans);
  ASSERT_TRUE(gp.ok()) << gp.status().ToString();
  // "a" -> rank 0 (all empty), "b" -> rank 1 (rank 0 has 400 bytes), "step" -> rank 2.
  EXPECT_EQ(gp->keep[0], std::vector<size_t>{0});
  EXPECT_EQ(gp->keep[1], std::vector<size_t>{1});
  EXPECT_EQ(gp->keep[2], std::vector<size_t>{2});
  ASSERT_EQ(gp->metadata.entries.size(), 3u);
  EXPECT_EQ(gp->metadata.entries[0].fqn, "a");
  EXPECT_EQ(gp->metadata.entries[2].kind, EntryMeta::Kind::kBytes);

  auto lowest = CreateGlobalSavePlan(plans, {.to_lowest_rank = true});
  ASSERT_TRUE(lowest.ok());
  EXPECT_EQ(lowest->keep[0], (std::vector<size_t>{0, 1, 2}));
  EXPECT_TRUE(lowest->keep[1].empty());
}

TEST(SavePlannerTest, UnevenShardsBecomeChunksInRankOrder) {
  // 10 rows over 4 ranks: 3, 3, 2, 2; plus a replicated bias.
  std::vector<LocalPlan> plans(4);
  const int64_t rows[] = {3, 3, 2, 2};
  int64_t start = 0;
  for (int r = 0; r < 4; ++r) {
    plans[r].items = {Tensor("w", {start, 0}, {rows[r], 4}, {10, 4}), Tensor("bias", {0}, {4}, {4})};
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
    for (size_t k = 0; k < gp->keep[r].size(); ++k)
      if (plans[r].items[gp->keep[r][k]].fqn == "bias") ++bias_writers;
  }
  EXPECT_EQ(bias_writers, 1u);
}

TEST(SavePlannerTest, RejectsInconsistentPlans) {
  std::vector<LocalPlan> gap(2);
  gap[0].items = {Tensor("w", {0}, {4}, {10})};
  gap[1].items = {Tensor("w", {5}, {5}, {10})};
  auto r = CreateGlobalSavePlan(gap);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("cover 9 of 10"), std::string::npos) << r.status().message();

  std::vector<LocalPlan> dtype(2);
  dtype[0].items = {Tensor("w", {0}, {5}, {10})};
  dtype[1].items = {Tensor("w", {5}, {5}, {10}, DType::kBFloat16)};
  r = CreateGlobalSavePlan(dtype);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("rank 1"), std::string::npos) << r.status().message();

  std::vector<LocalPlan> kinds(2);
  kinds[0].items = {Tensor("x", {0}, {5}, {5})};
  kinds[1].items = {Bytes("x")};
  EXPECT_FALSE(CreateGlobalSavePlan(kinds).ok());

  std::vector<LocalPlan> overlap(2);
  overlap[0].items = {Tensor("w", {0}, {6}, {10})};
  overlap[1].items = {Tensor("w", {4}, {6}, {10})};
  EXPECT_FALSE(CreateGlobalSavePlan(overlap).ok());
}

}  // namespace
}  // namespace dcpp::plan
