// A peer that dies must produce an error, not a hang. Run under mpirun with
// 4 ranks. After a barrier, rank 1 exits abruptly (_exit, no MPI_Finalize)
// before a Gather; every other rank must get DeadlineExceeded within the
// 3 s timeout (plus scheduling slack) and then Aborted from the now unusable
// group. Each surviving rank prints what it got; the program exits 0 only if
// all checks passed on that rank.
//
// mpirun must be told that a rank leaving without MPI_Finalize is expected
// (Open MPI 4: --mca orte_allowed_exit_without_sync 1), or it kills the job
// before the survivors time out.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "dcpp/process_group.h"

int main() {
  using Clock = std::chrono::steady_clock;
  constexpr std::chrono::milliseconds kTimeout(3000);
  // Generous for oversubscribed CI machines, still far below "hang".
  constexpr double kSlackSeconds = 5.0;

  dcpp::Result<std::unique_ptr<dcpp::ProcessGroup>> made = dcpp::MakeMpiProcessGroup(kTimeout);
  if (!made.ok()) {
    std::fprintf(stderr, "MakeMpiProcessGroup: %s\n", made.status().ToString().c_str());
    return 2;
  }
  dcpp::ProcessGroup& pg = **made;
  if (pg.size() < 2) {
    std::fprintf(stderr, "needs at least 2 ranks, got %d\n", pg.size());
    return 2;
  }
  if (dcpp::Status s = pg.Barrier(); !s.ok()) {
    std::fprintf(stderr, "rank %d: first Barrier: %s\n", pg.rank(), s.ToString().c_str());
    return 1;
  }
  if (pg.rank() == 1) {
    std::fflush(stdout);
    _exit(0);  // no MPI_Finalize, no atexit handlers: as if the process was killed
  }

  const auto t0 = Clock::now();
  dcpp::Result<std::vector<std::string>> gathered = pg.Gather("payload", 0);
  const double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  const dcpp::Status after = pg.Barrier();
  const double waited_after = std::chrono::duration<double>(Clock::now() - t0).count() - waited;

  std::printf("rank %d: Gather returned after %.3f s: %s\n", pg.rank(), waited,
              gathered.status().ToString().c_str());
  std::printf("rank %d: next Barrier returned after %.3f s: %s\n", pg.rank(), waited_after,
              after.ToString().c_str());
  std::fflush(stdout);

  bool good = true;
  if (gathered.status().code() != dcpp::StatusCode::kDeadlineExceeded ||
      gathered.status().message().find("Gather timed out after 3000 ms") == std::string::npos) {
    std::fprintf(stderr, "rank %d: expected DEADLINE_EXCEEDED from Gather\n", pg.rank());
    good = false;
  }
  // At least (almost) the timeout: the error must come from the deadline,
  // not from something else failing early.
  if (waited < 0.9 * kTimeout.count() / 1000.0 ||
      waited > kTimeout.count() / 1000.0 + kSlackSeconds) {
    std::fprintf(stderr, "rank %d: Gather took %.3f s, expected about %.1f s\n", pg.rank(), waited,
                 kTimeout.count() / 1000.0);
    good = false;
  }
  if (after.code() != dcpp::StatusCode::kAborted || waited_after > 1.0) {
    std::fprintf(stderr, "rank %d: expected a fast ABORTED from the broken group\n", pg.rank());
    good = false;
  }
  if (good) std::printf("rank %d: OK\n", pg.rank());
  std::fflush(stdout);
  return good ? 0 : 1;
}
