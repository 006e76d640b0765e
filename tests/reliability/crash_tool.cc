// dcpp_crash_tool: one save or one inspection per process, for the crash and
// race tests in this folder (test_crash_race.py kills and races these
// processes; the tool itself never injects a fault).
//
//   dcpp_crash_tool save DIR SEED [--mib N] [--ranks R] [--files F]
//                   [--lock-timeout-ms T] [--wait-go]
//   dcpp_crash_tool check DIR [--candidates S1,S2,...]
//   dcpp_crash_tool leftovers DIR [--ignore NAME]...
//
// save: saves the state dict of SEED (below) to DIR, overwrite on, sync on.
//   With --ranks R > 1 the big tensors are split by rows over R thread
//   ranks (DTensor's Shard(0) layout) and saved through RunOnThreadRanks;
//   with R = 1 one process saves plain tensors. Prints "ready" once the data
//   is built (with --wait-go it then waits for a line on stdin, so racing
//   processes start their saves together), "saving" just before Save, and
//   "ok save_ms=..." after it. Exit 0 on success; 1 with "error: <status>"
//   on stderr when Save fails (every rank's error when ranks disagree, exit 3
//   then: every rank must return the same status); 2 on bad arguments.
// check: prints exactly one line on stdout:
//   none      DIR has no .metadata (nothing committed)
//   seed=S    every value in DIR equals the state of seed S, every byte
//             compared (S is read from "step", then everything is checked)
//   torn      anything else: a load error with .metadata present (a missing
//             data file included), values of several seeds, wrong values
//   Details of a torn result go to stderr; with --candidates, each wrong
//   tensor is matched block by block against those seeds, which shows a mix.
// leftovers: every file under DIR that the committed .metadata does not
//   reference (all of them when nothing is committed), except .metadata,
//   the lock file .dcpp.lock, the committed save's checksum sidecar
//   (.checksums.<save_id>) and names given with --ignore: one line
//   "BYTES NAME" each, then "total BYTES NFILES".
//
// The state of seed S: the same structure, shapes and dtypes for every seed
// (so a mix of two seeds loads without error and only the bytes tell), and
// bytes that differ between seeds everywhere:
//   model.layers.0.weight  float32 [128*N, 1024]   sharded   (N = --mib)
//   model.layers.1.weight  bfloat16 [128*N + 1, 1024] sharded
//   optim.exp_avg          float64 [64*N, 512]     sharded
//   model.bias float32 [1024], model.embed_idx int64 [257],
//   model.mask bool [1000], model.scale float32 [], model.q int8 [3, 5, 7]
//   step = S (int), optim.lr float, tag "seed-S" (str), blob (1000 bytes),
//   history [S, S+1, S+2] (list of ints)
// About N MiB in all.
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "dcpp/checkpoint.h"

namespace {

namespace fs = std::filesystem;
using dcpp::DType;
using dcpp::Shape;
using dcpp::Status;
using dcpp::Tensor;
using dcpp::Value;

constexpr int kUsage = 2;

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

uint64_t HashName(const std::string& s) {  // FNV-1a
  uint64_t h = 0xCBF29CE484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
  return h;
}

// The bytes of tensor `fqn` under `seed`: a keyed pseudo-random stream.
void FillBytes(uint8_t* p, size_t n, int64_t seed, const std::string& fqn, DType dtype) {
  const uint64_t key = Mix(static_cast<uint64_t>(seed) ^ HashName(fqn));
  size_t i = 0;
  for (uint64_t w = 0; i < n; ++w) {
    uint64_t x = Mix(key + w * 0xD1B54A32D192ED03ull);
    size_t take = std::min<size_t>(8, n - i);
    std::memcpy(p + i, &x, take);
    i += take;
  }
  // Bytes a bool may hold are 0 and 1.
  if (dtype == DType::kBool)
    for (size_t k = 0; k < n; ++k) p[k] &= 1;
}

struct TensorSpec {
  std::vector<std::string> path;  // from the root: dict keys, or decimal list indices under "layers"
  DType dtype;
  Shape shape;
  bool sharded;  // split by rows across ranks
  std::string fqn() const {
    std::string s;
    for (const auto& p : path) s += (s.empty() ? "" : ".") + p;
    return s;
  }
};

std::vector<TensorSpec> Specs(int64_t mib) {
  return {
      {{"model", "layers", "0", "weight"}, DType::kFloat32, {128 * mib, 1024}, true},
      {{"model", "layers", "1", "weight"}, DType::kBFloat16, {128 * mib + 1, 1024}, true},
      {{"optim", "exp_avg"}, DType::kFloat64, {64 * mib, 512}, true},
      {{"model", "bias"}, DType::kFloat32, {1024}, false},
      {{"model", "embed_idx"}, DType::kInt64, {257}, false},
      {{"model", "mask"}, DType::kBool, {1000}, false},
      {{"model", "scale"}, DType::kFloat32, {}, false},
      {{"model", "q"}, DType::kInt8, {3, 5, 7}, false},
  };
}

Tensor Generate(const TensorSpec& spec, int64_t seed) {
  auto t = Tensor::Zeros(spec.dtype, spec.shape);
  if (!t.ok()) {
    std::fprintf(stderr, "error: %s\n", t.status().ToString().c_str());
    std::exit(1);
  }
  FillBytes(static_cast<uint8_t*>(t->data()), t->nbytes(), seed, spec.fqn(), spec.dtype);
  return *t;
}

std::string Blob(int64_t seed) {
  std::string b(1000, '\0');
  FillBytes(reinterpret_cast<uint8_t*>(b.data()), b.size(), seed, "blob", DType::kUInt8);
  return b;
}

double LearningRate(int64_t seed) { return 0.5 + 0.001 * static_cast<double>(seed); }

// Where `spec` sits in `root`; "layers" holds a list, everything else dicts.
Value& Slot(Value& root, const std::vector<std::string>& path) {
  Value* v = &root;
  for (size_t i = 0; i < path.size(); ++i) {
    if (path[i] == "layers") {
      Value& list = (*v)["layers"];
      if (list.is_none()) list = Value::List({Value::EmptyDict(), Value::EmptyDict()});
      v = &list.items()[std::stoi(path[++i])];
    } else {
      v = &(*v)[path[i]];
    }
  }
  return *v;
}

void SetPlainValues(Value& sd, int64_t seed) {
  sd["step"] = seed;
  sd["optim"]["lr"] = LearningRate(seed);
  sd["tag"] = "seed-" + std::to_string(seed);
  sd["blob"] = Value::Bytes(Blob(seed));
  sd["history"] = Value::List({Value(seed), Value(seed + 1), Value(seed + 2)});
}

// Rows [begin, end) of `rows` held by `rank` of `n` (DTensor's Shard(0)).
std::pair<int64_t, int64_t> RowRange(int64_t rows, int rank, int n) {
  const int64_t per = (rows + n - 1) / n;
  const int64_t begin = std::min(rows, per * rank);
  return {begin, std::min(rows, begin + per)};
}

// Rank `rank` of `n`'s state dict, borrowing the global tensors in `full`.
Value RankState(const std::vector<TensorSpec>& specs, const std::vector<Tensor>& full,
                int64_t seed, int rank, int n) {
  Value sd = Value::EmptyDict();
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    if (!s.sharded || n == 1) {
      Slot(sd, s.path) = full[i];
      continue;
    }
    auto [begin, end] = RowRange(s.shape[0], rank, n);
    const size_t row_bytes = full[i].nbytes() / static_cast<size_t>(s.shape[0]);
    Shape local = s.shape;
    local[0] = end - begin;
    dcpp::ShardedTensor st;
    st.global_shape = s.shape;
    st.shards.push_back({{begin, 0},
                         Tensor::Borrow(dcpp::MakeView(
                             static_cast<uint8_t*>(full[i].data()) + begin * row_bytes, s.dtype,
                             local))});
    Slot(sd, s.path) = Value(std::move(st));
  }
  SetPlainValues(sd, seed);
  return sd;
}

bool ParseInt(const std::string& s, int64_t* out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *out);
  return ec == std::errc() && p == s.data() + s.size();
}

// SaveOptions.lock_timeout_ms exists only in builds with the directory lock.
template <typename O>
bool SetLockTimeout(O& o, int64_t ms) {
  if constexpr (requires { o.lock_timeout_ms; }) {
    o.lock_timeout_ms = static_cast<decltype(o.lock_timeout_ms)>(ms);
    return true;
  } else {
    return ms <= 0;
  }
}

int Save(const std::vector<std::string>& args) {
  if (args.size() < 2) return kUsage;
  const std::string dir = args[0];
  int64_t seed = 0, mib = 8, ranks = 1, files = 1, lock_timeout_ms = 0;
  bool wait_go = false;
  if (!ParseInt(args[1], &seed)) return kUsage;
  for (size_t i = 2; i < args.size(); ++i) {
    auto next = [&](int64_t* out) { return i + 1 < args.size() && ParseInt(args[++i], out); };
    if (args[i] == "--mib") {
      if (!next(&mib) || mib < 1) return kUsage;
    } else if (args[i] == "--ranks") {
      if (!next(&ranks) || ranks < 1) return kUsage;
    } else if (args[i] == "--files") {
      if (!next(&files) || files < 1) return kUsage;
    } else if (args[i] == "--lock-timeout-ms") {
      if (!next(&lock_timeout_ms)) return kUsage;
    } else if (args[i] == "--wait-go") {
      wait_go = true;
    } else {
      return kUsage;
    }
  }
  dcpp::SaveOptions base;
  base.overwrite = true;
  base.sync_files = true;
  base.files_per_rank = static_cast<int>(files);
  if (!SetLockTimeout(base, lock_timeout_ms)) {
    std::fprintf(stderr, "error: this dcpp has no SaveOptions.lock_timeout_ms\n");
    return kUsage;
  }

  const auto specs = Specs(mib);
  std::vector<Tensor> full;
  for (const auto& s : specs) full.push_back(Generate(s, seed));
  std::printf("ready\n");
  std::fflush(stdout);
  if (wait_go) {
    std::string line;
    std::getline(std::cin, line);
  }
  std::printf("saving\n");
  std::fflush(stdout);

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<Status> statuses;
  if (ranks == 1) {
    auto md = dcpp::Save(RankState(specs, full, seed, 0, 1), dir, base);
    statuses.push_back(md.status());
  } else {
    statuses = dcpp::RunOnThreadRanks(static_cast<int>(ranks), [&](dcpp::ProcessGroup& pg) {
      dcpp::SaveOptions o = base;
      o.process_group = &pg;
      return dcpp::Save(RankState(specs, full, seed, pg.rank(), pg.size()), dir, o).status();
    });
  }
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  bool same = true;
  for (const auto& s : statuses) same = same && s == statuses[0];
  if (!same) {
    for (size_t r = 0; r < statuses.size(); ++r)
      std::fprintf(stderr, "error: rank %zu: %s\n", r, statuses[r].ToString().c_str());
    return 3;
  }
  if (!statuses[0].ok()) {
    std::fprintf(stderr, "error: %s\n", statuses[0].ToString().c_str());
    return 1;
  }
  std::printf("ok save_ms=%.1f\n", ms);
  return 0;
}

// The node at `path` in a loaded tree (lists indexed by decimal strings).
const Value* Find(const Value& root, const std::vector<std::string>& path) {
  const Value* v = &root;
  for (const auto& p : path) {
    if (v->is_dict()) {
      v = v->Find(p);
    } else if (v->is_sequence()) {
      int64_t i;
      if (!ParseInt(p, &i) || i < 0 || static_cast<size_t>(i) >= v->items().size()) return nullptr;
      v = &v->items()[static_cast<size_t>(i)];
    } else {
      return nullptr;
    }
    if (!v) return nullptr;
  }
  return v;
}

// For a torn report: how each 4 KiB block of `got` matches the candidates.
std::string DescribeBlocks(const TensorSpec& spec, const Tensor& got,
                           const std::vector<int64_t>& candidates) {
  constexpr size_t kBlock = 4096;
  const size_t n = got.nbytes();
  std::vector<Tensor> want;
  for (int64_t c : candidates) want.push_back(Generate(spec, c));
  std::map<std::string, size_t> counts;
  std::string runs;
  std::string last;
  for (size_t off = 0; off < n; off += kBlock) {
    const size_t len = std::min(kBlock, n - off);
    std::string who = "neither";
    for (size_t k = 0; k < candidates.size(); ++k)
      if (std::memcmp(static_cast<const uint8_t*>(got.data()) + off,
                      static_cast<const uint8_t*>(want[k].data()) + off, len) == 0) {
        who = "seed " + std::to_string(candidates[k]);
        break;
      }
    ++counts[who];
    if (who != last && runs.size() < 400) runs += " @" + std::to_string(off) + ":" + who;
    last = who;
  }
  std::string out;
  for (const auto& [who, c] : counts) out += " " + who + " x" + std::to_string(c);
  return out + " (4 KiB blocks; runs" + runs + ")";
}

int Check(const std::vector<std::string>& args) {
  if (args.empty()) return kUsage;
  const std::string dir = args[0];
  std::vector<int64_t> candidates;
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] != "--candidates" || i + 1 >= args.size()) return kUsage;
    std::string list = args[++i];
    size_t pos = 0;
    while (pos <= list.size()) {
      size_t comma = list.find(',', pos);
      if (comma == std::string::npos) comma = list.size();
      int64_t c;
      if (!ParseInt(list.substr(pos, comma - pos), &c)) return kUsage;
      candidates.push_back(c);
      pos = comma + 1;
    }
  }
  std::error_code ec;
  if (!fs::exists(fs::path(dir) / ".metadata", ec)) {
    std::printf("none\n");
    return 0;
  }
  auto torn = [](const std::string& why) {
    std::printf("torn\n");
    std::fprintf(stderr, "torn: %s\n", why.c_str());
    return 0;
  };
  auto loaded = dcpp::LoadAll(dir);
  if (!loaded.ok()) return torn("load failed: " + loaded.status().ToString());
  const Value& root = *loaded;
  const Value* step = root.Find("step");
  if (!step || step->kind() != Value::Kind::kInt) return torn("no int 'step'");
  const int64_t seed = step->as_int();

  // The expected tree has exactly these leaves; count what was loaded.
  std::vector<std::string> problems;
  const auto specs = Specs(1);  // shapes are checked against the loaded mib below
  const Value* w0 = Find(root, specs[0].path);
  if (!w0 || !w0->is_tensor() || w0->tensor().shape().size() != 2 ||
      w0->tensor().shape()[0] % 128 != 0 || w0->tensor().shape()[0] == 0)
    return torn("model.layers.0.weight missing or of an unexpected shape");
  const int64_t mib = w0->tensor().shape()[0] / 128;
  for (const TensorSpec& s : Specs(mib)) {
    const Value* v = Find(root, s.path);
    if (!v || !v->is_tensor()) {
      problems.push_back(s.fqn() + ": missing or not a tensor");
      continue;
    }
    Tensor want = Generate(s, seed);
    if (!v->tensor().BitwiseEquals(want)) {
      std::string p = s.fqn() + ": differs from seed " + std::to_string(seed);
      if (!candidates.empty() && v->tensor().dtype() == s.dtype && v->tensor().shape() == s.shape &&
          v->tensor().view().is_contiguous())
        p += DescribeBlocks(s, v->tensor(), candidates);
      problems.push_back(p);
    }
  }
  Value plain = Value::EmptyDict();
  SetPlainValues(plain, seed);
  for (const char* key : {"tag", "blob", "history"}) {
    const Value* v = root.Find(key);
    if (!v || !v->Equals(*plain.Find(key)))
      problems.push_back(std::string(key) + ": " + (v ? v->DebugString() : "missing"));
  }
  const Value* lr = Find(root, {"optim", "lr"});
  if (!lr || !lr->Equals(Value(LearningRate(seed))))
    problems.push_back("optim.lr: " + (lr ? lr->DebugString() : std::string("missing")));
  // Nothing more than the expected keys.
  auto size_of = [&](std::vector<std::string> path) {
    const Value* v = Find(root, path);
    return !v ? size_t{0} : v->is_dict() ? v->dict().size() : v->is_sequence() ? v->items().size() : 0;
  };
  if (root.dict().size() != 6 || size_of({"model"}) != 6 || size_of({"optim"}) != 2 ||
      size_of({"model", "layers"}) != 2)
    problems.push_back("unexpected set of keys: " + root.DebugString(16));
  if (!problems.empty()) {
    std::string why = "step says seed " + std::to_string(seed) + ", but";
    for (const auto& p : problems) why += "\n  " + p;
    return torn(why);
  }
  std::printf("seed=%" PRId64 "\n", seed);
  return 0;
}

int Leftovers(const std::vector<std::string>& args) {
  if (args.empty()) return kUsage;
  const std::string dir = args[0];
  std::set<std::string> ignored = {".metadata", ".dcpp.lock"};
  for (size_t i = 1; i < args.size(); ++i) {
    if (args[i] != "--ignore" || i + 1 >= args.size()) return kUsage;
    ignored.insert(args[++i]);
  }
  std::set<std::string> referenced;
  std::error_code ec;
  if (fs::exists(fs::path(dir) / ".metadata", ec)) {
    auto md = dcpp::ReadMetadata(dir);
    if (!md.ok()) {
      std::fprintf(stderr, "error: %s\n", md.status().ToString().c_str());
      return 1;
    }
    for (const auto& e : md->entries) {
      if (e.is_tensor()) {
        for (const auto& c : e.chunks) referenced.insert(c.storage.relative_path);
      } else {
        referenced.insert(e.storage.relative_path);
      }
    }
    // dcpp's checksum sidecar is named after the save it belongs to; those
    // of other saves are leftovers.
    if (md->storage_meta && md->storage_meta->save_id)
      referenced.insert(".checksums." + *md->storage_meta->save_id);
  }
  uint64_t total = 0;
  size_t count = 0;
  std::vector<std::pair<std::string, uint64_t>> found;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_directory(ec)) continue;
    const std::string name = fs::relative(it->path(), dir, ec).generic_string();
    if (ignored.count(name) || referenced.count(name)) continue;
    uint64_t size = it->is_regular_file(ec) ? it->file_size(ec) : 0;
    found.emplace_back(name, size);
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    std::fprintf(stderr, "error: listing %s: %s\n", dir.c_str(), ec.message().c_str());
    return 1;
  }
  std::sort(found.begin(), found.end());
  for (const auto& [name, size] : found) {
    std::printf("%" PRIu64 " %s\n", size, name.c_str());
    total += size;
    ++count;
  }
  std::printf("total %" PRIu64 " %zu\n", total, count);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  int rc = kUsage;
  if (!args.empty()) {
    const std::string cmd = args[0];
    args.erase(args.begin());
    if (cmd == "save") rc = Save(args);
    if (cmd == "check") rc = Check(args);
    if (cmd == "leftovers") rc = Leftovers(args);
  }
  if (rc == kUsage)
    std::fprintf(stderr,
                 "usage: dcpp_crash_tool save DIR SEED [--mib N] [--ranks R] [--files F] "
                 "[--lock-timeout-ms T] [--wait-go]\n"
                 "       dcpp_crash_tool check DIR [--candidates S1,S2,...]\n"
                 "       dcpp_crash_tool leftovers DIR [--ignore NAME]...\n");
  return rc;
}
