// The one place where operating-system error numbers become dcpp::Status.
#ifndef DCPP_BASE_OS_ERROR_H_
#define DCPP_BASE_OS_ERROR_H_

#include <string_view>

#include "dcpp/status.h"

namespace dcpp {

// Translates `err` (an errno value) into a Status whose message is
// "<context>: <strerror text> (errno N)". `context` should name the operation
// and the path, e.g. "open /ckpt/__0_0.distcp".
//
// Codes follow what the caller can do about the failure:
//   ENOENT, ENOTDIR                          -> NotFound
//   EEXIST                                   -> AlreadyExists
//   EACCES, EPERM, EROFS                     -> PermissionDenied
//   ENOSPC, EDQUOT, ENOMEM, EMFILE, ENFILE   -> ResourceExhausted
//   EINVAL                                   -> InvalidArgument
//   anything else (EIO, ...)                 -> Internal
// err == 0 is a caller bug; it is reported as Internal rather than OK so a
// failure is never silently dropped. Thread-safe (uses strerror_r).
Status ErrnoToStatus(int err, std::string_view context);

}  // namespace dcpp

#endif  // DCPP_BASE_OS_ERROR_H_
