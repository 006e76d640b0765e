// The torch.save container: a zip archive laid out exactly as PyTorch's
// writer (caffe2 inline_container + miniz) lays it out, and a reader that
// checks every offset against the archive's size.
//
// Layout written (docs/format.md, "Items"): stored
// entries named "<archive>/<record>", local headers with flags 0x0808 (0x0800
// for empty records), zero time/date/CRC/sizes in the local header, an "FB"
// extra field padding each record's data to `alignment` bytes from the start
// of the archive, a data descriptor after each non-empty record, zip64 extras
// when sizes/offsets need them, a central directory, then zip64 EOCD + zip64
// locator + EOCD. Pure: no I/O; large record data is referenced, not copied.
#ifndef DCPP_FORMAT_ZIP_H_
#define DCPP_FORMAT_ZIP_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/status.h"

namespace dcpp::format::zip {

using Bytes = std::span<const uint8_t>;

inline Bytes AsBytes(std::string_view s) {
  return Bytes(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

// ---- Writing ----

struct RecordSpec {
  std::string name;  // record name without the archive prefix, e.g. "data.pkl"
  // Borrowed if >= WriteOptions::copy_threshold: must then outlive the Layout.
  // LayOut reads these bytes only to copy them (size < copy_threshold) or to
  // checksum them (compute_crc32); otherwise only data.size() is used, so a
  // span with a null pointer is accepted then (CheckLayOut says when).
  Bytes data;
};

// A piece of the output: either bytes the layout owns, or a borrowed span of
// one record's data (so tensor bytes go from caller memory to the file).
struct Piece {
  std::string owned;
  Bytes borrowed;
  bool is_borrowed = false;

  size_t size() const { return is_borrowed ? borrowed.size() : owned.size(); }
};

struct Layout {
  // Concatenated in order, these are the archive. Adjacent owned bytes are
  // merged, so a single-tensor archive is (owned, borrowed, owned).
  std::vector<Piece> pieces;
  uint64_t total_size = 0;

  // Concatenates the pieces (copies; for tests and small archives). Reads
  // every borrowed span, so each must point at real memory.
  std::string Flatten() const;
};

struct WriteOptions {
  std::string archive_name = "archive";
  // Records smaller than this are copied into owned pieces (so callers may
  // pass temporaries such as data.pkl); larger ones are borrowed.
  size_t copy_threshold = 64 * 1024;
  uint32_t alignment = 64;  // data start of each record, from archive start
  // CRC-32 of each record, as torch writes by default. false writes 0, which
  // torch also accepts (its reader never checks CRCs).
  bool compute_crc32 = true;
  // Empty, or one CRC-32 per record, used instead of computing them: for a
  // writer that streams record data (checksumming it on the way) and then
  // lays the archive out again to write the descriptors and the central
  // directory. A record's data is then read only if it is copied (size <
  // copy_threshold). Any other size is refused by CheckLayOut.
  std::vector<uint32_t> record_crc32;
  // With compute_crc32: if set and it returns a value for a record's data,
  // that value is the record's CRC-32 and its bytes are not read (a writer
  // that checksummed them as they went to the file, while they were in the
  // CPU cache). Must return the true CRC-32 of the bytes or nothing.
  std::function<std::optional<uint32_t>(Bytes data)> known_crc32;
};

// Largest WriteOptions::alignment: the FB field's padding (< alignment) plus
// its 4-byte header and a 28-byte zip64 extra must fit the 16-bit extra length.
inline constexpr uint32_t kMaxAlignment = 0xFFFF - 4 - 28 + 1;

// OK if LayOut can write `records` with `options`; otherwise InvalidArgument
// naming the first problem: empty archive name or one containing '/' or NUL;
// alignment outside [1, kMaxAlignment]; an empty, duplicate or NUL-containing
// record name; "<archive>/<name>" longer than 0xFFFF bytes; a name ending in
// '/' with data; a null data pointer with a non-zero size where LayOut would
// read the bytes; a central directory or total size past what the format (or
// uint64) can hold. Pure; thread-safe.
Status CheckLayOut(const std::vector<RecordSpec>& records, const WriteOptions& options = {});

// Lays out an archive holding `records` in the given order, byte for byte as
// torch.save's writer would with the same records, alignment and CRC setting.
// Record names ending in '/' get the DOS directory attribute, as in miniz.
// Returns an empty Layout (no pieces, total_size 0) if CheckLayOut fails; a
// valid layout is never empty (the end records alone take kMinTailBytes).
// The result borrows the data of records >= copy_threshold bytes. Pure;
// thread-safe for distinct outputs.
Layout LayOut(const std::vector<RecordSpec>& records, const WriteOptions& options = {});

// ---- Reading ----

struct Entry {
  std::string name;  // record name without the "<archive>/" prefix
  uint64_t local_header_offset = 0;
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint32_t crc32 = 0;
  uint16_t method = 0;  // 0 = stored; dcpp reads only stored records
  uint16_t flags = 0;   // general-purpose bit flags; bit 0 = encrypted (unsupported)
};

// Where the central directory is, from the end records.
struct EndRecord {
  uint64_t cd_offset = 0;
  uint64_t cd_size = 0;
  uint64_t entry_count = 0;
};

// Bytes from the end of an archive that always contain the end records when
// the archive has no comment (torch writes none): EOCD + zip64 locator +
// zip64 EOCD. Archives with comments need up to kMaxTailBytes.
inline constexpr size_t kMinTailBytes = 22 + 20 + 56;
inline constexpr size_t kMaxTailBytes = kMinTailBytes + 0xFFFF;

// Parses the end records from `tail`, the last tail.size() bytes of an
// archive of `archive_size` bytes. The EOCD is the last signature whose
// comment ends exactly at the end of the archive; the zip64 records are used
// when a zip64 locator precedes it (then every classic field must be either
// saturated or equal to its zip64 value). Checks that the central directory
// ends before the end records and that entry_count <= cd_size / 46.
// InvalidArgument if tail is longer than the archive; DataLoss if the records
// are absent, truncated or inconsistent (or the zip64 record lies outside
// `tail`); Unimplemented for multi-disk archives. Never reads outside `tail`.
Result<EndRecord> ParseEnd(Bytes tail, uint64_t archive_size);

// Parses `cd` (exactly the central directory bytes located by `end`).
// Strips and checks the common "<archive>/" prefix (torch requires all
// entries to share it) and checks each entry's range lies in the archive.
// Entries keep central-directory order. InvalidArgument if cd.size() differs
// from end.cd_size; DataLoss for a truncated or malformed entry (including
// its zip64 extra), a name outside the archive folder, a duplicate name,
// a stored entry whose sizes differ, an entry whose local header and data
// would run into the central directory, or bytes left after the last entry.
// An empty directory has an empty archive_name.
struct Directory {
  std::string archive_name;
  std::vector<Entry> entries;

  // The entry named `record_name` (without the prefix), or null. Linear in
  // the number of entries; Reader keeps an index for repeated lookups.
  const Entry* Find(std::string_view record_name) const;
};
Result<Directory> ParseCentralDirectory(Bytes cd, const EndRecord& end, uint64_t archive_size);

// Given the bytes starting at `entry`'s local header (at least 30 bytes; the
// name and extra field lengths are read from it), returns the archive offset
// where the record's data starts. The local header's own length fields decide,
// as torch's reader does. DataLoss if fewer than 30 bytes are given, the
// signature is wrong, or the data would end past `archive_size`.
Result<uint64_t> DataOffset(Bytes local_header, const Entry& entry, uint64_t archive_size);

// Fetches `length` bytes at `offset` of an archive that is not held in
// memory (a range of a file). Must return exactly `length` bytes or an error.
using ReadAtFn = std::function<Result<std::string>(uint64_t offset, uint64_t length)>;

// Reads records of a stored-only zip archive: either one held entirely in
// memory (Open; borrows `archive`, which must outlive the Reader and every
// span Read returns) or one read piecewise (OpenRanged). Open checks the end
// records and the central directory; each Read checks its local header.
// CRCs are not verified (torch's reader does not either, and torch writes 0
// when CRCs are disabled). Const methods are thread-safe.
class Reader {
 public:
  // DataLoss (or Unimplemented, see ParseEnd) if `archive` is not a readable
  // zip archive. An archive with no entries opens, and every Read is NotFound.
  static Result<Reader> Open(Bytes archive);

  // An archive of `archive_size` bytes read through `read_at`: the first and
  // last 64 KiB are fetched now (where the end records, the central directory
  // and small records such as data.pkl lie), anything else when Read asks.
  // Read returns views into bytes the Reader owns (valid for its lifetime)
  // and refuses records larger than `max_read` bytes (ResourceExhausted): a
  // caller wanting part of a large record uses Stat/Offset and fetches the
  // bytes itself. Errors of read_at are returned as they are.
  static Result<Reader> OpenRanged(uint64_t archive_size, ReadAtFn read_at, uint64_t max_read);

  const Directory& directory() const { return dir_; }
  uint64_t archive_size() const { return archive_size_; }
  // The data of a stored record. NotFound if absent; Unimplemented for a
  // compressed or encrypted record; DataLoss if out of range.
  Result<Bytes> Read(std::string_view record_name) const;
  // Offset within the archive where `record_name`'s data starts; errors as Read.
  Result<uint64_t> Offset(std::string_view record_name) const;
  // The directory entry of a readable record (its size is compressed_size);
  // errors as Read.
  Result<const Entry*> Stat(std::string_view record_name) const;

 private:
  struct Ranged;  // OpenRanged's source and the bytes it fetched
  static Result<Reader> FromEnd(Bytes tail, uint64_t archive_size,
                                const std::function<Result<Bytes>(uint64_t, uint64_t)>& bytes_at);
  // `length` bytes at `offset` (checked against the archive).
  Result<Bytes> BytesAt(uint64_t offset, uint64_t length) const;

  Bytes archive_;
  uint64_t archive_size_ = 0;
  std::shared_ptr<Ranged> ranged_;
  Directory dir_;
  std::vector<uint32_t> by_name_;  // indices into dir_.entries, sorted by name
};

}  // namespace dcpp::format::zip

#endif  // DCPP_FORMAT_ZIP_H_
