#include "dcpp/collective/thread_group.h"

#include "dcpp/collective/collective_op.h"

#include <condition_variable>
#include <exception>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

namespace dcpp {
namespace collective {
namespace {

bool HasRoot(Op op) { return op == Op::kGather || op == Op::kBroadcast || op == Op::kScatter; }

// What one rank brings to a round.
struct Call {
  Op op = Op::kBarrier;
  int root = -1;                   // -1 for collectives without a root
  std::string data;                // Gather, Broadcast (root), AllGather
  std::vector<std::string> parts;  // Scatter (root)
};

std::string Describe(const Call& call) {
  std::string out(OpName(call.op));
  if (HasRoot(call.op)) out += "(root " + std::to_string(call.root) + ")";
  return out;
}

// One collective round: the k-th call of every rank. Lives as long as some
// rank still holds it, so results survive the set moving on to round k+1.
struct Round {
  Round(uint64_t number_in, int n) : number(number_in), calls(n), takers_left(n) {}

  uint64_t number;
  int arrived = 0;
  std::vector<std::optional<Call>> calls;  // by rank; empty = not arrived yet
  bool done = false;                       // results (or `status`) are ready
  Status status;                           // the round's failure, if any
  std::vector<std::string> gathered;       // Gather, AllGather: by rank
  std::string broadcast;                   // Broadcast
  std::vector<std::string> scattered;      // Scatter: by rank
  int takers_left;                         // ranks that have not taken their result
};

std::string RankList(const std::vector<int>& ranks) {
  std::string out = "[";
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(ranks[i]);
  }
  return out + "]";
}

}  // namespace

struct ThreadGroupState {
  ThreadGroupState(int n, std::chrono::milliseconds t)
      : size(n), timeout(t), current(std::make_shared<Round>(0, n)) {}

  const int size;
  const std::chrono::milliseconds timeout;
  std::mutex mu;
  std::condition_variable cv;
  std::shared_ptr<Round> current;  // the round that arriving ranks join
  Status broken;                   // Aborted once a round has timed out
  // The sets made by Duplicate: element k is the ranks' k-th duplicate.
  std::vector<std::shared_ptr<ThreadGroupState>> duplicates;
};

namespace {

// Validates the calls of a full round and computes its results. Called by
// the last rank to arrive, under the state's mutex.
void Complete(Round& round, int n) {
  const Call& first = *round.calls[0];
  for (int r = 1; r < n; ++r) {
    const Call& other = *round.calls[r];
    if (other.op != first.op || other.root != first.root) {
      round.status = InternalError("collective mismatch in round " + std::to_string(round.number) +
                                   ": rank 0 called " + Describe(first) + " but rank " +
                                   std::to_string(r) + " called " + Describe(other));
      return;
    }
  }
  const std::string name = OpName(first.op);
  if (HasRoot(first.op) && (first.root < 0 || first.root >= n)) {
    round.status = InvalidArgumentError(std::string(name) + ": root " + std::to_string(first.root) +
                                        " is out of range for " + std::to_string(n) + " ranks");
    return;
  }
  switch (first.op) {
    case Op::kBarrier:
      break;
    case Op::kGather:
    case Op::kAllGather:
      round.gathered.resize(n);
      for (int r = 0; r < n; ++r) round.gathered[r] = std::move(round.calls[r]->data);
      break;
    case Op::kBroadcast:
      round.broadcast = std::move(round.calls[first.root]->data);
      break;
    case Op::kScatter: {
      std::vector<std::string>& parts = round.calls[first.root]->parts;
      if (parts.size() != static_cast<size_t>(n)) {
        round.status = InvalidArgumentError("Scatter: root " + std::to_string(first.root) +
                                            " passed " + std::to_string(parts.size()) +
                                            " parts for " + std::to_string(n) + " ranks");
        return;
      }
      round.scattered = std::move(parts);
      break;
    }
  }
}

// What a rank takes out of a finished round.
struct Outcome {
  std::string one;               // Broadcast, Scatter
  std::vector<std::string> all;  // Gather (root), AllGather
};

// Joins the set's current round with `call`, waits up to the set's timeout
// for the other ranks and returns this rank's share of the result.
Result<Outcome> Join(ThreadGroupState& state, int rank, Call call) {
  // The deadline starts before taking the lock: time spent blocked on the
  // mutex counts against the collective too.
  const auto deadline = std::chrono::steady_clock::now() + state.timeout;
  const Op op = call.op;
  const int root = call.root;
  std::unique_lock<std::mutex> lock(state.mu);
  if (!state.broken.ok()) return state.broken;

  std::shared_ptr<Round> round = state.current;
  round->calls[rank] = std::move(call);
  if (++round->arrived == state.size) {
    Complete(*round, state.size);
    for (auto& c : round->calls) c.reset();  // release inputs not moved into results
    round->done = true;
    state.current = std::make_shared<Round>(round->number + 1, state.size);
    state.cv.notify_all();
  } else if (!state.cv.wait_until(lock, deadline, [&] { return round->done; })) {
    std::vector<int> missing;
    for (int r = 0; r < state.size; ++r) {
      if (!round->calls[r].has_value()) missing.push_back(r);
    }
    Status timed_out = DeadlineExceededError(
        std::string(OpName(op)) + " timed out after " + std::to_string(state.timeout.count()) +
        " ms: ranks " + RankList(missing) + " did not arrive (collective round " +
        std::to_string(round->number) + ")");
    // Every rank already waiting in this round fails the same way; later
    // calls fail fast, because the ranks no longer agree on round numbers.
    round->status = timed_out;
    round->done = true;
    for (auto& c : round->calls) c.reset();
    state.broken = AbortedError("thread process group is unusable after an earlier failure: " +
                                timed_out.message());
    state.cv.notify_all();
    return timed_out;
  }
  if (!round->status.ok()) return round->status;

  // The last rank to take its result may move shared results instead of
  // copying them.
  const bool last = --round->takers_left == 0;
  Outcome out;
  switch (op) {
    case Op::kBarrier:
      break;
    case Op::kGather:
      if (rank == root) out.all = std::move(round->gathered);  // only the root needs them
      break;
    case Op::kAllGather:
      out.all = last ? std::move(round->gathered) : round->gathered;
      break;
    case Op::kBroadcast:
      out.one = last ? std::move(round->broadcast) : round->broadcast;
      break;
    case Op::kScatter:
      out.one = std::move(round->scattered[rank]);
      break;
  }
  return out;
}

}  // namespace

ThreadGroup::ThreadGroup(std::shared_ptr<ThreadGroupState> state, int rank)
    : state_(std::move(state)), rank_(rank) {}

ThreadGroup::~ThreadGroup() = default;

int ThreadGroup::size() const { return state_->size; }

Status ThreadGroup::Barrier() {
  Call call;
  call.op = Op::kBarrier;
  return Join(*state_, rank_, std::move(call)).status();
}

Result<std::vector<std::string>> ThreadGroup::Gather(std::string data, int root) {
  Call call;
  call.op = Op::kGather;
  call.root = root;
  call.data = std::move(data);
  DCPP_ASSIGN_OR_RETURN(Outcome out, Join(*state_, rank_, std::move(call)));
  return std::move(out.all);
}

Result<std::string> ThreadGroup::Broadcast(std::string data, int root) {
  Call call;
  call.op = Op::kBroadcast;
  call.root = root;
  if (rank_ == root) call.data = std::move(data);
  DCPP_ASSIGN_OR_RETURN(Outcome out, Join(*state_, rank_, std::move(call)));
  return std::move(out.one);
}

Result<std::vector<std::string>> ThreadGroup::AllGather(std::string data) {
  Call call;
  call.op = Op::kAllGather;
  call.data = std::move(data);
  DCPP_ASSIGN_OR_RETURN(Outcome out, Join(*state_, rank_, std::move(call)));
  return std::move(out.all);
}

Result<std::string> ThreadGroup::Scatter(std::vector<std::string> parts, int root) {
  Call call;
  call.op = Op::kScatter;
  call.root = root;
  if (rank_ == root) call.parts = std::move(parts);
  DCPP_ASSIGN_OR_RETURN(Outcome out, Join(*state_, rank_, std::move(call)));
  return std::move(out.one);
}

Result<std::unique_ptr<ProcessGroup>> ThreadGroup::Duplicate() {
  std::shared_ptr<ThreadGroupState> dup;
  {
    std::lock_guard<std::mutex> lock(state_->mu);
    if (state_->duplicates.size() <= duplicates_)
      state_->duplicates.push_back(std::make_shared<ThreadGroupState>(state_->size, state_->timeout));
    dup = state_->duplicates[duplicates_];
  }
  ++duplicates_;
  return std::unique_ptr<ProcessGroup>(std::make_unique<ThreadGroup>(std::move(dup), rank_));
}

}  // namespace collective

Result<std::vector<std::unique_ptr<ProcessGroup>>> MakeThreadGroups(
    int n, std::chrono::milliseconds timeout) {
  if (n < 1) {
    return InvalidArgumentError("MakeThreadGroups: need at least 1 rank, got " + std::to_string(n));
  }
  if (timeout.count() <= 0) {
    return InvalidArgumentError("MakeThreadGroups: timeout must be positive, got " +
                                std::to_string(timeout.count()) + " ms");
  }
  auto state = std::make_shared<collective::ThreadGroupState>(n, timeout);
  std::vector<std::unique_ptr<ProcessGroup>> groups;
  groups.reserve(n);
  for (int r = 0; r < n; ++r) groups.push_back(std::make_unique<collective::ThreadGroup>(state, r));
  return groups;
}

std::vector<Status> RunOnThreadRanks(int n, const std::function<Status(ProcessGroup&)>& fn,
                                     std::chrono::milliseconds timeout) {
  Result<std::vector<std::unique_ptr<ProcessGroup>>> groups = MakeThreadGroups(n, timeout);
  if (!groups.ok()) return {groups.status().WithContext("RunOnThreadRanks")};

  std::vector<Status> statuses(n);
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (int r = 0; r < n; ++r) {
    auto body = [&statuses, &fn, &groups, r] {
      // A throwing rank must not take the process down (std::terminate) nor
      // leave its peers without a status.
      try {
        statuses[r] = fn(*(*groups)[r]);
      } catch (const std::exception& e) {
        statuses[r] = InternalError("rank " + std::to_string(r) + " threw: " + e.what());
      } catch (...) {
        statuses[r] = InternalError("rank " + std::to_string(r) + " threw a non-std exception");
      }
    };
    try {
      threads.emplace_back(body);
    } catch (const std::system_error& e) {
      // Ranks already started will time out in their first collective with
      // the missing ranks named; they are still joined below.
      for (int q = r; q < n; ++q) {
        statuses[q] =
            ResourceExhaustedError("RunOnThreadRanks: could not start a thread for rank " +
                                   std::to_string(q) + ": " + e.what());
      }
      break;
    }
  }
  for (std::thread& t : threads) t.join();
  return statuses;
}

}  // namespace dcpp
