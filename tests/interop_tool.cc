// dcpp_interop: the C++ side of the interop tests (tests/interop). Converts
// between dcpp checkpoints and the plain-file state dict description of
// tests/interop/manifest.py, so pytest can compare dcpp with real torch.
//
//   dcpp_interop save MANIFEST_DIR CKPT [--thread-count N] [--file-per-item] [--no-overwrite]
//   dcpp_interop load-all CKPT OUT_DIR
//   dcpp_interop load-into MANIFEST_DIR CKPT OUT_DIR [--allow-partial-load]
//
// Exit status 0 on success, 1 with "dcpp_interop: error: ..." on failure.
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "dcpp/checkpoint.h"
#include "dcpp/format/json.h"

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
    case Value::Kind::kNone: o.Set("t", "none"); break;
    case Value::Kind::kBool: o.Set("t", "bool"); o.Set("v", v.as_bool()); break;
    case Value::Kind::kInt: o.Set("t", "int"); o.Set("v", v.as_int()); break;
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
    case Value::Kind::kString: o.Set("t", "str"); o.Set("v", v.as_string()); break;
    case Value::Kind::kBytes: o.Set("t", "bytes"); o.Set("hex", ToHex(v.as_string())); break;
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
      DCPP_RETURN_IF_ERROR(
          WriteFile(dir + "/" + file, std::string_view(static_cast<const char*>(t.data()), t.nbytes())));
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
      if (!std::strcmp(argv[i], "--thread-count")) o.thread_count = std::atoi(argv[i + 1]);
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
  return dcpp::InvalidArgumentError(
      "usage: dcpp_interop save MANIFEST_DIR CKPT [opts] | load-all CKPT OUT | "
      "load-into MANIFEST_DIR CKPT OUT [--allow-partial-load]");
}

}  // namespace

int main(int argc, char** argv) {
  Status s = Run(argc, argv);
  if (s.ok()) return 0;
  std::fprintf(stderr, "dcpp_interop: error: %s\n", s.ToString().c_str());
  return 1;
}
