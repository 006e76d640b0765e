// dcpp::Load / LoadAll / ReadMetadata: collect the requested tensors, have
// plan/load_planner decide which saved chunks each needs (box intersection,
// so any saved sharding loads) and check the plan against the stored bytes,
// then allocate, read each needed chunk once, in parallel, and copy the
// overlaps into place. Ranks of one process (thread ranks) share their
// reads: every chunk or value that any of them needs is read by one rank,
// which copies it into every asking rank's memory (LoadOptions::share_reads).
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <set>
#include <tuple>
#include <unordered_map>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/checkpoint.h"
#include "dcpp/engine/engine.h"
#include "dcpp/engine/wire.h"
#include "dcpp/format/compact_metadata.h"
#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/plan/compact_load_planner.h"
#include "dcpp/storage/checksum_file.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/safetensors_layout.h"
#include "dcpp/plan/flatten.h"
#include "dcpp/plan/load_planner.h"
#include "dcpp/plan/reshard.h"
#include "dcpp/transform/transform.h"

namespace dcpp {
namespace {

using format::zip::Bytes;

std::string Quoted(std::string_view fqn) { return "'" + std::string(fqn) + "'"; }

// Where a loaded tensor goes: a view of memory and the global box it covers.
struct TensorTarget {
  TensorView view;
  plan::Box box;
};

// One saved chunk to read, and the targets it feeds.
struct ChunkTask {
  const EntryMeta* entry;
  size_t chunk;
  std::vector<TensorTarget> targets;
};

// One BYTE_IO value to read into `slot` (and, when ranks share reads, a
// copy into each of `more_slots`).
struct BytesTask {
  const EntryMeta* entry;
  Value* slot;
  std::vector<Value*> more_slots = {};
  // If set, receives the value's archive (for ranks in other processes).
  std::string* keep_archive = nullptr;
};

// Forwards to another storage, counting the bytes read through it.
// Thread-safe as the storage it wraps is.
class CountingStorage final : public storage::Storage {
 public:
  explicit CountingStorage(storage::Storage& base) : base_(base) {}

  uint64_t bytes_read() const { return read_.load(std::memory_order_relaxed); }

  std::string Describe(std::string_view name) const override { return base_.Describe(name); }
  bool PublishesOnClose() const override { return base_.PublishesOnClose(); }
  int IoParallelism() const override { return base_.IoParallelism(); }
  Status CreateLocation() override { return base_.CreateLocation(); }
  Result<std::unique_ptr<storage::ReadableFile>> OpenForRead(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::ReadableFile> file, base_.OpenForRead(name));
    return std::unique_ptr<storage::ReadableFile>(
        std::make_unique<CountingFile>(std::move(file), read_));
  }
  Result<std::unique_ptr<storage::WritableFile>> CreateForWrite(std::string_view name) override {
    return base_.CreateForWrite(name);
  }
  Result<uint64_t> Size(std::string_view name) override { return base_.Size(name); }
  Result<std::vector<std::string>> List() override { return base_.List(); }
  Status Rename(std::string_view from, std::string_view to) override {
    return base_.Rename(from, to);
  }
  Status Remove(std::string_view name) override { return base_.Remove(name); }
  Status SyncDirectory() override { return base_.SyncDirectory(); }
  Result<std::unique_ptr<storage::StorageLock>> TryLock(std::string_view name,
                                                        std::string_view holder) override {
    return base_.TryLock(name, holder);
  }

 private:
  class CountingFile final : public storage::ReadableFile {
   public:
    CountingFile(std::unique_ptr<storage::ReadableFile> file, std::atomic<uint64_t>& read)
        : file_(std::move(file)), read_(read) {}
    Result<uint64_t> Size() const override { return file_->Size(); }
    Status ReadAt(uint64_t offset, std::span<uint8_t> out) const override {
      read_.fetch_add(out.size(), std::memory_order_relaxed);
      return file_->ReadAt(offset, out);
    }

   private:
    std::unique_ptr<storage::ReadableFile> file_;
    std::atomic<uint64_t>& read_;
  };

  storage::Storage& base_;
  std::atomic<uint64_t> read_{0};
};

// What reads check: checksums on or off, and the checkpoint's sidecar
// checksum file if it has one.
struct LoadChecks {
  bool verify = true;
  std::optional<format::ChecksumFile> sidecar;
};

Status RunChunkTask(storage::Storage& storage, const ChunkTask& task, const LoadChecks& checks) {
  const EntryMeta& e = *task.entry;
  const ChunkMeta& c = e.chunks[task.chunk];
  const plan::Box chunk_box{c.offsets, c.sizes};
  std::vector<storage::ChunkTarget> targets;
  for (const TensorTarget& t : task.targets) {
    auto overlap = plan::Intersect(chunk_box, t.box);
    if (!overlap) continue;
    targets.push_back({plan::SubView(t.view, t.box, *overlap), overlap->offsets, overlap->sizes});
  }
  return storage::ReadChunk(storage, e.fqn, e.properties.dtype, c, targets,
                            storage::kReadScratchBytes, {checks.verify, std::nullopt});
}

Status RunBytesTask(storage::Storage& storage, const BytesTask& task, const LoadChecks& checks) {
  const StorageInfo& s = task.entry->storage;
  // A pickled value expands at most this much through its transforms (a cap
  // against decompression bombs, far above what real values need).
  const uint64_t cap = std::min<uint64_t>(s.length, uint64_t{1} << 32) * 64 + (uint64_t{64} << 20);
  storage::ReadChecks read_checks{checks.verify, std::nullopt};
  if (checks.sidecar) {
    const auto* item = checks.sidecar->Find(s.relative_path, s.offset, s.length);
    if (item) read_checks.stored_crc32 = item->crc32;
  }
  DCPP_ASSIGN_OR_RETURN(std::string blob,
                        storage::ReadItem(storage, s, task.entry->fqn, cap, read_checks));
  auto value = format::DecodeValueArchive(format::zip::AsBytes(blob), Quoted(task.entry->fqn));
  if (!value.ok()) return value.status().WithContext(s.relative_path);
  for (Value* more : task.more_slots) *more = *value;
  *task.slot = std::move(*value);
  if (task.keep_archive) *task.keep_archive = std::move(blob);
  return Status();
}

// Runs a load's reads: chunk tasks (built from a checked plan) and values.
class ReadPlan {
 public:
  ReadPlan(storage::Storage& storage, ProgressCallback progress, LoadChecks checks)
      : storage_(storage),
        progress_(std::move(progress)),
        checks_(std::make_shared<const LoadChecks>(std::move(checks))) {}

  // An empty plan reading through the same storage, checks and progress.
  std::unique_ptr<ReadPlan> Sibling() const {
    return std::unique_ptr<ReadPlan>(new ReadPlan(storage_, progress_, checks_));
  }

  void AddChunk(ChunkTask task) { chunks_.push_back(std::move(task)); }
  void AddBytes(const EntryMeta& e, Value* slot) { bytes_.push_back({&e, slot}); }
  void AddBytes(BytesTask task) { bytes_.push_back(std::move(task)); }

  // Starts the reads in file order (sequential reads where chunks are many).
  void SortByFile() {
    auto at = [](const ChunkTask& t) {
      const StorageInfo& s = t.entry->chunks[t.chunk].storage;
      return std::tie(s.relative_path, s.offset);
    };
    std::stable_sort(chunks_.begin(), chunks_.end(),
                     [&](const ChunkTask& a, const ChunkTask& b) { return at(a) < at(b); });
  }

  Status Run(int threads) {
    uint64_t total = 0;
    for (const auto& c : chunks_) total += c.entry->chunks[c.chunk].storage.length;
    for (const auto& b : bytes_) total += b.entry->storage.length;
    std::mutex mu;
    Progress p{"read", 0, total, 0, chunks_.size() + bytes_.size()};
    const size_t n = bytes_.size() + chunks_.size();
    // By default one reader per core, or as many requests as the storage
    // serves well at once (an object store's round trips overlap).
    if (threads < 1) threads = std::max(DefaultThreadCount(), storage_.IoParallelism());
    return ParallelFor(n, threads, [&](size_t i) -> Status {
      uint64_t len;
      if (i < bytes_.size()) {
        DCPP_RETURN_IF_ERROR(RunBytesTask(storage_, bytes_[i], *checks_));
        len = bytes_[i].entry->storage.length;
      } else {
        const ChunkTask& t = chunks_[i - bytes_.size()];
        DCPP_RETURN_IF_ERROR(RunChunkTask(storage_, t, *checks_));
        len = t.entry->chunks[t.chunk].storage.length;
      }
      if (progress_) {
        std::lock_guard<std::mutex> lock(mu);
        p.bytes_done += len;
        p.items_done++;
        progress_(p);
      }
      return Status();
    });
  }

  std::span<const BytesTask> bytes() const { return bytes_; }
  std::span<const ChunkTask> chunks() const { return chunks_; }
  std::vector<BytesTask>& mutable_bytes() { return bytes_; }
  std::vector<ChunkTask>& mutable_chunks() { return chunks_; }

 private:
  ReadPlan(storage::Storage& storage, ProgressCallback progress,
           std::shared_ptr<const LoadChecks> checks)
      : storage_(storage), progress_(std::move(progress)), checks_(std::move(checks)) {}

  storage::Storage& storage_;
  ProgressCallback progress_;
  std::shared_ptr<const LoadChecks> checks_;
  std::vector<ChunkTask> chunks_;
  std::vector<BytesTask> bytes_;
};

// The size of each data file a load reads, asked once per file before
// anything is allocated, so plan::CheckStoredSizes can hold .metadata's
// declarations against the bytes really stored.
Result<plan::FileSizes> StoredFileSizes(storage::Storage& storage,
                                        const std::vector<std::string>& files) {
  plan::FileSizes sizes;
  for (const std::string& rel : files) {
    // Opened, not only sized: opening refuses FIFOs and entries whose
    // symlinks leave the checkpoint before anything is allocated.
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::ReadableFile> file, storage.OpenForRead(rel));
    DCPP_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    sizes.emplace(rel, size);
  }
  return sizes;
}

// A load's tensor destinations, planned before any memory is allocated:
// request i (an entry and the global box wanted) goes to caller memory
// (views[i]) or, when allocate[i] is set, into a tensor the load allocates
// for the whole entry once the plan and the stored sizes are checked.
struct Destinations {
  std::vector<plan::TensorRequest> requests;
  std::vector<TensorView> views;
  std::vector<Value*> allocate;

  void AddView(const EntryMeta& e, TensorView view, plan::Box box) {
    requests.push_back({&e, std::move(box)});
    views.push_back(std::move(view));
    allocate.push_back(nullptr);
  }
  void AddAllocated(const EntryMeta& e, Value* slot) {
    requests.push_back({&e, {Shape(e.size.size(), 0), e.size}});
    views.emplace_back();
    allocate.push_back(slot);
  }
};

// Checks `planned` and the values queued in `reads` against the stored
// bytes, allocates the tensors `dest` asks for, and queues every chunk read
// into `reads`. The allocations are uninitialized: a successful plan proves
// that every element is read.
Status PrepareReads(storage::Storage& storage, const plan::TensorReadPlan& planned,
                    Destinations& dest, ReadPlan& reads) {
  std::vector<const EntryMeta*> values;
  for (const BytesTask& b : reads.bytes()) values.push_back(b.entry);
  DCPP_ASSIGN_OR_RETURN(plan::FileSizes sizes,
                        StoredFileSizes(storage, plan::DataFilesRead(planned, values)));
  DCPP_RETURN_IF_ERROR(plan::CheckStoredSizes(
      planned, values, sizes, [](const StorageInfo& s) {
        return transform::MaxDecodedSize(s.transform_descriptors, s.length);
      }));
  for (size_t i = 0; i < dest.requests.size(); ++i) {
    if (dest.allocate[i] == nullptr) continue;
    const EntryMeta& e = *dest.requests[i].entry;
    auto t = Tensor::Empty(e.properties.dtype, e.size);
    if (!t.ok()) return t.status().WithContext(Quoted(e.fqn));
    dest.views[i] = t->view();
    *dest.allocate[i] = Value(std::move(*t));
  }
  for (const plan::ChunkRead& r : planned.reads) {
    ChunkTask task{r.entry, r.chunk, {}};
    for (const auto& piece : r.pieces)
      task.targets.push_back({dest.views[piece.request], dest.requests[piece.request].box});
    reads.AddChunk(std::move(task));
  }
  return Status();
}

Status CheckDType(const format::CompactEntry& e, const Tensor& t) {
  if (t.dtype() == e.properties.dtype) return Status();
  return InvalidArgumentError(Quoted(e.fqn) + ": dtype mismatch: the checkpoint holds " +
                              std::string(TorchName(e.properties.dtype)) + ", the state dict has " +
                              std::string(TorchName(t.dtype())));
}

std::unordered_map<std::string_view, size_t> IndexEntries(const format::CompactMetadata& md) {
  std::unordered_map<std::string_view, size_t> index;
  index.reserve(md.entries.size());
  for (size_t k = 0; k < md.entries.size(); ++k) index.emplace(md.entries[k].fqn, k);
  return index;
}

// What ReadChecksumFile needs of the metadata (its save id).
Metadata HeaderOf(const format::CompactMetadata& md) {
  Metadata header;
  header.storage_meta = md.storage_meta;
  header.version = md.version;
  return header;
}

// A load plans over the compact form of .metadata: every rank holds all of
// the checkpoint's chunks only until its plan is made (LoadLocal), in ~0.4x
// the file's bytes instead of the ~1.25x a Metadata takes.
Result<format::CompactMetadata> DecodeCompact(const storage::Storage& storage,
                                              std::string_view bytes) {
  auto md = format::DecodeCompactMetadata(bytes);
  if (!md.ok()) return md.status().WithContext(storage.Describe(io::kMetadataFileName));
  return md;
}

// The metadata decoded from `bytes`, checked against the sidecar checksum
// file when `verify` and there is one.
Result<format::CompactMetadata> DecodeAndCheckCompact(storage::Storage& storage,
                                                      const std::string& bytes, bool verify) {
  DCPP_ASSIGN_OR_RETURN(format::CompactMetadata md, DecodeCompact(storage, bytes));
  if (!verify) return md;
  DCPP_ASSIGN_OR_RETURN(auto sidecar, storage::ReadChecksumFile(storage, HeaderOf(md)));
  if (sidecar) DCPP_RETURN_IF_ERROR(storage::CheckMetadataBytes(storage, *sidecar, bytes));
  return md;
}
// The same, as a Metadata (LoadAll reads every entry).
Result<Metadata> DecodeAndCheck(storage::Storage& storage, const std::string& bytes,
                                bool verify) {
  DCPP_ASSIGN_OR_RETURN(Metadata md, storage::DecodeCheckpointMetadata(storage, bytes));
  if (!verify) return md;
  DCPP_ASSIGN_OR_RETURN(auto sidecar, storage::ReadChecksumFile(storage, md));
  if (sidecar) DCPP_RETURN_IF_ERROR(storage::CheckMetadataBytes(storage, *sidecar, bytes));
  return md;
}

// Whether `storage` holds safetensors files or a torch.save file (metadata
// synthesized from the files) rather than a DCP checkpoint
// (errors, such as a missing location, leave that to the DCP path, whose
// messages say what is missing).
bool HoldsSafetensors(storage::Storage& storage) {
  auto format = storage::DetectCheckpointFormat(storage);
  return format.ok() && (*format == storage::CheckpointFormat::kSafetensors ||
                         *format == storage::CheckpointFormat::kTorchSave);
}

// What the coordinator shares instead of .metadata bytes when the location
// holds safetensors files: every rank then reads the headers itself (the
// synthesized metadata has no DCP encoding). No .metadata starts this way
// (a pickle starts with its PROTO opcode, 0x80).
constexpr std::string_view kSafetensorsMarker = "dcpp:safetensors";

Result<Metadata> ReadCheckedMetadata(storage::Storage& storage, bool verify) {
  if (HoldsSafetensors(storage)) return storage::ReadAnyCheckpointMetadata(storage);
  DCPP_ASSIGN_OR_RETURN(std::string bytes, storage::ReadCheckpointMetadataBytes(storage));
  return DecodeAndCheck(storage, bytes, verify);
}

// The reads' checks: the sidecar is read by every rank (each reads its own
// pickled values).
Result<LoadChecks> MakeLoadChecks(storage::Storage& storage, const Metadata& md, bool verify) {
  LoadChecks checks;
  checks.verify = verify;
  if (verify) {
    DCPP_ASSIGN_OR_RETURN(checks.sidecar, storage::ReadChecksumFile(storage, md));
  }
  return checks;
}

// The metadata for a load: read from storage once per job, by rank 0,
// which checks it and broadcasts its bytes (or its error), so N ranks do
// not all read the same file from shared storage and a missing or damaged
// file gives every rank rank 0's error; each rank decodes the bytes.
Result<format::CompactMetadata> SharedMetadata(ProcessGroup& pg, storage::Storage& storage,
                                               bool verify) {
  if (pg.size() == 1) {
    if (HoldsSafetensors(storage)) {
      DCPP_ASSIGN_OR_RETURN(Metadata md, storage::ReadAnyCheckpointMetadata(storage));
      return format::Compact(std::move(md));
    }
    DCPP_ASSIGN_OR_RETURN(std::string bytes, storage::ReadCheckpointMetadataBytes(storage));
    return DecodeAndCheckCompact(storage, bytes, verify);
  }
  constexpr int kCoordinator = 0;
  std::string shared;
  std::optional<Result<format::CompactMetadata>> mine;
  if (pg.rank() == kCoordinator) {
    // An exception here would leave the other ranks waiting in Broadcast.
    const std::string op = "reading the metadata of " + storage.Describe("");
    auto detected =
        CatchExceptions(op, [&]() -> Result<bool> { return HoldsSafetensors(storage); });
    const bool safetensors = detected.ok() && *detected;
    Result<std::string> bytes = std::string(kSafetensorsMarker);
    if (safetensors) {
      mine = CatchExceptions(op, [&]() -> Result<format::CompactMetadata> {
        DCPP_ASSIGN_OR_RETURN(Metadata md, storage::ReadAnyCheckpointMetadata(storage));
        return format::Compact(std::move(md));
      });
    } else {
      bytes = CatchExceptions(op, [&] { return storage::ReadCheckpointMetadataBytes(storage); });
      mine = bytes.ok() ? CatchExceptions(
                              op, [&] { return DecodeAndCheckCompact(storage, *bytes, verify); })
                        : Result<format::CompactMetadata>(bytes.status());
    }
    shared = engine::EncodeSharedMetadata(mine->status(), mine->ok() ? *bytes : std::string());
  }
  DCPP_ASSIGN_OR_RETURN(std::string msg, pg.Broadcast(std::move(shared), kCoordinator));
  if (mine) return std::move(*mine);
  Status status;
  std::string bytes;
  DCPP_RETURN_IF_ERROR(engine::DecodeSharedMetadata(msg, &status, &bytes));
  if (!status.ok()) return status;
  if (bytes == kSafetensorsMarker) {
    DCPP_ASSIGN_OR_RETURN(Metadata md, storage::ReadAnyCheckpointMetadata(storage));
    return format::Compact(std::move(md));
  }
  return DecodeCompact(storage, bytes);
}

// A rank's planned load: the reads, over a Metadata holding only the
// entries this rank loads, each with only the chunks it reads (the reads
// point into it, so it lives as long as they do).
struct PreparedLoad {
  std::unique_ptr<Metadata> metadata;
  std::unique_ptr<ReadPlan> reads;
};

// Plans this rank's reads into `state_dict` (Stateful already resolved):
// checks the plan against the stored sizes and allocates what the load
// allocates; the reads go through `data_storage`. Plans over the compact
// metadata `md`, which it frees once the plan is made.
Result<PreparedLoad> PrepareLocal(Value& state_dict, format::CompactMetadata&& md,
                                  storage::Storage& storage, storage::Storage& data_storage,
                                  const LoadOptions& o) {
  const std::string dir = storage.Describe("");
  const auto index = IndexEntries(md);
  DCPP_ASSIGN_OR_RETURN(auto flat, plan::FlattenMutable(state_dict));
  auto count_missing = [&](const auto& entries) {
    size_t n = 0;
    for (const auto& f : entries) n += !index.count(f.fqn);
    return n;
  };
  if (count_missing(flat) > 0) {
    // Checkpoints written by torch <= 2.3 stored dicts of plain values whole.
    auto legacy = plan::FlattenMutable(state_dict, plan::Traversal::kV2_3);
    if (legacy.ok() && count_missing(*legacy) == 0) flat = std::move(*legacy);
  }
  std::vector<std::string> missing;
  // Request i goes to views[i], or into a tensor allocated for slots[i].
  std::vector<plan::CompactRequest> requests;
  std::vector<TensorView> views;
  std::vector<Value*> slots;
  std::vector<size_t> values;
  std::vector<Value*> value_slots;
  for (auto& f : flat) {
    auto it = index.find(f.fqn);
    if (it == index.end()) {
      missing.push_back(f.fqn);
      continue;
    }
    const size_t k = it->second;
    const format::CompactEntry& e = md.entries[k];
    Value& leaf = *f.value;
    if (leaf.kind() == Value::Kind::kStateful)
      return InvalidArgumentError(Quoted(e.fqn) +
                                  ": Stateful objects are supported only at the top level of a "
                                  "state dict (as in DCP)");
    if (!e.is_tensor()) {
      values.push_back(k);
      value_slots.push_back(&leaf);
      continue;
    }
    if (leaf.is_sharded()) {
      const ShardedTensor& st = leaf.sharded();
      if (st.global_shape != e.size)
        return InvalidArgumentError(
            Quoted(e.fqn) + ": shape mismatch: the checkpoint holds " + ShapeToString(e.size) +
            ", the sharded tensor's global shape is " + ShapeToString(st.global_shape));
      for (const auto& shard : st.shards) {
        DCPP_RETURN_IF_ERROR(CheckDType(e, shard.local));
        requests.push_back({k, {shard.offsets, shard.local.shape()}});
        views.push_back(shard.local.view());
        slots.push_back(nullptr);
      }
      continue;
    }
    if (!leaf.is_tensor()) {
      requests.push_back({k, {Shape(e.size.size(), 0), e.size}});
      views.emplace_back();
      slots.push_back(&leaf);
      continue;
    }
    const Tensor& t = leaf.tensor();
    DCPP_RETURN_IF_ERROR(CheckDType(e, t));
    if (t.shape() != e.size)
      return InvalidArgumentError(Quoted(e.fqn) + ": shape mismatch: the checkpoint holds " +
                                  ShapeToString(e.size) + ", the state dict has " +
                                  ShapeToString(t.shape()));
    requests.push_back({k, {Shape(e.size.size(), 0), e.size}});
    views.push_back(t.view());
    slots.push_back(nullptr);
  }
  DCPP_ASSIGN_OR_RETURN(plan::PrunedLoad pruned, plan::PlanLoad(md, requests, values));
  if (!missing.empty() && !o.allow_partial_load) {
    std::string list;
    for (size_t i = 0; i < missing.size() && i < 5; ++i)
      list += (i ? ", " : "") + Quoted(missing[i]);
    if (missing.size() > 5) list += ", ...";
    return NotFoundError("checkpoint " + dir + " lacks " + std::to_string(missing.size()) +
                         " key(s) of the state dict: " + list +
                         " (allow_partial_load skips missing keys)");
  }
  md = format::CompactMetadata();  // a rank keeps only what its plan needs
  DCPP_ASSIGN_OR_RETURN(LoadChecks checks,
                        MakeLoadChecks(storage, *pruned.metadata, o.verify_checksums));
  PreparedLoad prepared;
  prepared.reads = std::make_unique<ReadPlan>(data_storage, o.progress, std::move(checks));
  for (size_t i = 0; i < pruned.values.size(); ++i)
    prepared.reads->AddBytes(*pruned.values[i], value_slots[i]);
  Destinations dest;
  dest.requests = std::move(pruned.requests);
  dest.views = std::move(views);
  dest.allocate = std::move(slots);
  DCPP_RETURN_IF_ERROR(
      PrepareReads(storage, pruned.plan, dest, *prepared.reads).WithContext("loading " + dir));
  prepared.metadata = std::move(pruned.metadata);
  return prepared;
}

// ---- Ranks of one process sharing their reads ----

// A random number drawn once per process, with the process id: equal for
// two ranks only when they run in the same process (a forked child keeps
// the number but not the pid), so only then may they use each other's
// pointers.
std::array<uint64_t, 3> ProcessIdentity() {
  static const std::array<uint64_t, 2> nonce = [] {
    std::array<uint64_t, 2> n{};
    try {
      std::random_device rd;
      for (auto& v : n) v = (uint64_t{rd()} << 32) ^ rd();
    } catch (...) {
      // No entropy source: the clock and an address still tell processes apart.
      n[0] = static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
      n[1] = reinterpret_cast<uintptr_t>(&n);
    }
    return n;
  }();
  return {nonce[0], nonce[1], static_cast<uint64_t>(::getpid())};
}

// What a rank tells the others before reading: its status so far, whether
// it offers to share, who it is, and (meaningful only in its own process)
// where its reads are.
struct ReadOffer {
  Status status;
  bool share = false;
  std::array<uint64_t, 3> identity{};
  uint64_t entries = 0;  // md.entries.size(): all ranks decoded the same metadata
  const Metadata* md = nullptr;
  const ReadPlan* reads = nullptr;
};

std::string EncodeReadOffer(const ReadOffer& o) {
  engine::WireWriter w;
  w.Status(o.status);
  w.U64(o.share);
  for (uint64_t v : o.identity) w.U64(v);
  w.U64(o.entries);
  w.U64(reinterpret_cast<uintptr_t>(o.md));
  w.U64(reinterpret_cast<uintptr_t>(o.reads));
  return w.Take();
}

Result<ReadOffer> DecodeReadOffer(std::string_view data) {
  engine::WireReader r(data);
  ReadOffer o;
  DCPP_RETURN_IF_ERROR(r.ReadStatus(&o.status));
  DCPP_ASSIGN_OR_RETURN(uint64_t share, r.U64());
  o.share = share != 0;
  for (auto& v : o.identity) {
    DCPP_ASSIGN_OR_RETURN(v, r.U64());
  }
  DCPP_ASSIGN_OR_RETURN(o.entries, r.U64());
  DCPP_ASSIGN_OR_RETURN(uint64_t md, r.U64());
  DCPP_ASSIGN_OR_RETURN(uint64_t reads, r.U64());
  if (!r.done()) return DataLossError("load: a rank's read offer has trailing bytes");
  o.md = reinterpret_cast<const Metadata*>(static_cast<uintptr_t>(md));
  o.reads = reinterpret_cast<const ReadPlan*>(static_cast<uintptr_t>(reads));
  return o;
}

// The reads of all ranks of one process, each saved chunk and each value
// once with every rank's targets, assigned to ranks so that each reads
// about the same number of stored bytes (largest first, each to the rank
// with the fewest bytes so far, the lowest on a tie). A stored item is
// known by its place (file, offset), the same for every rank whatever part
// of the metadata each kept. Every rank computes the same assignment from
// the same offers; rank `me`'s share is added to `mine`, whose tasks may
// point into another rank's metadata. Only reads the offers' plans and
// metadata, which their ranks leave unchanged until every rank has read.
void AssignSharedReads(std::span<const ReadOffer> offers, int me, ReadPlan& mine) {
  struct Unit {
    const EntryMeta* entry;
    size_t chunk;  // SIZE_MAX: a value
    uint64_t bytes;
    std::vector<TensorTarget> targets;
    std::vector<Value*> slots;
  };
  std::vector<Unit> units;
  std::map<std::tuple<std::string_view, uint64_t, bool>, size_t> index;
  auto unit = [&](const EntryMeta* e, size_t chunk, const StorageInfo& at) -> Unit& {
    auto [it, fresh] = index.try_emplace(
        std::make_tuple(std::string_view(at.relative_path), at.offset, chunk == SIZE_MAX),
        units.size());
    if (fresh) units.push_back({e, chunk, at.length, {}, {}});
    return units[it->second];
  };
  for (const ReadOffer& o : offers) {
    for (const ChunkTask& t : o.reads->chunks()) {
      Unit& u = unit(t.entry, t.chunk, t.entry->chunks[t.chunk].storage);
      u.targets.insert(u.targets.end(), t.targets.begin(), t.targets.end());
    }
    for (const BytesTask& b : o.reads->bytes()) {
      Unit& u = unit(b.entry, SIZE_MAX, b.entry->storage);
      u.slots.push_back(b.slot);
    }
  }
  std::vector<size_t> order(units.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return units[a].bytes > units[b].bytes; });
  std::vector<uint64_t> load(offers.size(), 0);
  for (size_t i : order) {
    const size_t owner =
        static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    load[owner] += std::max<uint64_t>(units[i].bytes, 1);
    if (owner != static_cast<size_t>(me)) continue;
    Unit& u = units[i];
    if (u.chunk == SIZE_MAX) {
      BytesTask task{u.entry, u.slots[0], {}};
      task.more_slots.assign(u.slots.begin() + 1, u.slots.end());
      mine.AddBytes(std::move(task));
    } else {
      mine.AddChunk({u.entry, u.chunk, std::move(u.targets)});
    }
  }
  mine.SortByFile();
}

// ---- Replicated entries across processes: read once, sent to the others ----

bool IsWholeBox(const plan::Box& box, const EntryMeta& e) {
  if (box.sizes != e.size) return false;
  for (int64_t o : box.offsets)
    if (o != 0) return false;
  return true;
}

// The entries a rank needs whole, by FQN (the same for every rank, whatever
// part of the metadata each kept), each with whether it is a pickled value
// and its bytes: its values, then the tensors it asks for in full
// (replicated state).
std::string EncodeWholeEntries(const ReadPlan& reads) {
  std::map<std::string_view, std::pair<bool, uint64_t>> whole;
  for (const BytesTask& b : reads.bytes())
    whole.emplace(b.entry->fqn, std::make_pair(true, b.entry->storage.length));
  for (const ChunkTask& t : reads.chunks())
    for (const TensorTarget& target : t.targets)
      if (IsWholeBox(target.box, *t.entry))
        whole.emplace(t.entry->fqn,
                      std::make_pair(false, static_cast<uint64_t>(NumElements(t.entry->size)) *
                                                ElementSize(t.entry->properties.dtype)));
  engine::WireWriter w;
  w.U64(whole.size());
  for (const auto& [fqn, what] : whole) {
    w.Str(fqn);
    w.U64(what.first);
    w.U64(what.second);
  }
  return w.Take();
}

// An entry that several ranks need whole: read by `owner`, sent to the rest.
struct SharedEntry {
  std::string fqn;
  bool value = false;
  int owner = 0;
  uint64_t bytes = 0;        // tensor bytes, or the value's stored length
  std::vector<int> ranks;    // every rank that needs it, the owner included
};

// Which entries travel and in which AllGather round: the same on every
// rank (computed from the same messages).
struct SharedEntries {
  std::vector<SharedEntry> entries;         // in FQN order
  std::vector<std::vector<size_t>> rounds;  // indices into `entries`
};

// At most this many bytes of shared entries travel per round (every rank
// receives a round's bytes at once), unless one entry is larger.
constexpr uint64_t kShareRoundBytes = uint64_t{256} << 20;

Result<SharedEntries> PlanSharedEntries(std::span<const std::string> messages) {
  std::map<std::string, SharedEntry, std::less<>> wanted;
  for (size_t r = 0; r < messages.size(); ++r) {
    engine::WireReader in(messages[r]);
    const std::string who = "load: rank " + std::to_string(r);
    DCPP_ASSIGN_OR_RETURN(uint64_t n, in.U64());
    if (n > messages[r].size()) return DataLossError(who + " names too many entries");
    for (uint64_t i = 0; i < n; ++i) {
      DCPP_ASSIGN_OR_RETURN(std::string_view fqn, in.StrView());
      DCPP_ASSIGN_OR_RETURN(uint64_t value, in.U64());
      DCPP_ASSIGN_OR_RETURN(uint64_t bytes, in.U64());
      auto it = wanted.find(fqn);
      if (it == wanted.end()) {
        it = wanted.emplace(std::string(fqn), SharedEntry{}).first;
        it->second.fqn = std::string(fqn);
        it->second.value = value != 0;
        it->second.bytes = bytes;
      } else if (it->second.value != (value != 0) || it->second.bytes != bytes) {
        return DataLossError(who + " sees entry " + Quoted(fqn) + " differently from rank " +
                             std::to_string(it->second.ranks.front()));
      }
      it->second.ranks.push_back(static_cast<int>(r));
    }
    if (!in.done()) return DataLossError(who + "'s list is long");
  }
  SharedEntries out;
  for (auto& [fqn, s] : wanted) {
    if (s.ranks.size() < 2) continue;
    if (!s.value && s.bytes == 0) continue;  // nothing to read or send
    out.entries.push_back(std::move(s));
  }
  // Owners: largest first, each to the rank needing it that owns the
  // fewest bytes so far (the lowest on a tie).
  std::vector<size_t> order(out.entries.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return out.entries[a].bytes > out.entries[b].bytes;
  });
  std::vector<uint64_t> owned(messages.size(), 0);
  for (size_t i : order) {
    SharedEntry& s = out.entries[i];
    int best = s.ranks[0];
    for (int r : s.ranks)
      if (owned[r] < owned[best]) best = r;
    s.owner = best;
    owned[best] += std::max<uint64_t>(s.bytes, 1);
  }
  uint64_t in_round = 0;
  for (size_t i = 0; i < out.entries.size(); ++i) {
    if (out.rounds.empty() || in_round + out.entries[i].bytes > kShareRoundBytes) {
      out.rounds.emplace_back();
      in_round = 0;
    }
    out.rounds.back().push_back(i);
    in_round += out.entries[i].bytes;
  }
  return out;
}

// This rank's part in the shared entries: what it sends and where what it
// receives goes.
struct EntryTraffic {
  std::vector<TensorView> send_tensor;   // by shared entry: the owner's copy
  std::vector<std::string> send_value;   // by shared entry: the owner's archive
  std::vector<std::vector<TensorView>> recv_tensor;  // by shared entry
  std::vector<std::vector<Value*>> recv_value;       // by shared entry
};

// Takes the shared entries this rank receives out of its reads, and marks
// those it owns so their bytes are kept for sending.
void ApplySharedEntries(const SharedEntries& shared, int me, ReadPlan& reads,
                        EntryTraffic& traffic) {
  const size_t n = shared.entries.size();
  traffic.send_tensor.assign(n, TensorView());
  traffic.send_value.assign(n, std::string());
  traffic.recv_tensor.assign(n, {});
  traffic.recv_value.assign(n, {});
  std::unordered_map<std::string_view, size_t> by_entry;  // FQN -> shared entry
  for (size_t i = 0; i < n; ++i)
    if (std::find(shared.entries[i].ranks.begin(), shared.entries[i].ranks.end(), me) !=
        shared.entries[i].ranks.end())
      by_entry.emplace(shared.entries[i].fqn, i);
  auto find = [&](const EntryMeta* e) -> const SharedEntry* {
    auto it = by_entry.find(e->fqn);
    return it == by_entry.end() ? nullptr : &shared.entries[it->second];
  };
  auto& bytes = reads.mutable_bytes();
  std::vector<BytesTask> kept;
  for (BytesTask& b : bytes) {
    const SharedEntry* s = find(b.entry);
    if (!s) {
      kept.push_back(std::move(b));
      continue;
    }
    const size_t i = static_cast<size_t>(s - shared.entries.data());
    if (s->owner == me) {
      b.keep_archive = &traffic.send_value[i];
      kept.push_back(std::move(b));
    } else {
      traffic.recv_value[i].push_back(b.slot);
    }
  }
  bytes = std::move(kept);
  auto& chunks = reads.mutable_chunks();
  std::vector<ChunkTask> left;
  for (ChunkTask& t : chunks) {
    const SharedEntry* s = find(t.entry);
    if (!s) {
      left.push_back(std::move(t));
      continue;
    }
    const size_t i = static_cast<size_t>(s - shared.entries.data());
    std::vector<TensorTarget> targets;
    for (TensorTarget& target : t.targets) {
      if (!IsWholeBox(target.box, *t.entry)) {
        targets.push_back(std::move(target));
        continue;
      }
      if (s->owner == me) {
        if (!traffic.send_tensor[i].data) traffic.send_tensor[i] = target.view;
        targets.push_back(std::move(target));
      } else {
        // Once per destination (each chunk's task names it again).
        bool known = false;
        for (const TensorView& v : traffic.recv_tensor[i]) known |= v.data == target.view.data;
        if (!known) traffic.recv_tensor[i].push_back(target.view);
      }
    }
    if (!targets.empty()) {
      t.targets = std::move(targets);
      left.push_back(std::move(t));
    }
  }
  chunks = std::move(left);
}

// A round's message: this rank's status, then (if OK) the shared entries of
// the round it owns, each as its index and bytes.
Result<std::string> EncodeRound(const SharedEntries& shared, const std::vector<size_t>& round,
                                int me, const Status& local, EntryTraffic& traffic) {
  engine::WireWriter w;
  w.Status(local);
  if (!local.ok()) return w.Take();
  for (size_t i : round) {
    const SharedEntry& s = shared.entries[i];
    if (s.owner != me) continue;
    w.U64(i);
    if (s.value) {
      w.Str(traffic.send_value[i]);
      std::string().swap(traffic.send_value[i]);
      continue;
    }
    const TensorView& v = traffic.send_tensor[i];
    std::string packed(v.nbytes(), '\0');
    TensorView to = v;
    to.data = packed.data();
    to.strides = ContiguousStrides(v.shape);
    DCPP_RETURN_IF_ERROR(CopyTensor(v, to));
    w.Str(packed);
  }
  return w.Take();
}

// Takes what this rank receives out of a round's messages. A sender that
// failed sent its status only: its entries stay unread here, and the load's
// final exchange of statuses reports its error on every rank.
Status ReceiveRound(const SharedEntries& shared, std::span<const std::string> messages,
                    EntryTraffic& traffic) {
  for (size_t r = 0; r < messages.size(); ++r) {
    engine::WireReader in(messages[r]);
    Status sender;
    DCPP_RETURN_IF_ERROR(in.ReadStatus(&sender));
    if (!sender.ok()) continue;
    while (!in.done()) {
      DCPP_ASSIGN_OR_RETURN(uint64_t i, in.U64());
      DCPP_ASSIGN_OR_RETURN(std::string_view bytes, in.StrView());
      if (i >= shared.entries.size() || shared.entries[i].owner != static_cast<int>(r))
        return DataLossError("load: rank " + std::to_string(r) + " sent an entry it does not own");
      const SharedEntry& s = shared.entries[i];
      const std::string from = " (read by rank " + std::to_string(r) + ")";
      if (s.value) {
        if (traffic.recv_value[i].empty()) continue;
        auto value = format::DecodeValueArchive(format::zip::AsBytes(bytes), Quoted(s.fqn));
        if (!value.ok()) return value.status().WithContext(Quoted(s.fqn) + from);
        for (Value* slot : traffic.recv_value[i]) *slot = *value;
        continue;
      }
      for (const TensorView& dst : traffic.recv_tensor[i]) {
        if (bytes.size() != dst.nbytes())
          return DataLossError(Quoted(s.fqn) + from + ": " + std::to_string(bytes.size()) +
                               " bytes arrived for a tensor of " + std::to_string(dst.nbytes()));
        TensorView src = dst;
        src.data = const_cast<char*>(bytes.data());
        src.strides = ContiguousStrides(dst.shape);
        DCPP_RETURN_IF_ERROR(CopyTensor(src, dst).WithContext(Quoted(s.fqn)));
      }
    }
  }
  return Status();
}

// Load without its exception barrier. The rank-local parts run through
// CatchExceptions themselves, so a rank that runs out of memory still takes
// part in every collective. `data_storage` wraps `storage` (both count what
// they read for `stats`).
Status LoadImpl(Value& state_dict, storage::Storage& storage, storage::Storage& data_storage,
                const LoadOptions& o, LoadStats& stats) {
  const std::string dir = storage.Describe("");
  std::unique_ptr<ProcessGroup> single;
  ProcessGroup& pg = o.process_group ? *o.process_group : *(single = MakeSingleProcessGroup());
  DCPP_ASSIGN_OR_RETURN(format::CompactMetadata md,
                        SharedMetadata(pg, storage, o.verify_checksums));
  // Every rank decoded the same .metadata: the count tells them apart from
  // ranks loading another checkpoint.
  const uint64_t entry_count = md.entries.size();

  // Top-level Stateful values load through their StateDict() and are then
  // handed the result, as DCP does.
  std::vector<std::pair<size_t, std::shared_ptr<Stateful>>> stateful;
  Value working;
  Value* target = &state_dict;
  Status local;
  if (state_dict.is_dict()) {
    for (size_t i = 0; i < state_dict.dict().size(); ++i)
      if (state_dict.dict().values()[i].kind() == Value::Kind::kStateful)
        stateful.push_back({i, state_dict.dict().values()[i].stateful()});
  }
  if (!stateful.empty()) {
    working = state_dict;
    target = &working;
    for (auto& [i, obj] : stateful) {
      auto sd = obj->StateDict();
      if (!sd.ok()) {
        local =
            sd.status().WithContext("Stateful '" + working.dict().keys()[i].DebugString() + "'");
        break;
      }
      working.dict().mutable_values()[i] = std::move(*sd);
    }
  }
  PreparedLoad prepared;
  if (local.ok()) {
    local = CatchExceptions("load from " + dir, [&]() -> Status {
      DCPP_ASSIGN_OR_RETURN(prepared,
                            PrepareLocal(*target, std::move(md), storage, data_storage, o));
      return Status();
    });
  }
  md = format::CompactMetadata();  // a rank keeps only what its plan needs
  std::unique_ptr<ReadPlan>& reads = prepared.reads;
  bool shared = false;
  bool all_share = false;
  if (pg.size() > 1) {
    // Every rank learns whether every rank is ready to read (a rank that
    // failed stops them all before anything is read) and whether they all
    // share one process.
    ReadOffer offer{local,        o.share_reads,           ProcessIdentity(),
                    entry_count,  prepared.metadata.get(), reads.get()};
    DCPP_ASSIGN_OR_RETURN(std::vector<std::string> all, pg.AllGather(EncodeReadOffer(offer)));
    std::vector<ReadOffer> offers;
    std::vector<Status> statuses;
    for (const std::string& m : all) {
      auto decoded = DecodeReadOffer(m);
      statuses.push_back(decoded.ok() ? decoded->status : decoded.status());
      if (decoded.ok()) offers.push_back(std::move(*decoded));
    }
    DCPP_RETURN_IF_ERROR(engine::CombineRankFailures("load", statuses));
    all_share = true;
    shared = true;
    for (const ReadOffer& other : offers) {
      all_share = all_share && other.share && other.entries == offer.entries;
      shared = shared && other.identity == offer.identity && other.md && other.reads;
    }
    shared = shared && all_share;
    if (shared) {
      stats.shared = true;
      std::unique_ptr<ReadPlan> mine = reads->Sibling();
      Status read = CatchExceptions("load from " + dir, [&]() -> Status {
        AssignSharedReads(offers, pg.rank(), *mine);
        Status s = mine->Run(o.io_threads).WithContext("loading " + dir);
        stats.chunks_read = mine->chunks().size();
        stats.values_read = mine->bytes().size();
        return s;
      });
      // No rank goes on while another may still be writing into its memory
      // (or reading its plan).
      DCPP_ASSIGN_OR_RETURN(std::vector<std::string> done, pg.AllGather(engine::EncodeStatus(read)));
      DCPP_RETURN_IF_ERROR(engine::CombineRankFailures("load", engine::DecodeStatuses(done)));
    }
  }
  if (!shared) {
    // Ranks in several processes: each reads what it needs, except that an
    // entry several ranks need whole (replicated state, pickled values) is
    // read by one of them and sent to the others.
    std::optional<SharedEntries> entries;
    EntryTraffic traffic;
    if (all_share) {
      auto message =
          CatchExceptions("load from " + dir, [&]() -> Result<std::string> {
            return EncodeWholeEntries(*reads);
          });
      // An unencodable list (no memory) reaches the others as one that does
      // not decode: every rank then stops with the same error.
      DCPP_ASSIGN_OR_RETURN(std::vector<std::string> lists,
                            pg.AllGather(message.ok() ? std::move(*message) : std::string()));
      auto planned = CatchExceptions("load from " + dir,
                                     [&] { return PlanSharedEntries(lists); });
      if (!planned.ok()) return planned.status().WithContext("loading " + dir);
      entries = std::move(*planned);
      local = CatchExceptions("load from " + dir, [&] {
        ApplySharedEntries(*entries, pg.rank(), *reads, traffic);
        return Status();
      });
    }
    if (local.ok()) {
      local = CatchExceptions("load from " + dir, [&] {
        stats.chunks_read = reads->chunks().size();
        stats.values_read = reads->bytes().size();
        return reads->Run(o.io_threads).WithContext("loading " + dir);
      });
    }
    if (entries) {
      for (const std::vector<size_t>& round : entries->rounds) {
        auto message = CatchExceptions("load from " + dir, [&] {
          return EncodeRound(*entries, round, pg.rank(), local, traffic);
        });
        if (!message.ok()) {
          local = message.status();
          message = EncodeRound(*entries, round, pg.rank(), local, traffic);
        }
        DCPP_ASSIGN_OR_RETURN(std::vector<std::string> sent,
                              pg.AllGather(message.ok() ? std::move(*message) : std::string()));
        if (local.ok()) {
          local = CatchExceptions("load from " + dir, [&] {
            return ReceiveRound(*entries, sent, traffic).WithContext("loading " + dir);
          });
        }
      }
    }
  }
  prepared = PreparedLoad();  // the reads, then the metadata they point into
  if (local.ok() && !stateful.empty()) {
    for (auto& [i, obj] : stateful) {
      local = obj->LoadStateDict(working.dict().values()[i]);
      if (!local.ok()) break;
    }
    for (size_t i = 0; local.ok() && i < working.dict().size(); ++i)
      if (working.dict().values()[i].kind() != Value::Kind::kStateful &&
          state_dict.dict().values()[i].kind() != Value::Kind::kStateful)
        state_dict.dict().mutable_values()[i] = std::move(working.dict().mutable_values()[i]);
  }
  if (pg.size() == 1) return local;
  // Every rank returns the same status.
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> all, pg.AllGather(engine::EncodeStatus(local)));
  return engine::CombineRankFailures("load", engine::DecodeStatuses(all));
}

Result<Value> LoadAllImpl(storage::Storage& storage, const LoadAllOptions& o) {
  const std::string dir = storage.Describe("");
  DCPP_ASSIGN_OR_RETURN(Metadata md, ReadCheckedMetadata(storage, o.verify_checksums));
  auto selected = [&](const EntryMeta& e) {
    if (o.keys.empty()) return true;
    for (const auto& k : o.keys)
      if (k == e.fqn) return true;
    std::string prefix;
    for (const auto& part : e.path) {
      if (!prefix.empty()) prefix += '.';
      prefix += plan::PathToFqn({part});
      for (const auto& k : o.keys)
        if (k == prefix) return true;
    }
    return false;
  };
  std::vector<const EntryMeta*> entries;
  for (const auto& e : md.entries)
    if (selected(e)) entries.push_back(&e);
  std::vector<Value> values(entries.size());
  DCPP_ASSIGN_OR_RETURN(LoadChecks checks, MakeLoadChecks(storage, md, o.verify_checksums));
  ReadPlan reads(storage, o.progress, std::move(checks));
  Destinations dest;
  for (size_t i = 0; i < entries.size(); ++i) {
    const EntryMeta& e = *entries[i];
    if (e.is_tensor())
      dest.AddAllocated(e, &values[i]);
    else
      reads.AddBytes(e, &values[i]);
  }
  DCPP_ASSIGN_OR_RETURN(plan::TensorReadPlan planned, plan::PlanTensorReads(dest.requests));
  DCPP_RETURN_IF_ERROR(PrepareReads(storage, planned, dest, reads).WithContext("loading " + dir));
  DCPP_RETURN_IF_ERROR(reads.Run(o.io_threads).WithContext("loading " + dir));
  Value root = Value::EmptyDict();
  for (size_t i = 0; i < entries.size(); ++i) {
    const EntryMeta& e = *entries[i];
    ObjectPath path = e.path.empty() ? ObjectPath{e.fqn} : e.path;
    DCPP_RETURN_IF_ERROR(plan::SetElement(root, path, std::move(values[i]))
                             .WithContext("rebuilding " + Quoted(e.fqn)));
  }
  return root;
}

}  // namespace

namespace engine {

Result<Metadata> ReadMetadata(storage::Storage& storage) {
  return CatchExceptions("reading the metadata of " + storage.Describe(""),
                         [&] { return storage::ReadAnyCheckpointMetadata(storage); });
}

Status Load(Value& state_dict, storage::Storage& storage, const LoadOptions& o) {
  CountingStorage counted(storage);
  CountingStorage data(static_cast<storage::Storage&>(counted));
  LoadStats stats;
  Status s = CatchExceptions("load from " + storage.Describe(""),
                             [&] { return LoadImpl(state_dict, counted, data, o, stats); });
  if (o.stats) {
    stats.bytes_read = counted.bytes_read();
    stats.data_bytes_read = data.bytes_read();
    *o.stats = stats;
  }
  return s;
}

Result<Value> LoadAll(storage::Storage& storage, const LoadAllOptions& o) {
  return CatchExceptions("load from " + storage.Describe(""),
                         [&] { return LoadAllImpl(storage, o); });
}

}  // namespace engine

Result<Metadata> ReadMetadata(const std::string& dir) {
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> storage, storage::OpenStorage(dir));
  return engine::ReadMetadata(*storage);
}

Status Load(Value& state_dict, const std::string& dir, const LoadOptions& o) {
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> storage, storage::OpenStorage(dir));
  return engine::Load(state_dict, *storage, o);
}

Result<Value> LoadAll(const std::string& dir, const LoadAllOptions& o) {
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> storage, storage::OpenStorage(dir));
  return engine::LoadAll(*storage, o);
}

}  // namespace dcpp
