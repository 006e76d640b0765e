#include "dcpp/tools/demo_state.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace dcpp::tools::demo {

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

namespace {

uint64_t Mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t Stamp(int64_t step) {
  return step == 0 ? 0 : Mix(static_cast<uint64_t>(step) ^ 0xD1B54A32D192ED03ull);
}

void Generate(uint64_t seed, uint64_t offset, uint8_t* out, size_t n, int64_t step) {
  const uint64_t stamp = Stamp(step);
  size_t i = 0;
  while (i < n) {
    const uint64_t pos = offset + i;
    const uint64_t word = Mix(seed * 0x100000001B3ull ^ (pos / 8)) ^ stamp;
    const size_t in_word = pos % 8, take = std::min<size_t>(8 - in_word, n - i);
    std::memcpy(out + i, reinterpret_cast<const uint8_t*>(&word) + in_word, take);
    i += take;
  }
}

void XorStamp(uint64_t w, uint64_t offset, uint8_t* data, size_t n) {
  const auto* wb = reinterpret_cast<const uint8_t*>(&w);
  size_t i = 0;
  for (; i < n && (offset + i) % 8 != 0; ++i) data[i] ^= wb[(offset + i) % 8];
  // From here every 8 bytes start at a word boundary of the tensor.
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, data + i, 8);
    v ^= w;
    std::memcpy(data + i, &v, 8);
  }
  for (; i < n; ++i) data[i] ^= wb[(offset + i) % 8];
}

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

Value& At(Value& root, const std::string& fqn) {
  Value* slot = &root;
  size_t start = 0;
  for (size_t dot; (dot = fqn.find('.', start)) != std::string::npos; start = dot + 1)
    slot = &(*slot)[fqn.substr(start, dot - start)];
  return (*slot)[fqn.substr(start)];
}

void AddPlainValues(Value& state, int64_t step) {
  state["optim"]["param_groups"] = Value::List({Value()});
  Value& group = state["optim"]["param_groups"].items()[0];
  group["lr"] = 3e-4;
  group["betas"] = Value::Tuple({0.9, 0.95});
  group["weight_decay"] = 0.1;
  state["step"] = step;
}

Result<Value> MakeRowShardState(const std::vector<Spec>& specs, int ranks, int rank,
                                int64_t step, std::vector<Tensor>* shards) {
  Value state;
  for (size_t i = 0; i < specs.size(); ++i) {
    const Spec& s = specs[i];
    const plan::Box box = PieceBox(s.shape, 0, ranks, rank);
    DCPP_ASSIGN_OR_RETURN(Tensor piece, Tensor::Zeros(s.dtype, box.sizes));
    auto* p = static_cast<uint8_t*>(piece.data());
    ForEachRow(s.shape, box, ElementSize(s.dtype),
               [&](uint64_t global, uint64_t local, uint64_t n) {
                 Generate(i, global, p + local, n, step);
               });
    if (shards) shards->push_back(piece);
    ShardedTensor st;
    st.global_shape = s.shape;
    st.shards.push_back({box.offsets, std::move(piece)});
    At(state, s.fqn) = std::move(st);
  }
  AddPlainValues(state, step);
  return state;
}

Status LoadAndVerify(ProcessGroup& pg, const std::vector<Spec>& specs, const std::string& dir,
                     int io_threads, const ProgressCallback& progress, int64_t step,
                     std::atomic<uint64_t>* verified_bytes, std::atomic<size_t>* verified_pieces) {
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
  AddPlainValues(state, 0);  // placeholders: loading replaces them
  state["step"] = Value();
  LoadOptions lo;
  lo.process_group = &pg;
  lo.io_threads = io_threads;
  if (pg.rank() == 0) lo.progress = progress;
  DCPP_RETURN_IF_ERROR(Load(state, dir, lo));
  std::vector<uint8_t> expected;
  for (size_t i = 0; i < specs.size(); ++i) {
    const Tensor& piece = At(state, specs[i].fqn).sharded().shards[0].local;
    const auto* got = static_cast<const uint8_t*>(piece.data());
    bool equal = true;
    ForEachRow(specs[i].shape, boxes[i], ElementSize(specs[i].dtype),
               [&](uint64_t global, uint64_t local, uint64_t n) {
                 expected.resize(n);
                 Generate(i, global, expected.data(), n, step);
                 if (std::memcmp(expected.data(), got + local, n) != 0) equal = false;
               });
    if (!equal)
      return DataLossError("demo: rank " + std::to_string(pg.rank()) + " loaded '" +
                           specs[i].fqn + "' piece at " + ShapeToString(boxes[i].offsets) +
                           " with bytes that differ from the state at step " +
                           std::to_string(step));
    *verified_bytes += piece.nbytes();
    ++*verified_pieces;
  }
  const Value* saved_step = state.Find("step");
  if (!saved_step || saved_step->kind() != Value::Kind::kInt || saved_step->as_int() != step)
    return DataLossError("demo: 'step' did not load back as " + std::to_string(step));
  return Status();
}

Status SumVerifiedCounts(ProcessGroup& pg, std::atomic<uint64_t>* verified_bytes,
                         std::atomic<size_t>* verified_pieces) {
  DCPP_ASSIGN_OR_RETURN(auto counts, pg.Gather(std::to_string(verified_bytes->load()) + " " +
                                                   std::to_string(verified_pieces->load()),
                                               0));
  if (pg.rank() != 0) return Status();
  uint64_t bytes = 0;
  size_t pieces = 0;
  for (const auto& c : counts) {
    unsigned long long b = 0;
    size_t p = 0;
    std::sscanf(c.c_str(), "%llu %zu", &b, &p);
    bytes += b;
    pieces += p;
  }
  *verified_bytes = bytes;
  *verified_pieces = pieces;
  return Status();
}

Result<std::string> MakeDemoDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/dcpp-demo-XXXXXX";
  if (!mkdtemp(tmpl.data())) return InternalError("demo: cannot create a directory under " + tmpl);
  return tmpl;
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

}  // namespace dcpp::tools::demo
