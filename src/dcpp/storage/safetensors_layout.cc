#include "dcpp/storage/safetensors_layout.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "dcpp/format/json.h"
#include "dcpp/format/safetensors.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/torch_save_layout.h"

namespace dcpp::storage {
namespace {

namespace st = format::safetensors;
namespace json = format::json;

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// The first read of a file: most headers fit, so one read usually does.
constexpr uint64_t kFirstRead = uint64_t{64} << 10;

Result<st::Header> ReadHeader(Storage& storage, const std::string& name) {
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, storage.OpenForRead(name));
  DCPP_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  std::string head(static_cast<size_t>(std::min(size, kFirstRead)), '\0');
  auto bytes = [](std::string& s) {
    return std::span<uint8_t>(reinterpret_cast<uint8_t*>(s.data()), s.size());
  };
  DCPP_RETURN_IF_ERROR(file->ReadAt(0, bytes(head)));
  auto n = st::ParseHeaderLength(bytes(head), size);
  if (!n.ok()) return n.status().WithContext(storage.Describe(name));
  const uint64_t want = st::kPrefixSize + *n;
  if (head.size() < want) {
    const size_t had = head.size();
    head.resize(static_cast<size_t>(want));
    DCPP_RETURN_IF_ERROR(file->ReadAt(had, bytes(head).subspan(had)));
  }
  auto h = st::ParseHeader(std::string_view(head).substr(st::kPrefixSize, *n), size);
  if (!h.ok()) return h.status().WithContext(storage.Describe(name));
  return h;
}

// DCP_SHARDING_INFO of one file: each tensor's saved offsets.
Result<std::unordered_map<std::string, Shape>> ShardingInfo(const std::string& text,
                                                            const std::string& where) {
  auto bad = [&](const std::string& what) {
    return DataLossError(where + ": __metadata__ \"DCP_SHARDING_INFO\" " + what);
  };
  auto parsed = json::Parse(text);
  if (!parsed.ok()) return bad("is not JSON: " + std::string(parsed.status().message()));
  const json::Object* o = parsed->GetObject();
  if (!o) return bad("is not a JSON object");
  std::unordered_map<std::string, Shape> out;
  for (const auto& [fqn, v] : o->members()) {
    const json::Json* offs = v.Find("saved_offsets");
    const json::Array* a = offs ? offs->GetArray() : nullptr;
    if (!a) return bad("has no \"saved_offsets\" list for " + Quoted(fqn));
    Shape s;
    for (const json::Json& x : *a) {
      const int64_t* i = x.GetInt();
      if (!i || *i < 0) return bad("holds a bad offset for " + Quoted(fqn));
      s.push_back(*i);
    }
    out.emplace(fqn, std::move(s));
  }
  return out;
}

// The files to read: those the index names, or every *.safetensors entry.
// `expected` receives the index's fqn -> file map (empty without an index).
Result<std::vector<std::string>> FilesToRead(Storage& storage,
                                             std::map<std::string, std::string>* expected) {
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> names, storage.List());
  const bool has_index =
      std::find(names.begin(), names.end(), kSafetensorsIndexName) != names.end();
  if (!has_index) {
    std::vector<std::string> files;
    for (const auto& n : names)
      if (EndsWith(n, kSafetensorsSuffix)) files.push_back(n);
    if (files.empty()) return NotFoundError(storage.Describe("") + " holds no .safetensors file");
    return files;
  }
  const std::string index_name(kSafetensorsIndexName);
  const std::string where = storage.Describe(index_name);
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, storage.OpenForRead(index_name));
  DCPP_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  // An index lists names only: far below this even for huge models.
  constexpr uint64_t kMaxIndexBytes = uint64_t{256} << 20;
  if (size > kMaxIndexBytes)
    return ResourceExhaustedError(where + ": " + std::to_string(size) + " bytes, more than " +
                                  std::to_string(kMaxIndexBytes));
  std::string text(static_cast<size_t>(size), '\0');
  DCPP_RETURN_IF_ERROR(file->ReadAt(0, {reinterpret_cast<uint8_t*>(text.data()), text.size()}));
  json::ParseOptions po;
  po.max_size = kMaxIndexBytes;
  auto parsed = json::Parse(text, po);
  if (!parsed.ok()) return parsed.status().WithContext(where);
  const json::Json* map = parsed->Find("weight_map");
  const json::Object* o = map ? map->GetObject() : nullptr;
  if (!o) return DataLossError(where + ": no \"weight_map\" object");
  std::set<std::string> files;
  for (const auto& [fqn, v] : o->members()) {
    const std::string* f = v.GetString();
    if (!f)
      return DataLossError(where + ": weight_map value of " + Quoted(fqn) + " is not a string");
    if (Status bad = CheckEntryName(*f); !bad.ok()) return bad.WithContext(where);
    files.insert(*f);
    (*expected)[fqn] = *f;
  }
  return std::vector<std::string>(files.begin(), files.end());
}

// Forwards reads to a directory's Storage for one entry only.
class SingleFileStorage final : public Storage {
 public:
  SingleFileStorage(std::unique_ptr<Storage> dir, std::string name)
      : dir_(std::move(dir)), name_(std::move(name)) {}

  std::string Describe(std::string_view name) const override {
    return name.empty() ? dir_->Describe(name_) : dir_->Describe(name);
  }
  Status CreateLocation() override { return ReadOnly(); }
  Result<std::unique_ptr<ReadableFile>> OpenForRead(std::string_view name) override {
    if (name != name_) return Missing(name);
    return dir_->OpenForRead(name);
  }
  Result<std::unique_ptr<WritableFile>> CreateForWrite(std::string_view) override {
    return ReadOnly();
  }
  Result<uint64_t> Size(std::string_view name) override {
    if (name != name_) return Missing(name);
    return dir_->Size(name);
  }
  Result<std::vector<std::string>> List() override {
    DCPP_RETURN_IF_ERROR(dir_->Size(name_).status());
    return std::vector<std::string>{name_};
  }
  Status Rename(std::string_view, std::string_view) override { return ReadOnly(); }
  Status Remove(std::string_view) override { return ReadOnly(); }
  Status SyncDirectory() override { return Status(); }
  Result<std::unique_ptr<StorageLock>> TryLock(std::string_view, std::string_view) override {
    return ReadOnly();
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
};

}  // namespace

Result<CheckpointFormat> DetectCheckpointFormat(Storage& storage) {
  // .metadata first: one stat, no listing, for the common case.
  DCPP_ASSIGN_OR_RETURN(bool dcp, HasCommittedCheckpoint(storage));
  if (dcp) return CheckpointFormat::kDcp;
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> names, storage.List());
  for (const auto& n : names)
    if (EndsWith(n, kSafetensorsSuffix)) return CheckpointFormat::kSafetensors;
  for (const auto& n : names)
    if (n == kTorchSaveValuesName) return CheckpointFormat::kTorchSave;
  return CheckpointFormat::kNone;
}

Result<Metadata> ReadSafetensorsMetadata(Storage& storage) {
  std::map<std::string, std::string> expected;
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> files, FilesToRead(storage, &expected));
  Metadata md;
  std::unordered_map<std::string, size_t> index;  // fqn -> entry
  for (const std::string& file : files) {
    const std::string where = storage.Describe(file);
    DCPP_ASSIGN_OR_RETURN(st::Header h, ReadHeader(storage, file));
    std::unordered_map<std::string, Shape> offsets;
    const std::string* info = h.FindMetadata(kDcpShardingInfoKey);
    if (info) {
      DCPP_ASSIGN_OR_RETURN(offsets, ShardingInfo(*info, where));
    }
    for (const st::TensorInfo& t : h.tensors) {
      const std::string at = Quoted(t.name) + " in " + where;
      if (!t.dtype.dtype)
        return UnimplementedError(at + " has dtype " + std::string(t.dtype.name) +
                                  ", which dcpp cannot hold (sub-byte elements)");
      Shape offset(t.shape.size(), 0);
      if (info) {
        auto it = offsets.find(t.name);
        if (it == offsets.end())
          return DataLossError(at + ": DCP_SHARDING_INFO has no saved_offsets for it");
        if (it->second.size() != t.shape.size())
          return DataLossError(at + ": saved_offsets " + ShapeToString(it->second) + " for a " +
                               std::to_string(t.shape.size()) + "-d tensor");
        offset = it->second;
      }
      for (size_t d = 0; d < offset.size(); ++d)
        if (offset[d] > INT64_MAX - t.shape[d])
          return DataLossError(at + ": saved_offsets " + ShapeToString(offset) + " overflow");
      ChunkMeta chunk;
      chunk.offsets = offset;
      chunk.sizes = t.shape;
      chunk.storage.relative_path = file;
      chunk.storage.offset = h.data_offset + t.begin;
      chunk.storage.length = t.nbytes();
      chunk.storage.encoding = StorageInfo::Encoding::kRawTensor;
      auto [it, fresh] = index.emplace(t.name, md.entries.size());
      if (fresh) {
        EntryMeta e;
        e.fqn = t.name;
        e.kind = EntryMeta::Kind::kTensor;
        e.properties.dtype = *t.dtype.dtype;
        e.size = Shape(t.shape.size(), 0);
        md.entries.push_back(std::move(e));
      }
      EntryMeta& e = md.entries[it->second];
      if (e.properties.dtype != *t.dtype.dtype || e.size.size() != t.shape.size())
        return DataLossError(at + " is " + std::string(t.dtype.name) + " " +
                             ShapeToString(t.shape) + ", but a piece in " +
                             storage.Describe(e.chunks.front().storage.relative_path) + " is " +
                             std::string(TorchName(e.properties.dtype)) + " " +
                             ShapeToString(e.chunks.front().sizes));
      for (size_t d = 0; d < e.size.size(); ++d)
        e.size[d] = std::max(e.size[d], offset[d] + t.shape[d]);
      e.chunks.push_back(std::move(chunk));
    }
  }
  for (const auto& [fqn, file] : expected) {
    auto it = index.find(fqn);
    bool found = false;
    if (it != index.end())
      for (const ChunkMeta& c : md.entries[it->second].chunks)
        found |= c.storage.relative_path == file;
    if (!found)
      return DataLossError(storage.Describe(std::string(kSafetensorsIndexName)) + " maps " +
                           Quoted(fqn) + " to " + file + ", which does not hold it");
  }
  return md;
}

Result<Metadata> ReadAnyCheckpointMetadata(Storage& storage) {
  auto format = DetectCheckpointFormat(storage);
  if (format.ok() && *format == CheckpointFormat::kSafetensors)
    return ReadSafetensorsMetadata(storage);
  if (format.ok() && *format == CheckpointFormat::kTorchSave) return ReadTorchSaveMetadata(storage);
  return ReadCheckpointMetadata(storage);
}

std::unique_ptr<Storage> NewSingleFileStorage(std::unique_ptr<Storage> dir, std::string name) {
  return std::make_unique<SingleFileStorage>(std::move(dir), std::move(name));
}

}  // namespace dcpp::storage
