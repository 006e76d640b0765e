// `dcpp demo --async`: what an asynchronous checkpoint costs a training
// loop. N ranks each hold a row shard of the demo's training state
// (demo_state.h) and run a simulated training loop: every step updates
// every tensor (the optimizer), runs a fixed amount of compute (a small
// matmul loop calibrated to a wall time) and meets the other ranks in a
// collective (the gradient all-reduce). Every K steps the state is saved.
// The loop runs twice on the same state: with dcpp::Save, which blocks
// training until the files are committed, and with AsyncCheckpointer::Save,
// which returns once the state is staged and writes in the background while
// training goes on.
//
// Measured per checkpoint: the stall (how long Save blocked the training
// thread), the staging time and the background write time (AsyncSaveStats),
// and the length of the steps that ran while a background write was in
// flight against the steps that did not. Measured once: a single-threaded
// memcpy of each rank's state into preallocated, pre-faulted memory, the
// yardstick for the stall. The last async checkpoint is then loaded with
// another sharding and every byte is checked against the state at its
// step: the loop changed the tensors after Save returned, so this checks
// that the checkpoint is a snapshot.
//
// Ranks are threads of this process by default; with `group` set (e.g. MPI
// under mpirun) the group's ranks train, each with its own
// AsyncCheckpointer over the group, and load back on the same group.
#ifndef DCPP_TOOLS_ASYNC_DEMO_H_
#define DCPP_TOOLS_ASYNC_DEMO_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "dcpp/checkpoint.h"

namespace dcpp::tools {

struct AsyncDemoOptions {
  std::string dir;          // empty: a fresh directory under $TMPDIR (or /tmp)
  uint64_t size_mib = 64;   // approximate state size, all ranks together
  int ranks = 2;            // training (saving) thread ranks; ignored with `group`
  int load_ranks = 3;       // thread ranks loading the last checkpoint back
  int steps = 40;           // training steps per loop
  int every = 10;           // a checkpoint after every `every`-th step
  int step_ms = 50;         // target length of a step's compute + update
  int thread_count = 2;     // I/O threads (and data files) per rank
  int staging_threads = 0;  // AsyncCheckpointerOptions::staging_threads
  bool sync_files = true;
  bool keep = false;        // keep the checkpoints (removed otherwise)
  ProcessGroup* group = nullptr;  // borrowed; null = thread ranks
  // Called on rank 0 with a line about the phase that starts (may be null).
  std::function<void(const std::string&)> note;
};

// One checkpoint of one loop. Times are the maximum over the ranks (the
// slowest rank holds the others up at the next collective).
struct AsyncDemoCheckpoint {
  int step = 0;
  double blocked_seconds = 0;  // Save's call on the training thread
  // Async only:
  double stage_seconds = 0;    // copying into the pool (part of the stall)
  double write_seconds = 0;    // background: plan, write, commit
  uint64_t staged_bytes = 0;   // all ranks together
  bool pool_grew = false;      // the first save allocates the pool
  bool waited_for_previous = false;  // the previous save was still being written
  int overlapped_steps = 0;    // steps that started while it was written
  double overlapped_step_seconds = 0;  // their mean length
};

struct AsyncDemoLoop {
  std::vector<AsyncDemoCheckpoint> checkpoints;
  std::vector<double> step_seconds;  // rank 0's, step 1 first
  double wall_seconds = 0;   // first step to the end of the last one
  double drain_seconds = 0;  // then waiting for the last background write
  // Steps with no background write in flight, and the others.
  int clean_steps = 0, overlapped_steps = 0;
  double clean_step_seconds = 0, overlapped_step_seconds = 0;  // means
};

struct AsyncDemoReport {
  std::string dir;
  std::string ranks_kind;  // "threads" or the group's kind
  int ranks = 0;
  int load_ranks = 0;
  uint64_t state_bytes = 0;
  uint64_t rank_bytes = 0;  // the largest rank's share
  size_t tensors = 0;
  double update_seconds = 0;   // one pass updating every tensor (max rank)
  double compute_seconds = 0;  // the calibrated compute per step
  double memcpy_seconds = 0;   // single-threaded memcpy of a rank's state: median of 5, max rank
  double baseline_step_seconds = 0;  // median step with nothing in flight, both loops
  AsyncDemoLoop sync_loop, async_loop;
  int verified_step = 0;
  uint64_t verified_bytes = 0;
  size_t verified_pieces = 0;
  double load_seconds = 0;
};

// Runs the demo. Fails if a save fails or if a loaded byte differs from the
// state at the checkpoint's step (naming tensor, piece and step). With a
// group every rank must call it; the report is complete on rank 0.
// InvalidArgument for counts < 1 or every > steps.
Result<AsyncDemoReport> RunAsyncDemo(const AsyncDemoOptions& options);

// A readable multi-line report.
std::string FormatAsyncDemoReport(const AsyncDemoOptions& options, const AsyncDemoReport& report);

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_ASYNC_DEMO_H_
