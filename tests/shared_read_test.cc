// Thread ranks sharing their reads (LoadOptions::share_reads): resharded
// loads N -> M bit-exact with sharing on and off, each saved byte read once
// for all ranks, and a corrupt chunk read by one rank failing every rank
// with an error that names it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <mutex>

#include "temp_dir_test_base.h"
#include "dcpp/checkpoint.h"
#include "dcpp/plan/reshard.h"

namespace dcpp {
namespace {

namespace fs = std::filesystem;

using SharedReadTest = TempDirTest;

// Element i = i * 7 + seed (int32): every element differs from its
// neighbours, so a misplaced copy shows.
Tensor Global(const Shape& shape, int seed) {
  Tensor t = *Tensor::Zeros(DType::kInt32, shape);
  auto* p = static_cast<int32_t*>(t.data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<int32_t>(i * 7 + seed);
  return t;
}

// [start, len) of part k of n of `total` (the first total % n parts one longer).
std::pair<int64_t, int64_t> Part(int64_t total, int n, int k) {
  int64_t start = 0;
  for (int i = 0; i < k; ++i) start += total / n + (i < total % n);
  return {start, total / n + (k < total % n)};
}

// Rank `rank` of a rows x cols grid of `global` (cols == 1: row bands;
// rows == 1: column bands), as a copy of the data (zeros when `empty`).
ShardedTensor GridShard(const Tensor& global, int rows, int cols, int rank, bool empty) {
  ShardedTensor st;
  st.global_shape = global.shape();
  auto [r0, rl] = Part(global.shape()[0], rows, rank / cols);
  auto [c0, cl] = Part(global.shape()[1], cols, rank % cols);
  plan::Box whole{{0, 0}, global.shape()};
  plan::Box part{{r0, c0}, {rl, cl}};
  Tensor piece = *Tensor::Zeros(global.dtype(), part.sizes);
  if (!empty) EXPECT_TRUE(CopyTensor(plan::SubView(global.view(), whole, part), piece.view()).ok());
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

class Trainer : public Stateful {
 public:
  Result<Value> StateDict() override {
    Value sd;
    sd["step"] = step;
    sd["ema"] = Tensor::Borrow(MakeView(ema.data(), DType::kInt32, {static_cast<int64_t>(ema.size())}));
    return sd;
  }
  Status LoadStateDict(const Value& state) override {
    step = state.Find("step")->as_int();
    return Status();
  }
  int64_t step = 0;
  std::vector<int32_t> ema = std::vector<int32_t>(1000, 0);
};

// The state every test saves: a large tensor (chunks above the 1 MiB below
// which chunks are read whole), a small one, a 1-D one, a replicated bias,
// a value and a Stateful object.
struct Model {
  Tensor big = Global({1200, 1030}, 1);  // 4.9 MB: 1.2 MB row chunks on 4 ranks
  Tensor small = Global({50, 33}, 2);
  Tensor vec = Global({100003}, 3);
  Tensor bias = Global({1030}, 4);
};

// Saves `m` on `n` ranks, each holding row bands (grid 2 x 2 when `grid`).
void SaveModel(const Model& m, const std::string& dir, int n, bool grid,
               std::vector<std::string> transforms = {}) {
  auto statuses = RunOnThreadRanks(n, [&](ProcessGroup& pg) -> Status {
    const int rows = grid ? 2 : pg.size(), cols = grid ? 2 : 1;
    auto trainer = std::make_shared<Trainer>();
    trainer->step = 99;
    for (size_t i = 0; i < trainer->ema.size(); ++i) trainer->ema[i] = static_cast<int32_t>(i * 3);
    Value sd;
    sd["model"]["big"] = GridShard(m.big, rows, cols, pg.rank(), false);
    sd["model"]["small"] = GridShard(m.small, rows, cols, pg.rank(), false);
    ShardedTensor vec;
    vec.global_shape = m.vec.shape();
    auto [v0, vl] = Part(m.vec.shape()[0], pg.size(), pg.rank());
    Tensor piece = *Tensor::Zeros(DType::kInt32, {vl});
    EXPECT_TRUE(CopyTensor(plan::SubView(m.vec.view(), {{0}, m.vec.shape()}, {{v0}, {vl}}),
                           piece.view())
                    .ok());
    vec.shards.push_back({{v0}, piece});
    sd["model"]["vec"] = vec;
    sd["model"]["bias"] = m.bias;  // replicated
    sd["note"] = std::string("hello");
    sd["trainer"] = std::shared_ptr<Stateful>(trainer);
    SaveOptions o;
    o.process_group = &pg;
    o.transforms = transforms;
    o.sync_files = false;
    return Save(sd, dir, o).status();
  });
  for (size_t r = 0; r < statuses.size(); ++r)
    ASSERT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r].ToString();
}

// Loads `dir` on `ranks` ranks (big and small by column bands, vec by
// uneven pieces, the rest whole) and checks every byte; returns each
// rank's stats.
std::vector<LoadStats> LoadModel(const Model& m, const std::string& dir, int ranks, bool share) {
  std::vector<LoadStats> stats(ranks);
  std::mutex mu;
  auto statuses = RunOnThreadRanks(ranks, [&](ProcessGroup& pg) -> Status {
    auto trainer = std::make_shared<Trainer>();
    Value sd;
    sd["model"]["big"] = GridShard(m.big, 1, pg.size(), pg.rank(), true);
    sd["model"]["small"] = GridShard(m.small, 1, pg.size(), pg.rank(), true);
    ShardedTensor vec;
    vec.global_shape = m.vec.shape();
    // Pieces of another split than the save's: every boundary moves.
    auto [v0, vl] = Part(m.vec.shape()[0] - 5, pg.size(), pg.rank());
    if (pg.rank() == pg.size() - 1) vl += 5;
    vec.shards.push_back({{v0}, *Tensor::Zeros(DType::kInt32, {vl})});
    sd["model"]["vec"] = vec;
    sd["model"]["bias"] = *Tensor::Zeros(DType::kInt32, {1030});
    sd["note"] = Value();
    sd["trainer"] = std::shared_ptr<Stateful>(trainer);
    LoadOptions o;
    o.process_group = &pg;
    o.share_reads = share;
    o.stats = &stats[pg.rank()];
    DCPP_RETURN_IF_ERROR(Load(sd, dir, o));
    std::lock_guard<std::mutex> lock(mu);
    const std::string where = "rank " + std::to_string(pg.rank()) + " of " +
                              std::to_string(ranks) + (share ? ", shared" : ", alone");
    EXPECT_TRUE(PiecesMatch(sd.Find("model")->Find("big")->sharded(), m.big)) << where;
    EXPECT_TRUE(PiecesMatch(sd.Find("model")->Find("small")->sharded(), m.small)) << where;
    EXPECT_TRUE(PiecesMatch(sd.Find("model")->Find("vec")->sharded(), m.vec)) << where;
    EXPECT_TRUE(sd.Find("model")->Find("bias")->tensor().BitwiseEquals(m.bias)) << where;
    EXPECT_EQ(sd.Find("note")->as_string(), "hello") << where;
    EXPECT_EQ(trainer->step, 99) << where;
    for (size_t i = 0; i < trainer->ema.size(); ++i)
      if (trainer->ema[i] != static_cast<int32_t>(i * 3)) {
        ADD_FAILURE() << where << ": ema[" << i << "] = " << trainer->ema[i];
        break;
      }
    EXPECT_EQ(stats[pg.rank()].shared, share && ranks > 1) << where;
    return Status();
  });
  for (size_t r = 0; r < statuses.size(); ++r)
    EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r].ToString();
  return stats;
}

uint64_t DataFileBytes(const std::string& dir) {
  uint64_t n = 0;
  for (const auto& f : fs::directory_iterator(dir))
    if (f.path().extension() == ".distcp") n += f.file_size();
  return n;
}

TEST_F(SharedReadTest, ReshardedLoadsAreBitExactWithSharingOnAndOff) {
  const Model m;
  struct Case {
    int save_ranks;
    bool grid;
    std::vector<std::string> transforms;
  };
  const std::vector<Case> cases = {
      {4, false, {}}, {4, true, {}}, {3, false, {"stream.zstd/1"}}, {2, false, {}}};
  for (size_t c = 0; c < cases.size(); ++c) {
    const std::string dir = Dir("c" + std::to_string(c));
    SaveModel(m, dir, cases[c].save_ranks, cases[c].grid, cases[c].transforms);
    for (int ranks : {1, 3, 5})
      for (bool share : {true, false}) {
        SCOPED_TRACE("case " + std::to_string(c) + ", " + std::to_string(ranks) + " ranks, " +
                     (share ? "shared" : "alone"));
        LoadModel(m, dir, ranks, share);
      }
  }
}

TEST_F(SharedReadTest, EachSavedByteIsReadOnceForAllRanks) {
  const Model m;
  SaveModel(m, Dir("once"), 4, false);
  const uint64_t saved = DataFileBytes(Dir("once"));
  auto md = ReadMetadata(Dir("once"));
  ASSERT_TRUE(md.ok());
  uint64_t chunks = 0, values = 0, large = 0;
  for (const auto& e : md->entries) {
    if (e.is_tensor()) {
      chunks += e.chunks.size();
      for (const auto& c : e.chunks) large += c.storage.length > (uint64_t{1} << 20);
    } else {
      ++values;
    }
  }
  ASSERT_GE(large, 4u);
  auto sum = [](const std::vector<LoadStats>& s, uint64_t LoadStats::*field) {
    uint64_t n = 0;
    for (const auto& x : s) n += x.*field;
    return n;
  };
  const auto shared = LoadModel(m, Dir("once"), 3, true);
  const auto alone = LoadModel(m, Dir("once"), 3, false);
  // Shared: every chunk and value read by exactly one rank, and the bytes
  // read are the data files' once, plus what locating a large chunk's
  // records reads again (the zip reader's 64 KiB windows at the archive's
  // head and tail).
  EXPECT_EQ(sum(shared, &LoadStats::chunks_read), chunks);
  EXPECT_EQ(sum(shared, &LoadStats::values_read), values);
  const uint64_t shared_bytes = sum(shared, &LoadStats::data_bytes_read);
  EXPECT_GE(shared_bytes, saved * 95 / 100);
  EXPECT_LE(shared_bytes, saved + large * (uint64_t{160} << 10));
  // The work is spread (by whole chunks: 4 large ones over 3 ranks).
  for (const auto& s : shared) {
    EXPECT_GT(s.data_bytes_read, saved / 8);
    EXPECT_LE(s.data_bytes_read, saved * 55 / 100);
  }
  // Alone: each rank reads the rows its column band crosses, nearly the
  // whole file each.
  EXPECT_GT(sum(alone, &LoadStats::data_bytes_read), saved * 5 / 2);
  for (const auto& s : shared) EXPECT_GE(s.bytes_read, s.data_bytes_read);
}

TEST_F(SharedReadTest, ACorruptChunkReadByOneRankFailsEveryRankNamingIt) {
  const Model m;
  SaveModel(m, Dir("bad"), 4, false);
  auto md = ReadMetadata(Dir("bad"));
  ASSERT_TRUE(md.ok());
  const ChunkMeta& chunk = md->Find("model.big")->chunks.at(1);
  {
    std::fstream f(Dir("bad") + "/" + chunk.storage.relative_path,
                   std::ios::in | std::ios::out | std::ios::binary);
    const auto at = static_cast<std::streamoff>(chunk.storage.offset + chunk.storage.length / 2);
    f.seekg(at);
    char b = 0;
    f.read(&b, 1);
    b = static_cast<char>(b ^ 0x5a);
    f.seekp(at);
    f.write(&b, 1);
  }
  auto statuses = RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
    Value sd;
    sd["model"]["big"] = GridShard(m.big, 1, pg.size(), pg.rank(), true);
    LoadOptions o;
    o.process_group = &pg;
    return Load(sd, Dir("bad"), o);
  });
  ASSERT_EQ(statuses.size(), 3u);
  for (size_t r = 0; r < statuses.size(); ++r) {
    EXPECT_EQ(statuses[r].code(), StatusCode::kDataLoss) << statuses[r].ToString();
    EXPECT_NE(statuses[r].message().find(chunk.storage.relative_path), std::string::npos)
        << statuses[r].ToString();
    EXPECT_NE(statuses[r].message().find("failed on rank"), std::string::npos)
        << statuses[r].ToString();
    EXPECT_EQ(statuses[r].message(), statuses[0].message());
  }
}

}  // namespace
}  // namespace dcpp
