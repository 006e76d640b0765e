// Multi-rank save and load with ranks as threads: sharding, resharding N->M,
// replication, Stateful, and failure semantics.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <set>

#include "temp_dir_test_base.h"
#include "dcpp/checkpoint.h"
#include "dcpp/engine/engine.h"
#include "dcpp/plan/reshard.h"
#include "dcpp/storage/fault_injecting_storage.h"

namespace dcpp {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

using DistributedTest = TempDirTest;

// The global tensor every test shards: element i = i + 1000 * seed (int32).
Tensor Global(const Shape& shape, int seed) {
  Tensor t = *Tensor::Zeros(DType::kInt32, shape);
  auto* p = static_cast<int32_t*>(t.data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<int32_t>(i + 1000 * seed);
  return t;
}

// [start, len) of part `k` of `n` when splitting `total` unevenly (first
// total % n parts one longer).
std::pair<int64_t, int64_t> Part(int64_t total, int n, int k) {
  int64_t start = 0;
  for (int i = 0; i < k; ++i) start += total / n + (i < total % n);
  return {start, total / n + (k < total % n)};
}

// Rank `rank` of `n`'s piece of `global` split along `dim`, as a copy
// (zeros when `empty`).
ShardedTensor Shard(const Tensor& global, size_t dim, int n, int rank, bool empty) {
  ShardedTensor st;
  st.global_shape = global.shape();
  auto [start, len] = Part(global.shape()[dim], n, rank);
  plan::Box whole{Shape(global.shape().size(), 0), global.shape()};
  plan::Box part = whole;
  part.offsets[dim] = start;
  part.sizes[dim] = len;
  Tensor piece = *Tensor::Zeros(global.dtype(), part.sizes);
  if (!empty) EXPECT_TRUE(CopyTensor(plan::SubView(global.view(), whole, part), piece.view()).ok());
  st.shards.push_back({part.offsets, piece});
  return st;
}

// A 2-D grid shard: rank -> (rank / cols, rank % cols).
ShardedTensor GridShard(const Tensor& global, int rows, int cols, int rank) {
  ShardedTensor st;
  st.global_shape = global.shape();
  auto [r0, rl] = Part(global.shape()[0], rows, rank / cols);
  auto [c0, cl] = Part(global.shape()[1], cols, rank % cols);
  plan::Box whole{{0, 0}, global.shape()};
  plan::Box part{{r0, c0}, {rl, cl}};
  Tensor piece = *Tensor::Zeros(global.dtype(), part.sizes);
  EXPECT_TRUE(CopyTensor(plan::SubView(global.view(), whole, part), piece.view()).ok());
  st.shards.push_back({part.offsets, piece});
  return st;
}

bool PiecesMatch(const ShardedTensor& st, const Tensor& global) {
  plan::Box whole{Shape(global.shape().size(), 0), global.shape()};
  for (const auto& s : st.shards)
    if (!Tensor::Borrow(plan::SubView(global.view(), whole, {s.offsets, s.local.shape()}))
             .BitwiseEquals(s.local))
      return false;
  return true;
}

void ExpectAllOk(const std::vector<Status>& statuses) {
  for (size_t r = 0; r < statuses.size(); ++r)
    EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r].ToString();
}

TEST_F(DistributedTest, ReshardsAcrossRankCounts) {
  const Tensor w = Global({10, 6}, 1);  // 10 rows: uneven over 3, 4, 8 ranks
  const Tensor v = Global({7}, 2);
  const Tensor bias = Global({6}, 3);
  for (const auto& nm : std::vector<std::pair<int, int>>{{1, 4}, {4, 1}, {4, 3}, {2, 5}, {8, 3}}) {
    // Not a structured binding: clang 14 refuses one captured by a lambda.
    const int n = nm.first, m = nm.second;
    const std::string dir = Dir("r" + std::to_string(n) + "_" + std::to_string(m));
    ExpectAllOk(RunOnThreadRanks(n, [&](ProcessGroup& pg) -> Status {
      Value sd;
      sd["model"]["w"] = Shard(w, 0, pg.size(), pg.rank(), false);
      sd["model"]["v"] = Shard(v, 0, pg.size(), pg.rank(), false);
      sd["model"]["bias"] = bias;  // replicated
      sd["step"] = 42;
      SaveOptions o;
      o.process_group = &pg;
      o.files_per_rank = 2;
      return Save(sd, dir, o).status();
    }));
    auto md = ReadMetadata(dir);
    ASSERT_TRUE(md.ok()) << md.status().ToString();
    EXPECT_EQ(md->Find("model.w")->chunks.size(), static_cast<size_t>(n));
    EXPECT_EQ(md->Find("model.bias")->chunks.size(), 1u);  // written once

    // Load on m ranks: w by columns (crossing every saved row chunk), v by rows.
    std::mutex mu;
    ExpectAllOk(RunOnThreadRanks(m, [&](ProcessGroup& pg) -> Status {
      Value sd;
      sd["model"]["w"] = Shard(w, 1, pg.size(), pg.rank(), true);
      sd["model"]["v"] = Shard(v, 0, pg.size(), pg.rank(), true);
      sd["model"]["bias"] = *Tensor::Zeros(DType::kInt32, {6});
      sd["step"] = Value();
      LoadOptions o;
      o.process_group = &pg;
      DCPP_RETURN_IF_ERROR(Load(sd, dir, o));
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_TRUE(PiecesMatch(sd.Find("model")->Find("w")->sharded(), w)) << n << "->" << m;
      EXPECT_TRUE(PiecesMatch(sd.Find("model")->Find("v")->sharded(), v)) << n << "->" << m;
      EXPECT_TRUE(sd.Find("model")->Find("bias")->tensor().BitwiseEquals(bias));
      EXPECT_EQ(sd.Find("step")->as_int(), 42);
      return Status();
    }));
    // One process can read the whole thing too.
    auto all = LoadAll(dir);
    ASSERT_TRUE(all.ok());
    EXPECT_TRUE(all->Find("model")->Find("w")->tensor().BitwiseEquals(w));
  }
}

TEST_F(DistributedTest, TwoDimensionalGridToColumns) {
  const Tensor w = Global({9, 8}, 4);
  ExpectAllOk(RunOnThreadRanks(4, [&](ProcessGroup& pg) -> Status {
    Value sd;
    sd["w"] = GridShard(w, 2, 2, pg.rank());
    SaveOptions o;
    o.process_group = &pg;
    return Save(sd, Dir("grid"), o).status();
  }));
  std::mutex mu;
  ExpectAllOk(RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
    Value sd;
    sd["w"] = Shard(w, 1, 3, pg.rank(), true);
    LoadOptions o;
    o.process_group = &pg;
    DCPP_RETURN_IF_ERROR(Load(sd, Dir("grid"), o));
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_TRUE(PiecesMatch(sd.Find("w")->sharded(), w));
    return Status();
  }));
}

TEST_F(DistributedTest, ReplicatedItemsAreSpreadAcrossRanks) {
  ExpectAllOk(RunOnThreadRanks(4, [&](ProcessGroup& pg) -> Status {
    Value sd;
    for (int i = 0; i < 8; ++i) sd["t" + std::to_string(i)] = Global({256}, i);
    SaveOptions o;
    o.process_group = &pg;
    return Save(sd, Dir("rep"), o).status();
  }));
  auto md = ReadMetadata(Dir("rep"));
  ASSERT_TRUE(md.ok());
  std::set<std::string> files;
  for (const auto& e : md->entries) files.insert(e.chunks.at(0).storage.relative_path);
  EXPECT_EQ(files.size(), 4u);  // size-balanced: every rank wrote two
}

class Counter : public Stateful {
 public:
  Result<Value> StateDict() override {
    Value sd;
    sd["count"] = count;
    sd["weights"] = Tensor::Borrow(MakeView(weights.data(), DType::kFloat32, {4}));
    return sd;
  }
  Status LoadStateDict(const Value& state) override {
    count = state.Find("count")->as_int();
    loaded = true;
    return Status();
  }
  int64_t count = 0;
  std::vector<float> weights = std::vector<float>(4, 0.f);
  bool loaded = false;
};

TEST_F(DistributedTest, StatefulObjectsSaveAndRestoreThemselves) {
  ExpectAllOk(RunOnThreadRanks(2, [&](ProcessGroup& pg) -> Status {
    auto c = std::make_shared<Counter>();
    c->count = 17;
    c->weights = {1.f, 2.f, 3.f, 4.f};
    Value sd;
    sd["trainer"] = std::shared_ptr<Stateful>(c);
    SaveOptions o;
    o.process_group = &pg;
    return Save(sd, Dir("stateful"), o).status();
  }));
  ExpectAllOk(RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
    auto c = std::make_shared<Counter>();
    Value sd;
    sd["trainer"] = std::shared_ptr<Stateful>(c);
    LoadOptions o;
    o.process_group = &pg;
    DCPP_RETURN_IF_ERROR(Load(sd, Dir("stateful"), o));
    EXPECT_TRUE(c->loaded);
    EXPECT_EQ(c->count, 17);
    EXPECT_EQ(c->weights, (std::vector<float>{1.f, 2.f, 3.f, 4.f}));  // filled in place
    EXPECT_EQ(sd.Find("trainer")->kind(), Value::Kind::kStateful);
    return Status();
  }));
}

TEST_F(DistributedTest, OneRankFailingToWriteFailsEveryRankAndCommitsNothing) {
  // Creating rank 2's data file fails (injected: no space left).
  fs::create_directories(Dir("fail"));
  auto posix = storage::NewPosixStorage(Dir("fail"));
  auto faulty = storage::FaultInjectingStorage::Wrap(*posix);
  ASSERT_TRUE(faulty.ok());
  (*faulty)->FailCallsNamed(storage::OpKind::kCreate, "__2_0.", storage::FaultType::kNoSpace);
  const Tensor w = Global({8, 2}, 5);
  auto statuses = RunOnThreadRanks(4, [&](ProcessGroup& pg) -> Status {
    Value sd;
    sd["w"] = Shard(w, 0, 4, pg.rank(), false);
    SaveOptions o;
    o.process_group = &pg;
    return engine::Save(sd, **faulty, o).status();
  }, milliseconds(20000));
  for (size_t r = 0; r < statuses.size(); ++r) {
    ASSERT_FALSE(statuses[r].ok());
    EXPECT_EQ(statuses[r], statuses[0]) << "rank " << r << " saw a different error";
    EXPECT_NE(statuses[r].message().find("rank 2"), std::string::npos) << statuses[r].message();
    EXPECT_NE(statuses[r].message().find("__2_0."), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(Dir("fail") + "/.metadata"));
  std::vector<std::string> left;
  for (const auto& f : fs::directory_iterator(Dir("fail"))) left.push_back(f.path().filename());
  EXPECT_EQ(left, std::vector<std::string>{".dcpp.lock"});  // the other ranks cleaned up
}

TEST_F(DistributedTest, InconsistentPlansFailOnEveryRank) {
  auto statuses = RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
    Value sd;
    // Rank 1 disagrees about the global shape.
    ShardedTensor st = Shard(Global({6}, 0), 0, 3, pg.rank(), false);
    if (pg.rank() == 1) st.global_shape = {7};
    sd["w"] = st;
    SaveOptions o;
    o.process_group = &pg;
    return Save(sd, Dir("bad"), o).status();
  });
  for (const auto& s : statuses) {
    EXPECT_EQ(s, statuses[0]);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_NE(s.message().find("'w'"), std::string::npos) << s.message();
  }
  EXPECT_FALSE(fs::exists(Dir("bad") + "/.metadata"));
}

TEST_F(DistributedTest, LocalPlanningErrorNamesTheRank) {
  auto statuses = RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
    Value sd;
    sd["x"] = Global({4}, 0);
    if (pg.rank() == 2) sd["bad"] = Tensor::Borrow(MakeView(nullptr, DType::kFloat32, {3}));
    SaveOptions o;
    o.process_group = &pg;
    return Save(sd, Dir("local"), o).status();
  });
  for (const auto& s : statuses) {
    EXPECT_EQ(s, statuses[0]);
    EXPECT_NE(s.message().find("rank 2"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("'bad'"), std::string::npos) << s.message();
  }
}

TEST_F(DistributedTest, AMissingRankIsATimeoutNotAHang) {
  const auto start = std::chrono::steady_clock::now();
  auto statuses = RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
    if (pg.rank() == 1) return AbortedError("rank 1 crashed before saving");
    Value sd;
    sd["x"] = Global({4}, 0);
    SaveOptions o;
    o.process_group = &pg;
    return Save(sd, Dir("timeout"), o).status();
  }, milliseconds(300));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(statuses[0].code(), StatusCode::kDeadlineExceeded) << statuses[0].ToString();
  EXPECT_EQ(statuses[2].code(), StatusCode::kDeadlineExceeded) << statuses[2].ToString();
  EXPECT_FALSE(fs::exists(Dir("timeout") + "/.metadata"));
}

}  // namespace
}  // namespace dcpp
