// The scale table's C++ side (bench/scale_table.py runs it, one phase per
// fresh process, and prints one JSON line per run).
//
//   scale_bench save FILE --ranks R [--tensors T] [--threads N]
//       R simulated ranks, each holding a row shard of T tensors (the
//       shapes and names bench/metadata_scale.py's torch-made files have).
//       Times the coordinator's save planning (decoding the gathered local
//       plans + CreateGlobalSavePlan: dedup, validation, global plan), then
//       EncodeMetadata of the result with each chunk's storage filled in as
//       a save fills it (one file per rank, items in plan order); writes
//       the .metadata to FILE.
//   scale_bench decode FILE [--compact]
//       DecodeMetadata (or DecodeCompactMetadata) of FILE's bytes.
//   scale_bench load-plan FILE --load-ranks L [--rank K] [--old]
//       What a loading rank does with .metadata: decode, then plan rank K's
//       reads of a row shard of every tensor, split evenly over L ranks.
//       Default: the compact decoder and PlanLoad, after which the compact
//       form and the file's bytes are freed and only the pruned metadata is
//       kept; --old: DecodeMetadata + PlanTensorReads over the whole
//       Metadata (what Load did before), which keeps the whole Metadata.
//
// Memory: each phase resets the peak (/proc/self/clear_refs) after
// malloc_trim, so "added" = VmHWM during the phase minus VmRSS before it.
#include <malloc.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "dcpp/engine/wire.h"
#include "dcpp/format/compact_metadata.h"
#include "dcpp/format/metadata_codec.h"
#include "dcpp/plan/compact_load_planner.h"
#include "dcpp/plan/load_planner.h"
#include "dcpp/plan/save_planner.h"

namespace {

using dcpp::DType;

long long ProcStatus(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key)) * 1024;
  return 0;
}

// A phase's wall and CPU time and the memory it added.
struct Phase {
  double wall0, cpu0;
  long long rss0;
  static double Cpu() {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
  }
  static double Wall() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  Phase() {
    malloc_trim(0);
    std::ofstream("/proc/self/clear_refs") << "5";
    rss0 = ProcStatus("VmRSS:");
    wall0 = Wall();
    cpu0 = Cpu();
  }
  // "name": {"wall_s", "cpu_s", "added"}; `peak`, if given, is raised to
  // the phase's peak RSS.
  std::string Json(const char* name, long long* peak = nullptr) const {
    const double w = Wall() - wall0, c = Cpu() - cpu0;
    const long long hwm = ProcStatus("VmHWM:");
    if (peak) *peak = std::max(*peak, hwm);
    const long long added = hwm - rss0;
    char buf[256];
    std::snprintf(buf, sizeof buf, "\"%s\": {\"wall_s\": %.6f, \"cpu_s\": %.6f, \"added\": %lld}",
                  name, w, c, added);
    return buf;
  }
};

struct Kind {
  const char* name;
  int64_t rows;  // per rank
  std::vector<int64_t> rest;
  DType dtype;
};
// As bench/metadata_scale.py's KINDS.
const std::vector<Kind>& Kinds() {
  static const std::vector<Kind> k = {
      {"attn.q.weight", 16, {4096}, DType::kBFloat16},
      {"attn.k.weight", 4, {4096}, DType::kBFloat16},
      {"attn.v.weight", 4, {4096}, DType::kBFloat16},
      {"attn.o.weight", 16, {4096}, DType::kBFloat16},
      {"mlp.up.weight", 44, {4096}, DType::kBFloat16},
      {"mlp.down.weight", 16, {11264}, DType::kBFloat16},
      {"norm1.weight", 16, {}, DType::kFloat32},
      {"norm2.weight", 16, {}, DType::kFloat32},
  };
  return k;
}

std::string ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", path.c_str());
    std::exit(2);
  }
  std::string s(static_cast<size_t>(f.tellg()), '\0');
  f.seekg(0);
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  return s;
}

int Fail(const dcpp::Status& s) {
  std::fprintf(stderr, "%s\n", s.ToString().c_str());
  return 1;
}

int Save(const std::string& out, int ranks, int tensors, int threads) {
  // What each rank sends the coordinator, as the engine encodes it.
  std::vector<std::string> gathered;
  gathered.reserve(ranks);
  for (int r = 0; r < ranks; ++r) {
    dcpp::plan::LocalPlan lp;
    for (int t = 0; t < tensors; ++t) {
      const Kind& k = Kinds()[t % Kinds().size()];
      const std::string tail = "layers." + std::to_string(t / Kinds().size()) + "." + k.name;
      dcpp::Shape offsets = {r * k.rows}, sizes = {k.rows}, global = {ranks * k.rows};
      for (int64_t d : k.rest) {
        offsets.push_back(0);
        sizes.push_back(d);
        global.push_back(d);
      }
      const uint64_t nbytes = static_cast<uint64_t>(dcpp::NumElements(sizes)) *
                              dcpp::ElementSize(k.dtype);
      lp.AddTensor("model." + tail, {std::string("model"), tail}, k.dtype, offsets, sizes, global,
                   nbytes);
    }
    gathered.push_back(dcpp::engine::EncodeLocalPlan(dcpp::Status(), lp));
  }
  std::string json = "{\"ranks\": " + std::to_string(ranks) +
                     ", \"chunks\": " + std::to_string(static_cast<long long>(ranks) * tensors);
  dcpp::plan::GlobalPlan gp;
  {
    Phase p;
    std::vector<dcpp::Status> statuses;
    std::vector<dcpp::plan::LocalPlan> plans =
        dcpp::engine::DecodeLocalPlans(gathered, &statuses, threads);
    for (const dcpp::Status& s : statuses)
      if (!s.ok()) return Fail(s);
    auto planned = dcpp::plan::CreateGlobalSavePlan(plans, {.threads = threads});
    if (!planned.ok()) return Fail(planned.status());
    gp = std::move(*planned);
    plans.clear();
    plans.shrink_to_fit();
    json += ", " + p.Json("save_plan");
  }
  gathered.clear();
  gathered.shrink_to_fit();
  // Storage as a save records it: rank r writes its kept items in order to
  // __r_0.distcp, each a torch.save archive (~1 KiB of container around
  // the tensor's bytes).
  for (size_t r = 0; r < gp.slots.size(); ++r) {
    uint64_t offset = 0;
    const std::string file = "__" + std::to_string(r) + "_0.distcp";
    for (auto [entry, chunk] : gp.slots[r]) {
      dcpp::EntryMeta& e = gp.metadata.entries[entry];
      dcpp::ChunkMeta& c = e.chunks[chunk];
      const uint64_t length = static_cast<uint64_t>(dcpp::NumElements(c.sizes)) *
                                  dcpp::ElementSize(e.properties.dtype) +
                              1088;
      c.storage = {file, offset, length, {}};
      offset += length;
    }
  }
  gp.slots.clear();
  gp.keep.clear();
  gp.metadata.storage_meta = dcpp::StorageMeta{"/checkpoints/scale", "save-0", std::nullopt, {}};
  gp.metadata.version = dcpp::kDcpVersion;
  std::string bytes;
  {
    Phase p;
    bytes = dcpp::format::EncodeMetadata(gp.metadata);
    json += ", " + p.Json("encode");
  }
  std::ofstream(out, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  json += ", \"bytes\": " + std::to_string(bytes.size()) + "}";
  std::printf("%s\n", json.c_str());
  return 0;
}

int Decode(const std::string& path, bool compact) {
  std::string bytes = ReadAll(path);
  std::string json = "{\"bytes\": " + std::to_string(bytes.size());
  size_t chunks = 0, kept = 0;
  {
    Phase p;
    if (compact) {
      auto md = dcpp::format::DecodeCompactMetadata(bytes);
      if (!md.ok()) return Fail(md.status());
      for (const auto& e : md->entries) chunks += e.num_chunks();
      kept = md->MemoryBytes();
    } else {
      auto md = dcpp::format::DecodeMetadata(bytes);
      if (!md.ok()) return Fail(md.status());
      for (const auto& e : md->entries) chunks += e.chunks.size();
    }
    json += ", " + p.Json("decode");
  }
  json += ", \"chunks\": " + std::to_string(chunks);
  if (compact) json += ", \"compact_bytes\": " + std::to_string(kept);
  std::printf("%s}\n", json.c_str());
  return 0;
}

// Rank `rank` of `load_ranks`: rows [start, end) of every tensor, split as
// torch's DTensor Shard(0) splits them (ceil-sized pieces), all of a 0-d one.
dcpp::plan::Box ShardOf(const dcpp::Shape& size, int load_ranks, int rank) {
  dcpp::plan::Box b{dcpp::Shape(size.size(), 0), size};
  if (size.empty()) return b;
  const int64_t piece = (size[0] + load_ranks - 1) / load_ranks;
  const int64_t start = std::min<int64_t>(size[0], piece * rank);
  b.offsets[0] = start;
  b.sizes[0] = std::min<int64_t>(size[0], start + piece) - start;
  return b;
}

int LoadPlan(const std::string& path, int load_ranks, int rank, bool old) {
  std::string json = "{\"load_ranks\": " + std::to_string(load_ranks) +
                     ", \"rank\": " + std::to_string(rank) + ", \"old\": " +
                     (old ? "true" : "false");
  // The phases below each reset the peak; the whole's is the largest.
  malloc_trim(0);
  const long long rss_start = ProcStatus("VmRSS:");
  long long peak = rss_start;
  const double wall0 = Phase::Wall(), cpu0 = Phase::Cpu();
  std::string bytes = ReadAll(path);
  size_t reads = 0, pieces = 0;
  if (old) {
    Phase p;
    auto md = dcpp::format::DecodeMetadata(bytes);
    if (!md.ok()) return Fail(md.status());
    json += ", " + p.Json("decode", &peak);
    bytes.clear();
    bytes.shrink_to_fit();
    Phase q;
    std::vector<dcpp::plan::TensorRequest> requests;
    for (const auto& e : md->entries)
      if (e.is_tensor()) requests.push_back({&e, ShardOf(e.size, load_ranks, rank)});
    auto plan = dcpp::plan::PlanTensorReads(requests);
    if (!plan.ok()) return Fail(plan.status());
    json += ", " + q.Json("plan", &peak);
    reads = plan->reads.size();
    for (const auto& r : plan->reads) pieces += r.pieces.size();
    malloc_trim(0);
    json += ", \"kept\": " + std::to_string(ProcStatus("VmRSS:") - rss_start);
  } else {
    dcpp::plan::PrunedLoad pruned;
    {
      Phase p;
      auto md = dcpp::format::DecodeCompactMetadata(bytes);
      if (!md.ok()) return Fail(md.status());
      json += ", " + p.Json("decode", &peak);
      bytes.clear();
      bytes.shrink_to_fit();
      Phase q;
      std::vector<dcpp::plan::CompactRequest> requests;
      for (size_t e = 0; e < md->entries.size(); ++e)
        if (md->entries[e].is_tensor())
          requests.push_back({e, ShardOf(md->entries[e].size, load_ranks, rank)});
      auto planned = dcpp::plan::PlanLoad(*md, requests, {});
      if (!planned.ok()) return Fail(planned.status());
      pruned = std::move(*planned);
      json += ", " + q.Json("plan", &peak);
    }  // the compact form is freed here
    reads = pruned.plan.reads.size();
    for (const auto& r : pruned.plan.reads) pieces += r.pieces.size();
    malloc_trim(0);
    json += ", \"kept\": " + std::to_string(ProcStatus("VmRSS:") - rss_start);
  }
  char buf[160];
  std::snprintf(buf, sizeof buf, ", \"total\": {\"wall_s\": %.6f, \"cpu_s\": %.6f, \"added\": %lld}",
                Phase::Wall() - wall0, Phase::Cpu() - cpu0, peak - rss_start);
  json += buf;
  json += ", \"reads\": " + std::to_string(reads) + ", \"pieces\": " + std::to_string(pieces);
  std::printf("%s}\n", json.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: scale_bench save FILE --ranks R [--tensors T] [--threads N]\n"
                 "       scale_bench decode FILE [--compact]\n"
                 "       scale_bench load-plan FILE --load-ranks L [--rank K] [--old]\n");
    return 2;
  }
  const std::string mode = argv[1], file = argv[2];
  int ranks = 64, tensors = 2000, threads = 0, load_ranks = 0, rank = 0;
  bool compact = false, old = false;
  for (int i = 3; i < argc; ++i) {
    auto next = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : 0; };
    if (!std::strcmp(argv[i], "--ranks")) ranks = next();
    else if (!std::strcmp(argv[i], "--tensors")) tensors = next();
    else if (!std::strcmp(argv[i], "--threads")) threads = next();
    else if (!std::strcmp(argv[i], "--load-ranks")) load_ranks = next();
    else if (!std::strcmp(argv[i], "--rank")) rank = next();
    else if (!std::strcmp(argv[i], "--compact")) compact = true;
    else if (!std::strcmp(argv[i], "--old")) old = true;
  }
  if (mode == "save") return Save(file, ranks, tensors, threads);
  if (mode == "decode") return Decode(file, compact);
  if (mode == "load-plan") return LoadPlan(file, std::max(1, load_ranks), rank, old);
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}
