// Planning benchmark: the coordinator's work for a large job. Simulates R
// ranks each holding a row shard of T tensors (plus replicated values),
// then times: decoding the gathered local plans, global planning (dedup +
// validation), and encoding .metadata; then the coordinator's steady state
// with a SavePlanCache (fingerprints instead of plans). No I/O.
//
//   plan_bench [--ranks 1024] [--tensors 2000] [--repeat 3] [--threads 0]
//
// --threads: threads for decoding and global planning (0: the library's
// default, one per core up to 8).
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dcpp/engine/plan_cache.h"
#include "dcpp/engine/wire.h"
#include "dcpp/format/metadata_codec.h"
#include "dcpp/plan/save_planner.h"

namespace {

// Wall-clock and process CPU time, in seconds.
struct Clock {
  double wall, cpu;
  static Clock Now() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return {
        std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(),
        static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9};
  }
};

// Keeps the fastest run of a phase (wall time) and its CPU time.
struct Best {
  double wall = 1e9, cpu = 0;
  void Add(const Clock& start) {
    const Clock end = Clock::Now();
    if (end.wall - start.wall < wall) {
      wall = end.wall - start.wall;
      cpu = end.cpu - start.cpu;
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  int ranks = 1024, tensors = 2000, repeat = 3, threads = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--ranks")) ranks = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tensors")) tensors = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--repeat")) repeat = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
  }
  // What each rank sends: a row shard of every tensor (rows = 4 * ranks + 3,
  // so shards are uneven), and two replicated values.
  std::vector<std::string> gathered;
  for (int r = 0; r < ranks; ++r) {
    dcpp::plan::LocalPlan lp;
    const int64_t rows = 4 * ranks + 3, cols = 256;
    const int64_t start = r * 4 + std::min(r, 3), len = 4 + (r < 3);
    for (int t = 0; t < tensors; ++t) {
      const std::string fqn =
          "model.layers." + std::to_string(t / 10) + ".param" + std::to_string(t % 10);
      const dcpp::ObjectPath path = {std::string("model"), std::string("layers"),
                                     std::to_string(t / 10), "param" + std::to_string(t % 10)};
      const dcpp::Shape offsets = {start, 0}, sizes = {len, cols}, global = {rows, cols};
      lp.AddTensor(fqn, path, dcpp::DType::kBFloat16, offsets, sizes, global,
                   static_cast<uint64_t>(len * cols * 2));
    }
    for (const char* v : {"step", "lr"}) lp.AddValue(v, {std::string(v)}, 700);
    gathered.push_back(dcpp::engine::EncodeLocalPlan(dcpp::Status(), lp));
  }
  std::printf("plan_bench: %d ranks x %d tensors = %lld chunks\n", ranks, tensors,
              static_cast<long long>(ranks) * tensors);
  Best decode, plan, encode, cached, copy;
  size_t metadata_bytes = 0;
  // With a plan cache, each rank sends a fingerprint of its encoded plan.
  std::vector<dcpp::engine::PlanFingerprint> cached_fps;
  for (const std::string& g : gathered) cached_fps.push_back(dcpp::engine::FingerprintPlan(g));
  for (int rep = 0; rep < repeat; ++rep) {
    Clock t0 = Clock::Now();
    std::vector<dcpp::Status> statuses;
    std::vector<dcpp::plan::LocalPlan> plans =
        dcpp::engine::DecodeLocalPlans(gathered, &statuses, threads);
    for (const dcpp::Status& s : statuses)
      if (!s.ok()) return std::fprintf(stderr, "%s\n", s.ToString().c_str()), 1;
    decode.Add(t0);
    t0 = Clock::Now();
    auto gp = dcpp::plan::CreateGlobalSavePlan(plans, {.threads = threads});
    if (!gp.ok()) return std::fprintf(stderr, "%s\n", gp.status().ToString().c_str()), 1;
    plan.Add(t0);
    for (auto& e : gp->metadata.entries) {
      for (size_t c = 0; c < e.chunks.size(); ++c)
        e.chunks[c].storage = {"__" + std::to_string(c) + "_0.distcp", c * 4096, 4096, {}};
      if (!e.is_tensor()) e.storage = {"__0_0.distcp", 0, 700, {}};
    }
    t0 = Clock::Now();
    metadata_bytes = dcpp::format::EncodeMetadata(gp->metadata).size();
    encode.Add(t0);

    // The steady state with a SavePlanCache: the coordinator decodes the
    // fingerprint offers, compares them with its cached ones and encodes
    // every rank's assignment from the cached plan (what engine/save.cc
    // does before writing); then, apart from that, copies the metadata it
    // returns while the cache keeps the plan.
    std::vector<std::string> offers;
    for (const auto& fp : cached_fps)
      offers.push_back(dcpp::engine::EncodeFingerprintOffer(fp.a, fp.b));
    t0 = Clock::Now();
    std::vector<dcpp::engine::PlanFingerprint> got(offers.size());
    for (size_t r = 0; r < offers.size(); ++r) {
      auto kind = dcpp::engine::DecodeOffer(&offers[r], &got[r].a, &got[r].b);
      if (!kind.ok() || !*kind) return std::fprintf(stderr, "bad offer\n"), 1;
    }
    if (got != cached_fps) return std::fprintf(stderr, "fingerprints differ\n"), 1;
    size_t assignment_bytes = 0;
    dcpp::engine::Assignment a;
    a.tag = "0123abcd";
    a.plan = dcpp::engine::Assignment::Plan::kReused;
    for (size_t r = 0; r < gp->keep.size(); ++r) {
      a.keep = gp->keep[r];
      assignment_bytes += dcpp::engine::EncodeAssignment(a).size();
    }
    cached.Add(t0);
    t0 = Clock::Now();
    dcpp::Metadata returned = gp->metadata;
    copy.Add(t0);
    if (returned.entries.size() != gp->metadata.entries.size() || assignment_bytes == 0) return 1;
  }
  std::printf("  (best of %d runs; wall s, cpu s)\n", repeat);
  std::printf("  decode gathered plans  %8.3f %8.3f\n", decode.wall, decode.cpu);
  std::printf("  global plan+validate   %8.3f %8.3f\n", plan.wall, plan.cpu);
  std::printf("  encode .metadata       %8.3f %8.3f  (%.1f MiB)\n", encode.wall, encode.cpu,
              metadata_bytes / 1048576.0);
  std::printf("  total                  %8.3f %8.3f\n", decode.wall + plan.wall + encode.wall,
              decode.cpu + plan.cpu + encode.cpu);
  std::printf("  with a plan cache, steady state:\n");
  std::printf("  offers + assignments   %8.3f %8.3f  (replaces decode + plan)\n", cached.wall,
              cached.cpu);
  std::printf("  copy returned metadata %8.3f %8.3f\n", copy.wall, copy.cpu);
  return 0;
}
