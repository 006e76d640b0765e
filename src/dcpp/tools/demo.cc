#include "dcpp/tools/demo.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/tools/demo_state.h"

namespace dcpp::tools {
namespace {

using namespace demo;  // the shared synthetic state (demo_state.h)

// The step the demo's state is at: what "step" holds, and what the tensor
// contents are generated for.
constexpr int64_t kDemoStep = 1000;

// One rank's save: row shards of every tensor, generated in place.
Status SaveRank(ProcessGroup& pg, const DemoOptions& o, const std::vector<Spec>& specs,
                const std::string& dir, Metadata* md_out) {
  DCPP_ASSIGN_OR_RETURN(Value state,
                        MakeRowShardState(specs, pg.size(), pg.rank(), kDemoStep, nullptr));
  SaveOptions so;
  so.process_group = &pg;
  so.files_per_rank = o.thread_count;
  so.sync_files = o.sync_files;
  if (pg.rank() == 0) so.progress = o.progress;
  DCPP_ASSIGN_OR_RETURN(Metadata md, Save(state, dir, so));
  if (pg.rank() == 0) *md_out = std::move(md);
  return Status();
}

// One rank's load: column shards (vectors: row shards), then a byte check.
Status LoadRank(ProcessGroup& pg, const DemoOptions& o, const std::vector<Spec>& specs,
                const std::string& dir, std::atomic<uint64_t>* verified_bytes,
                std::atomic<size_t>* verified_pieces) {
  return LoadAndVerify(pg, specs, dir, o.thread_count, o.progress, kDemoStep, verified_bytes,
                       verified_pieces);
}

}  // namespace

static Result<DemoReport> RunDemoImpl(const DemoOptions& o) {
  if (o.save_ranks < 1 || o.load_ranks < 1 || o.thread_count < 1)
    return InvalidArgumentError("demo: rank and thread counts must be >= 1");
  DemoReport r;
  const bool is_root = !o.group || o.group->rank() == 0;
  r.dir = o.dir;
  if (r.dir.empty() && is_root) {
    DCPP_ASSIGN_OR_RETURN(r.dir, MakeDemoDir());
  }
  if (o.group) {
    DCPP_ASSIGN_OR_RETURN(r.dir, o.group->Broadcast(r.dir, 0));
  }
  const auto specs = TransformerSpecs(o.size_mib);
  for (const Spec& s : specs) r.state_bytes += NumElements(s.shape) * ElementSize(s.dtype);
  r.tensors = specs.size();
  r.values = 4;

  Metadata md;
  std::atomic<uint64_t> verified_bytes{0};
  std::atomic<size_t> verified_pieces{0};
  auto t0 = std::chrono::steady_clock::now();
  if (o.group) {
    r.ranks_kind = std::string(o.group->kind());
    r.save_ranks = r.load_ranks = o.group->size();
    DCPP_RETURN_IF_ERROR(o.group->Barrier());
    t0 = std::chrono::steady_clock::now();
    DCPP_RETURN_IF_ERROR(SaveRank(*o.group, o, specs, r.dir, &md));
    r.save_seconds = Seconds(t0);
    t0 = std::chrono::steady_clock::now();
    DCPP_RETURN_IF_ERROR(LoadRank(*o.group, o, specs, r.dir, &verified_bytes, &verified_pieces));
    // Totals from every rank for the report.
    DCPP_RETURN_IF_ERROR(SumVerifiedCounts(*o.group, &verified_bytes, &verified_pieces));
    r.load_seconds = Seconds(t0);
  } else {
    r.ranks_kind = "threads";
    r.save_ranks = o.save_ranks;
    r.load_ranks = o.load_ranks;
    DCPP_RETURN_IF_ERROR(FirstError(RunOnThreadRanks(
        o.save_ranks, [&](ProcessGroup& pg) { return SaveRank(pg, o, specs, r.dir, &md); })));
    r.save_seconds = Seconds(t0);
    t0 = std::chrono::steady_clock::now();
    DCPP_RETURN_IF_ERROR(FirstError(RunOnThreadRanks(o.load_ranks, [&](ProcessGroup& pg) {
      return LoadRank(pg, o, specs, r.dir, &verified_bytes, &verified_pieces);
    })));
    r.load_seconds = Seconds(t0);
  }
  r.verified_bytes = verified_bytes;
  r.verified_pieces = verified_pieces;
  if (is_root) {
    if (r.verified_bytes != r.state_bytes)
      return DataLossError("demo: verified " + std::to_string(r.verified_bytes) + " of " +
                           std::to_string(r.state_bytes) + " bytes: pieces were lost");
    std::vector<std::string> files;
    for (const auto& e : md.entries) {
      auto add = [&](const StorageInfo& s) {
        r.stored_bytes += s.length;
        if (std::find(files.begin(), files.end(), s.relative_path) == files.end())
          files.push_back(s.relative_path);
      };
      if (e.is_tensor()) {
        for (const auto& c : e.chunks) add(c.storage);
      } else {
        add(e.storage);
      }
    }
    r.files = files.size();
  }
  if (o.group) DCPP_RETURN_IF_ERROR(o.group->Barrier());
  if (!o.keep && is_root) std::filesystem::remove_all(r.dir);
  return r;
}

std::string FormatDemoReport(const DemoOptions& o, const DemoReport& r) {
  char buf[512];
  std::string out;
  auto line = [&](const char* fmt, auto... args) {
    std::snprintf(buf, sizeof buf, fmt, args...);
    out += buf;
  };
  line("dcpp demo: a training state saved by %d ranks (row shards), loaded by %d ranks (column "
       "shards), ranks are %s\n",
       r.save_ranks, r.load_ranks, r.ranks_kind.c_str());
  line("  state    %zu tensors (bf16 weights, fp32 Adam moments) + %zu plain values, %s\n",
       r.tensors, r.values, Human(static_cast<double>(r.state_bytes)).c_str());
  line("  save     %7.3f s  %10s/s   %zu data files, %s stored, fsync %s, %d I/O threads/rank\n",
       r.save_seconds, Human(r.state_bytes / r.save_seconds).c_str(), r.files,
       Human(static_cast<double>(r.stored_bytes)).c_str(), o.sync_files ? "on" : "off",
       o.thread_count);
  line("  load     %7.3f s  %10s/s   resharded %d -> %d ranks: every piece overlaps several saved "
       "chunks\n",
       r.load_seconds, Human(r.state_bytes / r.load_seconds).c_str(), r.save_ranks, r.load_ranks);
  line("  verify   %zu pieces, %s: every byte equal to what was saved\n", r.verified_pieces,
       Human(static_cast<double>(r.verified_bytes)).c_str());
  out += "  checkpoint " + r.dir + (o.keep ? " (kept: try `dcpp inspect` on it)\n" : " (removed; --keep keeps it)\n");
  return out;
}

Result<DemoReport> RunDemo(const DemoOptions& o) {
  return CatchExceptions("demo", [&] { return RunDemoImpl(o); });
}

}  // namespace dcpp::tools
