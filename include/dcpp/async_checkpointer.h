// Asynchronous saves: copy the state into a reused staging pool, return,
// and write the checkpoint in the background (DCP's dcp.async_save).
//
//   auto ckpt = dcpp::AsyncCheckpointer::Create({.process_group = &pg});
//   for (int step = 1; ; ++step) {
//     Train(step);                                   // mutates the tensors
//     if (step % 100 == 0) {
//       auto save = (*ckpt)->Save(sd, "/ckpt/step_" + std::to_string(step));
//       // sd may change from here on: the checkpoint holds the values above.
//     }
//   }
//   // ~AsyncCheckpointer waits for the save in flight.
//
// What a save does: on the calling thread, every tensor (and every shard of
// a ShardedTensor) is copied into the pool, in parallel, large tensors
// split across threads; plain values are copied; top-level Stateful objects
// are asked for StateDict() and that is staged. Save returns once the copy
// is done. Planning, collectives, writing and the commit then run on the
// checkpointer's background thread, exactly as dcpp::Save does them, with
// the same commit protocol and failure behaviour: nothing that looks like a
// checkpoint is left for a save that did not complete.
//
// The pool is allocated on first use and reused; it grows (is reallocated)
// only when a state needs more than it holds, and is freed with the
// checkpointer. At most one save is in flight per checkpointer: Save first
// waits for the previous save to finish, because its bytes are still being
// written from the pool. Start a second checkpointer for overlapping saves.
#ifndef DCPP_ASYNC_CHECKPOINTER_H_
#define DCPP_ASYNC_CHECKPOINTER_H_

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "dcpp/checkpoint.h"
#include "dcpp/metadata.h"
#include "dcpp/process_group.h"
#include "dcpp/status.h"
#include "dcpp/value.h"

namespace dcpp {

struct AsyncCheckpointerOptions {
  // The ranks saving together (borrowed for the call to Create only; null =
  // this process alone). Create duplicates it (ProcessGroup::Duplicate, a
  // collective: every rank creates its checkpointer at the same point), and
  // background saves use only the duplicate, so their collectives never
  // interleave with the program's own use of the group.
  ProcessGroup* process_group = nullptr;
  // Most bytes the pool may hold; a save whose state needs more fails with
  // ResourceExhausted (on every rank, nothing written). 0 = no cap.
  uint64_t max_staging_bytes = 0;
  // mlock the pool so staged bytes are never swapped out. Fails the save
  // with ResourceExhausted when RLIMIT_MEMLOCK is too small.
  bool lock_memory = false;
  // Threads copying into the pool (the caller is one of them). 0: min(8,
  // hardware threads). Negative is InvalidArgument.
  int staging_threads = 0;
};

// What a save reports besides its metadata.
struct AsyncSaveStats {
  uint64_t staged_bytes = 0;     // tensor bytes copied into the pool
  double stage_seconds = 0;      // the caller's stall: staging, Save's return
  double write_seconds = 0;      // background: planning, writing, commit
  bool pool_grew = false;        // this save (re)allocated the pool
};

// The result of one async save, shared by copies of the handle. Thread-safe.
class AsyncSaveHandle {
 public:
  struct State;  // shared with the background thread
  AsyncSaveHandle() = default;
  explicit AsyncSaveHandle(std::shared_ptr<State> state) : state_(std::move(state)) {}

  // Blocks until the save has finished (committed or failed) and returns
  // what dcpp::Save would have: the metadata, or the error. With a process
  // group, every rank's handle resolves to the same status. May be called
  // again (returns the same result) and from several threads.
  Result<Metadata> Wait() const;
  // Waits at most `timeout`; true when the save has finished.
  bool WaitFor(std::chrono::milliseconds timeout) const;
  // True once the save has finished (never blocks).
  bool Done() const;
  // Filled in as the save goes (write_seconds once Done()).
  AsyncSaveStats stats() const;

 private:
  std::shared_ptr<State> state_;
};

class AsyncCheckpointer;
namespace storage {
class Storage;
}  // namespace storage
namespace engine {
// Internal, for tests (src/dcpp/engine/engine.h).
Result<std::unique_ptr<AsyncCheckpointer>> CreateAsyncCheckpointerOver(
    storage::Storage& storage, const AsyncCheckpointerOptions& options);
}  // namespace engine

class AsyncCheckpointer {
 public:
  // Collective when options.process_group is set (see there).
  static Result<std::unique_ptr<AsyncCheckpointer>> Create(
      const AsyncCheckpointerOptions& options = {});

  // Waits for the save in flight (its result stays in its handle).
  ~AsyncCheckpointer();
  AsyncCheckpointer(const AsyncCheckpointer&) = delete;
  AsyncCheckpointer& operator=(const AsyncCheckpointer&) = delete;

  // Stages `state_dict` and starts writing it to `checkpoint_dir` in the
  // background; returns when the state may change. `options` as for
  // dcpp::Save, except that options.process_group must be null or the group
  // given to Create (the duplicate is used either way); options.progress is
  // called from background threads. Without options.plan_cache the
  // checkpointer's own SavePlanCache is used: repeated saves of the same
  // structure skip planning. Waits first for the previous save of
  // this checkpointer to finish. With a process group every rank calls Save
  // at the same point, like dcpp::Save. Errors found while staging (a
  // Stateful's StateDict failing, the pool cap, memory) do not return here:
  // they fail the save on every rank through the handle, like any other.
  AsyncSaveHandle Save(const Value& state_dict, std::string checkpoint_dir,
                       SaveOptions options = {});

  // Bytes the pool holds now (0 before the first save).
  uint64_t pool_bytes() const;

 private:
  friend Result<std::unique_ptr<AsyncCheckpointer>> engine::CreateAsyncCheckpointerOver(
      storage::Storage&, const AsyncCheckpointerOptions&);
  struct Impl;
  explicit AsyncCheckpointer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Save through a process-wide checkpointer for this process alone (no
// process group), created on first use and kept until exit. For many ranks,
// or to control the pool, make an AsyncCheckpointer per rank.
AsyncSaveHandle AsyncSave(const Value& state_dict, std::string checkpoint_dir,
                          SaveOptions options = {});

}  // namespace dcpp

#endif  // DCPP_ASYNC_CHECKPOINTER_H_
