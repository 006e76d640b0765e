#include "dcpp/storage/fault_injecting_storage.h"

#include <cerrno>
#include <cstring>

#include "dcpp/base/os_error.h"

namespace dcpp::storage {

std::string_view OpKindName(OpKind kind) {
  switch (kind) {
    case OpKind::kCreateLocation: return "create-location";
    case OpKind::kCreate: return "create";
    case OpKind::kWrite: return "write";
    case OpKind::kSync: return "sync";
    case OpKind::kClose: return "close";
    case OpKind::kRename: return "rename";
    case OpKind::kRemove: return "remove";
    case OpKind::kSyncDir: return "sync-dir";
    case OpKind::kLock: return "lock";
    case OpKind::kCount: break;
  }
  return "?";
}

// A file being written through the wrapper: every write reaches the wrapped
// file and the model's volatile bytes together.
class FaultWritable final : public WritableFile {
 public:
  FaultWritable(FaultInjectingStorage* owner, std::unique_ptr<WritableFile> base,
                std::shared_ptr<FaultInjectingStorage::Model> model, std::string name)
      : owner_(owner), base_(std::move(base)), model_(std::move(model)), name_(std::move(name)) {}

  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override {
    std::lock_guard<std::mutex> l(owner_->mu_);
    FaultType type;
    Status s = owner_->Enter(OpKind::kWrite, name_, &type);
    if (!s.ok()) {
      if (owner_->fired_ && !owner_->crashed_ && type == FaultType::kShortWrite)
        (void)Apply(offset, data.first(data.size() / 2));
      return s;
    }
    return Apply(offset, data);
  }

  Status WriteVAt(uint64_t offset, std::span<const std::span<const uint8_t>> pieces) override {
    std::string joined;
    for (const auto& p : pieces) joined.append(reinterpret_cast<const char*>(p.data()), p.size());
    return WriteAt(offset, {reinterpret_cast<const uint8_t*>(joined.data()), joined.size()});
  }

  Status Sync() override {
    std::lock_guard<std::mutex> l(owner_->mu_);
    FaultType type;
    DCPP_RETURN_IF_ERROR(owner_->Enter(OpKind::kSync, name_, &type));
    DCPP_RETURN_IF_ERROR(base_->Sync());
    model_->synced = model_->current;
    return Status();
  }

  Status Close() override {
    std::lock_guard<std::mutex> l(owner_->mu_);
    if (closed_) return Status();
    closed_ = true;
    FaultType type;
    DCPP_RETURN_IF_ERROR(owner_->Enter(OpKind::kClose, name_, &type));
    return base_->Close();
  }

 private:
  Status Apply(uint64_t offset, std::span<const uint8_t> data) {
    DCPP_RETURN_IF_ERROR(base_->WriteAt(offset, data));
    std::string& cur = model_->current;
    if (offset + data.size() > cur.size()) cur.resize(offset + data.size());
    if (!data.empty()) std::memcpy(cur.data() + offset, data.data(), data.size());
    return Status();
  }

  FaultInjectingStorage* owner_;
  std::unique_ptr<WritableFile> base_;
  std::shared_ptr<FaultInjectingStorage::Model> model_;
  std::string name_;
  bool closed_ = false;
};

Result<std::unique_ptr<FaultInjectingStorage>> FaultInjectingStorage::Wrap(Storage& base) {
  std::unique_ptr<FaultInjectingStorage> f(new FaultInjectingStorage(base));
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> names, base.List());
  for (const auto& name : names) {
    DCPP_ASSIGN_OR_RETURN(auto file, base.OpenForRead(name));
    DCPP_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    auto m = std::make_shared<Model>();
    m->current.resize(size);
    DCPP_RETURN_IF_ERROR(
        file->ReadAt(0, {reinterpret_cast<uint8_t*>(m->current.data()), m->current.size()}));
    m->synced = m->current;
    const uint64_t id = f->next_id_++;
    f->files_[id] = std::move(m);
    f->volatile_dir_[name] = id;
  }
  f->durable_dir_ = f->volatile_dir_;
  return f;
}

void FaultInjectingStorage::FailCall(OpKind kind, uint64_t index, FaultType type) {
  std::lock_guard<std::mutex> l(mu_);
  faults_.push_back({kind, index, type, {}});
}

void FaultInjectingStorage::FailCallsNamed(OpKind kind, std::string prefix, FaultType type) {
  std::lock_guard<std::mutex> l(mu_);
  if (prefix.empty()) return;
  faults_.push_back({kind, 0, type, std::move(prefix)});
}

void FaultInjectingStorage::CrashAt(uint64_t calls) {
  std::lock_guard<std::mutex> l(mu_);
  crash_at_ = calls;
}

uint64_t FaultInjectingStorage::Count(OpKind kind) const {
  std::lock_guard<std::mutex> l(mu_);
  return counts_[static_cast<size_t>(kind)];
}

uint64_t FaultInjectingStorage::TotalCalls() const {
  std::lock_guard<std::mutex> l(mu_);
  return total_;
}

bool FaultInjectingStorage::crashed() const {
  std::lock_guard<std::mutex> l(mu_);
  return crashed_;
}

bool FaultInjectingStorage::fired() const {
  std::lock_guard<std::mutex> l(mu_);
  return fired_;
}

Status FaultInjectingStorage::CrashedError(std::string_view name) const {
  return InternalError(base_.Describe(name) + ": storage unreachable after the injected crash");
}

Status FaultInjectingStorage::Enter(OpKind kind, std::string_view name, FaultType* type) {
  if (crashed_) return CrashedError(name);
  if (crash_at_ && total_ >= *crash_at_) {
    crashed_ = fired_ = true;
    return CrashedError(name);
  }
  const uint64_t index = counts_[static_cast<size_t>(kind)]++;
  ++total_;
  for (const Fault& f : faults_) {
    if (f.kind != kind) continue;
    if (f.prefix.empty() ? f.index != index : !name.starts_with(f.prefix)) continue;
    fired_ = true;
    *type = f.type;
    const std::string context = "injected: " + std::string(OpKindName(kind)) + " " +
                                base_.Describe(name);
    if (f.type == FaultType::kNoSpace || (f.type == FaultType::kShortWrite && kind == OpKind::kWrite))
      return ErrnoToStatus(ENOSPC, context);
    return ErrnoToStatus(EIO, context);
  }
  return Status();
}

std::string FaultInjectingStorage::Describe(std::string_view name) const {
  return base_.Describe(name);
}

Status FaultInjectingStorage::CreateLocation() {
  std::lock_guard<std::mutex> l(mu_);
  FaultType type;
  DCPP_RETURN_IF_ERROR(Enter(OpKind::kCreateLocation, "", &type));
  return base_.CreateLocation();
}

Result<std::unique_ptr<ReadableFile>> FaultInjectingStorage::OpenForRead(std::string_view name) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (crashed_) return CrashedError(name);
  }
  return base_.OpenForRead(name);
}

Result<std::unique_ptr<WritableFile>> FaultInjectingStorage::CreateForWrite(
    std::string_view name) {
  std::lock_guard<std::mutex> l(mu_);
  FaultType type;
  DCPP_RETURN_IF_ERROR(Enter(OpKind::kCreate, name, &type));
  DCPP_ASSIGN_OR_RETURN(auto file, base_.CreateForWrite(name));
  auto m = std::make_shared<Model>();
  const uint64_t id = next_id_++;
  files_[id] = m;
  volatile_dir_[std::string(name)] = id;
  return std::unique_ptr<WritableFile>(
      new FaultWritable(this, std::move(file), std::move(m), std::string(name)));
}

Result<uint64_t> FaultInjectingStorage::Size(std::string_view name) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (crashed_) return CrashedError(name);
  }
  return base_.Size(name);
}

Result<std::vector<std::string>> FaultInjectingStorage::List() {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (crashed_) return CrashedError("");
  }
  return base_.List();
}

Status FaultInjectingStorage::Rename(std::string_view from, std::string_view to) {
  std::lock_guard<std::mutex> l(mu_);
  FaultType type;
  DCPP_RETURN_IF_ERROR(Enter(OpKind::kRename, to, &type));
  DCPP_RETURN_IF_ERROR(base_.Rename(from, to));
  auto it = volatile_dir_.find(std::string(from));
  if (it != volatile_dir_.end()) {
    const uint64_t id = it->second;
    volatile_dir_.erase(it);
    volatile_dir_[std::string(to)] = id;
  }
  return Status();
}

Status FaultInjectingStorage::Remove(std::string_view name) {
  std::lock_guard<std::mutex> l(mu_);
  FaultType type;
  DCPP_RETURN_IF_ERROR(Enter(OpKind::kRemove, name, &type));
  DCPP_RETURN_IF_ERROR(base_.Remove(name));
  volatile_dir_.erase(std::string(name));
  return Status();
}

Status FaultInjectingStorage::SyncDirectory() {
  std::lock_guard<std::mutex> l(mu_);
  FaultType type;
  DCPP_RETURN_IF_ERROR(Enter(OpKind::kSyncDir, "", &type));
  DCPP_RETURN_IF_ERROR(base_.SyncDirectory());
  durable_dir_ = volatile_dir_;
  return Status();
}

Result<std::unique_ptr<StorageLock>> FaultInjectingStorage::TryLock(std::string_view name,
                                                                    std::string_view holder) {
  std::lock_guard<std::mutex> l(mu_);
  FaultType type;
  DCPP_RETURN_IF_ERROR(Enter(OpKind::kLock, name, &type));
  return base_.TryLock(name, holder);
}

Status FaultInjectingStorage::Recover() {
  std::lock_guard<std::mutex> l(mu_);
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> names, base_.List());
  for (const auto& name : names) DCPP_RETURN_IF_ERROR(base_.Remove(name));
  std::map<uint64_t, std::shared_ptr<Model>> files;
  for (const auto& [name, id] : durable_dir_) {
    std::shared_ptr<Model> m = files_.at(id);
    DCPP_ASSIGN_OR_RETURN(auto file, base_.CreateForWrite(name));
    DCPP_RETURN_IF_ERROR(
        file->WriteAt(0, {reinterpret_cast<const uint8_t*>(m->synced.data()), m->synced.size()}));
    DCPP_RETURN_IF_ERROR(file->Sync());
    DCPP_RETURN_IF_ERROR(file->Close());
    auto fresh = std::make_shared<Model>();
    fresh->current = fresh->synced = m->synced;
    files.emplace(id, std::move(fresh));
  }
  files_ = std::move(files);
  volatile_dir_ = durable_dir_;
  counts_ = {};
  total_ = 0;
  crash_at_.reset();
  crashed_ = fired_ = false;
  faults_.clear();
  return Status();
}

}  // namespace dcpp::storage
