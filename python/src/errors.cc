#include "errors.h"

#include <array>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "dcpp/base/exception_barrier.h"

namespace nb = nanobind;

namespace dcpp::python {
namespace {

struct ErrorClass {
  StatusCode code;
  const char* name;   // attribute of the module
  PyObject* builtin;  // second base, or null
  const char* doc;
};

// Filled by RegisterErrors; the classes live as long as the interpreter
// (the module holds a reference too).
std::array<PyObject*, 11> g_classes{};
PyObject* g_base = nullptr;

}  // namespace

void RegisterErrors(nb::module_& m) {
  g_base = PyErr_NewExceptionWithDoc(
      "dcpp.DcppError",
      "Base class of every error dcpp raises. `code` is the status code name "
      "(e.g. 'DATA_LOSS'); the message names the file, key (FQN) or rank involved.",
      PyExc_Exception, nullptr);
  if (g_base == nullptr) throw nb::python_error();
  m.attr("DcppError") = nb::handle(g_base);

  const ErrorClass classes[] = {
      {StatusCode::kInvalidArgument, "InvalidArgumentError", PyExc_ValueError,
       "The call asked for something invalid (bad option, dtype or shape mismatch, ...)."},
      {StatusCode::kNotFound, "NotFoundError", PyExc_FileNotFoundError,
       "A checkpoint, file or key does not exist."},
      {StatusCode::kAlreadyExists, "AlreadyExistsError", PyExc_FileExistsError,
       "Refusing to replace something that exists (e.g. overwrite=False)."},
      {StatusCode::kDataLoss, "CorruptCheckpointError", PyExc_ValueError,
       "The stored bytes are corrupt or truncated. A ValueError too, like the errors "
       "torch and pickle raise for malformed input."},
      {StatusCode::kResourceExhausted, "ResourceExhaustedError", PyExc_MemoryError,
       "Out of memory or disk space, or a size limit was hit."},
      {StatusCode::kAborted, "AbortedError", nullptr,
       "A peer rank failed; this rank stopped with it."},
      {StatusCode::kUnimplemented, "UnimplementedError", PyExc_NotImplementedError,
       "Valid input that dcpp does not support."},
      {StatusCode::kInternal, "InternalError", nullptr,
       "A bug in dcpp, or an unexpected operating system failure."},
      {StatusCode::kPermissionDenied, "PermissionDeniedError", PyExc_PermissionError,
       "The operating system refused access."},
      {StatusCode::kDeadlineExceeded, "DeadlineExceededError", PyExc_TimeoutError,
       "A collective or operation timed out."},
  };
  for (const ErrorClass& c : classes) {
    nb::object bases = c.builtin
                           ? nb::object(nb::make_tuple(nb::handle(g_base), nb::handle(c.builtin)))
                           : nb::borrow(g_base);
    std::string qualified = std::string("dcpp.") + c.name;
    PyObject* cls = PyErr_NewExceptionWithDoc(qualified.c_str(), c.doc, bases.ptr(), nullptr);
    if (cls == nullptr) throw nb::python_error();
    g_classes[static_cast<size_t>(c.code)] = cls;
    m.attr(c.name) = nb::handle(cls);
  }
}

namespace {

// Sets the Python error indicator for `status`. When building the exception
// fails, Python's own error (a MemoryError, say) is left set instead.
void SetStatusError(const Status& status) {
  size_t index = static_cast<size_t>(status.code());
  PyObject* cls =
      index < g_classes.size() && g_classes[index] != nullptr ? g_classes[index] : g_base;
  // Messages can carry file names that are not valid UTF-8.
  nb::object message = nb::steal(PyUnicode_DecodeUTF8(
      status.message().data(), static_cast<Py_ssize_t>(status.message().size()), "replace"));
  if (!message.is_valid()) return;
  nb::object exc = nb::steal(PyObject_CallOneArg(cls, message.ptr()));
  if (!exc.is_valid()) return;
  std::string_view code = StatusCodeName(status.code());
  nb::object code_str = nb::steal(PyUnicode_FromStringAndSize(code.data(), code.size()));
  if (!code_str.is_valid() || PyObject_SetAttrString(exc.ptr(), "code", code_str.ptr()) != 0)
    return;
  PyErr_SetObject(cls, exc.ptr());
}

}  // namespace

void ThrowStatus(const Status& status) {
  SetStatusError(status);
  throw nb::python_error();
}

void ThrowStatusWithCause(const Status& status, nb::handle cause) {
  SetStatusError(status);
  nb::python_error raised;  // takes the error just set
  PyException_SetCause(raised.value().ptr(), cause.inc_ref().ptr());
  raised.restore();
  throw nb::python_error();
}

void RegisterExceptionTranslator() {
  // Out of memory anywhere in a binding (converting a state dict, building
  // results) raises dcpp.ResourceExhaustedError like the library's own
  // ResourceExhausted statuses; other C++ exceptions keep nanobind's
  // mapping (the bindings raise TypeError and ValueError on purpose).
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const std::bad_alloc&) {
      SetStatusError(StatusFromCurrentException("dcpp"));
    } catch (const std::length_error&) {
      SetStatusError(StatusFromCurrentException("dcpp"));
    }
  });
}

}  // namespace dcpp::python
