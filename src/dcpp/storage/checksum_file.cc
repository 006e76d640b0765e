#include "dcpp/storage/checksum_file.h"

#include "dcpp/base/crc32.h"
#include "dcpp/io/dcp_layout.h"

namespace dcpp::storage {
namespace {

// A sidecar is small (one line per BYTE_IO item); refuse what no writer makes.
constexpr uint64_t kMaxChecksumFileBytes = uint64_t{256} << 20;

uint32_t CrcOf(std::string_view s) {
  return Crc32({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
}

}  // namespace

format::ChecksumFile MakeChecksumFile(std::string save_id, std::string_view metadata_bytes,
                                      std::vector<format::ItemChecksum> items) {
  format::ChecksumFile f;
  f.save_id = std::move(save_id);
  f.metadata_size = metadata_bytes.size();
  f.metadata_crc32 = CrcOf(metadata_bytes);
  f.items = std::move(items);
  return f;
}

Status WriteChecksumFile(Storage& storage, const format::ChecksumFile& file, bool sync) {
  const std::string name = format::ChecksumFileName(file.save_id);
  if (name.empty())
    return InvalidArgumentError("save_id '" + file.save_id + "' cannot name a checksum file");
  const std::string text = format::EncodeChecksumFile(file);
  // Written under a temporary name and renamed, unless the storage publishes
  // entries whole at Close() anyway (an object store, which has no rename).
  const std::string tmp = storage.PublishesOnClose() ? name : name + ".tmp";
  Status s = [&]() -> Status {
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> f, storage.CreateForWrite(tmp));
    DCPP_RETURN_IF_ERROR(
        f->WriteAt(0, {reinterpret_cast<const uint8_t*>(text.data()), text.size()}));
    if (sync) DCPP_RETURN_IF_ERROR(f->Sync());
    DCPP_RETURN_IF_ERROR(f->Close());
    return tmp == name ? Status() : storage.Rename(tmp, name);
  }();
  if (!s.ok() && tmp != name) (void)storage.Remove(tmp);
  return s;
}

Result<std::optional<format::ChecksumFile>> ReadChecksumFile(Storage& storage,
                                                             const Metadata& md) {
  if (!md.storage_meta || !md.storage_meta->save_id) return std::optional<format::ChecksumFile>();
  const std::string name = format::ChecksumFileName(*md.storage_meta->save_id);
  if (name.empty()) return std::optional<format::ChecksumFile>();
  const std::string path = storage.Describe(name);
  auto file = storage.OpenForRead(name);
  if (!file.ok() && file.status().code() == StatusCode::kNotFound)
    return std::optional<format::ChecksumFile>();
  if (!file.ok()) return file.status();
  DCPP_ASSIGN_OR_RETURN(uint64_t size, (*file)->Size());
  if (size > kMaxChecksumFileBytes)
    return DataLossError(path + " is " + std::to_string(size) + " bytes, more than a checksum "
                         "file can be (damaged checksum file)");
  std::string text(size, '\0');
  DCPP_RETURN_IF_ERROR((*file)->ReadAt(0, {reinterpret_cast<uint8_t*>(text.data()), size}));
  auto f = format::DecodeChecksumFile(text);
  if (!f.ok()) return f.status().WithContext(path);
  if (f->save_id != *md.storage_meta->save_id)
    return DataLossError(path + " names save '" + f->save_id + "', not '" +
                         *md.storage_meta->save_id + "' (damaged checksum file)");
  return std::optional<format::ChecksumFile>(std::move(*f));
}

Status CheckMetadataBytes(const Storage& storage, const format::ChecksumFile& sidecar,
                          std::string_view bytes) {
  if (bytes.size() == sidecar.metadata_size && CrcOf(bytes) == sidecar.metadata_crc32)
    return Status();
  return DataLossError(storage.Describe(io::kMetadataFileName) +
                       ": checksum mismatch: its " + std::to_string(bytes.size()) +
                       " bytes differ from the " + std::to_string(sidecar.metadata_size) +
                       " bytes its checksum file " + format::ChecksumFileName(sidecar.save_id) +
                       " records for save " + sidecar.save_id);
}

Result<format::ChecksumFile> ChecksumFileFromData(Storage& storage, const Metadata& md,
                                                  std::string save_id,
                                                  std::string_view metadata_bytes) {
  std::vector<format::ItemChecksum> items;
  for (const EntryMeta& e : md.entries) {
    if (e.is_tensor()) continue;
    const StorageInfo& s = e.storage;
    DCPP_RETURN_IF_ERROR(CheckEntryName(s.relative_path).WithContext("'" + e.fqn + "'"));
    const std::string path = storage.Describe(s.relative_path);
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file,
                          storage.OpenForRead(s.relative_path));
    DCPP_ASSIGN_OR_RETURN(uint64_t size, file->Size());
    if (s.offset > size || s.length > size - s.offset || s.length > kMaxChecksumFileBytes)
      return DataLossError("'" + e.fqn + "' is stored at bytes [" + std::to_string(s.offset) +
                           ", +" + std::to_string(s.length) + ") of " + path + ", which has " +
                           std::to_string(size) + " bytes");
    std::string bytes(s.length, '\0');
    DCPP_RETURN_IF_ERROR(
        file->ReadAt(s.offset, {reinterpret_cast<uint8_t*>(bytes.data()), bytes.size()}));
    items.push_back({e.fqn, s.relative_path, s.offset, s.length, CrcOf(bytes)});
  }
  return MakeChecksumFile(std::move(save_id), metadata_bytes, std::move(items));
}

}  // namespace dcpp::storage
