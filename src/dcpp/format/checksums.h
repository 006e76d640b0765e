// Checksums of a DCP checkpoint: the CRC-32s inside torch.save archives and
// dcpp's sidecar checksum file. Pure: no I/O.
//
// What protects what:
//   * Every record of a torch.save archive (data.pkl, the tensor storage
//     records, the small text records) carries a CRC-32 in its zip entry;
//     torch 2.13 and dcpp write them by default, for tensor items and for
//     pickled (BYTE_IO) values alike. An archive written with CRCs turned off
//     (torch's serialization config compute_crc32=False, dcpp's
//     SaveOptions::checksums=false) has 0 there, and such records are not
//     checked: 0 means "not computed" (an empty record's CRC is 0 too).
//   * zstd frames written by dcpp carry a content checksum; the decoder
//     checks it whenever a frame has one (transform/zstd_stream.cc).
//   * What neither covers -- `.metadata` itself, and the bytes of BYTE_IO
//     items as stored (a blob that is not an archive, or whose archive was
//     written without CRCs) -- is covered by the sidecar below.
//
// The sidecar is named after the save it belongs to: `.checksums.<save_id>`,
// where save_id is the `.metadata`'s storage_meta.save_id (a uuid4 for every
// dcpp writer and for torch's FileSystemWriter). torch ignores the file. It
// is written before `.metadata` is committed, so:
//   * a crash between the two leaves the old `.metadata` pointing at its own
//     sidecar (or none), and the new sidecar merely unreferenced;
//   * an overwrite by a writer that makes no sidecar (torch) gives a
//     `.metadata` whose save_id names no sidecar: nothing is checked, and
//     nothing looks corrupt;
//   * a sidecar found under the current save_id whose recorded `.metadata`
//     size/CRC differ from the file means the `.metadata` (or the sidecar)
//     was damaged, never that the sidecar is stale.
// Sidecars named after any other save_id are stale leftovers that cleanup
// may remove (IsChecksumFileName, SaveIdOfChecksumFile).
#ifndef DCPP_FORMAT_CHECKSUMS_H_
#define DCPP_FORMAT_CHECKSUMS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/format/zip.h"
#include "dcpp/status.h"

namespace dcpp::format {

// ---- CRC-32s inside torch.save archives ----

// OK if `entry` records no CRC (0) or records `actual`; otherwise DataLoss
// naming the record, both CRCs and where the record's data starts in the
// archive (`data_offset`). Thread-safe.
Status CheckRecordCrc(const zip::Entry& entry, uint32_t actual, uint64_t data_offset);

// Checks the CRC-32 of every record of `reader` except the one named `skip`
// (record name without the archive prefix; a record whose bytes the caller
// checks as they pass). Records are read through the reader (a ranged reader
// fetches those it has not cached, up to its max_read). Errors: DataLoss
// from CheckRecordCrc or a record that cannot be read. Thread-safe.
Status CheckArchiveCrcs(const zip::Reader& reader, std::string_view skip = {});

// Whether `archive` is a zip archive whose records carry CRCs that all match
// (OK), or the first mismatch (DataLoss). Bytes that do not open as a zip
// archive are OK here: the caller's decoder reports what is wrong with them.
Status CheckArchiveBytes(zip::Bytes archive);

// ---- The sidecar checksum file ----

inline constexpr std::string_view kChecksumFilePrefix = ".checksums.";
inline constexpr std::string_view kChecksumFileFormat = "dcpp.checksums/1";

// Whether `save_id` may name a sidecar: 1..128 characters from [A-Za-z0-9_-]
// (save_id is read from untrusted metadata; anything else gets no sidecar).
bool IsUsableSaveId(std::string_view save_id);
// ".checksums.<save_id>", or "" if !IsUsableSaveId(save_id).
std::string ChecksumFileName(std::string_view save_id);
// Whether `file_name` (a bare name, no directory) is a sidecar name, and if
// so the save_id it names.
bool IsChecksumFileName(std::string_view file_name);
std::optional<std::string> SaveIdOfChecksumFile(std::string_view file_name);

// The stored bytes of one item (after its transforms), located as the
// metadata's StorageInfo locates them.
struct ItemChecksum {
  std::string fqn;  // for messages only
  std::string relative_path;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint32_t crc32 = 0;

  friend bool operator==(const ItemChecksum&, const ItemChecksum&) = default;
};

struct ChecksumFile {
  std::string save_id;
  uint64_t metadata_size = 0;  // the exact `.metadata` bytes this belongs to
  uint32_t metadata_crc32 = 0;
  std::vector<ItemChecksum> items;

  // The item stored at exactly (relative_path, offset, length), or null.
  const ItemChecksum* Find(std::string_view relative_path, uint64_t offset,
                           uint64_t length) const;

  friend bool operator==(const ChecksumFile&, const ChecksumFile&) = default;
};

// JSON text: {"format": kChecksumFileFormat, "save_id", "metadata": {"size",
// "crc32"}, "items": [{"fqn","path","offset","length","crc32"}], "self_crc32"}
// with CRCs as 8 lowercase hex digits; self_crc32 is the CRC-32 of the text
// up to the `"self_crc32"` key, so a damaged sidecar is told apart from a
// damaged checkpoint. Thread-safe.
std::string EncodeChecksumFile(const ChecksumFile& file);

// Parses EncodeChecksumFile's output. DataLoss (naming what is wrong) for
// anything else: not JSON, a wrong format tag, a missing or mistyped field,
// a CRC that is not 8 hex digits, a negative size, a self_crc32 mismatch.
// Refuses texts over 256 MiB (ResourceExhausted). Never crashes.
Result<ChecksumFile> DecodeChecksumFile(std::string_view text);

}  // namespace dcpp::format

#endif  // DCPP_FORMAT_CHECKSUMS_H_
