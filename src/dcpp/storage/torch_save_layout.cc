#include "dcpp/storage/torch_save_layout.h"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "dcpp/format/torch_pickle.h"
#include "dcpp/format/zip.h"
#include "dcpp/plan/flatten.h"

namespace dcpp::storage {
namespace {

namespace zip = format::zip;

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// data.pkl of real state dicts is kilobytes to a few hundred MiB (millions
// of optimizer entries); the cap only stops a hostile directory from
// making the reader fetch more than this at once.
constexpr uint64_t kMaxRecordRead = uint64_t{4} << 30;

struct Parsed {
  Metadata md;
  std::string values;  // kTorchSaveValuesName's bytes
};

// Cuts `ref` into boxes that are row-major runs of its storage (see the
// top of the header) and appends them to `e.chunks`.
Status AddChunks(const format::StoredTensorRef& ref, const std::string& file, EntryMeta& e) {
  const size_t nd = ref.shape.size();
  const uint64_t esize = ElementSize(ref.dtype);
  auto chunk_at = [&](const Shape& idx, const Shape& box) {
    uint64_t element = static_cast<uint64_t>(ref.storage_offset);
    for (size_t d = 0; d < nd; ++d)
      element += static_cast<uint64_t>(idx[d]) * static_cast<uint64_t>(ref.strides[d]);
    ChunkMeta c;
    c.offsets = idx;
    c.sizes = box;
    c.storage.relative_path = file;
    c.storage.offset = ref.storage_record_offset + element * esize;
    c.storage.length = static_cast<uint64_t>(NumElements(box)) * esize;
    c.storage.encoding = StorageInfo::Encoding::kRawTensor;
    e.chunks.push_back(std::move(c));
  };
  if (NumElements(ref.shape) == 0) {
    // Nothing is addressed: one empty chunk at the record's start.
    ChunkMeta c;
    c.offsets = Shape(nd, 0);
    c.sizes = ref.shape;
    c.storage.relative_path = file;
    c.storage.offset = ref.storage_record_offset;
    c.storage.length = 0;
    c.storage.encoding = StorageInfo::Encoding::kRawTensor;
    e.chunks.push_back(std::move(c));
    return Status::Ok();
  }
  // The box's dims: a chain of dims (in logical order) whose strides are
  // row-major for their sizes, ending in a stride-1 dim; size-1 dims are
  // always whole. A contiguous tensor's chain is every dim: one chunk.
  std::vector<bool> whole(nd, false);
  for (size_t d = 0; d < nd; ++d) whole[d] = ref.shape[d] == 1;
  std::optional<size_t> cur;
  for (size_t d = nd; d-- > 0;)
    if (ref.shape[d] > 1 && ref.strides[d] == 1) {
      cur = d;
      break;
    }
  if (cur) {
    whole[*cur] = true;
    int64_t want = ref.shape[*cur];
    for (;;) {
      std::optional<size_t> next;
      for (size_t d = *cur; d-- > 0;)
        if (ref.shape[d] > 1 && ref.strides[d] == want) {
          next = d;
          break;
        }
      if (!next) break;
      whole[*next] = true;
      if (__builtin_mul_overflow(want, ref.shape[*next], &want)) break;
      cur = next;
    }
  }
  Shape box(nd, 1);
  uint64_t count = 1;
  for (size_t d = 0; d < nd; ++d) {
    if (whole[d])
      box[d] = ref.shape[d];
    else
      count *= static_cast<uint64_t>(ref.shape[d]);  // numel fits in int64
    if (count > kMaxChunksPerTensor)
      return UnimplementedError("tensor " + Quoted(e.fqn) + " of size " +
                                ShapeToString(ref.shape) + " with strides " +
                                ShapeToString(ref.strides) +
                                " is laid out in more than " +
                                std::to_string(kMaxChunksPerTensor) +
                                " separate runs of its storage; save it contiguous "
                                "(tensor.contiguous()) to read it with dcpp");
  }
  Shape idx(nd, 0);
  for (;;) {
    chunk_at(idx, box);
    size_t d = nd;
    while (d-- > 0) {
      if (whole[d]) continue;
      if (++idx[d] < ref.shape[d]) break;
      idx[d] = 0;
    }
    if (d == static_cast<size_t>(-1)) break;
  }
  return Status::Ok();
}

// Replaces the stand-ins inside a non-tensor value by tensors read from the
// file (each tensor's whole storage record: values holding tensors are
// small, e.g. a tuple of a few).
Status Materialize(Value& v, const format::DescribedObject& obj, const ReadableFile& file,
                   const std::string& where) {
  switch (v.kind()) {
    case Value::Kind::kList:
    case Value::Kind::kTuple:
      for (Value& item : v.items()) DCPP_RETURN_IF_ERROR(Materialize(item, obj, file, where));
      return Status::Ok();
    case Value::Kind::kDict:
      for (Value& item : v.dict().mutable_values())
        DCPP_RETURN_IF_ERROR(Materialize(item, obj, file, where));
      for (const Value& key : v.dict().keys())
        if (key.is_tensor())
          return UnimplementedError(where + ": a dict keyed by tensors");
      return Status::Ok();
    case Value::Kind::kTensor: {
      const format::StoredTensorRef* ref = obj.Find(v.tensor());
      if (!ref) return InternalError(where + ": a tensor that is not the file's");
      const size_t n = static_cast<size_t>(ref->storage_nbytes);
      void* p = std::aligned_alloc(64, (std::max<size_t>(n, 1) + 63) / 64 * 64);
      if (!p) return ResourceExhaustedError(where + ": cannot allocate " + std::to_string(n) +
                                            " bytes for storage data/" + ref->storage_key);
      std::shared_ptr<void> owner(p, [](void* q) { std::free(q); });
      DCPP_RETURN_IF_ERROR(file.ReadAt(ref->storage_record_offset,
                                       {static_cast<uint8_t*>(p), n}));
      TensorView view;
      view.dtype = ref->dtype;
      view.shape = ref->shape;
      view.strides = ref->strides;
      view.data = NumElements(ref->shape) == 0
                      ? p
                      : static_cast<uint8_t*>(p) +
                            static_cast<size_t>(ref->storage_offset) * ElementSize(ref->dtype);
      v = Value(Tensor::Adopt(std::move(view), std::move(owner)));
      return Status::Ok();
    }
    default:
      return Status::Ok();
  }
}

Result<Parsed> ParseFile(Storage& storage, const std::string& name) {
  const std::string where = storage.Describe(name);
  auto run = [&]() -> Result<Parsed> {
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, storage.OpenForRead(name));
    DCPP_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    std::string head(static_cast<size_t>(std::min<uint64_t>(size, 4)), '\0');
    DCPP_RETURN_IF_ERROR(file->ReadAt(0, {reinterpret_cast<uint8_t*>(head.data()), head.size()}));
    if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80)
      return UnimplementedError(
          "a pickle in torch's legacy serialization format (torch.save with "
          "_use_new_zipfile_serialization=False), which dcpp does not read; re-save it with "
          "torch.save's default format");
    if (!LooksLikeZip(head))
      return DataLossError("not a torch.save file: it does not start like a zip archive");
    const ReadableFile* f = file.get();
    zip::ReadAtFn read_at = [f](uint64_t offset, uint64_t length) -> Result<std::string> {
      std::string out(static_cast<size_t>(length), '\0');
      DCPP_RETURN_IF_ERROR(f->ReadAt(offset, {reinterpret_cast<uint8_t*>(out.data()), out.size()}));
      return out;
    };
    DCPP_ASSIGN_OR_RETURN(zip::Reader reader,
                          zip::Reader::OpenRanged(size, read_at, kMaxRecordRead));
    if (!reader.directory().Find("data.pkl"))
      return DataLossError("a zip archive without a data.pkl record: not a torch.save file");
    DCPP_ASSIGN_OR_RETURN(format::DescribedObject obj, format::DescribeObjectArchive(reader));
    if (!obj.root.is_dict())
      return InvalidArgumentError("holds a " + std::string(Value::KindName(obj.root.kind())) +
                                  ", not a dict: only a state dict (a dict, possibly nested) "
                                  "opens as a checkpoint");
    std::unordered_map<const void*, const format::StoredTensorRef*> refs;
    for (const format::StoredTensorRef& r : *obj.tensors) refs.emplace(&r, &r);
    DCPP_ASSIGN_OR_RETURN(std::vector<plan::MutableFlatEntry> flat, plan::FlattenMutable(obj.root));
    Parsed out;
    out.md.version = kDcpVersion;
    for (plan::MutableFlatEntry& f : flat) {
      EntryMeta e;
      e.fqn = f.fqn;
      e.path = f.path;
      if (f.value->is_tensor()) {
        auto it = refs.find(f.value->tensor().data());
        if (it == refs.end()) return InternalError("tensor " + Quoted(f.fqn) + " is not the file's");
        const format::StoredTensorRef& ref = *it->second;
        e.kind = EntryMeta::Kind::kTensor;
        e.properties.dtype = ref.dtype;
        e.properties.requires_grad = ref.requires_grad;
        e.size = ref.shape;
        DCPP_RETURN_IF_ERROR(AddChunks(ref, name, e));
      } else {
        e.kind = EntryMeta::Kind::kBytes;
        DCPP_RETURN_IF_ERROR(Materialize(*f.value, obj, *file, Quoted(f.fqn)));
        Result<std::string> blob = format::EncodeValueArchive(*f.value);
        if (!blob.ok()) return blob.status().WithContext(Quoted(f.fqn));
        e.storage.relative_path = std::string(kTorchSaveValuesName);
        e.storage.offset = out.values.size();
        e.storage.length = blob->size();
        out.values += *blob;
      }
      out.md.entries.push_back(std::move(e));
    }
    return out;
  };
  Result<Parsed> r = run();
  if (!r.ok()) return r.status().WithContext(where);
  return r;
}

Result<std::string> TheFile(Storage& storage) {
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> names, storage.List());
  std::vector<std::string> files;
  for (auto& n : names)
    if (n != kTorchSaveValuesName) files.push_back(n);
  if (files.size() != 1)
    return InvalidArgumentError(storage.Describe("") + " is not a single torch.save file (" +
                                std::to_string(files.size()) + " entries)");
  return files.front();
}

class StringFile final : public ReadableFile {
 public:
  StringFile(std::shared_ptr<const Parsed> parsed, std::string where)
      : parsed_(std::move(parsed)), where_(std::move(where)) {}
  Result<uint64_t> Size() const override { return parsed_->values.size(); }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const override {
    const std::string& s = parsed_->values;
    if (offset > s.size() || out.size() > s.size() - offset)
      return DataLossError(where_ + ": unexpected end of file: wanted " +
                           std::to_string(out.size()) + " bytes at offset " +
                           std::to_string(offset) + ", file has " + std::to_string(s.size()) +
                           " bytes");
    if (!out.empty()) std::memcpy(out.data(), s.data() + offset, out.size());
    return Status::Ok();
  }

 private:
  std::shared_ptr<const Parsed> parsed_;
  std::string where_;
};

class TorchSaveStorage final : public Storage {
 public:
  TorchSaveStorage(std::unique_ptr<Storage> dir, std::string name)
      : dir_(std::move(dir)), name_(std::move(name)) {}

  std::string Describe(std::string_view name) const override {
    return name.empty() ? dir_->Describe(name_) : dir_->Describe(name);
  }
  Status CreateLocation() override { return ReadOnly(); }
  Result<std::unique_ptr<ReadableFile>> OpenForRead(std::string_view name) override {
    if (name == kTorchSaveValuesName) {
      DCPP_ASSIGN_OR_RETURN(std::shared_ptr<const Parsed> p, Get());
      return std::unique_ptr<ReadableFile>(std::make_unique<StringFile>(p, Describe(name)));
    }
    if (name != name_) return Missing(name);
    return dir_->OpenForRead(name);
  }
  Result<std::unique_ptr<WritableFile>> CreateForWrite(std::string_view) override {
    return ReadOnly();
  }
  Result<uint64_t> Size(std::string_view name) override {
    if (name == kTorchSaveValuesName) {
      DCPP_ASSIGN_OR_RETURN(std::shared_ptr<const Parsed> p, Get());
      return p->values.size();
    }
    if (name != name_) return Missing(name);
    return dir_->Size(name);
  }
  Result<std::vector<std::string>> List() override {
    DCPP_RETURN_IF_ERROR(dir_->Size(name_).status());
    std::vector<std::string> names{std::string(kTorchSaveValuesName), name_};
    std::sort(names.begin(), names.end());
    return names;
  }
  Status Rename(std::string_view, std::string_view) override { return ReadOnly(); }
  Status Remove(std::string_view) override { return ReadOnly(); }
  Status SyncDirectory() override { return Status(); }
  Result<std::unique_ptr<StorageLock>> TryLock(std::string_view, std::string_view) override {
    return ReadOnly();
  }

  // The file parsed once (a failure is kept and returned again).
  Result<std::shared_ptr<const Parsed>> Get() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!done_) {
      Result<Parsed> p = ParseFile(*dir_, name_);
      if (p.ok())
        parsed_ = std::make_shared<const Parsed>(std::move(*p));
      else
        error_ = p.status();
      done_ = true;
    }
    if (!error_.ok()) return error_;
    return parsed_;
  }

 private:
  Status ReadOnly() const {
    return UnimplementedError(dir_->Describe(name_) +
                              " is a single file: it can be read as a checkpoint, not written to");
  }
  Status Missing(std::string_view name) const {
    return NotFoundError(dir_->Describe(name) + " does not exist (" + dir_->Describe(name_) +
                         " is opened alone)");
  }

  std::unique_ptr<Storage> dir_;
  std::string name_;
  std::mutex mu_;
  bool done_ = false;
  Status error_;
  std::shared_ptr<const Parsed> parsed_;
};

}  // namespace

bool LooksLikeZip(std::string_view head) {
  if (head.size() < 4) return false;
  return head.substr(0, 4) == std::string_view("PK\x03\x04", 4) ||
         head.substr(0, 4) == std::string_view("PK\x05\x06", 4);
}

std::unique_ptr<Storage> NewTorchSaveStorage(std::unique_ptr<Storage> dir, std::string name) {
  return std::make_unique<TorchSaveStorage>(std::move(dir), std::move(name));
}

Result<Metadata> ReadTorchSaveMetadata(Storage& storage) {
  if (auto* ts = dynamic_cast<TorchSaveStorage*>(&storage)) {
    DCPP_ASSIGN_OR_RETURN(std::shared_ptr<const Parsed> p, ts->Get());
    return p->md;
  }
  DCPP_ASSIGN_OR_RETURN(std::string name, TheFile(storage));
  DCPP_ASSIGN_OR_RETURN(Parsed p, ParseFile(storage, name));
  return std::move(p.md);
}

}  // namespace dcpp::storage
