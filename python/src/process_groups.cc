#include "process_groups.h"

#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cctype>
#include <exception>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "dcpp/engine/wire.h"
#include "errors.h"

namespace nb = nanobind;

namespace dcpp::python {
namespace {

std::string TypeName(nb::handle exception) {
  return nb::cast<std::string>(nb::type_name(exception.type()));
}

// str(exception), or a placeholder when even that fails.
std::string Describe(nb::handle exception) {
  PyObject* s = PyObject_Str(exception.ptr());
  if (s == nullptr) {
    PyErr_Clear();
    return "<unprintable exception>";
  }
  Py_ssize_t size = 0;
  const char* utf8 = PyUnicode_AsUTF8AndSize(s, &size);
  std::string out = utf8 ? std::string(utf8, static_cast<size_t>(size)) : "<unprintable message>";
  if (utf8 == nullptr) PyErr_Clear();
  Py_DECREF(s);
  return out;
}

// The code named by `name` ("DATA_LOSS"), if it names one.
std::optional<StatusCode> CodeNamed(nb::handle name) {
  if (!PyUnicode_Check(name.ptr())) return std::nullopt;
  const std::string n = nb::cast<std::string>(name);
  for (int c = 1; c <= static_cast<int>(StatusCode::kDeadlineExceeded); ++c)
    if (StatusCodeName(static_cast<StatusCode>(c)) == n) return static_cast<StatusCode>(c);
  return std::nullopt;
}

bool IsInstance(nb::handle exception, PyObject* type) {
  return PyObject_IsInstance(exception.ptr(), type) == 1;
}

bool SaysTimedOut(std::string text) {
  for (char& c : text) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return text.find("timed out") != std::string::npos || text.find("timeout") != std::string::npos;
}

class PyProcessGroup final : public ProcessGroup {
 public:
  PyProcessGroup(nb::object adapter)  // GIL held
      : adapter_(std::move(adapter)),
        rank_(nb::cast<int>(adapter_.attr("rank")())),
        size_(nb::cast<int>(adapter_.attr("size")())),
        kind_(nb::cast<std::string>(adapter_.attr("kind"))) {}

  ~PyProcessGroup() override {
    if (!nb::is_alive()) {
      // The interpreter is gone: the reference cannot be dropped safely.
      (void)adapter_.release();
      return;
    }
    nb::gil_scoped_acquire gil;
    adapter_.reset();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string_view kind() const override { return kind_; }

  Status Barrier() override {
    return Call("Barrier", [&] { adapter_.attr("barrier")(); });
  }

  Result<std::vector<std::string>> Gather(std::string data, int root) override {
    DCPP_RETURN_IF_ERROR(CheckRoot("Gather", root));
    std::vector<std::string> out;
    DCPP_RETURN_IF_ERROR(Call("Gather", [&] {
      nb::object r = adapter_.attr("gather")(nb::bytes(data.data(), data.size()), root);
      out = ByteList(r, rank_ == root ? size_ : 0, "Gather");
    }));
    return out;
  }

  Result<std::string> Broadcast(std::string data, int root) override {
    DCPP_RETURN_IF_ERROR(CheckRoot("Broadcast", root));
    std::string out;
    DCPP_RETURN_IF_ERROR(Call("Broadcast", [&] {
      nb::object arg = rank_ == root ? nb::bytes(data.data(), data.size()) : nb::bytes("", 0);
      out = Bytes(adapter_.attr("broadcast")(arg, root), "Broadcast");
    }));
    return out;
  }

  Result<std::vector<std::string>> AllGather(std::string data) override {
    std::vector<std::string> out;
    DCPP_RETURN_IF_ERROR(Call("AllGather", [&] {
      nb::object r = adapter_.attr("all_gather")(nb::bytes(data.data(), data.size()));
      out = ByteList(r, size_, "AllGather");
    }));
    return out;
  }

  Result<std::string> Scatter(std::vector<std::string> parts, int root) override {
    DCPP_RETURN_IF_ERROR(CheckRoot("Scatter", root));
    std::string out;
    DCPP_RETURN_IF_ERROR(Call("Scatter", [&] {
      nb::list py_parts;
      if (rank_ == root)
        for (const std::string& p : parts) py_parts.append(nb::bytes(p.data(), p.size()));
      out = Bytes(adapter_.attr("scatter")(py_parts, root), "Scatter");
    }));
    return out;
  }

  Result<std::unique_ptr<ProcessGroup>> Duplicate() override {
    std::unique_ptr<ProcessGroup> dup;
    DCPP_RETURN_IF_ERROR(Call("Duplicate", [&] {
      nb::object d = adapter_.attr("duplicate")();
      auto g = std::make_unique<PyProcessGroup>(std::move(d));
      if (g->rank() != rank_ || g->size() != size_)
        throw std::runtime_error("the duplicate has rank " + std::to_string(g->rank()) + " of " +
                                 std::to_string(g->size()) + ", not " + std::to_string(rank_) +
                                 " of " + std::to_string(size_));
      dup = std::move(g);
    }));
    return dup;
  }

 private:
  // Every rank passes the same root, so every rank fails alike, in step.
  Status CheckRoot(const char* op, int root) const {
    if (root >= 0 && root < size_) return Status();
    return InvalidArgumentError(std::string(op) + ": root " + std::to_string(root) +
                                " is out of range for " + std::to_string(size_) + " ranks");
  }

  // Runs `fn` (Python calls) holding the GIL, turning whatever it throws
  // into a Status; see MakePyProcessGroup for the mapping.
  template <typename F>
  Status Call(const char* op, F&& fn) {
    if (!broken_.ok()) return broken_;
    if (!nb::is_alive()) return AbortedError(std::string(op) + ": the Python interpreter has exited");
    const std::string where = kind_ + " process group: " + op;
    nb::gil_scoped_acquire gil;
    try {
      fn();
      return Status();
    } catch (nb::python_error& e) {
      nb::handle exc = e.value();
      const std::string text = TypeName(exc) + ": " + Describe(exc);
      if (nb::hasattr(exc, "code") && nb::hasattr(exc, "broken")) {  // dcpp._groups.GroupError
        std::optional<StatusCode> code = CodeNamed(exc.attr("code"));
        Status s(code.value_or(StatusCode::kInternal), where + ": " + Describe(exc));
        if (PyObject_IsTrue(exc.attr("broken").ptr()) == 1) return Break(s);
        return s;
      }
      if (!IsInstance(exc, PyExc_Exception))  // KeyboardInterrupt, SystemExit
        return Break(AbortedError(where + " interrupted: " + text));
      if (IsInstance(exc, PyExc_TimeoutError) || SaysTimedOut(text))
        return Break(DeadlineExceededError(where + " failed: " + text));
      if (IsInstance(exc, PyExc_RuntimeError) || IsInstance(exc, PyExc_OSError))
        return Break(AbortedError(where + " failed: " + text));
      return Break(InternalError(where + " failed: " + text));
    } catch (const std::exception& e) {
      return Break(InternalError(where + " failed: " + e.what()));
    }
  }

  Status Break(Status status) {
    broken_ = AbortedError(kind_ + " process group is unusable after an earlier failure: " +
                           status.message());
    return status;
  }

  static std::string Bytes(nb::handle b, const char* op) {
    if (!PyBytes_Check(b.ptr()))
      throw std::runtime_error(std::string(op) + " returned a " +
                               nb::cast<std::string>(nb::type_name(b.type())) + ", not bytes");
    return std::string(PyBytes_AS_STRING(b.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(b.ptr())));
  }

  static std::vector<std::string> ByteList(nb::handle list, int expected, const char* op) {
    std::vector<std::string> out;
    for (nb::handle item : list) out.push_back(Bytes(item, op));
    if (out.size() != static_cast<size_t>(expected))
      throw std::runtime_error(std::string(op) + " returned " + std::to_string(out.size()) +
                               " payloads, expected " + std::to_string(expected));
    return out;
  }

  nb::object adapter_;
  const int rank_;
  const int size_;
  const std::string kind_;
  Status broken_;
};

}  // namespace

std::unique_ptr<ProcessGroup> MakePyProcessGroup(nb::handle adapter) {
  if (adapter.is_none()) return nullptr;
  return std::make_unique<PyProcessGroup>(nb::borrow(adapter));
}

Status StatusFromPython(const nb::python_error& error) {
  nb::handle exc = error.value();
  std::string message = Describe(exc);
  std::optional<StatusCode> code;
  // dcpp's own exceptions carry their code; their message is already ours.
  if (nb::hasattr(exc, "code")) code = CodeNamed(exc.attr("code"));
  if (code) return Status(*code, message);
  message = TypeName(exc) + ": " + message;
  struct Mapping {
    PyObject* type;
    StatusCode code;
  };
  const Mapping mappings[] = {
      {PyExc_FileNotFoundError, StatusCode::kNotFound},
      {PyExc_FileExistsError, StatusCode::kAlreadyExists},
      {PyExc_PermissionError, StatusCode::kPermissionDenied},
      {PyExc_TimeoutError, StatusCode::kDeadlineExceeded},
      {PyExc_NotImplementedError, StatusCode::kUnimplemented},
      {PyExc_MemoryError, StatusCode::kResourceExhausted},
      {PyExc_TypeError, StatusCode::kInvalidArgument},
      {PyExc_ValueError, StatusCode::kInvalidArgument},
  };
  for (const Mapping& m : mappings)
    if (IsInstance(exc, m.type)) return Status(m.code, std::move(message));
  return InternalError(std::move(message));
}

void LocalStep::KeepCurrentException() {
  try {
    throw;
  } catch (nb::python_error& e) {
    error_.emplace(std::move(e));
    return;
  } catch (nb::builtin_exception& e) {
    PyObject* type = PyExc_RuntimeError;
    switch (e.type()) {
      case nb::exception_type::type_error: type = PyExc_TypeError; break;
      case nb::exception_type::value_error: type = PyExc_ValueError; break;
      case nb::exception_type::key_error: type = PyExc_KeyError; break;
      case nb::exception_type::index_error: type = PyExc_IndexError; break;
      case nb::exception_type::attribute_error: type = PyExc_AttributeError; break;
      case nb::exception_type::import_error: type = PyExc_ImportError; break;
      case nb::exception_type::buffer_error: type = PyExc_BufferError; break;
      default: break;
    }
    PyErr_SetString(type, e.what());
  } catch (const std::bad_alloc&) {
    PyErr_SetString(PyExc_MemoryError, "out of memory");
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_RuntimeError, e.what());
  }
  error_.emplace();  // fetches the error just set
}

void LocalStep::Fail(nb::handle exception) {
  if (error_) return;
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exception.ptr())), exception.ptr());
  error_.emplace();  // fetches (and clears) the error just set
  if (!Shared()) {
    nb::python_error e = std::move(*error_);
    error_.reset();
    throw e;
  }
}

void LocalStep::Agree(std::string_view what) {
  if (!Shared()) return;
  const Status local = error_ ? StatusFromPython(*error_) : Status();
  Status all;
  {
    nb::gil_scoped_release release;
    all = AgreeOnStatus(group_, what, local);
  }
  if (all.ok()) return;
  if (error_) ThrowStatusWithCause(all, error_->value());
  ThrowStatus(all);
}

Status AgreeOnStatus(ProcessGroup* group, std::string_view what, Status local) {
  if (group == nullptr || group->size() <= 1) return local;
  Result<std::vector<std::string>> all = group->AllGather(engine::EncodeStatus(local));
  if (!all.ok()) return all.status();
  return engine::CombineRankFailures(what, engine::DecodeStatuses(*all));
}

namespace {

// Holds the group for _ProcessGroup; the group itself is not a Python type.
struct GroupHandle {
  std::unique_ptr<ProcessGroup> group;

  ProcessGroup& get() {
    if (!group) throw nb::value_error("the group was closed");
    return *group;
  }
};

std::vector<std::string> Strings(const std::vector<nb::bytes>& parts) {
  std::vector<std::string> out;
  for (const nb::bytes& b : parts) out.emplace_back(b.c_str(), b.size());
  return out;
}

nb::bytes ToBytes(const std::string& s) { return nb::bytes(s.data(), s.size()); }

nb::list ToBytesList(const std::vector<std::string>& v) {
  nb::list out;
  for (const std::string& s : v) out.append(ToBytes(s));
  return out;
}

}  // namespace

void BindProcessGroups(nb::module_& m) {
  nb::class_<GroupHandle>(m, "_ProcessGroup")
      .def("__init__",
           [](GroupHandle* self, nb::handle adapter) {
             if (adapter.is_none()) throw nb::type_error("adapter must not be None");
             new (self) GroupHandle{MakePyProcessGroup(adapter)};
           })
      .def_prop_ro("rank", [](GroupHandle& g) { return g.get().rank(); })
      .def_prop_ro("size", [](GroupHandle& g) { return g.get().size(); })
      .def_prop_ro("kind", [](GroupHandle& g) { return std::string(g.get().kind()); })
      .def("barrier",
           [](GroupHandle& g) {
             ProcessGroup& pg = g.get();
             Status s;
             {
               nb::gil_scoped_release release;
               s = pg.Barrier();
             }
             ThrowIfError(s);
           })
      .def("gather",
           [](GroupHandle& g, nb::bytes data, int root) {
             ProcessGroup& pg = g.get();
             std::string d(data.c_str(), data.size());
             Result<std::vector<std::string>> r = [&] {
               nb::gil_scoped_release release;
               return pg.Gather(std::move(d), root);
             }();
             return ToBytesList(ValueOrThrow(std::move(r)));
           })
      .def("broadcast",
           [](GroupHandle& g, nb::bytes data, int root) {
             ProcessGroup& pg = g.get();
             std::string d(data.c_str(), data.size());
             Result<std::string> r = [&] {
               nb::gil_scoped_release release;
               return pg.Broadcast(std::move(d), root);
             }();
             return ToBytes(ValueOrThrow(std::move(r)));
           })
      .def("all_gather",
           [](GroupHandle& g, nb::bytes data) {
             ProcessGroup& pg = g.get();
             std::string d(data.c_str(), data.size());
             Result<std::vector<std::string>> r = [&] {
               nb::gil_scoped_release release;
               return pg.AllGather(std::move(d));
             }();
             return ToBytesList(ValueOrThrow(std::move(r)));
           })
      .def("scatter",
           [](GroupHandle& g, std::vector<nb::bytes> parts, int root) {
             ProcessGroup& pg = g.get();
             std::vector<std::string> p = Strings(parts);
             Result<std::string> r = [&] {
               nb::gil_scoped_release release;
               return pg.Scatter(std::move(p), root);
             }();
             return ToBytes(ValueOrThrow(std::move(r)));
           })
      .def("duplicate",
           [](GroupHandle& g) {
             ProcessGroup& pg = g.get();
             Result<std::unique_ptr<ProcessGroup>> r = [&] {
               nb::gil_scoped_release release;
               return pg.Duplicate();
             }();
             auto* h = new GroupHandle{ValueOrThrow(std::move(r))};
             return h;
           },
           nb::rv_policy::take_ownership)
      .def("close", [](GroupHandle& g) { g.group.reset(); });
}

}  // namespace dcpp::python
