// N ranks as threads of one process: the ProcessGroup behind MakeThreadGroups
// and RunOnThreadRanks (include/dcpp/process_group.h).
//
// The ranks of one set share a ThreadGroupState. Collectives are matched by
// arrival order: the k-th collective call of every rank forms round k. Each
// round has its own state object, so a fast rank that has already entered
// round k+1 cannot disturb the results that slower ranks are still taking out
// of round k.
//
// Failure behaviour:
// - A round in which some rank does not arrive within the timeout fails on
//   every rank that did arrive with DeadlineExceeded("<Collective> timed out
//   after N ms: ranks [..] did not arrive"). The set of groups is then
//   broken: every later collective on any of its ranks fails at once with
//   Aborted naming the earlier timeout. Breaking is deliberate: after a
//   timeout the ranks no longer agree on which round they are in, so going on
//   could pair unrelated collectives.
// - Ranks calling different collectives (or different roots) in the same
//   round: every rank of the round gets the same InternalError naming both
//   calls. A root outside [0, size) on every rank: InvalidArgument on every
//   rank. Scatter with parts.size() != size() on the root: InvalidArgument on
//   every rank. These fail one round only; the set stays usable.
#ifndef DCPP_COLLECTIVE_THREAD_GROUP_H_
#define DCPP_COLLECTIVE_THREAD_GROUP_H_

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/process_group.h"
#include "dcpp/status.h"

namespace dcpp::collective {

// Shared by the groups of one set; defined in thread_group.cc.
struct ThreadGroupState;

// Rank `rank` of a set created by MakeThreadGroups. Holds shared ownership of
// the set's state, so groups may be destroyed in any order.
//
// Thread safety: one thread at a time per ThreadGroup (the rank's thread);
// different ThreadGroups of a set are meant to be used concurrently.
class ThreadGroup final : public ProcessGroup {
 public:
  // REQUIRES: state != nullptr and 0 <= rank < the set's size.
  ThreadGroup(std::shared_ptr<ThreadGroupState> state, int rank);
  ~ThreadGroup() override;

  int rank() const override { return rank_; }
  int size() const override;
  std::string_view kind() const override { return "threads"; }

  Status Barrier() override;
  Result<std::vector<std::string>> Gather(std::string data, int root) override;
  Result<std::string> Broadcast(std::string data, int root) override;
  Result<std::vector<std::string>> AllGather(std::string data) override;
  Result<std::string> Scatter(std::vector<std::string> parts, int root) override;
  // The k-th Duplicate of every rank joins the same new set (created by the
  // first rank to ask, with this set's size and timeout).
  Result<std::unique_ptr<ProcessGroup>> Duplicate() override;

 private:
  std::shared_ptr<ThreadGroupState> state_;
  int rank_;
  size_t duplicates_ = 0;  // how many this rank has made
};

}  // namespace dcpp::collective

#endif  // DCPP_COLLECTIVE_THREAD_GROUP_H_
