// Planning benchmark: the coordinator's work for a large job. Simulates R
// ranks each holding a row shard of T tensors (plus replicated values),
// then times: decoding the gathered local plans, global planning (dedup +
// validation), and encoding .metadata. No I/O.
//
//   plan_bench [--ranks 1024] [--tensors 2000] [--repeat 3]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "dcpp/engine/wire.h"
#include "dcpp/format/metadata_codec.h"
#include "dcpp/plan/save_planner.h"

namespace {

double Since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

int main(int argc, char** argv) {
  int ranks = 1024, tensors = 2000, repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--ranks")) ranks = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--tensors")) tensors = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--repeat")) repeat = std::atoi(argv[i + 1]);
  }
  // What each rank sends: a row shard of every tensor (rows = 4 * ranks + 3,
  // so shards are uneven), and two replicated values.
  std::vector<std::string> gathered;
  for (int r = 0; r < ranks; ++r) {
    dcpp::plan::LocalPlan lp;
    const int64_t rows = 4 * ranks + 3, cols = 256;
    const int64_t start = r * 4 + std::min(r, 3), len = 4 + (r < 3);
    for (int t = 0; t < tensors; ++t) {
      dcpp::plan::PlannedItem it;
      it.fqn = "model.layers." + std::to_string(t / 10) + ".param" + std::to_string(t % 10);
      it.path = {std::string("model"), std::string("layers"), std::to_string(t / 10),
                 "param" + std::to_string(t % 10)};
      it.is_tensor = true;
      it.dtype = dcpp::DType::kBFloat16;
      it.offsets = {start, 0};
      it.sizes = {len, cols};
      it.global_shape = {rows, cols};
      it.nbytes = static_cast<uint64_t>(len * cols * 2);
      lp.items.push_back(std::move(it));
    }
    for (const char* v : {"step", "lr"}) {
      dcpp::plan::PlannedItem it;
      it.fqn = v;
      it.path = {std::string(v)};
      it.nbytes = 700;
      lp.items.push_back(std::move(it));
    }
    gathered.push_back(dcpp::engine::EncodeLocalPlan(dcpp::Status(), lp));
  }
  std::printf("plan_bench: %d ranks x %d tensors = %lld chunks\n", ranks, tensors,
              static_cast<long long>(ranks) * tensors);
  double best_decode = 1e9, best_plan = 1e9, best_encode = 1e9;
  size_t metadata_bytes = 0;
  for (int rep = 0; rep < repeat; ++rep) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<dcpp::plan::LocalPlan> plans(ranks);
    for (int r = 0; r < ranks; ++r) {
      dcpp::Status s;
      auto lp = dcpp::engine::DecodeLocalPlan(gathered[r], &s);
      if (!lp.ok()) return std::fprintf(stderr, "%s\n", lp.status().ToString().c_str()), 1;
      plans[r] = std::move(*lp);
    }
    best_decode = std::min(best_decode, Since(t0));
    t0 = std::chrono::steady_clock::now();
    auto gp = dcpp::plan::CreateGlobalSavePlan(plans);
    if (!gp.ok()) return std::fprintf(stderr, "%s\n", gp.status().ToString().c_str()), 1;
    best_plan = std::min(best_plan, Since(t0));
    for (auto& e : gp->metadata.entries) {
      for (size_t c = 0; c < e.chunks.size(); ++c)
        e.chunks[c].storage = {"__" + std::to_string(c) + "_0.distcp", c * 4096, 4096, {}};
      if (!e.is_tensor()) e.storage = {"__0_0.distcp", 0, 700, {}};
    }
    t0 = std::chrono::steady_clock::now();
    metadata_bytes = dcpp::format::EncodeMetadata(gp->metadata).size();
    best_encode = std::min(best_encode, Since(t0));
  }
  std::printf("  decode gathered plans  %8.3f s\n", best_decode);
  std::printf("  global plan+validate   %8.3f s\n", best_plan);
  std::printf("  encode .metadata       %8.3f s  (%.1f MiB)\n", best_encode,
              metadata_bytes / 1048576.0);
  std::printf("  total (best of %d)     %8.3f s\n", repeat, best_decode + best_plan + best_encode);
  return 0;
}
