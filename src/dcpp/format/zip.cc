#include "dcpp/format/zip.h"

#include <algorithm>
#include <optional>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <utility>

#include "dcpp/base/crc32.h"

namespace dcpp::format::zip {
namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;     // PK\3\4
constexpr uint32_t kDataDescriptorSig = 0x08074b50;  // PK\7\8
constexpr uint32_t kCentralHeaderSig = 0x02014b50;   // PK\1\2
constexpr uint32_t kZip64EndSig = 0x06064b50;        // PK\6\6
constexpr uint32_t kZip64LocatorSig = 0x07064b50;    // PK\6\7
constexpr uint32_t kEndSig = 0x06054b50;             // PK\5\6
constexpr size_t kLocalHeaderSize = 30;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kZip64LocatorSize = 20;
constexpr size_t kEndSize = 22;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr uint16_t kFlagDataDescriptor = 0x0008;
constexpr uint16_t kFlagUtf8 = 0x0800;
constexpr uint16_t kFlagEncrypted = 0x0001;
constexpr uint32_t kDosDirectoryAttribute = 0x10;
constexpr uint64_t kMax16 = 0xFFFF;
constexpr uint64_t kMax32 = 0xFFFFFFFF;
// miniz refuses an entry once the central directory could reach 4 GiB,
// reserving room for the largest zip64 extra it writes there (3 x 8 bytes).
constexpr uint64_t kZip64MaxCentralExtra = 4 + 3 * 8;

bool AddOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_add_overflow(a, b, out);
}

// ---- Little-endian encoding ----

void Put16(std::string& out, uint64_t v) {
  out.push_back(static_cast<char>(v & 0xFF));
  out.push_back(static_cast<char>((v >> 8) & 0xFF));
}
void Put32(std::string& out, uint64_t v) {
  Put16(out, v & 0xFFFF);
  Put16(out, (v >> 16) & 0xFFFF);
}
void Put64(std::string& out, uint64_t v) {
  Put32(out, v & 0xFFFFFFFF);
  Put32(out, v >> 32);
}

uint16_t Get16(Bytes b, size_t at) { return static_cast<uint16_t>(b[at] | (b[at + 1] << 8)); }
uint32_t Get32(Bytes b, size_t at) {
  return static_cast<uint32_t>(Get16(b, at)) | (static_cast<uint32_t>(Get16(b, at + 2)) << 16);
}
uint64_t Get64(Bytes b, size_t at) {
  return static_cast<uint64_t>(Get32(b, at)) | (static_cast<uint64_t>(Get32(b, at + 4)) << 32);
}

std::string Str(uint64_t v) { return std::to_string(v); }

// Names in error messages come from untrusted bytes: quote them, escape
// anything unprintable and cap the length.
std::string Quote(std::string_view s) {
  constexpr size_t kMaxShown = 200;
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7F && c != '\'' && c != '\\') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[5];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    }
  }
  if (s.size() > kMaxShown) out += "...";
  out += "'";
  return out;
}

// ---- Writing ----

// Sizes of the variable parts of one record, as miniz decides them.
struct RecordGeometry {
  bool zip64_size = false;    // size >= 0xFFFFFFFF: sizes go in the zip64 extra
  bool zip64_offset = false;  // local header offset >= 0xFFFFFFFF
  uint64_t zip64_extra = 0;   // bytes of zip64 extra in the local header
  uint64_t padding = 0;       // 'Z' bytes in the FB field

  bool has_zip64() const { return zip64_size || zip64_offset; }
};

RecordGeometry Geometry(uint64_t cursor, size_t full_name_size, uint64_t size, uint32_t alignment) {
  RecordGeometry g;
  g.zip64_size = size >= kMax32;
  g.zip64_offset = cursor >= kMax32;
  if (g.has_zip64()) g.zip64_extra = 4 + (g.zip64_size ? 16 : 0) + (g.zip64_offset ? 8 : 0);
  // torch's getPadding: the data starts after the header, the name, the zip64
  // extra and the 4-byte FB field header; pad that start to `alignment`.
  const uint64_t start = cursor + kLocalHeaderSize + full_name_size + g.zip64_extra + 4;
  const uint64_t mod = start % alignment;
  g.padding = mod == 0 ? 0 : alignment - mod;
  return g;
}

uint64_t DescriptorSize(uint64_t size, const RecordGeometry& g) {
  if (size == 0) return 0;  // no data descriptor for empty records
  return g.has_zip64() ? 24 : 16;
}

uint64_t CentralExtraSize(const RecordGeometry& g) {
  return g.has_zip64() ? 4 + (g.zip64_size ? 16 : 0) + (g.zip64_offset ? 8 : 0) : 0;
}

// Collects the output, merging adjacent owned bytes into one piece.
class PieceBuilder {
 public:
  std::string& Owned() {
    if (pieces_.empty() || pieces_.back().is_borrowed) pieces_.emplace_back();
    return pieces_.back().owned;
  }
  void Borrow(Bytes data) {
    if (data.empty()) return;
    Piece p;
    p.borrowed = data;
    p.is_borrowed = true;
    pieces_.push_back(std::move(p));
  }
  std::vector<Piece> Take() { return std::move(pieces_); }

 private:
  std::vector<Piece> pieces_;
};

}  // namespace

std::string Layout::Flatten() const {
  std::string out;
  out.reserve(static_cast<size_t>(total_size));
  for (const Piece& p : pieces) {
    if (p.is_borrowed) {
      out.append(reinterpret_cast<const char*>(p.borrowed.data()), p.borrowed.size());
    } else {
      out += p.owned;
    }
  }
  return out;
}

Status CheckLayOut(const std::vector<RecordSpec>& records, const WriteOptions& options) {
  const std::string& archive = options.archive_name;
  if (archive.empty()) return InvalidArgumentError("zip archive name is empty");
  if (archive.find('/') != std::string::npos || archive.find('\0') != std::string::npos) {
    return InvalidArgumentError("zip archive name " + Quote(archive) +
                                " must not contain '/' or NUL");
  }
  if (options.alignment < 1 || options.alignment > kMaxAlignment) {
    return InvalidArgumentError("zip alignment " + Str(options.alignment) + " is outside [1, " +
                                Str(kMaxAlignment) + "]");
  }
  if (!options.record_crc32.empty() && options.record_crc32.size() != records.size()) {
    return InvalidArgumentError("zip layout has " + Str(options.record_crc32.size()) +
                                " CRCs for " + Str(records.size()) + " records");
  }
  if (records.size() >= kMax32) {
    return InvalidArgumentError("too many zip records: " + Str(records.size()));
  }
  std::vector<std::string_view> names;
  names.reserve(records.size());
  // Conservative running bound on the archive size (each record at most
  // header + name + largest extra + padding + data + descriptor).
  uint64_t bound = 0;
  uint64_t cd_size = 0;
  for (const RecordSpec& r : records) {
    if (r.name.empty()) return InvalidArgumentError("zip record name is empty");
    if (r.name.find('\0') != std::string::npos) {
      return InvalidArgumentError("zip record name " + Quote(r.name) + " contains NUL");
    }
    const uint64_t full_name = archive.size() + 1 + r.name.size();
    if (full_name > kMax16) {
      return InvalidArgumentError("zip record name " + Quote(r.name) + " is too long (" +
                                  Str(full_name) + " bytes with the archive prefix)");
    }
    if (r.name.back() == '/' && !r.data.empty()) {
      return InvalidArgumentError("zip record " + Quote(r.name) +
                                  " ends in '/' (a directory) but has data");
    }
    const bool reads_data = (options.compute_crc32 && options.record_crc32.empty()) ||
                            r.data.size() < options.copy_threshold;
    if (r.data.data() == nullptr && !r.data.empty() && reads_data) {
      return InvalidArgumentError("zip record " + Quote(r.name) + " has a null data pointer with " +
                                  Str(r.data.size()) + " bytes, and LayOut would read them");
    }
    // miniz's test before each entry: the central directory must stay below
    // 4 GiB with room for the largest zip64 extra. (miniz adds the real extra
    // sizes of earlier entries; counting the largest is stricter only for
    // directories within a few hundred bytes per entry of 4 GiB.)
    if (cd_size + kCentralHeaderSize + full_name + kZip64MaxCentralExtra >= kMax32) {
      return InvalidArgumentError("zip central directory would reach 4 GiB at record " +
                                  Quote(r.name));
    }
    cd_size += kCentralHeaderSize + full_name + kZip64MaxCentralExtra;
    uint64_t record_bound = kLocalHeaderSize + full_name + 28 + 4 + options.alignment + 24;
    if (AddOverflows(record_bound, r.data.size(), &record_bound) ||
        AddOverflows(bound, record_bound, &bound)) {
      return InvalidArgumentError("zip archive size overflows 64 bits at record " + Quote(r.name));
    }
    names.push_back(r.name);
  }
  if (AddOverflows(bound, cd_size + kMinTailBytes, &bound)) {
    return InvalidArgumentError("zip archive size overflows 64 bits");
  }
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) return InvalidArgumentError("duplicate zip record name " + Quote(*dup));
  return Status::Ok();
}

Layout LayOut(const std::vector<RecordSpec>& records, const WriteOptions& options) {
  if (!CheckLayOut(records, options).ok()) return Layout{};
  const std::string prefix = options.archive_name + "/";
  PieceBuilder out;
  std::string cd;  // the central directory, appended after the last record
  uint64_t cursor = 0;
  for (size_t index = 0; index < records.size(); ++index) {
    const RecordSpec& r = records[index];
    const std::string full_name = prefix + r.name;
    const uint64_t size = r.data.size();
    const RecordGeometry g = Geometry(cursor, full_name.size(), size, options.alignment);
    const uint16_t flags = size == 0 ? kFlagUtf8 : (kFlagUtf8 | kFlagDataDescriptor);
    std::optional<uint32_t> known;
    if (!options.record_crc32.empty()) {
      known = options.record_crc32[index];
    } else if (options.compute_crc32 && options.known_crc32) {
      known = options.known_crc32(r.data);
    }
    const uint32_t crc = known ? *known : options.compute_crc32 ? Crc32(r.data) : 0;

    // Local header: miniz writes zero CRC and sizes here (they follow in the
    // data descriptor), and version-needed 0 for stored entries.
    std::string& h = out.Owned();
    Put32(h, kLocalHeaderSig);
    Put16(h, 0);  // version needed
    Put16(h, flags);
    Put16(h, 0);  // method: stored
    Put16(h, 0);  // time
    Put16(h, 0);  // date
    Put32(h, 0);  // crc
    Put32(h, 0);  // compressed size
    Put32(h, 0);  // uncompressed size
    Put16(h, full_name.size());
    Put16(h, g.zip64_extra + 4 + g.padding);
    h += full_name;
    if (g.has_zip64()) {
      // miniz fills this before writing the data, when its compressed size
      // is still 0: the compressed size here is 0, not the record size.
      Put16(h, kZip64ExtraId);
      Put16(h, g.zip64_extra - 4);
      if (g.zip64_size) {
        Put64(h, size);
        Put64(h, 0);
      }
      if (g.zip64_offset) Put64(h, cursor);
    }
    h += "FB";
    Put16(h, g.padding);
    h.append(static_cast<size_t>(g.padding), 'Z');

    if (size > 0 && size < options.copy_threshold) {
      h.append(reinterpret_cast<const char*>(r.data.data()), static_cast<size_t>(size));
    } else {
      out.Borrow(r.data);
    }

    if (size > 0) {
      std::string& d = out.Owned();
      Put32(d, kDataDescriptorSig);
      Put32(d, crc);
      if (g.has_zip64()) {
        Put64(d, size);  // compressed
        Put64(d, size);  // uncompressed
      } else {
        Put32(d, size);
        Put32(d, size);
      }
    }

    Put32(cd, kCentralHeaderSig);
    Put16(cd, 0);  // version made by
    Put16(cd, 0);  // version needed
    Put16(cd, flags);
    Put16(cd, 0);  // method
    Put16(cd, 0);  // time
    Put16(cd, 0);  // date
    Put32(cd, crc);
    Put32(cd, std::min(size, kMax32));
    Put32(cd, std::min(size, kMax32));
    Put16(cd, full_name.size());
    Put16(cd, CentralExtraSize(g));
    Put16(cd, 0);  // comment length
    Put16(cd, 0);  // disk number start
    Put16(cd, 0);  // internal attributes
    Put32(cd, r.name.back() == '/' ? kDosDirectoryAttribute : 0);
    Put32(cd, std::min(cursor, kMax32));
    cd += full_name;
    if (g.has_zip64()) {
      Put16(cd, kZip64ExtraId);
      Put16(cd, CentralExtraSize(g) - 4);
      if (g.zip64_size) {
        Put64(cd, size);
        Put64(cd, size);
      }
      if (g.zip64_offset) Put64(cd, cursor);
    }

    cursor += kLocalHeaderSize + full_name.size() + g.zip64_extra + 4 + g.padding + size +
              DescriptorSize(size, g);
  }

  // miniz records a central directory offset of 0 when there are no entries.
  const uint64_t cd_offset = records.empty() ? 0 : cursor;
  const uint64_t cd_size = cd.size();
  const uint64_t zip64_end_offset = cursor + cd_size;
  const uint64_t count = records.size();
  std::string& t = out.Owned();
  t += cd;
  Put32(t, kZip64EndSig);
  Put64(t, kZip64EndSize - 12);  // size of the rest of the record
  Put16(t, 0x031E);              // version made by (miniz: Unix, 3.0)
  Put16(t, 0x002D);              // version needed: 4.5 (zip64)
  Put32(t, 0);                   // this disk
  Put32(t, 0);                   // disk with the central directory
  Put64(t, count);
  Put64(t, count);
  Put64(t, cd_size);
  Put64(t, cd_offset);
  Put32(t, kZip64LocatorSig);
  Put32(t, 0);  // disk with the zip64 end record
  Put64(t, zip64_end_offset);
  Put32(t, 1);  // total disks
  Put32(t, kEndSig);
  Put16(t, 0);
  Put16(t, 0);
  Put16(t, std::min(count, kMax16));
  Put16(t, std::min(count, kMax16));
  Put32(t, std::min(cd_size, kMax32));
  Put32(t, std::min(cd_offset, kMax32));
  Put16(t, 0);  // comment length

  Layout layout;
  layout.pieces = out.Take();
  for (const Piece& p : layout.pieces) layout.total_size += p.size();
  return layout;
}

// ---- Reading ----

Result<EndRecord> ParseEnd(Bytes tail, uint64_t archive_size) {
  if (tail.size() > archive_size) {
    return InvalidArgumentError("zip tail of " + Str(tail.size()) +
                                " bytes is longer than the archive (" + Str(archive_size) +
                                " bytes)");
  }
  if (tail.size() < kEndSize) {
    return DataLossError(
        "zip archive too short for an end-of-central-directory record: " + Str(tail.size()) +
        " bytes" + (tail.size() < archive_size ? " given of " + Str(archive_size) : ""));
  }
  const uint64_t tail_start = archive_size - tail.size();
  // The EOCD is followed only by its comment (<= 0xFFFF bytes): scan back
  // from the end for a signature whose comment ends exactly at the end.
  const size_t last = tail.size() - kEndSize;
  const size_t first = last > kMax16 ? last - kMax16 : 0;
  size_t at = 0;
  bool found = false;
  for (size_t i = last + 1; i-- > first;) {
    if (Get32(tail, i) == kEndSig && i + kEndSize + Get16(tail, i + 20) == tail.size()) {
      at = i;
      found = true;
      break;
    }
  }
  if (!found) {
    return DataLossError("no zip end-of-central-directory record in the last " + Str(tail.size()) +
                         " bytes of the " + Str(archive_size) + "-byte archive");
  }
  const uint64_t end_offset = tail_start + at;
  const uint16_t disk = Get16(tail, at + 4);
  const uint16_t cd_disk = Get16(tail, at + 6);
  const uint16_t entries_on_disk = Get16(tail, at + 8);
  const uint16_t entries = Get16(tail, at + 10);
  const uint32_t cd_size32 = Get32(tail, at + 12);
  const uint32_t cd_offset32 = Get32(tail, at + 16);
  const std::string where = " (end record at byte " + Str(end_offset) + ")";

  EndRecord end;
  uint64_t records_start = end_offset;  // the central directory must end here
  const bool has_locator =
      at >= kZip64LocatorSize && Get32(tail, at - kZip64LocatorSize) == kZip64LocatorSig;
  if (has_locator) {
    const size_t loc = at - kZip64LocatorSize;
    const uint64_t loc_offset = tail_start + loc;
    const uint32_t z64_disk = Get32(tail, loc + 4);
    const uint64_t z64_offset = Get64(tail, loc + 8);
    const uint32_t total_disks = Get32(tail, loc + 16);
    if (z64_disk != 0 || total_disks != 1) {
      return UnimplementedError(
          "multi-disk zip archives are not supported: zip64 locator at byte " + Str(loc_offset) +
          " names disk " + Str(z64_disk) + " of " + Str(total_disks));
    }
    uint64_t z64_end = 0;
    if (AddOverflows(z64_offset, kZip64EndSize, &z64_end) || z64_end > loc_offset) {
      return DataLossError("zip64 end record offset " + Str(z64_offset) +
                           " does not fit before its locator at byte " + Str(loc_offset));
    }
    if (z64_offset < tail_start) {
      return DataLossError("zip64 end record at byte " + Str(z64_offset) + " lies before the " +
                           Str(tail.size()) + " tail bytes given (tail too short?)");
    }
    const size_t z = static_cast<size_t>(z64_offset - tail_start);
    if (Get32(tail, z) != kZip64EndSig) {
      return DataLossError("no zip64 end record signature at byte " + Str(z64_offset));
    }
    const uint64_t record_size = Get64(tail, z + 4);
    uint64_t record_end = 0;
    if (record_size < kZip64EndSize - 12 ||
        AddOverflows(z64_offset + 12, record_size, &record_end) || record_end > loc_offset) {
      return DataLossError("zip64 end record at byte " + Str(z64_offset) + " has bad size " +
                           Str(record_size));
    }
    if (Get32(tail, z + 16) != 0 || Get32(tail, z + 20) != 0) {
      return UnimplementedError(
          "multi-disk zip archives are not supported (zip64 end record at "
          "byte " +
          Str(z64_offset) + ")");
    }
    const uint64_t entries_on_disk64 = Get64(tail, z + 24);
    const uint64_t entries64 = Get64(tail, z + 32);
    const uint64_t cd_size64 = Get64(tail, z + 40);
    const uint64_t cd_offset64 = Get64(tail, z + 48);
    const auto agrees = [](uint64_t classic, uint64_t saturated, uint64_t v64) {
      return classic == saturated || classic == v64;
    };
    if (!agrees(entries_on_disk, kMax16, entries_on_disk64) ||
        !agrees(entries, kMax16, entries64) || !agrees(cd_size32, kMax32, cd_size64) ||
        !agrees(cd_offset32, kMax32, cd_offset64)) {
      return DataLossError("zip end record disagrees with the zip64 end record at byte " +
                           Str(z64_offset) + where);
    }
    if (entries_on_disk64 != entries64) {
      return UnimplementedError(
          "multi-disk zip archives are not supported: " + Str(entries_on_disk64) + " of " +
          Str(entries64) + " entries on this disk" + where);
    }
    end.entry_count = entries64;
    end.cd_size = cd_size64;
    end.cd_offset = cd_offset64;
    records_start = z64_offset;
  } else {
    if (entries == kMax16 || entries_on_disk == kMax16 || cd_size32 == kMax32 ||
        cd_offset32 == kMax32) {
      return DataLossError("zip end record has zip64 placeholders but no zip64 locator" + where);
    }
    if (disk != 0 || cd_disk != 0 || entries_on_disk != entries) {
      return UnimplementedError("multi-disk zip archives are not supported" + where);
    }
    end.entry_count = entries;
    end.cd_size = cd_size32;
    end.cd_offset = cd_offset32;
  }
  // A zip64 archive may put 0xFFFF in the classic disk fields; otherwise
  // they must be 0.
  if ((disk != 0 && disk != kMax16) || (cd_disk != 0 && cd_disk != kMax16)) {
    return UnimplementedError("multi-disk zip archives are not supported" + where);
  }
  uint64_t cd_end = 0;
  if (AddOverflows(end.cd_offset, end.cd_size, &cd_end) || cd_end > records_start) {
    return DataLossError("zip central directory (offset " + Str(end.cd_offset) + ", size " +
                         Str(end.cd_size) + ") runs past the end records at byte " +
                         Str(records_start));
  }
  if (end.entry_count > end.cd_size / kCentralHeaderSize) {
    return DataLossError("zip end record claims " + Str(end.entry_count) +
                         " entries but the central directory has only " + Str(end.cd_size) +
                         " bytes");
  }
  return end;
}

const Entry* Directory::Find(std::string_view record_name) const {
  for (const Entry& e : entries) {
    if (e.name == record_name) return &e;
  }
  return nullptr;
}

Result<Directory> ParseCentralDirectory(Bytes cd, const EndRecord& end, uint64_t archive_size) {
  if (cd.size() != end.cd_size) {
    return InvalidArgumentError("zip central directory given as " + Str(cd.size()) +
                                " bytes, but the end record says " + Str(end.cd_size));
  }
  uint64_t cd_end = 0;
  if (AddOverflows(end.cd_offset, end.cd_size, &cd_end) || cd_end > archive_size) {
    return DataLossError("zip central directory (offset " + Str(end.cd_offset) + ", size " +
                         Str(end.cd_size) + ") runs past the archive's " + Str(archive_size) +
                         " bytes");
  }
  if (end.entry_count > cd.size() / kCentralHeaderSize) {
    return DataLossError("zip central directory of " + Str(cd.size()) + " bytes cannot hold " +
                         Str(end.entry_count) + " entries");
  }
  Directory dir;
  dir.entries.reserve(static_cast<size_t>(end.entry_count));
  std::string prefix;  // "<archive>/", from the first entry
  size_t pos = 0;
  for (uint64_t index = 0; index < end.entry_count; ++index) {
    const uint64_t at = end.cd_offset + pos;
    const std::string where = "zip central directory entry " + Str(index) + " at byte " + Str(at);
    if (cd.size() - pos < kCentralHeaderSize) return DataLossError(where + " is truncated");
    const Bytes h = cd.subspan(pos);
    if (Get32(h, 0) != kCentralHeaderSig) return DataLossError(where + " has no signature");
    Entry e;
    e.flags = Get16(h, 8);
    e.method = Get16(h, 10);
    e.crc32 = Get32(h, 16);
    e.compressed_size = Get32(h, 20);
    e.uncompressed_size = Get32(h, 24);
    const size_t name_len = Get16(h, 28);
    const size_t extra_len = Get16(h, 30);
    const size_t comment_len = Get16(h, 32);
    uint64_t disk_start = Get16(h, 34);
    e.local_header_offset = Get32(h, 42);
    const size_t total = kCentralHeaderSize + name_len + extra_len + comment_len;
    if (h.size() < total) return DataLossError(where + " runs past the central directory");
    const std::string_view full_name(reinterpret_cast<const char*>(h.data()) + kCentralHeaderSize,
                                     name_len);
    const std::string named = where + " (" + Quote(full_name) + ")";

    // Saturated fields are replaced, in this order, by the zip64 extra.
    const bool need_uncompressed = e.uncompressed_size == kMax32;
    const bool need_compressed = e.compressed_size == kMax32;
    const bool need_offset = e.local_header_offset == kMax32;
    const bool need_disk = disk_start == kMax16;
    if (need_uncompressed || need_compressed || need_offset || need_disk) {
      Bytes extra = h.subspan(kCentralHeaderSize + name_len, extra_len);
      bool found = false;
      while (!extra.empty()) {
        if (extra.size() < 4) return DataLossError(named + " has a truncated extra field");
        const uint16_t id = Get16(extra, 0);
        const size_t size = Get16(extra, 2);
        if (extra.size() - 4 < size) return DataLossError(named + " has a truncated extra field");
        if (id == kZip64ExtraId && !found) {
          found = true;
          Bytes z = extra.subspan(4, size);
          const auto take64 = [&z](uint64_t* v) {
            if (z.size() < 8) return false;
            *v = Get64(z, 0);
            z = z.subspan(8);
            return true;
          };
          if ((need_uncompressed && !take64(&e.uncompressed_size)) ||
              (need_compressed && !take64(&e.compressed_size)) ||
              (need_offset && !take64(&e.local_header_offset))) {
            return DataLossError(named + " has a zip64 extra field too short for its fields");
          }
          if (need_disk) {
            if (z.size() < 4) {
              return DataLossError(named + " has a zip64 extra field too short for its fields");
            }
            disk_start = Get32(z, 0);
          }
        }
        extra = extra.subspan(4 + size);
      }
      if (!found) return DataLossError(named + " has 0xFFFFFFFF fields but no zip64 extra field");
    }
    if (disk_start != 0) {
      return UnimplementedError(named + " starts on disk " + Str(disk_start) +
                                "; multi-disk zip archives are not supported");
    }
    if (e.method == 0 && e.compressed_size != e.uncompressed_size) {
      return DataLossError(named + " is stored but its sizes differ (" + Str(e.compressed_size) +
                           " vs " + Str(e.uncompressed_size) + ")");
    }
    // The local header, its name and the data must all precede the central
    // directory (the local extra field may differ in size; DataOffset checks
    // the rest once it is known).
    uint64_t data_end = 0;
    if (AddOverflows(e.local_header_offset, kLocalHeaderSize + name_len, &data_end) ||
        AddOverflows(data_end, e.compressed_size, &data_end) || data_end > end.cd_offset) {
      return DataLossError(named + ": local header at byte " + Str(e.local_header_offset) +
                           " with " + Str(e.compressed_size) +
                           " bytes of data runs into the central directory at byte " +
                           Str(end.cd_offset));
    }

    if (index == 0) {
      const size_t slash = full_name.find('/');
      if (slash == std::string_view::npos) {
        return DataLossError(named + " is not inside an archive folder");
      }
      dir.archive_name = std::string(full_name.substr(0, slash));
      prefix = std::string(full_name.substr(0, slash + 1));
    } else if (full_name.substr(0, prefix.size()) != prefix) {
      return DataLossError(named + " is outside the archive folder " + Quote(dir.archive_name));
    }
    e.name = std::string(full_name.substr(prefix.size()));
    dir.entries.push_back(std::move(e));
    pos += total;
  }
  if (pos != cd.size()) {
    return DataLossError("zip central directory has " + Str(cd.size() - pos) +
                         " unexpected bytes after its " + Str(end.entry_count) + " entries");
  }
  std::vector<std::string_view> names;
  names.reserve(dir.entries.size());
  for (const Entry& e : dir.entries) names.push_back(e.name);
  std::sort(names.begin(), names.end());
  const auto dup = std::adjacent_find(names.begin(), names.end());
  if (dup != names.end()) return DataLossError("zip archive has two entries named " + Quote(*dup));
  return dir;
}

Result<uint64_t> DataOffset(Bytes local_header, const Entry& entry, uint64_t archive_size) {
  const std::string where =
      "zip local header of " + Quote(entry.name) + " at byte " + Str(entry.local_header_offset);
  if (local_header.size() < kLocalHeaderSize) {
    return DataLossError(where + " is truncated (" + Str(local_header.size()) + " of " +
                         Str(kLocalHeaderSize) + " bytes)");
  }
  if (Get32(local_header, 0) != kLocalHeaderSig) return DataLossError(where + " has no signature");
  const uint64_t name_len = Get16(local_header, 26);
  const uint64_t extra_len = Get16(local_header, 28);
  uint64_t data_offset = 0;
  uint64_t data_end = 0;
  if (AddOverflows(entry.local_header_offset, kLocalHeaderSize + name_len + extra_len,
                   &data_offset) ||
      AddOverflows(data_offset, entry.compressed_size, &data_end) || data_end > archive_size) {
    return DataLossError(where + ": " + Str(entry.compressed_size) +
                         " bytes of data run past the archive's " + Str(archive_size) + " bytes");
  }
  return data_offset;
}

struct Reader::Ranged {
  ReadAtFn read_at;
  uint64_t max_read = 0;
  uint64_t head_offset = 0, tail_offset = 0;
  std::string head, tail;
  std::mutex mu;
  std::deque<std::string> fetched;  // deque: growing it never moves earlier strings
};

Result<Reader> Reader::Open(Bytes archive) {
  const size_t tail_size = std::min(archive.size(), kMaxTailBytes);
  Reader source;
  source.archive_ = archive;
  source.archive_size_ = archive.size();
  DCPP_ASSIGN_OR_RETURN(Reader reader, FromEnd(archive.last(tail_size), archive.size(),
                                               [&](uint64_t offset, uint64_t length) {
                                                 return source.BytesAt(offset, length);
                                               }));
  reader.archive_ = archive;
  reader.archive_size_ = archive.size();
  return reader;
}

Result<Reader> Reader::OpenRanged(uint64_t archive_size, ReadAtFn read_at, uint64_t max_read) {
  auto ranged = std::make_shared<Ranged>();
  ranged->read_at = std::move(read_at);
  ranged->max_read = max_read;
  constexpr uint64_t kWindow = uint64_t{64} << 10;
  const uint64_t head_size = std::min(archive_size, kWindow);
  const uint64_t tail_size = std::min<uint64_t>(archive_size, kMaxTailBytes);
  DCPP_ASSIGN_OR_RETURN(ranged->head, ranged->read_at(0, head_size));
  ranged->tail_offset = archive_size - tail_size;
  if (ranged->tail_offset < head_size) {
    ranged->tail_offset = 0;  // small archive: the head window is all of it
    if (head_size < archive_size) {
      DCPP_ASSIGN_OR_RETURN(ranged->tail, ranged->read_at(0, archive_size));
    } else {
      ranged->tail = ranged->head;
    }
  } else {
    DCPP_ASSIGN_OR_RETURN(ranged->tail, ranged->read_at(ranged->tail_offset, tail_size));
  }
  if (ranged->head.size() != head_size || ranged->tail.size() != archive_size - ranged->tail_offset)
    return InternalError("zip reader: read_at returned the wrong number of bytes");
  Reader reader;
  reader.archive_size_ = archive_size;
  reader.ranged_ = ranged;
  const Bytes tail = AsBytes(ranged->tail).last(static_cast<size_t>(tail_size));
  DCPP_ASSIGN_OR_RETURN(Reader opened,
                        FromEnd(tail, archive_size, [&](uint64_t offset, uint64_t length) {
                          return reader.BytesAt(offset, length);
                        }));
  opened.archive_size_ = archive_size;
  opened.ranged_ = std::move(ranged);
  return opened;
}

Result<Reader> Reader::FromEnd(Bytes tail, uint64_t archive_size,
                               const std::function<Result<Bytes>(uint64_t, uint64_t)>& bytes_at) {
  DCPP_ASSIGN_OR_RETURN(const EndRecord end, ParseEnd(tail, archive_size));
  // ParseEnd checked that the central directory lies inside the archive.
  DCPP_ASSIGN_OR_RETURN(const Bytes cd, bytes_at(end.cd_offset, end.cd_size));
  DCPP_ASSIGN_OR_RETURN(Directory dir, ParseCentralDirectory(cd, end, archive_size));
  Reader reader;
  reader.dir_ = std::move(dir);
  const std::vector<Entry>& entries = reader.dir_.entries;
  reader.by_name_.resize(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) reader.by_name_[i] = static_cast<uint32_t>(i);
  std::sort(reader.by_name_.begin(), reader.by_name_.end(),
            [&entries](uint32_t a, uint32_t b) { return entries[a].name < entries[b].name; });
  return reader;
}

Result<Bytes> Reader::BytesAt(uint64_t offset, uint64_t length) const {
  uint64_t end = 0;
  if (AddOverflows(offset, length, &end) || end > archive_size_) {
    return DataLossError("zip bytes [" + Str(offset) + ", +" + Str(length) +
                         ") lie past the archive's end at " + Str(archive_size_));
  }
  if (!ranged_) return archive_.subspan(static_cast<size_t>(offset), static_cast<size_t>(length));
  Ranged& r = *ranged_;
  if (end <= r.head.size()) {
    return AsBytes(r.head).subspan(static_cast<size_t>(offset), static_cast<size_t>(length));
  }
  if (offset >= r.tail_offset) {
    return AsBytes(r.tail).subspan(static_cast<size_t>(offset - r.tail_offset),
                                   static_cast<size_t>(length));
  }
  if (length > r.max_read) {
    return ResourceExhaustedError("zip record bytes [" + Str(offset) + ", +" + Str(length) +
                                  ") are larger than this reader fetches (" + Str(r.max_read) +
                                  ")");
  }
  DCPP_ASSIGN_OR_RETURN(std::string bytes, r.read_at(offset, length));
  if (bytes.size() != length)
    return InternalError("zip reader: read_at returned the wrong number of bytes");
  std::lock_guard<std::mutex> lock(r.mu);
  r.fetched.push_back(std::move(bytes));
  return AsBytes(r.fetched.back());
}

Result<const Entry*> Reader::Stat(std::string_view record_name) const {
  const std::vector<Entry>& entries = dir_.entries;
  const auto it = std::lower_bound(
      by_name_.begin(), by_name_.end(), record_name,
      [&entries](uint32_t i, std::string_view name) { return entries[i].name < name; });
  if (it == by_name_.end() || entries[*it].name != record_name) {
    return NotFoundError("no record " + Quote(record_name) + " in zip archive " +
                         Quote(dir_.archive_name));
  }
  const Entry* e = &entries[*it];
  if (e->flags & kFlagEncrypted) {
    return UnimplementedError("zip record " + Quote(record_name) + " is encrypted");
  }
  if (e->method != 0) {
    return UnimplementedError("zip record " + Quote(record_name) + " is compressed (method " +
                              Str(e->method) + "); only stored records can be read");
  }
  return e;
}

Result<Bytes> Reader::Read(std::string_view record_name) const {
  DCPP_ASSIGN_OR_RETURN(const Entry* e, Stat(record_name));
  DCPP_ASSIGN_OR_RETURN(const uint64_t offset, Offset(record_name));
  return BytesAt(offset, e->compressed_size);
}

Result<uint64_t> Reader::Offset(std::string_view record_name) const {
  DCPP_ASSIGN_OR_RETURN(const Entry* e, Stat(record_name));
  if (e->local_header_offset > archive_size_) {
    return DataLossError("zip local header of " + Quote(e->name) + " at byte " +
                         Str(e->local_header_offset) + " is past the archive's end");
  }
  const uint64_t header =
      std::min<uint64_t>(kLocalHeaderSize, archive_size_ - e->local_header_offset);
  DCPP_ASSIGN_OR_RETURN(const Bytes local, BytesAt(e->local_header_offset, header));
  return DataOffset(local, *e, archive_size_);
}

}  // namespace dcpp::format::zip
