#include "dcpp/base/os_error.h"

#include <cerrno>
#include <cstring>
#include <string>

namespace dcpp {
namespace {

// strerror_r has two incompatible signatures (XSI returns int, GNU returns a
// char*); these overloads pick whichever the C library declares.
[[maybe_unused]] const char* StrErrorResult(int rc, const char* buf) {
  return rc == 0 ? buf : "unknown error";
}
[[maybe_unused]] const char* StrErrorResult(const char* msg, const char* /*buf*/) { return msg; }

std::string ErrorText(int err) {
  char buf[256];
  buf[0] = '\0';
  return StrErrorResult(strerror_r(err, buf, sizeof(buf)), buf);
}

StatusCode CodeFor(int err) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return StatusCode::kNotFound;
    case EEXIST:
      return StatusCode::kAlreadyExists;
    case EACCES:
    case EPERM:
    case EROFS:
      return StatusCode::kPermissionDenied;
    case ENOSPC:
#ifdef EDQUOT
    case EDQUOT:
#endif
    case ENOMEM:
    case EMFILE:
    case ENFILE:
      return StatusCode::kResourceExhausted;
    case EINVAL:
      return StatusCode::kInvalidArgument;
    default:
      return StatusCode::kInternal;
  }
}

}  // namespace

Status ErrnoToStatus(int err, std::string_view context) {
  std::string msg(context);
  msg += ": ";
  msg += err == 0 ? std::string("error reported without an errno") : ErrorText(err);
  msg += " (errno ";
  msg += std::to_string(err);
  msg += ")";
  return Status(CodeFor(err), std::move(msg));
}

}  // namespace dcpp
