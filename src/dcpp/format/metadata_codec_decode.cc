// DecodeMetadata: the fast path (metadata_codec_fast.cc), and where it
// declines, the general path here: a DCP .metadata pickle parsed by the safe
// pickle VM and walked into dcpp::Metadata (see metadata_codec.h for the
// contract).
#include "dcpp/format/metadata_codec.h"

#include <algorithm>
#include <initializer_list>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dcpp/format/metadata_codec_internal.h"
#include "dcpp/format/pickle.h"

namespace dcpp::format {
namespace {

using metadata_internal::kFsModule;
using metadata_internal::kLegacyModule;
using metadata_internal::kMetaModule;
using pickle::Graph;
using pickle::Kind;
using pickle::kNoNode;
using pickle::Node;
using pickle::NodeId;

// torch dtype names dcpp has no DType for. They are allowed as globals so
// that such a checkpoint fails with a clear Unimplemented naming the tensor
// rather than as a foreign file.
constexpr std::string_view kOtherTorchDTypes[] = {
    "complex32", "chalf",   "qint8",   "quint8",  "qint32", "quint4x2", "quint2x4",
    "quint1x7",  "bits1x8", "bits2x4", "bits4x2", "bits8",  "bits16",   "uint1",
    "uint2",     "uint3",   "uint4",   "uint5",   "uint6",  "uint7",    "int1",
    "int2",      "int3",    "int4",    "int5",    "int6",   "int7",     "float4_e2m1fn_x2"};

bool IsTorchDTypeName(std::string_view name) {
  if (DTypeFromTorchName(name).has_value()) return true;
  return std::find(std::begin(kOtherTorchDTypes), std::end(kOtherTorchDTypes), name) !=
         std::end(kOtherTorchDTypes);
}

bool IsPathClass(std::string_view module, std::string_view name) {
  return (module == "pathlib" || module == "pathlib._local") &&
         (name == "PosixPath" || name == "WindowsPath" || name == "PurePosixPath" ||
          name == "PureWindowsPath");
}

// The allow-list DecodeMetadata documents (metadata_codec.h).
bool AllowMetadataGlobal(std::string_view module, std::string_view name) {
  if (module == kMetaModule) {
    return name == "Metadata" || name == "TensorStorageMetadata" ||
           name == "BytesStorageMetadata" || name == "ChunkStorageMetadata" ||
           name == "TensorProperties" || name == "_MEM_FORMAT_ENCODING" ||
           name == "MetadataIndex" || name == "StorageMeta";
  }
  if (module == kFsModule) return name == "_StorageInfo";
  if (module == kLegacyModule) return name == "TensorProperties" || name == "MEM_FORMAT_ENCODING";
  if (module == "torch") return name == "Size" || IsTorchDTypeName(name);
  if (module == "torch.serialization") return name == "_get_layout";
  if (module == "collections") return name == "OrderedDict";
  return IsPathClass(module, name);
}

// A dataclass's BUILD state, last key wins (as dict.update does).
struct Fields {
  std::vector<std::pair<std::string_view, NodeId>> kv;

  NodeId Get(std::string_view key) const {
    for (auto it = kv.rbegin(); it != kv.rend(); ++it) {
      if (it->first == key) return it->second;
    }
    return kNoNode;
  }
};

// A real dataclass state has at most five fields; more means a hostile file
// (and would make repeated lookups into a shared state dict expensive).
constexpr size_t kMaxFields = 32;

// Lookup key of storage_data: (fqn, offsets or None), as MetadataIndex
// hashes. The fqn is length-prefixed so no fqn can collide with another key.
std::string StorageKey(std::string_view fqn, const Shape* offsets) {
  std::string key;
  uint64_t n = fqn.size();
  key.append(reinterpret_cast<const char*>(&n), sizeof n);
  key.append(fqn);
  if (offsets == nullptr) {
    key.push_back('N');
  } else {
    key.push_back('S');
    key.append(reinterpret_cast<const char*>(offsets->data()), offsets->size() * sizeof(int64_t));
  }
  return key;
}

std::string ShapeText(const Shape& s) {
  std::string out = "[";
  for (size_t k = 0; k < s.size(); ++k) {
    if (k > 0) out += ", ";
    out += std::to_string(s[k]);
  }
  return out + "]";
}

// Walks the parsed graph. Every method handles one fixed level of DCP's
// object structure, so recursion depth is constant however the memo makes
// the graph cyclic.
class Decoder {
 public:
  Decoder(const Graph& g, size_t input_size)
      : g_(g), budget_(input_size * 64 + (size_t{1} << 20)) {}

  Result<Metadata> Run();

 private:
  const Node& N(NodeId id) const { return g_.at(id); }

  static Status Corrupt(std::string_view what, std::string_view problem) {
    return DataLossError("metadata: " + std::string(what) + ": " + std::string(problem));
  }

  // Bounds what a small input can expand to through shared memo references.
  Status Charge(size_t bytes) {
    if (bytes > budget_ - used_) {
      return ResourceExhaustedError("metadata: decoded metadata would exceed " +
                                    std::to_string(budget_) + " bytes (objects shared many times)");
    }
    used_ += bytes;
    return Status::Ok();
  }

  std::string Describe(NodeId id) const {
    const Node& n = N(id);
    if ((n.kind == Kind::kNewObj || n.kind == Kind::kReduce) && !n.items.empty() &&
        N(n.items[0]).kind == Kind::kGlobal) {
      const Node& c = N(n.items[0]);
      return (n.kind == Kind::kNewObj ? "an instance of " : "a call of ") + c.s + "." + c.s2;
    }
    if (n.kind == Kind::kGlobal) return "the global " + n.s + "." + n.s2;
    return "a " + std::string(pickle::KindName(n.kind));
  }

  bool IsGlobal(NodeId id, std::string_view module, std::string_view name) const {
    const Node& n = N(id);
    return n.kind == Kind::kGlobal && n.s == module && n.s2 == name;
  }
  bool IsNone(NodeId id) const { return id == kNoNode || N(id).kind == Kind::kNone; }

  // The BUILD state (or kNoNode) of a `cls()` made by NEWOBJ, where cls is
  // one of `classes`.
  Result<NodeId> Instance(
      NodeId id, std::initializer_list<std::pair<std::string_view, std::string_view>> classes,
      std::string_view what) const {
    const Node& n = N(id);
    if (n.kind == Kind::kNewObj && n.items.size() == 2) {
      for (const auto& [module, name] : classes) {
        if (IsGlobal(n.items[0], module, name)) {
          if (!N(n.items[1]).items.empty()) return Corrupt(what, "constructor arguments present");
          return n.state;
        }
      }
    }
    const auto& [module, name] = *classes.begin();
    return Corrupt(what, "expected an instance of " + std::string(module) + "." +
                             std::string(name) + ", found " + Describe(id));
  }

  Result<Fields> StateFields(NodeId state, std::string_view what) const {
    if (state == kNoNode || N(state).kind != Kind::kDict) {
      return Corrupt(what, "object state is " +
                               (state == kNoNode ? std::string("missing") : Describe(state)) +
                               ", not a dict");
    }
    const std::vector<NodeId>& items = N(state).items;
    if (items.size() / 2 > kMaxFields) return Corrupt(what, "object state has too many fields");
    Fields f;
    for (size_t k = 0; k + 1 < items.size(); k += 2) {
      if (N(items[k]).kind != Kind::kString) return Corrupt(what, "field name is not a str");
      f.kv.emplace_back(N(items[k]).s, items[k + 1]);
    }
    return f;
  }

  // A dict's k0, v0, k1, v1, ... (a plain dict or a collections.OrderedDict).
  Result<const std::vector<NodeId>*> DictItems(NodeId id, std::string_view what) const {
    const Node& n = N(id);
    if (n.kind == Kind::kDict) return &n.items;
    if (n.kind == Kind::kReduce && IsGlobal(n.items[0], "collections", "OrderedDict") &&
        N(n.items[1]).kind == Kind::kTuple && N(n.items[1]).items.empty()) {
      return &n.dict_items;
    }
    return Corrupt(what, "expected a dict, found " + Describe(id));
  }

  Result<std::string> Str(NodeId id, std::string_view what) {
    if (id == kNoNode) return Corrupt(what, "missing");
    if (N(id).kind != Kind::kString) return Corrupt(what, "expected a str, found " + Describe(id));
    DCPP_RETURN_IF_ERROR(Charge(N(id).s.size()));
    return N(id).s;
  }
  Result<std::optional<std::string>> OptStr(NodeId id, std::string_view what) {
    if (IsNone(id)) return std::optional<std::string>();
    DCPP_ASSIGN_OR_RETURN(std::string s, Str(id, what));
    return std::optional<std::string>(std::move(s));
  }
  Result<int64_t> Int(NodeId id, std::string_view what) const {
    if (id == kNoNode) return Corrupt(what, "missing");
    const Node& n = N(id);
    if (n.kind == Kind::kInt) return n.i;
    if (n.kind == Kind::kBigInt) return Corrupt(what, "integer out of range");
    return Corrupt(what, "expected an int, found " + Describe(id));
  }
  Result<uint64_t> UInt(NodeId id, std::string_view what) const {
    if (id != kNoNode && N(id).kind == Kind::kBigInt) {
      // LONG1 bytes of a value in [2^63, 2^64): eight bytes and a zero sign byte.
      const std::string& b = N(id).s;
      if (b.size() == 9 && b[8] == 0) {
        uint64_t v = 0;
        for (int k = 7; k >= 0; --k) v = (v << 8) | static_cast<uint8_t>(b[k]);
        return v;
      }
    }
    DCPP_ASSIGN_OR_RETURN(int64_t v, Int(id, what));
    if (v < 0) return Corrupt(what, "negative value " + std::to_string(v));
    return static_cast<uint64_t>(v);
  }
  Result<bool> Bool(NodeId id, std::string_view what) const {
    if (id == kNoNode) return Corrupt(what, "missing");
    const Node& n = N(id);
    if (n.kind == Kind::kBool) return n.b;
    if (n.kind == Kind::kInt && (n.i == 0 || n.i == 1)) return n.i == 1;
    return Corrupt(what, "expected a bool, found " + Describe(id));
  }

  // torch.Size(<tuple of ints>) as pickled: REDUCE(torch.Size, ((d0, d1, ...),)).
  Result<Shape> Size(NodeId id, std::string_view what) {
    if (id == kNoNode) return Corrupt(what, "missing");
    const Node& n = N(id);
    if (n.kind != Kind::kReduce || !IsGlobal(n.items[0], "torch", "Size") ||
        N(n.items[1]).kind != Kind::kTuple || N(n.items[1]).items.size() != 1) {
      return Corrupt(what, "expected a torch.Size, found " + Describe(id));
    }
    const Node& dims = N(N(n.items[1]).items[0]);
    if (dims.kind != Kind::kTuple && dims.kind != Kind::kList) {
      return Corrupt(what, "torch.Size of " + Describe(N(n.items[1]).items[0]));
    }
    DCPP_RETURN_IF_ERROR(Charge(dims.items.size() * sizeof(int64_t)));
    Shape shape;
    shape.reserve(dims.items.size());
    for (NodeId d : dims.items) {
      DCPP_ASSIGN_OR_RETURN(int64_t v, Int(d, what));
      shape.push_back(v);
    }
    return shape;
  }

  // A str, or a pathlib path pickled as REDUCE(cls, (part, part, ...)).
  Result<std::string> PathString(NodeId id, std::string_view what) {
    const Node& n = N(id);
    if (n.kind == Kind::kString) return Str(id, what);
    if (n.kind != Kind::kReduce || N(n.items[0]).kind != Kind::kGlobal ||
        !IsPathClass(N(n.items[0]).s, N(n.items[0]).s2) || N(n.items[1]).kind != Kind::kTuple) {
      return Corrupt(what, "expected a str or a pathlib path, found " + Describe(id));
    }
    const bool windows = N(n.items[0]).s2.find("Windows") != std::string::npos;
    const char sep = windows ? '\\' : '/';
    std::string out;
    for (NodeId part_id : N(n.items[1]).items) {
      DCPP_ASSIGN_OR_RETURN(std::string part, Str(part_id, what));
      if (part.empty()) continue;
      if (!windows && part[0] == '/') {
        out = std::move(part);  // an absolute part restarts the path, as in Python
      } else if (out.empty() || out.back() == sep || (windows && out.back() == '/')) {
        out += part;
      } else {
        out.push_back(sep);
        out += part;
      }
    }
    if (out.empty()) out = ".";  // PurePath() is "."
    return out;
  }

  Result<StorageMeta> DecodeStorageMeta(NodeId id);
  Status DecodeStorageData(NodeId id);
  Result<TensorProperties> DecodeProperties(NodeId id, const std::string& what);
  Result<ObjectPath> DecodePath(NodeId id, const std::string& what);
  Result<EntryMeta> DecodeEntry(std::string_view fqn, NodeId value);

  const Graph& g_;
  size_t budget_;
  size_t used_ = 0;
  std::unordered_map<std::string, StorageInfo> storage_;
  std::unordered_map<std::string_view, NodeId> paths_;
};

Result<StorageMeta> Decoder::DecodeStorageMeta(NodeId id) {
  DCPP_ASSIGN_OR_RETURN(NodeId state, Instance(id, {{kMetaModule, "StorageMeta"}}, "storage_meta"));
  DCPP_ASSIGN_OR_RETURN(Fields f, StateFields(state, "storage_meta"));
  StorageMeta sm;
  NodeId cid = f.Get("checkpoint_id");
  if (!IsNone(cid)) {
    DCPP_ASSIGN_OR_RETURN(sm.checkpoint_id, PathString(cid, "storage_meta.checkpoint_id"));
  }
  DCPP_ASSIGN_OR_RETURN(sm.save_id, OptStr(f.Get("save_id"), "storage_meta.save_id"));
  DCPP_ASSIGN_OR_RETURN(sm.load_id, OptStr(f.Get("load_id"), "storage_meta.load_id"));
  NodeId modules = f.Get("modules");
  if (!IsNone(modules)) {
    const Node& m = N(modules);
    if (m.kind != Kind::kList && m.kind != Kind::kTuple) {
      return Corrupt("storage_meta.modules", "expected a list, found " + Describe(modules));
    }
    for (NodeId item : m.items) {
      DCPP_ASSIGN_OR_RETURN(std::string s, Str(item, "storage_meta.modules"));
      sm.modules.push_back(std::move(s));
    }
  }
  return sm;
}

Status Decoder::DecodeStorageData(NodeId id) {
  DCPP_ASSIGN_OR_RETURN(const std::vector<NodeId>* items, DictItems(id, "storage_data"));
  for (size_t k = 0; k + 1 < items->size(); k += 2) {
    DCPP_ASSIGN_OR_RETURN(NodeId key_state, Instance((*items)[k], {{kMetaModule, "MetadataIndex"}},
                                                     "storage_data key"));
    DCPP_ASSIGN_OR_RETURN(Fields key, StateFields(key_state, "storage_data key"));
    DCPP_ASSIGN_OR_RETURN(std::string fqn, Str(key.Get("fqn"), "storage_data key fqn"));
    const std::string what = "storage_data for '" + fqn + "'";
    std::optional<Shape> offsets;
    NodeId offset_id = key.Get("offset");
    if (!IsNone(offset_id)) {
      DCPP_ASSIGN_OR_RETURN(offsets, Size(offset_id, what + " offset"));
    }

    DCPP_ASSIGN_OR_RETURN(NodeId value_state,
                          Instance((*items)[k + 1], {{kFsModule, "_StorageInfo"}}, what));
    DCPP_ASSIGN_OR_RETURN(Fields value, StateFields(value_state, what));
    StorageInfo info;
    DCPP_ASSIGN_OR_RETURN(info.relative_path,
                          Str(value.Get("relative_path"), what + " relative_path"));
    DCPP_ASSIGN_OR_RETURN(info.offset, UInt(value.Get("offset"), what + " offset"));
    DCPP_ASSIGN_OR_RETURN(info.length, UInt(value.Get("length"), what + " length"));
    NodeId transforms = value.Get("transform_descriptors");
    if (!IsNone(transforms)) {
      const Node& t = N(transforms);
      if (t.kind != Kind::kList && t.kind != Kind::kTuple) {
        return Corrupt(what, "transform_descriptors is " + Describe(transforms));
      }
      for (NodeId item : t.items) {
        DCPP_ASSIGN_OR_RETURN(std::string s, Str(item, what + " transform_descriptors"));
        info.transform_descriptors.push_back(std::move(s));
      }
    }
    std::string skey = StorageKey(fqn, offsets ? &*offsets : nullptr);
    DCPP_RETURN_IF_ERROR(Charge(skey.size() + sizeof(StorageInfo) + 64));
    storage_.insert_or_assign(std::move(skey), std::move(info));  // last wins, as in a dict
  }
  return Status::Ok();
}

Result<TensorProperties> Decoder::DecodeProperties(NodeId id, const std::string& what) {
  const std::string pwhat = what + " properties";
  DCPP_ASSIGN_OR_RETURN(
      NodeId state,
      Instance(id, {{kMetaModule, "TensorProperties"}, {kLegacyModule, "TensorProperties"}},
               pwhat));
  if (state == kNoNode || N(state).kind != Kind::kTuple || N(state).items.size() != 5) {
    return Corrupt(pwhat,
                   "state is not the 5-tuple (dtype, layout, requires_grad, "
                   "memory_format, pin_memory)");
  }
  const std::vector<NodeId>& s = N(state).items;
  TensorProperties p;

  const Node& dtype = N(s[0]);
  if (dtype.kind != Kind::kGlobal || dtype.s != "torch") {
    return Corrupt(pwhat, "dtype is " + Describe(s[0]));
  }
  std::optional<DType> dt = DTypeFromTorchName(dtype.s2);
  if (!dt) {
    return UnimplementedError("metadata: " + what + ": dtype torch." + dtype.s2 +
                              " is not supported");
  }
  p.dtype = *dt;

  const Node& layout = N(s[1]);
  if (layout.kind != Kind::kReduce ||
      !IsGlobal(layout.items[0], "torch.serialization", "_get_layout") ||
      N(layout.items[1]).kind != Kind::kTuple || N(layout.items[1]).items.size() != 1 ||
      N(N(layout.items[1]).items[0]).kind != Kind::kString) {
    return Corrupt(pwhat, "layout is " + Describe(s[1]));
  }
  const std::string& layout_name = N(N(layout.items[1]).items[0]).s;
  if (layout_name != "torch.strided") {
    return UnimplementedError("metadata: " + what + ": layout " + layout_name +
                              " is not supported (only torch.strided)");
  }

  DCPP_ASSIGN_OR_RETURN(p.requires_grad, Bool(s[2], pwhat + " requires_grad"));

  const Node& mf = N(s[3]);
  if (mf.kind != Kind::kReduce ||
      !(IsGlobal(mf.items[0], kMetaModule, "_MEM_FORMAT_ENCODING") ||
        IsGlobal(mf.items[0], kLegacyModule, "MEM_FORMAT_ENCODING")) ||
      N(mf.items[1]).kind != Kind::kTuple || N(mf.items[1]).items.size() != 1) {
    return Corrupt(pwhat, "memory format is " + Describe(s[3]));
  }
  DCPP_ASSIGN_OR_RETURN(int64_t code, Int(N(mf.items[1]).items[0], pwhat + " memory format"));
  if (code < 0 || code > 2) {
    return Corrupt(pwhat, "unknown memory format encoding " + std::to_string(code));
  }
  p.memory_format = static_cast<MemoryFormat>(code);

  DCPP_ASSIGN_OR_RETURN(p.pin_memory, Bool(s[4], pwhat + " pin_memory"));
  return p;
}

Result<ObjectPath> Decoder::DecodePath(NodeId id, const std::string& what) {
  const Node& n = N(id);
  if (n.kind != Kind::kTuple && n.kind != Kind::kList) {
    return Corrupt(what, "planner_data path is " + Describe(id));
  }
  DCPP_RETURN_IF_ERROR(Charge(n.items.size() * sizeof(PathElement)));
  ObjectPath path;
  for (NodeId e : n.items) {
    const Node& en = N(e);
    if (en.kind == Kind::kString) {
      DCPP_RETURN_IF_ERROR(Charge(en.s.size()));
      path.emplace_back(en.s);
    } else if (en.kind == Kind::kInt) {
      path.emplace_back(en.i);
    } else {
      return Corrupt(what, "planner_data path holds " + Describe(e));
    }
  }
  return path;
}

Result<EntryMeta> Decoder::DecodeEntry(std::string_view fqn, NodeId value) {
  DCPP_RETURN_IF_ERROR(Charge(sizeof(EntryMeta) + fqn.size()));
  const std::string what = "entry '" + std::string(fqn) + "'";
  EntryMeta e;
  e.fqn = std::string(fqn);
  if (auto it = paths_.find(fqn); it != paths_.end()) {
    DCPP_ASSIGN_OR_RETURN(e.path, DecodePath(it->second, what));
  }

  const Node& n = N(value);
  if (n.kind == Kind::kNewObj && IsGlobal(n.items[0], kMetaModule, "BytesStorageMetadata")) {
    // No fields: Python >= 3.11 writes no BUILD, older versions an empty dict.
    if (n.state != kNoNode && N(n.state).kind != Kind::kDict && N(n.state).kind != Kind::kNone) {
      return Corrupt(what, "BytesStorageMetadata state is " + Describe(n.state));
    }
    e.kind = EntryMeta::Kind::kBytes;
    auto it = storage_.find(StorageKey(fqn, nullptr));
    if (it == storage_.end()) {
      return Corrupt(what, "no storage_data record for the bytes entry");
    }
    DCPP_RETURN_IF_ERROR(Charge(sizeof(StorageInfo) + it->second.relative_path.size()));
    e.storage = it->second;
    return e;
  }

  DCPP_ASSIGN_OR_RETURN(NodeId state,
                        Instance(value, {{kMetaModule, "TensorStorageMetadata"}}, what));
  DCPP_ASSIGN_OR_RETURN(Fields f, StateFields(state, what));
  e.kind = EntryMeta::Kind::kTensor;
  NodeId props = f.Get("properties");
  if (props == kNoNode) return Corrupt(what, "no properties");
  DCPP_ASSIGN_OR_RETURN(e.properties, DecodeProperties(props, what));
  DCPP_ASSIGN_OR_RETURN(e.size, Size(f.Get("size"), what + " size"));
  for (int64_t d : e.size) {
    if (d < 0) return Corrupt(what, "negative size " + ShapeText(e.size));
  }

  NodeId chunks_id = f.Get("chunks");
  if (chunks_id == kNoNode) return Corrupt(what, "no chunks");
  const Node& chunks = N(chunks_id);
  if (chunks.kind != Kind::kList) return Corrupt(what, "chunks is " + Describe(chunks_id));
  for (size_t c = 0; c < chunks.items.size(); ++c) {
    const std::string cwhat = what + " chunk " + std::to_string(c);
    DCPP_RETURN_IF_ERROR(Charge(sizeof(ChunkMeta)));
    DCPP_ASSIGN_OR_RETURN(
        NodeId cstate, Instance(chunks.items[c], {{kMetaModule, "ChunkStorageMetadata"}}, cwhat));
    DCPP_ASSIGN_OR_RETURN(Fields cf, StateFields(cstate, cwhat));
    ChunkMeta chunk;
    DCPP_ASSIGN_OR_RETURN(chunk.offsets, Size(cf.Get("offsets"), cwhat + " offsets"));
    DCPP_ASSIGN_OR_RETURN(chunk.sizes, Size(cf.Get("sizes"), cwhat + " sizes"));
    if (chunk.offsets.size() != e.size.size() || chunk.sizes.size() != e.size.size()) {
      return Corrupt(what, "chunk offsets " + ShapeText(chunk.offsets) + " / sizes " +
                               ShapeText(chunk.sizes) + " do not have the rank of size " +
                               ShapeText(e.size));
    }
    for (size_t d = 0; d < e.size.size(); ++d) {
      int64_t end = 0;
      if (chunk.offsets[d] < 0 || chunk.sizes[d] < 0 ||
          __builtin_add_overflow(chunk.offsets[d], chunk.sizes[d], &end) || end > e.size[d]) {
        return Corrupt(what, "chunk at offsets " + ShapeText(chunk.offsets) + " with sizes " +
                                 ShapeText(chunk.sizes) + " lies outside size " +
                                 ShapeText(e.size));
      }
    }
    auto it = storage_.find(StorageKey(fqn, &chunk.offsets));
    if (it == storage_.end()) {
      return Corrupt(what,
                     "no storage_data record for the chunk at offsets " + ShapeText(chunk.offsets));
    }
    DCPP_RETURN_IF_ERROR(Charge(sizeof(StorageInfo) + it->second.relative_path.size()));
    chunk.storage = it->second;
    e.chunks.push_back(std::move(chunk));
  }
  return e;
}

Result<Metadata> Decoder::Run() {
  DCPP_ASSIGN_OR_RETURN(NodeId state,
                        Instance(g_.root, {{kMetaModule, "Metadata"}}, "root object"));
  DCPP_ASSIGN_OR_RETURN(Fields f, StateFields(state, "Metadata"));
  Metadata md;

  NodeId version = f.Get("version");
  if (!IsNone(version)) {
    DCPP_ASSIGN_OR_RETURN(md.version, Str(version, "Metadata.version"));
  }
  NodeId sm = f.Get("storage_meta");
  if (!IsNone(sm)) {
    DCPP_ASSIGN_OR_RETURN(md.storage_meta, DecodeStorageMeta(sm));
  }
  NodeId sd = f.Get("storage_data");
  if (!IsNone(sd)) DCPP_RETURN_IF_ERROR(DecodeStorageData(sd));
  NodeId pd = f.Get("planner_data");
  if (!IsNone(pd)) {
    DCPP_ASSIGN_OR_RETURN(const std::vector<NodeId>* items, DictItems(pd, "planner_data"));
    for (size_t k = 0; k + 1 < items->size(); k += 2) {
      if (N((*items)[k]).kind != Kind::kString) {
        return Corrupt("planner_data", "key is " + Describe((*items)[k]));
      }
      paths_.insert_or_assign(std::string_view(N((*items)[k]).s), (*items)[k + 1]);
    }
  }

  NodeId sdm = f.Get("state_dict_metadata");
  if (sdm == kNoNode) return Corrupt("Metadata", "no state_dict_metadata");
  DCPP_ASSIGN_OR_RETURN(const std::vector<NodeId>* items, DictItems(sdm, "state_dict_metadata"));
  std::unordered_map<std::string_view, size_t> position;
  for (size_t k = 0; k + 1 < items->size(); k += 2) {
    if (N((*items)[k]).kind != Kind::kString) {
      return Corrupt("state_dict_metadata", "key is " + Describe((*items)[k]));
    }
    std::string_view fqn = N((*items)[k]).s;
    DCPP_ASSIGN_OR_RETURN(EntryMeta e, DecodeEntry(fqn, (*items)[k + 1]));
    // A repeated key keeps its first position and its last value, as in a dict.
    auto [it, inserted] = position.emplace(fqn, md.entries.size());
    if (inserted) {
      md.entries.push_back(std::move(e));
    } else {
      md.entries[it->second] = std::move(e);
    }
  }
  return md;
}

}  // namespace

namespace metadata_internal {

Result<Metadata> DecodeMetadataGeneral(std::span<const uint8_t> bytes) {
  std::string rejected;
  pickle::ParseOptions options;
  options.allow_global = [&rejected](std::string_view module, std::string_view name) {
    if (AllowMetadataGlobal(module, name)) return true;
    rejected = std::string(module) + "." + std::string(name);
    return false;
  };
  options.allow_persistent_id = false;
  Result<Graph> graph = pickle::Parse(bytes, options);
  if (!graph.ok()) {
    if (!rejected.empty()) {
      return InvalidArgumentError(
          "metadata: global '" + rejected +
          "' is not allowed: this .metadata was not written by DCP's default planner and "
          "FileSystemWriter (dcpp reads only their classes)");
    }
    return graph.status().WithContext("metadata");
  }
  return Decoder(*graph, bytes.size()).Run();
}

}  // namespace metadata_internal

Result<Metadata> DecodeMetadata(std::span<const uint8_t> bytes) {
  // The fast path decodes what DCP's writers produce; anything else, and
  // every error, goes through the general path.
  if (std::optional<Metadata> md = metadata_internal::DecodeMetadataFast(bytes)) {
    return std::move(*md);
  }
  return metadata_internal::DecodeMetadataGeneral(bytes);
}

}  // namespace dcpp::format
