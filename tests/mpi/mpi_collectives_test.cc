// Exercises every collective of the MPI ProcessGroup; run under mpirun with
// 4 ranks (any number >= 1 works). Each rank checks what it receives against
// what every rank must have sent; rank 0 prints "OK" when all ranks passed.
// Exits non-zero on any failure. Not a gtest binary: gtest's runner does not
// know about ranks, and a failure on one rank must not leave others hanging.
//
// Groups are made with small data rounds (MpiGroupOptions::max_round_bytes)
// as well as the default, so payloads of a few MiB cross many rounds. Pass
// --big to also move payloads over 2 GiB (needs about 12 GiB of memory for 4
// ranks; not run by ctest).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "dcpp/collective/mpi_group.h"
#include "dcpp/process_group.h"

namespace {

using dcpp::ProcessGroup;
using dcpp::Result;
using dcpp::Status;
using dcpp::StatusCode;

int failures = 0;

void Fail(const ProcessGroup& pg, const std::string& what) {
  ++failures;
  std::fprintf(stderr, "rank %d: FAIL: %s\n", pg.rank(), what.c_str());
}

#define CHECK_TRUE(pg, cond, what)                                                         \
  do {                                                                                     \
    if (!(cond))                                                                           \
      Fail(pg, std::string(what) + " (" #cond ", line " + std::to_string(__LINE__) + ")"); \
  } while (0)

// Distinct, position-dependent bytes per (rank, tag).
std::string Payload(int rank, int tag, size_t size) {
  std::string s(size, '\0');
  uint32_t x = static_cast<uint32_t>(rank) * 2654435761u ^ static_cast<uint32_t>(tag) * 40503u;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

// Payload(rank, tag, s.size()) == s, without building a second copy.
bool Matches(const std::string& s, int rank, int tag, size_t size) {
  if (s.size() != size) return false;
  uint32_t x = static_cast<uint32_t>(rank) * 2654435761u ^ static_cast<uint32_t>(tag) * 40503u;
  for (size_t i = 0; i < size; ++i) {
    x = x * 1664525u + 1013904223u;
    if (s[i] != static_cast<char>(x >> 24)) return false;
  }
  return true;
}

// 0 .. several MiB, varying with rank and tag.
size_t SizeFor(int rank, int tag) {
  static constexpr size_t kSizes[] = {0, 1, 100, 4096, 65537, (1u << 20) + 13, 0, (3u << 20) + 7};
  return kSizes[(rank * 3 + tag) % 8];
}

std::string Label(const char* collective, int root, int tag) {
  return std::string(collective) + " root " + std::to_string(root) + " tag " + std::to_string(tag);
}

void EveryCollectiveEveryRoot(ProcessGroup& pg, int tag_base) {
  const int n = pg.size();
  const int me = pg.rank();
  CHECK_TRUE(pg, pg.Barrier().ok(), "Barrier");
  for (int root = 0; root < n; ++root) {
    const int tag = tag_base + root;
    Result<std::vector<std::string>> g = pg.Gather(Payload(me, tag, SizeFor(me, tag)), root);
    CHECK_TRUE(pg, g.ok(), Label("Gather", root, tag) + ": " + g.status().ToString());
    if (g.ok() && me == root) {
      CHECK_TRUE(pg, g->size() == static_cast<size_t>(n), Label("Gather", root, tag));
      for (int r = 0; r < n && r < static_cast<int>(g->size()); ++r) {
        CHECK_TRUE(pg, (*g)[r] == Payload(r, tag, SizeFor(r, tag)),
                   Label("Gather", root, tag) + " from rank " + std::to_string(r));
      }
    } else if (g.ok()) {
      CHECK_TRUE(pg, g->empty(), Label("Gather", root, tag) + " non-root result");
    }

    std::string mine = me == root ? Payload(root, tag, SizeFor(root, tag + 1)) : "ignored";
    Result<std::string> b = pg.Broadcast(std::move(mine), root);
    CHECK_TRUE(pg, b.ok() && *b == Payload(root, tag, SizeFor(root, tag + 1)),
               Label("Broadcast", root, tag) + ": " + b.status().ToString());

    std::vector<std::string> parts;
    if (me == root) {
      for (int r = 0; r < n; ++r) parts.push_back(Payload(r + 100, tag, SizeFor(r, tag + 2)));
    } else {
      parts.push_back("ignored");
    }
    Result<std::string> s = pg.Scatter(std::move(parts), root);
    CHECK_TRUE(pg, s.ok() && *s == Payload(me + 100, tag, SizeFor(me, tag + 2)),
               Label("Scatter", root, tag) + ": " + s.status().ToString());

    Result<std::vector<std::string>> ag = pg.AllGather(Payload(me, tag + 7, SizeFor(me, tag + 3)));
    CHECK_TRUE(pg, ag.ok() && ag->size() == static_cast<size_t>(n),
               Label("AllGather", -1, tag) + ": " + ag.status().ToString());
    if (ag.ok()) {
      for (int r = 0; r < n && r < static_cast<int>(ag->size()); ++r) {
        CHECK_TRUE(pg, (*ag)[r] == Payload(r, tag + 7, SizeFor(r, tag + 3)),
                   Label("AllGather", -1, tag) + " from rank " + std::to_string(r));
      }
    }
  }
  // Everyone empty.
  Result<std::vector<std::string>> ag = pg.AllGather("");
  CHECK_TRUE(pg, ag.ok() && *ag == std::vector<std::string>(n), "AllGather of empty strings");
  Result<std::string> b = pg.Broadcast("", n - 1);
  CHECK_TRUE(pg, b.ok() && b->empty(), "Broadcast of an empty string");
}

// Same pseudo-random sequence on every rank, no barriers in between.
void BackToBackRounds(ProcessGroup& pg, int rounds) {
  const int n = pg.size();
  const int me = pg.rank();
  std::mt19937 rng(777);
  for (int round = 0; round < rounds; ++round) {
    const int kind = static_cast<int>(rng() % 5);
    const int root = static_cast<int>(rng() % n);
    const size_t size = rng() % 5000;
    const std::string label = "round " + std::to_string(round);
    switch (kind) {
      case 0:
        CHECK_TRUE(pg, pg.Barrier().ok(), label + " Barrier");
        break;
      case 1: {
        Result<std::vector<std::string>> g = pg.Gather(Payload(me, round, size + me), root);
        bool good = g.ok() && g->size() == (me == root ? static_cast<size_t>(n) : 0u);
        for (int r = 0; good && me == root && r < n; ++r) {
          good = (*g)[r] == Payload(r, round, size + r);
        }
        CHECK_TRUE(pg, good, label + " Gather: " + g.status().ToString());
        break;
      }
      case 2: {
        Result<std::string> b = pg.Broadcast(Payload(me, round, size), root);
        CHECK_TRUE(pg, b.ok() && *b == Payload(root, round, size), label + " Broadcast");
        break;
      }
      case 3: {
        Result<std::vector<std::string>> ag = pg.AllGather(Payload(me, round, size + me));
        bool good = ag.ok() && ag->size() == static_cast<size_t>(n);
        for (int r = 0; good && r < n; ++r) good = (*ag)[r] == Payload(r, round, size + r);
        CHECK_TRUE(pg, good, label + " AllGather: " + ag.status().ToString());
        break;
      }
      case 4: {
        std::vector<std::string> parts;
        for (int r = 0; r < n; ++r) parts.push_back(Payload(r + 50 * root, round, size + r));
        Result<std::string> s = pg.Scatter(std::move(parts), root);
        CHECK_TRUE(pg, s.ok() && *s == Payload(me + 50 * root, round, size + me),
                   label + " Scatter: " + s.status().ToString());
        break;
      }
    }
  }
}

// Errors that every rank detects alike and that leave the group usable.
void AgreedErrors(ProcessGroup& pg) {
  const int n = pg.size();
  const int me = pg.rank();
  if (n >= 2) {
    Status s = me == 1 ? pg.Broadcast("x", 0).status() : pg.Gather("x", 0).status();
    CHECK_TRUE(pg,
               s.code() == StatusCode::kInternal &&
                   s.message().find("rank 0 called Gather(root 0) but rank 1 called "
                                    "Broadcast(root 0)") != std::string::npos,
               "mismatch: " + s.ToString());
  }
  std::vector<std::string> short_parts(n + 1, "p");
  Status s = pg.Scatter(me == 0 ? short_parts : std::vector<std::string>{}, 0).status();
  CHECK_TRUE(pg,
             s.code() == StatusCode::kInvalidArgument &&
                 s.message().find("root 0 passed " + std::to_string(n + 1) + " parts") !=
                     std::string::npos,
             "scatter part count: " + s.ToString());
  s = pg.Broadcast("x", n).status();
  CHECK_TRUE(pg, s.code() == StatusCode::kInvalidArgument, "root out of range: " + s.ToString());
  Result<std::vector<std::string>> ag = pg.AllGather(std::to_string(me));
  bool good = ag.ok() && ag->size() == static_cast<size_t>(n);
  for (int r = 0; good && r < n; ++r) good = (*ag)[r] == std::to_string(r);
  CHECK_TRUE(pg, good, "AllGather after agreed errors: " + ag.status().ToString());
}

// Payloads over 2 GiB: more than one MPI call per collective at the default
// round size, and more than an int count.
void Big(ProcessGroup& pg) {
  const int n = pg.size();
  const int me = pg.rank();
  const size_t big = (size_t{2} << 30) + 12345;
  {
    Result<std::string> b = pg.Broadcast(me == 0 ? Payload(0, 9, big) : "", 0);
    CHECK_TRUE(pg, b.ok() && Matches(*b, 0, 9, big), "big Broadcast: " + b.status().ToString());
  }
  {
    Result<std::vector<std::string>> g = pg.Gather(me == n - 1 ? Payload(me, 10, big) : "x", 0);
    CHECK_TRUE(pg, g.ok(), "big Gather: " + g.status().ToString());
    if (g.ok() && me == 0) {
      CHECK_TRUE(pg, Matches((*g)[n - 1], n - 1, 10, big), "big Gather contents");
      for (int r = 0; r < n - 1; ++r) CHECK_TRUE(pg, (*g)[r] == "x", "big Gather small parts");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool big = false;
  for (int i = 1; i < argc; ++i) big = big || std::strcmp(argv[i], "--big") == 0;
  const auto t0 = std::chrono::steady_clock::now();

  Result<std::unique_ptr<ProcessGroup>> made = dcpp::MakeMpiProcessGroup(std::chrono::seconds(120));
  if (!made.ok()) {
    std::fprintf(stderr, "MakeMpiProcessGroup: %s\n", made.status().ToString().c_str());
    return 2;
  }
  ProcessGroup& pg = **made;
  if (pg.kind() != "mpi" || !dcpp::HasMpi()) Fail(pg, "kind/HasMpi");

  EveryCollectiveEveryRoot(pg, 0);
  BackToBackRounds(pg, 200);
  AgreedErrors(pg);

  // Small data rounds: a few-MiB payload crosses hundreds of MPI calls, and
  // per-rank chunks that do not divide the round size evenly.
  for (uint64_t round_bytes : {uint64_t{1}, uint64_t{4093}, uint64_t{1} << 20}) {
    dcpp::collective::MpiGroupOptions options;
    options.timeout = std::chrono::seconds(120);
    options.max_round_bytes = round_bytes;
    Result<std::unique_ptr<ProcessGroup>> small =
        dcpp::collective::MakeMpiGroupWithOptions(options);
    if (!small.ok()) {
      Fail(pg, "MakeMpiGroupWithOptions: " + small.status().ToString());
      continue;
    }
    if (round_bytes == 1) {
      // One byte per call: keep payloads tiny.
      BackToBackRounds(**small, 20);
    } else {
      EveryCollectiveEveryRoot(**small, 100 + static_cast<int>(round_bytes % 97));
      BackToBackRounds(**small, 50);
    }
  }
  if (big) Big(pg);

  // Agree on the outcome so rank 0 can speak for all.
  Result<std::vector<std::string>> verdicts = pg.AllGather(std::to_string(failures));
  int total = failures;
  if (!verdicts.ok()) {
    std::fprintf(stderr, "rank %d: final AllGather: %s\n", pg.rank(),
                 verdicts.status().ToString().c_str());
    total += 1;
  } else {
    total = 0;
    for (const std::string& v : *verdicts) total += std::stoi(v);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (pg.rank() == 0) {
    if (total == 0) {
      std::printf("OK: %d ranks, all collectives passed in %.2f s\n", pg.size(), secs);
    } else {
      std::printf("FAILED: %d failed checks across ranks\n", total);
    }
  }
  return total == 0 ? 0 : 1;
}
