#include "dcpp/base/exception_barrier.h"

#include <exception>
#include <new>
#include <stdexcept>
#include <string>

namespace dcpp {

Status StatusFromCurrentException(std::string_view operation) noexcept {
  StatusCode code = StatusCode::kInternal;
  try {
    std::string what;
    try {
      throw;
    } catch (const std::bad_alloc&) {
      code = StatusCode::kResourceExhausted;
      what = "out of memory";
    } catch (const std::length_error& e) {
      code = StatusCode::kResourceExhausted;
      what = std::string("out of memory (") + e.what() + ")";
    } catch (const std::exception& e) {
      what = std::string("unexpected exception: ") + e.what();
    } catch (...) {
      what = "unexpected exception of unknown type";
    }
    std::string message(operation);
    if (!message.empty()) message += ": ";
    message += what;
    return Status(code, std::move(message));
  } catch (...) {
    // Building the message failed (memory is exhausted): these messages are
    // short enough for std::string's inline buffer, so nothing is allocated.
    return Status(code, code == StatusCode::kResourceExhausted ? "out of memory" : "exception");
  }
}

}  // namespace dcpp
