// The one place where C++ exceptions become Status values.
//
// dcpp reports failure as Status and never lets an exception cross its API
// (include/dcpp/status.h). The library itself throws nothing, but the
// standard library does: std::bad_alloc when memory runs out (a hostile file
// that passes every size cap can still exhaust a small RLIMIT_AS),
// std::length_error, std::system_error from std::thread. Every entry point
// (Save, Load, LoadAll, ReadMetadata, the tools functions, each worker task
// of ParallelFor, the CLI's main and the Python bindings) runs its body
// through CatchExceptions, so such an exception becomes a Status naming the
// operation instead of std::terminate (exit 134) or a stray Python
// MemoryError without context.
#ifndef DCPP_BASE_EXCEPTION_BARRIER_H_
#define DCPP_BASE_EXCEPTION_BARRIER_H_

#include <string_view>
#include <utility>

#include "dcpp/status.h"

namespace dcpp {

// The Status for the exception now being handled. REQUIRES: called inside a
// catch block. ResourceExhausted for std::bad_alloc and std::length_error (a
// container asked for more than it can hold: an allocation that could never
// succeed), Internal for any other exception; the message starts with
// `operation` (e.g. "load /ckpt") and, for std::exception, carries what().
// Never throws: when even the message cannot be allocated it returns a
// status whose message fits the string's inline buffer.
Status StatusFromCurrentException(std::string_view operation) noexcept;

// Runs fn() and returns what it returns (a Status or a Result<T>), or the
// Status of an exception escaping it (StatusFromCurrentException).
template <typename Fn>
auto CatchExceptions(std::string_view operation, Fn&& fn) noexcept -> decltype(fn()) {
  try {
    return std::forward<Fn>(fn)();
  } catch (...) {
    return StatusFromCurrentException(operation);
  }
}

}  // namespace dcpp

#endif  // DCPP_BASE_EXCEPTION_BARRIER_H_
