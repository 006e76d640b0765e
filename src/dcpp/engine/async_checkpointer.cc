// dcpp::AsyncCheckpointer: staging on the caller's thread (engine/staging),
// then engine::Save on one background thread per checkpointer, over a
// duplicate of the caller's process group.
#include "dcpp/async_checkpointer.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/engine/engine.h"
#include "dcpp/engine/staging.h"
#include "dcpp/storage/storage.h"

namespace dcpp {

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

struct AsyncSaveHandle::State {
  mutable std::mutex mu;
  mutable std::condition_variable cv;
  std::optional<Result<Metadata>> result;
  AsyncSaveStats stats;

  void Finish(Result<Metadata> r, double write_seconds) {
    std::lock_guard<std::mutex> lock(mu);
    result = std::move(r);
    stats.write_seconds = write_seconds;
    cv.notify_all();
  }
};

Result<Metadata> AsyncSaveHandle::Wait() const {
  if (!state_) return InvalidArgumentError("AsyncSaveHandle::Wait on an empty handle");
  std::unique_lock<std::mutex> lock(state_->mu);
  state_->cv.wait(lock, [&] { return state_->result.has_value(); });
  return *state_->result;
}

bool AsyncSaveHandle::WaitFor(std::chrono::milliseconds timeout) const {
  if (!state_) return true;
  std::unique_lock<std::mutex> lock(state_->mu);
  return state_->cv.wait_for(lock, timeout, [&] { return state_->result.has_value(); });
}

bool AsyncSaveHandle::Done() const {
  if (!state_) return true;
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->result.has_value();
}

AsyncSaveStats AsyncSaveHandle::stats() const {
  if (!state_) return {};
  std::lock_guard<std::mutex> lock(state_->mu);
  return state_->stats;
}

struct AsyncCheckpointer::Impl {
  // One save handed to the background thread.
  struct Job {
    Value staged;
    std::string path;
    SaveOptions options;
    Status local_failure;  // staging failed: the save still runs, carrying it
    std::shared_ptr<AsyncSaveHandle::State> handle;
  };

  explicit Impl(const AsyncCheckpointerOptions& o)
      : options(o), pool({.max_bytes = o.max_staging_bytes, .lock_memory = o.lock_memory}) {}

  AsyncCheckpointerOptions options;
  ProcessGroup* caller_group = nullptr;  // only compared, never used
  std::unique_ptr<ProcessGroup> group;   // the duplicate; null = this process alone
  storage::Storage* fixed_storage = nullptr;  // CreateAsyncCheckpointerOver
  engine::StagingPool pool;              // used by Save's caller only
  SavePlanCache plan_cache;              // used by the worker only
  std::atomic<uint64_t> pool_bytes{0};   // its capacity, for pool_bytes()

  std::mutex mu;
  std::condition_variable cv;
  std::optional<Job> pending;  // handed over, not yet taken by the worker
  bool busy = false;           // a save is pending or running
  bool stopping = false;
  std::thread worker;

  void Run() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return pending.has_value() || stopping; });
        if (!pending) return;
        job = std::move(*pending);
        pending.reset();
      }
      const Clock::time_point start = Clock::now();
      Result<Metadata> r = Write(job);
      // The snapshot's tensors (and its references to the pool) go before
      // the handle resolves, so the next save may reuse the pool at once.
      job.staged = Value();
      job.handle->Finish(std::move(r), SecondsSince(start));
      {
        std::lock_guard<std::mutex> lock(mu);
        busy = false;
      }
      cv.notify_all();
    }
  }

  Result<Metadata> Write(Job& job) {
    job.options.process_group = group.get();
    if (job.options.plan_cache == nullptr) job.options.plan_cache = &plan_cache;
    if (fixed_storage != nullptr)
      return engine::Save(job.staged, *fixed_storage, job.options, nullptr, job.local_failure);
    // A rank whose storage cannot be opened still takes part in the save's
    // collectives, carrying the error, so no rank waits for it in vain.
    std::unique_ptr<storage::Storage> st;
    Status local = job.local_failure;
    Result<std::unique_ptr<storage::Storage>> opened = storage::OpenStorage(job.path);
    if (opened.ok()) {
      st = std::move(*opened);
    } else {
      if (local.ok()) local = opened.status();
      st = storage::NewMemoryStorage();
    }
    return engine::Save(job.staged, *st, job.options, nullptr, local);
  }
};

AsyncCheckpointer::AsyncCheckpointer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

AsyncCheckpointer::~AsyncCheckpointer() {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.notify_all();
  // The worker finishes a pending save before it sees `stopping`.
  if (impl_->worker.joinable()) impl_->worker.join();
}

Result<std::unique_ptr<AsyncCheckpointer>> AsyncCheckpointer::Create(
    const AsyncCheckpointerOptions& options) {
  if (options.staging_threads < 0) {
    return InvalidArgumentError("AsyncCheckpointerOptions.staging_threads must be >= 0, got " +
                                std::to_string(options.staging_threads));
  }
  auto impl = std::make_unique<Impl>(options);
  impl->options.process_group = nullptr;  // borrowed for this call only
  if (options.process_group != nullptr) {
    impl->caller_group = options.process_group;
    DCPP_ASSIGN_OR_RETURN(impl->group, options.process_group->Duplicate());
  }
  Impl* raw = impl.get();
  try {
    impl->worker = std::thread([raw] { raw->Run(); });
  } catch (const std::system_error& e) {
    return ResourceExhaustedError(std::string("AsyncCheckpointer: could not start its thread: ") +
                                  e.what());
  }
  return std::unique_ptr<AsyncCheckpointer>(new AsyncCheckpointer(std::move(impl)));
}

AsyncSaveHandle AsyncCheckpointer::Save(const Value& state_dict, std::string checkpoint_dir,
                                        SaveOptions options) {
  auto handle = std::make_shared<AsyncSaveHandle::State>();
  Impl& m = *impl_;
  {
    // One save in flight: its bytes are still being written from the pool.
    std::unique_lock<std::mutex> lock(m.mu);
    m.cv.wait(lock, [&] { return !m.busy; });
    m.busy = true;
  }
  const Clock::time_point start = Clock::now();
  Impl::Job job;
  job.path = std::move(checkpoint_dir);
  job.handle = handle;
  if (options.process_group != nullptr && options.process_group != m.caller_group &&
      options.process_group != m.group.get()) {
    job.local_failure = InvalidArgumentError(
        "AsyncCheckpointer::Save: SaveOptions.process_group must be null or the group the "
        "checkpointer was created with");
  }
  if (job.local_failure.ok()) {
    Result<engine::StageResult> staged = CatchExceptions(
        "staging", [&] { return engine::Stage(state_dict, m.pool, m.options.staging_threads); });
    if (staged.ok()) {
      job.staged = std::move(staged->staged);
      handle->stats.staged_bytes = staged->bytes;
      handle->stats.pool_grew = staged->pool_grew;
      m.pool_bytes = m.pool.total_bytes();
    } else {
      job.local_failure = staged.status().WithContext("async save to " + job.path);
    }
  }
  handle->stats.stage_seconds = SecondsSince(start);
  job.options = std::move(options);
  {
    std::lock_guard<std::mutex> lock(m.mu);
    m.pending = std::move(job);
  }
  m.cv.notify_all();
  return AsyncSaveHandle(std::move(handle));
}

uint64_t AsyncCheckpointer::pool_bytes() const { return impl_->pool_bytes.load(); }

AsyncSaveHandle AsyncSave(const Value& state_dict, std::string checkpoint_dir,
                          SaveOptions options) {
  if (options.process_group != nullptr) {
    auto state = std::make_shared<AsyncSaveHandle::State>();
    state->Finish(InvalidArgumentError("dcpp::AsyncSave is for this process alone; with a "
                                       "process group, make an AsyncCheckpointer per rank"),
                  0);
    return AsyncSaveHandle(std::move(state));
  }
  static std::mutex mu;
  static std::unique_ptr<AsyncCheckpointer> checkpointer;
  std::lock_guard<std::mutex> lock(mu);
  if (!checkpointer) {
    Result<std::unique_ptr<AsyncCheckpointer>> c = AsyncCheckpointer::Create();
    if (!c.ok()) {
      auto state = std::make_shared<AsyncSaveHandle::State>();
      state->Finish(c.status(), 0);
      return AsyncSaveHandle(std::move(state));
    }
    checkpointer = std::move(*c);
  }
  return checkpointer->Save(state_dict, std::move(checkpoint_dir), std::move(options));
}

namespace engine {

Result<std::unique_ptr<AsyncCheckpointer>> CreateAsyncCheckpointerOver(
    storage::Storage& storage, const AsyncCheckpointerOptions& options) {
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<AsyncCheckpointer> c, AsyncCheckpointer::Create(options));
  c->impl_->fixed_storage = &storage;  // before any save: the worker reads it only for a job
  return c;
}

}  // namespace engine
}  // namespace dcpp
