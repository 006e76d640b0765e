// Storage over S3 (the mapping is described in s3_storage.h).
#include "dcpp/storage/s3_storage.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "dcpp/base/thread_pool.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/storage/s3_client.h"
#include "dcpp/storage/sigv4.h"

namespace dcpp::storage {
namespace {

using s3::Client;
using s3::HttpRequest;
using s3::HttpResponse;

constexpr uint64_t kMinPartSize = uint64_t{5} << 20;
constexpr uint64_t kMaxPartSize = uint64_t{5} << 30;
constexpr uint64_t kMaxParts = 10000;
constexpr uint64_t kMaxCopySize = uint64_t{5} << 30;
// Reads back to back beyond this many bytes are a sequential pass: fetch
// ahead (S3Readable::ReadAt).
constexpr uint64_t kStreakBytes = uint64_t{512} << 10;

bool Ok2xx(const HttpResponse& r) { return r.status >= 200 && r.status < 300; }

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Background threads running part uploads for one Storage.
class Workers {
 public:
  explicit Workers(int threads) : threads_(std::max(threads, 1)) {}
  ~Workers() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : pool_) t.join();
  }
  void Submit(std::function<void()> task) {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.push_back(std::move(task));
    if (pool_.size() < static_cast<size_t>(threads_) && idle_ == 0) {
      try {
        pool_.emplace_back([this] { Run(); });
      } catch (const std::system_error&) {
        if (pool_.empty()) throw;  // no thread at all: the caller reports it
      }
    }
    cv_.notify_one();
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      ++idle_;
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      --idle_;
      if (queue_.empty()) return;  // stopping
      std::function<void()> task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
  }

  const int threads_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> pool_;
  int idle_ = 0;
  bool stop_ = false;
};

// A counting semaphore: full parts in memory waiting for or in upload.
class Budget {
 public:
  explicit Budget(int slots) : free_(std::max(slots, 1)) {}
  void Acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return free_ > 0; });
    --free_;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++free_;
    }
    cv_.notify_one();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int free_;
};

// What a Storage shares with its files and locks, which may outlive it.
struct Shared {
  explicit Shared(S3Config c)
      : client(std::move(c)),
        workers(client.config().concurrency),
        budget(2 * client.config().concurrency) {}
  Client client;
  Workers workers;
  Budget budget;
};

// The S3 object behind an entry, for requests and messages.
struct ObjectRef {
  std::string bucket;
  std::string key;
  std::string what;  // "s3://bucket/key"
};

Result<uint64_t> HeadSize(Shared& s, const ObjectRef& o, std::string* etag = nullptr) {
  HttpRequest req{"HEAD", o.bucket, o.key};
  DCPP_ASSIGN_OR_RETURN(HttpResponse r, s.client.Send(req, "stat", o.what));
  if (r.status == 404) return NotFoundError(o.what + " does not exist");
  if (!Ok2xx(r)) return s.client.Error(r, "stat", o.what);
  auto it = r.headers.find("content-length");
  if (it == r.headers.end())
    return DataLossError("stat " + o.what + ": the server sent no Content-Length");
  if (etag) {
    auto e = r.headers.find("etag");
    *etag = e == r.headers.end() ? "" : e->second;
  }
  return static_cast<uint64_t>(std::strtoull(it->second.c_str(), nullptr, 10));
}

Status PutObject(Shared& s, const ObjectRef& o, std::span<const uint8_t> body) {
  HttpRequest req{"PUT", o.bucket, o.key};
  req.body = body;
  DCPP_ASSIGN_OR_RETURN(HttpResponse r, s.client.Send(req, "write", o.what));
  if (!Ok2xx(r)) return s.client.Error(r, "write", o.what);
  return Status();
}

Status DeleteObject(Shared& s, const ObjectRef& o) {
  HttpRequest req{"DELETE", o.bucket, o.key};
  DCPP_ASSIGN_OR_RETURN(HttpResponse r, s.client.Send(req, "remove", o.what));
  if (!Ok2xx(r) && r.status != 404) return s.client.Error(r, "remove", o.what);
  return Status();
}

// ---- Reading ----

class S3Readable final : public ReadableFile {
 public:
  S3Readable(std::shared_ptr<Shared> shared, ObjectRef object, uint64_t size)
      : shared_(std::move(shared)), object_(std::move(object)), size_(size) {}

  Result<uint64_t> Size() const override { return size_; }

  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const override {
    if (out.empty()) return Status();
    if (offset > size_ || out.size() > size_ - offset)
      return DataLossError(object_.what + ": unexpected end of file: reading " +
                           std::to_string(out.size()) + " bytes at offset " +
                           std::to_string(offset) + " of an object of " + std::to_string(size_) +
                           " bytes");
    const uint64_t block = shared_->client.config().read_part_size;
    std::unique_lock<std::mutex> lock(mu_);
    const bool sequential = offset == last_end_;
    last_end_ = offset + out.size();
    streak_ = sequential ? streak_ + out.size() : out.size();
    if (offset >= cache_offset_ && offset + out.size() <= cache_offset_ + cache_.size()) {
      std::memcpy(out.data(), cache_.data() + (offset - cache_offset_), out.size());
      return Status();
    }
    if (sequential && streak_ > kStreakBytes && out.size() < block) {
      // Small reads continuing one another (a checksummed pass over a record
      // in cache-sized pieces, a stream decoder's blocks): one request per
      // piece would make each a round trip, so fetch a block ahead. Reads
      // that jump (a resharded load's boxes) or only continue a few small
      // ones (archive headers) fetch just what they ask for.
      const uint64_t n = std::min<uint64_t>(block, size_ - offset);
      cache_.resize(n);
      cache_offset_ = offset;
      Status s = Fetch(offset, {cache_.data(), cache_.size()});
      if (!s.ok()) {
        cache_.clear();
        return s;
      }
      std::memcpy(out.data(), cache_.data(), out.size());
      return Status();
    }
    lock.unlock();
    return Fetch(offset, out);
  }

 private:
  // Ranged GETs for `out`, in parallel pieces when it is large.
  Status Fetch(uint64_t offset, std::span<uint8_t> out) const {
    const S3Config& c = shared_->client.config();
    // A block fetched ahead goes in 4 parallel pieces; large reads in
    // read_part_size pieces.
    const uint64_t piece = out.size() <= c.read_part_size
                               ? std::max<uint64_t>(c.read_part_size / 4, 1 << 20)
                               : std::max<uint64_t>(c.read_part_size, 1);
    const size_t pieces = static_cast<size_t>((out.size() + piece - 1) / piece);
    if (pieces == 1) return GetRange(offset, out);
    return ParallelFor(pieces, std::min<int>(c.concurrency, static_cast<int>(pieces)),
                       [&](size_t i) {
                         const uint64_t at = i * piece;
                         const uint64_t n = std::min<uint64_t>(piece, out.size() - at);
                         return GetRange(offset + at, out.subspan(at, n));
                       });
  }

  Status GetRange(uint64_t offset, std::span<uint8_t> out) const {
    HttpRequest req{"GET", object_.bucket, object_.key};
    req.headers = {{"Range", "bytes=" + std::to_string(offset) + "-" +
                                 std::to_string(offset + out.size() - 1)}};
    req.sink = out;
    req.use_sink = true;
    DCPP_ASSIGN_OR_RETURN(HttpResponse r, shared_->client.Send(req, "read", object_.what));
    if (r.status == 404)
      return NotFoundError(object_.what + " does not exist (removed while being read?)");
    if (!Ok2xx(r)) return shared_->client.Error(r, "read", object_.what);
    if (r.sink_bytes != out.size())
      return DataLossError(object_.what + ": unexpected end of file: got " +
                           std::to_string(r.sink_bytes) + " of " + std::to_string(out.size()) +
                           " bytes at offset " + std::to_string(offset) +
                           " (the object is shorter than when opened: truncated or replaced?)");
    return Status();
  }

  std::shared_ptr<Shared> shared_;
  ObjectRef object_;
  uint64_t size_;
  // The block fetched ahead for sequential small reads, and where the last
  // read ended. Readers of one file share them (under mu_).
  mutable std::mutex mu_;
  mutable uint64_t last_end_ = UINT64_MAX;
  mutable uint64_t streak_ = 0;  // bytes read back to back up to last_end_
  mutable uint64_t cache_offset_ = 0;
  mutable std::vector<uint8_t> cache_;
};

// ---- Writing ----

class S3Writable final : public WritableFile {
 public:
  S3Writable(std::shared_ptr<Shared> shared, ObjectRef object)
      : shared_(std::move(shared)),
        object_(std::move(object)),
        part_size_(shared_->client.config().part_size) {}

  ~S3Writable() override {
    if (!closed_) Abandon();
  }

  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override {
    if (data.empty()) return Status();
    if (offset + data.size() < offset || (offset + data.size() - 1) / part_size_ >= kMaxParts)
      return ResourceExhaustedError(
          "write " + object_.what + ": " + std::to_string(offset + data.size()) +
          " bytes exceed the 10000 parts of " + std::to_string(part_size_) +
          " bytes an S3 upload may have (raise DCPP_S3_PART_SIZE)");
    while (!data.empty()) {
      const uint64_t index = offset / part_size_, in_part = offset % part_size_;
      const size_t n = static_cast<size_t>(std::min<uint64_t>(part_size_ - in_part, data.size()));
      Part* part;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (closed_) return InternalError("write " + object_.what + ": file is closed");
        if (!error_.ok()) return error_;
        part = &parts_[index];
        if (part->submitted || part->filled + n > part_size_)
          return InternalError("write " + object_.what + ": bytes at offset " +
                               std::to_string(offset) +
                               " written twice (S3 files take each byte once)");
        if (!part->data) {
          part->data.reset(new (std::nothrow) uint8_t[part_size_]());
          if (!part->data)
            return ResourceExhaustedError("write " + object_.what +
                                          ": cannot allocate a part buffer of " +
                                          std::to_string(part_size_) + " bytes");
        }
      }
      // Distinct writers fill distinct bytes: copy without the lock.
      std::memcpy(part->data.get() + in_part, data.data(), n);
      bool full;
      {
        std::lock_guard<std::mutex> lock(mu_);
        part->filled += n;
        size_ = std::max(size_, offset + n);
        full = part->filled == part_size_;
        if (full) part->submitted = true;
      }
      if (full) DCPP_RETURN_IF_ERROR(SubmitPart(index, part_size_));
      data = data.subspan(n);
      offset += n;
    }
    return Status();
  }

  Status WriteVAt(uint64_t offset, std::span<const std::span<const uint8_t>> pieces) override {
    for (const auto& p : pieces) {
      DCPP_RETURN_IF_ERROR(WriteAt(offset, p));
      offset += p.size();
    }
    return Status();
  }

  // An object is durable once published; nothing to do before Close.
  Status Sync() override {
    std::lock_guard<std::mutex> lock(mu_);
    return error_;
  }

  Status Close() override {
    if (closed_) return close_status_;
    close_status_ = Finish();
    closed_ = true;
    if (!close_status_.ok()) Abandon();
    return close_status_;
  }

 private:
  struct Part {
    std::unique_ptr<uint8_t[]> data;
    uint64_t filled = 0;
    bool submitted = false;
  };

  Status Finish() {
    uint64_t size;
    bool multipart;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !creating_; });
      if (!error_.ok()) return error_;
      size = size_;
      multipart = !upload_id_.empty();
    }
    if (!multipart && size <= part_size_) {
      // Small: one PUT (the commit's .metadata is always one).
      std::span<const uint8_t> body;
      auto it = parts_.find(0);
      if (it != parts_.end() && it->second.data) body = {it->second.data.get(), size};
      return PutObject(*shared_, object_, body);
    }
    // Every part not sent yet, the last one short; a part never written (a
    // gap) goes up as zeros.
    const uint64_t last = (size - 1) / part_size_;
    for (uint64_t k = 0; k <= last; ++k) {
      Part* part;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (etags_.count(static_cast<int>(k + 1))) continue;
        part = &parts_[k];
        if (part->submitted) continue;
        if (!part->data) {
          part->data.reset(new (std::nothrow) uint8_t[part_size_]());
          if (!part->data)
            return ResourceExhaustedError("write " + object_.what +
                                          ": cannot allocate a part buffer");
        }
        part->submitted = true;
      }
      DCPP_RETURN_IF_ERROR(SubmitPart(k, std::min(part_size_, size - k * part_size_)));
    }
    std::string upload_id;
    std::string xml = "<CompleteMultipartUpload>";
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return inflight_ == 0; });
      if (!error_.ok()) return error_;
      for (const auto& [number, etag] : etags_)
        xml += "<Part><PartNumber>" + std::to_string(number) + "</PartNumber><ETag>" + etag +
               "</ETag></Part>";
      upload_id = upload_id_;
    }
    xml += "</CompleteMultipartUpload>";
    HttpRequest req{"POST", object_.bucket, object_.key};
    req.query = {{"uploadId", upload_id}};
    req.body = Bytes(xml);
    DCPP_ASSIGN_OR_RETURN(HttpResponse r, shared_->client.Send(req, "complete upload of", object_.what));
    // CompleteMultipartUpload may fail after a 200: the error is in the body.
    if (!Ok2xx(r) || r.body.find("<Error>") != std::string::npos) {
      if (Ok2xx(r)) r.status = 500;
      return shared_->client.Error(r, "complete upload of", object_.what);
    }
    std::lock_guard<std::mutex> lock(mu_);
    upload_id_.clear();  // completed: nothing to abort
    return Status();
  }

  // Starts the multipart upload if no one has.
  Status EnsureUpload() {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !creating_; });
      if (!upload_id_.empty()) return Status();
      if (!error_.ok()) return error_;
      creating_ = true;
    }
    HttpRequest req{"POST", object_.bucket, object_.key};
    req.query = {{"uploads", ""}};
    Status s;
    std::string id;
    auto r = shared_->client.Send(req, "start upload of", object_.what);
    if (!r.ok()) {
      s = r.status();
    } else if (!Ok2xx(*r)) {
      s = shared_->client.Error(*r, "start upload of", object_.what);
    } else {
      auto ids = s3::XmlValues(r->body, "UploadId");
      if (ids.empty() || ids[0].empty())
        s = InternalError("start upload of " + object_.what + ": the answer has no UploadId");
      else
        id = ids[0];
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      creating_ = false;
      upload_id_ = id;
      if (!s.ok() && error_.ok()) error_ = s;
    }
    cv_.notify_all();
    return s;
  }

  // Sends part `index` (its first `length` bytes) in the background.
  Status SubmitPart(uint64_t index, uint64_t length) {
    DCPP_RETURN_IF_ERROR(EnsureUpload());
    shared_->budget.Acquire();  // bounds the full parts held in memory
    std::string upload_id;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++inflight_;
      upload_id = upload_id_;
    }
    auto task = [this, index, length, upload_id] {
      const uint8_t* data;
      {
        std::lock_guard<std::mutex> lock(mu_);
        data = parts_[index].data.get();
      }
      Status s = UploadPart(index, {data, length}, upload_id);
      shared_->budget.Release();
      // Notified under the lock: once it is released the file may be
      // destroyed (its destructor waits for inflight_ == 0).
      std::lock_guard<std::mutex> lock(mu_);
      if (!s.ok() && error_.ok()) error_ = s;
      parts_.erase(index);
      --inflight_;
      cv_.notify_all();
    };
    try {
      shared_->workers.Submit(task);
    } catch (const std::exception&) {
      task();  // no thread could be started: upload on this one
    }
    return Status();
  }

  Status UploadPart(uint64_t index, std::span<const uint8_t> data, const std::string& upload_id) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_.ok()) return Status();  // the file failed already: skip the work
    }
    HttpRequest req{"PUT", object_.bucket, object_.key};
    const int number = static_cast<int>(index + 1);
    req.query = {{"partNumber", std::to_string(number)}, {"uploadId", upload_id}};
    req.body = data;
    const std::string op = "upload part " + std::to_string(number) + " of";
    DCPP_ASSIGN_OR_RETURN(HttpResponse r, shared_->client.Send(req, op, object_.what));
    if (!Ok2xx(r)) return shared_->client.Error(r, op, object_.what);
    auto it = r.headers.find("etag");
    if (it == r.headers.end())
      return InternalError(op + " " + object_.what + ": the answer has no ETag");
    std::lock_guard<std::mutex> lock(mu_);
    etags_[number] = it->second;
    return Status();
  }

  // Waits for the uploads in flight and aborts the multipart upload, so
  // neither an object nor stored parts stay behind. Best effort.
  void Abandon() {
    std::string upload_id;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (error_.ok()) error_ = AbortedError("write " + object_.what + ": abandoned");
      cv_.wait(lock, [&] { return inflight_ == 0 && !creating_; });
      upload_id.swap(upload_id_);
      parts_.clear();
      closed_ = true;
    }
    if (upload_id.empty()) return;
    HttpRequest req{"DELETE", object_.bucket, object_.key};
    req.query = {{"uploadId", upload_id}};
    (void)shared_->client.Send(req, "abort upload of", object_.what);
  }

  const std::shared_ptr<Shared> shared_;
  const ObjectRef object_;
  const uint64_t part_size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Part> parts_;   // being filled or uploaded
  std::map<int, std::string> etags_;  // by part number (1-based)
  uint64_t size_ = 0;
  std::string upload_id_;  // empty: no multipart upload (yet, or any more)
  bool creating_ = false;
  int inflight_ = 0;
  Status error_;
  bool closed_ = false;
  Status close_status_;
};

// ---- Locking ----

// Lock objects this process is taking or holds, by endpoint, bucket and key
// (a multiset: two attempts at once are both counted). A lock object naming
// this process but not in here was left by a release whose DELETE failed.
std::mutex& RegistryMutex() {
  static std::mutex mu;
  return mu;
}
std::multiset<std::string>& Registry() {
  static auto* r = new std::multiset<std::string>;
  return *r;
}

std::string HostName() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) != 0) return "unknown";
  return host;
}

// Whether the holder line of a lock object ("pid=<pid> host=<host> ...")
// names a holder that is certainly gone: a process of this host that no
// longer exists, or this process when nothing else in it holds or takes
// the lock (`others` counts those).
bool HolderIsGone(const std::string& line, size_t others) {
  const size_t h = line.find(" host=");
  if (!line.starts_with("pid=") || h == std::string::npos) return false;
  const size_t host_end = line.find(' ', h + 6);
  const std::string host =
      line.substr(h + 6, host_end == std::string::npos ? std::string::npos : host_end - h - 6);
  if (host != HostName()) return false;
  const long pid = std::strtol(line.c_str() + 4, nullptr, 10);
  if (pid <= 0) return false;
  if (pid == static_cast<long>(::getpid())) return others == 0;
  return ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

class S3Lock final : public StorageLock {
 public:
  S3Lock(std::shared_ptr<Shared> shared, ObjectRef object, std::string registry_key)
      : shared_(std::move(shared)), object_(std::move(object)), id_(std::move(registry_key)) {}
  ~S3Lock() override {
    (void)DeleteObject(*shared_, object_);
    std::lock_guard<std::mutex> lock(RegistryMutex());
    auto it = Registry().find(id_);
    if (it != Registry().end()) Registry().erase(it);
  }

 private:
  std::shared_ptr<Shared> shared_;
  ObjectRef object_;
  std::string id_;
};

// ---- The Storage ----

class S3Storage final : public Storage {
 public:
  S3Storage(std::shared_ptr<Shared> shared, std::string bucket, std::string prefix)
      : shared_(std::move(shared)), bucket_(std::move(bucket)), prefix_(std::move(prefix)) {}

  std::string Describe(std::string_view name) const override {
    std::string out = "s3://" + bucket_;
    const std::string key = Key(name);
    if (!key.empty()) out += "/" + key;
    return out;
  }

  bool PublishesOnClose() const override { return true; }
  int IoParallelism() const override { return shared_->client.config().concurrency; }

  S3Traffic traffic() const { return shared_->client.traffic(); }

  Status CreateLocation() override {
    const std::string what = "s3://" + bucket_;
    HttpRequest req{"HEAD", bucket_, ""};
    DCPP_ASSIGN_OR_RETURN(HttpResponse r, shared_->client.Send(req, "check bucket", what));
    if (r.status == 404)
      return NotFoundError("S3 bucket '" + bucket_ + "' does not exist at " +
                           shared_->client.config().endpoint + " (dcpp does not create buckets)");
    if (!Ok2xx(r)) return shared_->client.Error(r, "check bucket", what);
    return Status();
  }

  Result<std::unique_ptr<ReadableFile>> OpenForRead(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(ObjectRef o, Object(name));
    DCPP_ASSIGN_OR_RETURN(uint64_t size, CachedSize(name, o));
    return std::unique_ptr<ReadableFile>(new S3Readable(shared_, std::move(o), size));
  }

  Result<std::unique_ptr<WritableFile>> CreateForWrite(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(ObjectRef o, Object(name));
    Forget(name);
    return std::unique_ptr<WritableFile>(new S3Writable(shared_, std::move(o)));
  }

  Result<uint64_t> Size(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(ObjectRef o, Object(name));
    return CachedSize(name, o);
  }

  Result<std::vector<std::string>> List() override {
    const std::string what = Describe("");
    const std::string prefix = prefix_.empty() ? "" : prefix_ + "/";
    std::vector<std::string> names;
    std::string token;
    while (true) {
      HttpRequest req{"GET", bucket_, ""};
      req.query = {{"list-type", "2"}, {"prefix", prefix}, {"delimiter", "/"}};
      if (!token.empty()) req.query.emplace_back("continuation-token", token);
      DCPP_ASSIGN_OR_RETURN(HttpResponse r, shared_->client.Send(req, "list", what));
      if (!Ok2xx(r)) return shared_->client.Error(r, "list", what);
      // Keys of objects, then "folders" (common prefixes, ending in '/').
      for (const std::string& key : s3::XmlValues(r.body, "Key"))
        if (key.size() > prefix.size() && key.starts_with(prefix))
          names.push_back(key.substr(prefix.size()));
      for (const std::string& block : s3::XmlValues(r.body, "CommonPrefixes"))
        for (std::string p : s3::XmlValues(block, "Prefix"))
          if (p.size() > prefix.size() + 1 && p.starts_with(prefix) && p.back() == '/')
            names.push_back(p.substr(prefix.size(), p.size() - prefix.size() - 1));
      const auto truncated = s3::XmlValues(r.body, "IsTruncated");
      const auto next = s3::XmlValues(r.body, "NextContinuationToken");
      if (truncated.empty() || truncated[0] != "true" || next.empty() || next[0].empty()) break;
      token = next[0];
    }
    if (names.empty())
      return NotFoundError("checkpoint location " + what + " does not exist (no objects under " +
                           what + "/)");
    std::sort(names.begin(), names.end());
    names.erase(std::unique(names.begin(), names.end()), names.end());
    return names;
  }

  Status Rename(std::string_view from, std::string_view to) override {
    DCPP_ASSIGN_OR_RETURN(ObjectRef a, Object(from));
    DCPP_ASSIGN_OR_RETURN(ObjectRef b, Object(to));
    DCPP_ASSIGN_OR_RETURN(uint64_t size, HeadSize(*shared_, a));
    if (size > kMaxCopySize)
      return UnimplementedError("rename " + a.what + " to " + b.what + ": objects above 5 GiB " +
                                "cannot be copied in one request");
    HttpRequest req{"PUT", b.bucket, b.key};
    req.headers = {{"x-amz-copy-source", "/" + a.bucket + "/" + sigv4::UriEncode(a.key, true)}};
    DCPP_ASSIGN_OR_RETURN(HttpResponse r, shared_->client.Send(req, "copy " + a.what + " to", b.what));
    // A copy may fail after a 200: the error is then in the body.
    if (!Ok2xx(r) || r.body.find("<Error>") != std::string::npos) {
      if (Ok2xx(r)) r.status = 500;
      return shared_->client.Error(r, "copy " + a.what + " to", b.what);
    }
    Forget(from);
    Forget(to);
    return DeleteObject(*shared_, a);
  }

  Status Remove(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(ObjectRef o, Object(name));
    Forget(name);
    DCPP_RETURN_IF_ERROR(HeadSize(*shared_, o).status());
    return DeleteObject(*shared_, o);
  }

  // Objects are durable once published.
  Status SyncDirectory() override { return Status(); }

  Result<std::unique_ptr<StorageLock>> TryLock(std::string_view name,
                                               std::string_view holder) override {
    DCPP_ASSIGN_OR_RETURN(ObjectRef o, Object(name));
    const std::string id = shared_->client.config().endpoint + "\n" + o.bucket + "\n" + o.key;
    {
      std::lock_guard<std::mutex> lock(RegistryMutex());
      Registry().insert(id);
    }
    auto unregister = [&] {
      std::lock_guard<std::mutex> lock(RegistryMutex());
      Registry().erase(Registry().find(id));
    };
    Status r = TryLockObject(o, id, std::string(holder) + "\n");
    if (!r.ok()) {
      unregister();
      return r;
    }
    return std::unique_ptr<StorageLock>(new S3Lock(shared_, std::move(o), id));
  }

 private:
  std::string Key(std::string_view name) const {
    if (prefix_.empty()) return std::string(name);
    if (name.empty()) return prefix_;
    return prefix_ + "/" + std::string(name);
  }

  Result<ObjectRef> Object(std::string_view name) const {
    Status s = CheckEntryName(name);
    if (!s.ok()) return s.WithContext(Describe(""));
    return ObjectRef{bucket_, Key(name), Describe(name)};
  }

  // The size of entry `name`. Data files are named uniquely by each save
  // and never rewritten, so their sizes are kept: a load opening every
  // item of a file pays one HEAD per file, not per item. (Should another
  // process replace one anyway, a read past its new end is DataLoss.)
  Result<uint64_t> CachedSize(std::string_view name, const ObjectRef& o) {
    const bool keep = io::IsDataFileName(name);
    if (keep) {
      std::lock_guard<std::mutex> lock(sizes_mu_);
      auto it = sizes_.find(std::string(name));
      if (it != sizes_.end()) return it->second;
    }
    DCPP_ASSIGN_OR_RETURN(uint64_t size, HeadSize(*shared_, o));
    if (keep) {
      std::lock_guard<std::mutex> lock(sizes_mu_);
      sizes_[std::string(name)] = size;
    }
    return size;
  }
  void Forget(std::string_view name) {
    std::lock_guard<std::mutex> lock(sizes_mu_);
    sizes_.erase(std::string(name));
  }

  // Creates the lock object if absent, or replaces one whose holder is gone.
  Status TryLockObject(const ObjectRef& o, const std::string& id, const std::string& line) {
    for (int attempt = 0; attempt < 3; ++attempt) {
      HttpRequest put{"PUT", o.bucket, o.key};
      put.headers = {{"If-None-Match", "*"}};
      put.body = Bytes(line);
      DCPP_ASSIGN_OR_RETURN(HttpResponse r, shared_->client.Send(put, "lock", o.what));
      if (Ok2xx(r)) return Status();
      if (r.status != 412 && r.status != 409) return shared_->client.Error(r, "lock", o.what);
      // Held: read who holds it.
      HttpRequest get{"GET", o.bucket, o.key};
      DCPP_ASSIGN_OR_RETURN(HttpResponse g, shared_->client.Send(get, "read lock", o.what));
      if (g.status == 404) continue;  // released meanwhile: try again
      if (!Ok2xx(g)) return shared_->client.Error(g, "read lock", o.what);
      std::string held = g.body.substr(0, std::min<size_t>(g.body.find('\n'), 1024));
      size_t others;
      {
        std::lock_guard<std::mutex> lock(RegistryMutex());
        others = Registry().count(id) - 1;
      }
      if (HolderIsGone(held, others)) {
        // Replace it only if it is still the object we judged: the ETag
        // condition (unquoted: Ceph RGW compares it without quotes).
        std::string etag = g.headers.count("etag") ? g.headers["etag"] : "";
        etag.erase(std::remove(etag.begin(), etag.end(), '"'), etag.end());
        HttpRequest take{"PUT", o.bucket, o.key};
        take.headers = {{"If-Match", etag}};
        take.body = Bytes(line);
        DCPP_ASSIGN_OR_RETURN(HttpResponse t, shared_->client.Send(take, "take over lock", o.what));
        if (Ok2xx(t)) return Status();
        if (t.status != 412) return shared_->client.Error(t, "take over lock", o.what);
      }
      if (held.empty()) held = "holder not recorded";
      return AbortedError(Describe("") + " is locked by another save (" + o.what + ": " + held +
                          "; if that save is gone, delete " + o.what + ")");
    }
    return AbortedError(Describe("") + " is locked by another save (" + o.what +
                        " keeps changing hands)");
  }

  std::shared_ptr<Shared> shared_;
  std::string bucket_;
  std::string prefix_;  // no leading or trailing '/'; may be empty
  std::mutex sizes_mu_;
  std::unordered_map<std::string, uint64_t> sizes_;  // data files' sizes
};

// ---- Configuration ----

const char* Env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

// An INI file's sections: name -> (key -> value).
using Ini = std::map<std::string, std::map<std::string, std::string>>;

Ini ReadIni(const std::string& path) {
  Ini ini;
  std::ifstream in(path);
  std::string line, section;
  auto trim = [](std::string s) {
    const size_t a = s.find_first_not_of(" \t\r");
    const size_t b = s.find_last_not_of(" \t\r");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
  };
  while (std::getline(in, line)) {
    line = trim(line);
    if (line.empty() || line[0] == '#' || line[0] == ';') continue;
    if (line.front() == '[' && line.back() == ']') {
      section = trim(line.substr(1, line.size() - 2));
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string::npos) continue;
    ini[section][trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  return ini;
}

std::string HomeFile(const char* env, const char* relative) {
  if (const char* v = Env(env)) return v;
  const char* home = Env("HOME");
  return home ? std::string(home) + "/" + relative : std::string();
}

Result<uint64_t> ParseBytes(const char* name, const char* text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long v = std::strtoull(text, &end, 10);
  uint64_t mult = 1;
  if (end && *end) {
    const char c = static_cast<char>(std::toupper(static_cast<unsigned char>(*end)));
    mult = c == 'K' ? uint64_t{1} << 10 : c == 'M' ? uint64_t{1} << 20 : c == 'G' ? uint64_t{1} << 30 : 0;
    ++end;
    if (*end == 'i' || *end == 'I') ++end;
    if (*end == 'b' || *end == 'B') ++end;
  }
  if (errno || end == text || *end || mult == 0 || v > UINT64_MAX / mult)
    return InvalidArgumentError(std::string(name) + "='" + text +
                                "' is not a size (bytes, or a number with K, M or G)");
  return v * mult;
}

Result<int> ParseInt(const char* name, const char* text, int lo, int hi) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text, &end, 10);
  if (errno || end == text || *end || v < lo || v > hi)
    return InvalidArgumentError(std::string(name) + "='" + text + "' must be an integer in [" +
                                std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(v);
}

Status CheckConfig(const S3Config& c) {
  const size_t sep = c.endpoint.find("://");
  if (sep == std::string::npos ||
      (c.endpoint.compare(0, sep, "http") != 0 && c.endpoint.compare(0, sep, "https") != 0) ||
      c.endpoint.size() == sep + 3 || c.endpoint.find('/', sep + 3) != std::string::npos)
    return InvalidArgumentError("S3 endpoint '" + c.endpoint +
                                "' must be http(s)://host[:port] with no path");
  if (c.part_size < kMinPartSize || c.part_size > kMaxPartSize)
    return InvalidArgumentError("S3 part size " + std::to_string(c.part_size) +
                                " must lie between 5 MiB and 5 GiB (DCPP_S3_PART_SIZE)");
  if (c.concurrency < 1 || c.concurrency > 1024)
    return InvalidArgumentError("S3 concurrency must be in [1, 1024] (DCPP_S3_CONCURRENCY)");
  if (c.max_attempts < 1) return InvalidArgumentError("S3 max_attempts must be >= 1");
  if (c.access_key.empty() || c.secret_key.empty())
    return InvalidArgumentError(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in "
        "~/.aws/credentials (AWS_PROFILE)");
  return Status();
}

}  // namespace

Result<S3Config> S3Config::FromEnvironment() {
  S3Config c;
  const std::string profile = Env("AWS_PROFILE") ? Env("AWS_PROFILE") : "default";
  const Ini creds = ReadIni(HomeFile("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"));
  const Ini config = ReadIni(HomeFile("AWS_CONFIG_FILE", ".aws/config"));
  auto from = [](const Ini& ini, const std::string& section, const char* key) -> std::string {
    auto s = ini.find(section);
    if (s == ini.end()) return "";
    auto k = s->second.find(key);
    return k == s->second.end() ? "" : k->second;
  };
  const std::string config_section = profile == "default" ? "default" : "profile " + profile;
  auto setting = [&](const char* key) {
    std::string v = from(creds, profile, key);
    return v.empty() ? from(config, config_section, key) : v;
  };
  if (Env("AWS_ACCESS_KEY_ID") && Env("AWS_SECRET_ACCESS_KEY")) {
    c.access_key = Env("AWS_ACCESS_KEY_ID");
    c.secret_key = Env("AWS_SECRET_ACCESS_KEY");
    if (const char* t = Env("AWS_SESSION_TOKEN")) c.session_token = t;
  } else {
    c.access_key = setting("aws_access_key_id");
    c.secret_key = setting("aws_secret_access_key");
    c.session_token = setting("aws_session_token");
    if ((c.access_key.empty() || c.secret_key.empty()) && Env("AWS_PROFILE"))
      return InvalidArgumentError("AWS_PROFILE='" + profile +
                                  "': no aws_access_key_id / aws_secret_access_key for it in " +
                                  HomeFile("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials"));
  }
  if (const char* r = Env("AWS_REGION")) c.region = r;
  else if (const char* r2 = Env("AWS_DEFAULT_REGION")) c.region = r2;
  else if (std::string r3 = setting("region"); !r3.empty()) c.region = r3;
  std::string endpoint;
  if (const char* e = Env("AWS_ENDPOINT_URL_S3")) endpoint = e;
  else if (const char* e2 = Env("AWS_ENDPOINT_URL")) endpoint = e2;
  else endpoint = setting("endpoint_url");
  while (!endpoint.empty() && endpoint.back() == '/') endpoint.pop_back();
  if (endpoint.empty()) {
    c.endpoint = "https://s3." + c.region + ".amazonaws.com";
    c.path_style = false;
  } else {
    c.endpoint = endpoint;
    c.path_style = true;
  }
  if (const char* a = Env("DCPP_S3_ADDRESSING")) {
    const std::string v = a;
    if (v != "path" && v != "virtual")
      return InvalidArgumentError("DCPP_S3_ADDRESSING='" + v + "' must be 'path' or 'virtual'");
    c.path_style = v == "path";
  }
  if (const char* v = Env("DCPP_S3_PART_SIZE")) {
    DCPP_ASSIGN_OR_RETURN(c.part_size, ParseBytes("DCPP_S3_PART_SIZE", v));
  }
  if (const char* v = Env("DCPP_S3_READ_PART_SIZE")) {
    DCPP_ASSIGN_OR_RETURN(c.read_part_size, ParseBytes("DCPP_S3_READ_PART_SIZE", v));
  }
  if (const char* v = Env("DCPP_S3_CONCURRENCY")) {
    DCPP_ASSIGN_OR_RETURN(c.concurrency, ParseInt("DCPP_S3_CONCURRENCY", v, 1, 1024));
  }
  if (const char* v = Env("DCPP_S3_TIMEOUT_MS")) {
    DCPP_ASSIGN_OR_RETURN(c.stall_timeout_ms, ParseInt("DCPP_S3_TIMEOUT_MS", v, 1, 3600000));
  }
  if (const char* v = Env("DCPP_S3_REUSE_CONNECTIONS")) {
    DCPP_ASSIGN_OR_RETURN(c.reuse_connections, ParseInt("DCPP_S3_REUSE_CONNECTIONS", v, 0, 1));
  }
  if (const char* v = Env("AWS_MAX_ATTEMPTS")) {
    DCPP_ASSIGN_OR_RETURN(c.max_attempts, ParseInt("AWS_MAX_ATTEMPTS", v, 1, 100));
  }
  if (c.read_part_size == 0)
    return InvalidArgumentError("DCPP_S3_READ_PART_SIZE must be > 0");
  DCPP_RETURN_IF_ERROR(CheckConfig(c));
  return c;
}

Result<std::unique_ptr<Storage>> NewS3Storage(const std::string& location, S3Config config) {
  constexpr std::string_view kScheme = "s3://";
  if (!location.starts_with(kScheme))
    return InvalidArgumentError("S3 location '" + location + "' must start with s3://");
  std::string rest = location.substr(kScheme.size());
  while (!rest.empty() && rest.back() == '/') rest.pop_back();
  const size_t slash = rest.find('/');
  std::string bucket = rest.substr(0, slash);
  std::string prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  if (bucket.empty() || bucket.size() > 63 ||
      bucket.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-_") != std::string::npos)
    return InvalidArgumentError("S3 location '" + location + "': bad bucket name '" + bucket + "'");
  if (!prefix.empty() && !CheckEntryName(prefix).ok())
    return InvalidArgumentError("S3 location '" + location +
                                "': the prefix has an empty, '.' or '..' component");
  DCPP_RETURN_IF_ERROR(CheckConfig(config).WithContext("S3 location " + location));
  if (config.read_part_size == 0) config.read_part_size = config.part_size;
  auto shared = std::make_shared<Shared>(std::move(config));
  return std::unique_ptr<Storage>(
      new S3Storage(std::move(shared), std::move(bucket), std::move(prefix)));
}

Result<std::unique_ptr<Storage>> OpenS3Storage(const std::string& location) {
  auto config = S3Config::FromEnvironment();
  if (!config.ok()) return config.status().WithContext("S3 location " + location);
  return NewS3Storage(location, std::move(*config));
}

S3Traffic S3TrafficOf(const Storage& storage) {
  const auto* s3 = dynamic_cast<const S3Storage*>(&storage);
  return s3 ? s3->traffic() : S3Traffic{};
}

Status CreateS3Bucket(const S3Config& config, const std::string& bucket) {
  DCPP_RETURN_IF_ERROR(CheckConfig(config));
  Client client(config);
  HttpRequest req{"PUT", bucket, ""};
  const std::string what = "s3://" + bucket;
  DCPP_ASSIGN_OR_RETURN(HttpResponse r, client.Send(req, "create bucket", what));
  if (Ok2xx(r)) return Status();
  const auto codes = s3::XmlValues(r.body, "Code");
  if (r.status == 409 && !codes.empty() && codes[0] == "BucketAlreadyOwnedByYou") return Status();
  return client.Error(r, "create bucket", what);
}

Result<std::vector<std::string>> ListS3MultipartUploads(const S3Config& config,
                                                        const std::string& location) {
  DCPP_RETURN_IF_ERROR(CheckConfig(config));
  std::string rest = location.substr(location.starts_with("s3://") ? 5 : 0);
  const size_t slash = rest.find('/');
  const std::string bucket = rest.substr(0, slash);
  std::string prefix = slash == std::string::npos ? "" : rest.substr(slash + 1);
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (!prefix.empty()) prefix += '/';
  Client client(config);
  HttpRequest req{"GET", bucket, ""};
  req.query = {{"uploads", ""}, {"prefix", prefix}};
  DCPP_ASSIGN_OR_RETURN(HttpResponse r, client.Send(req, "list uploads in", location));
  if (!Ok2xx(r)) return client.Error(r, "list uploads in", location);
  std::vector<std::string> keys;
  for (const std::string& upload : s3::XmlValues(r.body, "Upload"))
    for (std::string key : s3::XmlValues(upload, "Key")) keys.push_back(std::move(key));
  return keys;
}

}  // namespace dcpp::storage
