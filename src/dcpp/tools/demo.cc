#include "dcpp/tools/demo.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

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
  const int64_t h = 1024, vocab = 8192;
  // 12 h^2 parameters per layer, 10 bytes each (bf16 weight + 2 fp32 moments).
  const uint64_t per_layer = 12 * h * h * 10, embed = 2 * vocab * h * 10;
  const uint64_t target = size_mib << 20;
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

Result<Tensor> Random(DType dtype, const Shape& shape, uint64_t seed) {
  DCPP_ASSIGN_OR_RETURN(Tensor t, Tensor::Zeros(dtype, shape));
  auto* p = static_cast<uint64_t*>(t.data());
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < t.nbytes() / 8; ++i) {  // xorshift64: fast, deterministic
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = x;
  }
  return t;
}

// Splits [0, n) into k nearly equal ranges (the first n % k one longer), the
// way torch.chunk-style sharding does for uneven sizes.
std::vector<std::pair<int64_t, int64_t>> Split(int64_t n, int k) {
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t start = 0;
  for (int i = 0; i < k; ++i) {
    const int64_t len = n / k + (i < n % k ? 1 : 0);
    out.push_back({start, len});
    start += len;
  }
  return out;
}

// The pieces of `whole` along `dim`, as views (no copy).
ShardedTensor ShardViews(const Tensor& whole, size_t dim, int k) {
  ShardedTensor st;
  st.global_shape = whole.shape();
  const plan::Box box{Shape(whole.shape().size(), 0), whole.shape()};
  for (auto [start, len] : Split(whole.shape()[dim], k)) {
    plan::Box part = box;
    part.offsets[dim] = start;
    part.sizes[dim] = len;
    st.shards.push_back({part.offsets, Tensor::Borrow(plan::SubView(whole.view(), box, part))});
  }
  return st;
}

// Empty (zeroed) destination pieces along `dim`.
Result<ShardedTensor> ShardZeros(DType dtype, const Shape& shape, size_t dim, int k) {
  ShardedTensor st;
  st.global_shape = shape;
  for (auto [start, len] : Split(shape[dim], k)) {
    Shape offsets(shape.size(), 0), sizes = shape;
    offsets[dim] = start;
    sizes[dim] = len;
    DCPP_ASSIGN_OR_RETURN(Tensor t, Tensor::Zeros(dtype, sizes));
    st.shards.push_back({offsets, std::move(t)});
  }
  return st;
}

// The leaf at dotted `fqn`, creating dicts on the way (fqn has no list
// indices here). The reference is valid until the tree is next modified.
Value& At(Value& root, const std::string& fqn) {
  Value* slot = &root;
  size_t start = 0;
  for (size_t dot; (dot = fqn.find('.', start)) != std::string::npos; start = dot + 1)
    slot = &(*slot)[fqn.substr(start, dot - start)];
  return (*slot)[fqn.substr(start)];
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

std::string Gib(double bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, bytes >= (1 << 30) ? "%.2f GiB" : "%.1f MiB",
                bytes >= (1 << 30) ? bytes / (1 << 30) : bytes / (1 << 20));
  return buf;
}

}  // namespace

Result<DemoReport> RunDemo(const DemoOptions& o) {
  if (o.save_shards < 1 || o.load_shards < 1 || o.thread_count < 1)
    return InvalidArgumentError("demo: shard and thread counts must be >= 1");
  DemoReport r;
  r.dir = o.dir;
  if (r.dir.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/dcpp-demo-XXXXXX";
    if (!mkdtemp(tmpl.data())) return InternalError("demo: cannot create a directory under " + tmpl);
    r.dir = tmpl;
  }

  // The state to save: every tensor split by rows into save_shards pieces.
  const auto specs = TransformerSpecs(o.size_mib);
  std::vector<Tensor> originals;
  Value state;
  for (size_t i = 0; i < specs.size(); ++i) {
    DCPP_ASSIGN_OR_RETURN(Tensor t, Random(specs[i].dtype, specs[i].shape, i + 1));
    r.state_bytes += t.nbytes();
    At(state, specs[i].fqn) = ShardViews(t, 0, o.save_shards);
    originals.push_back(std::move(t));
  }
  state["optim"]["param_groups"] = Value::List({Value()});
  Value& group = state["optim"]["param_groups"].items()[0];
  group["lr"] = 3e-4;
  group["betas"] = Value::Tuple({0.9, 0.95});
  group["weight_decay"] = 0.1;
  state["step"] = 1000;
  r.tensors = specs.size();
  r.values = 4;

  SaveOptions so;
  so.thread_count = o.thread_count;
  so.sync_files = o.sync_files;
  so.progress = o.progress;
  auto t0 = std::chrono::steady_clock::now();
  DCPP_ASSIGN_OR_RETURN(Metadata md, Save(state, r.dir, so));
  r.save_seconds = Seconds(t0);
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

  // Load into another layout: matrices by columns, vectors by rows.
  Value target;
  for (size_t i = 0; i < specs.size(); ++i) {
    const size_t dim = specs[i].shape.size() > 1 ? 1 : 0;
    DCPP_ASSIGN_OR_RETURN(At(target, specs[i].fqn),
                          ShardZeros(specs[i].dtype, specs[i].shape, dim, o.load_shards));
  }
  target["step"] = Value();
  LoadOptions lo;
  lo.thread_count = o.thread_count;
  lo.progress = o.progress;
  t0 = std::chrono::steady_clock::now();
  DCPP_RETURN_IF_ERROR(Load(target, r.dir, lo));
  r.load_seconds = Seconds(t0);

  // Every loaded piece must equal the same region of the original.
  for (size_t i = 0; i < specs.size(); ++i) {
    const Tensor& whole = originals[i];
    const plan::Box box{Shape(whole.shape().size(), 0), whole.shape()};
    for (const auto& shard : At(target, specs[i].fqn).sharded().shards) {
      const plan::Box part{shard.offsets, shard.local.shape()};
      if (!Tensor::Borrow(plan::SubView(whole.view(), box, part)).BitwiseEquals(shard.local))
        return DataLossError("demo: loaded '" + specs[i].fqn + "' piece at " +
                             ShapeToString(shard.offsets) + " differs from what was saved");
      ++r.verified_pieces;
    }
  }
  if (!target.Find("step") || target.Find("step")->as_int() != 1000)
    return DataLossError("demo: 'step' did not load back as 1000");
  if (!o.keep) std::filesystem::remove_all(r.dir);
  return r;
}

std::string FormatDemoReport(const DemoOptions& o, const DemoReport& r) {
  char buf[512];
  std::string out;
  std::snprintf(buf, sizeof buf,
                "dcpp demo: save a transformer-like training state as %d row shards, load it "
                "as %d column shards\n",
                o.save_shards, o.load_shards);
  out += buf;
  std::snprintf(buf, sizeof buf,
                "  state    %zu tensors (bf16 weights, fp32 Adam moments) + %zu plain values, %s\n",
                r.tensors, r.values, Gib(static_cast<double>(r.state_bytes)).c_str());
  out += buf;
  std::snprintf(buf, sizeof buf,
                "  save     %.3f s  %s/s  -> %zu data files, %s stored, fsync %s, %d threads\n",
                r.save_seconds, Gib(r.state_bytes / r.save_seconds).c_str(), r.files,
                Gib(static_cast<double>(r.stored_bytes)).c_str(), o.sync_files ? "on" : "off",
                o.thread_count);
  out += buf;
  std::snprintf(buf, sizeof buf, "  load     %.3f s  %s/s  (resharded %d -> %d)\n", r.load_seconds,
                Gib(r.state_bytes / r.load_seconds).c_str(), o.save_shards, o.load_shards);
  out += buf;
  std::snprintf(buf, sizeof buf, "  verify   %zu loaded pieces, every byte equal to what was saved\n",
                r.verified_pieces);
  out += buf;
  out += "  checkpoint " + r.dir + (o.keep ? " (kept)\n" : " (removed; --keep keeps it)\n");
  return out;
}

}  // namespace dcpp::tools
