// The synthetic training state shared by `dcpp demo` and `dcpp demo
// --async` (demo.cc, async_demo.cc): the tensors of a small transformer
// with Adam moments, contents that are a pure function of (tensor, byte
// position, step) so any rank can produce or check any piece, the row and
// column shardings, and the resharded load that checks every byte.
// Internal to the tools layer.
#ifndef DCPP_TOOLS_DEMO_STATE_H_
#define DCPP_TOOLS_DEMO_STATE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "dcpp/checkpoint.h"
#include "dcpp/plan/reshard.h"

namespace dcpp::tools::demo {

struct Spec {
  std::string fqn;
  DType dtype;
  Shape shape;
};

// The tensors of a decoder-only transformer of about `size_mib` MiB (bf16
// weights, then fp32 exp_avg and exp_avg_sq for each): "model.*" and
// "optim.state.*". At least one layer: about 4.4 MiB at the smallest width.
std::vector<Spec> TransformerSpecs(uint64_t size_mib);

// The 8-byte word every byte of the state is XORed with at training step
// `step` (byte p with byte p % 8 of the word). Stamp(0) == 0: the state at
// step 0 is what Generate(..., 0) gives, which is what `dcpp demo` saves.
uint64_t Stamp(int64_t step);

// The bytes [offset, offset + n) of tensor `seed`'s row-major contents at
// training step `step`.
void Generate(uint64_t seed, uint64_t offset, uint8_t* out, size_t n, int64_t step = 0);

// XORs bytes that sit at global byte offset `offset` with the word `w` (byte
// p with byte p % 8 of w): moves a piece from step a to step b when w =
// Stamp(a) ^ Stamp(b).
void XorStamp(uint64_t w, uint64_t offset, uint8_t* data, size_t n);

// [start, len) of part k of n of `total`, the first total % n parts longer.
std::pair<int64_t, int64_t> Part(int64_t total, int n, int k);

// Part k of n of `shape` along `dim`.
plan::Box PieceBox(const Shape& shape, size_t dim, int n, int k);

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

// The slot for dotted `fqn` under `root`, created as needed.
Value& At(Value& root, const std::string& fqn);

// The optimizer's param_groups and "step" = `step`.
void AddPlainValues(Value& state, int64_t step);

// Rank `rank` of `ranks`'s row shards of every tensor at step `step`, with
// the plain values; *shards (if given) gets the local tensors in spec order.
Result<Value> MakeRowShardState(const std::vector<Spec>& specs, int ranks, int rank,
                                int64_t step, std::vector<Tensor>* shards);

// Loads `dir` on `pg`'s ranks, each asking for a column shard of every
// matrix (vectors: a row shard), and checks every byte against the state at
// `step` and the saved "step" value. DataLoss naming the tensor and piece
// on a difference. Adds what it checked to the counters.
Status LoadAndVerify(ProcessGroup& pg, const std::vector<Spec>& specs, const std::string& dir,
                     int io_threads, const ProgressCallback& progress, int64_t step,
                     std::atomic<uint64_t>* verified_bytes, std::atomic<size_t>* verified_pieces);

// Under MPI, where each process counted its own share: replaces the
// counters on rank 0 by the sums over every rank (a Gather; other ranks'
// counters are left as they are).
Status SumVerifiedCounts(ProcessGroup& pg, std::atomic<uint64_t>* verified_bytes,
                         std::atomic<size_t>* verified_pieces);

// A fresh directory under $TMPDIR (or /tmp).
Result<std::string> MakeDemoDir();

double Seconds(std::chrono::steady_clock::time_point since);
Status FirstError(const std::vector<Status>& statuses);
// "12.3 MiB" / "1.23 GiB".
std::string Human(double bytes);

}  // namespace dcpp::tools::demo

#endif  // DCPP_TOOLS_DEMO_STATE_H_
