// The MPI ProcessGroup.
//
// Every collective starts with a header exchange (MPI_Iallgather of a few
// words per rank: magic, collective number, which collective, root, payload
// size). It gives every rank every payload size, so variable-size payloads
// need no second size step; lets every rank detect mismatched collectives,
// roots or Scatter part counts identically, so all ranks return the same
// error and the group stays usable; and makes every rank, not only the
// root, notice a rank that never arrives. Payload bytes then move with
// MPI_Igatherv / MPI_Ibcast / MPI_Iallgatherv / MPI_Iscatterv in rounds of
// at most MpiGroupOptions::max_round_bytes, which keeps every int count and
// displacement in range for payloads of any size.
//
// Every MPI call is non-blocking and polled with MPI_Test until the
// collective's deadline. On a timeout (or an MPI error) the pending request
// cannot be cancelled or freed: MPI forbids both for collectives. Its
// buffers are therefore kept alive for the rest of the process, the group
// refuses further collectives (Aborted), and, if dcpp initialized MPI,
// MPI_Finalize is skipped at exit because it could block forever on the lost
// peer. The process should report the error and exit.
//
// Thread safety: dcpp initializes MPI asking for MPI_THREAD_MULTIPLE and
// accepts MPI_THREAD_SERIALIZED. With MULTIPLE, different groups (a group
// and its Duplicate) may be used by different threads at once; with less,
// at most one thread at a time may be inside any MPI group (or other MPI
// call), and Duplicate is refused.
#include "dcpp/collective/mpi_group.h"

#include "dcpp/collective/collective_op.h"

// dcpp uses MPI's C API only; keep mpi.h from pulling in the deprecated C++
// bindings, which would need libmpi_cxx at link time.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace dcpp {
namespace collective {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint64_t kMagic = 0x6463'7070'636f'6c6cULL;  // "dcppcoll"

// Header words, per rank.
enum HeaderWord : int { kWordMagic, kWordSeq, kWordOp, kWordRoot, kWordSize, kWordAux, kWords };

bool HasRoot(uint64_t op) {
  return op == static_cast<uint64_t>(Op::kGather) || op == static_cast<uint64_t>(Op::kBroadcast) ||
         op == static_cast<uint64_t>(Op::kScatter);
}

// Process-wide MPI bookkeeping. Global because MPI's own state is: one
// initialization and one finalization per process. Never destroyed, so the
// exit handler and group destructors that run late can still use it.
struct MpiProcess {
  std::mutex mu;
  // Set once a collective was abandoned with a request still pending.
  std::atomic<bool> abandoned{false};
  // Buffers of abandoned requests: MPI may still write into them.
  std::vector<std::shared_ptr<void>> graveyard;
};

MpiProcess& Process() {
  static MpiProcess* process = new MpiProcess;
  return *process;
}

void Abandon(std::shared_ptr<void> buffers) {
  MpiProcess& p = Process();
  p.abandoned.store(true);
  std::lock_guard<std::mutex> lock(p.mu);
  if (buffers != nullptr) p.graveyard.push_back(std::move(buffers));
}

void FinalizeAtExit() {
  // With a collective abandoned on a lost or stuck peer, MPI_Finalize may
  // wait for that peer forever; exiting without it is the lesser harm.
  if (Process().abandoned.load()) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

Status MpiError(int rc, std::string_view where) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS || len < 0) len = 0;
  int error_class = -1;
  MPI_Error_class(rc, &error_class);
  return InternalError(std::string(where) + " failed: " + std::string(text, len) +
                       " (MPI error code " + std::to_string(rc) + ", class " +
                       std::to_string(error_class) + ")");
}

Status EnsureMpiInitialized() {
  MpiProcess& p = Process();
  std::lock_guard<std::mutex> lock(p.mu);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    return InvalidArgumentError(
        "MakeMpiProcessGroup: MPI was already finalized in this process and cannot be "
        "initialized again");
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  // A program that initialized MPI itself keeps its thread level; with less
  // than MPI_THREAD_SERIALIZED it must call the group from the thread that
  // initialized MPI.
  if (initialized) return Status();

  int provided = MPI_THREAD_SINGLE;
  const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  if (rc != MPI_SUCCESS) return MpiError(rc, "MakeMpiProcessGroup: MPI_Init_thread");
  if (std::atexit(FinalizeAtExit) != 0) {
    return InternalError("MakeMpiProcessGroup: could not register MPI_Finalize to run at exit");
  }
  if (provided < MPI_THREAD_SERIALIZED) {
    return UnimplementedError("MakeMpiProcessGroup: this MPI library provides thread level " +
                              std::to_string(provided) +
                              ", dcpp needs MPI_THREAD_SERIALIZED or better");
  }
  return Status();
}

// Polls `request` until it completes or `deadline` passes. On a timeout or an
// MPI error the request is left pending and `buffers` (everything it reads
// or writes) is kept alive for the rest of the process.
Status WaitFor(MPI_Request* request, Clock::time_point deadline,
               const std::shared_ptr<void>& buffers, std::string_view what,
               std::chrono::milliseconds timeout) {
  for (int polls = 0;; ++polls) {
    int done = 0;
    const int rc = MPI_Test(request, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      Abandon(buffers);
      return MpiError(rc, std::string(what) + ": MPI_Test");
    }
    if (done) return Status();
    if (Clock::now() >= deadline) {
      Abandon(buffers);
      return DeadlineExceededError(std::string(what) + " timed out after " +
                                   std::to_string(timeout.count()) +
                                   " ms: some ranks did not arrive (MPI does not say which)");
    }
    // Spin briefly for fast collectives, then back off so that waiting
    // ranks leave CPU to their peers (ranks are often oversubscribed).
    if (polls < 100) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(polls < 1000 ? 20 : 200));
    }
  }
}

// Everything an MPI request of one collective reads or writes. Heap-held so
// it can outlive an abandoned collective (see WaitFor).
struct Buffers {
  uint64_t header[kWords] = {};
  std::vector<uint64_t> headers;     // kWords per rank
  std::string data;                  // this rank's payload
  std::vector<std::string> parts;    // Scatter, root: the parts
  std::vector<uint64_t> part_sizes;  // Scatter, root: their sizes
  uint64_t my_size = 0;              // Scatter: this rank's part size
  std::vector<int> counts;
  std::vector<int> displs;
  std::string staging;           // packed round on the root of Gather/Scatter, or AllGather
  std::vector<std::string> all;  // Gather (root), AllGather results
  std::string one;               // Broadcast, Scatter result
};

class MpiGroup final : public ProcessGroup {
 public:
  MpiGroup(MPI_Comm comm, int rank, int size, const MpiGroupOptions& options)
      : comm_(comm), rank_(rank), size_(size), options_(options) {
    options_.max_round_bytes =
        std::clamp<uint64_t>(options_.max_round_bytes, 1, static_cast<uint64_t>(INT_MAX));
  }

  ~MpiGroup() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    // A broken group may have requests pending on the communicator.
    if (!finalized && broken_.ok()) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view kind() const override { return "mpi"; }
  Result<std::unique_ptr<ProcessGroup>> Duplicate() override;

  Status Barrier() override {
    DCPP_RETURN_IF_ERROR(broken_);
    const Clock::time_point deadline = Clock::now() + options_.timeout;
    auto b = std::make_shared<Buffers>();
    return Exchange(Op::kBarrier, -1, 0, 0, b, deadline);
  }

  Result<std::vector<std::string>> Gather(std::string data, int root) override {
    DCPP_RETURN_IF_ERROR(broken_);
    const Clock::time_point deadline = Clock::now() + options_.timeout;
    auto b = std::make_shared<Buffers>();
    b->data = std::move(data);
    DCPP_RETURN_IF_ERROR(Exchange(Op::kGather, root, b->data.size(), 0, b, deadline));
    DCPP_RETURN_IF_ERROR(GatherRounds(/*all=*/false, root, b, deadline));
    if (rank_ != root) return std::vector<std::string>();
    return std::move(b->all);
  }

  Result<std::string> Broadcast(std::string data, int root) override {
    DCPP_RETURN_IF_ERROR(broken_);
    const Clock::time_point deadline = Clock::now() + options_.timeout;
    auto b = std::make_shared<Buffers>();
    if (rank_ == root) b->one = std::move(data);
    DCPP_RETURN_IF_ERROR(Exchange(Op::kBroadcast, root, b->one.size(), 0, b, deadline));
    const uint64_t size = b->headers[root * kWords + kWordSize];
    if (rank_ != root) b->one.resize(size);
    for (uint64_t offset = 0; offset < size; offset += options_.max_round_bytes) {
      const int count = static_cast<int>(std::min(options_.max_round_bytes, size - offset));
      DCPP_RETURN_IF_ERROR(Run("Broadcast", b, deadline, [&](MPI_Request* request) {
        return MPI_Ibcast(b->one.data() + offset, count, MPI_BYTE, root, comm_, request);
      }));
    }
    return std::move(b->one);
  }

  Result<std::vector<std::string>> AllGather(std::string data) override {
    DCPP_RETURN_IF_ERROR(broken_);
    const Clock::time_point deadline = Clock::now() + options_.timeout;
    auto b = std::make_shared<Buffers>();
    b->data = std::move(data);
    DCPP_RETURN_IF_ERROR(Exchange(Op::kAllGather, -1, b->data.size(), 0, b, deadline));
    DCPP_RETURN_IF_ERROR(GatherRounds(/*all=*/true, 0, b, deadline));
    return std::move(b->all);
  }

  Result<std::string> Scatter(std::vector<std::string> parts, int root) override {
    DCPP_RETURN_IF_ERROR(broken_);
    const Clock::time_point deadline = Clock::now() + options_.timeout;
    auto b = std::make_shared<Buffers>();
    uint64_t max_part = 0;
    uint64_t part_count = 0;
    if (rank_ == root) {
      b->parts = std::move(parts);
      part_count = b->parts.size();
      for (const std::string& part : b->parts) max_part = std::max<uint64_t>(max_part, part.size());
    }
    DCPP_RETURN_IF_ERROR(Exchange(Op::kScatter, root, max_part, part_count, b, deadline));
    const uint64_t root_parts = b->headers[root * kWords + kWordAux];
    if (root_parts != static_cast<uint64_t>(size_)) {
      // Every rank sees the root's header, so every rank fails alike and the
      // group stays in step.
      return InvalidArgumentError("Scatter: root " + std::to_string(root) + " passed " +
                                  std::to_string(root_parts) + " parts for " +
                                  std::to_string(size_) + " ranks");
    }
    max_part = b->headers[root * kWords + kWordSize];

    // Each rank learns its own part's size.
    if (rank_ == root) {
      b->part_sizes.resize(size_);
      for (int r = 0; r < size_; ++r) b->part_sizes[r] = b->parts[r].size();
    }
    DCPP_RETURN_IF_ERROR(Run("Scatter (sizes)", b, deadline, [&](MPI_Request* request) {
      return MPI_Iscatter(b->part_sizes.data(), 1, MPI_UINT64_T, &b->my_size, 1, MPI_UINT64_T, root,
                          comm_, request);
    }));
    if (b->my_size > max_part) {
      return Break(InternalError("Scatter: root " + std::to_string(root) + " sent a part size of " +
                                 std::to_string(b->my_size) +
                                 " bytes, more than the largest part it announced (" +
                                 std::to_string(max_part) + ")"));
    }
    b->one.resize(b->my_size);

    const uint64_t chunk = ChunkPerRank();
    if (rank_ == root) {
      b->counts.resize(size_);
      b->displs.resize(size_);
    }
    for (uint64_t offset = 0; offset < max_part; offset += chunk) {
      if (rank_ == root) {
        uint64_t total = 0;
        for (int r = 0; r < size_; ++r) {
          b->counts[r] = RoundCount(b->part_sizes[r], offset, chunk);
          b->displs[r] = static_cast<int>(total);
          total += b->counts[r];
        }
        b->staging.resize(total);
        for (int r = 0; r < size_; ++r) {
          if (b->counts[r] > 0) {
            std::memcpy(b->staging.data() + b->displs[r], b->parts[r].data() + offset,
                        b->counts[r]);
          }
        }
      }
      const int my_count = RoundCount(b->my_size, offset, chunk);
      char* out = b->one.data() + std::min(offset, b->my_size);
      DCPP_RETURN_IF_ERROR(Run("Scatter", b, deadline, [&](MPI_Request* request) {
        const bool root_here = rank_ == root;
        return MPI_Iscatterv(root_here ? b->staging.data() : nullptr,
                             root_here ? b->counts.data() : nullptr,
                             root_here ? b->displs.data() : nullptr, MPI_BYTE, out, my_count,
                             MPI_BYTE, root, comm_, request);
      }));
    }
    return std::move(b->one);
  }

 private:
  // Bytes per rank per round of Gather, AllGather and Scatter: n of them
  // must fit one MPI call.
  uint64_t ChunkPerRank() const {
    return std::max<uint64_t>(1, options_.max_round_bytes / static_cast<uint64_t>(size_));
  }

  // Bytes of a `size`-byte payload that go in the round starting at `offset`.
  static int RoundCount(uint64_t size, uint64_t offset, uint64_t chunk) {
    return size > offset ? static_cast<int>(std::min(chunk, size - offset)) : 0;
  }

  // Records that the group can no longer be used and returns `status`.
  Status Break(Status status) {
    broken_ = AbortedError(
        "MPI process group is unusable after an earlier failure (the process should exit): " +
        status.message());
    return status;
  }

  // Posts one non-blocking MPI call (`post` returns its error code) and
  // waits for it.
  template <typename Post>
  Status Run(std::string_view what, const std::shared_ptr<Buffers>& b, Clock::time_point deadline,
             Post&& post) {
    MPI_Request request = MPI_REQUEST_NULL;
    const int rc = post(&request);
    if (rc != MPI_SUCCESS) return Break(MpiError(rc, what));
    Status status = WaitFor(&request, deadline, b, what, options_.timeout);
    if (!status.ok()) return Break(std::move(status));
    return Status();
  }

  // The header step shared by every collective; see the file comment.
  // `root` is -1 for collectives without one.
  Status Exchange(Op op, int root, uint64_t size, uint64_t aux, const std::shared_ptr<Buffers>& b,
                  Clock::time_point deadline) {
    const uint64_t seq = seq_++;
    b->header[kWordMagic] = kMagic;
    b->header[kWordSeq] = seq;
    b->header[kWordOp] = static_cast<uint64_t>(op);
    b->header[kWordRoot] = static_cast<uint64_t>(static_cast<int64_t>(root));
    b->header[kWordSize] = size;
    b->header[kWordAux] = aux;
    b->headers.assign(static_cast<size_t>(size_) * kWords, 0);
    DCPP_RETURN_IF_ERROR(
        Run(OpName(static_cast<uint64_t>(op)), b, deadline, [&](MPI_Request* request) {
          return MPI_Iallgather(b->header, kWords, MPI_UINT64_T, b->headers.data(), kWords,
                                MPI_UINT64_T, comm_, request);
        }));

    const uint64_t* mine = b->header;
    for (int r = 0; r < size_; ++r) {
      const uint64_t* theirs = &b->headers[static_cast<size_t>(r) * kWords];
      if (theirs[kWordMagic] != kMagic) {
        return Break(InternalError("collective #" + std::to_string(seq) + ": rank " +
                                   std::to_string(r) + " sent a malformed header"));
      }
      if (theirs[kWordSeq] != seq) {
        return Break(InternalError(
            "collective mismatch: rank " + std::to_string(rank_) + " is at collective #" +
            std::to_string(seq) + " (" + Describe(mine) + ") but rank " + std::to_string(r) +
            " is at #" + std::to_string(theirs[kWordSeq]) + " (" + Describe(theirs) + ")"));
      }
    }
    // Compare against rank 0 so every rank reports the same pair.
    const uint64_t* first = &b->headers[0];
    for (int r = 1; r < size_; ++r) {
      const uint64_t* theirs = &b->headers[static_cast<size_t>(r) * kWords];
      if (theirs[kWordOp] != first[kWordOp] || theirs[kWordRoot] != first[kWordRoot]) {
        return InternalError("collective mismatch at collective #" + std::to_string(seq) +
                             ": rank 0 called " + Describe(first) + " but rank " +
                             std::to_string(r) + " called " + Describe(theirs));
      }
    }
    if (HasRoot(first[kWordOp]) && (root < 0 || root >= size_)) {
      return InvalidArgumentError(OpName(first[kWordOp]) + ": root " + std::to_string(root) +
                                  " is out of range for " + std::to_string(size_) + " ranks");
    }
    return Status();
  }

  static std::string Describe(const uint64_t* header) {
    std::string out = OpName(header[kWordOp]);
    if (HasRoot(header[kWordOp])) {
      out += "(root " + std::to_string(static_cast<int64_t>(header[kWordRoot])) + ")";
    }
    return out;
  }

  // The data rounds of Gather (`all` false: only `root` receives) and
  // AllGather (`all` true). Payload sizes come from the headers.
  Status GatherRounds(bool all, int root, const std::shared_ptr<Buffers>& b,
                      Clock::time_point deadline) {
    const bool receives = all || rank_ == root;
    uint64_t max_size = 0;
    if (receives) b->all.resize(size_);
    for (int r = 0; r < size_; ++r) {
      const uint64_t size = b->headers[static_cast<size_t>(r) * kWords + kWordSize];
      max_size = std::max(max_size, size);
      if (receives) b->all[r].resize(size);
    }
    const uint64_t chunk = ChunkPerRank();
    b->counts.resize(size_);
    b->displs.resize(size_);
    const char* what = all ? "AllGather" : "Gather";
    for (uint64_t offset = 0; offset < max_size; offset += chunk) {
      uint64_t total = 0;
      for (int r = 0; r < size_; ++r) {
        b->counts[r] =
            RoundCount(b->headers[static_cast<size_t>(r) * kWords + kWordSize], offset, chunk);
        b->displs[r] = static_cast<int>(total);
        total += b->counts[r];  // <= size_ * chunk <= max(max_round_bytes, size_) <= INT_MAX
      }
      if (receives) b->staging.resize(total);
      const char* in = b->data.data() + std::min<uint64_t>(offset, b->data.size());
      const int in_count = b->counts[rank_];
      DCPP_RETURN_IF_ERROR(Run(what, b, deadline, [&](MPI_Request* request) {
        if (all) {
          return MPI_Iallgatherv(in, in_count, MPI_BYTE, b->staging.data(), b->counts.data(),
                                 b->displs.data(), MPI_BYTE, comm_, request);
        }
        return MPI_Igatherv(in, in_count, MPI_BYTE, receives ? b->staging.data() : nullptr,
                            b->counts.data(), b->displs.data(), MPI_BYTE, root, comm_, request);
      }));
      if (receives) {
        for (int r = 0; r < size_; ++r) {
          if (b->counts[r] > 0) {
            std::memcpy(b->all[r].data() + offset, b->staging.data() + b->displs[r], b->counts[r]);
          }
        }
      }
    }
    return Status();
  }

  MPI_Comm comm_;
  const int rank_;
  const int size_;
  MpiGroupOptions options_;
  uint64_t seq_ = 0;  // collectives started; every rank must agree on it
  Status broken_;     // Aborted once a collective was abandoned
};

}  // namespace

// A group over a private duplicate of `parent`. Collective over parent's
// ranks; gives up after options.timeout.
static Result<std::unique_ptr<ProcessGroup>> DuplicateComm(MPI_Comm parent, const MpiGroupOptions& options,
                                                           std::string_view what) {
  const Clock::time_point deadline = Clock::now() + options.timeout;
  // A private communicator keeps dcpp's traffic apart from the program's
  // own. MPI_Comm_idup rather than MPI_Comm_dup so that a peer that never
  // arrives is a timeout, not a hang. The handle lives on the heap because
  // MPI writes it when the request completes, possibly after a timeout.
  auto comm = std::make_shared<MPI_Comm>(MPI_COMM_NULL);
  MPI_Request request = MPI_REQUEST_NULL;
  const std::string context(what);
  int rc = MPI_Comm_idup(parent, comm.get(), &request);
  if (rc != MPI_SUCCESS) return MpiError(rc, context + ": MPI_Comm_idup");
  DCPP_RETURN_IF_ERROR(
      WaitFor(&request, deadline, comm, context + " (duplicating the communicator)", options.timeout));
  // Errors must come back as codes to become Status values; the default
  // handler would abort the job.
  rc = MPI_Comm_set_errhandler(*comm, MPI_ERRORS_RETURN);
  if (rc != MPI_SUCCESS) return MpiError(rc, context + ": MPI_Comm_set_errhandler");
  int rank = 0;
  int size = 0;
  rc = MPI_Comm_rank(*comm, &rank);
  if (rc == MPI_SUCCESS) rc = MPI_Comm_size(*comm, &size);
  if (rc != MPI_SUCCESS) return MpiError(rc, context + ": MPI_Comm_rank/size");
  return std::unique_ptr<ProcessGroup>(std::make_unique<MpiGroup>(*comm, rank, size, options));
}

Result<std::unique_ptr<ProcessGroup>> MpiGroup::Duplicate() {
  if (!broken_.ok()) return broken_;
  int provided = MPI_THREAD_SINGLE;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_MULTIPLE) {
    return UnimplementedError(
        "MPI runs at thread level " + std::to_string(provided) +
        " (MPI_THREAD_MULTIPLE is " + std::to_string(MPI_THREAD_MULTIPLE) +
        "): a duplicate group used from a background thread needs MPI_THREAD_MULTIPLE; "
        "initialize MPI with MPI_Init_thread(..., MPI_THREAD_MULTIPLE, ...) or let dcpp do it");
  }
  return DuplicateComm(comm_, options_, "ProcessGroup::Duplicate");
}

Result<std::unique_ptr<ProcessGroup>> MakeMpiGroupWithOptions(const MpiGroupOptions& options) {
  if (options.timeout.count() <= 0) {
    return InvalidArgumentError("MakeMpiProcessGroup: timeout must be positive, got " +
                                std::to_string(options.timeout.count()) + " ms");
  }
  DCPP_RETURN_IF_ERROR(EnsureMpiInitialized());
  return DuplicateComm(MPI_COMM_WORLD, options, "MakeMpiProcessGroup");
}

}  // namespace collective

bool HasMpi() { return true; }

Result<std::unique_ptr<ProcessGroup>> MakeMpiProcessGroup(std::chrono::milliseconds timeout) {
  collective::MpiGroupOptions options;
  options.timeout = timeout;
  return collective::MakeMpiGroupWithOptions(options);
}

}  // namespace dcpp
