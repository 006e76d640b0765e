#include "dcpp/collective/thread_group.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "dcpp/process_group.h"

namespace dcpp {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// Long enough for sanitizer builds on a loaded machine; short enough that a
// broken implementation fails the test instead of hanging it for the default
// ten minutes.
constexpr milliseconds kTestTimeout(30000);

// Distinct, position-dependent bytes per (rank, round), so a payload routed
// to the wrong rank, cut short or shifted is caught.
std::string Payload(int rank, int round, size_t size) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) {
    s[i] = static_cast<char>((rank * 131 + round * 7 + i * 13 + (i >> 8)) & 0xff);
  }
  return s;
}

// Sizes that vary by rank and round, empty included.
size_t SizeFor(int rank, int round) {
  static constexpr size_t kSizes[] = {0, 1, 7, 255, 4096, 65537, 0, 300000};
  return kSizes[(rank * 3 + round) % 8];
}

// Turns a failed expectation inside a rank into a Status the test checks.
#define RANK_EXPECT(cond)                                                                   \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      return InternalError("rank " + std::to_string(pg.rank()) + ": expectation failed: " + \
                           #cond + " at line " + std::to_string(__LINE__));                 \
    }                                                                                       \
  } while (0)

void ExpectAllOk(const std::vector<Status>& statuses) {
  for (size_t r = 0; r < statuses.size(); ++r) {
    EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r].ToString();
  }
}

TEST(SingleProcessGroupTest, CollectivesReturnTheirInput) {
  std::unique_ptr<ProcessGroup> pg = MakeSingleProcessGroup();
  EXPECT_EQ(pg->rank(), 0);
  EXPECT_EQ(pg->size(), 1);
  EXPECT_EQ(pg->kind(), "single");
  EXPECT_TRUE(pg->Barrier().ok());

  Result<std::vector<std::string>> g = pg->Gather("abc", 0);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ(*g, std::vector<std::string>{"abc"});
  Result<std::string> b = pg->Broadcast("xyz", 0);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, "xyz");
  Result<std::vector<std::string>> ag = pg->AllGather("");
  ASSERT_TRUE(ag.ok());
  EXPECT_EQ(*ag, std::vector<std::string>{""});
  Result<std::string> s = pg->Scatter({"part"}, 0);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, "part");
}

TEST(SingleProcessGroupTest, RejectsBadRootAndParts) {
  std::unique_ptr<ProcessGroup> pg = MakeSingleProcessGroup();
  EXPECT_EQ(pg->Gather("a", 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pg->Broadcast("a", -1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(pg->Scatter({"a"}, 1).status().code(), StatusCode::kInvalidArgument);
  Status bad_parts = pg->Scatter({"a", "b"}, 0).status();
  EXPECT_EQ(bad_parts.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_parts.message().find("2 parts"), std::string::npos) << bad_parts.message();
  EXPECT_EQ(pg->Scatter({}, 0).status().code(), StatusCode::kInvalidArgument);
}

TEST(ThreadGroupTest, MakeRejectsBadArguments) {
  EXPECT_EQ(MakeThreadGroups(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeThreadGroups(-3).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeThreadGroups(2, milliseconds(0)).status().code(), StatusCode::kInvalidArgument);
  std::vector<Status> st = RunOnThreadRanks(0, [](ProcessGroup&) { return Status(); });
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].code(), StatusCode::kInvalidArgument);
}

TEST(ThreadGroupTest, MakeThreadGroupsNumbersRanks) {
  Result<std::vector<std::unique_ptr<ProcessGroup>>> groups = MakeThreadGroups(3);
  ASSERT_TRUE(groups.ok());
  ASSERT_EQ(groups->size(), 3u);
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ((*groups)[r]->rank(), r);
    EXPECT_EQ((*groups)[r]->size(), 3);
    EXPECT_EQ((*groups)[r]->kind(), "threads");
  }
}

class ThreadGroupSizeTest : public ::testing::TestWithParam<int> {};

TEST_P(ThreadGroupSizeTest, EveryCollectiveWithEveryRoot) {
  const int n = GetParam();
  std::vector<Status> st = RunOnThreadRanks(
      n,
      [n](ProcessGroup& pg) -> Status {
        const int me = pg.rank();
        RANK_EXPECT(pg.size() == n);
        int round = 0;
        DCPP_RETURN_IF_ERROR(pg.Barrier());
        for (int root = 0; root < n; ++root, ++round) {
          // Gather: root sees every rank's payload in rank order, others nothing.
          DCPP_ASSIGN_OR_RETURN(std::vector<std::string> g,
                                pg.Gather(Payload(me, round, SizeFor(me, round)), root));
          if (me == root) {
            RANK_EXPECT(g.size() == static_cast<size_t>(n));
            for (int r = 0; r < n; ++r) RANK_EXPECT(g[r] == Payload(r, round, SizeFor(r, round)));
          } else {
            RANK_EXPECT(g.empty());
          }
          // Broadcast: non-roots pass junk that must be ignored.
          std::string mine = me == root ? Payload(root, round, SizeFor(root, round)) : "ignored";
          DCPP_ASSIGN_OR_RETURN(std::string b, pg.Broadcast(std::move(mine), root));
          RANK_EXPECT(b == Payload(root, round, SizeFor(root, round)));
          // Scatter: rank r gets parts[r]; non-roots pass parts of the wrong size
          // on purpose, which must be ignored.
          std::vector<std::string> parts;
          if (me == root) {
            for (int r = 0; r < n; ++r)
              parts.push_back(Payload(r, round + 1000, SizeFor(r, round)));
          } else {
            parts.push_back("ignored");
          }
          DCPP_ASSIGN_OR_RETURN(std::string s, pg.Scatter(std::move(parts), root));
          RANK_EXPECT(s == Payload(me, round + 1000, SizeFor(me, round)));
        }
        DCPP_ASSIGN_OR_RETURN(std::vector<std::string> ag,
                              pg.AllGather(Payload(me, round, SizeFor(me, round))));
        RANK_EXPECT(ag.size() == static_cast<size_t>(n));
        for (int r = 0; r < n; ++r) RANK_EXPECT(ag[r] == Payload(r, round, SizeFor(r, round)));
        return pg.Barrier();
      },
      kTestTimeout);
  ASSERT_EQ(st.size(), static_cast<size_t>(n));
  ExpectAllOk(st);
}

TEST_P(ThreadGroupSizeTest, LargeAndEmptyPayloads) {
  const int n = GetParam();
  std::vector<Status> st = RunOnThreadRanks(
      n,
      [n](ProcessGroup& pg) -> Status {
        const int me = pg.rank();
        // Everyone empty.
        DCPP_ASSIGN_OR_RETURN(std::vector<std::string> ag, pg.AllGather(""));
        RANK_EXPECT(ag == std::vector<std::string>(n));
        DCPP_ASSIGN_OR_RETURN(std::string b, pg.Broadcast("", n - 1));
        RANK_EXPECT(b.empty());
        // 3 MiB from one rank, empty from the others.
        const size_t big = 3u << 20;
        DCPP_ASSIGN_OR_RETURN(std::vector<std::string> g,
                              pg.Gather(me == n - 1 ? Payload(me, 1, big) : "", 0));
        if (me == 0) {
          RANK_EXPECT(g.size() == static_cast<size_t>(n));
          RANK_EXPECT(g[n - 1] == Payload(n - 1, 1, big));
          for (int r = 0; r < n - 1; ++r) RANK_EXPECT(g[r].empty());
        }
        DCPP_ASSIGN_OR_RETURN(b, pg.Broadcast(me == 0 ? Payload(0, 2, big) : "", 0));
        RANK_EXPECT(b == Payload(0, 2, big));
        return Status();
      },
      kTestTimeout);
  ExpectAllOk(st);
}

INSTANTIATE_TEST_SUITE_P(Sizes, ThreadGroupSizeTest, ::testing::Values(1, 2, 5, 8));

TEST(ThreadGroupTest, ManyBackToBackMixedRounds) {
  // Every rank draws the same sequence of collectives from the same seed, so
  // they agree on the order without talking; no barrier between rounds, so
  // fast ranks race into the next round while slow ones still read results.
  constexpr int kRanks = 5;
  constexpr int kRounds = 200;
  std::vector<Status> st = RunOnThreadRanks(
      kRanks,
      [](ProcessGroup& pg) -> Status {
        const int me = pg.rank();
        const int n = pg.size();
        std::mt19937 rng(12345);
        for (int round = 0; round < kRounds; ++round) {
          const int kind = static_cast<int>(rng() % 5);
          const int root = static_cast<int>(rng() % n);
          const size_t size = rng() % 3000;  // same bound for all; content differs by rank
          switch (kind) {
            case 0:
              DCPP_RETURN_IF_ERROR(pg.Barrier());
              break;
            case 1: {
              DCPP_ASSIGN_OR_RETURN(std::vector<std::string> g,
                                    pg.Gather(Payload(me, round, size + me), root));
              if (me == root) {
                RANK_EXPECT(g.size() == static_cast<size_t>(n));
                for (int r = 0; r < n; ++r) RANK_EXPECT(g[r] == Payload(r, round, size + r));
              } else {
                RANK_EXPECT(g.empty());
              }
              break;
            }
            case 2: {
              DCPP_ASSIGN_OR_RETURN(std::string b, pg.Broadcast(Payload(me, round, size), root));
              RANK_EXPECT(b == Payload(root, round, size));
              break;
            }
            case 3: {
              DCPP_ASSIGN_OR_RETURN(std::vector<std::string> ag,
                                    pg.AllGather(Payload(me, round, size + me)));
              RANK_EXPECT(ag.size() == static_cast<size_t>(n));
              for (int r = 0; r < n; ++r) RANK_EXPECT(ag[r] == Payload(r, round, size + r));
              break;
            }
            case 4: {
              std::vector<std::string> parts;
              for (int r = 0; r < n; ++r) parts.push_back(Payload(r + 17 * root, round, size + r));
              DCPP_ASSIGN_OR_RETURN(std::string s, pg.Scatter(std::move(parts), root));
              RANK_EXPECT(s == Payload(me + 17 * root, round, size + me));
              break;
            }
          }
        }
        return Status();
      },
      kTestTimeout);
  ExpectAllOk(st);
}

TEST(ThreadGroupTest, RankThatSkipsACollectiveMakesOthersTimeOut) {
  constexpr milliseconds kTimeout(200);
  std::vector<double> waited_ms(4, -1);
  std::vector<Status> after(4);
  std::vector<Status> st = RunOnThreadRanks(
      4,
      [&](ProcessGroup& pg) -> Status {
        DCPP_RETURN_IF_ERROR(pg.Barrier());
        if (pg.rank() == 2) return AbortedError("rank 2 gave up");  // never gathers
        const auto t0 = steady_clock::now();
        Status s = pg.Gather("x", 0).status();
        waited_ms[pg.rank()] =
            std::chrono::duration<double, std::milli>(steady_clock::now() - t0).count();
        // The set is broken now: later calls fail fast instead of pairing
        // with some other round.
        after[pg.rank()] = pg.Barrier();
        return s;
      },
      kTimeout);
  ASSERT_EQ(st.size(), 4u);
  EXPECT_EQ(st[2].code(), StatusCode::kAborted);
  for (int r : {0, 1, 3}) {
    EXPECT_EQ(st[r].code(), StatusCode::kDeadlineExceeded) << st[r].ToString();
    EXPECT_NE(st[r].message().find("Gather timed out after 200 ms"), std::string::npos)
        << st[r].message();
    EXPECT_NE(st[r].message().find("ranks [2] did not arrive"), std::string::npos)
        << st[r].message();
    // The first rank to arrive waits the full timeout; the others may be
    // released by its failure a little earlier, but not much.
    EXPECT_GE(waited_ms[r], 150.0) << "rank " << r;
    EXPECT_LT(waited_ms[r], 200.0 + 2000.0) << "rank " << r;
    EXPECT_EQ(after[r].code(), StatusCode::kAborted) << after[r].ToString();
    EXPECT_NE(after[r].message().find("Gather timed out"), std::string::npos) << after[r].message();
  }
}

TEST(ThreadGroupTest, TimeoutNamesEveryMissingRank) {
  std::vector<Status> st = RunOnThreadRanks(
      5,
      [](ProcessGroup& pg) -> Status {
        if (pg.rank() == 1 || pg.rank() == 3) return Status();
        return pg.AllGather("x").status();
      },
      milliseconds(100));
  EXPECT_TRUE(st[1].ok());
  EXPECT_TRUE(st[3].ok());
  for (int r : {0, 2, 4}) {
    EXPECT_EQ(st[r].code(), StatusCode::kDeadlineExceeded);
    EXPECT_NE(st[r].message().find("AllGather timed out after 100 ms: ranks [1, 3] did not arrive"),
              std::string::npos)
        << st[r].message();
  }
}

TEST(ThreadGroupTest, MismatchedCollectivesFailOnEveryRankAndTheSetRecovers) {
  std::vector<Status> st = RunOnThreadRanks(
      3,
      [](ProcessGroup& pg) -> Status {
        Status s = pg.rank() == 1 ? pg.Broadcast("b", 0).status() : pg.Gather("g", 0).status();
        if (s.code() != StatusCode::kInternal) {
          return InternalError("rank " + std::to_string(pg.rank()) + " expected INTERNAL, got " +
                               s.ToString());
        }
        if (s.message().find("Gather(root 0)") == std::string::npos ||
            s.message().find("rank 1 called Broadcast(root 0)") == std::string::npos) {
          return InternalError("mismatch message does not name both calls: " + s.message());
        }
        // Same collective, different roots, is a mismatch too.
        s = pg.Broadcast("b", pg.rank() == 2 ? 1 : 0).status();
        if (s.code() != StatusCode::kInternal) return InternalError("roots: " + s.ToString());
        // The failed rounds did not break the set.
        DCPP_ASSIGN_OR_RETURN(std::vector<std::string> ag, pg.AllGather(std::to_string(pg.rank())));
        if (ag != std::vector<std::string>{"0", "1", "2"}) return InternalError("bad allgather");
        return Status();
      },
      milliseconds(5000));
  ExpectAllOk(st);
}

TEST(ThreadGroupTest, ScatterWithWrongPartCountIsInvalidArgumentOnEveryRank) {
  std::vector<Status> st = RunOnThreadRanks(
      4,
      [](ProcessGroup& pg) -> Status {
        std::vector<std::string> parts = {"a", "b", "c"};  // 3 parts for 4 ranks
        Status s = pg.Scatter(pg.rank() == 1 ? parts : std::vector<std::string>{}, 1).status();
        if (s.code() != StatusCode::kInvalidArgument ||
            s.message().find("root 1 passed 3 parts for 4 ranks") == std::string::npos) {
          return InternalError("rank " + std::to_string(pg.rank()) + ": got " + s.ToString());
        }
        parts.push_back("d");
        DCPP_ASSIGN_OR_RETURN(std::string mine, pg.Scatter(parts, 1));
        if (mine != parts[pg.rank()]) return InternalError("wrong part after recovery");
        return Status();
      },
      milliseconds(5000));
  ExpectAllOk(st);
}

TEST(ThreadGroupTest, RootOutOfRangeIsInvalidArgumentOnEveryRank) {
  std::vector<Status> st = RunOnThreadRanks(
      2,
      [](ProcessGroup& pg) -> Status {
        for (int root : {-1, 2}) {
          Status s = pg.Gather("x", root).status();
          if (s.code() != StatusCode::kInvalidArgument ||
              s.message().find("out of range for 2 ranks") == std::string::npos) {
            return InternalError("root " + std::to_string(root) + ": got " + s.ToString());
          }
        }
        return pg.Barrier();
      },
      milliseconds(5000));
  ExpectAllOk(st);
}

TEST(ThreadGroupTest, ThrowingRankBecomesInternalErrorAndPeersTimeOut) {
  std::vector<Status> st = RunOnThreadRanks(
      2,
      [](ProcessGroup& pg) -> Status {
        if (pg.rank() == 0) throw std::runtime_error("boom");
        return pg.Barrier();
      },
      milliseconds(100));
  EXPECT_EQ(st[0].code(), StatusCode::kInternal);
  EXPECT_NE(st[0].message().find("boom"), std::string::npos);
  EXPECT_EQ(st[1].code(), StatusCode::kDeadlineExceeded);
}

TEST(ThreadGroupTest, GroupsFromMakeThreadGroupsWorkOnCallerThreads) {
  Result<std::vector<std::unique_ptr<ProcessGroup>>> groups =
      MakeThreadGroups(2, milliseconds(5000));
  ASSERT_TRUE(groups.ok());
  std::optional<Result<std::vector<std::string>>> from_other;
  std::thread other([&] { from_other.emplace((*groups)[1]->AllGather("one")); });
  Result<std::vector<std::string>> from_main = (*groups)[0]->AllGather("zero");
  other.join();
  ASSERT_TRUE(from_main.ok());
  ASSERT_TRUE(from_other.has_value() && from_other->ok());
  EXPECT_EQ(*from_main, (std::vector<std::string>{"zero", "one"}));
  EXPECT_EQ(**from_other, *from_main);
  // Destroying one rank's group while the other still holds its own is safe.
  (*groups)[0].reset();
  EXPECT_EQ((*groups)[1]->size(), 2);
}

TEST(LaunchedByMpiTest, FollowsLauncherEnvironment) {
  // Save and clear whatever the environment running this test has.
  const char* kVars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"};
  std::vector<std::optional<std::string>> saved;
  for (const char* v : kVars) {
    const char* value = std::getenv(v);
    saved.push_back(value ? std::optional<std::string>(value) : std::nullopt);
    unsetenv(v);
  }
  EXPECT_FALSE(LaunchedByMpi());
  for (const char* v : kVars) {
    setenv(v, "", 1);  // set but empty does not count
    EXPECT_FALSE(LaunchedByMpi()) << v;
    setenv(v, "4", 1);
    EXPECT_TRUE(LaunchedByMpi()) << v;
    unsetenv(v);
  }
  for (size_t i = 0; i < saved.size(); ++i) {
    if (saved[i]) setenv(kVars[i], saved[i]->c_str(), 1);
  }
}

}  // namespace
}  // namespace dcpp

namespace dcpp {
namespace {

// A duplicate's collectives are matched only among duplicates: each rank's
// two threads use the two groups at once, in opposite orders of payload, and
// every result must come from its own group.
TEST(ThreadGroupTest, DuplicateIsIndependentAndUsableConcurrently) {
  constexpr int kRanks = 3;
  auto groups = MakeThreadGroups(kRanks, std::chrono::milliseconds(30000));
  ASSERT_TRUE(groups.ok());
  std::vector<std::unique_ptr<ProcessGroup>> dups(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      auto d = (*groups)[r]->Duplicate();
      ASSERT_TRUE(d.ok()) << d.status().ToString();
      dups[r] = std::move(*d);
    });
  }
  for (auto& t : threads) t.join();
  threads.clear();
  std::vector<std::string> errors(2 * kRanks);
  for (int r = 0; r < kRanks; ++r) {
    for (int which = 0; which < 2; ++which) {
      threads.emplace_back([&, r, which] {
        ProcessGroup& g = which == 0 ? *(*groups)[r] : *dups[r];
        EXPECT_EQ(g.rank(), r);
        EXPECT_EQ(g.size(), kRanks);
        for (int i = 0; i < 50; ++i) {
          auto all = g.AllGather((which ? "dup" : "orig") + std::to_string(r) + "/" +
                                 std::to_string(i));
          if (!all.ok()) {
            errors[2 * r + which] = all.status().ToString();
            return;
          }
          for (int q = 0; q < kRanks; ++q) {
            const std::string want =
                (which ? "dup" : "orig") + std::to_string(q) + "/" + std::to_string(i);
            if ((*all)[q] != want) errors[2 * r + which] = "got " + (*all)[q] + " want " + want;
          }
        }
      });
    }
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors) EXPECT_EQ(e, "");
  // The original group outliving its duplicate and vice versa is fine.
  dups.clear();
  auto again = (*groups)[0]->Duplicate();
  EXPECT_TRUE(again.ok());
}

TEST(SingleProcessGroupTest, DuplicateIsASingleGroup) {
  auto g = MakeSingleProcessGroup();
  auto d = g->Duplicate();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ((*d)->size(), 1);
  EXPECT_EQ((*d)->kind(), "single");
}

}  // namespace
}  // namespace dcpp
