// SavePlanCache: repeated saves of the same structure reuse the plan;
// any change falls back to full planning within the same save; the
// checkpoint is correct either way.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "dcpp/checkpoint.h"
#include "temp_dir_test_base.h"

namespace dcpp {
namespace {

using PlanCacheTest = TempDirTest;
constexpr int kRanks = 4;

// Rank r's row shard of an [8 * kRanks, 3] float tensor whose element i is
// i + 1000 * version.
Value RankState(int rank, int version, bool extra) {
  Tensor piece = *Tensor::Zeros(DType::kFloat32, {8, 3});
  auto* p = static_cast<float*>(piece.data());
  for (int i = 0; i < 24; ++i) p[i] = static_cast<float>(rank * 24 + i + 1000 * version);
  Value sd;
  sd["w"] = ShardedTensor{{8 * kRanks, 3}, {{{8 * rank, 0}, piece}}};
  sd["step"] = version;
  if (extra) sd["extra"] = *Tensor::Zeros(DType::kInt64, {2});
  return sd;
}

Status CheckLoaded(const std::string& dir, int version) {
  auto all = LoadAll(dir);
  if (!all.ok()) return all.status();
  const Tensor& w = all->Find("w")->tensor();
  const auto* p = static_cast<const float*>(w.data());
  for (int i = 0; i < w.numel(); ++i)
    if (p[i] != static_cast<float>(i + 1000 * version))
      return InternalError("element " + std::to_string(i) + " of version " +
                           std::to_string(version) + " is " + std::to_string(p[i]));
  if (all->Find("step")->as_int() != version) return InternalError("wrong step");
  return Status();
}

TEST_F(PlanCacheTest, ReusesThePlanAndFallsBackOnAnyChange) {
  std::vector<SavePlanCache> caches(kRanks);
  // (version, rank that adds an extra tensor or -1, dedup option, expect a hit)
  struct Round {
    int extra_rank;
    bool dedup;
    bool hit;
  };
  const std::vector<Round> rounds = {
      {-1, false, false},  // first save: plans
      {-1, false, true},   // same structure: reuses
      {-1, false, true},
      {2, false, false},   // rank 2 adds a tensor: plans again in the same save
      {2, false, true},    // and the new structure is cached
      {2, true, false},    // another planning option
      {-1, true, false},
      {-1, true, true},
  };
  for (size_t v = 0; v < rounds.size(); ++v) {
    SCOPED_TRACE("round " + std::to_string(v));
    const std::string dir = Dir("ckpt");
    std::vector<uint64_t> hits_before(kRanks);
    for (int r = 0; r < kRanks; ++r) hits_before[r] = caches[r].hits();
    auto statuses = RunOnThreadRanks(kRanks, [&](ProcessGroup& pg) -> Status {
      SaveOptions o;
      o.process_group = &pg;
      o.plan_cache = &caches[pg.rank()];
      o.dedup_to_lowest_rank = rounds[v].dedup;
      return Save(RankState(pg.rank(), static_cast<int>(v), pg.rank() == rounds[v].extra_rank),
                  dir, o)
          .status();
    });
    for (const auto& s : statuses) ASSERT_TRUE(s.ok()) << s.ToString();
    for (int r = 0; r < kRanks; ++r)
      EXPECT_EQ(caches[r].hits() - hits_before[r], rounds[v].hit ? 1u : 0u) << "rank " << r;
    ASSERT_TRUE(CheckLoaded(dir, static_cast<int>(v)).ok());
    auto md = ReadMetadata(dir);
    ASSERT_TRUE(md.ok());
    EXPECT_EQ(md->Find("extra") != nullptr, rounds[v].extra_rank >= 0);
  }
}

TEST_F(PlanCacheTest, AFailedSaveDoesNotPoisonTheCache) {
  std::vector<SavePlanCache> caches(kRanks);
  auto save = [&](const std::string& dir, int version) {
    return RunOnThreadRanks(kRanks, [&](ProcessGroup& pg) -> Status {
      SaveOptions o;
      o.process_group = &pg;
      o.plan_cache = &caches[pg.rank()];
      return Save(RankState(pg.rank(), version, false), dir, o).status();
    });
  };
  for (const auto& s : save(Dir("a"), 1)) ASSERT_TRUE(s.ok());
  // A path under a regular file: the coordinator cannot create it.
  std::filesystem::create_directories(root_);
  FILE* f = fopen(Dir("file").c_str(), "w");
  ASSERT_NE(f, nullptr);
  fclose(f);
  for (const auto& s : save(Dir("file") + "/x", 2)) EXPECT_FALSE(s.ok());
  EXPECT_FALSE(std::filesystem::exists(Dir("file") + "/x/.metadata"));
  for (const auto& s : save(Dir("b"), 3)) ASSERT_TRUE(s.ok());
  EXPECT_TRUE(CheckLoaded(Dir("b"), 3).ok());
  for (const auto& s : save(Dir("c"), 4)) ASSERT_TRUE(s.ok());
  EXPECT_TRUE(CheckLoaded(Dir("c"), 4).ok());
  EXPECT_GE(caches[0].hits(), 1u);
}

TEST_F(PlanCacheTest, SingleProcessReuse) {
  SavePlanCache cache;
  for (int v = 0; v < 3; ++v) {
    SaveOptions o;
    o.plan_cache = &cache;
    Value sd;
    sd["w"] = *Tensor::Zeros(DType::kFloat32, {4});
    sd["step"] = v;
    ASSERT_TRUE(Save(sd, Dir("one"), o).ok());
    auto all = LoadAll(Dir("one"));
    ASSERT_TRUE(all.ok());
    EXPECT_EQ(all->Find("step")->as_int(), v);
  }
  EXPECT_EQ(cache.hits(), 2u);
  EXPECT_EQ(cache.misses(), 1u);
}

}  // namespace
}  // namespace dcpp
