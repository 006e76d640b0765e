// Saving and loading checkpoints in PyTorch DCP's format.
//
//   dcpp::Value sd;
//   sd["model"]["weight"] = dcpp::Tensor::Borrow(dcpp::MakeView(ptr, dcpp::DType::kFloat32, {4096, 4096}));
//   sd["step"] = 1000;
//   auto md = dcpp::Save(sd, "/ckpt/step_1000");          // torch.distributed.checkpoint.save
//   dcpp::Status s = dcpp::Load(sd, "/ckpt/step_1000");   // in place, like dcp.load
//   auto all = dcpp::LoadAll("/ckpt/step_1000");          // allocate everything from .metadata
//
// A checkpoint is a directory: data files `__{rank}_{n}.{tag}.distcp` and a
// `.metadata` file written last (its appearance is the commit). PyTorch's
// dcp.load reads what Save writes and Load reads what dcp.save writes.
//
// Thread safety: calls are independent; do not mutate a state dict while a
// call is using it. Errors name the file, FQN or rank involved.
#ifndef DCPP_CHECKPOINT_H_
#define DCPP_CHECKPOINT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/process_group.h"
#include "dcpp/stateful.h"
#include "dcpp/status.h"
#include "dcpp/value.h"

namespace dcpp {

// Reported while a long operation runs. Called from dcpp's I/O threads, one
// call at a time; keep it cheap and do not call back into dcpp.
struct Progress {
  std::string_view phase;  // "write", "read"
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  size_t items_done = 0;
  size_t items_total = 0;
};
using ProgressCallback = std::function<void(const Progress&)>;

// Remembers a save's plan so that the next save of the same structure
// skips sending and validating the plans (DCP's enable_plan_caching):
// each rank then sends a 16-byte fingerprint of its local plan instead of
// the plan, and the coordinator reuses its global plan when every rank's
// fingerprint matches the last successful save's. Any change (a tensor
// added, a shape, dtype or sharding changed, another group) falls back to
// full planning in the same save, at the cost of one extra gather. One
// cache per rank, used by one save at a time; AsyncCheckpointer keeps one.
class SavePlanCache {
 public:
  SavePlanCache();
  ~SavePlanCache();
  SavePlanCache(const SavePlanCache&) = delete;
  SavePlanCache& operator=(const SavePlanCache&) = delete;

  // Saves through this cache that reused the plan, and that planned afresh.
  uint64_t hits() const;
  uint64_t misses() const;

  struct State;  // the engine's (src/dcpp/engine/plan_cache.h)
  State& state() { return *state_; }

 private:
  std::unique_ptr<State> state_;
};

// What Save writes.
enum class SaveFormat {
  // A DCP checkpoint (torch.distributed.checkpoint's FileSystemWriter).
  kDcp,
  // A Hugging Face model directory, as torch's HuggingFaceStorageWriter
  // writes it for a rank-0 save: model-0000i-of-0000N.safetensors files
  // (safetensors __metadata__ {"format": "pt"}) and
  // model.safetensors.index.json ({"metadata": {"total_size"},
  // "weight_map"}). Every leaf must be a tensor (InvalidArgument lists the
  // others); keys are the FQNs. Tensors are written straight from their
  // memory, several at once. With a process group, each rank writes its
  // shards (plain tensors count as replicated: rank 0 writes them) to a
  // temporary file of its own, then rank 0 consolidates them into full
  // tensors, every piece copied to its place through 32 MiB bands per
  // thread (memory independent of the model's size), and removes the
  // temporaries; the ranks' shards must tile each tensor. Only SaveOptions'
  // io_threads, sync_files, overwrite, max_shard_size, process_group and
  // progress apply.
  kSafetensors,
};

struct SaveOptions {
  // DCP (default) or a safetensors model directory (see SaveFormat).
  SaveFormat format = SaveFormat::kDcp;
  // kSafetensors: start a new file before a tensor that would take the
  // current one past this many bytes of tensor data (transformers'
  // max_shard_size; a tensor larger than the cap gets a file of its own).
  // 0: one file.
  uint64_t max_shard_size = 0;
  // kSafetensors: the file (1..N, N the largest index) each FQN goes to, as
  // torch's HuggingFaceStorageWriter(fqn_to_index_mapping=...); every saved
  // FQN must have one (InvalidArgument naming it otherwise); an index no
  // tensor uses still gets its (empty) file. Empty: by max_shard_size.
  std::map<std::string, int> fqn_to_file_index;

  // The ranks saving together (borrowed; null = this process alone). Every
  // rank calls Save with its own part of the state: ShardedTensor leaves for
  // the pieces it holds, plain tensors and values for replicated state (one
  // copy is written). Rank 0 coordinates and commits.
  ProcessGroup* process_group = nullptr;
  // DCP's dedup_save_to_lowest_rank: replicated items are written by the
  // lowest rank holding them instead of spreading them by size.
  bool dedup_to_lowest_rank = false;
  // With single_file_per_rank, the number of data files per rank (what
  // DCP's FileSystemWriter calls thread_count; dcpp.save and
  // dcpp.torch.FileSystemWriter keep that name). Must be >= 1.
  int files_per_rank = 1;
  // Threads writing this rank's data files: the files in parallel, and
  // where threads outnumber files, several threads within one file
  // (uncompressed items go straight to offsets computed beforehand, so the
  // bytes are the same as one thread's). 0 (default): max(files_per_rank,
  // min(8, hardware threads)); negative is InvalidArgument.
  int io_threads = 0;
  // true: files_per_rank files per rank; false: one file per item.
  bool single_file_per_rank = true;
  // fsync data files and the metadata, and the directory after the commit.
  bool sync_files = true;
  // Replace an existing checkpoint at the path. The replacement is atomic:
  // the old checkpoint stays intact and loadable until the new .metadata
  // replaces it, then its unreferenced data files are removed. false: fail
  // with AlreadyExists if the directory holds a checkpoint.
  bool overwrite = true;
  // How long to wait for another save holding the directory's lock
  // (`.dcpp.lock`, see Save) before failing, in milliseconds. 0 (default):
  // fail at once with Aborted, naming the holder (pid, host, start time,
  // save tag) and what to do. Negative is InvalidArgument. Keep it below
  // the process group's collective timeout: the other ranks wait meanwhile.
  int64_t lock_timeout_ms = 0;
  // CRC-32 of each record in the torch.save archives (as torch writes);
  // `dcpp verify` checks them. Costs about one pass over the data.
  bool checksums = true;
  // Stream transforms applied to every item's bytes, in this order, named by
  // their DCP descriptors and recorded per item in the metadata, so a reader
  // needs no configuration. {"stream.zstd/1"} compresses as torch's
  // FileSystemWriter(_extensions=[ZStandard()]) does, and torch reads it
  // when the zstandard module is installed. "dcpp.byteshuffle/1" before
  // zstd ({"dcpp.byteshuffle/1", "stream.zstd/1"}) groups the bytes of each
  // value for better ratios on float data; stock torch reads that only with
  // dcpp's Python extension registered. Unknown descriptor: InvalidArgument
  // listing the known ones.
  std::vector<std::string> transforms;
  // zstd level for "stream.zstd/1": 1 (fast, the default) to 19; negative
  // levels trade ratio for more speed.
  int compression_level = 1;
  // This rank's plan cache (borrowed; null = plan every save). Every rank
  // of a save passes one or none.
  SavePlanCache* plan_cache = nullptr;
  ProgressCallback progress;
};

// What a load read from storage, for reports and tests.
struct LoadStats {
  // Bytes this rank read from storage during the load: .metadata (the
  // coordinator), the sidecar checksum file, and the data it read.
  uint64_t bytes_read = 0;
  // The part of bytes_read spent on tensor chunks and pickled values.
  uint64_t data_bytes_read = 0;
  // Saved tensor chunks and pickled values this rank read (each once).
  uint64_t chunks_read = 0;
  uint64_t values_read = 0;
  // Whether the ranks of one process shared their reads (share_reads with
  // every rank in this process).
  bool shared = false;
};

struct LoadOptions {
  // The ranks loading together (borrowed; null = this process alone). Each
  // rank asks for its own pieces (ShardedTensor leaves) in any layout: only
  // the overlapping parts of the saved chunks are read.
  ProcessGroup* process_group = nullptr;
  // Read each saved byte once for all the ranks of one process (thread
  // ranks): the ranks exchange what they need, every saved chunk and
  // pickled value that any rank needs is read by one rank, chosen so the
  // ranks read about equal bytes, which copies each part straight into the
  // memory of every rank that asked for it (a replicated entry is read once,
  // not once per rank; a column band of a row-sharded save is one pass over
  // the file, not one per loading rank). The reading rank checks checksums
  // (with its own verify_checksums) and reports progress (through its own
  // callback); a failure reaches every rank as an error naming the reading
  // rank and the file. Takes effect when every rank of the group passes
  // true. Ranks in several processes (MPI) cannot write into each other's
  // memory: there, an entry that several ranks load whole (a replicated
  // tensor, a pickled value) is read by one of them and sent to the others
  // through the group (AllGather rounds of at most 256 MiB), and every other
  // read is each rank's own. Costs one AllGather before the reads and one
  // after (threads), or one before and one per round (processes).
  // false: every rank reads what it needs itself.
  bool share_reads = true;
  // Filled in when the load returns, successful or not (borrowed; may be
  // null).
  LoadStats* stats = nullptr;
  // Threads reading this rank's chunks in parallel; 0 picks min(8,
  // hardware threads). (dcpp.load calls it thread_count.)
  int io_threads = 0;
  // DCP's allow_partial_load: keys of the state dict missing from the
  // checkpoint are left untouched instead of failing with NotFound.
  bool allow_partial_load = false;
  // Check checksums while reading: the CRC-32 of every torch.save archive
  // record read in full (tensor data, data.pkl, pickled values), zstd frame
  // checksums, and, when the checkpoint has a sidecar `.checksums.<save_id>`
  // (every dcpp writer makes one), `.metadata` and each pickled value's
  // stored bytes. A mismatch is DataLoss naming the FQN, the file and the
  // item's offset. Not checkable, so not checked: the part of a large saved
  // chunk read when only part of it is requested (resharding) and no rank
  // of the process reads the rest with it (with share_reads, a chunk that
  // several ranks' pieces cover is read whole, and checked). Costs a CRC
  // pass over the bytes read, spread over the reader threads.
  bool verify_checksums = true;
  ProgressCallback progress;
};

struct LoadAllOptions {
  int io_threads = 0;  // as LoadOptions::io_threads
  // Only entries whose FQN equals a key, or whose path from the root joined
  // by "." starts with a key followed by "." (DCP's _EmptyStateDictLoadPlanner
  // keys). Empty = everything.
  std::vector<std::string> keys;
  bool verify_checksums = true;  // as LoadOptions::verify_checksums
  ProgressCallback progress;
};

// Saves `state_dict` (a dict) to the directory `checkpoint_dir` (created if
// needed) and returns the metadata written. Tensors are read straight from
// their memory; they must not change until Save returns.
// Memory: tensor bytes are never staged (only non-dense tensors are copied
// to a contiguous buffer first); with transforms each I/O thread holds a few
// MiB of buffers (plus zstd's own, about 2 MiB per worker at level 1). On
// failure nothing that looks like a checkpoint is left behind and an existing checkpoint at
// the path is untouched. With a process group, a failure on any rank makes
// every rank return the same error naming each failed rank and its reason.
// Writers exclude each other: rank 0 holds an flock on `.dcpp.lock` in the
// directory from before it looks at the directory until the commit and
// cleanup are done, and a second save fails with Aborted naming the holder
// (or waits: lock_timeout_ms). Every save writes its data files under names
// of its own (`__{rank}_{n}.{tag}.distcp`, tag random per save) and its
// metadata as `.metadata.{tag}.tmp` renamed to `.metadata` (the commit);
// after the commit, still locked, it removes every `__*.distcp` and
// `.metadata*.tmp` that the new `.metadata` does not reference (the replaced
// checkpoint's and those of killed saves) and nothing else.
Result<Metadata> Save(const Value& state_dict, const std::string& checkpoint_dir,
                      const SaveOptions& options = {});

// Loads into `state_dict` in place (DCP's dcp.load): every tensor leaf is
// filled from the checkpoint (its dtype and shape must match the saved ones:
// InvalidArgument otherwise); every other leaf is replaced by the saved value.
// A key missing from the checkpoint is NotFound unless allow_partial_load.
// With a process group, rank 0 reads .metadata once and shares it; every
// rank returns the same status.
// Reads: each saved chunk a rank needs is opened once; of a large
// untransformed chunk only the byte ranges the requested pieces span are
// read, straight into the destination when the layouts agree, else through
// 1 MiB of scratch per I/O thread. A large transformed (compressed) chunk is
// decoded as it is read, its tensor bytes copied into the destinations as
// they pass. Small chunks (<= 1 MiB) are read whole. Memory beyond the
// destination tensors: a few MiB per I/O thread (plus zstd's window, 2 MiB
// at most for what dcpp and torch write); only a compressed chunk that
// torch stored in a permuted layout (a transposed tensor saved as is) is
// decoded whole in memory, stored and decoded. With share_reads (the
// default) and ranks in several processes, up to 256 MiB of replicated
// entries travel per round: each rank holds a round's bytes (plus its own
// packed copy of what it sends) at once, beyond its destinations.
Status Load(Value& state_dict, const std::string& checkpoint_dir, const LoadOptions& options = {});

// Loads the whole checkpoint (or the entries selected by options.keys) into
// new memory, rebuilding the nesting from the metadata's planner_data.
Result<Value> LoadAll(const std::string& checkpoint_dir, const LoadAllOptions& options = {});

// Reads and validates `checkpoint_dir/.metadata` only.
Result<Metadata> ReadMetadata(const std::string& checkpoint_dir);

}  // namespace dcpp

#endif  // DCPP_CHECKPOINT_H_
