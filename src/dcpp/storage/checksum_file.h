// The sidecar checksum file of a checkpoint directory (format/checksums.h
// says what it holds and why it is named after the save): written by every
// dcpp writer just before `.metadata` is committed, read on load and by
// `dcpp verify`. torch ignores it.
#ifndef DCPP_STORAGE_CHECKSUM_FILE_H_
#define DCPP_STORAGE_CHECKSUM_FILE_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/format/checksums.h"
#include "dcpp/metadata.h"
#include "dcpp/status.h"
#include "dcpp/storage/storage.h"

namespace dcpp::storage {

// The CRC-32 and size of `metadata_bytes` (the exact `.metadata` bytes about
// to be committed) filled into a sidecar for `save_id` with `items`.
format::ChecksumFile MakeChecksumFile(std::string save_id, std::string_view metadata_bytes,
                                      std::vector<format::ItemChecksum> items);

// Publishes `file` as .checksums.<save_id> atomically (written under a
// temporary name, synced when `sync`, renamed). The directory is not synced
// here: the commit that follows syncs it. InvalidArgument if the save_id
// cannot name a file (format::IsUsableSaveId); I/O errors name the entry.
Status WriteChecksumFile(Storage& storage, const format::ChecksumFile& file, bool sync);

// The sidecar belonging to `md` (named after its storage_meta.save_id):
// nullopt when `md` has no usable save_id or no such file exists (a
// checkpoint torch wrote, or one older than sidecars: nothing to check).
// DataLoss naming the file if it is damaged or names another save.
Result<std::optional<format::ChecksumFile>> ReadChecksumFile(Storage& storage,
                                                             const Metadata& md);

// DataLoss naming the `.metadata` unless `metadata_bytes` has the size and
// CRC-32 `sidecar` records for it.
Status CheckMetadataBytes(const Storage& storage, const format::ChecksumFile& sidecar,
                          std::string_view metadata_bytes);

// Builds the sidecar for a checkpoint whose data files are already written
// but whose `.metadata` is not yet committed (for writers that do not see
// the stored bytes, such as the torch drop-in writer): the CRC-32 of every
// BYTE_IO item of `md`, read back from its data file, and of
// `metadata_bytes`. Errors name the item and the file.
Result<format::ChecksumFile> ChecksumFileFromData(Storage& storage, const Metadata& md,
                                                  std::string save_id,
                                                  std::string_view metadata_bytes);

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_CHECKSUM_FILE_H_
