// A Storage wrapper for tests that fails chosen calls and simulates crashes
// (after LevelDB's fault_injection_test): it keeps, beside the wrapped
// storage, a model of what is durable (entry data as of its last Sync, the
// set of names as of the last SyncDirectory) and what is only volatile, so
// that Recover() can leave the wrapped storage exactly as a machine crash
// at that moment would: data written but not synced is dropped, and entry
// changes (create, rename, remove) not followed by SyncDirectory are undone.
//
// Calls are counted per kind (OpKind). FailCall makes the Nth call of a kind
// fail without reaching storage (a short write writes half its bytes
// first); CrashAt(N) lets the first N calls of all kinds together through
// and none after: every later call, reads included, fails, as if the
// process had died.
//
// Thread-safe: calls are serialized by one mutex (it is a test tool).
// Lifetime: `base` and every file and lock obtained through the wrapper
// must be released before the wrapper is destroyed; the wrapper must
// outlive them. Only top-level entries are modelled (dcpp writes no others).
#ifndef DCPP_STORAGE_FAULT_INJECTING_STORAGE_H_
#define DCPP_STORAGE_FAULT_INJECTING_STORAGE_H_

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "dcpp/storage/storage.h"

namespace dcpp::storage {

enum class OpKind : int {
  kCreateLocation,
  kCreate,
  kWrite,  // WriteAt and WriteVAt
  kSync,
  kClose,
  kRename,
  kRemove,
  kSyncDir,
  kLock,
  kCount  // not a kind
};
std::string_view OpKindName(OpKind kind);

enum class FaultType {
  kNoSpace,     // ENOSPC: ResourceExhausted
  kIoError,     // EIO: Internal
  kShortWrite,  // half of the bytes land, then ENOSPC (other kinds: EIO)
};

class FaultInjectingStorage final : public Storage {
 public:
  // Reads every top-level entry of `base` (borrowed) and takes its current
  // state as durable.
  static Result<std::unique_ptr<FaultInjectingStorage>> Wrap(Storage& base);

  // Fails the `index`-th (from 0) call of `kind` with `type`. Several may
  // be armed.
  void FailCall(OpKind kind, uint64_t index, FaultType type);
  // Fails every call of `kind` on an entry whose name starts with `prefix`
  // (a file's writes, syncs and close count as calls on its name).
  void FailCallsNamed(OpKind kind, std::string prefix, FaultType type);
  // The first `calls` mutating calls reach storage; from then on nothing
  // does ("the process died"); crashed() turns true at that call.
  void CrashAt(uint64_t calls);

  uint64_t Count(OpKind kind) const;
  uint64_t TotalCalls() const;  // mutating calls of every kind
  bool crashed() const;
  bool fired() const;  // an armed failure or the crash happened

  // Puts the wrapped storage in the state a crash now would leave (see the
  // top of this file) and starts afresh: counts zero, nothing armed, that
  // state durable.
  Status Recover();

  std::string Describe(std::string_view name) const override;
  Status CreateLocation() override;
  Result<std::unique_ptr<ReadableFile>> OpenForRead(std::string_view name) override;
  Result<std::unique_ptr<WritableFile>> CreateForWrite(std::string_view name) override;
  Result<uint64_t> Size(std::string_view name) override;
  Result<std::vector<std::string>> List() override;
  Status Rename(std::string_view from, std::string_view to) override;
  Status Remove(std::string_view name) override;
  Status SyncDirectory() override;
  Result<std::unique_ptr<StorageLock>> TryLock(std::string_view name,
                                               std::string_view holder) override;

 private:
  friend class FaultWritable;
  struct Model {
    std::string current;
    std::string synced;
  };
  struct Fault {
    OpKind kind;
    uint64_t index;  // with prefix.empty()
    FaultType type;
    std::string prefix;
  };

  explicit FaultInjectingStorage(Storage& base) : base_(base) {}
  // Counts a call of `kind` on `name`; returns the injected failure, if any
  // (`*type` says which). Call with mu_ held.
  Status Enter(OpKind kind, std::string_view name, FaultType* type);
  Status CrashedError(std::string_view name) const;

  Storage& base_;
  mutable std::mutex mu_;
  std::array<uint64_t, static_cast<size_t>(OpKind::kCount)> counts_{};
  uint64_t total_ = 0;
  std::optional<uint64_t> crash_at_;
  bool crashed_ = false;
  bool fired_ = false;
  std::vector<Fault> faults_;
  uint64_t next_id_ = 0;
  std::map<uint64_t, std::shared_ptr<Model>> files_;
  std::map<std::string, uint64_t> volatile_dir_;
  std::map<std::string, uint64_t> durable_dir_;
};

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_FAULT_INJECTING_STORAGE_H_
