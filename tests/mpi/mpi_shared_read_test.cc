// Replicated entries over MPI read once and sent to the other processes;
// run under mpirun with 4 ranks (any number >= 2 works). The ranks save row
// shards of a matrix plus replicated state (an embedding, a bias, a pickled
// value), then load column shards and the replicated state whole, with
// LoadOptions::share_reads on and off: both loads must be bit-exact, and
// with sharing the replicated entries are read from storage by one rank
// each (the ranks' data bytes read drop by (ranks - 1) copies of them).
// Then a corrupted replicated entry: every rank must fail, naming the file.
// Rank 0 prints "OK" when every rank passed; exits non-zero on any failure.
// Not a gtest binary, like mpi_collectives_test.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "dcpp/checkpoint.h"
#include "dcpp/process_group.h"

namespace {

namespace fs = std::filesystem;
using dcpp::DType;
using dcpp::LoadOptions;
using dcpp::LoadStats;
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

Tensor Filled(const Shape& shape, int seed) {
  Tensor t = *Tensor::Zeros(DType::kInt32, shape);
  auto* p = static_cast<int32_t*>(t.data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<int32_t>(i * 5 + seed);
  return t;
}

const Shape kMatrix{512, 300};
const Shape kEmbed{1000, 600};  // 2.4 MB, replicated
const Shape kBias{300};

std::pair<int64_t, int64_t> Part(int64_t total, int n, int k) {
  int64_t start = 0;
  for (int i = 0; i < k; ++i) start += total / n + (i < total % n);
  return {start, total / n + (k < total % n)};
}

// This rank's band of kMatrix along `dim`, filled from the global (or zeros).
ShardedTensor Band(const Tensor& global, size_t dim, const ProcessGroup& pg, bool fill) {
  auto [start, len] = Part(global.shape()[dim], pg.size(), pg.rank());
  Shape local = global.shape();
  local[dim] = len;
  Shape offsets(2, 0);
  offsets[dim] = start;
  Tensor piece = *Tensor::Zeros(DType::kInt32, local);
  if (fill) {
    auto* dst = static_cast<int32_t*>(piece.data());
    const auto* src = static_cast<const int32_t*>(global.data());
    for (int64_t r = 0; r < local[0]; ++r)
      for (int64_t c = 0; c < local[1]; ++c)
        dst[r * local[1] + c] = src[(r + offsets[0]) * global.shape()[1] + c + offsets[1]];
  }
  ShardedTensor st;
  st.global_shape = global.shape();
  st.shards.push_back({offsets, piece});
  return st;
}

bool BandMatches(const ShardedTensor& st, const Tensor& global) {
  const auto& s = st.shards.at(0);
  const auto* got = static_cast<const int32_t*>(s.local.data());
  const auto* want = static_cast<const int32_t*>(global.data());
  const Shape& local = s.local.shape();
  for (int64_t r = 0; r < local[0]; ++r)
    for (int64_t c = 0; c < local[1]; ++c)
      if (got[r * local[1] + c] !=
          want[(r + s.offsets[0]) * global.shape()[1] + c + s.offsets[1]])
        return false;
  return true;
}

// Loads column bands and the replicated state; returns the sum over ranks of
// LoadStats::data_bytes_read (or -1 when the load failed).
int64_t LoadAndCheck(ProcessGroup& pg, const std::string& dir, bool share) {
  const Tensor matrix = Filled(kMatrix, 1), embed = Filled(kEmbed, 2), bias = Filled(kBias, 3);
  Value sd;
  sd["matrix"] = Band(matrix, 1, pg, false);
  sd["embed"] = *Tensor::Zeros(DType::kInt32, kEmbed);
  sd["bias"] = *Tensor::Zeros(DType::kInt32, kBias);
  sd["note"] = Value();
  LoadStats stats;
  LoadOptions o;
  o.process_group = &pg;
  o.share_reads = share;
  o.stats = &stats;
  Status s = dcpp::Load(sd, dir, o);
  const std::string what = share ? "shared load" : "unshared load";
  CHECK_TRUE(pg, s.ok(), what + ": " + s.ToString());
  if (!s.ok()) return -1;
  CHECK_TRUE(pg, BandMatches(sd.Find("matrix")->sharded(), matrix), what + ": matrix");
  CHECK_TRUE(pg, sd.Find("embed")->tensor().BitwiseEquals(embed), what + ": embed");
  CHECK_TRUE(pg, sd.Find("bias")->tensor().BitwiseEquals(bias), what + ": bias");
  CHECK_TRUE(pg, sd.Find("note")->kind() == Value::Kind::kString && sd.Find("note")->as_string() == "replicated",
             what + ": note");
  CHECK_TRUE(pg, !stats.shared, what + ": processes cannot share memory");
  auto all = pg.AllGather(std::to_string(stats.data_bytes_read));
  if (!all.ok()) return -1;
  int64_t total = 0;
  for (const std::string& v : *all) total += std::stoll(v);
  return total;
}

void SharedReplicatedEntries(ProcessGroup& pg, const std::string& dir) {
  const Tensor matrix = Filled(kMatrix, 1), embed = Filled(kEmbed, 2), bias = Filled(kBias, 3);
  Value sd;
  sd["matrix"] = Band(matrix, 0, pg, true);
  sd["embed"] = embed;
  sd["bias"] = bias;
  sd["note"] = std::string("replicated");
  dcpp::SaveOptions so;
  so.process_group = &pg;
  so.sync_files = false;
  Status saved = dcpp::Save(sd, dir, so).status();
  CHECK_TRUE(pg, saved.ok(), "save: " + saved.ToString());
  if (!saved.ok()) return;
  const int64_t shared = LoadAndCheck(pg, dir, true);
  const int64_t alone = LoadAndCheck(pg, dir, false);
  const int64_t embed_bytes = kEmbed[0] * kEmbed[1] * 4;
  // Alone, every rank reads the embedding; shared, one rank does.
  CHECK_TRUE(pg, shared > 0 && alone - shared >= (pg.size() - 1) * embed_bytes,
             "bytes read: shared " + std::to_string(shared) + ", alone " + std::to_string(alone));
}

void CorruptReplicatedEntry(ProcessGroup& pg, const std::string& dir) {
  // The first load above checked the checkpoint; now rank 0 damages the
  // embedding's bytes, and every rank must fail naming its file.
  std::string file;
  if (pg.rank() == 0) {
    auto md = dcpp::ReadMetadata(dir);
    if (md.ok()) {
      const auto& storage = md->Find("embed")->chunks.at(0).storage;
      file = storage.relative_path;
      std::fstream f(dir + "/" + file, std::ios::in | std::ios::out | std::ios::binary);
      const auto at = static_cast<std::streamoff>(storage.offset + storage.length / 2);
      char b = 0;
      f.seekg(at);
      f.read(&b, 1);
      b = static_cast<char>(b ^ 0x33);
      f.seekp(at);
      f.write(&b, 1);
    }
  }
  auto shared = pg.Broadcast(file, 0);
  if (!shared.ok() || shared->empty()) {
    Fail(pg, "no file to corrupt");
    return;
  }
  Value sd;
  sd["embed"] = *Tensor::Zeros(DType::kInt32, kEmbed);
  LoadOptions o;
  o.process_group = &pg;
  Status s = dcpp::Load(sd, dir, o);
  CHECK_TRUE(pg, s.code() == dcpp::StatusCode::kDataLoss, "corrupt load: " + s.ToString());
  CHECK_TRUE(pg, s.message().find(*shared) != std::string::npos,
             "corrupt load names the file: " + s.ToString());
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
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/dcpp-mpi-shared-XXXXXX";
    if (mkdtemp(tmpl.data())) dir = tmpl;
  }
  Result<std::string> shared = pg.Broadcast(dir, 0);
  if (!shared.ok() || shared->empty()) {
    std::fprintf(stderr, "rank %d: no directory\n", pg.rank());
    return 2;
  }
  dir = *shared;
  SharedReplicatedEntries(pg, dir + "/ckpt");
  CorruptReplicatedEntry(pg, dir + "/ckpt");

  Result<std::vector<std::string>> verdicts = pg.AllGather(std::to_string(failures));
  int total = 0;
  if (!verdicts.ok()) {
    total = failures + 1;
  } else {
    for (const std::string& v : *verdicts) total += std::stoi(v);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (pg.rank() == 0) {
    std::error_code ec;
    fs::remove_all(dir, ec);
    if (total == 0) std::printf("OK (%d ranks, %.2f s)\n", pg.size(), secs);
  }
  return total == 0 ? 0 : 1;
}
