// Storage in memory, for tests. Entries are shared buffers: a file opened
// before its entry is removed or replaced keeps reading what it opened, as
// on POSIX.
#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "dcpp/storage/storage.h"

namespace dcpp::storage {
namespace {

struct Entry {
  mutable std::mutex mu;
  std::string data;
};

class MemoryReadable final : public ReadableFile {
 public:
  MemoryReadable(std::shared_ptr<Entry> e, std::string where)
      : e_(std::move(e)), where_(std::move(where)) {}
  Result<uint64_t> Size() const override {
    std::lock_guard<std::mutex> l(e_->mu);
    return static_cast<uint64_t>(e_->data.size());
  }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const override {
    if (out.empty()) return Status();
    std::lock_guard<std::mutex> l(e_->mu);
    const uint64_t size = e_->data.size();
    if (offset > size || out.size() > size - offset)
      return DataLossError(where_ + ": unexpected end of file: wanted " +
                           std::to_string(out.size()) + " bytes at offset " +
                           std::to_string(offset) + ", file has " + std::to_string(size) +
                           " bytes");
    std::memcpy(out.data(), e_->data.data() + offset, out.size());
    return Status();
  }

 private:
  std::shared_ptr<Entry> e_;
  std::string where_;
};

class MemoryWritable final : public WritableFile {
 public:
  explicit MemoryWritable(std::shared_ptr<Entry> e) : e_(std::move(e)) {}
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override {
    std::lock_guard<std::mutex> l(e_->mu);
    if (offset + data.size() > e_->data.size()) e_->data.resize(offset + data.size());
    if (!data.empty()) std::memcpy(e_->data.data() + offset, data.data(), data.size());
    return Status();
  }
  Status WriteVAt(uint64_t offset, std::span<const std::span<const uint8_t>> pieces) override {
    for (const auto& p : pieces) {
      DCPP_RETURN_IF_ERROR(WriteAt(offset, p));
      offset += p.size();
    }
    return Status();
  }
  Status Sync() override { return Status(); }
  Status Close() override { return Status(); }

 private:
  std::shared_ptr<Entry> e_;
};

class MemoryStorage;

class MemoryLock final : public StorageLock {
 public:
  MemoryLock(MemoryStorage* owner, std::string name) : owner_(owner), name_(std::move(name)) {}
  ~MemoryLock() override;

 private:
  MemoryStorage* owner_;
  std::string name_;
};

class MemoryStorage final : public Storage {
 public:
  explicit MemoryStorage(std::string label) : label_(std::move(label)) {}

  std::string Describe(std::string_view name) const override {
    return name.empty() ? label_ : label_ + "/" + std::string(name);
  }
  Status CreateLocation() override { return Status(); }

  Result<std::unique_ptr<ReadableFile>> OpenForRead(std::string_view name) override {
    DCPP_RETURN_IF_ERROR(Check(name));
    std::lock_guard<std::mutex> l(mu_);
    auto it = entries_.find(std::string(name));
    if (it == entries_.end()) return NotFoundError(Describe(name) + ": no such file");
    return std::unique_ptr<ReadableFile>(new MemoryReadable(it->second, Describe(name)));
  }

  Result<std::unique_ptr<WritableFile>> CreateForWrite(std::string_view name) override {
    DCPP_RETURN_IF_ERROR(Check(name));
    auto e = std::make_shared<Entry>();
    std::lock_guard<std::mutex> l(mu_);
    entries_[std::string(name)] = e;
    return std::unique_ptr<WritableFile>(new MemoryWritable(std::move(e)));
  }

  Result<uint64_t> Size(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(auto f, OpenForRead(name));
    return f->Size();
  }

  Result<std::vector<std::string>> List() override {
    std::lock_guard<std::mutex> l(mu_);
    std::set<std::string> names;
    for (const auto& [name, e] : entries_) names.insert(name.substr(0, name.find('/')));
    return std::vector<std::string>(names.begin(), names.end());
  }

  Status Rename(std::string_view from, std::string_view to) override {
    DCPP_RETURN_IF_ERROR(Check(from));
    DCPP_RETURN_IF_ERROR(Check(to));
    std::lock_guard<std::mutex> l(mu_);
    auto it = entries_.find(std::string(from));
    if (it == entries_.end()) return NotFoundError("rename " + Describe(from) + ": no such file");
    auto e = it->second;
    entries_.erase(it);
    entries_[std::string(to)] = std::move(e);
    return Status();
  }

  Status Remove(std::string_view name) override {
    DCPP_RETURN_IF_ERROR(Check(name));
    std::lock_guard<std::mutex> l(mu_);
    if (entries_.erase(std::string(name)) == 0)
      return NotFoundError("remove " + Describe(name) + ": no such file");
    return Status();
  }

  Status SyncDirectory() override { return Status(); }

  Result<std::unique_ptr<StorageLock>> TryLock(std::string_view name,
                                               std::string_view holder) override {
    DCPP_RETURN_IF_ERROR(Check(name));
    std::lock_guard<std::mutex> l(mu_);
    auto [it, fresh] = locks_.try_emplace(std::string(name), std::string(holder));
    if (!fresh)
      return AbortedError(label_ + " is locked by another save (" + Describe(name) + ": " +
                          it->second + ")");
    return std::unique_ptr<StorageLock>(new MemoryLock(this, std::string(name)));
  }

  void Unlock(const std::string& name) {
    std::lock_guard<std::mutex> l(mu_);
    locks_.erase(name);
  }

 private:
  Status Check(std::string_view name) const {
    Status s = CheckEntryName(name);
    return s.ok() ? s : s.WithContext(label_);
  }

  const std::string label_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Entry>> entries_;
  std::map<std::string, std::string> locks_;  // name -> holder line
};

MemoryLock::~MemoryLock() { owner_->Unlock(name_); }

}  // namespace

std::unique_ptr<Storage> NewMemoryStorage(std::string label) {
  return std::make_unique<MemoryStorage>(std::move(label));
}

}  // namespace dcpp::storage
