// The one place where dcpp::Status becomes a Python exception.
//
// Every exception dcpp raises derives from dcpp.DcppError and, where Python
// has a matching built-in, from that built-in too, so callers can catch
// either (a missing checkpoint is both a dcpp.NotFoundError and a
// FileNotFoundError):
//
//   StatusCode          Python class                  also a
//   kInvalidArgument    dcpp.InvalidArgumentError     ValueError
//   kNotFound           dcpp.NotFoundError            FileNotFoundError
//   kAlreadyExists      dcpp.AlreadyExistsError       FileExistsError
//   kDataLoss           dcpp.CorruptCheckpointError   ValueError
//   kResourceExhausted  dcpp.ResourceExhaustedError   MemoryError
//   kAborted            dcpp.AbortedError             -
//   kUnimplemented      dcpp.UnimplementedError       NotImplementedError
//   kInternal           dcpp.InternalError            -
//   kPermissionDenied   dcpp.PermissionDeniedError    PermissionError
//   kDeadlineExceeded   dcpp.DeadlineExceededError    TimeoutError
//
// The exception's message is the Status message (which names the file, FQN
// or rank); its `code` attribute is the StatusCode name ("DATA_LOSS").
#ifndef DCPP_PYTHON_ERRORS_H_
#define DCPP_PYTHON_ERRORS_H_

#include <nanobind/nanobind.h>

#include "dcpp/status.h"

namespace dcpp::python {

// Creates the exception classes as attributes of `m`. Call once, from the
// module's init function, before anything can call ThrowStatus.
void RegisterErrors(nanobind::module_& m);

// Makes std::bad_alloc and std::length_error escaping any binding raise
// dcpp.ResourceExhaustedError (a MemoryError), as a ResourceExhausted
// status does. Call once, from the module's init function.
void RegisterExceptionTranslator();

// Raises the exception for `status` (REQUIRES: !status.ok()): sets the
// Python error indicator and throws nanobind::python_error, which nanobind
// hands back to Python. Needs the GIL.
[[noreturn]] void ThrowStatus(const Status& status);

// As ThrowStatus, with `cause` (an exception object) as the raised
// exception's __cause__: the error one rank hit, inside the error every rank
// raises for it.
[[noreturn]] void ThrowStatusWithCause(const Status& status, nanobind::handle cause);

// Returns the value of `result`, or raises as ThrowStatus does.
template <typename T>
T ValueOrThrow(Result<T> result) {
  if (!result.ok()) ThrowStatus(result.status());
  return std::move(result).value();
}

inline void ThrowIfError(const Status& status) {
  if (!status.ok()) ThrowStatus(status);
}

}  // namespace dcpp::python

#endif  // DCPP_PYTHON_ERRORS_H_
