#include "dcpp/storage/dcp_layout.h"

#include "dcpp/format/metadata_codec.h"

namespace dcpp::storage {
namespace {
// .metadata of a 100k-tensor, 1000-rank checkpoint is far below this; a
// larger file is treated as corrupt rather than read into memory.
constexpr uint64_t kMaxMetadataBytes = uint64_t{4} << 30;
}  // namespace

Result<bool> HasCommittedCheckpoint(Storage& storage) {
  auto size = storage.Size(io::kMetadataFileName);
  if (size.ok()) return true;
  if (size.status().code() == StatusCode::kNotFound) return false;
  return size.status();
}

Result<std::string> ReadCheckpointMetadataBytes(Storage& storage) {
  auto file = storage.OpenForRead(io::kMetadataFileName);
  if (!file.ok()) {
    if (file.status().code() != StatusCode::kNotFound) return file.status();
    // Say whether the location or only .metadata is missing.
    DCPP_RETURN_IF_ERROR(storage.List().status());
    return NotFoundError(storage.Describe("") + " holds no committed checkpoint: " +
                         std::string(io::kMetadataFileName) +
                         " is missing (a save that did not finish leaves none)");
  }
  DCPP_ASSIGN_OR_RETURN(uint64_t size, (*file)->Size());
  if (size > kMaxMetadataBytes)
    return ResourceExhaustedError(storage.Describe(io::kMetadataFileName) + ": file has " +
                                  std::to_string(size) + " bytes, more than the limit of " +
                                  std::to_string(kMaxMetadataBytes));
  std::string out(static_cast<size_t>(size), '\0');
  DCPP_RETURN_IF_ERROR(
      (*file)->ReadAt(0, {reinterpret_cast<uint8_t*>(out.data()), out.size()}));
  return out;
}

Result<Metadata> DecodeCheckpointMetadata(const Storage& storage, std::string_view bytes) {
  auto md = format::DecodeMetadata(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  if (!md.ok()) return md.status().WithContext(storage.Describe(io::kMetadataFileName));
  return md;
}

Result<Metadata> ReadCheckpointMetadata(Storage& storage) {
  DCPP_ASSIGN_OR_RETURN(std::string bytes, ReadCheckpointMetadataBytes(storage));
  return DecodeCheckpointMetadata(storage, bytes);
}

Status CommitMetadata(Storage& storage, const Metadata& md, bool sync, std::string_view tag,
                      bool* published) {
  return CommitEncodedMetadata(storage, format::EncodeMetadata(md), sync, tag, published);
}

Status CommitEncodedMetadata(Storage& storage, std::string_view bytes, bool sync,
                             std::string_view tag, bool* published) {
  if (published) *published = false;
  if (storage.PublishesOnClose()) {
    // An object store publishes an entry whole at Close(), atomically
    // replacing the old one, and has no rename: write .metadata itself. A
    // failure leaves no object and the old .metadata in place.
    DCPP_ASSIGN_OR_RETURN(auto file, storage.CreateForWrite(io::kMetadataFileName));
    DCPP_RETURN_IF_ERROR(
        file->WriteAt(0, {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}));
    if (sync) DCPP_RETURN_IF_ERROR(file->Sync());
    DCPP_RETURN_IF_ERROR(file->Close());
    if (published) *published = true;
    if (sync) DCPP_RETURN_IF_ERROR(storage.SyncDirectory());
    return Status();
  }
  const std::string tmp = io::TempMetadataName(tag);
  bool created = false;
  Status status = [&]() -> Status {
    DCPP_ASSIGN_OR_RETURN(auto file, storage.CreateForWrite(tmp));
    created = true;
    DCPP_RETURN_IF_ERROR(
        file->WriteAt(0, {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}));
    if (sync) DCPP_RETURN_IF_ERROR(file->Sync());
    DCPP_RETURN_IF_ERROR(file->Close());
    return storage.Rename(tmp, io::kMetadataFileName);
  }();
  if (!status.ok()) {
    if (created) (void)storage.Remove(tmp);
    return status;
  }
  if (published) *published = true;
  if (sync) DCPP_RETURN_IF_ERROR(storage.SyncDirectory());
  return Status();
}

}  // namespace dcpp::storage
