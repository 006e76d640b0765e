#include "dcpp/tools/bench.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <tuple>
#include <unordered_set>

#include <zstd.h>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/format/json.h"
#include "dcpp/transform/transform.h"

namespace dcpp::tools {
namespace {

namespace json = format::json;

// Verification reads the image in blocks of this many bytes at most, so it
// adds little to the peak memory it follows.
constexpr uint64_t kVerifyBlock = 16 << 20;

// Loaded bytes are first set to this, so a piece the load never writes
// cannot match the image by accident of zero-filled memory.
constexpr int kFillPattern = 0xA5;

std::string ErrnoText(int err) { return std::strerror(err); }

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }

 private:
  int fd_;
};

Result<std::unique_ptr<Fd>> OpenForReading(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFoundError("bench: cannot open " + path + ": " + ErrnoText(err));
    return InvalidArgumentError("bench: cannot open " + path + ": " + ErrnoText(err));
  }
  return std::make_unique<Fd>(fd);
}

Result<uint64_t> FileSize(const Fd& fd, const std::string& path) {
  struct stat st;
  if (fstat(fd.get(), &st) != 0) {
    const int err = errno;
    return InternalError("bench: cannot stat " + path + ": " + ErrnoText(err));
  }
  if (!S_ISREG(st.st_mode)) return InvalidArgumentError("bench: " + path + " is not a file");
  return static_cast<uint64_t>(st.st_size);
}

// Reads exactly `n` bytes at `offset`; a short file is DataLoss.
Status PreadAll(const Fd& fd, const std::string& path, uint64_t offset, uint8_t* out, uint64_t n) {
  uint64_t done = 0;
  while (done < n) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(n - done, 1u << 30));
    const ssize_t got = pread(fd.get(), out + done, want, static_cast<off_t>(offset + done));
    if (got < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      return InternalError("bench: reading " + path + " at byte " + std::to_string(offset + done) +
                           ": " + ErrnoText(err));
    }
    if (got == 0)
      return DataLossError("bench: " + path + " ends at byte " + std::to_string(offset + done) +
                           ", expected " + std::to_string(offset + n));
    done += static_cast<uint64_t>(got);
  }
  return Status();
}

Result<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes) {
  DCPP_ASSIGN_OR_RETURN(auto fd, OpenForReading(path));
  DCPP_ASSIGN_OR_RETURN(uint64_t size, FileSize(*fd, path));
  if (size > max_bytes)
    return ResourceExhaustedError("bench: " + path + " has " + std::to_string(size) +
                                  " bytes, more than the " + std::to_string(max_bytes) +
                                  " an index may have");
  std::string text(static_cast<size_t>(size), '\0');
  DCPP_RETURN_IF_ERROR(
      PreadAll(*fd, path, 0, reinterpret_cast<uint8_t*>(text.data()), static_cast<uint64_t>(size)));
  return text;
}

struct FreeDeleter {
  void operator()(uint8_t* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<uint8_t, FreeDeleter>;

Result<Buffer> AllocateTouched(uint64_t bytes, int fill) {
  const uint64_t rounded = bytes / 64 * 64 + (bytes % 64 ? 64 : 0);
  if (rounded < bytes || rounded > SIZE_MAX)
    return ResourceExhaustedError("bench: cannot allocate " + std::to_string(bytes) + " bytes");
  Buffer b(static_cast<uint8_t*>(std::aligned_alloc(64, rounded ? rounded : 64)));
  if (!b)
    return ResourceExhaustedError("bench: cannot allocate " + std::to_string(bytes) + " bytes");
  std::memset(b.get(), fill, static_cast<size_t>(bytes));
  return b;
}

uint64_t CurrentRss() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  const long page = sysconf(_SC_PAGESIZE);
  return n == 2 && page > 0 ? resident * static_cast<uint64_t>(page) : 0;
}

// The peak resident set of this process image, from /proc/self/status
// VmHWM. getrusage's ru_maxrss would not do: Linux carries it over exec, so
// it starts at the RSS of whatever process forked this one.
uint64_t PeakRss() {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return 0;
  char line[256];
  unsigned long long kib = 0;
  bool found = false;
  while (!found && std::fgets(line, sizeof line, f))
    found = std::sscanf(line, "VmHWM: %llu kB", &kib) == 1;
  std::fclose(f);
  return found ? kib * 1024 : 0;
}

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The slot for `fqn` in a nested dict, creating the dicts on the way.
// ParseBenchIndex guarantees no component is empty and no leaf is a prefix.
Value& At(Value& root, const std::string& fqn) {
  Value* slot = &root;
  size_t start = 0;
  for (size_t dot; (dot = fqn.find('.', start)) != std::string::npos; start = dot + 1)
    slot = &(*slot)[std::string_view(fqn).substr(start, dot - start)];
  return (*slot)[std::string_view(fqn).substr(start)];
}

// torch's Shard split of `d` over `n` ranks: chunks of ceil(d / n), the last
// ones shorter or empty. Returns [start, length) of rank k's chunk.
std::pair<int64_t, int64_t> Split(int64_t d, int n, int k) {
  const int64_t chunk = d / n + (d % n != 0);
  const int64_t start = std::min<int64_t>(chunk * k, d);
  return {start, std::min<int64_t>(chunk, d - start)};
}

// One rank's piece of a tensor for loading: rows [start, start + length) of
// dimension `dim`, or the whole tensor when dim < 0.
struct Piece {
  const BenchTensor* tensor = nullptr;
  int dim = -1;
  int64_t start = 0;
  int64_t length = 0;
  Tensor local;
};

int LoadDim(const Shape& shape, int ranks) {
  if (ranks <= 1) return -1;
  if (shape.size() >= 2 && shape[1] >= ranks) return 1;
  if (!shape.empty() && shape[0] >= ranks) return 0;
  return -1;
}

// The piece's layout as `outer` runs: run o is `run` bytes at image byte
// tensor.offset + o * row + skip, and at o * run in the piece.
struct Runs {
  uint64_t outer = 1, row = 0, skip = 0, run = 0;
};

Runs RunsOf(const Piece& p) {
  const BenchTensor& t = *p.tensor;
  Runs r;
  if (p.dim < 0) {
    r.row = r.run = t.nbytes;
    return r;
  }
  uint64_t inner = ElementSize(t.dtype);
  for (size_t i = static_cast<size_t>(p.dim) + 1; i < t.shape.size(); ++i)
    inner *= static_cast<uint64_t>(t.shape[i]);
  for (int i = 0; i < p.dim; ++i) r.outer *= static_cast<uint64_t>(t.shape[i]);
  r.row = static_cast<uint64_t>(t.shape[p.dim]) * inner;
  r.skip = static_cast<uint64_t>(p.start) * inner;
  r.run = static_cast<uint64_t>(p.length) * inner;
  return r;
}

Status VerifyPiece(const Fd& image, const std::string& path, const Piece& p, int rank,
                   std::vector<uint8_t>& block) {
  const Runs r = RunsOf(p);
  const auto* got = static_cast<const uint8_t*>(p.local.data());
  // `want` (n image bytes) differs from the piece's bytes at piece_offset:
  // the error names the first differing byte.
  auto mismatch = [&](const uint8_t* want, uint64_t piece_offset, uint64_t n) {
    uint64_t i = 0;
    while (i < n && want[i] == got[piece_offset + i]) ++i;
    const std::string piece = p.dim < 0 ? std::string("the whole tensor")
                                        : "its piece from " + std::to_string(p.start) +
                                              " along dim " + std::to_string(p.dim);
    return DataLossError("bench: rank " + std::to_string(rank) + " loaded '" + p.tensor->fqn +
                         "' (" + piece + ") with byte " + std::to_string(piece_offset + i) +
                         " of the piece different from the image");
  };
  if (r.run == 0) return Status();
  if (r.row > kVerifyBlock) {
    block.resize(kVerifyBlock);
    for (uint64_t o = 0; o < r.outer; ++o) {
      for (uint64_t done = 0; done < r.run; done += kVerifyBlock) {
        const uint64_t n = std::min(kVerifyBlock, r.run - done);
        DCPP_RETURN_IF_ERROR(
            PreadAll(image, path, p.tensor->offset + o * r.row + r.skip + done, block.data(), n));
        if (std::memcmp(block.data(), got + o * r.run + done, n) != 0)
          return mismatch(block.data(), o * r.run + done, n);
      }
    }
    return Status();
  }
  const uint64_t rows_per_block = kVerifyBlock / r.row;
  block.resize(rows_per_block * r.row);
  for (uint64_t o0 = 0; o0 < r.outer; o0 += rows_per_block) {
    const uint64_t rows = std::min(rows_per_block, r.outer - o0);
    DCPP_RETURN_IF_ERROR(
        PreadAll(image, path, p.tensor->offset + o0 * r.row, block.data(), rows * r.row));
    for (uint64_t o = o0; o < o0 + rows; ++o) {
      const uint8_t* want = block.data() + (o - o0) * r.row + r.skip;
      if (std::memcmp(want, got + o * r.run, r.run) != 0) return mismatch(want, o * r.run, r.run);
    }
  }
  return Status();
}

struct Inputs {
  std::vector<BenchTensor> tensors;
  uint64_t state_bytes = 0;
  uint64_t image_bytes = 0;
};

Result<Inputs> ReadIndex(const BenchOptions& o, const Fd& image) {
  Inputs in;
  DCPP_ASSIGN_OR_RETURN(in.image_bytes, FileSize(image, o.image_path));
  DCPP_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(o.index_path, 100'000'000));
  auto parsed = ParseBenchIndex(text, in.image_bytes);
  if (!parsed.ok()) return parsed.status().WithContext(o.index_path);
  in.tensors = std::move(*parsed);
  for (const auto& t : in.tensors) {
    if (t.nbytes > UINT64_MAX - in.state_bytes)
      return DataLossError(o.index_path + ": the tensors' sizes add up past 2^64 bytes");
    in.state_bytes += t.nbytes;
  }
  return in;
}

Status CheckCommon(const BenchOptions& o) {
  if (o.ranks < 1 || o.ranks > 4096)
    return InvalidArgumentError("bench: ranks must be in [1, 4096]");
  if (o.thread_count < 1) return InvalidArgumentError("bench: thread count must be >= 1");
  if (o.checkpoint_dir.empty()) return InvalidArgumentError("bench: no checkpoint directory");
  return Status();
}

Status FirstError(const std::vector<Status>& statuses) {
  for (const auto& s : statuses)
    if (!s.ok()) return s;
  return Status();
}

// Runs fn(group, rank) on options.ranks thread ranks, or once with no group
// for a single rank (a plain single-process save or load).
Status OnRanks(int ranks, const std::function<Status(ProcessGroup*, int)>& fn) {
  if (ranks == 1) return fn(nullptr, 0);
  return FirstError(RunOnThreadRanks(ranks, [&](ProcessGroup& pg) { return fn(&pg, pg.rank()); }));
}

BenchResult MakeResult(const char* op, const BenchOptions& o, const Inputs& in) {
  BenchResult r;
  r.op = op;
  r.bytes = in.state_bytes;
  r.tensors = in.tensors.size();
  r.ranks = o.ranks;
  r.thread_count = o.thread_count;
  return r;
}

json::Array StringArray(const std::vector<std::string>& strings) {
  json::Array a;
  for (const auto& s : strings) a.emplace_back(s);
  return a;
}

}  // namespace

static Result<std::vector<BenchTensor>> ParseBenchIndexImpl(std::string_view json_text,
                                                            uint64_t image_bytes) {
  auto parsed = json::Parse(json_text);
  if (!parsed.ok()) return DataLossError("bench index: " + parsed.status().message());
  const json::Json* list = parsed->Find("tensors");
  if (!list || !list->is_array())
    return DataLossError("bench index: no \"tensors\" array at the top level");
  std::vector<BenchTensor> out;
  std::unordered_set<std::string> fqns;
  const json::Array& items = *list->GetArray();
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const json::Json& item = items[i];
    const std::string where = "bench index: tensors[" + std::to_string(i) + "]";
    const json::Json* fqn = item.Find("fqn");
    const json::Json* dtype = item.Find("dtype");
    const json::Json* shape = item.Find("shape");
    const json::Json* offset = item.Find("offset");
    if (!fqn || !fqn->is_string() || !dtype || !dtype->is_string() || !shape ||
        !shape->is_array() || !offset || !offset->is_int())
      return DataLossError(where +
                           ": needs \"fqn\" and \"dtype\" strings, a \"shape\" array and an "
                           "integer \"offset\"");
    BenchTensor t;
    t.fqn = *fqn->GetString();
    const std::string at = where + " '" + t.fqn + "'";
    if (t.fqn.empty() || t.fqn.front() == '.' || t.fqn.back() == '.' ||
        t.fqn.find("..") != std::string::npos)
      return DataLossError(at + ": an FQN needs non-empty components");
    auto dt = DTypeFromTorchName(*dtype->GetString());
    if (!dt) return DataLossError(at + ": unknown dtype '" + *dtype->GetString() + "'");
    t.dtype = *dt;
    uint64_t nbytes = ElementSize(t.dtype);
    for (const json::Json& d : *shape->GetArray()) {
      const int64_t* v = d.GetInt();
      if (!v || *v < 0) return DataLossError(at + ": dimensions must be integers >= 0");
      if (*v != 0 && nbytes > UINT64_MAX / static_cast<uint64_t>(*v))
        return DataLossError(at + ": size overflows");
      nbytes *= static_cast<uint64_t>(*v);
      t.shape.push_back(*v);
    }
    if (*offset->GetInt() < 0) return DataLossError(at + ": negative offset");
    t.offset = static_cast<uint64_t>(*offset->GetInt());
    t.nbytes = nbytes;
    if (t.offset > image_bytes || nbytes > image_bytes - t.offset)
      return DataLossError(at + ": bytes [" + std::to_string(t.offset) + ", +" +
                           std::to_string(nbytes) + ") lie outside the image of " +
                           std::to_string(image_bytes) + " bytes");
    if (!fqns.insert(t.fqn).second) return DataLossError(at + ": the FQN repeats");
    out.push_back(std::move(t));
  }
  for (const BenchTensor& t : out)
    for (size_t dot = t.fqn.find('.'); dot != std::string::npos; dot = t.fqn.find('.', dot + 1))
      if (fqns.count(t.fqn.substr(0, dot)))
        return DataLossError("bench index: '" + t.fqn.substr(0, dot) +
                             "' is a tensor and also holds '" + t.fqn + "'");
  return out;
}

static Result<BenchResult> BenchSaveImpl(const BenchOptions& o) {
  DCPP_RETURN_IF_ERROR(CheckCommon(o));
  DCPP_ASSIGN_OR_RETURN(auto image, OpenForReading(o.image_path));
  DCPP_ASSIGN_OR_RETURN(Inputs in, ReadIndex(o, *image));
  // The state lives in RAM before the clock starts, as a trainer's does.
  DCPP_ASSIGN_OR_RETURN(Buffer bytes, AllocateTouched(in.image_bytes, 0));
  DCPP_RETURN_IF_ERROR(PreadAll(*image, o.image_path, 0, bytes.get(), in.image_bytes));
  BenchResult r = MakeResult("save", o, in);
  r.transforms = o.transforms;
  r.compression_level = o.compression_level;
  std::vector<double> seconds(static_cast<size_t>(o.ranks), 0.0);
  DCPP_RETURN_IF_ERROR(OnRanks(o.ranks, [&](ProcessGroup* pg, int rank) -> Status {
    Value state = Value::EmptyDict();
    for (const BenchTensor& t : in.tensors) {
      uint8_t* p = bytes.get() + t.offset;
      if (o.ranks > 1 && !t.shape.empty() && t.shape[0] >= o.ranks) {
        // Row shards of a row-major tensor are contiguous: views, no copies.
        const auto [start, length] = Split(t.shape[0], o.ranks, rank);
        const uint64_t row = t.nbytes / static_cast<uint64_t>(t.shape[0]);
        Shape local = t.shape, offsets(t.shape.size(), 0);
        local[0] = length;
        offsets[0] = start;
        ShardedTensor st;
        st.global_shape = t.shape;
        st.shards.push_back(
            {offsets,
             Tensor::Borrow(MakeView(p + static_cast<uint64_t>(start) * row, t.dtype, local))});
        At(state, t.fqn) = std::move(st);
      } else {
        At(state, t.fqn) = Tensor::Borrow(MakeView(p, t.dtype, t.shape));
      }
    }
    SaveOptions so;
    so.process_group = pg;
    so.files_per_rank = o.thread_count;
    so.io_threads = o.thread_count;  // as many threads as torch's writer gets
    so.sync_files = o.sync_files;
    so.transforms = o.transforms;
    so.compression_level = o.compression_level;
    if (pg) DCPP_RETURN_IF_ERROR(pg->Barrier());
    if (rank == 0) r.rss_before_bytes = CurrentRss();
    const auto t0 = Clock::now();
    DCPP_RETURN_IF_ERROR(Save(state, o.checkpoint_dir, so).status());
    if (pg) DCPP_RETURN_IF_ERROR(pg->Barrier());
    seconds[static_cast<size_t>(rank)] = SecondsSince(t0);
    return Status();
  }));
  r.max_rss_bytes = PeakRss();
  r.seconds = *std::max_element(seconds.begin(), seconds.end());
  return r;
}

static Result<BenchResult> BenchLoadImpl(const BenchOptions& o) {
  DCPP_RETURN_IF_ERROR(CheckCommon(o));
  DCPP_ASSIGN_OR_RETURN(auto image, OpenForReading(o.image_path));
  DCPP_ASSIGN_OR_RETURN(Inputs in, ReadIndex(o, *image));
  BenchResult r = MakeResult("load", o, in);
  std::vector<double> seconds(static_cast<size_t>(o.ranks), 0.0);
  std::vector<uint64_t> peak(static_cast<size_t>(o.ranks), 0);
  // Every rank's destination is allocated here, before any rank starts: a
  // rank failing to allocate inside the group would leave the others
  // waiting at the barrier until the group's timeout.
  std::vector<Value> states(static_cast<size_t>(o.ranks), Value::EmptyDict());
  std::vector<std::vector<Piece>> pieces(static_cast<size_t>(o.ranks));
  for (int rank = 0; rank < o.ranks; ++rank) {
    Value& state = states[static_cast<size_t>(rank)];
    for (const BenchTensor& t : in.tensors) {
      Piece p;
      p.tensor = &t;
      p.dim = LoadDim(t.shape, o.ranks);
      Shape local = t.shape, offsets(t.shape.size(), 0);
      if (p.dim >= 0) {
        std::tie(p.start, p.length) = Split(t.shape[p.dim], o.ranks, rank);
        local[p.dim] = p.length;
        offsets[p.dim] = p.start;
      }
      DCPP_ASSIGN_OR_RETURN(p.local, Tensor::Zeros(t.dtype, local));
      if (p.local.nbytes()) std::memset(p.local.data(), kFillPattern, p.local.nbytes());
      if (p.dim >= 0) {
        ShardedTensor st;
        st.global_shape = t.shape;
        st.shards.push_back({offsets, p.local});
        At(state, t.fqn) = std::move(st);
      } else {
        At(state, t.fqn) = p.local;
      }
      pieces[static_cast<size_t>(rank)].push_back(std::move(p));
    }
  }
  DCPP_RETURN_IF_ERROR(OnRanks(o.ranks, [&](ProcessGroup* pg, int rank) -> Status {
    Value& state = states[static_cast<size_t>(rank)];
    LoadOptions lo;
    lo.process_group = pg;
    lo.io_threads = o.thread_count;
    if (pg) DCPP_RETURN_IF_ERROR(pg->Barrier());
    if (rank == 0) r.rss_before_bytes = CurrentRss();
    const auto t0 = Clock::now();
    DCPP_RETURN_IF_ERROR(Load(state, o.checkpoint_dir, lo));
    if (pg) DCPP_RETURN_IF_ERROR(pg->Barrier());
    seconds[static_cast<size_t>(rank)] = SecondsSince(t0);
    peak[static_cast<size_t>(rank)] = PeakRss();
    // No rank's verification buffer may count in another rank's peak.
    if (pg) DCPP_RETURN_IF_ERROR(pg->Barrier());
    if (!o.verify) return Status();
    std::vector<uint8_t> block;
    for (const Piece& p : pieces[static_cast<size_t>(rank)])
      DCPP_RETURN_IF_ERROR(VerifyPiece(*image, o.image_path, p, rank, block));
    return Status();
  }));
  r.max_rss_bytes = *std::max_element(peak.begin(), peak.end());
  r.seconds = *std::max_element(seconds.begin(), seconds.end());
  r.verified = o.verify;
  return r;
}

// LoadAll of the whole checkpoint on one rank: the tensors are allocated by
// the library (as convert and dcpp.load(path) have them), so the allocation
// and the first touch of every page are inside the clock.
static Result<BenchResult> BenchLoadAllImpl(const BenchOptions& o) {
  DCPP_RETURN_IF_ERROR(CheckCommon(o));
  if (o.ranks != 1) return InvalidArgumentError("bench loadall runs on one rank (--ranks 1)");
  DCPP_ASSIGN_OR_RETURN(auto image, OpenForReading(o.image_path));
  DCPP_ASSIGN_OR_RETURN(Inputs in, ReadIndex(o, *image));
  BenchResult r = MakeResult("loadall", o, in);
  LoadAllOptions lo;
  lo.io_threads = o.thread_count;
  r.rss_before_bytes = CurrentRss();
  const auto t0 = Clock::now();
  DCPP_ASSIGN_OR_RETURN(Value all, LoadAll(o.checkpoint_dir, lo));
  r.seconds = SecondsSince(t0);
  r.max_rss_bytes = PeakRss();
  if (!o.verify) return r;
  std::vector<uint8_t> block;
  for (const BenchTensor& t : in.tensors) {
    // A state saved from a flat dict (a torch state_dict) has the FQNs as
    // top-level keys; one saved by bench save nests a dict per dot.
    const Value* found = all.is_dict() ? all.Find(t.fqn) : nullptr;
    if (found == nullptr) {
      found = &all;
      size_t start = 0;
      for (size_t dot = 0; found != nullptr && found->is_dict() && dot != std::string::npos;
           start = dot + 1) {
        dot = t.fqn.find('.', start);
        found = found->Find(std::string_view(t.fqn).substr(start, dot == std::string::npos
                                                                       ? std::string::npos
                                                                       : dot - start));
      }
    }
    if (found == nullptr || !found->is_tensor())
      return DataLossError("bench: LoadAll returned no tensor '" + t.fqn + "'");
    Piece p;
    p.tensor = &t;
    p.dim = -1;
    p.local = found->tensor();
    DCPP_RETURN_IF_ERROR(VerifyPiece(*image, o.image_path, p, 0, block));
  }
  r.verified = true;
  return r;
}

static Result<BenchResult> BenchMemcpyImpl(uint64_t bytes) {
  DCPP_ASSIGN_OR_RETURN(Buffer src, AllocateTouched(bytes, 1));
  DCPP_ASSIGN_OR_RETURN(Buffer dst, AllocateTouched(bytes, 0));
  BenchResult r;
  r.op = "memcpy";
  r.bytes = bytes;
  r.thread_count = 1;
  r.rss_before_bytes = CurrentRss();
  const auto t0 = Clock::now();
  std::memcpy(dst.get(), src.get(), static_cast<size_t>(bytes));
  r.seconds = SecondsSince(t0);
  r.max_rss_bytes = PeakRss();
  // Reading the copy keeps it from being optimized away, and checks it.
  r.verified = bytes == 0 || (dst.get()[0] == 1 && dst.get()[bytes - 1] == 1 &&
                              std::memcmp(dst.get(), src.get(), static_cast<size_t>(bytes)) == 0);
  if (!r.verified) return InternalError("bench: memcpy produced different bytes");
  return r;
}

static Result<CompressResult> BenchCompressImpl(const std::string& image_path,
                                                const std::string& index_path,
                                                const std::string& dtype,
                                                const std::vector<std::string>& transforms,
                                                int level, int repeats) {
  if (repeats < 1) return InvalidArgumentError("bench: repeats must be >= 1");
  std::optional<DType> want;
  if (!dtype.empty()) {
    want = DTypeFromTorchName(dtype);
    if (!want) return InvalidArgumentError("bench: unknown dtype '" + dtype + "' (torch's names, "
                                           "e.g. bfloat16, float32)");
  }
  BenchOptions o;
  o.image_path = image_path;
  o.index_path = index_path;
  DCPP_ASSIGN_OR_RETURN(auto image, OpenForReading(image_path));
  DCPP_ASSIGN_OR_RETURN(Inputs in, ReadIndex(o, *image));
  std::vector<const BenchTensor*> picked;
  for (const BenchTensor& t : in.tensors)
    if ((!want || t.dtype == *want) && t.nbytes > 0) picked.push_back(&t);
  if (picked.empty())
    return InvalidArgumentError("bench: " + index_path + " has no " +
                                (dtype.empty() ? std::string("non-empty") : dtype) + " tensor");
  DCPP_ASSIGN_OR_RETURN(Buffer bytes, AllocateTouched(in.image_bytes, 0));
  DCPP_RETURN_IF_ERROR(PreadAll(*image, image_path, 0, bytes.get(), in.image_bytes));
  auto data = [&](const BenchTensor& t) {
    return std::span<const uint8_t>(bytes.get() + t.offset, static_cast<size_t>(t.nbytes));
  };

  CompressResult r;
  r.dtype = dtype;
  r.transforms = transforms;
  r.compression_level = level;
  r.tensors = picked.size();
  for (const BenchTensor* t : picked) r.bytes += t->nbytes;

  // dcpp's encoders, as a save runs them on one I/O thread. The output goes
  // to memory reserved beforehand, as a save's goes to the page cache.
  std::vector<std::string> encoded(picked.size()), recorded;
  for (size_t i = 0; i < picked.size(); ++i)  // touched, as libzstd's buffer below is
    encoded[i].resize(ZSTD_compressBound(static_cast<size_t>(picked[i]->nbytes)) + 4096);
  r.encode_seconds = 1e300;
  for (int rep = 0; rep < repeats; ++rep) {
    const auto t0 = Clock::now();
    for (size_t i = 0; i < picked.size(); ++i) {
      transform::EncodeOptions eo;
      eo.zstd_level = level;
      eo.zstd_workers = 1;
      eo.element_size = static_cast<int>(ElementSize(picked[i]->dtype));
      eo.size_hint = picked[i]->nbytes;
      std::string& out = encoded[i];
      out.clear();  // keeps the reserved capacity
      auto sink = [&out](std::span<const uint8_t> b) {
        out.append(reinterpret_cast<const char*>(b.data()), b.size());
        return Status();
      };
      DCPP_ASSIGN_OR_RETURN(auto encoder, transform::NewEncoder(transforms, eo, sink, &recorded));
      DCPP_RETURN_IF_ERROR(encoder->Write(data(*picked[i])));
      DCPP_RETURN_IF_ERROR(encoder->Finish());
    }
    r.encode_seconds = std::min(r.encode_seconds, SecondsSince(t0));
  }
  for (const auto& e : encoded) r.stored_bytes += e.size();
  r.decode_seconds = 1e300;
  for (int rep = 0; rep < repeats; ++rep) {
    const auto t0 = Clock::now();
    for (size_t i = 0; i < picked.size(); ++i) {
      const auto& e = encoded[i];
      DCPP_ASSIGN_OR_RETURN(
          std::string back,
          transform::DecodeAll(recorded, {reinterpret_cast<const uint8_t*>(e.data()), e.size()},
                               picked[i]->nbytes));
      if (rep == 0 && (back.size() != picked[i]->nbytes ||
                       std::memcmp(back.data(), data(*picked[i]).data(), back.size()) != 0))
        return InternalError("bench: '" + picked[i]->fqn + "' decodes to different bytes");
    }
    r.decode_seconds = std::min(r.decode_seconds, SecondsSince(t0));
  }

  // libzstd alone: one-shot compression into a buffer of the bound's size.
  std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  if (!cctx) return ResourceExhaustedError("bench: cannot create a zstd context");
  uint64_t largest = 0;
  for (const BenchTensor* t : picked) largest = std::max(largest, t->nbytes);
  std::vector<uint8_t> out(ZSTD_compressBound(static_cast<size_t>(largest)));
  r.libzstd_seconds = 1e300;
  for (int rep = 0; rep < repeats; ++rep) {
    uint64_t stored = 0;
    const auto t0 = Clock::now();
    for (const BenchTensor* t : picked) {
      const size_t n = ZSTD_compressCCtx(cctx.get(), out.data(), out.size(), data(*t).data(),
                                         data(*t).size(), level);
      if (ZSTD_isError(n)) return InternalError(std::string("bench: ") + ZSTD_getErrorName(n));
      stored += n;
    }
    r.libzstd_seconds = std::min(r.libzstd_seconds, SecondsSince(t0));
    r.libzstd_stored_bytes = stored;
  }
  return r;
}

std::string CompressResultJson(const CompressResult& r) {
  json::Object o;
  o.Set("op", "compress");
  o.Set("dtype", r.dtype);
  o.Set("transforms", StringArray(r.transforms));
  o.Set("compression_level", r.compression_level);
  o.Set("tensors", r.tensors);
  o.Set("bytes", r.bytes);
  o.Set("stored_bytes", r.stored_bytes);
  o.Set("encode_seconds", r.encode_seconds);
  o.Set("decode_seconds", r.decode_seconds);
  o.Set("libzstd_stored_bytes", r.libzstd_stored_bytes);
  o.Set("libzstd_seconds", r.libzstd_seconds);
  return json::Serialize(json::Json(std::move(o)));
}

std::string BenchResultJson(const BenchResult& r) {
  json::Object o;
  o.Set("op", r.op);
  o.Set("seconds", r.seconds);
  o.Set("bytes", r.bytes);
  o.Set("tensors", r.tensors);
  o.Set("ranks", r.ranks);
  o.Set("threads", r.thread_count);
  o.Set("transforms", StringArray(r.transforms));
  o.Set("compression_level", r.compression_level);
  o.Set("rss_before_bytes", r.rss_before_bytes);
  o.Set("max_rss_bytes", r.max_rss_bytes);
  o.Set("verified", r.verified);
  return json::Serialize(json::Json(std::move(o)));
}

Result<std::vector<BenchTensor>> ParseBenchIndex(std::string_view json_text, uint64_t image_bytes) {
  return CatchExceptions("parsing the benchmark index",
                         [&] { return ParseBenchIndexImpl(json_text, image_bytes); });
}

Result<BenchResult> BenchSave(const BenchOptions& o) {
  return CatchExceptions("bench save", [&] { return BenchSaveImpl(o); });
}

Result<BenchResult> BenchLoad(const BenchOptions& o) {
  return CatchExceptions("bench load", [&] { return BenchLoadImpl(o); });
}

Result<BenchResult> BenchLoadAll(const BenchOptions& o) {
  return CatchExceptions("bench loadall", [&] { return BenchLoadAllImpl(o); });
}

Result<BenchResult> BenchMemcpy(uint64_t bytes) {
  return CatchExceptions("bench memcpy", [&] { return BenchMemcpyImpl(bytes); });
}

Result<CompressResult> BenchCompress(const std::string& image_path, const std::string& index_path,
                                     const std::string& dtype,
                                     const std::vector<std::string>& transforms, int level,
                                     int repeats) {
  return CatchExceptions("bench compress", [&] {
    return BenchCompressImpl(image_path, index_path, dtype, transforms, level, repeats);
  });
}

}  // namespace dcpp::tools
