#include "dcpp/format/metadata_codec.h"

#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dcpp/format/pickle.h"

namespace dcpp::format {
namespace {

using pickle::Graph;
using pickle::Kind;
using pickle::kNoNode;
using pickle::Node;
using pickle::NodeId;

constexpr std::string_view kMetaModule = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kFsModule = "torch.distributed.checkpoint.filesystem";
constexpr std::string_view kLegacyModule = "torch.distributed._shard.sharded_tensor.metadata";

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

// The allow-list of section 2.5 of the format notes.
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

// ---------------------------------------------------------------- encoding

#define DCPP_ALWAYS_INLINE inline __attribute__((always_inline))

constexpr uint32_t kUnset = 0xFFFFFFFFu;

// Raw opcode writers for the per-chunk fast paths: each writes at `p` and
// returns the new end. The caller has ensured room for them.
DCPP_ALWAYS_INLINE char* Le32At(char* p, uint32_t v) {
  for (int k = 0; k < 4; ++k) p[k] = static_cast<char>(v >> (8 * k));
  return p + 4;
}
DCPP_ALWAYS_INLINE char* MemoAt(char* p, char short_op, char long_op, uint32_t index) {
  if (index < 256) {
    p[0] = short_op;
    p[1] = static_cast<char>(index);
    return p + 2;
  }
  *p = long_op;
  return Le32At(p + 1, index);
}
DCPP_ALWAYS_INLINE char* PutAt(char* p, uint32_t index) { return MemoAt(p, 'q', 'r', index); }
DCPP_ALWAYS_INLINE char* GetAt(char* p, uint32_t index) { return MemoAt(p, 'h', 'j', index); }

// LONG1: minimal little-endian two's complement of the 64 bits `v`
// (is_signed) or of the unsigned value `v` (one more byte when bit 63 is
// set). At most 11 bytes.
char* Long1At(char* p, uint64_t v, bool is_signed) {
  char bytes[9];
  int n = 8;
  for (int k = 0; k < 8; ++k) bytes[k] = static_cast<char>(v >> (8 * k));
  if (!is_signed) bytes[n++] = 0;
  while (n > 1) {
    const auto last = static_cast<uint8_t>(bytes[n - 1]);
    const auto prev = static_cast<uint8_t>(bytes[n - 2]);
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) {
      --n;
    } else {
      break;
    }
  }
  p[0] = static_cast<char>(0x8a);
  p[1] = static_cast<char>(n);
  std::memcpy(p + 2, bytes, static_cast<size_t>(n));
  return p + 2 + n;
}

// BININT1 / BININT2 / BININT / LONG1, as Python picks them. At most 11 bytes.
DCPP_ALWAYS_INLINE char* IntAt(char* p, int64_t v) {
  if (static_cast<uint64_t>(v) <= 0xFF) {
    p[0] = 'K';
    p[1] = static_cast<char>(v);
    return p + 2;
  }
  if (static_cast<uint64_t>(v) <= 0xFFFF) {
    p[0] = 'M';
    p[1] = static_cast<char>(v);
    p[2] = static_cast<char>(v >> 8);
    return p + 3;
  }
  if (v >= -0x80000000LL && v <= 0x7FFFFFFF) {
    *p = 'J';
    return Le32At(p + 1, static_cast<uint32_t>(v));
  }
  return Long1At(p, static_cast<uint64_t>(v), /*is_signed=*/true);
}
DCPP_ALWAYS_INLINE char* UIntAt(char* p, uint64_t v) {
  if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return IntAt(p, static_cast<int64_t>(v));
  return Long1At(p, v, /*is_signed=*/false);
}
// Bytes a torch.Size of `n` dimensions takes at most.
constexpr size_t SizeBound(size_t n) { return 32 + 11 * n; }

// String contents -> memo index, open addressing. Keys are copied into an
// arena of the table's own, so a lookup touches only the table and the
// arena (both small), not wherever the string first appeared. Every chunk
// looks up its file name here, so slots are kept small and short keys are
// compared inline.
class StringMemo {
 public:
  StringMemo() : slots_(64) {}

  // The memo index of `s`, or kUnset after recording `fresh` for it.
  uint32_t FindOrAdd(std::string_view s, uint32_t fresh) {
    const uint64_t h = Hash(s);
    Slot& slot = Probe(s, h);
    if (slot.memo != kUnset) return slot.memo;
    slot = {arena_.size(), static_cast<uint32_t>(s.size()), static_cast<uint32_t>(h), fresh};
    arena_.append(s);
    if (++used_ * 2 > slots_.size()) Rehash();
    return kUnset;
  }
  // The memo index of `s`, or kUnset.
  uint32_t Find(std::string_view s) { return Probe(s, Hash(s)).memo; }

 private:
  struct Slot {
    uint64_t offset = 0;     // in arena_
    uint32_t size = 0;       // strings are shorter than 2^32 (BINUNICODE)
    uint32_t hash = 0;       // low bits of Hash()
    uint32_t memo = kUnset;  // kUnset: empty slot
  };

  static uint64_t Load8(const char* p) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
  }
  // A value determined by the n < 8 bytes at p (equal bytes, equal value),
  // read with fixed-size loads that may overlap.
  static uint64_t Tail(const char* p, size_t n) {
    if (n >= 4) {
      uint32_t lo, hi;
      std::memcpy(&lo, p, 4);
      std::memcpy(&hi, p + n - 4, 4);
      return lo | uint64_t{hi} << 32;
    }
    if (n >= 2) {
      uint16_t lo, hi;
      std::memcpy(&lo, p, 2);
      std::memcpy(&hi, p + n - 2, 2);
      return lo | uint64_t{hi} << 16;
    }
    return n == 1 ? static_cast<uint8_t>(*p) : 0;
  }
  static uint64_t Hash(std::string_view s) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
      h = (h ^ Load8(s.data() + i)) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 31;
    }
    h = (h ^ Tail(s.data() + i, s.size() - i)) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
  }
  static bool Equal(const char* a, const char* b, size_t n) {
    if (n < 8) return Tail(a, n) == Tail(b, n);
    if (n <= 16) return Load8(a) == Load8(b) && Load8(a + n - 8) == Load8(b + n - 8);
    return std::memcmp(a, b, n) == 0;
  }
  // The slot holding `s`, or the empty slot where it belongs.
  Slot& Probe(std::string_view s, uint64_t h) {
    const auto h32 = static_cast<uint32_t>(h);
    for (size_t i = h & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      Slot& slot = slots_[i];
      if (slot.memo == kUnset || (slot.hash == h32 && slot.size == s.size() &&
                                  Equal(arena_.data() + slot.offset, s.data(), s.size())))
        return slot;
    }
  }
  void Rehash() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    for (const Slot& s : old) {
      if (s.memo == kUnset) continue;
      // Rehash the key: the slot keeps only the low bits of its hash.
      const uint64_t h = Hash(std::string_view(arena_.data() + s.offset, s.size));
      size_t i = h & (slots_.size() - 1);
      while (slots_[i].memo != kUnset) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  std::string arena_;
  size_t used_ = 0;
};

// Emits the pickle program Python's pickler (protocol 2) runs for DCP's
// Metadata object graph, with the same memo entries. Metadata of a large job
// holds millions of chunks, so this writes opcodes straight into one buffer
// (rather than through pickle::Writer), keeps the memo indices of the
// strings and globals every chunk repeats at hand, and writes each chunk's
// records with one bounds check once those are known.
class Encoder {
 public:
  std::string Run(const Metadata& md, const std::string& hint);

 private:
  // Largest opcode with its argument, other than strings and GLOBAL.
  static constexpr size_t kMaxOp = 16;
  // The buffer's size grows in steps this large within its capacity, so
  // each piece is zeroed (by resize) just before it is written, while in
  // cache, and reserved capacity never written costs no memory.
  static constexpr size_t kStep = size_t{256} << 10;

  // Ensures `n` writable bytes at p_.
  void Ensure(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) Extend(n);
  }
  void Extend(size_t n) {
    const size_t used = static_cast<size_t>(p_ - out_.data());
    const size_t want = used + std::max(n, kStep);
    if (want > out_.capacity()) out_.reserve(std::max(want, out_.capacity() / 2 * 3));
    out_.resize(want);
    p_ = out_.data() + used;
    end_ = out_.data() + out_.size();
  }
  void Op(uint8_t op) {
    Ensure(kMaxOp);
    *p_++ = static_cast<char>(op);
  }
  uint32_t Put() {
    Ensure(kMaxOp);
    p_ = PutAt(p_, next_memo_);
    return next_memo_++;
  }
  void Get(uint32_t index) {
    Ensure(kMaxOp);
    p_ = GetAt(p_, index);
  }
  void None() { Op('N'); }
  void Bool(bool v) { Op(v ? 0x88 : 0x89); }  // NEWTRUE / NEWFALSE
  void Mark() { Op('('); }
  void EmptyTuple() { Op(')'); }
  void EmptyList() { Op(']'); }
  void EmptyDict() { Op('}'); }
  void SetItems() { Op('u'); }
  void Build() { Op('b'); }
  void Reduce() { Op('R'); }
  void Tuple(size_t n) { Op(n == 0 ? ')' : n <= 3 ? static_cast<uint8_t>(0x84 + n) : 't'); }
  void Int(int64_t v) {
    Ensure(kMaxOp);
    p_ = IntAt(p_, v);
  }
  void UInt(uint64_t v) {
    Ensure(kMaxOp);
    p_ = UIntAt(p_, v);
  }

  // A str object of its own: BINUNICODE, memoized. Returns its memo index.
  uint32_t FreshStr(std::string_view s) {
    Ensure(s.size() + kMaxOp);
    *p_++ = 'X';  // BINUNICODE
    p_ = Le32At(p_, static_cast<uint32_t>(s.size()));
    std::memcpy(p_, s.data(), s.size());
    p_ += s.size();
    return Put();
  }
  // Data strings (FQNs, path parts, file names, ...) are memoized by value:
  // Python memoizes str objects by identity, and after unpickling equal
  // strings written once are one object. Returns the string's memo index.
  uint32_t Str(std::string_view s) {
    const uint32_t known = strings_.FindOrAdd(s, next_memo_);
    if (known != kUnset) {
      Get(known);
      return known;
    }
    return FreshStr(s);
  }
  // An attribute name (a key of a dataclass's state dict), whose memo index
  // `*memo` caches. Unpickling interns these keys, so they are objects of
  // their own, one per name and never the same as an equal data string.
  void Key(uint32_t* memo, std::string_view name) {
    if (*memo != kUnset) {
      Get(*memo);
    } else {
      *memo = FreshStr(name);
    }
  }
  void OptStr(const std::optional<std::string>& s) {
    if (s) {
      Str(*s);
    } else {
      None();
    }
  }
  // GLOBAL 'module\nname\n', memoized on first use as Python does.
  void Global(uint32_t* memo, std::string_view module, std::string_view name) {
    if (*memo != kUnset) {
      Get(*memo);
      return;
    }
    Ensure(module.size() + name.size() + kMaxOp);
    *p_++ = 'c';
    std::memcpy(p_, module.data(), module.size());
    p_ += module.size();
    *p_++ = '\n';
    std::memcpy(p_, name.data(), name.size());
    p_ += name.size();
    *p_++ = '\n';
    *memo = Put();
  }
  // `cls.__new__(cls)` as copyreg.__newobj__ pickles it.
  void NewObject(uint32_t* memo, std::string_view module, std::string_view cls) {
    Global(memo, module, cls);
    EmptyTuple();
    Op(0x81);  // NEWOBJ
    Put();
  }
  // The items of a list or dict as CPython's C pickler writes them for an
  // exact list or dict (batch_list_exact / batch_dict_exact, which differ
  // from the pure-Python pickler's): a lone item without MARK (APPEND /
  // SETITEM); otherwise batches of up to 1000 items, each MARK ... APPENDS /
  // SETITEMS, a last batch of one item included; a dict whose size is a
  // multiple of 1000 ends with an empty batch.
  template <typename F>
  void Batched(size_t n, bool dict, F&& item) {
    if (n == 0) return;
    if (n == 1) {
      item(0);
      Op(dict ? 's' : 'a');
      return;
    }
    constexpr size_t kBatch = 1000;
    for (size_t done = 0;;) {
      Mark();
      const size_t m = std::min(kBatch, n - done);
      for (size_t k = 0; k < m; ++k) item(done + k);
      done += m;
      Op(dict ? 'u' : 'e');
      if (dict ? m < kBatch : done == n) break;
    }
  }
  void Size(const Shape& shape) {
    Global(&g_size_, "torch", "Size");
    Ensure(SizeBound(shape.size()));
    p_ = SizeBodyAt(p_, shape, &next_memo_);
  }
  // A torch.Size after its GLOBAL.
  static DCPP_ALWAYS_INLINE char* SizeBodyAt(char* p, const Shape& shape, uint32_t* memo) {
    if (shape.empty()) {
      *p++ = ')';  // the empty tuple is never memoized
    } else {
      if (shape.size() > 3) *p++ = '(';
      for (int64_t d : shape) p = IntAt(p, d);
      *p++ = shape.size() <= 3 ? static_cast<char>(0x84 + shape.size()) : 't';
      p = PutAt(p, (*memo)++);
    }
    *p++ = static_cast<char>(0x85);  // TUPLE1
    p = PutAt(p, (*memo)++);
    *p++ = 'R';
    return PutAt(p, (*memo)++);
  }
  void Properties(const TensorProperties& p);
  void ChunkObject(const ChunkMeta& c);
  void StorageRecord(uint32_t fqn_memo, const Shape* offsets, int64_t index, const StorageInfo& s);
  void StorageInfoObject(const StorageInfo& s);
  void MetadataIndexObject(uint32_t fqn_memo, const Shape* offsets, int64_t index);
  void StorageMetaObject(const StorageMeta& sm);

  std::string out_;
  char* p_ = nullptr;
  char* end_ = nullptr;  // out_.data() + out_.size()
  uint32_t next_memo_ = 0;
  StringMemo strings_;
  // Memo indices of the globals and dict keys every entry or chunk repeats.
  uint32_t g_metadata_ = kUnset, g_tensor_md_ = kUnset, g_bytes_md_ = kUnset, g_chunk_md_ = kUnset,
           g_properties_ = kUnset, g_size_ = kUnset, g_index_ = kUnset, g_storage_info_ = kUnset,
           g_storage_meta_ = kUnset, g_layout_ = kUnset, g_mem_format_ = kUnset;
  uint32_t g_dtype_[kNumDTypes];
  uint32_t k_properties_ = kUnset, k_size_ = kUnset, k_chunks_ = kUnset, k_offsets_ = kUnset,
           k_sizes_ = kUnset, k_fqn_ = kUnset, k_index_ = kUnset, k_offset_ = kUnset,
           k_relative_path_ = kUnset, k_length_ = kUnset, k_transforms_ = kUnset,
           k_checkpoint_id_ = kUnset, k_save_id_ = kUnset, k_load_id_ = kUnset, k_modules_ = kUnset,
           k_state_dict_metadata_ = kUnset, k_planner_data_ = kUnset, k_storage_data_ = kUnset,
           k_storage_meta_ = kUnset, k_version_ = kUnset;
  uint32_t strided_ = kUnset;                           // torch.strided, a singleton in Python
  uint32_t mem_formats_[3] = {kUnset, kUnset, kUnset};  // _MEM_FORMAT_ENCODING members
};

void Encoder::Properties(const TensorProperties& p) {
  NewObject(&g_properties_, kMetaModule, "TensorProperties");
  Mark();
  Global(&g_dtype_[static_cast<size_t>(p.dtype)], "torch", TorchName(p.dtype));
  if (strided_ != kUnset) {
    Get(strided_);
  } else {
    Global(&g_layout_, "torch.serialization", "_get_layout");
    // str(torch.strided), a fresh str: never shared with an equal data string.
    FreshStr("torch.strided");
    Tuple(1);
    Put();
    Reduce();
    strided_ = Put();
  }
  Bool(p.requires_grad);
  const auto code = static_cast<size_t>(p.memory_format);
  if (code < 3 && mem_formats_[code] != kUnset) {
    Get(mem_formats_[code]);
  } else {
    Global(&g_mem_format_, kMetaModule, "_MEM_FORMAT_ENCODING");
    Int(static_cast<int64_t>(code));
    Tuple(1);
    Put();
    Reduce();
    const uint32_t memo = Put();
    if (code < 3) mem_formats_[code] = memo;
  }
  Bool(p.pin_memory);
  Tuple(5);
  Put();
  Build();
}

void Encoder::ChunkObject(const ChunkMeta& c) {
  if (g_chunk_md_ != kUnset && g_size_ != kUnset && k_offsets_ != kUnset && k_sizes_ != kUnset) {
    // Everything it refers to is memoized: one bounds check for it all.
    Ensure(64 + SizeBound(c.offsets.size()) + SizeBound(c.sizes.size()));
    char* p = p_;
    uint32_t memo = next_memo_;
    p = GetAt(p, g_chunk_md_);
    p[0] = ')';
    p[1] = static_cast<char>(0x81);  // NEWOBJ
    p = PutAt(p + 2, memo++);
    *p++ = '}';
    p = PutAt(p, memo++);
    *p++ = '(';
    p = GetAt(p, k_offsets_);
    p = GetAt(p, g_size_);
    p = SizeBodyAt(p, c.offsets, &memo);
    p = GetAt(p, k_sizes_);
    p = GetAt(p, g_size_);
    p = SizeBodyAt(p, c.sizes, &memo);
    p[0] = 'u';  // SETITEMS
    p[1] = 'b';  // BUILD
    p_ = p + 2;
    next_memo_ = memo;
    return;
  }
  NewObject(&g_chunk_md_, kMetaModule, "ChunkStorageMetadata");
  EmptyDict();
  Put();
  Mark();
  Key(&k_offsets_, "offsets");
  Size(c.offsets);
  Key(&k_sizes_, "sizes");
  Size(c.sizes);
  SetItems();
  Build();
}

void Encoder::StorageRecord(uint32_t fqn_memo, const Shape* offsets, int64_t index,
                            const StorageInfo& s) {
  if (offsets != nullptr && s.transform_descriptors.empty() && g_index_ != kUnset &&
      g_size_ != kUnset && g_storage_info_ != kUnset && k_fqn_ != kUnset && k_index_ != kUnset &&
      k_offset_ != kUnset && k_relative_path_ != kUnset && k_length_ != kUnset) {
    const uint32_t path_memo = strings_.Find(s.relative_path);
    if (path_memo != kUnset) {
      // Everything it refers to is memoized: one bounds check for it all.
      Ensure(128 + SizeBound(offsets->size()));
      char* p = p_;
      uint32_t memo = next_memo_;
      // MetadataIndex(fqn=..., index=..., offset=torch.Size(...))
      p = GetAt(p, g_index_);
      p[0] = ')';
      p[1] = static_cast<char>(0x81);  // NEWOBJ
      p = PutAt(p + 2, memo++);
      *p++ = '}';
      p = PutAt(p, memo++);
      *p++ = '(';
      p = GetAt(p, k_fqn_);
      p = GetAt(p, fqn_memo);
      p = GetAt(p, k_index_);
      p = IntAt(p, index);
      p = GetAt(p, k_offset_);
      p = GetAt(p, g_size_);
      p = SizeBodyAt(p, *offsets, &memo);
      p[0] = 'u';  // SETITEMS
      p[1] = 'b';  // BUILD
      // _StorageInfo(relative_path=..., offset=..., length=...)
      p = GetAt(p + 2, g_storage_info_);
      p[0] = ')';
      p[1] = static_cast<char>(0x81);
      p = PutAt(p + 2, memo++);
      *p++ = '}';
      p = PutAt(p, memo++);
      *p++ = '(';
      p = GetAt(p, k_relative_path_);
      p = GetAt(p, path_memo);
      p = GetAt(p, k_offset_);
      p = UIntAt(p, s.offset);
      p = GetAt(p, k_length_);
      p = UIntAt(p, s.length);
      p[0] = 'u';
      p[1] = 'b';
      p_ = p + 2;
      next_memo_ = memo;
      return;
    }
  }
  MetadataIndexObject(fqn_memo, offsets, index);
  StorageInfoObject(s);
}

void Encoder::StorageInfoObject(const StorageInfo& s) {
  NewObject(&g_storage_info_, kFsModule, "_StorageInfo");
  EmptyDict();
  Put();
  Mark();
  Key(&k_relative_path_, "relative_path");
  Str(s.relative_path);
  Key(&k_offset_, "offset");
  UInt(s.offset);
  Key(&k_length_, "length");
  UInt(s.length);
  if (!s.transform_descriptors.empty()) {
    Key(&k_transforms_, "transform_descriptors");
    EmptyList();
    Put();
    Batched(s.transform_descriptors.size(), /*dict=*/false,
            [&](size_t k) { Str(s.transform_descriptors[k]); });
  }
  SetItems();
  Build();
}

void Encoder::MetadataIndexObject(uint32_t fqn_memo, const Shape* offsets, int64_t index) {
  NewObject(&g_index_, kMetaModule, "MetadataIndex");
  EmptyDict();
  Put();
  Mark();
  Key(&k_fqn_, "fqn");
  Get(fqn_memo);
  Key(&k_index_, "index");
  if (offsets != nullptr) {
    Int(index);
    Key(&k_offset_, "offset");
    Size(*offsets);
  } else {
    None();
  }
  SetItems();
  Build();
}

void Encoder::StorageMetaObject(const StorageMeta& sm) {
  NewObject(&g_storage_meta_, kMetaModule, "StorageMeta");
  EmptyDict();
  Put();
  Mark();
  Key(&k_checkpoint_id_, "checkpoint_id");
  OptStr(sm.checkpoint_id);
  Key(&k_save_id_, "save_id");
  OptStr(sm.save_id);
  Key(&k_load_id_, "load_id");
  OptStr(sm.load_id);
  Key(&k_modules_, "modules");
  EmptyList();
  Put();
  Batched(sm.modules.size(), /*dict=*/false, [&](size_t k) { Str(sm.modules[k]); });
  SetItems();
  Build();
}

std::string Encoder::Run(const Metadata& md, const std::string& hint) {
  std::fill(std::begin(g_dtype_), std::end(g_dtype_), kUnset);
  // Capacity for a generous estimate of the output (chunks dominate). Only
  // what is written is ever touched, so the estimate costs address space,
  // not memory.
  size_t estimate = 4096;
  for (const EntryMeta& e : md.entries) {
    estimate += 512 + 2 * e.fqn.size() + 32 * e.path.size();
    for (const ChunkMeta& c : e.chunks) estimate += 176 + 24 * (c.offsets.size() + c.sizes.size());
  }
  out_.reserve(estimate);
  p_ = end_ = out_.data();
  Ensure(kMaxOp);
  *p_++ = static_cast<char>(0x80);  // PROTO 2
  *p_++ = 2;

  // Python memoizes each FQN string once: its later uses are GETs.
  std::vector<uint32_t> fqn_memo(md.entries.size());
  std::optional<StorageMeta> storage_meta = md.storage_meta;
  if (storage_meta && !storage_meta->checkpoint_id && !hint.empty()) {
    storage_meta->checkpoint_id = hint;
  } else if (!storage_meta && !hint.empty()) {
    storage_meta.emplace().checkpoint_id = hint;
  }

  NewObject(&g_metadata_, kMetaModule, "Metadata");
  EmptyDict();
  Put();
  Mark();

  Key(&k_state_dict_metadata_, "state_dict_metadata");
  EmptyDict();
  Put();
  Batched(md.entries.size(), /*dict=*/true, [&](size_t k) {
    const EntryMeta& e = md.entries[k];
    fqn_memo[k] = Str(e.fqn);
    if (!e.is_tensor()) {
      NewObject(&g_bytes_md_, kMetaModule, "BytesStorageMetadata");  // empty __dict__: no BUILD
      return;
    }
    NewObject(&g_tensor_md_, kMetaModule, "TensorStorageMetadata");
    EmptyDict();
    Put();
    Mark();
    Key(&k_properties_, "properties");
    Properties(e.properties);
    Key(&k_size_, "size");
    Size(e.size);
    Key(&k_chunks_, "chunks");
    EmptyList();
    Put();
    Batched(e.chunks.size(), /*dict=*/false, [&](size_t c) { ChunkObject(e.chunks[c]); });
    SetItems();
    Build();
  });

  Key(&k_planner_data_, "planner_data");
  std::vector<size_t> with_path;
  for (size_t k = 0; k < md.entries.size(); ++k) {
    if (!md.entries[k].path.empty()) with_path.push_back(k);
  }
  if (with_path.empty()) {
    None();
  } else {
    EmptyDict();
    Put();
    Batched(with_path.size(), /*dict=*/true, [&](size_t k) {
      const EntryMeta& e = md.entries[with_path[k]];
      Get(fqn_memo[with_path[k]]);
      if (e.path.size() > 3) Mark();
      for (const PathElement& p : e.path) {
        if (const auto* s = std::get_if<std::string>(&p)) {
          Str(*s);
        } else {
          Int(std::get<int64_t>(p));
        }
      }
      Tuple(e.path.size());
      Put();
    });
  }

  Key(&k_storage_data_, "storage_data");
  EmptyDict();
  Put();
  // Records in entry order, chunks in order, batched across entries.
  size_t records = 0;
  for (const EntryMeta& e : md.entries) records += e.is_tensor() ? e.chunks.size() : 1;
  size_t entry = 0, chunk = 0;
  Batched(records, /*dict=*/true, [&](size_t) {
    while (md.entries[entry].is_tensor() && chunk == md.entries[entry].chunks.size()) {
      ++entry;
      chunk = 0;
    }
    const EntryMeta& e = md.entries[entry];
    if (!e.is_tensor()) {
      StorageRecord(fqn_memo[entry], nullptr, 0, e.storage);
      ++entry;
      return;
    }
    const ChunkMeta& c = e.chunks[chunk];
    StorageRecord(fqn_memo[entry], &c.offsets, static_cast<int64_t>(chunk), c.storage);
    ++chunk;
  });

  Key(&k_storage_meta_, "storage_meta");
  if (storage_meta) {
    StorageMetaObject(*storage_meta);
  } else {
    None();
  }

  Key(&k_version_, "version");
  OptStr(md.version);

  SetItems();
  Build();
  Op('.');  // STOP
  out_.resize(static_cast<size_t>(p_ - out_.data()));
  return std::move(out_);
}

}  // namespace

Result<Metadata> DecodeMetadata(std::span<const uint8_t> bytes) {
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

std::string EncodeMetadata(const Metadata& md, const std::string& checkpoint_id_hint) {
  return Encoder().Run(md, checkpoint_id_hint);
}

}  // namespace dcpp::format
