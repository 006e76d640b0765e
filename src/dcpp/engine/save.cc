// dcpp::Save: plan the items of a state dict, write the data files in
// parallel, then commit .metadata under the location's lock (the protocol
// is described in engine/engine.h).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_set>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/checkpoint.h"
#include "dcpp/engine/commit.h"
#include "dcpp/engine/engine.h"
#include "dcpp/engine/safetensors_save.h"
#include "dcpp/engine/items.h"
#include "dcpp/engine/plan_cache.h"
#include "dcpp/engine/wire.h"
#include "dcpp/format/checksums.h"
#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/storage/checksum_file.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/plan/flatten.h"
#include "dcpp/plan/save_planner.h"
#include "dcpp/transform/transform.h"

namespace dcpp {
namespace {

std::string RandomHex(size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::random_device rd;
  std::string out(n, '0');
  for (char& c : out) c = kHex[rd() % 16];
  return out;
}

// A random (version 4) UUID, as DCP's FileSystemWriter stores in save_id.
std::string Uuid4() {
  std::string h = RandomHex(32);
  h[12] = '4';
  h[16] = "89ab"[h[16] % 4];
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

// Write order and file assignment, as DCP's FileSystemWriter does it: one
// bucket (file) per thread; BYTE_IO items dealt round-robin, tensor items by
// size descending, each to the currently smallest bucket. Within a file,
// BYTE_IO items come first. Returns item indices per file.
std::vector<std::vector<size_t>> AssignFiles(const std::vector<engine::WriteItem*>& items,
                                             const SaveOptions& o) {
  std::vector<std::vector<size_t>> files;
  if (!o.single_file_per_rank) {
    for (size_t i = 0; i < items.size(); ++i) files.push_back({i});
    return files;
  }
  const size_t bins = static_cast<size_t>(o.files_per_rank);
  files.resize(bins);
  std::vector<size_t> bytes_items, tensor_items;
  for (size_t i = 0; i < items.size(); ++i)
    (items[i]->is_tensor() ? tensor_items : bytes_items).push_back(i);
  if (bins == 1) {
    files[0] = bytes_items;
    files[0].insert(files[0].end(), tensor_items.begin(), tensor_items.end());
    return files;
  }
  std::stable_sort(tensor_items.begin(), tensor_items.end(),
                   [&](size_t a, size_t b) { return items[a]->nbytes() > items[b]->nbytes(); });
  for (size_t k = 0; k < bytes_items.size(); ++k) files[k % bins].push_back(bytes_items[k]);
  std::vector<uint64_t> load(bins, 0);
  for (size_t i : tensor_items) {
    const size_t b = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    files[b].push_back(i);
    load[b] += items[i]->nbytes();
  }
  return files;
}

// Writes one data file: its items back to back, each a torch.save archive.
Status WriteOneFile(storage::Storage& storage, const std::string& name,
                    const std::vector<size_t>& item_ids,
                    const std::vector<engine::WriteItem*>& items, const SaveOptions& o,
                    storage::WriterThreads threads, engine::ProgressReporter& progress) {
  std::vector<storage::StoreItem> store(item_ids.size());
  for (size_t k = 0; k < item_ids.size(); ++k) {
    const engine::WriteItem& item = *items[item_ids[k]];
    store[k].is_tensor = item.is_tensor();
    if (item.is_tensor()) {
      store[k].tensor = item.tensor.view();
    } else {
      store[k].bytes = format::zip::AsBytes(item.blob);
      store[k].stored_crc32 = &items[item_ids[k]]->stored_crc32;  // for the sidecar
    }
    store[k].name = item.fqn;
  }
  storage::StoreOptions so;
  so.checksums = o.checksums;
  so.sync = o.sync_files;
  so.transforms = o.transforms;
  so.compression_level = o.compression_level;
  so.threads = threads.per_file;
  // Several files compressing at once leave zstd's own workers no idle core.
  so.zstd_workers = threads.parallel_files >= DefaultThreadCount() ? 1 : 0;
  DCPP_ASSIGN_OR_RETURN(std::vector<StorageInfo> infos,
                        storage::WriteDataFile(storage, name, store, so, [&](size_t, uint64_t bytes) {
                          progress.Add(bytes, 1);
                        }));
  for (size_t k = 0; k < item_ids.size(); ++k) items[item_ids[k]]->storage = std::move(infos[k]);
  return Status();
}

// The data files `md` references.
std::unordered_set<std::string> ReferencedFiles(const Metadata& md) {
  std::unordered_set<std::string> names;
  for (const auto& e : md.entries) {
    if (e.is_tensor()) {
      for (const auto& c : e.chunks) names.insert(c.storage.relative_path);
    } else {
      names.insert(e.storage.relative_path);
    }
  }
  return names;
}

// After a commit, under the lock: removes every data file (`__*.distcp`),
// temporary metadata (`.metadata*.tmp`) and sidecar checksum file
// (`.checksums.<save_id>`, and its `.tmp`) that the committed `md` does not
// reference: the replaced checkpoint's files and those of saves that died.
// Nothing else. Best effort: a leftover costs space, never
// correctness, and the next save retries.
void RemoveUnreferencedFiles(storage::Storage& storage, const Metadata& md) {
  auto names = storage.List();
  if (!names.ok()) return;
  std::unordered_set<std::string> keep = ReferencedFiles(md);
  if (md.storage_meta && md.storage_meta->save_id)
    keep.insert(format::ChecksumFileName(*md.storage_meta->save_id));
  auto is_sidecar = [](const std::string& name) {
    constexpr std::string_view kTmp = ".tmp";
    return format::IsChecksumFileName(name) ||
           (name.size() > kTmp.size() && name.ends_with(kTmp) &&
            format::IsChecksumFileName(name.substr(0, name.size() - kTmp.size())));
  };
  for (const std::string& name : *names) {
    if (!io::IsDataFileName(name) && !io::IsTempMetadataName(name) && !is_sidecar(name)) continue;
    if (keep.count(name)) continue;
    (void)storage.Remove(name);
  }
}

// This process's identity for the lock file: `pid=<pid> host=<hostname>
// started=<UTC ISO-8601> save=<tag>` (the format dcpp's Python writer
// writes too).
std::string LockHolderLine(const std::string& tag) {
  char host[256] = "unknown";
  if (::gethostname(host, sizeof(host)) != 0) std::snprintf(host, sizeof(host), "unknown");
  host[sizeof(host) - 1] = '\0';
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char when[32];
  std::strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return "pid=" + std::to_string(::getpid()) + " host=" + host + " started=" + when +
         " save=" + tag;
}

// Takes the location's lock, retrying for up to `timeout_ms` while another
// save holds it.
Result<std::unique_ptr<storage::StorageLock>> AcquireLock(storage::Storage& storage,
                                                           const std::string& tag,
                                                           int64_t timeout_ms) {
  const std::string holder = LockHolderLine(tag);
  const auto deadline =
      std::chrono::steady_clock::now() +
      std::chrono::milliseconds(std::max<int64_t>(timeout_ms, 0));
  auto pause = std::chrono::milliseconds(10);
  while (true) {
    auto lock = storage.TryLock(io::kLockFileName, holder);
    if (lock.ok() || lock.status().code() != StatusCode::kAborted) return lock;
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      std::string what = lock.status().message();
      what += timeout_ms > 0 ? "; still held after waiting " + std::to_string(timeout_ms) + " ms"
                             : "";
      return AbortedError(what +
                          ". Another save is writing this checkpoint: wait for it to finish, "
                          "save elsewhere, or set SaveOptions.lock_timeout_ms to wait for it. "
                          "The lock is released when its holder exits, so a holder that is "
                          "gone never blocks a save (on object storage, only a holder on "
                          "this host: see the lock object named above)");
    }
    std::this_thread::sleep_for(
        std::min<std::chrono::steady_clock::duration>(pause, deadline - now));
    pause = std::min(pause * 2, std::chrono::milliseconds(200));
  }
}

// Replaces top-level Stateful values by their StateDict(), as DCP does.
Result<Value> ResolveStateful(const Value& state_dict) {
  if (!state_dict.is_dict()) return state_dict;
  Value out = state_dict;
  for (Value& v : out.dict().mutable_values()) {
    if (v.kind() != Value::Kind::kStateful) continue;
    DCPP_ASSIGN_OR_RETURN(Value sd, v.stateful()->StateDict());
    v = std::move(sd);
  }
  return out;
}

plan::LocalPlan ToLocalPlan(const std::vector<engine::WriteItem>& items) {
  plan::LocalPlan lp;
  for (const auto& it : items) {
    if (it.is_tensor()) {
      lp.AddTensor(it.fqn, it.path, it.tensor.dtype(), it.offsets, it.tensor.shape(),
                   it.global_shape, it.nbytes());
    } else {
      lp.AddValue(it.fqn, it.path, it.nbytes());
    }
  }
  return lp;
}

// Coordinator, after global planning: creates the location, takes its
// lock (kept in *lock until the commit and cleanup are done) and decides how
// an existing checkpoint there is treated.
Status PrepareDirectory(storage::Storage& storage, const SaveOptions& o, const std::string& tag,
                        std::unique_ptr<storage::StorageLock>* lock) {
  DCPP_RETURN_IF_ERROR(storage.CreateLocation());
  DCPP_ASSIGN_OR_RETURN(*lock, AcquireLock(storage, tag, o.lock_timeout_ms));
  DCPP_ASSIGN_OR_RETURN(bool replacing, storage::HasCommittedCheckpoint(storage));
  if (replacing && !o.overwrite)
    return AlreadyExistsError("checkpoint " + storage.Describe("") +
                              " already exists and overwrite is off (SaveOptions.overwrite / "
                              "--overwrite to replace it)");
  return Status();
}

// Writes this rank's kept items into its data files.
Status WriteAssigned(storage::Storage& storage, int rank, const std::string& tag,
                     std::vector<engine::WriteItem>& items, const std::vector<size_t>& keep,
                     const SaveOptions& o, std::vector<std::string>* created) {
  std::vector<engine::WriteItem*> mine;
  for (size_t k : keep) mine.push_back(&items[k]);
  const auto files = AssignFiles(mine, o);
  uint64_t total_bytes = 0;
  for (const auto* item : mine) total_bytes += item->nbytes();
  engine::ProgressReporter progress(o.progress, "write", total_bytes, mine.size());
  std::vector<std::string> names(files.size());
  for (size_t f = 0; f < files.size(); ++f)
    names[f] = io::DataFileName(rank, static_cast<int>(f), tag);
  std::vector<std::atomic<bool>> started(files.size());
  const int io_threads =
      o.io_threads > 0 ? o.io_threads : std::max(o.files_per_rank, DefaultThreadCount());
  const storage::WriterThreads split = storage::SplitWriterThreads(files.size(), io_threads);
  Status s = ParallelFor(files.size(), split.parallel_files, [&](size_t f) {
    started[f] = true;
    return WriteOneFile(storage, names[f], files[f], mine, o, split, progress);
  });
  for (size_t f = 0; f < files.size(); ++f)
    if (started[f]) created->push_back(names[f]);
  return s;
}


// Save without its exception barrier. The rank-local steps run through
// CatchExceptions themselves, so a rank that runs out of memory still takes
// part in every collective, carrying its error.
Result<Metadata> SaveImpl(const Value& state_dict, storage::Storage& storage, const SaveOptions& o,
                          const engine::BeforeCommit& before_commit, const Status& local_failure) {
  const std::string dir = storage.Describe("");
  std::unique_ptr<ProcessGroup> single;
  ProcessGroup& pg = o.process_group ? *o.process_group : *(single = MakeSingleProcessGroup());
  const int rank = pg.rank();
  constexpr int kCoordinator = 0;

  // 1. Local plan. A failure here is carried to the coordinator, so every
  //    rank takes part in every collective and none hangs.
  Status local = local_failure;
  if (local.ok() && o.files_per_rank < 1)
    local = InvalidArgumentError("SaveOptions.files_per_rank must be >= 1, got " +
                                 std::to_string(o.files_per_rank));
  else if (local.ok() && o.io_threads < 0)
    local = InvalidArgumentError("SaveOptions.io_threads must be >= 0, got " +
                                 std::to_string(o.io_threads));
  else if (local.ok() && o.lock_timeout_ms < 0)
    local = InvalidArgumentError("SaveOptions.lock_timeout_ms must be >= 0, got " +
                                 std::to_string(o.lock_timeout_ms));
  if (local.ok() && !o.transforms.empty()) {
    // Reject an unknown transform before anything is written.
    std::vector<std::string> recorded;
    auto probe = transform::NewEncoder(
        o.transforms, {}, [](auto) { return Status(); }, &recorded);
    if (!probe.ok()) local = probe.status().WithContext("SaveOptions.transforms");
  }
  std::vector<engine::WriteItem> items;
  Value resolved;
  if (local.ok()) {
    auto r = ResolveStateful(state_dict);
    if (r.ok()) resolved = std::move(*r);
    local = r.status();
  }
  if (local.ok()) {
    auto planned = CatchExceptions("planning", [&] { return engine::PlanWriteItems(resolved); });
    if (planned.ok()) items = std::move(*planned);
    local = planned.status();
  }
  std::string local_plan = engine::EncodeLocalPlan(local, ToLocalPlan(items));
  SavePlanCache::State* cache = o.plan_cache ? &o.plan_cache->state() : nullptr;
  const engine::PlanFingerprint fingerprint =
      cache ? engine::FingerprintPlan(local_plan) : engine::PlanFingerprint{};
  const bool offer_fingerprint = cache && local.ok() && cache->valid &&
                                 cache->group_size == pg.size() &&
                                 cache->fingerprint == fingerprint;
  DCPP_ASSIGN_OR_RETURN(
      std::vector<std::string> plans,
      pg.Gather(offer_fingerprint ? engine::EncodeFingerprintOffer(fingerprint.a, fingerprint.b)
                                  : engine::EncodePlanOffer(local_plan),
                kCoordinator));

  // 2. Global plan on the coordinator: dedup, validate, prepare the directory
  //    (or, with a plan cache and nothing changed, the cached plan).
  plan::GlobalPlan gp;
  std::unique_ptr<storage::StorageLock> lock;  // coordinator: held until the end
  std::vector<engine::PlanFingerprint> fingerprints;  // coordinator, with a cache
  const std::string tag = rank == kCoordinator ? RandomHex(8) : std::string();
  auto coordinate = [&](std::vector<std::string>& messages) {
    engine::Assignment a;
    a.tag = tag;
    std::vector<Status> statuses(messages.size());
    size_t offered = 0;
    fingerprints.assign(messages.size(), {});
    for (size_t r = 0; r < messages.size(); ++r) {
      auto is_fingerprint = engine::DecodeOffer(&messages[r], &fingerprints[r].a, &fingerprints[r].b);
      if (!is_fingerprint.ok()) statuses[r] = is_fingerprint.status();
      else if (*is_fingerprint) ++offered;
      else if (cache) fingerprints[r] = engine::FingerprintPlan(messages[r]);
    }
    if (offered > 0) {
      const bool reusable = offered == messages.size() && cache->has_global &&
                            cache->dedup_to_lowest_rank == o.dedup_to_lowest_rank &&
                            cache->fingerprints == fingerprints;
      if (!reusable) {
        a.plan = engine::Assignment::Plan::kResend;
        return a;
      }
      gp = std::move(cache->global);
      cache->has_global = false;
      a.plan = engine::Assignment::Plan::kReused;
    } else {
      std::vector<Status> decode_statuses;
      std::vector<plan::LocalPlan> local_plans =
          engine::DecodeLocalPlans(messages, &decode_statuses);
      for (size_t r = 0; r < statuses.size(); ++r)
        if (statuses[r].ok()) statuses[r] = decode_statuses[r];
      a.status = engine::CombineRankFailures("save planning", statuses);
      if (a.status.ok()) {
        auto g =
            plan::CreateGlobalSavePlan(local_plans, {.to_lowest_rank = o.dedup_to_lowest_rank});
        if (g.ok()) gp = std::move(*g);
        a.status = g.status().WithContext("save planning");
      }
    }
    if (a.status.ok()) a.status = PrepareDirectory(storage, o, a.tag, &lock);
    return a;
  };
  auto scatter = [&](const engine::Assignment* a) -> Result<engine::Assignment> {
    std::vector<std::string> parts;
    if (a != nullptr) {
      engine::Assignment each = *a;
      for (size_t r = 0; r < plans.size(); ++r) {
        each.keep = each.status.ok() && each.plan != engine::Assignment::Plan::kResend
                        ? gp.keep[r]
                        : std::vector<size_t>{};
        parts.push_back(engine::EncodeAssignment(each));
      }
    }
    DCPP_ASSIGN_OR_RETURN(std::string mine, pg.Scatter(std::move(parts), kCoordinator));
    engine::Assignment decoded;
    DCPP_RETURN_IF_ERROR(engine::DecodeAssignment(mine, &decoded));
    return decoded;
  };
  engine::Assignment coordinated;
  if (rank == kCoordinator) coordinated = coordinate(plans);
  DCPP_ASSIGN_OR_RETURN(engine::Assignment assignment,
                        scatter(rank == kCoordinator ? &coordinated : nullptr));
  if (assignment.plan == engine::Assignment::Plan::kResend) {
    // Some rank's plan changed (or the coordinator has none cached): every
    // rank sends its whole plan after all.
    DCPP_ASSIGN_OR_RETURN(plans, pg.Gather(engine::EncodePlanOffer(std::move(local_plan)), kCoordinator));
    if (rank == kCoordinator) coordinated = coordinate(plans);
    DCPP_ASSIGN_OR_RETURN(assignment, scatter(rank == kCoordinator ? &coordinated : nullptr));
  }
  if (cache) ++(assignment.plan == engine::Assignment::Plan::kReused ? cache->hits : cache->misses);
  if (!assignment.status.ok()) return assignment.status.WithContext("save to " + dir);

  // 3. Every rank writes what it was assigned.
  std::vector<std::string> created;
  Status written = CatchExceptions("writing", [&] {
    return WriteAssigned(storage, rank, assignment.tag, items, assignment.keep, o, &created);
  });
  auto remove_created = [&] {
    for (const auto& name : created) (void)storage.Remove(name);
  };
  auto results =
      pg.Gather(engine::EncodeWriteResults(written, items, assignment.keep), kCoordinator);
  if (!results.ok()) {
    remove_created();
    return results.status();
  }

  // 4. The coordinator commits .metadata only if every rank succeeded.
  std::string fin;
  if (rank == kCoordinator) {
    std::vector<Status> statuses(results->size());
    Metadata& md = gp.metadata;
    std::vector<format::ItemChecksum> sidecar_items;
    for (size_t r = 0; r < results->size(); ++r) {
      std::vector<StorageInfo> infos;
      std::vector<uint32_t> crcs;
      Status decoded = engine::DecodeWriteResults((*results)[r], &statuses[r], &infos, &crcs);
      if (!decoded.ok()) statuses[r] = decoded;
      if (!statuses[r].ok()) continue;
      if (infos.size() != gp.slots[r].size()) {
        statuses[r] = InternalError("rank wrote " + std::to_string(infos.size()) + " of " +
                                    std::to_string(gp.slots[r].size()) + " items");
        continue;
      }
      for (size_t k = 0; k < infos.size(); ++k) {
        auto [entry, chunk] = gp.slots[r][k];
        EntryMeta& e = md.entries[entry];
        if (!e.is_tensor())
          sidecar_items.push_back(
              {e.fqn, infos[k].relative_path, infos[k].offset, infos[k].length, crcs[k]});
        (e.is_tensor() ? e.chunks[chunk].storage : e.storage) = std::move(infos[k]);
      }
    }
    Status status = engine::CombineRankFailures("writing", statuses);
    bool committed = false;
    // Encoded once: the sidecar covers these bytes, the commit writes them
    // and every rank receives them.
    std::string encoded;
    if (status.ok())
      status = engine::CommitSave(storage, md, std::move(sidecar_items), o, assignment.tag,
                                  before_commit, &committed, &encoded);
    // The committed metadata goes to every rank with the verdict, so no
    // rank reads storage again (and all return the same thing).
    fin = engine::EncodeCommitOutcome(status, committed, status.ok() ? encoded : std::string());
  }
  DCPP_ASSIGN_OR_RETURN(std::string final_message, pg.Broadcast(std::move(fin), kCoordinator));
  Status status;
  bool committed = false;
  std::string encoded;
  DCPP_RETURN_IF_ERROR(engine::DecodeCommitOutcome(final_message, &status, &committed, &encoded));
  if (!committed) {
    remove_created();
    return status.WithContext("save to " + dir + " failed (nothing was committed)");
  }
  if (!status.ok()) return status.WithContext("save to " + dir);
  if (cache) {
    cache->valid = true;
    cache->fingerprint = fingerprint;
    cache->group_size = pg.size();
  }
  if (rank == kCoordinator) {
    lock.reset();
    if (!cache) return std::move(gp.metadata);
    Metadata md = gp.metadata;  // the cache keeps the plan
    cache->global = std::move(gp);
    cache->has_global = true;
    cache->dedup_to_lowest_rank = o.dedup_to_lowest_rank;
    cache->fingerprints = std::move(fingerprints);
    return md;
  }
  return format::DecodeMetadata(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(encoded.data()), encoded.size()));
}

}  // namespace

namespace engine {

std::string NewSaveTag() { return RandomHex(8); }

std::string NewSaveId() { return Uuid4(); }

Status PrepareSaveLocation(storage::Storage& storage, const SaveOptions& options,
                           const std::string& tag, std::unique_ptr<storage::StorageLock>* lock) {
  return PrepareDirectory(storage, options, tag, lock);
}

Status CommitSave(storage::Storage& storage, Metadata& md,
                  std::vector<format::ItemChecksum> sidecar_items, const SaveOptions& o,
                  const std::string& tag, const std::function<Status(Metadata&)>& before_commit,
                  bool* committed, std::string* encoded_out) {
  *committed = false;
  md.storage_meta = StorageMeta{storage.Describe(""), Uuid4(), std::nullopt, {}};
  md.version = kDcpVersion;
  if (before_commit) DCPP_RETURN_IF_ERROR(before_commit(md).WithContext("before the commit"));
  std::string encoded = format::EncodeMetadata(md);
  // The sidecar goes first, named after this save, so a crash before the
  // rename below leaves it merely unreferenced (format/checksums.h).
  DCPP_RETURN_IF_ERROR(storage::WriteChecksumFile(
      storage,
      storage::MakeChecksumFile(*md.storage_meta->save_id, encoded, std::move(sidecar_items)),
      o.sync_files));
  bool published = false;
  Status status = storage::CommitEncodedMetadata(storage, encoded, o.sync_files, tag, &published);
  // A failure after the rename (say, the directory fsync) leaves our
  // .metadata published: then the data files must stay.
  *committed = status.ok() || published;
  if (!status.ok() && *committed) status = status.WithContext("committed, but not durably");
  // Still under the lock: reclaim what the new checkpoint does not use.
  if (status.ok()) RemoveUnreferencedFiles(storage, md);
  if (encoded_out) *encoded_out = std::move(encoded);
  return status;
}

Result<Metadata> Save(const Value& state_dict, storage::Storage& storage, const SaveOptions& o,
                      const BeforeCommit& before_commit, const Status& local_failure) {
  if (o.format == SaveFormat::kSafetensors) {
    // The safetensors writer has no way to carry a rank's earlier failure
    // through its collectives: that rank returns it at once (its peers
    // then time out in their first collective).
    if (!local_failure.ok()) return local_failure;
    return SaveSafetensors(state_dict, storage, o);
  }
  return CatchExceptions("save to " + storage.Describe(""), [&] {
    return SaveImpl(state_dict, storage, o, before_commit, local_failure);
  });
}

}  // namespace engine

Result<Metadata> Save(const Value& state_dict, const std::string& dir, const SaveOptions& o) {
  // Every rank is given the same path, so a path that cannot be opened
  // fails on every rank alike, before any collective.
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> storage, storage::OpenStorage(dir));
  return engine::Save(state_dict, *storage, o);
}

}  // namespace dcpp
