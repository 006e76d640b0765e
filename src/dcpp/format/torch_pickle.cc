#include "dcpp/format/torch_pickle.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <new>
#include <optional>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dcpp/base/utf8.h"
#include "dcpp/format/pickle.h"

namespace dcpp::format {
namespace {

namespace pk = pickle;

// CPython's pickler writes SETITEMS/APPENDS in batches of this many items.
constexpr size_t kPickleBatchSize = 1000;
// Deeper values are refused when writing and become Opaque when reading
// (Python's own recursion limit is around 1000 frames).
constexpr int kMaxDepth = 200;
// The newest archive format version torch's reader accepts
// (caffe2/serialize/versions.h: kMaxSupportedFileFormatVersion).
constexpr uint64_t kMaxArchiveVersion = 10;

constexpr std::string_view kHostByteOrder =
    std::endian::native == std::endian::little ? "little" : "big";

std::string Quote(std::string_view s) {
  std::string out = "'";
  for (char c : s.substr(0, 200)) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f || c == '\'' || c == '\\') {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  if (s.size() > 200) out += "...";
  return out + "'";
}

// ============================================================================
// Writing
// ============================================================================

// Emits Python objects as CPython's pickler (protocol 2) does inside
// torch.save, including its memo: every str, tuple (but the empty one), list,
// dict, global and reduce result gets a BINPUT; the second sighting of the
// same object is a BINGET. Python memoizes by identity; equal strings are
// shared here, which matches CPython for interned strings (identifiers,
// literals, one-character strings), the common case in state dicts.
class TorchPickler {
 public:
  struct Storage {
    std::string key;
    zip::Bytes bytes;  // data null for a placeholder (size still right)
    const Tensor* placeholder = nullptr;
  };

  // Lets tensors without data through as placeholders (EncodeObjectPickle).
  void AllowPlaceholders() { allow_placeholders_ = true; }

  Status Save(const Value& v, int depth) {
    if (depth > kMaxDepth && (v.kind() == Value::Kind::kList || v.kind() == Value::Kind::kTuple ||
                              v.kind() == Value::Kind::kDict)) {
      return InvalidArgumentError("value is nested deeper than " + std::to_string(kMaxDepth) +
                                  " levels");
    }
    switch (v.kind()) {
      case Value::Kind::kNone:
        w_.None();
        return Status::Ok();
      case Value::Kind::kBool:
        w_.Bool(v.as_bool());
        return Status::Ok();
      case Value::Kind::kInt:
        w_.Int(v.as_int());
        return Status::Ok();
      case Value::Kind::kFloat:
        w_.Float(v.as_float());
        return Status::Ok();
      case Value::Kind::kString:
        SaveString(v.as_string());
        return Status::Ok();
      case Value::Kind::kBytes:
        SaveBytes(v.as_string());
        return Status::Ok();
      case Value::Kind::kList:
        return SaveList(v.items(), depth);
      case Value::Kind::kTuple:
        return SaveTuple(v.items(), depth);
      case Value::Kind::kDict:
        return SaveDict(v.dict(), depth);
      case Value::Kind::kTensor:
        return SaveTensor(v.tensor());
      case Value::Kind::kOpaque:
        return InvalidArgumentError("an Opaque value (" + v.opaque().description +
                                    ") cannot be nested inside another value; an Opaque is "
                                    "written as its own blob");
      case Value::Kind::kSharded:
        return InvalidArgumentError(
            "a sharded tensor cannot be pickled as a plain value; DCP saves its shards as "
            "tensor items");
      case Value::Kind::kStateful:
        return InvalidArgumentError(
            "a Stateful object cannot be pickled; save its StateDict() instead");
    }
    return InternalError("unknown Value kind");
  }

  // The tensor program of torch's Tensor.__reduce_ex__; returns the memo
  // index of the tensor. REQUIRES: `view` is dense with non-negative dims.
  uint32_t SaveDenseTensor(const TensorView& view) {
    const DType dtype = view.dtype;
    const std::string_view legacy = LegacyStorageName(dtype);
    const bool v3 = legacy.empty();
    const uint64_t nbytes = view.nbytes();
    const std::string key = std::to_string(storages_.size());
    storages_.push_back(
        {key, zip::Bytes(static_cast<const uint8_t*>(view.data), static_cast<size_t>(nbytes))});

    w_.Global("torch._utils", v3 ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    w_.Mark();
    // The persistent id: ('storage', storage class, key, location, numel).
    w_.Mark();
    SaveString("storage");
    if (v3) {
      w_.Global("torch.storage", "UntypedStorage");
    } else {
      w_.Global("torch", legacy);
    }
    SaveString(key);
    SaveString("cpu");
    // Legacy typed storages count elements; UntypedStorage counts bytes.
    w_.UInt(v3 ? nbytes : static_cast<uint64_t>(view.numel()));
    w_.Tuple(5);
    w_.Memoize();
    w_.BinPersId();
    w_.Int(0);  // storage_offset
    SaveIntTuple(view.shape);
    SaveIntTuple(view.strides);
    w_.Bool(false);  // requires_grad
    // backward_hooks: a fresh OrderedDict().
    w_.Global("collections", "OrderedDict");
    w_.EmptyTuple();
    w_.Reduce();
    w_.Memoize();
    if (v3) w_.Global("torch", TorchName(dtype));
    w_.Tuple(v3 ? 7 : 6);
    w_.Memoize();
    w_.Reduce();
    return w_.Memoize();
  }

  std::string Finish() { return w_.Finish(); }
  const std::vector<Storage>& storages() const { return storages_; }

 private:
  void SaveString(std::string_view s) {
    auto it = string_memo_.find(std::string(s));
    if (it != string_memo_.end()) {
      w_.Get(it->second);
      return;
    }
    w_.String(s);
    string_memo_.emplace(std::string(s), w_.Memoize());
  }

  // Python 3 bytes in protocol 2: _codecs.encode(<bytes as latin-1 text>,
  // 'latin1'). CPython writes b'' as __builtin__.bytes(), which
  // torch.load(weights_only=True) refuses, so b'' takes the _codecs form too.
  void SaveBytes(std::string_view bytes) {
    std::string text;
    text.reserve(bytes.size());
    for (char c : bytes) AppendUtf8(static_cast<unsigned char>(c), &text);
    w_.Global("_codecs", "encode");
    if (bytes.size() <= 1) {
      SaveString(text);  // CPython shares '' and one-character strings
    } else {
      w_.String(text);  // str(b, 'latin1') is a fresh object
      w_.Memoize();
    }
    SaveString("latin1");
    w_.Tuple(2);
    w_.Memoize();
    w_.Reduce();
    w_.Memoize();
  }

  void SaveIntTuple(const Shape& dims) {
    if (dims.empty()) {
      w_.EmptyTuple();
      return;
    }
    if (dims.size() > 3) w_.Mark();
    for (int64_t d : dims) w_.Int(d);
    w_.Tuple(dims.size());
    w_.Memoize();
  }

  Status SaveTuple(const std::vector<Value>& items, int depth) {
    if (items.empty()) {
      w_.EmptyTuple();  // the empty tuple is a singleton, never memoized
      return Status::Ok();
    }
    if (items.size() > 3) w_.Mark();
    for (const Value& item : items) DCPP_RETURN_IF_ERROR(Save(item, depth + 1));
    w_.Tuple(items.size());
    w_.Memoize();
    return Status::Ok();
  }

  Status SaveList(const std::vector<Value>& items, int depth) {
    w_.EmptyList();
    w_.Memoize();
    // As CPython's C pickler: a single item is APPEND; otherwise every batch,
    // even a last batch of one, is MARK ... APPENDS.
    if (items.size() == 1) {
      DCPP_RETURN_IF_ERROR(Save(items[0], depth + 1));
      w_.Append();
      return Status::Ok();
    }
    for (size_t begin = 0; begin < items.size(); begin += kPickleBatchSize) {
      const size_t end = std::min(items.size(), begin + kPickleBatchSize);
      w_.Mark();
      for (size_t i = begin; i < end; ++i) DCPP_RETURN_IF_ERROR(Save(items[i], depth + 1));
      w_.Appends();
    }
    return Status::Ok();
  }

  Status SaveDict(const Dict& dict, int depth) {
    w_.EmptyDict();
    w_.Memoize();
    const auto& keys = dict.keys();
    const auto& values = dict.values();
    // Same batching as lists: SETITEM for one item, else MARK ... SETITEMS.
    const bool single = keys.size() == 1;
    for (size_t begin = 0; begin < keys.size(); begin += kPickleBatchSize) {
      const size_t end = std::min(keys.size(), begin + kPickleBatchSize);
      if (!single) w_.Mark();
      for (size_t i = begin; i < end; ++i) {
        DCPP_RETURN_IF_ERROR(CheckHashable(keys[i], 0));
        DCPP_RETURN_IF_ERROR(Save(keys[i], depth + 1));
        DCPP_RETURN_IF_ERROR(Save(values[i], depth + 1));
      }
      if (single) {
        w_.SetItem();
      } else {
        w_.SetItems();
      }
    }
    return Status::Ok();
  }

  // Python dict keys must be hashable: no lists or dicts, also inside tuples.
  static Status CheckHashable(const Value& key, int depth) {
    switch (key.kind()) {
      case Value::Kind::kList:
      case Value::Kind::kDict:
        return InvalidArgumentError("a " + std::string(Value::KindName(key.kind())) +
                                    " cannot be a dict key (Python requires hashable keys)");
      case Value::Kind::kTuple:
        if (depth > kMaxDepth) return Status::Ok();  // Save reports the depth
        for (const Value& item : key.items()) DCPP_RETURN_IF_ERROR(CheckHashable(item, depth + 1));
        return Status::Ok();
      default:
        return Status::Ok();
    }
  }

  Status SaveTensor(const Tensor& tensor) {
    const TensorView& view = tensor.view();
    if (view.strides.size() != view.shape.size()) {
      return InvalidArgumentError("tensor has " + std::to_string(view.strides.size()) +
                                  " strides for shape " + ShapeToString(view.shape));
    }
    for (size_t d = 0; d < view.shape.size(); ++d) {
      if (view.shape[d] < 0 || view.strides[d] < 0) {
        return InvalidArgumentError("tensor has a negative size or stride: shape " +
                                    ShapeToString(view.shape) + ", strides " +
                                    ShapeToString(view.strides));
      }
    }
    if (view.data == nullptr && view.numel() != 0) {
      if (!allow_placeholders_)
        return InvalidArgumentError("tensor of shape " + ShapeToString(view.shape) +
                                    " has no data");
      SaveDenseTensor(MakeView(nullptr, view.dtype, view.shape));
      storages_.back().placeholder = &tensor;
      return Status::Ok();
    }
    // One tensor object reached twice is pickled once, as Python does.
    TensorKey key{view.data, view.dtype, view.shape, view.strides};
    if (view.data != nullptr) {
      auto it = tensor_memo_.find(key);
      if (it != tensor_memo_.end()) {
        w_.Get(it->second);
        return Status::Ok();
      }
    }
    uint32_t memo;
    if (view.is_dense()) {
      memo = SaveDenseTensor(view);
    } else {
      // torch.save would store the whole underlying storage; dcpp does not
      // know its extent, so it stores the elements contiguously instead.
      DCPP_ASSIGN_OR_RETURN(Tensor copy, tensor.Clone());
      memo = SaveDenseTensor(copy.view());
      keep_alive_.push_back(std::move(copy));
    }
    if (view.data != nullptr) tensor_memo_.emplace(std::move(key), memo);
    return Status::Ok();
  }

  struct TensorKey {
    const void* data;
    DType dtype;
    Shape shape;
    Shape strides;
    bool operator<(const TensorKey& o) const {
      return std::tie(data, dtype, shape, strides) < std::tie(o.data, o.dtype, o.shape, o.strides);
    }
  };

  pk::Writer w_;
  std::unordered_map<std::string, uint32_t> string_memo_;
  std::map<TensorKey, uint32_t> tensor_memo_;
  std::vector<Storage> storages_;
  std::vector<Tensor> keep_alive_;  // contiguous copies of non-dense tensors
  bool allow_placeholders_ = false;

 public:
  std::vector<Tensor> TakeKeepAlive() { return std::move(keep_alive_); }
};

std::vector<zip::RecordSpec> ArchiveRecords(std::string_view data_pkl,
                                            const std::vector<TorchPickler::Storage>& storages,
                                            const std::string& alignment_text) {
  std::vector<zip::RecordSpec> records;
  records.push_back({"data.pkl", zip::AsBytes(data_pkl)});
  records.push_back({".format_version", zip::AsBytes("1")});
  records.push_back({".storage_alignment", zip::AsBytes(alignment_text)});
  records.push_back({"byteorder", zip::AsBytes(kHostByteOrder)});
  for (const auto& s : storages) records.push_back({"data/" + s.key, s.bytes});
  records.push_back({"version", zip::AsBytes("3\n")});
  return records;
}

// ============================================================================
// Reading
// ============================================================================

// Status codes used while interpreting a pickle graph: DataLoss for input
// that torch.load itself would reject, Unimplemented for a valid object dcpp
// has no Value for (the value decoder turns that into an Opaque).
Status Unrepresentable(std::string what) { return UnimplementedError(std::move(what)); }

bool CheckedMul(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}
bool CheckedAdd(uint64_t a, uint64_t b, uint64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

// Where a storage lives and how big torch says it is (the persistent id).
struct StorageRef {
  std::string key;              // record "data/<key>"
  DType dtype = DType::kUInt8;  // of the storage; uint8 for UntypedStorage
  uint64_t nbytes = 0;          // numel * ElementSize(dtype), checked
};

struct TensorSpec {
  bool requires_grad = false;
  DType dtype = DType::kFloat32;
  Shape shape;
  Shape strides;
  int64_t storage_offset = 0;
  StorageRef storage;
};

class GraphReader {
 public:
  explicit GraphReader(const pk::Graph& g) : g_(g) {}

  Result<const pk::Node*> Get(pk::NodeId id) const {
    if (id >= g_.nodes.size()) return DataLossError("pickle graph refers to a missing object");
    return &g_.nodes[id];
  }

  bool IsGlobal(pk::NodeId id, std::string_view module, std::string_view name) const {
    if (id >= g_.nodes.size()) return false;
    const pk::Node& n = g_.nodes[id];
    return n.kind == pk::Kind::kGlobal && n.s == module && n.s2 == name;
  }

  std::string GlobalName(pk::NodeId id) const {
    if (id >= g_.nodes.size() || g_.nodes[id].kind != pk::Kind::kGlobal) return "a computed class";
    return g_.nodes[id].s + "." + g_.nodes[id].s2;
  }

  // A tuple (or list) of ints, or torch.Size(tuple of ints).
  Result<Shape> IntTuple(pk::NodeId id, std::string_view what) const {
    DCPP_ASSIGN_OR_RETURN(const pk::Node* n, Get(id));
    if (n->kind == pk::Kind::kReduce && n->items.size() >= 2 &&
        IsGlobal(n->items[0], "torch", "Size")) {
      DCPP_ASSIGN_OR_RETURN(const pk::Node* args, Get(n->items[1]));
      if (args->kind != pk::Kind::kTuple || args->items.size() != 1) {
        return DataLossError(std::string(what) + " is a torch.Size with malformed arguments");
      }
      DCPP_ASSIGN_OR_RETURN(n, Get(args->items[0]));
    }
    if (n->kind != pk::Kind::kTuple && n->kind != pk::Kind::kList) {
      return DataLossError(std::string(what) + " is a " + std::string(pk::KindName(n->kind)) +
                           ", expected a tuple of ints");
    }
    Shape out;
    out.reserve(n->items.size());
    for (pk::NodeId item : n->items) {
      DCPP_ASSIGN_OR_RETURN(const pk::Node* v, Get(item));
      if (v->kind != pk::Kind::kInt) {
        return DataLossError(std::string(what) + " holds a " + std::string(pk::KindName(v->kind)) +
                             ", expected an int");
      }
      out.push_back(v->i);
    }
    return out;
  }

  // The persistent id torch.save writes for a storage:
  // ('storage', storage class, key, location, numel).
  Result<StorageRef> Storage(pk::NodeId id) const {
    DCPP_ASSIGN_OR_RETURN(const pk::Node* n, Get(id));
    if (n->kind != pk::Kind::kPersistentId || n->items.size() != 1) {
      return DataLossError("tensor storage is a " + std::string(pk::KindName(n->kind)) +
                           ", expected a persistent id");
    }
    DCPP_ASSIGN_OR_RETURN(const pk::Node* pid, Get(n->items[0]));
    if (pid->kind != pk::Kind::kTuple || pid->items.empty()) {
      return DataLossError("persistent id is not a tuple");
    }
    DCPP_ASSIGN_OR_RETURN(const pk::Node* tag, Get(pid->items[0]));
    if ((tag->kind != pk::Kind::kString && tag->kind != pk::Kind::kBytes) || tag->s != "storage") {
      return DataLossError("persistent id does not start with 'storage'");
    }
    if (pid->items.size() != 5) {
      return DataLossError("storage persistent id has " + std::to_string(pid->items.size()) +
                           " fields, expected 5");
    }
    StorageRef ref;
    const pk::NodeId cls = pid->items[1];
    if (IsGlobal(cls, "torch.storage", "UntypedStorage") ||
        IsGlobal(cls, "torch", "UntypedStorage")) {
      ref.dtype = DType::kUInt8;
    } else {
      DCPP_ASSIGN_OR_RETURN(const pk::Node* c, Get(cls));
      std::optional<DType> dtype;
      if (c->kind == pk::Kind::kGlobal && c->s == "torch")
        dtype = DTypeFromLegacyStorageName(c->s2);
      if (!dtype) return Unrepresentable("a tensor on storage type " + GlobalName(cls));
      ref.dtype = *dtype;
    }
    DCPP_ASSIGN_OR_RETURN(const pk::Node* key, Get(pid->items[2]));
    if (key->kind != pk::Kind::kString && key->kind != pk::Kind::kBytes) {
      return DataLossError("storage key is a " + std::string(pk::KindName(key->kind)));
    }
    if (key->s.empty()) return DataLossError("storage key is empty");
    ref.key = key->s;
    DCPP_ASSIGN_OR_RETURN(const pk::Node* numel, Get(pid->items[4]));
    if (numel->kind != pk::Kind::kInt || numel->i < 0) {
      return DataLossError("storage " + Quote(ref.key) + " has an invalid size");
    }
    if (!CheckedMul(static_cast<uint64_t>(numel->i), ElementSize(ref.dtype), &ref.nbytes)) {
      return DataLossError("storage " + Quote(ref.key) + " size overflows");
    }
    return ref;
  }

  // Interprets `id` as the result of torch._utils._rebuild_tensor_v2/_v3
  // (possibly wrapped in _rebuild_parameter). Unimplemented for other tensor
  // kinds torch can pickle; DataLoss for malformed arguments.
  Result<TensorSpec> Tensor(pk::NodeId id) const {
    std::optional<bool> parameter_requires_grad;
    for (int unwrap = 0;; ++unwrap) {
      DCPP_ASSIGN_OR_RETURN(const pk::Node* n, Get(id));
      if (n->kind != pk::Kind::kReduce || n->items.size() < 2) {
        return DataLossError("expected a tensor, found a " + std::string(pk::KindName(n->kind)));
      }
      if (IsGlobal(n->items[0], "torch._utils", "_rebuild_parameter") && unwrap == 0) {
        DCPP_ASSIGN_OR_RETURN(const pk::Node* args, Get(n->items[1]));
        if (args->kind != pk::Kind::kTuple || args->items.size() != 3) {
          return DataLossError("_rebuild_parameter has malformed arguments");
        }
        if (n->state != pk::kNoNode || !n->dict_items.empty() || !n->list_items.empty()) {
          return Unrepresentable("a parameter with Python attributes");
        }
        DCPP_ASSIGN_OR_RETURN(const pk::Node* rg, Get(args->items[1]));
        parameter_requires_grad = rg->kind == pk::Kind::kBool && rg->b;
        id = args->items[0];
        continue;
      }
      DCPP_ASSIGN_OR_RETURN(TensorSpec spec, RebuildTensor(*n));
      if (parameter_requires_grad) spec.requires_grad = *parameter_requires_grad;
      return spec;
    }
  }

 private:
  Result<TensorSpec> RebuildTensor(const pk::Node& n) const {
    const bool v2 = IsGlobal(n.items[0], "torch._utils", "_rebuild_tensor_v2");
    const bool v3 = IsGlobal(n.items[0], "torch._utils", "_rebuild_tensor_v3");
    if (!v2 && !v3) {
      return Unrepresentable("an object built by " + GlobalName(n.items[0]));
    }
    if (n.state != pk::kNoNode || !n.dict_items.empty() || !n.list_items.empty()) {
      return Unrepresentable("a tensor with Python attributes");
    }
    DCPP_ASSIGN_OR_RETURN(const pk::Node* args, Get(n.items[1]));
    const size_t fixed = v2 ? 6 : 7;
    if (args->kind != pk::Kind::kTuple ||
        (args->items.size() != fixed && args->items.size() != fixed + 1)) {
      return DataLossError(std::string(v2 ? "_rebuild_tensor_v2" : "_rebuild_tensor_v3") +
                           " has malformed arguments");
    }
    const auto& a = args->items;
    TensorSpec spec;
    DCPP_ASSIGN_OR_RETURN(spec.storage, Storage(a[0]));
    DCPP_ASSIGN_OR_RETURN(const pk::Node* offset, Get(a[1]));
    if (offset->kind != pk::Kind::kInt || offset->i < 0) {
      return DataLossError("tensor storage offset is not a non-negative int");
    }
    spec.storage_offset = offset->i;
    DCPP_ASSIGN_OR_RETURN(const pk::Node* rg, Get(a[4]));
    spec.requires_grad = rg->kind == pk::Kind::kBool && rg->b;
    DCPP_ASSIGN_OR_RETURN(spec.shape, IntTuple(a[2], "tensor size"));
    DCPP_ASSIGN_OR_RETURN(spec.strides, IntTuple(a[3], "tensor stride"));
    if (v3) {
      DCPP_ASSIGN_OR_RETURN(const pk::Node* d, Get(a[6]));
      if (d->kind != pk::Kind::kGlobal || d->s != "torch") {
        return DataLossError("_rebuild_tensor_v3 dtype is not a torch dtype");
      }
      std::optional<DType> dtype = DTypeFromTorchName(d->s2);
      if (!dtype) return Unrepresentable("a tensor of dtype torch." + d->s2);
      spec.dtype = *dtype;
    } else {
      spec.dtype = spec.storage.dtype;
    }
    if (a.size() == fixed + 1) {
      // Tensor flags (conj/neg bits): an empty dict means none.
      DCPP_ASSIGN_OR_RETURN(const pk::Node* meta, Get(a[fixed]));
      if (!(meta->kind == pk::Kind::kNone ||
            (meta->kind == pk::Kind::kDict && meta->items.empty()))) {
        return Unrepresentable("a tensor with conj/neg flags");
      }
    }
    if (spec.shape.size() != spec.strides.size()) {
      return DataLossError("tensor size " + ShapeToString(spec.shape) + " and stride " +
                           ShapeToString(spec.strides) + " differ in length");
    }
    return spec;
  }

  const pk::Graph& g_;
};

// Checks that every element `spec` addresses lies in `record_size` bytes and
// that the record is exactly as large as the persistent id says.
Status CheckExtent(const TensorSpec& spec, uint64_t record_size) {
  const std::string name = "storage record data/" + spec.storage.key;
  if (record_size != spec.storage.nbytes) {
    return DataLossError(name + " holds " + std::to_string(record_size) +
                         " bytes but the pickle says " + std::to_string(spec.storage.nbytes));
  }
  bool empty = false;
  uint64_t numel = 1;  // of the non-zero dims, so NumElements never overflows
  for (size_t d = 0; d < spec.shape.size(); ++d) {
    if (spec.shape[d] < 0 || spec.strides[d] < 0) {
      return DataLossError("tensor has a negative size or stride: size " +
                           ShapeToString(spec.shape) + ", stride " + ShapeToString(spec.strides));
    }
    if (spec.shape[d] == 0) {
      empty = true;
    } else if (!CheckedMul(numel, static_cast<uint64_t>(spec.shape[d]), &numel) ||
               numel > static_cast<uint64_t>(INT64_MAX)) {
      // Possible with zero strides (an expanded tensor), which address few bytes.
      return DataLossError("tensor size " + ShapeToString(spec.shape) +
                           " has more than 2^63 elements");
    }
  }
  // Like torch, an empty tensor may sit anywhere on its storage.
  if (empty) return Status::Ok();
  uint64_t last = static_cast<uint64_t>(spec.storage_offset);
  bool ok = true;
  for (size_t d = 0; d < spec.shape.size() && ok; ++d) {
    uint64_t step;
    ok = CheckedMul(static_cast<uint64_t>(spec.shape[d] - 1),
                    static_cast<uint64_t>(spec.strides[d]), &step) &&
         CheckedAdd(last, step, &last);
  }
  uint64_t end = 0;
  ok = ok && CheckedAdd(last, 1, &end) && CheckedMul(end, ElementSize(spec.dtype), &end);
  if (!ok || end > record_size) {
    return DataLossError("tensor of size " + ShapeToString(spec.shape) + ", stride " +
                         ShapeToString(spec.strides) + " at storage offset " +
                         std::to_string(spec.storage_offset) + " reaches past the " +
                         std::to_string(record_size) + " bytes of " + name);
  }
  return Status::Ok();
}

Result<uint64_t> ParseVersion(zip::Bytes text) {
  std::string_view s(reinterpret_cast<const char*>(text.data()), text.size());
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' '))
    s.remove_suffix(1);
  uint64_t v = 0;
  if (s.empty() || s.size() > 19)
    return DataLossError("version record " + Quote(s) + " is invalid");
  for (char c : s) {
    if (c < '0' || c > '9') return DataLossError("version record " + Quote(s) + " is not a number");
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v == 0) return DataLossError("version record is 0");
  if (v > kMaxArchiveVersion) {
    return UnimplementedError("archive format version " + std::to_string(v) +
                              " is newer than the supported " + std::to_string(kMaxArchiveVersion));
  }
  return v;
}

// Reads a record that must exist; a missing one is DataLoss.
Result<zip::Bytes> ReadRequired(const zip::Reader& reader, std::string_view name) {
  Result<zip::Bytes> r = reader.Read(name);
  if (!r.ok() && r.status().code() == StatusCode::kNotFound) {
    return DataLossError("archive has no " + std::string(name) + " record");
  }
  return r;
}

struct ArchiveInfo {
  bool swap = false;  // storages are in the other byte order
  zip::Bytes data_pkl;
};

Result<ArchiveInfo> CheckArchive(const zip::Reader& reader) {
  ArchiveInfo info;
  Result<zip::Bytes> version = reader.Read("version");
  if (!version.ok() && version.status().code() == StatusCode::kNotFound) {
    version = reader.Read(".data/version");
  }
  if (!version.ok()) {
    if (version.status().code() == StatusCode::kNotFound) {
      return DataLossError("archive has no version record");
    }
    return version.status();
  }
  DCPP_RETURN_IF_ERROR(ParseVersion(*version).status());
  Result<zip::Bytes> order = reader.Read("byteorder");
  if (order.ok()) {
    std::string_view s(reinterpret_cast<const char*>(order->data()), order->size());
    if (s != "little" && s != "big") return DataLossError("unknown byte order " + Quote(s));
    info.swap = s != kHostByteOrder;
  } else if (order.status().code() != StatusCode::kNotFound) {
    return order.status();
  }
  // Without a byteorder record torch reads little-endian.
  if (!order.ok()) info.swap = kHostByteOrder != "little";
  DCPP_ASSIGN_OR_RETURN(info.data_pkl, ReadRequired(reader, "data.pkl"));
  return info;
}

bool TensorArchiveGlobal(std::string_view module, std::string_view name) {
  if (module == "torch._utils") {
    return name == "_rebuild_tensor_v2" || name == "_rebuild_tensor_v3" ||
           name == "_rebuild_parameter";
  }
  if (module == "torch.storage") return name == "UntypedStorage";
  if (module == "collections") return name == "OrderedDict";
  if (module == "torch") {
    // Torch's storage classes and dtypes that dcpp has no DType for are let
    // through so they are reported as Unimplemented, naming them, rather than
    // as disallowed globals.
    static constexpr std::string_view kOtherDTypes[] = {"complex32", "chalf",    "float4_e2m1fn_x2",
                                                        "bits1x8",   "bits2x4",  "bits4x2",
                                                        "bits8",     "bits16",   "uint1",
                                                        "uint2",     "uint3",    "uint4",
                                                        "uint5",     "uint6",    "uint7",
                                                        "int1",      "int2",     "int3",
                                                        "int4",      "int5",     "int6",
                                                        "int7",      "qint8",    "quint8",
                                                        "qint32",    "quint4x2", "quint2x4"};
    if (name == "Size" || name == "device" || name == "UntypedStorage") return true;
    if (name.size() > 7 && name.ends_with("Storage")) return true;
    if (DTypeFromTorchName(name).has_value()) return true;
    return std::find(std::begin(kOtherDTypes), std::end(kOtherDTypes), name) !=
           std::end(kOtherDTypes);
  }
  return false;
}

// Builds Values from the pickle graph of a BYTE_IO item.
class ValueBuilder {
 public:
  // With `refs`, tensors are not read: each becomes a stand-in whose data
  // points at the StoredTensorRef appended to `refs` (DescribeObjectArchive).
  ValueBuilder(const pk::Graph& g, const zip::Reader& reader, bool swap,
               std::deque<StoredTensorRef>* refs = nullptr)
      : graph_(g),
        reader_(reader),
        swap_(swap),
        budget_(std::min<size_t>(g.nodes.size() * 16 + 65536, size_t{1} << 24)),
        refs_(refs) {}

  Result<Value> Build(pk::NodeId id, int depth) {
    if (++expanded_ > budget_) {
      return Unrepresentable("an object with too many shared references to expand");
    }
    DCPP_ASSIGN_OR_RETURN(const pk::Node* n, graph_.Get(id));
    // Only containers (and calls, which may build them) count against the
    // depth, as in the encoder, so whatever decodes also encodes.
    switch (n->kind) {
      case pk::Kind::kTuple:
      case pk::Kind::kList:
      case pk::Kind::kDict:
      case pk::Kind::kReduce:
        if (depth > kMaxDepth) {
          return Unrepresentable("an object nested deeper than " + std::to_string(kMaxDepth) +
                                 " levels (or containing itself)");
        }
        break;
      default:
        break;
    }
    switch (n->kind) {
      case pk::Kind::kNone:
        return Value();
      case pk::Kind::kBool:
        return Value(n->b);
      case pk::Kind::kInt:
        return Value(n->i);
      case pk::Kind::kBigInt:
        return Unrepresentable("an integer outside the int64 range");
      case pk::Kind::kFloat:
        return Value(n->f);
      case pk::Kind::kString:
        return Value(n->s);
      case pk::Kind::kBytes:
        return Value::Bytes(n->s);
      case pk::Kind::kTuple:
      case pk::Kind::kList: {
        std::vector<Value> items;
        items.reserve(n->items.size());
        for (pk::NodeId item : n->items) {
          DCPP_ASSIGN_OR_RETURN(Value v, Build(item, depth + 1));
          items.push_back(std::move(v));
        }
        return n->kind == pk::Kind::kTuple ? Value::Tuple(std::move(items))
                                           : Value::List(std::move(items));
      }
      case pk::Kind::kDict: {
        Dict dict;
        DCPP_RETURN_IF_ERROR(AddItems(n->items, depth, &dict));
        return Value(std::move(dict));
      }
      case pk::Kind::kSet:
        return Unrepresentable("a set");
      case pk::Kind::kFrozenSet:
        return Unrepresentable("a frozenset");
      case pk::Kind::kGlobal:
        return Unrepresentable("a reference to " + n->s + "." + n->s2);
      case pk::Kind::kPersistentId:
        return Unrepresentable("a bare torch storage");
      case pk::Kind::kNewObj:
        return Unrepresentable("an instance of " +
                               graph_.GlobalName(n->items.empty() ? pk::kNoNode : n->items[0]));
      case pk::Kind::kReduce:
        return BuildReduce(id, *n, depth);
    }
    return DataLossError("pickle graph holds an unknown object kind");
  }

 private:
  struct StorageCopy {
    std::shared_ptr<void> data;
    uint64_t nbytes = 0;
    size_t swap_unit = 0;  // element size it was byte-swapped with (0: not yet)
  };

  Status AddItems(const std::vector<pk::NodeId>& kv, int depth, Dict* dict) {
    if (kv.size() % 2 != 0) return DataLossError("dict items are not key/value pairs");
    for (size_t i = 0; i < kv.size(); i += 2) {
      DCPP_ASSIGN_OR_RETURN(Value key, Build(kv[i], depth + 1));
      if (!Hashable(key, 0)) return Unrepresentable("a dict with an unhashable key");
      DCPP_ASSIGN_OR_RETURN(Value value, Build(kv[i + 1], depth + 1));
      dict->Set(std::move(key), std::move(value));  // a repeated key keeps its first position
    }
    return Status::Ok();
  }

  static bool Hashable(const Value& v, int depth) {
    if (v.kind() == Value::Kind::kList || v.kind() == Value::Kind::kDict) return false;
    if (v.kind() == Value::Kind::kTuple) {
      if (depth > kMaxDepth) return false;
      for (const Value& item : v.items())
        if (!Hashable(item, depth + 1)) return false;
    }
    return true;
  }

  Result<Value> BuildReduce(pk::NodeId id, const pk::Node& n, int depth) {
    if (n.items.size() < 2) return DataLossError("malformed REDUCE in pickle graph");
    const pk::NodeId callable = n.items[0];
    DCPP_ASSIGN_OR_RETURN(const pk::Node* fn, graph_.Get(callable));
    if (fn->kind != pk::Kind::kGlobal)
      return Unrepresentable("an object built by a computed callable");
    const std::string& module = fn->s;
    const std::string& name = fn->s2;
    DCPP_ASSIGN_OR_RETURN(const pk::Node* args, graph_.Get(n.items[1]));
    const bool builtins = module == "builtins" || module == "__builtin__";

    if (module == "torch._utils" && (name == "_rebuild_tensor_v2" || name == "_rebuild_tensor_v3" ||
                                     name == "_rebuild_parameter")) {
      DCPP_ASSIGN_OR_RETURN(dcpp::Tensor t, BuildTensor(id));
      return Value(std::move(t));
    }
    const bool mutated = !n.dict_items.empty() || !n.list_items.empty();
    if (module == "collections" && name == "OrderedDict") {
      // A module's state_dict() carries a `_metadata` attribute (BUILD
      // state), which DCP drops too: describing a state dict ignores it; a
      // value keeps its bytes (Opaque) instead.
      if ((n.state != pk::kNoNode && !refs_) || !n.list_items.empty()) {
        return Unrepresentable("an OrderedDict with attributes");
      }
      if (args->kind != pk::Kind::kTuple || args->items.size() > 1) {
        return DataLossError("OrderedDict has malformed arguments");
      }
      Dict dict;
      if (args->items.size() == 1) {
        // OrderedDict([(k, v), ...])
        DCPP_ASSIGN_OR_RETURN(const pk::Node* pairs, graph_.Get(args->items[0]));
        if (pairs->kind != pk::Kind::kList && pairs->kind != pk::Kind::kTuple) {
          return Unrepresentable("an OrderedDict built from a " +
                                 std::string(pk::KindName(pairs->kind)));
        }
        for (pk::NodeId p : pairs->items) {
          DCPP_ASSIGN_OR_RETURN(const pk::Node* pair, graph_.Get(p));
          if ((pair->kind != pk::Kind::kList && pair->kind != pk::Kind::kTuple) ||
              pair->items.size() != 2) {
            return DataLossError("OrderedDict item is not a key/value pair");
          }
          DCPP_RETURN_IF_ERROR(AddItems(pair->items, depth, &dict));
        }
      }
      DCPP_RETURN_IF_ERROR(AddItems(n.dict_items, depth, &dict));
      return Value(std::move(dict));
    }
    if (module == "_codecs" && name == "encode" && !mutated) {
      return BuildEncode(*args, "_codecs.encode");
    }
    if (builtins && (name == "bytes" || name == "bytearray")) {
      if (n.state != pk::kNoNode || mutated) return Unrepresentable("a bytearray with attributes");
      if (args->kind != pk::Kind::kTuple) return DataLossError(name + " has malformed arguments");
      if (args->items.empty()) return Value::Bytes("");
      if (args->items.size() == 1) {
        DCPP_ASSIGN_OR_RETURN(Value inner, Build(args->items[0], depth + 1));
        if (inner.kind() == Value::Kind::kBytes) return inner;
        return Unrepresentable(name + " built from a " +
                               std::string(Value::KindName(inner.kind())));
      }
      return BuildEncode(*args, name);
    }
    if (module == "torch" && name == "Size" && !mutated) {
      DCPP_ASSIGN_OR_RETURN(Shape dims, graph_.IntTuple(id, "torch.Size"));
      std::vector<Value> items;
      for (int64_t d : dims) items.emplace_back(d);
      return Value::Tuple(std::move(items));
    }
    if (builtins && (name == "set" || name == "frozenset")) return Unrepresentable("a " + name);
    if (builtins && name == "complex") return Unrepresentable("a complex number");
    if (module == "torch" && name == "device") return Unrepresentable("a torch.device");
    if (module.starts_with("numpy")) {
      if (name == "scalar") return Unrepresentable("a numpy scalar (" + module + ".scalar)");
      if (name == "_reconstruct" || name == "_frombuffer") {
        return Unrepresentable("a numpy array (" + module + "." + name + ")");
      }
    }
    if (module == "copyreg" && name == "_reconstructor" && args->kind == pk::Kind::kTuple &&
        !args->items.empty()) {
      return Unrepresentable("an instance of " + graph_.GlobalName(args->items[0]));
    }
    if (module == "torch._utils" || module == "torch._tensor") {
      return Unrepresentable("a tensor rebuilt by " + module + "." + name +
                             " (sparse, quantized, subclass or other special tensor)");
    }
    return Unrepresentable("an object built by " + module + "." + name);
  }

  // _codecs.encode(text, encoding) / bytes(text, encoding): the bytes of a
  // protocol-2 pickle.
  Result<Value> BuildEncode(const pk::Node& args, std::string_view what) {
    if (args.kind != pk::Kind::kTuple || args.items.size() != 2) {
      return DataLossError(std::string(what) + " has malformed arguments");
    }
    DCPP_ASSIGN_OR_RETURN(const pk::Node* text, graph_.Get(args.items[0]));
    DCPP_ASSIGN_OR_RETURN(const pk::Node* enc, graph_.Get(args.items[1]));
    if (text->kind != pk::Kind::kString || enc->kind != pk::Kind::kString) {
      return Unrepresentable(std::string(what) + " of a non-string");
    }
    std::string e = enc->s;
    std::transform(e.begin(), e.end(), e.begin(), [](char c) {
      return c == '_' ? '-' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    });
    if (e == "utf-8" || e == "utf8") return Value::Bytes(text->s);
    if (e != "latin1" && e != "latin-1" && e != "iso-8859-1" && e != "iso8859-1" && e != "l1") {
      return Unrepresentable(std::string(what) + " with encoding " + Quote(enc->s));
    }
    // Each code point of the UTF-8 text is one byte (< 256).
    std::string out;
    out.reserve(text->s.size());
    const std::string& s = text->s;
    for (size_t i = 0; i < s.size();) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      if (c < 0x80) {
        out += static_cast<char>(c);
        i += 1;
      } else if ((c == 0xC2 || c == 0xC3) && i + 1 < s.size() &&
                 (static_cast<unsigned char>(s[i + 1]) & 0xC0) == 0x80) {
        out += static_cast<char>(((c & 0x1F) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3F));
        i += 2;
      } else {
        return DataLossError(std::string(what) +
                             ": text is not encodable as latin-1 (corrupt bytes object)");
      }
    }
    return Value::Bytes(std::move(out));
  }

  Result<dcpp::Tensor> BuildTensor(pk::NodeId id) {
    if (auto it = tensors_.find(id); it != tensors_.end()) return it->second;
    DCPP_ASSIGN_OR_RETURN(TensorSpec spec, graph_.Tensor(id));
    if (refs_) return StandIn(id, std::move(spec));
    DCPP_ASSIGN_OR_RETURN(StorageCopy * storage, LoadStorage(spec));
    DCPP_RETURN_IF_ERROR(CheckExtent(spec, storage->nbytes));
    TensorView view;
    view.dtype = spec.dtype;
    view.shape = spec.shape;
    view.strides = spec.strides;
    uint8_t* base = static_cast<uint8_t*>(storage->data.get());
    // Empty tensors may claim any offset; they address nothing.
    view.data = NumElements(spec.shape) == 0
                    ? base
                    : base + static_cast<size_t>(spec.storage_offset) * ElementSize(spec.dtype);
    dcpp::Tensor t = dcpp::Tensor::Adopt(std::move(view), storage->data);
    tensors_.emplace(id, t);
    return t;
  }

  // A tensor described, not read: its storage record's place and size are
  // checked against the tensor.
  Result<dcpp::Tensor> StandIn(pk::NodeId id, TensorSpec spec) {
    const std::string name = "data/" + spec.storage.key;
    Result<const zip::Entry*> record = reader_.Stat(name);
    if (!record.ok() && record.status().code() == StatusCode::kNotFound)
      return DataLossError("archive has no record " + name + " for a tensor storage");
    DCPP_RETURN_IF_ERROR(record.status());
    DCPP_RETURN_IF_ERROR(CheckExtent(spec, (*record)->compressed_size));
    if (swap_ && ElementSize(spec.dtype) > 1 && NumElements(spec.shape) != 0)
      return Unrepresentable("a tensor stored big-endian (it would need a byte-swapped copy)");
    DCPP_ASSIGN_OR_RETURN(uint64_t offset, reader_.Offset(name));
    StoredTensorRef& ref = refs_->emplace_back();
    ref.dtype = spec.dtype;
    ref.shape = spec.shape;
    ref.strides = spec.strides;
    ref.storage_offset = spec.storage_offset;
    ref.storage_key = spec.storage.key;
    ref.storage_record_offset = offset;
    ref.storage_nbytes = (*record)->compressed_size;
    ref.requires_grad = spec.requires_grad;
    TensorView view;
    view.data = &ref;
    view.dtype = spec.dtype;
    view.shape = std::move(spec.shape);
    view.strides = std::move(spec.strides);
    dcpp::Tensor t = dcpp::Tensor::Borrow(std::move(view));
    tensors_.emplace(id, t);
    return t;
  }

  Result<StorageCopy*> LoadStorage(const TensorSpec& spec) {
    auto it = storages_.find(spec.storage.key);
    if (it == storages_.end()) {
      Result<zip::Bytes> record = reader_.Read("data/" + spec.storage.key);
      if (!record.ok()) {
        if (record.status().code() == StatusCode::kNotFound) {
          return DataLossError("archive has no record data/" + spec.storage.key +
                               " for a tensor storage");
        }
        return record.status();
      }
      // Reports a record whose size differs from the persistent id's.
      DCPP_RETURN_IF_ERROR(CheckExtent(spec, record->size()));
      const size_t n = record->size();
      void* p = std::aligned_alloc(64, (std::max<size_t>(n, 1) + 63) / 64 * 64);
      if (p == nullptr) {
        return ResourceExhaustedError("cannot allocate " + std::to_string(n) +
                                      " bytes for storage data/" + spec.storage.key);
      }
      if (n) std::memcpy(p, record->data(), n);
      StorageCopy copy;
      copy.data = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
      copy.nbytes = n;
      it = storages_.emplace(spec.storage.key, std::move(copy)).first;
    } else if (it->second.nbytes != spec.storage.nbytes) {
      return DataLossError("storage data/" + spec.storage.key +
                           " is referenced with different sizes");
    }
    if (swap_) {
      size_t unit = ElementSize(spec.dtype);
      if (spec.dtype == DType::kComplex64 || spec.dtype == DType::kComplex128) unit /= 2;
      StorageCopy& s = it->second;
      if (s.swap_unit == 0) {
        uint8_t* b = static_cast<uint8_t*>(s.data.get());
        if (unit > 1) {
          for (uint64_t i = 0; i + unit <= s.nbytes; i += unit) std::reverse(b + i, b + i + unit);
        }
        s.swap_unit = unit;
      } else if (s.swap_unit != unit) {
        return Unrepresentable("a byte-swapped storage viewed with different element sizes");
      }
    }
    return &it->second;
  }

  GraphReader graph_;
  const zip::Reader& reader_;
  const bool swap_;
  const size_t budget_;
  size_t expanded_ = 0;
  std::deque<StoredTensorRef>* const refs_;
  std::unordered_map<pk::NodeId, dcpp::Tensor> tensors_;
  std::unordered_map<std::string, StorageCopy> storages_;
};

// What a torch.save of a plain state dict may name (see DescribeObjectArchive).
bool StateDictGlobal(std::string_view module, std::string_view name) {
  if (TensorArchiveGlobal(module, name)) return true;
  if (module == "_codecs") return name == "encode";
  if (module == "builtins" || module == "__builtin__")
    return name == "bytes" || name == "bytearray" || name == "set" || name == "frozenset" ||
           name == "complex";
  return false;
}

}  // namespace

zip::Layout EncodeTensorArchive(const TensorView& view, const zip::WriteOptions& options) {
  assert(view.is_dense() && "EncodeTensorArchive needs a dense view");
  TorchPickler pickler;
  pickler.SaveDenseTensor(view);
  const std::string data_pkl = pickler.Finish();
  const std::string alignment = std::to_string(options.alignment);
  // data.pkl and the alignment text are locals: make sure LayOut copies them
  // whatever copy_threshold the caller chose.
  zip::WriteOptions effective = options;
  effective.copy_threshold =
      std::max({options.copy_threshold, data_pkl.size() + 1, alignment.size() + 1});
  return zip::LayOut(ArchiveRecords(data_pkl, pickler.storages(), alignment), effective);
}

Result<std::string> EncodeValueArchive(const Value& value) {
  TorchPickler pickler;
  DCPP_RETURN_IF_ERROR(pickler.Save(value, 0));
  const std::string data_pkl = pickler.Finish();
  zip::WriteOptions options;
  const std::string alignment = std::to_string(options.alignment);
  const auto records = ArchiveRecords(data_pkl, pickler.storages(), alignment);
  DCPP_RETURN_IF_ERROR(zip::CheckLayOut(records, options));
  return zip::LayOut(records, options).Flatten();
}

Result<DecodedTensor> DescribeTensorArchive(const zip::Reader& reader) {
  auto run = [&]() -> Result<DecodedTensor> {
    DCPP_ASSIGN_OR_RETURN(ArchiveInfo info, CheckArchive(reader));
    pk::ParseOptions options;
    options.allow_global = TensorArchiveGlobal;
    options.allow_persistent_id = true;
    // A tensor's data.pkl is a few hundred bytes; cap what hostile input can
    // make the parser allocate.
    options.max_nodes = size_t{1} << 16;
    options.max_memo = size_t{1} << 16;
    Result<pk::Graph> parsed = pk::Parse(info.data_pkl, options);
    if (!parsed.ok()) return parsed.status().WithContext("data.pkl");
    const pk::Graph graph = std::move(parsed).value();
    GraphReader reader_graph(graph);
    DCPP_ASSIGN_OR_RETURN(TensorSpec spec, reader_graph.Tensor(graph.root));
    const std::string name = "data/" + spec.storage.key;
    Result<const zip::Entry*> record = reader.Stat(name);
    if (!record.ok() && record.status().code() == StatusCode::kNotFound) {
      return DataLossError("archive has no record " + name + " for the tensor's storage");
    }
    DCPP_RETURN_IF_ERROR(record.status());
    DCPP_RETURN_IF_ERROR(CheckExtent(spec, (*record)->compressed_size));
    if (info.swap && ElementSize(spec.dtype) > 1 && NumElements(spec.shape) != 0) {
      return UnimplementedError("tensor archive is stored big-endian; reading it needs a copy");
    }
    DCPP_ASSIGN_OR_RETURN(uint64_t offset, reader.Offset(name));
    DecodedTensor out;
    out.dtype = spec.dtype;
    out.shape = std::move(spec.shape);
    out.strides = std::move(spec.strides);
    out.storage_offset = spec.storage_offset;
    out.storage_record_offset = offset;
    out.storage_nbytes = (*record)->compressed_size;
    return out;
  };
  Result<DecodedTensor> r = run();
  if (!r.ok()) return r.status().WithContext("torch.save tensor archive");
  return r;
}

Result<DecodedTensor> DecodeTensorArchive(zip::Bytes archive) {
  Result<zip::Reader> reader = zip::Reader::Open(archive);
  if (!reader.ok()) return reader.status().WithContext("torch.save tensor archive");
  DCPP_ASSIGN_OR_RETURN(DecodedTensor out, DescribeTensorArchive(*reader));
  // Describe checked the record's range against the archive.
  out.storage = archive.subspan(static_cast<size_t>(out.storage_record_offset),
                                static_cast<size_t>(out.storage_nbytes));
  return out;
}

const StoredTensorRef* DescribedObject::Find(const Tensor& t) const {
  if (!tensors) return nullptr;
  for (const StoredTensorRef& ref : *tensors)
    if (t.data() == &ref) return &ref;
  return nullptr;
}

Result<DescribedObject> DescribeObjectArchive(const zip::Reader& reader) {
  auto run = [&]() -> Result<DescribedObject> {
    DCPP_ASSIGN_OR_RETURN(ArchiveInfo info, CheckArchive(reader));
    pk::ParseOptions options;
    options.allow_global = StateDictGlobal;
    options.allow_persistent_id = true;
    Result<pk::Graph> graph = pk::Parse(info.data_pkl, options);
    if (!graph.ok()) return graph.status().WithContext("data.pkl");
    auto refs = std::make_shared<std::deque<StoredTensorRef>>();
    ValueBuilder builder(*graph, reader, info.swap, refs.get());
    DescribedObject out;
    DCPP_ASSIGN_OR_RETURN(out.root, builder.Build(graph->root, 0));
    out.tensors = std::move(refs);
    return out;
  };
  Result<DescribedObject> r = run();
  if (!r.ok()) return r.status().WithContext("torch.save archive");
  return r;
}

Result<PickledObject> EncodeObjectPickle(const Value& value) {
  TorchPickler pickler;
  pickler.AllowPlaceholders();
  DCPP_RETURN_IF_ERROR(pickler.Save(value, 0));
  PickledObject out;
  out.data_pkl = pickler.Finish();
  for (const auto& st : pickler.storages())
    out.storages.push_back({st.key, st.bytes.size(), st.placeholder,
                            st.placeholder ? zip::Bytes() : st.bytes});
  out.keep_alive = pickler.TakeKeepAlive();
  return out;
}

std::vector<zip::RecordSpec> TorchSaveRecords(std::string_view data_pkl,
                                              std::vector<zip::RecordSpec> storages) {
  std::vector<zip::RecordSpec> records;
  records.reserve(storages.size() + 5);
  records.push_back({"data.pkl", zip::AsBytes(data_pkl)});
  records.push_back({".format_version", zip::AsBytes("1")});
  records.push_back({".storage_alignment", zip::AsBytes("64")});
  records.push_back({"byteorder", zip::AsBytes(kHostByteOrder)});
  for (auto& s : storages) records.push_back(std::move(s));
  records.push_back({"version", zip::AsBytes("3\n")});
  return records;
}

Result<Value> DecodeValueArchive(zip::Bytes archive, std::string_view fqn_for_errors) {
  auto run = [&]() -> Result<Value> {
    DCPP_ASSIGN_OR_RETURN(zip::Reader reader, zip::Reader::Open(archive));
    DCPP_ASSIGN_OR_RETURN(ArchiveInfo info, CheckArchive(reader));
    pk::ParseOptions options;
    options.allow_global = [](std::string_view, std::string_view) { return true; };
    options.allow_persistent_id = true;
    Result<pk::Graph> graph = pk::Parse(info.data_pkl, options);
    if (!graph.ok()) {
      if (graph.status().code() == StatusCode::kUnimplemented) {
        return UnimplementedError("a pickle dcpp cannot read (" + graph.status().message() + ")");
      }
      return graph.status().WithContext("data.pkl");
    }
    ValueBuilder builder(*graph, reader, info.swap);
    return builder.Build(graph->root, 0);
  };
  Result<Value> r = run();
  if (!r.ok() && r.status().code() == StatusCode::kUnimplemented) {
    // Valid input dcpp has no Value for (or a zip/pickle feature its readers
    // lack): keep the bytes so they can be written back unchanged.
    return Value(Opaque{std::string(reinterpret_cast<const char*>(archive.data()), archive.size()),
                        r.status().message()});
  }
  if (!r.ok()) {
    Status s = r.status();
    // Only genuinely broken input is an error; report it as data loss.
    if (s.code() != StatusCode::kResourceExhausted && s.code() != StatusCode::kDataLoss) {
      s = DataLossError(s.message());
    }
    return s.WithContext(std::string(fqn_for_errors) + ": torch.save archive");
  }
  return r;
}

}  // namespace dcpp::format
