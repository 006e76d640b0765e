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
#include "dcpp/plan/reshard.h"

namespace dcpp::tools {
namespace {

struct Spec {
  std::string fqn;
  DType dtype;
  Shape shape;
};

// The tensors of a small decoder-only transformer plus Adam moments.
std::vector<Spec> TransformerSpecs(uint64_t size_mib) {
  // 12 h^2 parameters per layer, 10 bytes each (bf16 weight + 2 fp32
  // moments); embedding and head 2 * vocab * h. The widest model whose
  // embeddings and one layer fit the target is used.
  const uint64_t target = size_mib << 20;
  int64_t h = 1024;
  while (h > 128 && static_cast<uint64_t>(12 * h * h * 10 + 2 * 8 * h * h * 10) > target) h /= 2;
  const int64_t vocab = 8 * h;
  const uint64_t per_layer = 12 * h * h * 10, embed = 2 * vocab * h * 10;
  const int64_t layers =
      std::max<int64_t>(1, static_cast<int64_t>((target > embed ? target - embed : 0) / per_layer));
  std::vector<Spec> params = {{"embed.weight", DType::kBFloat16, {vocab, h}}};
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "layers." + std::to_string(l) + ".";
    params.push_back({p + "attn_norm.weight", DType::kBFloat16, {h}});
    params.push_back({p + "attn.qkv.weight", DType::kBFloat16, {3 * h, h}});
    params.push_back({p + "attn.out.weight", DType::kBFloat16, {h, h}});
    params.push_back({p + "mlp_norm.weight", DType::kBFloat16, {h}});
    params.push_back({p + "mlp.up.weight", DType::kBFloat16, {4 * h, h}});
    params.push_back({p + "mlp.down.weight", DType::kBFloat16, {h, 4 * h}});
  }
  params.push_back({"final_norm.weight", DType::kBFloat16, {h}});
  params.push_back({"lm_head.weight", DType::kBFloat16, {vocab, h}});
  std::vector<Spec> all;
  for (const auto& p : params) all.push_back({"model." + p.fqn, p.dtype, p.shape});
  for (const auto& p : params) {
    all.push_back({"optim.state." + p.fqn + ".exp_avg", DType::kFloat32, p.shape});
    all.push_back({"optim.state." + p.fqn + ".exp_avg_sq", DType::kFloat32, p.shape});
  }
  return all;
}

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The bytes [offset, offset + n) of tensor `seed`'s row-major contents: a
// pure function of the position, so any rank can produce or check any piece.
void Generate(uint64_t seed, uint64_t offset, uint8_t* out, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint64_t pos = offset + i;
    const uint64_t word = Mix(seed * 0x100000001B3ull ^ (pos / 8));
    const size_t in_word = pos % 8, take = std::min<size_t>(8 - in_word, n - i);
    std::memcpy(out + i, reinterpret_cast<const uint8_t*>(&word) + in_word, take);
    i += take;
  }
}

// [start, len) of part k of n of `total`, the first total % n parts longer.
std::pair<int64_t, int64_t> Part(int64_t total, int n, int k) {
  int64_t start = 0;
  for (int i = 0; i < k; ++i) start += total / n + (i < total % n);
  return {start, total / n + (k < total % n)};
}

plan::Box PieceBox(const Shape& shape, size_t dim, int n, int k) {
  plan::Box b{Shape(shape.size(), 0), shape};
  auto [start, len] = Part(shape[dim], n, k);
  b.offsets[dim] = start;
  b.sizes[dim] = len;
  return b;
}

// Calls fn(global_byte_offset, piece_byte_offset, bytes) for each row run of
// `box` (a 1-D or 2-D box of a row-major tensor).
template <typename Fn>
void ForEachRow(const Shape& shape, const plan::Box& box, size_t elem, Fn&& fn) {
  if (shape.size() == 1) {
    fn(box.offsets[0] * elem, 0, box.sizes[0] * elem);
    return;
  }
  for (int64_t r = 0; r < box.sizes[0]; ++r)
    fn(((box.offsets[0] + r) * shape[1] + box.offsets[1]) * elem, r * box.sizes[1] * elem,
       box.sizes[1] * elem);
}

Value& At(Value& root, const std::string& fqn) {
  Value* slot = &root;
  size_t start = 0;
  for (size_t dot; (dot = fqn.find('.', start)) != std::string::npos; start = dot + 1)
    slot = &(*slot)[fqn.substr(start, dot - start)];
  return (*slot)[fqn.substr(start)];
}

void AddPlainValues(Value& state) {
  state["optim"]["param_groups"] = Value::List({Value()});
  Value& group = state["optim"]["param_groups"].items()[0];
  group["lr"] = 3e-4;
  group["betas"] = Value::Tuple({0.9, 0.95});
  group["weight_decay"] = 0.1;
  state["step"] = 1000;
}

// One rank's save: row shards of every tensor, generated in place.
Status SaveRank(ProcessGroup& pg, const DemoOptions& o, const std::vector<Spec>& specs,
                const std::string& dir, Metadata* md_out) {
  Value state;
  for (size_t i = 0; i < specs.size(); ++i) {
    const Spec& s = specs[i];
    const plan::Box box = PieceBox(s.shape, 0, pg.size(), pg.rank());
    DCPP_ASSIGN_OR_RETURN(Tensor piece, Tensor::Zeros(s.dtype, box.sizes));
    auto* p = static_cast<uint8_t*>(piece.data());
    ForEachRow(s.shape, box, ElementSize(s.dtype),
               [&](uint64_t global, uint64_t local, uint64_t n) { Generate(i, global, p + local, n); });
    ShardedTensor st;
    st.global_shape = s.shape;
    st.shards.push_back({box.offsets, std::move(piece)});
    At(state, s.fqn) = std::move(st);
  }
  AddPlainValues(state);
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
  Value state;
  std::vector<plan::Box> boxes;
  for (const Spec& s : specs) {
    const size_t dim = s.shape.size() > 1 ? 1 : 0;
    boxes.push_back(PieceBox(s.shape, dim, pg.size(), pg.rank()));
    DCPP_ASSIGN_OR_RETURN(Tensor piece, Tensor::Zeros(s.dtype, boxes.back().sizes));
    ShardedTensor st;
    st.global_shape = s.shape;
    st.shards.push_back({boxes.back().offsets, std::move(piece)});
    At(state, s.fqn) = std::move(st);
  }
  AddPlainValues(state);  // placeholders: loading replaces them
  state["step"] = Value();
  LoadOptions lo;
  lo.process_group = &pg;
  lo.io_threads = o.thread_count;
  if (pg.rank() == 0) lo.progress = o.progress;
  DCPP_RETURN_IF_ERROR(Load(state, dir, lo));
  std::vector<uint8_t> expected;
  for (size_t i = 0; i < specs.size(); ++i) {
    const Tensor& piece = At(state, specs[i].fqn).sharded().shards[0].local;
    const auto* got = static_cast<const uint8_t*>(piece.data());
    bool equal = true;
    ForEachRow(specs[i].shape, boxes[i], ElementSize(specs[i].dtype),
               [&](uint64_t global, uint64_t local, uint64_t n) {
                 expected.resize(n);
                 Generate(i, global, expected.data(), n);
                 if (std::memcmp(expected.data(), got + local, n) != 0) equal = false;
               });
    if (!equal)
      return DataLossError("demo: rank " + std::to_string(pg.rank()) + " loaded '" +
                           specs[i].fqn + "' piece at " + ShapeToString(boxes[i].offsets) +
                           " with bytes that differ from what was saved");
    *verified_bytes += piece.nbytes();
    ++*verified_pieces;
  }
  const Value* step = state.Find("step");
  if (!step || step->kind() != Value::Kind::kInt || step->as_int() != 1000)
    return DataLossError("demo: 'step' did not load back as 1000");
  return Status();
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

Status FirstError(const std::vector<Status>& statuses) {
  for (const auto& s : statuses)
    if (!s.ok()) return s;
  return Status();
}

std::string Human(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, bytes >= (1 << 30) ? "%.2f GiB" : "%.1f MiB",
                bytes >= (1 << 30) ? bytes / (1 << 30) : bytes / (1 << 20));
  return buf;
}

}  // namespace

static Result<DemoReport> RunDemoImpl(const DemoOptions& o) {
  if (o.save_ranks < 1 || o.load_ranks < 1 || o.thread_count < 1)
    return InvalidArgumentError("demo: rank and thread counts must be >= 1");
  DemoReport r;
  const bool is_root = !o.group || o.group->rank() == 0;
  r.dir = o.dir;
  if (r.dir.empty() && is_root) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/dcpp-demo-XXXXXX";
    if (!mkdtemp(tmpl.data())) return InternalError("demo: cannot create a directory under " + tmpl);
    r.dir = tmpl;
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
    DCPP_ASSIGN_OR_RETURN(auto counts, o.group->Gather(std::to_string(verified_bytes.load()) + " " +
                                                           std::to_string(verified_pieces.load()),
                                                       0));
    r.load_seconds = Seconds(t0);
    if (is_root) {
      uint64_t bytes = 0;
      size_t pieces = 0;
      for (const auto& c : counts) {
        unsigned long long b = 0;
        size_t p = 0;
        std::sscanf(c.c_str(), "%llu %zu", &b, &p);
        bytes += b;
        pieces += p;
      }
      verified_bytes = bytes;
      verified_pieces = pieces;
    }
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
