// The commit steps of a DCP save, shared by engine::Save and the other
// writers of whole checkpoints (engine/copy_checkpoint.h): the lock, the
// save's tag and id, the sidecar checksum file, the .metadata commit and the
// cleanup of what the new checkpoint does not reference. The protocol they
// implement is described at engine::Save (engine/engine.h).
#ifndef DCPP_ENGINE_COMMIT_H_
#define DCPP_ENGINE_COMMIT_H_

#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <string>
#include <vector>

#include "dcpp/checkpoint.h"
#include "dcpp/format/checksums.h"
#include "dcpp/metadata.h"
#include "dcpp/storage/storage.h"

namespace dcpp::engine {

// A random tag naming one save's files (`__{rank}_{n}.{tag}.distcp`,
// `.metadata.{tag}.tmp`): 8 hex digits.
std::string NewSaveTag();

// A random version-4 UUID, as DCP's FileSystemWriter stores in save_id.
std::string NewSaveId();

// Step 1 of the protocol: creates the location, takes its lock `.dcpp.lock`
// (waiting up to options.lock_timeout_ms; Aborted quoting the holder) into
// *lock, and fails with AlreadyExists when a checkpoint is there and
// options.overwrite is off. The caller keeps *lock until CommitSave returns.
Status PrepareSaveLocation(storage::Storage& storage, const SaveOptions& options,
                           const std::string& tag, std::unique_ptr<storage::StorageLock>* lock);

// Steps 3 and 4, under the lock: sets md.storage_meta (a fresh save_id) and
// md.version, writes the sidecar checksum file for `sidecar_items` (the
// BYTE_IO items' stored CRC-32s) and the metadata, commits .metadata
// (synced when options.sync_files), then removes every data file,
// temporary metadata and sidecar the new .metadata does not reference.
// `*committed` says whether the new .metadata was published (true also when
// only the directory sync after the rename failed: then the data files are
// referenced and must stay). `*encoded` (if given) receives the committed
// bytes. `before_commit` (may be null) adjusts md before it is encoded.
Status CommitSave(storage::Storage& storage, Metadata& md,
                  std::vector<format::ItemChecksum> sidecar_items, const SaveOptions& options,
                  const std::string& tag, const std::function<Status(Metadata&)>& before_commit,
                  bool* committed, std::string* encoded = nullptr);

// Reports a writer's progress in one phase: Add may be called from any
// thread (calls are serialized); nothing is reported when `cb` is empty.
// `cb` must outlive the reporter.
class ProgressReporter {
 public:
  ProgressReporter(const ProgressCallback& cb, std::string_view phase, uint64_t bytes_total,
                   size_t items_total)
      : cb_(cb) {
    p_.phase = phase;
    p_.bytes_total = bytes_total;
    p_.items_total = items_total;
  }
  void Add(uint64_t bytes, size_t items) {
    if (!cb_) return;
    std::lock_guard<std::mutex> lock(mu_);
    p_.bytes_done += bytes;
    p_.items_done += items;
    cb_(p_);
  }

 private:
  const ProgressCallback& cb_;
  std::mutex mu_;
  Progress p_;
};

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_COMMIT_H_
