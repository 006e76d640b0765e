#include "dcpp/engine/torch_save_write.h"

#include <unistd.h>

#include <atomic>
#include <mutex>
#include <random>
#include <unordered_map>

#include "dcpp/base/crc32.h"
#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/format/zip.h"
#include "dcpp/plan/flatten.h"

namespace dcpp::engine {
namespace {

namespace zip = format::zip;

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// The Value at `path` under `root` (placed there by SetElement), or null.
const Value* At(const Value& root, const ObjectPath& path) {
  const Value* cur = &root;
  for (const PathElement& p : path) {
    if (const auto* key = std::get_if<std::string>(&p)) {
      if (!cur->is_dict()) return nullptr;
      cur = cur->dict().Find(*key);
    } else {
      const int64_t i = std::get<int64_t>(p);
      if (cur->kind() != Value::Kind::kList || i < 0 ||
          static_cast<size_t>(i) >= cur->items().size())
        return nullptr;
      cur = &cur->items()[static_cast<size_t>(i)];
    }
    if (!cur) return nullptr;
  }
  return cur;
}

// A temporary name beside `name` that no concurrent writer picks.
std::string TempName(const std::string& name) {
  static std::atomic<uint64_t> counter{0};
  std::random_device rd;
  return "." + name + ".tmp-" + std::to_string(getpid()) + "-" +
         std::to_string(counter.fetch_add(1)) + "-" + std::to_string(rd() & 0xffff);
}

Status WriteImpl(std::span<const TorchSaveEntry> entries, storage::Storage& dir,
                 const std::string& name, const TorchSaveWriteOptions& o) {
  const std::string where = dir.Describe(name);
  if (o.io_threads < 0) return InvalidArgumentError("io_threads must be >= 0");
  if (!o.overwrite) {
    auto size = dir.Size(name);
    if (size.ok()) return AlreadyExistsError(where + " exists (overwrite is off)");
    if (size.status().code() != StatusCode::kNotFound) return size.status();
  }

  // The object, with a placeholder (no data) for each tensor.
  Value root = Value::EmptyDict();
  for (const TorchSaveEntry& e : entries) {
    Value v;
    if (e.is_tensor) {
      for (int64_t d : e.shape)
        if (d < 0) return InvalidArgumentError(Quoted(e.fqn) + " has a negative dimension");
      v = Value(Tensor::Borrow(MakeView(nullptr, e.dtype, e.shape)));
    } else {
      v = e.value;
    }
    const ObjectPath path = e.path.empty() ? ObjectPath{e.fqn} : e.path;
    DCPP_RETURN_IF_ERROR(plan::SetElement(root, path, std::move(v))
                             .WithContext("placing " + Quoted(e.fqn) + " in " + where));
  }
  std::unordered_map<const Tensor*, const TorchSaveEntry*> producer;
  for (const TorchSaveEntry& e : entries) {
    if (!e.is_tensor) continue;
    const Value* v = At(root, e.path.empty() ? ObjectPath{e.fqn} : e.path);
    if (!v || !v->is_tensor())
      return InvalidArgumentError(Quoted(e.fqn) + ": another entry took its place in " + where);
    producer.emplace(&v->tensor(), &e);
  }
  Result<format::PickledObject> pickled = format::EncodeObjectPickle(root);
  if (!pickled.ok()) return pickled.status().WithContext(where);

  // Records: streamed storages have no data here; their CRCs come later.
  std::vector<zip::RecordSpec> storage_records;
  std::vector<const TorchSaveEntry*> streamed;  // per storage record; null: in memory
  for (const auto& s : pickled->storages) {
    const TorchSaveEntry* e = nullptr;
    if (s.placeholder) {
      auto it = producer.find(s.placeholder);
      if (it == producer.end()) return InternalError(where + ": a tensor without a producer");
      e = it->second;
    }
    zip::RecordSpec r;
    r.name = "data/" + s.key;
    r.data = s.placeholder ? zip::Bytes(static_cast<const uint8_t*>(nullptr), s.nbytes) : s.bytes;
    storage_records.push_back(std::move(r));
    streamed.push_back(e);
  }
  std::vector<zip::RecordSpec> records =
      format::TorchSaveRecords(pickled->data_pkl, std::move(storage_records));
  constexpr size_t kFirstStorage = 4;  // data.pkl, .format_version, .storage_alignment, byteorder
  zip::WriteOptions zo;
  zo.copy_threshold = 0;  // every record's data is its own piece
  zo.compute_crc32 = false;
  zo.record_crc32.assign(records.size(), 0);
  for (size_t i = 0; i < records.size(); ++i) {
    const bool is_streamed = i >= kFirstStorage && i - kFirstStorage < streamed.size() &&
                             streamed[i - kFirstStorage] != nullptr;
    if (!is_streamed && o.checksums) zo.record_crc32[i] = Crc32(records[i].data);
  }
  DCPP_RETURN_IF_ERROR(zip::CheckLayOut(records, zo).WithContext(where));
  // Where each record's data starts: the k-th borrowed piece is the k-th
  // non-empty record.
  std::vector<uint64_t> data_offset(records.size(), 0);
  {
    const zip::Layout layout = zip::LayOut(records, zo);
    uint64_t at = 0;
    size_t r = 0;
    for (const zip::Piece& p : layout.pieces) {
      if (p.is_borrowed) {
        while (r < records.size() && records[r].data.empty()) ++r;
        if (r == records.size()) return InternalError("zip layout has more pieces than records");
        data_offset[r++] = at;
      }
      at += p.size();
    }
  }

  const std::string tmp = TempName(name);
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::WritableFile> file, dir.CreateForWrite(tmp));
  auto body = [&]() -> Status {
    // Records held in memory (data.pkl, the small text records, tensors
    // inside values).
    for (size_t i = 0; i < records.size(); ++i) {
      const bool is_streamed = i >= kFirstStorage && i - kFirstStorage < streamed.size() &&
                               streamed[i - kFirstStorage] != nullptr;
      if (!is_streamed && !records[i].data.empty())
        DCPP_RETURN_IF_ERROR(file->WriteAt(data_offset[i], records[i].data));
    }
    // Streamed tensors, several at once.
    std::vector<size_t> jobs;
    for (size_t k = 0; k < streamed.size(); ++k)
      if (streamed[k]) jobs.push_back(kFirstStorage + k);
    const int threads = o.io_threads > 0 ? o.io_threads : DefaultThreadCount();
    DCPP_RETURN_IF_ERROR(ParallelFor(jobs.size(), threads, [&](size_t j) -> Status {
      const zip::RecordSpec& r = records[jobs[j]];
      const TorchSaveEntry& e = *streamed[jobs[j] - kFirstStorage];
      const uint64_t total = r.data.size();
      uint64_t written = 0;
      uint32_t crc = 0;
      Status s = e.produce([&](std::span<const uint8_t> bytes) -> Status {
        if (bytes.size() > total - written)
          return InternalError("the producer handed more than the tensor's " +
                               std::to_string(total) + " bytes");
        DCPP_RETURN_IF_ERROR(file->WriteAt(data_offset[jobs[j]] + written, bytes));
        if (o.checksums) crc = Crc32(bytes, crc);
        written += bytes.size();
        return Status::Ok();
      });
      if (s.ok() && written != total)
        s = InternalError("the producer handed " + std::to_string(written) + " of the tensor's " +
                          std::to_string(total) + " bytes");
      if (!s.ok()) return s.WithContext("writing " + Quoted(e.fqn) + " to " + where);
      zo.record_crc32[jobs[j]] = crc;
      return Status::Ok();
    }));
    // Headers, descriptors and the central directory, now with every CRC.
    const zip::Layout layout = zip::LayOut(records, zo);
    if (layout.pieces.empty()) return InternalError(where + ": zip layout failed");
    uint64_t at = 0;
    for (const zip::Piece& p : layout.pieces) {
      if (!p.is_borrowed)
        DCPP_RETURN_IF_ERROR(file->WriteAt(
            at, {reinterpret_cast<const uint8_t*>(p.owned.data()), p.owned.size()}));
      at += p.size();
    }
    if (o.sync) DCPP_RETURN_IF_ERROR(file->Sync());
    DCPP_RETURN_IF_ERROR(file->Close());
    DCPP_RETURN_IF_ERROR(dir.Rename(tmp, name));
    if (o.sync) DCPP_RETURN_IF_ERROR(dir.SyncDirectory());
    return Status::Ok();
  };
  Status s = body();
  if (!s.ok()) {
    (void)file->Close();
    (void)dir.Remove(tmp);
  }
  return s;
}

}  // namespace

Status WriteTorchSave(std::span<const TorchSaveEntry> entries, storage::Storage& dir,
                      const std::string& name, const TorchSaveWriteOptions& options) {
  return CatchExceptions("writing " + dir.Describe(name),
                         [&] { return WriteImpl(entries, dir, name, options); });
}

}  // namespace dcpp::engine
