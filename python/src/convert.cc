#include "convert.h"

#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstring>
#include <functional>
#include <optional>

#include "errors.h"

namespace nb = nanobind;

namespace dcpp::python {
namespace {

// As deep as the torch.save encoder accepts.
constexpr int kMaxDepth = 200;

using nb::dlpack::dtype_code;

std::optional<DType> DTypeFromDlpack(nb::dlpack::dtype t) {
  if (t.lanes != 1) return std::nullopt;
  switch (static_cast<dtype_code>(t.code)) {
    case dtype_code::Int:
      switch (t.bits) {
        case 8:
          return DType::kInt8;
        case 16:
          return DType::kInt16;
        case 32:
          return DType::kInt32;
        case 64:
          return DType::kInt64;
      }
      break;
    case dtype_code::UInt:
      switch (t.bits) {
        case 8:
          return DType::kUInt8;
        case 16:
          return DType::kUInt16;
        case 32:
          return DType::kUInt32;
        case 64:
          return DType::kUInt64;
      }
      break;
    case dtype_code::Float:
      switch (t.bits) {
        case 16:
          return DType::kFloat16;
        case 32:
          return DType::kFloat32;
        case 64:
          return DType::kFloat64;
      }
      break;
    case dtype_code::Bfloat:
      if (t.bits == 16) return DType::kBFloat16;
      break;
    case dtype_code::Complex:
      if (t.bits == 64) return DType::kComplex64;
      if (t.bits == 128) return DType::kComplex128;
      break;
    case dtype_code::Bool:
      if (t.bits == 8) return DType::kBool;
      break;
    case dtype_code::Float8_E4M3FN:
      if (t.bits == 8) return DType::kFloat8E4M3FN;
      break;
    case dtype_code::Float8_E5M2:
      if (t.bits == 8) return DType::kFloat8E5M2;
      break;
    case dtype_code::Float8_E4M3FNUZ:
      if (t.bits == 8) return DType::kFloat8E4M3FNUZ;
      break;
    case dtype_code::Float8_E5M2FNUZ:
      if (t.bits == 8) return DType::kFloat8E5M2FNUZ;
      break;
    case dtype_code::Float8_E8M0FNU:
      if (t.bits == 8) return DType::kFloat8E8M0FNU;
      break;
    default:
      break;
  }
  return std::nullopt;
}

// The numpy dtype for `dtype`, or nullopt when numpy has none (bfloat16 and
// the float8 types).
std::optional<nb::dlpack::dtype> NumpyDtype(DType dtype) {
  auto make = [](dtype_code code, int bits) {
    return nb::dlpack::dtype{static_cast<uint8_t>(code), static_cast<uint8_t>(bits), 1};
  };
  switch (dtype) {
    case DType::kFloat64:
      return make(dtype_code::Float, 64);
    case DType::kFloat32:
      return make(dtype_code::Float, 32);
    case DType::kFloat16:
      return make(dtype_code::Float, 16);
    case DType::kComplex64:
      return make(dtype_code::Complex, 64);
    case DType::kComplex128:
      return make(dtype_code::Complex, 128);
    case DType::kInt8:
      return make(dtype_code::Int, 8);
    case DType::kInt16:
      return make(dtype_code::Int, 16);
    case DType::kInt32:
      return make(dtype_code::Int, 32);
    case DType::kInt64:
      return make(dtype_code::Int, 64);
    case DType::kUInt8:
      return make(dtype_code::UInt, 8);
    case DType::kUInt16:
      return make(dtype_code::UInt, 16);
    case DType::kUInt32:
      return make(dtype_code::UInt, 32);
    case DType::kUInt64:
      return make(dtype_code::UInt, 64);
    case DType::kBool:
      return make(dtype_code::Bool, 8);
    default:
      return std::nullopt;
  }
}

std::string Repr(nb::handle h) { return nb::cast<std::string>(nb::repr(h)); }

// str(h).
std::string Str(nb::handle h) {
  PyObject* s = PyObject_Str(h.ptr());
  if (s == nullptr) throw nb::python_error();
  return nb::cast<std::string>(nb::steal(s));
}

// The bytes of a bytes object; TypeError naming `where` otherwise.
std::string BytesOf(nb::handle h, const std::string& where) {
  if (!PyBytes_Check(h.ptr()))
    throw nb::type_error(
        (where + ": expected bytes, not " + nb::cast<std::string>(nb::type_name(h.type())))
            .c_str());
  return std::string(PyBytes_AsString(h.ptr()), static_cast<size_t>(PyBytes_Size(h.ptr())));
}

std::string TypeName(nb::handle h) { return nb::cast<std::string>(nb::type_name(h.type())); }

Shape IntSequence(nb::handle seq, const std::string& where, const char* what) {
  Shape out;
  try {
    for (nb::handle d : seq) out.push_back(nb::cast<int64_t>(d));
  } catch (const nb::cast_error&) {
    throw nb::type_error(
        (where + ": " + what + " must be a sequence of ints, not " + Repr(seq)).c_str());
  }
  return out;
}

nb::object IntTuple(const Shape& values) {
  nb::object t = nb::steal(PyTuple_New(static_cast<Py_ssize_t>(values.size())));
  if (!t.is_valid()) throw nb::python_error();
  for (size_t i = 0; i < values.size(); ++i)
    PyTuple_SET_ITEM(t.ptr(), static_cast<Py_ssize_t>(i), nb::int_(values[i]).release().ptr());
  return t;
}

bool IsStateful(nb::handle obj) {
  return nb::hasattr(obj, "state_dict") && nb::hasattr(obj, "load_state_dict") &&
         PyCallable_Check(obj.attr("state_dict").ptr());
}

nb::object Utf8(const std::string& s) {
  // Python's pickle writes lone surrogates with surrogatepass.
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogatepass");
  if (o == nullptr) throw nb::python_error();
  return nb::steal(o);
}

}  // namespace

PyHelpers PyHelpers::Get() {
  PyHelpers h;
  nb::module_ types = nb::module_::import_("dcpp._types");
  h.sharded_type = types.attr("ShardedTensor");
  h.opaque_type = types.attr("Opaque");
  h.pickle_other = types.attr("_pickle_other");
  h.unpickle_opaque = types.attr("_unpickle_opaque");
  h.torch_from_bytes = types.attr("_torch_from_bytes");
  h.normalize_array = types.attr("_normalize_array");
  h.copy_into = types.attr("_copy_into");
  h.distributed_to_sharded = types.attr("_distributed_to_sharded");
  // Only modules already imported matter: an object cannot be a torch
  // tensor unless torch is loaded, and dcpp never imports torch for numpy users.
  nb::dict modules = nb::borrow<nb::dict>(nb::module_::import_("sys").attr("modules"));
  h.torch_tensor_type = nb::none();
  h.torch_strided = nb::none();
  h.numpy_ndarray_type = nb::none();
  if (modules.contains("torch")) {
    nb::handle torch = modules["torch"];
    if (nb::hasattr(torch, "Tensor") && nb::hasattr(torch, "strided")) {
      h.torch_tensor_type = torch.attr("Tensor");
      h.torch_strided = torch.attr("strided");
    }
  }
  if (modules.contains("numpy")) {
    nb::handle numpy = modules["numpy"];
    if (nb::hasattr(numpy, "ndarray")) h.numpy_ndarray_type = numpy.attr("ndarray");
  }
  nb::list distributed;
  const std::pair<const char*, const char*> classes[] = {
      {"torch.distributed.tensor", "DTensor"},
      {"torch.distributed._shard.sharded_tensor", "ShardedTensor"},
  };
  for (const auto& [module, cls] : classes) {
    if (!modules.contains(module)) continue;
    nb::handle m = modules[module];
    if (nb::hasattr(m, cls)) distributed.append(m.attr(cls));
  }
  h.distributed_types = nb::tuple(distributed);
  return h;
}

bool PyHelpers::IsTorchTensor(nb::handle obj) const {
  return !torch_tensor_type.is_none() &&
         PyObject_IsInstance(obj.ptr(), torch_tensor_type.ptr()) == 1;
}

bool PyHelpers::IsArray(nb::handle obj) const {
  if (!numpy_ndarray_type.is_none() &&
      PyObject_IsInstance(obj.ptr(), numpy_ndarray_type.ptr()) == 1)
    return true;
  return nb::hasattr(obj, "__dlpack__");
}

bool PyHelpers::IsDistributed(nb::handle obj) const {
  return PyTuple_GET_SIZE(distributed_types.ptr()) > 0 &&
         PyObject_IsInstance(obj.ptr(), distributed_types.ptr()) == 1;
}

DType DTypeFromName(const std::string& name, const std::string& where) {
  std::string_view n = name;
  if (n.starts_with("torch.")) n.remove_prefix(6);
  std::optional<DType> d = DTypeFromTorchName(n);
  if (!d) throw nb::value_error((where + ": dtype " + name + " is not supported by dcpp").c_str());
  return *d;
}

ToValueConverter::ToValueConverter(const PyHelpers& helpers, Purpose purpose)
    : helpers_(helpers), purpose_(purpose) {}

std::string ToValueConverter::Where() const {
  std::string s = "state_dict";
  for (const std::string& p : path_) s += p;
  return s;
}

Value ToValueConverter::ConvertStateDict(nb::handle state_dict) {
  if (!PyDict_Check(state_dict.ptr()))
    throw nb::type_error(("state_dict must be a dict, not " + TypeName(state_dict)).c_str());
  Dict out;
  nb::dict d = nb::borrow<nb::dict>(state_dict);
  size_t index = 0;
  for (auto [key, value] : d) {
    path_.push_back("[" + Repr(key) + "]");
    Value k = ConvertKey(key);
    if (!PyDict_Check(value.ptr()) && !helpers_.IsTorchTensor(value) && !helpers_.IsArray(value) &&
        IsStateful(value)) {
      // dcp.save/dcp.load: a top-level Stateful is saved as its state_dict()
      // and restored through load_state_dict().
      nb::object state = value.attr("state_dict")();
      keep_.push_back(state);
      statefuls_.push_back({index, nb::borrow(value), state});
      out.Set(std::move(k), Convert(state, 1));
    } else {
      out.Set(std::move(k), Convert(value, 1));
    }
    path_.pop_back();
    ++index;
  }
  return Value(std::move(out));
}

Value ToValueConverter::ConvertKey(nb::handle key) {
  if (PyUnicode_CheckExact(key.ptr())) return Value(nb::cast<std::string>(key));
  if (PyBool_Check(key.ptr())) return Value(nb::cast<bool>(key));
  if (PyLong_CheckExact(key.ptr())) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(key.ptr(), &overflow);
    if (!overflow) return Value(static_cast<int64_t>(v));
  }
  if (PyFloat_CheckExact(key.ptr())) return Value(PyFloat_AsDouble(key.ptr()));
  if (key.is_none()) return Value();
  if (PyBytes_CheckExact(key.ptr())) return Value::Bytes(BytesOf(key, Where()));
  if (PyTuple_CheckExact(key.ptr())) {
    std::vector<Value> items;
    for (nb::handle item : key) items.push_back(ConvertKey(item));
    return Value::Tuple(std::move(items));
  }
  throw nb::type_error(
      (Where() + ": dict keys must be str, int, float, bool, None, bytes or tuples of those, not " +
       TypeName(key))
          .c_str());
}

Value ToValueConverter::Convert(nb::handle obj, int depth) {
  if (depth > kMaxDepth)
    throw nb::value_error(
        (Where() + ": containers are nested more than " + std::to_string(kMaxDepth) + " deep")
            .c_str());
  PyObject* p = obj.ptr();
  if (obj.is_none()) return Value();
  if (PyBool_Check(p)) return Value(p == Py_True);
  if (PyLong_CheckExact(p)) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(p, &overflow);
    if (!overflow) return Value(static_cast<int64_t>(v));
    // Beyond int64: pickled like any other object below.
  } else if (PyFloat_CheckExact(p)) {
    return Value(PyFloat_AsDouble(p));
  } else if (PyUnicode_CheckExact(p)) {
    Py_ssize_t size = 0;
    const char* s = PyUnicode_AsUTF8AndSize(p, &size);
    if (s == nullptr) {
      // Lone surrogates: encode as pickle does.
      PyErr_Clear();
      nb::object b = nb::steal(PyUnicode_AsEncodedString(p, "utf-8", "surrogatepass"));
      if (!b.is_valid()) throw nb::python_error();
      return Value(std::string(PyBytes_AsString(b.ptr()), PyBytes_Size(b.ptr())));
    }
    return Value(std::string(s, static_cast<size_t>(size)));
  } else if (PyBytes_CheckExact(p)) {
    return Value::Bytes(std::string(PyBytes_AsString(p), PyBytes_Size(p)));
  } else if (PyDict_Check(p)) {
    Dict out;
    for (auto [key, value] : nb::borrow<nb::dict>(obj)) {
      path_.push_back("[" + Repr(key) + "]");
      Value k = ConvertKey(key);
      out.Set(std::move(k), Convert(value, depth + 1));
      path_.pop_back();
    }
    return Value(std::move(out));
  } else if (PyList_CheckExact(p) || PyTuple_CheckExact(p)) {
    std::vector<Value> items;
    size_t i = 0;
    for (nb::handle item : obj) {
      path_.push_back("[" + std::to_string(i++) + "]");
      items.push_back(Convert(item, depth + 1));
      path_.pop_back();
    }
    return PyList_CheckExact(p) ? Value::List(std::move(items)) : Value::Tuple(std::move(items));
  }
  if (helpers_.IsTorchTensor(obj) && helpers_.IsDistributed(obj)) {
    nb::object sharded = helpers_.distributed_to_sharded(obj, Where());
    keep_.push_back(sharded);
    return ConvertSharded(sharded);
  }
  if (helpers_.IsTorchTensor(obj) || helpers_.IsArray(obj))
    return Value(ConvertTensor(obj, Where()));
  if (PyObject_IsInstance(p, helpers_.sharded_type.ptr()) == 1) return ConvertSharded(obj);
  if (PyObject_IsInstance(p, helpers_.opaque_type.ptr()) == 1) {
    Opaque o;
    o.blob = BytesOf(obj.attr("blob"), Where() + ".blob");
    o.description = nb::cast<std::string>(obj.attr("description"));
    return Value(std::move(o));
  }
  if (purpose_ == Purpose::kLoadInto) {
    // Replaced by the loaded value; nothing to pickle.
    return Value();
  }
  nb::object blob = helpers_.pickle_other(obj, Where());
  Opaque o;
  o.blob = BytesOf(blob, Where());
  o.description = "an instance of " + TypeName(obj);
  return Value(std::move(o));
}

Value ToValueConverter::ConvertSharded(nb::handle obj) {
  const std::string where = Where();
  ShardedTensor st;
  st.global_shape = IntSequence(obj.attr("global_shape"), where, "global_shape");
  size_t i = 0;
  for (nb::handle shard : obj.attr("shards")) {
    const std::string shard_where = where + ".shards[" + std::to_string(i++) + "]";
    if (!nb::hasattr(shard, "tensor") || !nb::hasattr(shard, "offsets"))
      throw nb::type_error(
          (shard_where + ": expected a dcpp.Shard, not " + TypeName(shard)).c_str());
    ShardedTensor::Shard s;
    s.offsets = IntSequence(shard.attr("offsets"), shard_where, "offsets");
    s.local = ConvertTensor(shard.attr("tensor"), shard_where);
    st.shards.push_back(std::move(s));
  }
  return Value(std::move(st));
}

Tensor ToValueConverter::ConvertTensor(nb::handle obj, const std::string& where) {
  try {
    if (helpers_.IsTorchTensor(obj)) return ConvertTorch(obj, where);
    if (helpers_.IsArray(obj)) return ConvertArray(obj, where);
  } catch (nb::python_error& e) {
    // An error from the tensor's own methods (a meta tensor has no data, a
    // tensor subclass refuses data_ptr, ...): say which entry it was.
    std::string message = Str(e.value());
    if (message.starts_with(where)) throw;
    nb::object exc = nb::steal(
        PyObject_CallOneArg(e.type().ptr(), nb::str((where + ": " + message).c_str()).ptr()));
    if (!exc.is_valid()) {
      PyErr_Clear();
      throw;
    }
    PyException_SetCause(exc.ptr(), e.value().inc_ref().ptr());
    PyErr_SetObject(e.type().ptr(), exc.ptr());
    throw nb::python_error();
  }
  throw nb::type_error((where + ": expected a tensor or an array, not " + TypeName(obj)).c_str());
}

Tensor ToValueConverter::ConvertTorch(nb::handle obj, const std::string& where) {
  nb::object t = nb::borrow(obj);
  keep_.push_back(t);
  if (!t.attr("layout").is(helpers_.torch_strided))
    throw nb::value_error((where + ": only strided (dense) tensors are supported, not layout " +
                           Repr(t.attr("layout")))
                              .c_str());
  if (nb::cast<bool>(t.attr("is_quantized")))
    throw nb::value_error((where + ": quantized tensors are not supported").c_str());
  const bool conj_or_neg =
      nb::cast<bool>(t.attr("is_conj")()) || nb::cast<bool>(t.attr("is_neg")());
  const bool on_cpu = nb::cast<std::string>(t.attr("device").attr("type")) == "cpu";
  if (purpose_ == Purpose::kSave) {
    if (conj_or_neg) {
      t = t.attr("resolve_conj")().attr("resolve_neg")();
      keep_.push_back(t);
    }
    if (!on_cpu) {
      t = t.attr("detach")().attr("cpu")();
      keep_.push_back(t);
    }
  } else if (conj_or_neg || !on_cpu) {
    // Fill a plain CPU tensor, then copy it into the destination.
    nb::object dst = t.attr("detach")();
    t = t.attr("detach")().attr("cpu")().attr("resolve_conj")().attr("resolve_neg")().attr(
        "clone")();
    keep_.push_back(t);
    copy_back_.emplace_back(dst, t);
  }
  TensorView v;
  v.dtype = DTypeFromName(Str(t.attr("dtype")), where);
  v.shape = IntSequence(t.attr("shape"), where, "shape");
  v.strides = IntSequence(t.attr("stride")(), where, "strides");
  if (v.numel() > 0) {
    try {
      v.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(t.attr("data_ptr")()));
    } catch (nb::python_error& e) {
      throw nb::type_error(
          (where + ": cannot read this tensor's memory (" + e.what() + ")").c_str());
    }
  }
  return Tensor::Borrow(v);
}

Tensor ToValueConverter::ConvertArray(nb::handle obj, const std::string& where) {
  nb::object o = nb::borrow(obj);
  keep_.push_back(o);
  for (int attempt = 0; attempt < 2; ++attempt) {
    nb::ndarray<nb::ro> arr;
    bool ok = nb::try_cast(o, arr, /*convert=*/false);
    bool positive = ok;
    if (ok) {
      if (arr.device_type() != nb::device::cpu::value)
        throw nb::value_error((where + ": only CPU arrays are supported").c_str());
      for (size_t d = 0; d < arr.ndim(); ++d) positive = positive && arr.stride(d) >= 0;
    }
    if (ok && positive) {
      std::optional<DType> dtype = DTypeFromDlpack(arr.dtype());
      if (!dtype)
        throw nb::value_error((where + ": unsupported array dtype (DLPack code " +
                               std::to_string(arr.dtype().code) + ", " +
                               std::to_string(arr.dtype().bits) + " bits)")
                                  .c_str());
      if (purpose_ == Purpose::kLoadInto && attempt == 0) {
        nb::ndarray<> writable;
        if (!nb::try_cast(o, writable, /*convert=*/false))
          throw nb::value_error((where + ": the destination array is read-only").c_str());
      }
      TensorView v;
      v.dtype = *dtype;
      v.data = const_cast<void*>(static_cast<const void*>(arr.data()));
      for (size_t d = 0; d < arr.ndim(); ++d) {
        v.shape.push_back(static_cast<int64_t>(arr.shape(d)));
        v.strides.push_back(arr.stride(d));
      }
      if (v.numel() == 0) v.data = nullptr;
      return Tensor::Borrow(v);
    }
    if (attempt == 1) break;
    // Byte-swapped, negatively strided or otherwise unviewable: a native
    // copy (for loading: filled, then copied into the original).
    nb::object copy = helpers_.normalize_array(o, where);
    keep_.push_back(copy);
    if (purpose_ == Purpose::kLoadInto) copy_back_.emplace_back(o, copy);
    o = copy;
  }
  throw nb::type_error((where + ": cannot view " + TypeName(obj) +
                        " as CPU memory through DLPack or the buffer protocol")
                           .c_str());
}

void ToValueConverter::CopyBack() {
  for (auto& [dst, src] : copy_back_) helpers_.copy_into(dst, src);
  copy_back_.clear();
}

void ToValueConverter::FinishLoad(nb::handle state_dict, const Value& loaded, bool torch_tensors,
                                  bool weights_only) {
  CopyBack();
  FromValueOptions options{torch_tensors, weights_only};

  // Returns the object that replaces `py`, or nothing when `py` was updated
  // in place (tensors were filled, containers had their items replaced).
  std::function<std::optional<nb::object>(nb::handle, const Value&, const std::string&)>
      write_back = [&](nb::handle py, const Value& v,
                       const std::string& where) -> std::optional<nb::object> {
    PyObject* p = py.ptr();
    if (v.is_tensor() && (helpers_.IsTorchTensor(py) || helpers_.IsArray(py))) return std::nullopt;
    if (v.is_sharded() && (PyObject_IsInstance(p, helpers_.sharded_type.ptr()) == 1 ||
                           helpers_.IsDistributed(py)))
      return std::nullopt;
    if (v.is_dict() && PyDict_Check(p) && static_cast<size_t>(PyDict_Size(p)) == v.dict().size()) {
      nb::list items = nb::borrow<nb::dict>(py).items();
      for (size_t i = 0; i < v.dict().size(); ++i) {
        nb::handle item = items[i];
        std::optional<nb::object> r =
            write_back(item[1], v.dict().values()[i], where + "[" + Repr(item[0]) + "]");
        if (r) PyDict_SetItem(p, nb::object(item[0]).ptr(), r->ptr());
      }
      return std::nullopt;
    }
    if (v.kind() == Value::Kind::kList && PyList_CheckExact(p) &&
        static_cast<size_t>(PyList_Size(p)) == v.items().size()) {
      for (size_t i = 0; i < v.items().size(); ++i) {
        std::optional<nb::object> r =
            write_back(PyList_GetItem(p, i), v.items()[i], where + "[" + std::to_string(i) + "]");
        if (r) PyList_SetItem(p, i, r->release().ptr());
      }
      return std::nullopt;
    }
    if (v.kind() == Value::Kind::kTuple && PyTuple_CheckExact(p) &&
        static_cast<size_t>(PyTuple_Size(p)) == v.items().size()) {
      bool changed = false;
      nb::list items;
      for (size_t i = 0; i < v.items().size(); ++i) {
        nb::handle old = PyTuple_GetItem(p, i);
        std::optional<nb::object> r =
            write_back(old, v.items()[i], where + "[" + std::to_string(i) + "]");
        changed = changed || r.has_value();
        items.append(r ? *r : nb::borrow(old));
      }
      if (!changed) return std::nullopt;
      return nb::tuple(items);
    }
    return FromValue(v, helpers_, options, where);
  };

  nb::dict d = nb::borrow<nb::dict>(state_dict);
  if (!loaded.is_dict() || loaded.dict().size() != d.size())
    throw nb::value_error("the state dict changed size while it was being loaded");
  nb::list items = d.items();
  size_t next_stateful = 0;
  for (size_t i = 0; i < loaded.dict().size(); ++i) {
    nb::handle item = items[i];
    const Value& v = loaded.dict().values()[i];
    if (next_stateful < statefuls_.size() && statefuls_[next_stateful].index == i) {
      const StatefulEntry& s = statefuls_[next_stateful++];
      std::optional<nb::object> r = write_back(s.state, v, "state_dict[" + Repr(item[0]) + "]");
      s.object.attr("load_state_dict")(r ? *r : s.state);
      continue;
    }
    std::optional<nb::object> r = write_back(item[1], v, "state_dict[" + Repr(item[0]) + "]");
    if (r) d[nb::object(item[0])] = *r;
  }
}

nb::object TensorToPython(const Tensor& tensor, const PyHelpers& helpers, bool torch_tensor,
                          const std::string& where) {
  static uint8_t empty_storage = 0;  // a valid address for zero-size arrays
  const size_t ndim = tensor.shape().size();
  void* data = tensor.numel() > 0 && tensor.data() ? tensor.data() : &empty_storage;
  auto* owned = new Tensor(tensor);
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<Tensor*>(p); });
  if (!torch_tensor) {
    std::optional<nb::dlpack::dtype> dt = NumpyDtype(tensor.dtype());
    if (!dt)
      throw nb::type_error((where + " is " + std::string(TorchName(tensor.dtype())) +
                            ", which numpy cannot hold: load it with tensors='torch'")
                               .c_str());
    std::vector<size_t> shape(tensor.shape().begin(), tensor.shape().end());
    std::vector<int64_t> strides(tensor.strides().begin(), tensor.strides().end());
    if (strides.size() != ndim) strides = ContiguousStrides(tensor.shape());
    nb::ndarray<nb::numpy> arr(data, ndim, shape.data(), owner, strides.data(), *dt);
    return arr.cast();
  }
  // torch: the bytes as a uint8 array, then viewed with the dtype and
  // layout in Python (DLPack lacks some of torch's dtypes).
  uint64_t extent = 0;
  if (tensor.numel() > 0) {
    Shape strides =
        tensor.strides().size() == ndim ? tensor.strides() : ContiguousStrides(tensor.shape());
    uint64_t last = 0;
    for (size_t d = 0; d < ndim; ++d)
      last += static_cast<uint64_t>(tensor.shape()[d] - 1) * static_cast<uint64_t>(strides[d]);
    extent = (last + 1) * ElementSize(tensor.dtype());
  }
  size_t shape1[1] = {static_cast<size_t>(extent)};
  nb::ndarray<nb::numpy, uint8_t> bytes(data, 1, shape1, owner);
  return helpers.torch_from_bytes(
      bytes.cast(), std::string(TorchName(tensor.dtype())), IntTuple(tensor.shape()),
      IntTuple(tensor.strides().size() == ndim ? tensor.strides()
                                               : ContiguousStrides(tensor.shape())));
}

nb::object FromValue(const Value& value, const PyHelpers& helpers, const FromValueOptions& options,
                     const std::string& where) {
  switch (value.kind()) {
    case Value::Kind::kNone:
      return nb::none();
    case Value::Kind::kBool:
      return nb::bool_(value.as_bool());
    case Value::Kind::kInt:
      return nb::int_(value.as_int());
    case Value::Kind::kFloat:
      return nb::float_(value.as_float());
    case Value::Kind::kString:
      return Utf8(value.as_string());
    case Value::Kind::kBytes:
      return nb::bytes(value.as_string().data(), value.as_string().size());
    case Value::Kind::kList:
    case Value::Kind::kTuple: {
      nb::list out;
      size_t i = 0;
      for (const Value& item : value.items())
        out.append(FromValue(item, helpers, options, where + "[" + std::to_string(i++) + "]"));
      if (value.kind() == Value::Kind::kList) return out;
      return nb::tuple(out);
    }
    case Value::Kind::kDict: {
      nb::dict out;
      const Dict& d = value.dict();
      for (size_t i = 0; i < d.size(); ++i) {
        nb::object key = FromValue(d.keys()[i], helpers, options, where);
        out[key] = FromValue(d.values()[i], helpers, options, where + "[" + Repr(key) + "]");
      }
      return out;
    }
    case Value::Kind::kTensor:
      return TensorToPython(value.tensor(), helpers, options.torch_tensors, where);
    case Value::Kind::kOpaque:
      return helpers.unpickle_opaque(
          nb::bytes(value.opaque().blob.data(), value.opaque().blob.size()),
          value.opaque().description, options.weights_only);
    case Value::Kind::kSharded:
    case Value::Kind::kStateful:
      break;
  }
  throw nb::type_error((where + ": cannot return a " + std::string(Value::KindName(value.kind())) +
                        " value to Python")
                           .c_str());
}

}  // namespace dcpp::python
