#include "dcpp/format/checksums.h"

#include <algorithm>
#include <cstdio>

#include "dcpp/base/crc32.h"
#include "dcpp/format/json.h"

namespace dcpp::format {
namespace {

std::string Hex8(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

bool ParseHex8(const std::string& s, uint32_t* out) {
  if (s.size() != 8) return false;
  uint32_t v = 0;
  for (char c : s) {
    v <<= 4;
    if (c >= '0' && c <= '9') v |= static_cast<uint32_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v |= static_cast<uint32_t>(c - 'a' + 10);
    else return false;
  }
  *out = v;
  return true;
}

constexpr std::string_view kSelfKey = ",\"self_crc32\":\"";

}  // namespace

Status CheckRecordCrc(const zip::Entry& entry, uint32_t actual, uint64_t data_offset) {
  if (entry.crc32 == 0 || entry.crc32 == actual) return Status();
  return DataLossError("checksum mismatch in record " + entry.name + " (data at archive byte " +
                       std::to_string(data_offset) + ", " +
                       std::to_string(entry.compressed_size) + " bytes): CRC-32 is " +
                       Hex8(actual) + ", the archive records " + Hex8(entry.crc32));
}

Status CheckArchiveCrcs(const zip::Reader& reader, std::string_view skip) {
  for (const zip::Entry& e : reader.directory().entries) {
    if (e.crc32 == 0 || e.name == skip) continue;
    DCPP_ASSIGN_OR_RETURN(zip::Bytes data, reader.Read(e.name));
    DCPP_ASSIGN_OR_RETURN(uint64_t at, reader.Offset(e.name));
    DCPP_RETURN_IF_ERROR(CheckRecordCrc(e, Crc32(data), at));
  }
  return Status();
}

Status CheckArchiveBytes(zip::Bytes archive) {
  auto reader = zip::Reader::Open(archive);
  if (!reader.ok()) return Status();  // not an archive: the decoder says so
  return CheckArchiveCrcs(*reader).WithContext("torch.save archive");
}

bool IsUsableSaveId(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_';
  });
}

std::string ChecksumFileName(std::string_view save_id) {
  if (!IsUsableSaveId(save_id)) return {};
  return std::string(kChecksumFilePrefix) + std::string(save_id);
}

std::optional<std::string> SaveIdOfChecksumFile(std::string_view name) {
  if (name.substr(0, kChecksumFilePrefix.size()) != kChecksumFilePrefix) return std::nullopt;
  std::string_view id = name.substr(kChecksumFilePrefix.size());
  if (!IsUsableSaveId(id)) return std::nullopt;
  return std::string(id);
}

bool IsChecksumFileName(std::string_view name) { return SaveIdOfChecksumFile(name).has_value(); }

const ItemChecksum* ChecksumFile::Find(std::string_view path, uint64_t offset,
                                       uint64_t length) const {
  for (const ItemChecksum& i : items)
    if (i.relative_path == path && i.offset == offset && i.length == length) return &i;
  return nullptr;
}

std::string EncodeChecksumFile(const ChecksumFile& f) {
  json::Object root;
  root.Set("format", std::string(kChecksumFileFormat));
  root.Set("save_id", f.save_id);
  json::Object md;
  md.Set("size", f.metadata_size);
  md.Set("crc32", Hex8(f.metadata_crc32));
  root.Set("metadata", std::move(md));
  json::Array items;
  for (const ItemChecksum& i : f.items) {
    json::Object o;
    o.Set("fqn", i.fqn);
    o.Set("path", i.relative_path);
    o.Set("offset", i.offset);
    o.Set("length", i.length);
    o.Set("crc32", Hex8(i.crc32));
    items.push_back(std::move(o));
  }
  root.Set("items", std::move(items));
  std::string text = json::Serialize(root);
  text.pop_back();  // the closing brace: self_crc32 goes last
  const uint32_t self = Crc32(zip::AsBytes(text));
  text += std::string(kSelfKey) + Hex8(self) + "\"}\n";
  return text;
}

Result<ChecksumFile> DecodeChecksumFile(std::string_view text) {
  constexpr size_t kMaxText = size_t{256} << 20;
  if (text.size() > kMaxText)
    return ResourceExhaustedError("checksum file is " + std::to_string(text.size()) +
                                  " bytes, more than the " + std::to_string(kMaxText) + " allowed");
  json::ParseOptions po;
  po.max_size = kMaxText;
  po.max_depth = 8;
  auto parsed = json::Parse(text, po);
  if (!parsed.ok()) return DataLossError("checksum file: " + parsed.status().message());
  auto bad = [](std::string_view what) {
    return DataLossError("checksum file: " + std::string(what));
  };
  const json::Json& root = *parsed;
  const std::string* format = root.Find("format") ? root.Find("format")->GetString() : nullptr;
  if (!format || *format != kChecksumFileFormat)
    return bad("not a " + std::string(kChecksumFileFormat) + " file");
  // self_crc32 covers the text before its own key, exactly as written.
  const json::Json* self = root.Find("self_crc32");
  uint32_t self_crc = 0;
  if (!self || !self->GetString() || !ParseHex8(*self->GetString(), &self_crc))
    return bad("self_crc32 is missing or not 8 hex digits");
  const size_t at = text.rfind(kSelfKey);
  if (at == std::string_view::npos || Crc32(zip::AsBytes(text.substr(0, at))) != self_crc)
    return bad("its own CRC-32 does not match (the checksum file is damaged)");

  ChecksumFile f;
  auto get_string = [&](const json::Json& o, std::string_view key, std::string* out) -> Status {
    const json::Json* v = o.Find(key);
    if (!v || !v->GetString()) return bad("'" + std::string(key) + "' is missing or not a string");
    *out = *v->GetString();
    return Status();
  };
  auto get_u64 = [&](const json::Json& o, std::string_view key, uint64_t* out) -> Status {
    const json::Json* v = o.Find(key);
    if (!v || !v->GetInt() || *v->GetInt() < 0)
      return bad("'" + std::string(key) + "' is missing or not a non-negative integer");
    *out = static_cast<uint64_t>(*v->GetInt());
    return Status();
  };
  auto get_crc = [&](const json::Json& o, uint32_t* out) -> Status {
    std::string s;
    DCPP_RETURN_IF_ERROR(get_string(o, "crc32", &s));
    if (!ParseHex8(s, out)) return bad("crc32 '" + s + "' is not 8 hex digits");
    return Status();
  };
  DCPP_RETURN_IF_ERROR(get_string(root, "save_id", &f.save_id));
  const json::Json* md = root.Find("metadata");
  if (!md || !md->is_object()) return bad("'metadata' is missing or not an object");
  DCPP_RETURN_IF_ERROR(get_u64(*md, "size", &f.metadata_size));
  DCPP_RETURN_IF_ERROR(get_crc(*md, &f.metadata_crc32));
  const json::Json* items = root.Find("items");
  if (!items || !items->GetArray()) return bad("'items' is missing or not an array");
  for (const json::Json& item : *items->GetArray()) {
    if (!item.is_object()) return bad("an item is not an object");
    ItemChecksum c;
    DCPP_RETURN_IF_ERROR(get_string(item, "fqn", &c.fqn));
    DCPP_RETURN_IF_ERROR(get_string(item, "path", &c.relative_path));
    DCPP_RETURN_IF_ERROR(get_u64(item, "offset", &c.offset));
    DCPP_RETURN_IF_ERROR(get_u64(item, "length", &c.length));
    DCPP_RETURN_IF_ERROR(get_crc(item, &c.crc32));
    f.items.push_back(std::move(c));
  }
  return f;
}

}  // namespace dcpp::format
