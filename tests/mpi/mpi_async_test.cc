// Async saves over MPI; run under mpirun with 4 ranks (any number >= 2
// works). Each rank makes an AsyncCheckpointer over the MPI group (which
// duplicates the communicator: MPI_THREAD_MULTIPLE), saves its shards in
// the background while its main thread keeps calling collectives on the
// original group, and overwrites its tensors as soon as Save returns; the
// checkpoint is then loaded with another sharding and must hold the values
// at the call. Then a failure: one rank's pool cap is too small, and every
// rank's handle must resolve to the same error naming that rank, with no
// .metadata written. Rank 0 prints "OK" when every rank passed; exits
// non-zero on any failure. Not a gtest binary, like mpi_collectives_test.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "dcpp/async_checkpointer.h"
#include "dcpp/checkpoint.h"
#include "dcpp/process_group.h"

namespace {

namespace fs = std::filesystem;
using dcpp::AsyncCheckpointer;
using dcpp::AsyncSaveHandle;
using dcpp::DType;
using dcpp::ProcessGroup;
using dcpp::Result;
using dcpp::Shape;
using dcpp::ShardedTensor;
using dcpp::Status;
using dcpp::Tensor;
using dcpp::Value;

int failures = 0;

void Fail(const ProcessGroup& pg, const std::string& what) {
  ++failures;
  std::fprintf(stderr, "rank %d: FAIL: %s\n", pg.rank(), what.c_str());
}

#define CHECK_TRUE(pg, cond, what)                                                         \
  do {                                                                                     \
    if (!(cond))                                                                           \
      Fail(pg, std::string(what) + " (" #cond ", line " + std::to_string(__LINE__) + ")"); \
  } while (0)

// Element `index` (row-major, global) of tensor `id` at `version`: exact in
// float for the sizes used here (< 2^24).
float ValueAt(int id, int64_t index, int version) {
  return static_cast<float>(id * 1000000 + index * 4 + version);
}

// The global tensors: a matrix row-sharded on save and column-sharded on
// load, and a vector split in rank order on save and in reverse on load.
// Big enough (8 MiB in all) that the background save takes a while.
const Shape kMatrix{2048, 1024};
const int64_t kVectorLength = 1 << 16;

std::pair<int64_t, int64_t> Part(int64_t total, int n, int k) {
  const int64_t base = total / n, extra = total % n;
  return {k * base + std::min<int64_t>(k, extra), base + (k < extra ? 1 : 0)};
}

// Fills `t`, the box at `offsets` of tensor `id` with global shape
// `global`, with `version`'s values.
void Fill(Tensor& t, int id, const Shape& global, const Shape& offsets, int version) {
  auto* p = static_cast<float*>(t.data());
  const Shape& s = t.shape();
  if (s.size() == 1) {
    for (int64_t i = 0; i < s[0]; ++i) p[i] = ValueAt(id, offsets[0] + i, version);
    return;
  }
  for (int64_t r = 0; r < s[0]; ++r)
    for (int64_t c = 0; c < s[1]; ++c)
      p[r * s[1] + c] = ValueAt(id, (offsets[0] + r) * global[1] + offsets[1] + c, version);
}

// First element of `t` that differs from `version`'s values, or -1.
int64_t FirstDifference(const Tensor& t, int id, const Shape& global, const Shape& offsets,
                        int version) {
  Tensor want = *Tensor::Zeros(DType::kFloat32, t.shape());
  Fill(want, id, global, offsets, version);
  const auto* got = static_cast<const float*>(t.data());
  const auto* exp = static_cast<const float*>(want.data());
  for (int64_t i = 0; i < t.numel(); ++i)
    if (got[i] != exp[i]) return i;
  return -1;
}

struct Shards {
  Value sd;
  Tensor matrix, vector;
  Shape matrix_offsets, vector_offsets;
};

Shards SaveLayout(const ProcessGroup& pg, int version) {
  Shards s;
  auto [row, rows] = Part(kMatrix[0], pg.size(), pg.rank());
  auto [at, len] = Part(kVectorLength, pg.size(), pg.rank());
  s.matrix = *Tensor::Zeros(DType::kFloat32, {rows, kMatrix[1]});
  s.vector = *Tensor::Zeros(DType::kFloat32, {len});
  s.matrix_offsets = {row, 0};
  s.vector_offsets = {at};
  Fill(s.matrix, 1, kMatrix, s.matrix_offsets, version);
  Fill(s.vector, 2, {kVectorLength}, s.vector_offsets, version);
  s.sd["model"]["w"] = ShardedTensor{kMatrix, {{s.matrix_offsets, s.matrix}}};
  s.sd["model"]["b"] = ShardedTensor{{kVectorLength}, {{s.vector_offsets, s.vector}}};
  // Replicated: the same on every rank, written once.
  Tensor scale = *Tensor::Zeros(DType::kFloat32, {16});
  Fill(scale, 3, {16}, {0}, version);
  s.sd["model"]["scale"] = scale;
  s.sd["step"] = 100 + version;
  return s;
}

// Columns for the matrix, the vector's parts in reverse rank order.
Shards LoadLayout(const ProcessGroup& pg) {
  Shards s;
  auto [col, cols] = Part(kMatrix[1], pg.size(), pg.rank());
  auto [at, len] = Part(kVectorLength, pg.size(), pg.size() - 1 - pg.rank());
  s.matrix = *Tensor::Zeros(DType::kFloat32, {kMatrix[0], cols});
  s.vector = *Tensor::Zeros(DType::kFloat32, {len});
  s.matrix_offsets = {0, col};
  s.vector_offsets = {at};
  s.sd["model"]["w"] = ShardedTensor{kMatrix, {{s.matrix_offsets, s.matrix}}};
  s.sd["model"]["b"] = ShardedTensor{{kVectorLength}, {{s.vector_offsets, s.vector}}};
  s.sd["model"]["scale"] = *Tensor::Zeros(DType::kFloat32, {16});
  s.sd["step"] = 0;
  return s;
}

// Distinct bytes per (rank, round).
std::string Payload(int rank, int round) {
  return std::to_string(rank) + ":" + std::to_string(round) + std::string(rank * 7 + 1, 'x');
}

void SnapshotWhileTraining(ProcessGroup& pg, const std::string& dir) {
  auto ckpt = AsyncCheckpointer::Create({.process_group = &pg, .staging_threads = 2});
  CHECK_TRUE(pg, ckpt.ok(), "AsyncCheckpointer::Create: " + ckpt.status().ToString());
  if (!ckpt.ok()) return;
  Shards s = SaveLayout(pg, 0);
  dcpp::SaveOptions so;
  so.process_group = &pg;
  so.files_per_rank = 2;
  AsyncSaveHandle h = (*ckpt)->Save(s.sd, dir, so);
  // The training step goes on at once: new values everywhere.
  Fill(s.matrix, 1, kMatrix, s.matrix_offsets, 1);
  Fill(s.vector, 2, {kVectorLength}, s.vector_offsets, 1);
  Fill(s.sd["model"]["scale"].tensor(), 3, {16}, {0}, 1);
  s.sd["step"] = 101;
  // Collectives on the original group until every rank's save is done (at
  // least 20): the ranks agree on when to stop through the AllGather itself.
  int rounds = 0, rounds_in_flight = 0;
  for (bool all_done = false; !all_done || rounds < 20; ++rounds) {
    const bool done = h.Done();
    rounds_in_flight += done ? 0 : 1;
    Result<std::vector<std::string>> all =
        pg.AllGather(std::string(done ? "1" : "0") + Payload(pg.rank(), rounds));
    CHECK_TRUE(pg, all.ok() && all->size() == static_cast<size_t>(pg.size()),
               "AllGather round " + std::to_string(rounds) + ": " + all.status().ToString());
    if (!all.ok()) return;  // the group is broken: the other ranks fail too
    all_done = true;
    for (int r = 0; r < pg.size(); ++r) {
      const std::string& got = (*all)[r];
      CHECK_TRUE(pg, got.size() > 1 && got.substr(1) == Payload(r, rounds),
                 "AllGather round " + std::to_string(rounds) + " from rank " + std::to_string(r) +
                     " got a message of another collective");
      all_done = all_done && !got.empty() && got[0] == '1';
    }
    if (rounds > 100000) {
      Fail(pg, "the save did not finish after 100000 collectives");
      break;
    }
  }
  Result<dcpp::Metadata> md = h.Wait();
  CHECK_TRUE(pg, md.ok(), "async save: " + md.status().ToString());
  CHECK_TRUE(pg, h.stats().staged_bytes >= s.matrix.nbytes() + s.vector.nbytes(),
             "staged bytes " + std::to_string(h.stats().staged_bytes));
  if (pg.rank() == 0)
    std::printf("async save: staged %.1f MiB per rank in %.1f ms, written in %.1f ms; %d of %d "
                "collectives on the caller's group ran while it was in flight\n",
                h.stats().staged_bytes / 1048576.0, h.stats().stage_seconds * 1e3,
                h.stats().write_seconds * 1e3, rounds_in_flight, rounds);
  if (!md.ok()) return;

  // Load with the other sharding: the values at the call (version 0).
  Shards l = LoadLayout(pg);
  dcpp::LoadOptions lo;
  lo.process_group = &pg;
  Status loaded = dcpp::Load(l.sd, dir, lo);
  CHECK_TRUE(pg, loaded.ok(), "load: " + loaded.ToString());
  if (!loaded.ok()) return;
  int64_t bad = FirstDifference(l.matrix, 1, kMatrix, l.matrix_offsets, 0);
  CHECK_TRUE(pg, bad < 0, "model.w column shard differs at element " + std::to_string(bad));
  bad = FirstDifference(l.vector, 2, {kVectorLength}, l.vector_offsets, 0);
  CHECK_TRUE(pg, bad < 0, "model.b piece differs at element " + std::to_string(bad));
  bad = FirstDifference(l.sd["model"]["scale"].tensor(), 3, {16}, {0}, 0);
  CHECK_TRUE(pg, bad < 0, "model.scale differs at element " + std::to_string(bad));
  const Value* step = l.sd.Find("step");
  CHECK_TRUE(pg, step && step->kind() == Value::Kind::kInt && step->as_int() == 100,
             "step did not load back as 100");
}

// One rank's pool cap is too small: every rank's handle fails alike.
void OneRankCannotStage(ProcessGroup& pg, const std::string& dir) {
  const int bad_rank = pg.size() > 2 ? 2 : 1;
  dcpp::AsyncCheckpointerOptions co{.process_group = &pg};
  if (pg.rank() == bad_rank) co.max_staging_bytes = 4096;
  auto ckpt = AsyncCheckpointer::Create(co);
  CHECK_TRUE(pg, ckpt.ok(), "AsyncCheckpointer::Create: " + ckpt.status().ToString());
  if (!ckpt.ok()) return;
  Shards s = SaveLayout(pg, 0);
  dcpp::SaveOptions so;
  so.process_group = &pg;
  AsyncSaveHandle h = (*ckpt)->Save(s.sd, dir, so);
  // The caller's group stays usable meanwhile.
  Result<std::vector<std::string>> during = pg.AllGather(Payload(pg.rank(), -1));
  CHECK_TRUE(pg, during.ok(), "AllGather during the failing save: " + during.status().ToString());
  Result<dcpp::Metadata> md = h.Wait();
  CHECK_TRUE(pg, !md.ok(), "the save succeeded although rank " + std::to_string(bad_rank) +
                               " could not stage");
  const std::string mine = md.ok() ? "ok" : md.status().ToString();
  CHECK_TRUE(pg, mine.find("rank " + std::to_string(bad_rank)) != std::string::npos,
             "the error does not name rank " + std::to_string(bad_rank) + ": " + mine);
  CHECK_TRUE(pg, mine.find("max_staging_bytes") != std::string::npos,
             "the error does not say why: " + mine);
  Result<std::vector<std::string>> all = pg.AllGather(mine);
  CHECK_TRUE(pg, all.ok(), "AllGather of the errors: " + all.status().ToString());
  if (all.ok())
    for (int r = 0; r < pg.size(); ++r)
      CHECK_TRUE(pg, (*all)[r] == mine,
                 "rank " + std::to_string(r) + " got another result: " + (*all)[r] + " vs " + mine);
  CHECK_TRUE(pg, pg.Barrier().ok(), "Barrier");
  CHECK_TRUE(pg, !fs::exists(dir + "/.metadata"), "a failed save left " + dir + "/.metadata");
  if (pg.rank() == 0) std::printf("failed save, every rank: %s\n", mine.c_str());

  // The checkpointers stay usable: with a state that fits every cap.
  Value small;
  small["step"] = 7;
  Result<dcpp::Metadata> again = (*ckpt)->Save(small, dir, so).Wait();
  CHECK_TRUE(pg, again.ok(), "a save after the failure: " + again.status().ToString());
}

}  // namespace

int main() {
  const auto t0 = std::chrono::steady_clock::now();
  Result<std::unique_ptr<ProcessGroup>> made = dcpp::MakeMpiProcessGroup(std::chrono::seconds(120));
  if (!made.ok()) {
    std::fprintf(stderr, "MakeMpiProcessGroup: %s\n", made.status().ToString().c_str());
    return 2;
  }
  ProcessGroup& pg = **made;
  if (pg.size() < 2) {
    std::fprintf(stderr, "run with at least 2 ranks (mpirun -np 4)\n");
    return 2;
  }
  std::string dir;
  if (pg.rank() == 0) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/dcpp-mpi-async-XXXXXX";
    if (mkdtemp(tmpl.data())) dir = tmpl;
  }
  Result<std::string> shared = pg.Broadcast(dir, 0);
  if (!shared.ok() || shared->empty()) {
    std::fprintf(stderr, "rank %d: no directory: %s\n", pg.rank(),
                 shared.status().ToString().c_str());
    return 2;
  }
  dir = *shared;

  SnapshotWhileTraining(pg, dir + "/snapshot");
  OneRankCannotStage(pg, dir + "/failed");

  Result<std::vector<std::string>> verdicts = pg.AllGather(std::to_string(failures));
  int total = 0;
  if (!verdicts.ok()) {
    std::fprintf(stderr, "rank %d: final AllGather: %s\n", pg.rank(),
                 verdicts.status().ToString().c_str());
    total = failures + 1;
  } else {
    for (const std::string& v : *verdicts) total += std::stoi(v);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (pg.rank() == 0) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (total == 0) {
      std::printf("OK: %d ranks, async saves over MPI passed in %.2f s\n", pg.size(), secs);
    } else {
      std::printf("FAILED: %d failed checks across ranks\n", total);
    }
  }
  return total == 0 ? 0 : 1;
}
