#include "dcpp/format/safetensors.h"

#include <algorithm>
#include <array>
#include <unordered_set>

#include "dcpp/format/json.h"

namespace dcpp::format::safetensors {
namespace {

// The safetensors 0.8 dtype enum, in its declaration order (rank): the
// package sorts tensors by it, largest rank first. Verified against the
// package's serializer with one tensor of every dtype it accepts.
constexpr std::array<DTypeInfo, 22> kDTypes = {{
    {"BOOL", 8, DType::kBool, 0},
    {"F4", 4, std::nullopt, 1},
    {"F6_E2M3", 6, std::nullopt, 2},
    {"F6_E3M2", 6, std::nullopt, 3},
    {"U8", 8, DType::kUInt8, 4},
    {"I8", 8, DType::kInt8, 5},
    {"F8_E5M2", 8, DType::kFloat8E5M2, 6},
    {"F8_E4M3", 8, DType::kFloat8E4M3FN, 7},
    {"F8_E8M0", 8, DType::kFloat8E8M0FNU, 8},
    {"F8_E4M3FNUZ", 8, DType::kFloat8E4M3FNUZ, 9},
    {"F8_E5M2FNUZ", 8, DType::kFloat8E5M2FNUZ, 10},
    {"I16", 16, DType::kInt16, 11},
    {"U16", 16, DType::kUInt16, 12},
    {"F16", 16, DType::kFloat16, 13},
    {"BF16", 16, DType::kBFloat16, 14},
    {"I32", 32, DType::kInt32, 15},
    {"U32", 32, DType::kUInt32, 16},
    {"F32", 32, DType::kFloat32, 17},
    {"C64", 64, DType::kComplex64, 18},
    {"F64", 64, DType::kFloat64, 19},
    {"I64", 64, DType::kInt64, 20},
    {"U64", 64, DType::kUInt64, 21},
}};

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string KnownDTypes() {
  std::string out;
  for (const auto& d : kDTypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

// A JSON value as a non-negative integer, or nullopt.
std::optional<uint64_t> AsCount(const json::Json& v) {
  const int64_t* i = v.GetInt();
  if (!i || *i < 0) return std::nullopt;
  return static_cast<uint64_t>(*i);
}

Status Bad(std::string_view tensor, const std::string& what) {
  return DataLossError("safetensors header: tensor " + Quoted(tensor) + ": " + what);
}

// The bytes `shape` of `bits`-bit elements take, or an error naming the
// tensor (overflow, or a sub-byte count that ends inside a byte).
Result<uint64_t> ByteSize(std::string_view name, const Shape& shape, int bits) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d != 0 && n > (UINT64_MAX / 64) / static_cast<uint64_t>(d))
      return Bad(name, "shape " + ShapeToString(shape) + " overflows");
    n *= static_cast<uint64_t>(d);
  }
  const uint64_t nbits = n * static_cast<uint64_t>(bits);
  if (nbits % 8 != 0)
    return Bad(name, "shape " + ShapeToString(shape) + " of a " + std::to_string(bits) +
                         "-bit dtype does not end at a byte boundary");
  return nbits / 8;
}

Result<TensorInfo> ParseTensor(const std::string& name, const json::Json& v) {
  const json::Object* o = v.GetObject();
  if (!o)
    return Bad(name, "is a JSON " + std::string(json::TypeName(v.type())) + ", not an object");
  TensorInfo t;
  t.name = name;
  const json::Json* dtype = o->Find("dtype");
  const json::Json* shape = o->Find("shape");
  const json::Json* offsets = o->Find("data_offsets");
  if (!dtype || !shape || !offsets)
    return Bad(name, std::string("lacks \"") +
                         (!dtype   ? "dtype"
                          : !shape ? "shape"
                                   : "data_offsets") +
                         "\"");
  const std::string* dname = dtype->GetString();
  if (!dname) return Bad(name, "\"dtype\" is not a string");
  auto info = LookupDType(*dname);
  if (!info)
    return Bad(name, "unknown dtype " + Quoted(*dname) + " (known: " + KnownDTypes() + ")");
  t.dtype = *info;
  const json::Array* dims = shape->GetArray();
  if (!dims) return Bad(name, "\"shape\" is not an array");
  for (const json::Json& d : *dims) {
    auto n = AsCount(d);
    if (!n || *n > static_cast<uint64_t>(INT64_MAX))
      return Bad(name, "\"shape\" holds something other than a non-negative integer");
    t.shape.push_back(static_cast<int64_t>(*n));
  }
  const json::Array* range = offsets->GetArray();
  if (!range || range->size() != 2)
    return Bad(name, "\"data_offsets\" is not an array of two integers");
  auto b = AsCount((*range)[0]), e = AsCount((*range)[1]);
  if (!b || !e)
    return Bad(name, "\"data_offsets\" holds something other than two non-negative integers");
  t.begin = *b;
  t.end = *e;
  if (t.end < t.begin)
    return Bad(name, "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                         ") end before they begin");
  DCPP_ASSIGN_OR_RETURN(uint64_t want, ByteSize(name, t.shape, t.dtype.bits));
  if (want != t.nbytes())
    return Bad(name, std::string(t.dtype.name) + " " + ShapeToString(t.shape) + " takes " +
                         std::to_string(want) + " bytes but data_offsets [" +
                         std::to_string(t.begin) + ", " + std::to_string(t.end) + ") hold " +
                         std::to_string(t.nbytes()));
  return t;
}

void AppendCompact(std::string* out, const json::Json& v) { out->append(json::Serialize(v)); }

}  // namespace

std::optional<DTypeInfo> LookupDType(std::string_view name) {
  for (const auto& d : kDTypes)
    if (d.name == name) return d;
  return std::nullopt;
}

std::optional<DTypeInfo> LookupDType(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d;
  return std::nullopt;
}

const TensorInfo* Header::Find(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

const std::string* Header::FindMetadata(std::string_view key) const {
  for (const auto& [k, v] : metadata)
    if (k == key) return &v;
  return nullptr;
}

Result<uint64_t> ParseHeaderLength(std::span<const uint8_t> prefix, uint64_t file_size,
                                   uint64_t max_header_size) {
  if (file_size < kPrefixSize || prefix.size() < kPrefixSize)
    return DataLossError("not a safetensors file: " + std::to_string(file_size) +
                         " bytes, fewer than the 8 of the header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[static_cast<size_t>(i)];
  if (n > std::min(max_header_size, kMaxHeaderSize))
    return ResourceExhaustedError("safetensors header length " + std::to_string(n) +
                                  " exceeds the cap of " +
                                  std::to_string(std::min(max_header_size, kMaxHeaderSize)) +
                                  " bytes (damaged or not a safetensors file?)");
  if (n > file_size - kPrefixSize)
    return DataLossError("safetensors header length " + std::to_string(n) +
                         " runs past the end of the " + std::to_string(file_size) +
                         "-byte file (truncated?)");
  return n;
}

Result<Header> ParseHeader(std::string_view header_text, uint64_t file_size) {
  if (header_text.size() > kMaxHeaderSize)
    return ResourceExhaustedError("safetensors header of " + std::to_string(header_text.size()) +
                                  " bytes exceeds the cap of " + std::to_string(kMaxHeaderSize));
  if (file_size < kPrefixSize || header_text.size() > file_size - kPrefixSize)
    return DataLossError("safetensors header runs past the end of the file");
  json::ParseOptions po;
  po.max_size = kMaxHeaderSize;
  po.max_depth = 8;  // {"t": {"shape": [..]}} is three levels
  auto parsed = json::Parse(header_text, po);
  if (!parsed.ok()) return parsed.status().WithContext("safetensors header");
  const json::Object* root = parsed->GetObject();
  if (!root)
    return DataLossError("safetensors header is a JSON " +
                         std::string(json::TypeName(parsed->type())) + ", not an object");
  Header h;
  h.data_offset = kPrefixSize + header_text.size();
  h.data_size = file_size - h.data_offset;
  for (const auto& [key, value] : root->members()) {
    if (key == kMetadataKey) {
      if (value.is_null()) continue;
      const json::Object* m = value.GetObject();
      if (!m) return DataLossError("safetensors header: \"__metadata__\" is not an object");
      for (const auto& [mk, mv] : m->members()) {
        const std::string* s = mv.GetString();
        if (!s)
          return DataLossError("safetensors header: \"__metadata__\" value of " + Quoted(mk) +
                               " is a JSON " + std::string(json::TypeName(mv.type())) +
                               ", not a string");
        h.metadata.emplace_back(mk, *s);
      }
      continue;
    }
    DCPP_ASSIGN_OR_RETURN(TensorInfo t, ParseTensor(key, value));
    h.tensors.push_back(std::move(t));
  }
  // The package's check: by begin, each tensor starts where the previous
  // one ended, from 0 to the end of the file. (Stable: empty tensors that
  // share a begin keep the header's order.)
  std::stable_sort(h.tensors.begin(), h.tensors.end(),
                   [](const TensorInfo& a, const TensorInfo& b) { return a.begin < b.begin; });
  uint64_t at = 0;
  for (const TensorInfo& t : h.tensors) {
    if (t.begin != at)
      return Bad(t.name, "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                             ") " +
                             (t.begin < at ? "overlap the previous tensor's bytes"
                                           : "leave a gap after the previous tensor's bytes") +
                             " (which end at " + std::to_string(at) + ")");
    at = t.end;
  }
  if (at != h.data_size)
    return DataLossError("safetensors header: the tensors' data ends at byte " +
                         std::to_string(at) + " of the data section, but the file holds " +
                         std::to_string(h.data_size) + " data bytes (" +
                         (at > h.data_size ? "truncated file?" : "trailing bytes") + ")");
  return h;
}

Result<Header> Parse(std::span<const uint8_t> file_prefix, uint64_t file_size) {
  DCPP_ASSIGN_OR_RETURN(uint64_t n, ParseHeaderLength(file_prefix, file_size));
  if (file_prefix.size() - kPrefixSize < n)
    return InvalidArgumentError("safetensors: " + std::to_string(file_prefix.size()) +
                                " bytes given, the header needs " +
                                std::to_string(kPrefixSize + n));
  return ParseHeader(
      std::string_view(reinterpret_cast<const char*>(file_prefix.data()) + kPrefixSize,
                       static_cast<size_t>(n)),
      file_size);
}

Result<Encoded> Encode(std::span<const TensorSpec> tensors,
                       std::span<const std::pair<std::string, std::string>> metadata) {
  struct Item {
    size_t index;
    DTypeInfo info;
    uint64_t nbytes;
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  std::unordered_set<std::string_view> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorSpec& t = tensors[i];
    if (t.name.empty()) return InvalidArgumentError("safetensors: a tensor has an empty name");
    if (t.name == kMetadataKey)
      return InvalidArgumentError("safetensors: a tensor cannot be named \"__metadata__\"");
    if (!names.insert(t.name).second)
      return InvalidArgumentError("safetensors: tensor name " + Quoted(t.name) + " repeats");
    auto info = LookupDType(t.dtype);
    if (!info)
      return InvalidArgumentError("safetensors: tensor " + Quoted(t.name) + " is " +
                                  std::string(TorchName(t.dtype)) +
                                  ", which safetensors cannot store");
    for (int64_t d : t.shape)
      if (d < 0)
        return InvalidArgumentError("safetensors: tensor " + Quoted(t.name) + " has shape " +
                                    ShapeToString(t.shape));
    auto nbytes = ByteSize(t.name, t.shape, info->bits);
    if (!nbytes.ok())
      return InvalidArgumentError("safetensors: " + std::string(nbytes.status().message()));
    items.push_back({i, *info, *nbytes});
  }
  // The package's order: dtype rank descending, then name.
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    if (a.info.rank != b.info.rank) return a.info.rank > b.info.rank;
    return tensors[a.index].name < tensors[b.index].name;
  });
  json::Object root;
  if (!metadata.empty()) {
    json::Object m;
    for (const auto& [k, v] : metadata)
      if (!m.Insert(k, json::Json(v)))
        return InvalidArgumentError("safetensors: metadata key " + Quoted(k) + " repeats");
    root.Set(std::string(kMetadataKey), json::Json(std::move(m)));
  }
  Encoded out;
  out.ranges.resize(tensors.size());
  uint64_t at = 0;
  for (const Item& it : items) {
    const TensorSpec& t = tensors[it.index];
    json::Object o;
    o.Set("dtype", json::Json(it.info.name));
    json::Array shape;
    for (int64_t d : t.shape) shape.emplace_back(d);
    o.Set("shape", json::Json(std::move(shape)));
    o.Set("data_offsets", json::Json(json::Array{json::Json(at), json::Json(at + it.nbytes)}));
    root.Set(t.name, json::Json(std::move(o)));
    out.ranges[it.index] = {at, at + it.nbytes};
    at += it.nbytes;
  }
  out.data_size = at;
  std::string text;
  AppendCompact(&text, json::Json(std::move(root)));
  // Pad with spaces so the data section starts at a multiple of 8.
  text.append((kPrefixSize - text.size() % kPrefixSize) % kPrefixSize, ' ');
  if (text.size() > kMaxHeaderSize)
    return InvalidArgumentError("safetensors: the header would be " + std::to_string(text.size()) +
                                " bytes, more than the " + std::to_string(kMaxHeaderSize) +
                                " readers accept");
  out.prefix_and_header.reserve(kPrefixSize + text.size());
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i)
    out.prefix_and_header.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out.prefix_and_header += text;
  return out;
}

}  // namespace dcpp::format::safetensors
