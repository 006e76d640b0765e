// ProcessGroup: the few collectives a distributed checkpoint needs.
//
// A save or load on N ranks calls these on every rank, in the same order, on
// the caller's thread (never from I/O threads). Payloads are byte strings.
// Every collective gives up after the group's timeout with DeadlineExceeded
// naming the collective and the ranks that did not arrive (where known), so
// a dead or stuck peer produces an error instead of a hang.
//
// Errors every implementation shares: a root outside [0, size()) given by
// every rank is InvalidArgument on every rank; ranks calling different
// collectives (or roots) in the same position of their call sequence get
// InternalError naming both calls, on every rank. Both leave the group
// usable. After a DeadlineExceeded (or a transport failure) the group is
// broken: every later collective fails at once with Aborted repeating the
// first error, because the ranks no longer agree on which collective is
// which. An MPI group cannot recover at all: the process should exit.
//
// Implementations: one process (MakeSingleProcessGroup), N ranks as threads
// of one process (MakeThreadGroups / RunOnThreadRanks), and MPI
// (MakeMpiProcessGroup, when dcpp is built with MPI).
#ifndef DCPP_PROCESS_GROUP_H_
#define DCPP_PROCESS_GROUP_H_

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "dcpp/status.h"

namespace dcpp {

class ProcessGroup {
 public:
  virtual ~ProcessGroup() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "single", "threads" or "mpi": for reports.
  virtual std::string_view kind() const = 0;

  virtual Status Barrier() = 0;
  // `root` receives every rank's `data`, indexed by rank; other ranks get an
  // empty vector.
  virtual Result<std::vector<std::string>> Gather(std::string data, int root) = 0;
  // Every rank receives `root`'s `data` (the argument is ignored elsewhere).
  virtual Result<std::string> Broadcast(std::string data, int root) = 0;
  // Every rank receives every rank's `data`, indexed by rank.
  virtual Result<std::vector<std::string>> AllGather(std::string data) = 0;
  // Rank r receives `parts[r]` from `root`; REQUIRES parts.size() == size()
  // on root (InvalidArgument otherwise); ignored elsewhere.
  virtual Result<std::string> Scatter(std::vector<std::string> parts, int root) = 0;

  // A new group over the same ranks (same rank and size) whose collectives
  // never match this group's, so two threads of a rank may use the two
  // groups at once (an async save's background thread uses a duplicate
  // while training uses the original). Collective: every rank calls it in
  // the same position of its call sequence. The duplicate outlives nothing
  // it needs: it may be destroyed before or after this group. Threads: a
  // fresh set shared by the ranks' k-th duplicates; MPI: MPI_Comm_idup, and
  // Unimplemented unless MPI runs with MPI_THREAD_MULTIPLE (which dcpp
  // requests when it initializes MPI). The default is Unimplemented.
  virtual Result<std::unique_ptr<ProcessGroup>> Duplicate();
};

inline constexpr std::chrono::milliseconds kDefaultCollectiveTimeout{std::chrono::minutes(10)};

// Rank 0 of 1. Collectives return immediately.
std::unique_ptr<ProcessGroup> MakeSingleProcessGroup();

// `n` connected groups for `n` threads of this process: element r is rank r.
// Each group must be used by one thread at a time; different ranks' groups
// are meant to be used concurrently. Groups share state by reference
// counting, so they may be destroyed in any order. InvalidArgument if n < 1
// or timeout <= 0. A rank that never calls a collective makes the others
// time out (it is not detected earlier).
Result<std::vector<std::unique_ptr<ProcessGroup>>> MakeThreadGroups(
    int n, std::chrono::milliseconds timeout = kDefaultCollectiveTimeout);

// Runs fn(group) on `n` threads, one per rank, and returns each rank's
// status (element r for rank r) once all have finished. An exception thrown
// by fn becomes that rank's InternalError. If n < 1 or timeout <= 0, returns
// a single InvalidArgument status and runs nothing.
std::vector<Status> RunOnThreadRanks(
    int n, const std::function<Status(ProcessGroup&)>& fn,
    std::chrono::milliseconds timeout = kDefaultCollectiveTimeout);

// Whether this build of dcpp has MPI support.
bool HasMpi();

// A group over MPI_COMM_WORLD. Initializes MPI (with thread support
// MPI_THREAD_SERIALIZED or better) if the program has not; MPI is finalized
// at exit if dcpp initialized it, unless a collective timed out (finalizing
// could then block forever on the lost peer). Collective: every rank must
// call it, and it too gives up after `timeout`. At most one thread at a time
// may use MPI groups. Unimplemented if built without MPI.
Result<std::unique_ptr<ProcessGroup>> MakeMpiProcessGroup(
    std::chrono::milliseconds timeout = kDefaultCollectiveTimeout);

// True when this process looks like it was started by mpirun/mpiexec
// (OMPI_COMM_WORLD_SIZE, PMI_SIZE or PMIX_RANK is set and non-empty).
bool LaunchedByMpi();

}  // namespace dcpp

#endif  // DCPP_PROCESS_GROUP_H_
