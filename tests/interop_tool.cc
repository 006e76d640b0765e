// dcpp_interop: the C++ side of the interop tests (tests/interop). Converts
// between dcpp checkpoints and the plain-file state dict description of
// tests/interop/manifest.py, so pytest can compare dcpp with real torch.
//
//   dcpp_interop save MANIFEST_DIR CKPT [--thread-count N] [--file-per-item] [--no-overwrite]
//                [--transform DESCRIPTOR]...
//   dcpp_interop load-all CKPT OUT_DIR
//   dcpp_interop load-into MANIFEST_DIR CKPT OUT_DIR [--allow-partial-load]
//   dcpp_interop save-sharded MANIFEST_DIR CKPT --ranks N [--dim D] [--thread-count T]
//   dcpp_interop load-sharded CKPT MANIFEST_DIR OUT_DIR --ranks M [--dim D]
//
// The two -sharded commands run N (M) ranks as threads of this process, each
// with its own state dict, and save/load through the rank group, as N
// processes with DTensors would:
//
//   save-sharded: the manifest holds the full global values. Every tensor
//     with more than D dimensions is split along dimension D into N pieces,
//     rank r holding piece r as a ShardedTensor; every other value (tensors
//     with at most D dimensions included) is replicated on all ranks.
//     --dim defaults to 0, --thread-count (data files per rank) to 1.
//   load-sharded: the manifest gives only the structure, shapes and dtypes
//     (full tensors, zeros are fine). Every tensor with more than D
//     dimensions is split along D, every other tensor with at least one
//     dimension along dimension 0, and 0-d tensors are loaded whole on every
//     rank. After the load the pieces of all ranks are assembled into full
//     tensors, which must be covered by the pieces exactly once; replicated
//     tensors and non-tensor values must come back identical on every rank.
//     OUT_DIR receives the assembled state dict as a manifest.
//
// Pieces follow DTensor's Shard(d) layout, so offsets match what torch
// writes: a dimension of length L over n ranks gives each rank ceil(L / n)
// entries, the last ranks fewer or none (an empty piece sits at offset L;
// 3 rows over 4 ranks are 1, 1, 1, 0).
//
// Exit status 0 on success, 1 with "dcpp_interop: error: ..." on failure.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "dcpp/checkpoint.h"
#include "dcpp/format/json.h"
#include "dcpp/plan/reshard.h"

namespace {

using dcpp::Result;
using dcpp::Status;
using dcpp::Value;
namespace json = dcpp::format::json;

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return dcpp::NotFoundError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Status WriteFile(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  return out ? Status() : dcpp::InternalError("cannot write " + path);
}

Result<dcpp::Shape> ToShape(const json::Json* j) {
  if (!j || !j->GetArray()) return dcpp::InvalidArgumentError("manifest: expected an int array");
  dcpp::Shape out;
  for (const auto& x : *j->GetArray()) {
    if (!x.GetInt()) return dcpp::InvalidArgumentError("manifest: expected an int");
    out.push_back(*x.GetInt());
  }
  return out;
}

const std::string& Str(const json::Json& j, std::string_view key) {
  static const std::string kEmpty;
  const json::Json* v = j.Find(key);
  return v && v->GetString() ? *v->GetString() : kEmpty;
}

Result<std::string> FromHex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return out;
}

std::string ToHex(std::string_view s) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

Result<Value> Decode(const json::Json& j, const std::string& dir) {
  const std::string& t = Str(j, "t");
  auto items = [&](const char* key) -> Result<std::vector<Value>> {
    std::vector<Value> out;
    const json::Json* a = j.Find(key);
    if (!a || !a->GetArray()) return dcpp::InvalidArgumentError("manifest: missing array");
    for (const auto& x : *a->GetArray()) {
      DCPP_ASSIGN_OR_RETURN(Value v, Decode(x, dir));
      out.push_back(std::move(v));
    }
    return out;
  };
  if (t == "none") return Value();
  if (t == "bool") return Value(*j.Find("v")->GetBool());
  if (t == "int") return Value(*j.Find("v")->GetInt());
  if (t == "str") return Value(Str(j, "v"));
  if (t == "float") {
    DCPP_ASSIGN_OR_RETURN(std::string be, FromHex(Str(j, "bits")));
    uint64_t bits = 0;
    for (unsigned char c : be) bits = bits << 8 | c;
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return Value(d);
  }
  if (t == "bytes") {
    DCPP_ASSIGN_OR_RETURN(std::string b, FromHex(Str(j, "hex")));
    return Value::Bytes(std::move(b));
  }
  if (t == "list" || t == "tuple") {
    DCPP_ASSIGN_OR_RETURN(auto v, items("items"));
    return t == "list" ? Value::List(std::move(v)) : Value::Tuple(std::move(v));
  }
  if (t == "dict") {
    DCPP_ASSIGN_OR_RETURN(auto keys, items("keys"));
    DCPP_ASSIGN_OR_RETURN(auto values, items("values"));
    Value d = Value::EmptyDict();
    for (size_t i = 0; i < keys.size(); ++i) d.dict().Set(std::move(keys[i]), std::move(values[i]));
    return d;
  }
  if (t == "tensor") {
    auto dtype = dcpp::DTypeFromTorchName(Str(j, "dtype"));
    if (!dtype) return dcpp::InvalidArgumentError("manifest: unknown dtype " + Str(j, "dtype"));
    DCPP_ASSIGN_OR_RETURN(auto bytes, ReadFile(dir + "/" + Str(j, "file")));
    auto owner = std::make_shared<std::string>(std::move(bytes));
    dcpp::TensorView v;
    v.dtype = *dtype;
    DCPP_ASSIGN_OR_RETURN(v.shape, ToShape(j.Find("shape")));
    DCPP_ASSIGN_OR_RETURN(v.strides, ToShape(j.Find("strides")));
    v.data = owner->data() + *j.Find("storage_offset")->GetInt() * dcpp::ElementSize(*dtype);
    return Value(dcpp::Tensor::Adopt(std::move(v), owner));
  }
  return dcpp::InvalidArgumentError("manifest: unknown tag '" + t + "'");
}

Result<json::Json> Encode(const Value& v, const std::string& dir, int& counter) {
  json::Object o;
  auto list = [&](const std::vector<Value>& items) -> Result<json::Json> {
    json::Array a;
    for (const auto& x : items) {
      DCPP_ASSIGN_OR_RETURN(json::Json e, Encode(x, dir, counter));
      a.push_back(std::move(e));
    }
    return json::Json(std::move(a));
  };
  switch (v.kind()) {
    case Value::Kind::kNone:
      o.Set("t", "none");
      break;
    case Value::Kind::kBool:
      o.Set("t", "bool");
      o.Set("v", v.as_bool());
      break;
    case Value::Kind::kInt:
      o.Set("t", "int");
      o.Set("v", v.as_int());
      break;
    case Value::Kind::kFloat: {
      double d = v.as_float();
      uint64_t bits;
      std::memcpy(&bits, &d, sizeof d);
      std::string be(8, '\0');
      for (int i = 7; i >= 0; --i, bits >>= 8) be[i] = static_cast<char>(bits & 0xFF);
      o.Set("t", "float");
      o.Set("bits", ToHex(be));
      break;
    }
    case Value::Kind::kString:
      o.Set("t", "str");
      o.Set("v", v.as_string());
      break;
    case Value::Kind::kBytes:
      o.Set("t", "bytes");
      o.Set("hex", ToHex(v.as_string()));
      break;
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      o.Set("t", v.kind() == Value::Kind::kList ? "list" : "tuple");
      DCPP_ASSIGN_OR_RETURN(json::Json items, list(v.items()));
      o.Set("items", std::move(items));
      break;
    }
    case Value::Kind::kDict: {
      o.Set("t", "dict");
      DCPP_ASSIGN_OR_RETURN(json::Json keys, list(v.dict().keys()));
      DCPP_ASSIGN_OR_RETURN(json::Json values, list(v.dict().values()));
      o.Set("keys", std::move(keys));
      o.Set("values", std::move(values));
      break;
    }
    case Value::Kind::kTensor: {
      DCPP_ASSIGN_OR_RETURN(dcpp::Tensor t, v.tensor().Clone());  // contiguous
      const std::string file = std::to_string(counter++) + ".bin";
      DCPP_RETURN_IF_ERROR(WriteFile(
          dir + "/" + file, std::string_view(static_cast<const char*>(t.data()), t.nbytes())));
      json::Array shape, strides;
      for (int64_t d : t.shape()) shape.push_back(d);
      for (int64_t s : t.strides()) strides.push_back(s);
      o.Set("t", "tensor");
      o.Set("dtype", std::string(dcpp::TorchName(t.dtype())));
      o.Set("shape", std::move(shape));
      o.Set("strides", std::move(strides));
      o.Set("storage_offset", 0);
      o.Set("file", file);
      break;
    }
    case Value::Kind::kOpaque:
      o.Set("t", "opaque");
      o.Set("description", v.opaque().description);
      break;
    case Value::Kind::kSharded:
    case Value::Kind::kStateful:
      return dcpp::UnimplementedError("manifest: sharded tensors and Stateful are not described");
  }
  return json::Json(std::move(o));
}

Result<Value> ReadManifest(const std::string& dir) {
  DCPP_ASSIGN_OR_RETURN(std::string text, ReadFile(dir + "/manifest.json"));
  DCPP_ASSIGN_OR_RETURN(json::Json doc, json::Parse(text));
  return Decode(doc, dir);
}

Status WriteManifest(const Value& v, const std::string& dir) {
  std::filesystem::create_directories(dir);
  int counter = 0;
  DCPP_ASSIGN_OR_RETURN(json::Json doc, Encode(v, dir, counter));
  return WriteFile(dir + "/manifest.json", json::Serialize(doc));
}

// ---- save-sharded / load-sharded ------------------------------------------

// Caps what a command line may ask for: each rank is a thread.
constexpr int kMaxRanks = 1024;

struct ShardedArgs {
  int ranks = 0;
  int dim = 0;
  int thread_count = 1;
};

Result<int> ParseInt(const char* flag, const char* text, int min, int max) {
  int v = 0;
  const char* end = text + std::strlen(text);
  auto [p, ec] = std::from_chars(text, end, v);
  if (ec != std::errc() || p != end || v < min || v > max) {
    return dcpp::InvalidArgumentError(std::string(flag) + " wants an integer in [" +
                                      std::to_string(min) + ", " + std::to_string(max) +
                                      "], got '" + text + "'");
  }
  return v;
}

// Parses the flags after the positional arguments (argv[first..]). Unknown
// flags are errors: a typo must not silently change the layout under test.
Result<ShardedArgs> ParseShardedArgs(int argc, char** argv, int first, bool allow_thread_count) {
  ShardedArgs a;
  for (int i = first; i < argc; i += 2) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return dcpp::InvalidArgumentError(flag + " needs a value");
    if (flag == "--ranks") {
      DCPP_ASSIGN_OR_RETURN(a.ranks, ParseInt("--ranks", argv[i + 1], 1, kMaxRanks));
    } else if (flag == "--dim") {
      DCPP_ASSIGN_OR_RETURN(a.dim, ParseInt("--dim", argv[i + 1], 0, 63));
    } else if (flag == "--thread-count" && allow_thread_count) {
      DCPP_ASSIGN_OR_RETURN(a.thread_count, ParseInt("--thread-count", argv[i + 1], 1, 256));
    } else {
      return dcpp::InvalidArgumentError("unknown flag '" + flag + "'");
    }
  }
  if (a.ranks == 0) return dcpp::InvalidArgumentError("--ranks is required");
  return a;
}

// [start, start + size) of rank `rank`'s piece when `len` entries are split
// over `n` ranks as DTensor's Shard does (see the file comment).
std::pair<int64_t, int64_t> Piece(int64_t len, int n, int rank) {
  const int64_t chunk = len / n + (len % n != 0);
  const int64_t start = std::min(len, chunk * rank);
  return {start, std::min(len, chunk * (rank + 1)) - start};
}

// The dimension a tensor of `ndim` dimensions is split along, or -1 to keep
// it whole on every rank.
using SplitRule = std::function<int(size_t ndim)>;

int SaveSplit(size_t ndim, int dim) { return ndim > static_cast<size_t>(dim) ? dim : -1; }

int LoadSplit(size_t ndim, int dim) {
  if (ndim == 0) return -1;
  return ndim > static_cast<size_t>(dim) ? dim : 0;
}

std::string Join(const std::string& path, const Value& key) {
  const std::string k = key.kind() == Value::Kind::kString ? key.as_string() : key.DebugString();
  return path.empty() ? k : path + "." + k;
}

// Rank `rank`'s state dict built from the global one: each tensor leaf that
// `split` maps to a dimension becomes a ShardedTensor holding the rank's
// piece. With `fill` the pieces are copies of the global data and whole
// tensors share it (a save only reads them); without, every tensor is fresh
// zeroed memory owned by this rank, since ranks load into it concurrently.
Result<Value> RankStateDict(const Value& global, int rank, int ranks, const SplitRule& split,
                            bool fill) {
  auto each = [&](const std::vector<Value>& in) -> Result<std::vector<Value>> {
    std::vector<Value> out;
    for (const Value& x : in) {
      DCPP_ASSIGN_OR_RETURN(Value v, RankStateDict(x, rank, ranks, split, fill));
      out.push_back(std::move(v));
    }
    return out;
  };
  switch (global.kind()) {
    case Value::Kind::kDict: {
      DCPP_ASSIGN_OR_RETURN(std::vector<Value> values, each(global.dict().values()));
      dcpp::Dict d;
      for (size_t i = 0; i < values.size(); ++i)
        d.Set(global.dict().keys()[i], std::move(values[i]));
      return Value(std::move(d));
    }
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      DCPP_ASSIGN_OR_RETURN(std::vector<Value> items, each(global.items()));
      return global.kind() == Value::Kind::kList ? Value::List(std::move(items))
                                                 : Value::Tuple(std::move(items));
    }
    case Value::Kind::kTensor: {
      const dcpp::Tensor& t = global.tensor();
      const int d = split(t.shape().size());
      if (d < 0) {
        if (fill) return global;
        DCPP_ASSIGN_OR_RETURN(dcpp::Tensor z, dcpp::Tensor::Zeros(t.dtype(), t.shape()));
        return Value(std::move(z));
      }
      const dcpp::plan::Box whole{dcpp::Shape(t.shape().size(), 0), t.shape()};
      dcpp::plan::Box part = whole;
      std::tie(part.offsets[d], part.sizes[d]) = Piece(t.shape()[d], ranks, rank);
      dcpp::Tensor local;
      if (fill) {
        DCPP_ASSIGN_OR_RETURN(
            local, dcpp::Tensor::Borrow(dcpp::plan::SubView(t.view(), whole, part)).Clone());
      } else {
        DCPP_ASSIGN_OR_RETURN(local, dcpp::Tensor::Zeros(t.dtype(), part.sizes));
      }
      dcpp::ShardedTensor st;
      st.global_shape = t.shape();
      st.shards.push_back({part.offsets, std::move(local)});
      return Value(std::move(st));
    }
    default:
      return global;
  }
}

// Copies `pieces` into a new tensor of `like`'s dtype and shape, checking
// that every element is covered exactly once.
Result<dcpp::Tensor> AssemblePieces(const dcpp::Tensor& like,
                                    const std::vector<const dcpp::ShardedTensor*>& pieces,
                                    const std::string& path) {
  const dcpp::Shape& shape = like.shape();
  const size_t nd = shape.size();
  DCPP_ASSIGN_OR_RETURN(dcpp::Tensor full, dcpp::Tensor::Zeros(like.dtype(), shape));
  std::vector<uint8_t> covered(static_cast<size_t>(full.numel()), 0);
  const dcpp::Shape strides = dcpp::ContiguousStrides(shape);
  const dcpp::plan::Box whole{dcpp::Shape(nd, 0), shape};
  for (size_t r = 0; r < pieces.size(); ++r) {
    const std::string where = "'" + path + "' rank " + std::to_string(r);
    if (pieces[r]->global_shape != shape) {
      return dcpp::InternalError(where + ": global shape " +
                                 dcpp::ShapeToString(pieces[r]->global_shape) + " instead of " +
                                 dcpp::ShapeToString(shape));
    }
    for (const auto& s : pieces[r]->shards) {
      const dcpp::Shape& size = s.local.shape();
      bool inside = s.offsets.size() == nd && size.size() == nd;
      for (size_t d = 0; inside && d < nd; ++d)
        inside =
            s.offsets[d] >= 0 && s.offsets[d] <= shape[d] && size[d] <= shape[d] - s.offsets[d];
      if (!inside || s.local.dtype() != like.dtype()) {
        return dcpp::InternalError(where + ": piece " + dcpp::ShapeToString(size) + " at " +
                                   dcpp::ShapeToString(s.offsets) + " (" +
                                   std::string(dcpp::TorchName(s.local.dtype())) +
                                   ") does not fit " + dcpp::ShapeToString(shape));
      }
      const dcpp::plan::Box box{s.offsets, size};
      DCPP_RETURN_IF_ERROR(
          dcpp::CopyTensor(s.local.view(), dcpp::plan::SubView(full.view(), whole, box)));
      // Walk the piece's elements in row-major order, odometer style.
      dcpp::Shape idx(nd, 0);
      for (int64_t n = 0; n < s.local.numel(); ++n) {
        int64_t linear = 0;
        for (size_t d = 0; d < nd; ++d) linear += (s.offsets[d] + idx[d]) * strides[d];
        if (covered[linear]++) {
          return dcpp::InternalError(where + ": element " + std::to_string(linear) +
                                     " is covered by more than one piece");
        }
        for (size_t d = nd; d-- > 0;) {
          if (++idx[d] < size[d]) break;
          idx[d] = 0;
        }
      }
    }
  }
  for (size_t i = 0; i < covered.size(); ++i) {
    if (!covered[i]) {
      return dcpp::InternalError("'" + path + "': element " + std::to_string(i) +
                                 " is covered by no rank's piece");
    }
  }
  return full;
}

// The global state dict from every rank's loaded one (`loaded[r]` for rank
// r), shaped by the load template `tmpl`. `path` names the value in errors.
Result<Value> Assemble(const Value& tmpl, const std::vector<const Value*>& loaded,
                       const std::string& path) {
  const Value& first = *loaded[0];
  auto differs = [&](size_t r, const char* what) {
    return dcpp::InternalError("'" + path + "': rank " + std::to_string(r) + " " + what + " (" +
                               loaded[r]->DebugString() + " vs " + first.DebugString() + ")");
  };
  for (size_t r = 1; r < loaded.size(); ++r) {
    if (loaded[r]->kind() != first.kind()) return differs(r, "holds another kind than rank 0");
  }
  if (tmpl.is_dict() || tmpl.is_sequence()) {
    // A load keeps containers as they are, so children pair up by position.
    if (first.kind() != tmpl.kind()) return differs(0, "is not the template's container");
    const bool dict = tmpl.is_dict();
    const std::vector<Value>& tmpl_children = dict ? tmpl.dict().values() : tmpl.items();
    std::vector<Value> children;
    for (size_t i = 0; i < tmpl_children.size(); ++i) {
      std::vector<const Value*> parts;
      for (size_t r = 0; r < loaded.size(); ++r) {
        const std::vector<Value>& c = dict ? loaded[r]->dict().values() : loaded[r]->items();
        if (c.size() != tmpl_children.size() ||
            (dict && !loaded[r]->dict().keys()[i].Equals(tmpl.dict().keys()[i]))) {
          return differs(r, "has other keys or length than the template");
        }
        parts.push_back(&c[i]);
      }
      const Value key = dict ? tmpl.dict().keys()[i] : Value(static_cast<int64_t>(i));
      DCPP_ASSIGN_OR_RETURN(Value v, Assemble(tmpl_children[i], parts, Join(path, key)));
      children.push_back(std::move(v));
    }
    if (tmpl.kind() == Value::Kind::kList) return Value::List(std::move(children));
    if (tmpl.kind() == Value::Kind::kTuple) return Value::Tuple(std::move(children));
    dcpp::Dict d;
    for (size_t i = 0; i < children.size(); ++i)
      d.Set(tmpl.dict().keys()[i], std::move(children[i]));
    return Value(std::move(d));
  }
  if (tmpl.is_tensor() && first.is_sharded()) {
    std::vector<const dcpp::ShardedTensor*> pieces;
    for (const Value* v : loaded) pieces.push_back(&v->sharded());
    DCPP_ASSIGN_OR_RETURN(dcpp::Tensor full, AssemblePieces(tmpl.tensor(), pieces, path));
    return Value(std::move(full));
  }
  // Replicated tensors and plain values: every rank must have loaded the same.
  for (size_t r = 1; r < loaded.size(); ++r) {
    if (!loaded[r]->Equals(first)) return differs(r, "loaded another value than rank 0");
  }
  return first;
}

// The first failed rank's status, naming the rank.
Status FirstError(const std::vector<Status>& statuses) {
  for (size_t r = 0; r < statuses.size(); ++r) {
    if (!statuses[r].ok()) return statuses[r].WithContext("rank " + std::to_string(r));
  }
  return Status();
}

Status SaveSharded(const std::string& manifest_dir, const std::string& ckpt,
                   const ShardedArgs& args) {
  DCPP_ASSIGN_OR_RETURN(const Value global, ReadManifest(manifest_dir));
  const SplitRule split = [&](size_t ndim) { return SaveSplit(ndim, args.dim); };
  return FirstError(dcpp::RunOnThreadRanks(args.ranks, [&](dcpp::ProcessGroup& pg) -> Status {
    DCPP_ASSIGN_OR_RETURN(Value sd, RankStateDict(global, pg.rank(), pg.size(), split, true));
    dcpp::SaveOptions o;
    o.process_group = &pg;
    o.files_per_rank = args.thread_count;
    return dcpp::Save(sd, ckpt, o).status();
  }));
}

Status LoadSharded(const std::string& ckpt, const std::string& manifest_dir,
                   const std::string& out_dir, const ShardedArgs& args) {
  DCPP_ASSIGN_OR_RETURN(const Value tmpl, ReadManifest(manifest_dir));
  const SplitRule split = [&](size_t ndim) { return LoadSplit(ndim, args.dim); };
  std::vector<Value> loaded(args.ranks);  // element r written only by rank r
  DCPP_RETURN_IF_ERROR(
      FirstError(dcpp::RunOnThreadRanks(args.ranks, [&](dcpp::ProcessGroup& pg) -> Status {
        DCPP_ASSIGN_OR_RETURN(Value sd, RankStateDict(tmpl, pg.rank(), pg.size(), split, false));
        dcpp::LoadOptions o;
        o.process_group = &pg;
        DCPP_RETURN_IF_ERROR(dcpp::Load(sd, ckpt, o));
        loaded[pg.rank()] = std::move(sd);
        return Status();
      })));
  std::vector<const Value*> parts;
  for (const Value& v : loaded) parts.push_back(&v);
  DCPP_ASSIGN_OR_RETURN(Value full, Assemble(tmpl, parts, ""));
  return WriteManifest(full, out_dir);
}

bool HasFlag(int argc, char** argv, const char* flag) {
  for (int i = 0; i < argc; ++i)
    if (!std::strcmp(argv[i], flag)) return true;
  return false;
}

Status Run(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "save" && argc >= 4) {
    DCPP_ASSIGN_OR_RETURN(Value sd, ReadManifest(argv[2]));
    dcpp::SaveOptions o;
    for (int i = 4; i + 1 < argc; ++i)
      if (!std::strcmp(argv[i], "--thread-count")) {
        o.files_per_rank = std::atoi(argv[i + 1]);
      } else if (!std::strcmp(argv[i], "--transform")) {
        o.transforms.push_back(argv[i + 1]);
      }
    o.single_file_per_rank = !HasFlag(argc, argv, "--file-per-item");
    o.overwrite = !HasFlag(argc, argv, "--no-overwrite");
    return dcpp::Save(sd, argv[3], o).status();
  }
  if (cmd == "load-all" && argc >= 4) {
    DCPP_ASSIGN_OR_RETURN(Value sd, dcpp::LoadAll(argv[2]));
    return WriteManifest(sd, argv[3]);
  }
  if (cmd == "load-into" && argc >= 5) {
    DCPP_ASSIGN_OR_RETURN(Value sd, ReadManifest(argv[2]));
    dcpp::LoadOptions o;
    o.allow_partial_load = HasFlag(argc, argv, "--allow-partial-load");
    DCPP_RETURN_IF_ERROR(dcpp::Load(sd, argv[3], o));
    return WriteManifest(sd, argv[4]);
  }
  if (cmd == "save-sharded" && argc >= 4) {
    DCPP_ASSIGN_OR_RETURN(ShardedArgs a, ParseShardedArgs(argc, argv, 4, true));
    return SaveSharded(argv[2], argv[3], a);
  }
  if (cmd == "load-sharded" && argc >= 5) {
    DCPP_ASSIGN_OR_RETURN(ShardedArgs a, ParseShardedArgs(argc, argv, 5, false));
    return LoadSharded(argv[2], argv[3], argv[4], a);
  }
  return dcpp::InvalidArgumentError(
      "usage: dcpp_interop save MANIFEST_DIR CKPT [opts] | load-all CKPT OUT | "
      "load-into MANIFEST_DIR CKPT OUT [--allow-partial-load] | "
      "save-sharded MANIFEST_DIR CKPT --ranks N [--dim D] [--thread-count T] | "
      "load-sharded CKPT MANIFEST_DIR OUT --ranks M [--dim D]");
}

}  // namespace

int main(int argc, char** argv) {
  Status s = Run(argc, argv);
  if (s.ok()) return 0;
  std::fprintf(stderr, "dcpp_interop: error: %s\n", s.ToString().c_str());
  return 1;
}
