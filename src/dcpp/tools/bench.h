// `dcpp bench`: dcpp's side of bench/run_benchmarks.py, which times dcpp and
// torch.distributed.checkpoint on the same bytes.
//
// A benchmark state is two files written by the orchestrator: an image (the
// bytes of every tensor, back to back, each row-major) and a JSON index
//
//   {"tensors": [{"fqn": "model.layers.0.mlp.up.weight", "dtype": "bfloat16",
//                 "shape": [2048, 512], "offset": 0}, ...], ...}
//
// (other members are ignored). An FQN's dots give the nesting of the state
// dict ("a.b" is sd["a"]["b"]), as torch flattens nested dicts.
//
// Each function times only the operation itself: the state is read into
// memory, and load destinations are allocated and touched, before the clock
// starts; loaded bytes are checked against the image after it stops. A call
// holds the whole image (save) or every rank's destination (load) in memory
// at once, plus what Save or Load need. No global state: calls may run
// concurrently on different threads, though timings then mean little.
#ifndef DCPP_TOOLS_BENCH_H_
#define DCPP_TOOLS_BENCH_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/checkpoint.h"

namespace dcpp::tools {

// One tensor of a benchmark image.
struct BenchTensor {
  std::string fqn;
  DType dtype = DType::kFloat32;
  Shape shape;
  uint64_t offset = 0;  // byte offset in the image
  uint64_t nbytes = 0;  // numel * element size
};

// Parses an index (the JSON above) for an image of `image_bytes` bytes.
// DataLoss, naming the entry, when the text is not such an index: a missing
// or mistyped member, an unknown dtype, a negative dimension, a size that
// overflows, bytes outside the image, an FQN that is empty, has an empty
// component ("a..b") or repeats, or an FQN that is also a prefix of another
// ("a.b" and "a.b.c" cannot both be leaves).
Result<std::vector<BenchTensor>> ParseBenchIndex(std::string_view json_text, uint64_t image_bytes);

struct BenchOptions {
  std::string image_path;
  std::string index_path;
  std::string checkpoint_dir;
  // Thread ranks of this process. Saving on N > 1 ranks, rank r holds rows
  // [r*c, min((r+1)*c, d0)) of every tensor whose first dimension d0 >= N,
  // with c = ceil(d0 / N) (torch's Shard(0) split); other tensors are
  // replicated. Loading on M > 1 ranks splits dimension 1 the same way where
  // a tensor has one of size >= M, else dimension 0 where that is >= M, else
  // every rank loads the whole tensor.
  int ranks = 1;
  // SaveOptions/LoadOptions::thread_count of every rank.
  int thread_count = 2;
  bool sync_files = true;               // save only
  std::vector<std::string> transforms;  // save only: SaveOptions::transforms
  int compression_level = 1;            // save only
  bool verify = true;                   // load only: compare with the image
};

struct BenchResult {
  std::string op;      // "save", "load", "loadall" or "memcpy"
  double seconds = 0;  // the timed part; with ranks, the slowest rank's
  uint64_t bytes = 0;  // bytes of the state (sum of tensor sizes) or copied
  size_t tensors = 0;
  int ranks = 1;
  int thread_count = 0;
  std::vector<std::string> transforms;
  int compression_level = 0;
  uint64_t rss_before_bytes = 0;  // resident set size just before timing
  uint64_t max_rss_bytes = 0;     // peak resident set size (VmHWM) when timing ended
  bool verified = false;          // every loaded byte equal to the image's
};

// Reads the image and index, then times dcpp::Save of the state to
// options.checkpoint_dir (on options.ranks thread ranks, each saving its
// part; the clock runs from a barrier before Save to one after it). Errors
// from reading the inputs name the file; Save's errors are returned as is.
Result<BenchResult> BenchSave(const BenchOptions& options);

// Allocates the state described by the index (each rank its pieces, see
// BenchOptions::ranks), fills it with a pattern, then times dcpp::Load from
// options.checkpoint_dir. With options.verify, DataLoss naming the tensor
// and byte when a loaded byte differs from the image.
Result<BenchResult> BenchLoad(const BenchOptions& options);

// Times dcpp::LoadAll of options.checkpoint_dir on one rank (ranks must be
// 1: InvalidArgument otherwise): the library allocates every tensor inside
// the clock. With options.verify, every tensor of the index must be a key
// of the result holding the image's bytes (DataLoss naming it otherwise).
Result<BenchResult> BenchLoadAll(const BenchOptions& options);

// Times one memcpy of `bytes` bytes between two buffers allocated and
// touched beforehand: the memory bandwidth a single copy of the state gets.
// ResourceExhausted when the buffers cannot be allocated.
Result<BenchResult> BenchMemcpy(uint64_t bytes);

// What BenchCompress measured, on one thread.
struct CompressResult {
  std::string dtype;                     // the tensors compressed (empty: all)
  std::vector<std::string> transforms;   // in application order
  int compression_level = 1;
  size_t tensors = 0;
  uint64_t bytes = 0;                    // input bytes
  uint64_t stored_bytes = 0;             // output of the transforms
  double encode_seconds = 0;             // dcpp's encoders, the tensors one after another
  double decode_seconds = 0;             // undoing them again (checked against the input)
  uint64_t libzstd_stored_bytes = 0;     // ZSTD_compressCCtx alone, same level
  double libzstd_seconds = 0;
};

// Reads the image and index, then compresses every tensor of dtype `dtype`
// (all tensors when empty) through `transforms` at `level` on the calling
// thread (zstd workers off), as a save compresses one item; decodes the
// result and checks it against the input; and, as the bound dcpp's encoder
// is held to, times libzstd's one-shot ZSTD_compressCCtx at the same level
// on the same tensors. Each is timed over all selected tensors, best of
// `repeats` (>= 1). InvalidArgument for an unknown dtype name or transform,
// or when no tensor has the dtype; Internal if a round trip differs.
Result<CompressResult> BenchCompress(const std::string& image_path, const std::string& index_path,
                                     const std::string& dtype,
                                     const std::vector<std::string>& transforms, int level,
                                     int repeats = 3);

// One line of JSON (no newline) with every field of `result`: op
// ("compress"), dtype, transforms, compression_level, tensors, bytes,
// stored_bytes, encode_seconds, decode_seconds, libzstd_stored_bytes,
// libzstd_seconds.
std::string CompressResultJson(const CompressResult& result);

// One line of JSON (no newline) with every field of `result` ("op",
// "seconds", "bytes", "tensors", "ranks", "threads", "transforms",
// "compression_level", "rss_before_bytes", "max_rss_bytes", "verified").
std::string BenchResultJson(const BenchResult& result);

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_BENCH_H_
