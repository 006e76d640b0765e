// The commit protocol under injected faults and crashes: a save (fresh, or
// replacing a checkpoint) through FaultInjectingStorage over MemoryStorage
// fails or "crashes" at every call index of every mutating kind, on 1 rank
// and on 4 thread ranks. Afterwards (and again after Recover(), which leaves
// what a machine crash would) the location must hold the old complete
// checkpoint, the new complete one, or none: never a mix that loads. Every
// rank returns the same error, a save that returned OK is durable, and the
// next save succeeds and reclaims every unreferenced data file.
#include <gtest/gtest.h>

#include <cstdio>
#include <map>
#include <random>
#include <unordered_set>

#include "dcpp/checkpoint.h"
#include "dcpp/engine/engine.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/fault_injecting_storage.h"
#include "dcpp/storage/storage.h"

namespace dcpp {
namespace {

using storage::FaultInjectingStorage;
using storage::FaultType;
using storage::OpKind;
using std::chrono::milliseconds;

// `tensors` int32 tensors of `rows` x 4 whose values depend on `seed`,
// split by rows over `ranks` (each rank's ShardedTensor holds its rows),
// plus a replicated tensor and a plain value.
struct Spec {
  int tensors = 2;
  int64_t rows = 8;
  int file_per_rank = 1;  // SaveOptions.files_per_rank
  std::vector<std::string> transforms;
};

Tensor Filled(Shape shape, int seed, int64_t first = 0) {
  Tensor t = *Tensor::Zeros(DType::kInt32, shape);
  auto* p = static_cast<int32_t*>(t.data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<int32_t>(first + i + 100000 * seed);
  return t;
}

Value RankState(const Spec& s, int seed, int rank, int ranks) {
  Value sd;
  for (int k = 0; k < s.tensors; ++k) {
    const int64_t per = s.rows / ranks, start = per * rank;
    const int64_t len = rank == ranks - 1 ? s.rows - start : per;
    ShardedTensor st;
    st.global_shape = {s.rows, 4};
    st.shards.push_back({{start, 0}, Filled({len, 4}, seed + k, start * 4)});
    sd["model"]["w" + std::to_string(k)] = Value(std::move(st));
  }
  sd["model"]["bias"] = Filled({3}, seed + 50);
  sd["step"] = 1000 + seed;
  return sd;
}

// What LoadAll returns for a checkpoint of RankState(seed).
Value Whole(const Spec& s, int seed) {
  Value sd;
  for (int k = 0; k < s.tensors; ++k)
    sd["model"]["w" + std::to_string(k)] = Filled({s.rows, 4}, seed + k);
  sd["model"]["bias"] = Filled({3}, seed + 50);
  sd["step"] = 1000 + seed;
  return sd;
}

// Saves RankState(seed) on `ranks` thread ranks; one status per rank.
std::vector<Status> SaveOn(storage::Storage& st, const Spec& s, int seed, int ranks) {
  auto run = [&](ProcessGroup* pg) -> Status {
    SaveOptions o;
    o.process_group = pg;
    o.files_per_rank = s.file_per_rank;
    o.transforms = s.transforms;
    return engine::Save(RankState(s, seed, pg ? pg->rank() : 0, ranks), st, o).status();
  };
  if (ranks == 1) return {run(nullptr)};
  return RunOnThreadRanks(ranks, [&](ProcessGroup& pg) { return run(&pg); }, milliseconds(30000));
}

enum class Outcome { kOld, kNew, kNone, kTorn };
const char* Name(Outcome o) {
  switch (o) {
    case Outcome::kOld: return "old";
    case Outcome::kNew: return "new";
    case Outcome::kNone: return "none";
    case Outcome::kTorn: return "torn";
  }
  return "?";
}

// What the location holds: no .metadata (none), or a checkpoint that loads
// and equals the old or the new state; anything else is torn (a .metadata
// that fails to load, or loads values of neither state).
Outcome Classify(storage::Storage& st, const Spec& s, int old_seed, int new_seed,
                 std::string* why) {
  auto md = storage::ReadCheckpointMetadata(st);
  if (!md.ok()) {
    if (md.status().code() == StatusCode::kNotFound) return Outcome::kNone;
    *why = md.status().ToString();
    return Outcome::kTorn;
  }
  auto all = engine::LoadAll(st, {});
  if (!all.ok()) {
    *why = all.status().ToString();
    return Outcome::kTorn;
  }
  if (old_seed >= 0 && all->Equals(Whole(s, old_seed))) return Outcome::kOld;
  if (all->Equals(Whole(s, new_seed))) return Outcome::kNew;
  *why = "loads values of neither state";
  return Outcome::kTorn;
}

// Every `__*.distcp` and `.metadata*.tmp` in `st` is referenced by its
// .metadata (a committed checkpoint must be there).
void ExpectNoUnreferenced(storage::Storage& st, const std::string& where) {
  auto md = storage::ReadCheckpointMetadata(st);
  ASSERT_TRUE(md.ok()) << where << ": " << md.status().ToString();
  std::unordered_set<std::string> used;
  for (const auto& e : md->entries) {
    if (e.is_tensor())
      for (const auto& c : e.chunks) used.insert(c.storage.relative_path);
    else
      used.insert(e.storage.relative_path);
  }
  auto names = st.List();
  ASSERT_TRUE(names.ok());
  for (const auto& n : *names) {
    EXPECT_FALSE(io::IsTempMetadataName(n)) << where << ": " << n << " left";
    if (io::IsDataFileName(n)) EXPECT_TRUE(used.count(n)) << where << ": " << n << " unreferenced";
  }
}

struct Tally {
  std::map<std::string, std::array<int, 4>> rows;  // scenario -> counts per Outcome
  void Add(const std::string& row, Outcome o) { rows[row][static_cast<int>(o)]++; }
  void Print() const {
    std::printf("%-44s %6s %6s %6s %6s\n", "cases (scenario / fault)", "old", "new", "none",
                "torn");
    for (const auto& [row, c] : rows)
      std::printf("%-44s %6d %6d %6d %6d\n", row.c_str(), c[0], c[1], c[2], c[3]);
  }
};

struct Fault {
  bool crash = false;
  OpKind kind = OpKind::kWrite;
  uint64_t index = 0;
  FaultType type = FaultType::kIoError;
  std::string Label() const {
    if (crash) return "crash@" + std::to_string(index);
    return std::string(storage::OpKindName(kind)) + "#" + std::to_string(index) +
           (type == FaultType::kShortWrite ? " short" : type == FaultType::kNoSpace ? " ENOSPC"
                                                                                     : " EIO");
  }
};

// One case: an optional old checkpoint (seed 1), the faulty save of seed 2,
// the checks, recovery, the checks again, and a clean save of seed 3.
void RunCase(const Spec& s, int ranks, bool overwrite, const Fault& f, const std::string& row,
             Tally* tally) {
  const std::string where = row + " " + f.Label();
  auto mem = storage::NewMemoryStorage();
  if (overwrite) {
    for (const Status& st : SaveOn(*mem, s, 1, ranks)) ASSERT_TRUE(st.ok()) << st.ToString();
  }
  const int old_seed = overwrite ? 1 : -1;
  auto fi = FaultInjectingStorage::Wrap(*mem);
  ASSERT_TRUE(fi.ok());
  if (f.crash)
    (*fi)->CrashAt(f.index);
  else
    (*fi)->FailCall(f.kind, f.index, f.type);
  const std::vector<Status> statuses = SaveOn(**fi, s, 2, ranks);
  for (size_t r = 1; r < statuses.size(); ++r)
    EXPECT_EQ(statuses[r], statuses[0]) << where << ": rank " << r << " saw a different error: "
                                         << statuses[r].ToString() << " vs "
                                         << statuses[0].ToString();
  const bool saved = statuses[0].ok();

  std::string why;
  if (!f.crash) {
    // The process lives on: what it sees now must be consistent too.
    const Outcome now = Classify(*mem, s, old_seed, 2, &why);
    EXPECT_NE(now, Outcome::kTorn) << where << " (before recovery): " << why;
    if (saved) EXPECT_EQ(now, Outcome::kNew) << where << ": save returned OK";
    if (overwrite) EXPECT_NE(now, Outcome::kNone) << where << ": the old checkpoint was lost";
  }
  ASSERT_TRUE((*fi)->Recover().ok());
  const Outcome after = Classify(*mem, s, old_seed, 2, &why);
  tally->Add(row + (f.crash ? " / crash" : " / fail " + std::string(storage::OpKindName(f.kind))),
             after);
  EXPECT_NE(after, Outcome::kTorn) << where << ": " << why;
  if (saved) EXPECT_EQ(after, Outcome::kNew) << where << ": a save that returned OK is not durable";
  if (overwrite) EXPECT_NE(after, Outcome::kNone) << where << ": the old checkpoint was lost";

  // The next save succeeds and leaves nothing unreferenced.
  for (const Status& st : SaveOn(*mem, s, 3, ranks))
    ASSERT_TRUE(st.ok()) << where << ": next save: " << st.ToString();
  EXPECT_EQ(Classify(*mem, s, -1, 3, &why), Outcome::kNew) << where << ": next save: " << why;
  ExpectNoUnreferenced(*mem, where + " next save");
}

// Calls of each kind a clean save makes.
std::map<OpKind, uint64_t> CountCalls(const Spec& s, int ranks, bool overwrite,
                                      uint64_t* total) {
  auto mem = storage::NewMemoryStorage();
  if (overwrite) SaveOn(*mem, s, 1, ranks);
  auto fi = FaultInjectingStorage::Wrap(*mem);
  for (const Status& st : SaveOn(**fi, s, 2, ranks)) EXPECT_TRUE(st.ok()) << st.ToString();
  std::map<OpKind, uint64_t> counts;
  for (int k = 0; k < static_cast<int>(OpKind::kCount); ++k)
    counts[static_cast<OpKind>(k)] = (*fi)->Count(static_cast<OpKind>(k));
  *total = (*fi)->TotalCalls();
  return counts;
}

const OpKind kMutating[] = {OpKind::kCreateLocation, OpKind::kLock,   OpKind::kCreate,
                            OpKind::kWrite,          OpKind::kSync,   OpKind::kClose,
                            OpKind::kRename,         OpKind::kRemove, OpKind::kSyncDir};

std::vector<Fault> EveryFault(const std::map<OpKind, uint64_t>& counts, uint64_t total) {
  std::vector<Fault> out;
  for (OpKind k : kMutating) {
    for (uint64_t i = 0; i < counts.at(k); ++i) {
      if (k == OpKind::kWrite) {
        out.push_back({false, k, i, FaultType::kShortWrite});
        out.push_back({false, k, i, FaultType::kNoSpace});
      } else {
        out.push_back(
            {false, k, i, k == OpKind::kCreate ? FaultType::kNoSpace : FaultType::kIoError});
      }
    }
  }
  for (uint64_t i = 0; i <= total; ++i) out.push_back({true, OpKind::kWrite, i, {}});
  return out;
}

Tally& SharedTally() {
  static Tally t;
  return t;
}

class CrashFaultTest : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(CrashFaultTest, EveryCallIndexOfASmallCheckpoint) {
  const auto [ranks, overwrite] = GetParam();
  const Spec s;
  uint64_t total = 0;
  const auto counts = CountCalls(s, ranks, overwrite, &total);
  ASSERT_GT(counts.at(OpKind::kWrite), 0u);
  ASSERT_GT(counts.at(OpKind::kRename), 0u);
  const std::string row = std::string(overwrite ? "overwrite" : "fresh") + ", " +
                          std::to_string(ranks) + " rank" + (ranks > 1 ? "s" : "");
  for (const Fault& f : EveryFault(counts, total)) {
    RunCase(s, ranks, overwrite, f, row, &SharedTally());
    if (HasFatalFailure()) return;
  }
}

TEST_P(CrashFaultTest, RandomCallIndicesOfALargerCheckpoint) {
  const auto [ranks, overwrite] = GetParam();
  Spec s;
  s.tensors = 24;
  s.rows = 4096;  // 64 KiB per tensor, about 1.5 MiB in all
  s.file_per_rank = 2;
  if (overwrite) s.transforms = {"stream.zstd/1"};  // the streamed write path too
  uint64_t total = 0;
  const auto counts = CountCalls(s, ranks, overwrite, &total);
  const std::string row = std::string(overwrite ? "overwrite" : "fresh") + ", " +
                          std::to_string(ranks) + " rank" + (ranks > 1 ? "s" : "") +
                          (s.transforms.empty() ? ", large" : ", large zstd");
  // Random indices, a few of every kind (writes far outnumber the rest) and
  // a dozen crash points.
  std::mt19937 rng(1234 + ranks * 2 + overwrite);
  std::map<std::pair<bool, OpKind>, std::vector<Fault>> by_kind;
  for (const Fault& f : EveryFault(counts, total)) by_kind[{f.crash, f.kind}].push_back(f);
  std::vector<Fault> picked;
  for (auto& [key, faults] : by_kind) {
    std::shuffle(faults.begin(), faults.end(), rng);
    const size_t n = key.first ? 12 : 3;
    picked.insert(picked.end(), faults.begin(), faults.begin() + std::min(n, faults.size()));
  }
  for (const Fault& f : picked) {
    RunCase(s, ranks, overwrite, f, row, &SharedTally());
    if (HasFatalFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(RanksAndOverwrite, CrashFaultTest,
                         ::testing::Combine(::testing::Values(1, 4), ::testing::Bool()));

// Prints the outcome table (cases x outcomes) once every case has run.
class TallyPrinter : public ::testing::Environment {
 public:
  void TearDown() override {
    if (!SharedTally().rows.empty()) SharedTally().Print();
  }
};
const auto* const kPrinter = ::testing::AddGlobalTestEnvironment(new TallyPrinter);

}  // namespace
}  // namespace dcpp
