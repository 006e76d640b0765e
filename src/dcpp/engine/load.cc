// dcpp::Load / LoadAll / ReadMetadata: collect the requested tensors, have
// plan/load_planner decide which saved chunks each needs (box intersection,
// so any saved sharding loads) and check the plan against the stored bytes,
// then allocate, read each needed chunk once, in parallel, and copy the
// overlaps into place.
#include <mutex>
#include <optional>
#include <unordered_map>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/checkpoint.h"
#include "dcpp/engine/engine.h"
#include "dcpp/engine/wire.h"
#include "dcpp/format/compact_metadata.h"
#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/storage/checksum_file.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/safetensors_layout.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/plan/compact_load_planner.h"
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

// One BYTE_IO value to read into `slot`.
struct BytesTask {
  const EntryMeta* entry;
  Value* slot;
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
  *task.slot = std::move(*value);
  return Status();
}

// Runs a load's reads: chunk tasks (built from a checked plan) and values.
class ReadPlan {
 public:
  ReadPlan(storage::Storage& storage, ProgressCallback progress, LoadChecks checks)
      : storage_(storage), progress_(std::move(progress)), checks_(std::move(checks)) {}

  void AddChunk(ChunkTask task) { chunks_.push_back(std::move(task)); }
  void AddBytes(const EntryMeta& e, Value* slot) { bytes_.push_back({&e, slot}); }

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
        DCPP_RETURN_IF_ERROR(RunBytesTask(storage_, bytes_[i], checks_));
        len = bytes_[i].entry->storage.length;
      } else {
        const ChunkTask& t = chunks_[i - bytes_.size()];
        DCPP_RETURN_IF_ERROR(RunChunkTask(storage_, t, checks_));
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

 private:
  storage::Storage& storage_;
  ProgressCallback progress_;
  LoadChecks checks_;
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

// Plans and runs this rank's reads into `state_dict` (Stateful already
// resolved). Plans over the compact metadata `md`, which it frees once the
// plan is made: the reads run over a Metadata holding only the entries this
// rank loads, each with only the chunks it reads.
Status LoadLocal(Value& state_dict, format::CompactMetadata&& md, storage::Storage& storage,
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
  ReadPlan reads(storage, o.progress, std::move(checks));
  for (size_t i = 0; i < pruned.values.size(); ++i) reads.AddBytes(*pruned.values[i], value_slots[i]);
  Destinations dest;
  dest.requests = std::move(pruned.requests);
  dest.views = std::move(views);
  dest.allocate = std::move(slots);
  DCPP_RETURN_IF_ERROR(PrepareReads(storage, pruned.plan, dest, reads).WithContext("loading " + dir));
  return reads.Run(o.io_threads).WithContext("loading " + dir);
}

// Load without its exception barrier. The rank-local part runs through
// CatchExceptions itself, so a rank that runs out of memory still takes
// part in the final collective.
Status LoadImpl(Value& state_dict, storage::Storage& storage, const LoadOptions& o) {
  const std::string dir = storage.Describe("");
  std::unique_ptr<ProcessGroup> single;
  ProcessGroup& pg = o.process_group ? *o.process_group : *(single = MakeSingleProcessGroup());
  DCPP_ASSIGN_OR_RETURN(format::CompactMetadata md,
                        SharedMetadata(pg, storage, o.verify_checksums));

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
  if (local.ok())
    local = CatchExceptions("load from " + dir,
                            [&] { return LoadLocal(*target, std::move(md), storage, o); });
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
  return CatchExceptions("load from " + storage.Describe(""),
                         [&] { return LoadImpl(state_dict, storage, o); });
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
