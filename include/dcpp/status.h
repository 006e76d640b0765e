// Status and Result<T>: how every dcpp function reports failure.
//
// dcpp never throws across its API and never aborts on bad input. A function
// that can fail returns Status (no value) or Result<T> (a value or a Status).
// Codes are few and chosen by what the caller should do next; the message
// names the file, tensor FQN or rank involved.
#ifndef DCPP_STATUS_H_
#define DCPP_STATUS_H_

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace dcpp {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument = 1,    // the caller asked for something wrong: fix the call
  kNotFound = 2,           // a file, directory or key does not exist
  kAlreadyExists = 3,      // refusing to replace something (e.g. overwrite=false)
  kDataLoss = 4,           // stored bytes are corrupt or truncated
  kResourceExhausted = 5,  // out of memory, disk space, or a size cap was hit
  kAborted = 6,            // a peer rank failed; this rank stopped with it
  kUnimplemented = 7,      // valid input that dcpp does not support (yet)
  kInternal = 8,           // a bug in dcpp, or an unexpected OS failure
  kPermissionDenied = 9,   // the OS refused access
  kDeadlineExceeded = 10,  // a collective or operation timed out
};

// Human-readable name of a code, e.g. "DATA_LOSS".
std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  // An OK status.
  Status() = default;
  Status(StatusCode code, std::string message);

  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

  // "DATA_LOSS: <message>", or "OK".
  std::string ToString() const;

  // Returns this status with "context: " prepended to the message; OK stays OK.
  // Add context once, where it is known (the file, the FQN, the rank).
  Status WithContext(std::string_view context) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

Status InvalidArgumentError(std::string message);
Status NotFoundError(std::string message);
Status AlreadyExistsError(std::string message);
Status DataLossError(std::string message);
Status ResourceExhaustedError(std::string message);
Status AbortedError(std::string message);
Status UnimplementedError(std::string message);
Status InternalError(std::string message);
Status PermissionDeniedError(std::string message);
Status DeadlineExceededError(std::string message);

// A value of type T, or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "Result built from an OK Status");
    if (std::get<Status>(v_).ok()) v_ = Status(StatusCode::kInternal, "Result from OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // OK when a value is held.
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }

  // REQUIRES: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace dcpp

#define DCPP_CONCAT_INNER_(a, b) a##b
#define DCPP_CONCAT_(a, b) DCPP_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (a Status) is not OK.
#define DCPP_RETURN_IF_ERROR(expr)                   \
  do {                                               \
    ::dcpp::Status dcpp_status_ = (expr);            \
    if (!dcpp_status_.ok()) return dcpp_status_;     \
  } while (0)

// `lhs` = the value of `rexpr` (a Result<T>), or returns its Status.
#define DCPP_ASSIGN_OR_RETURN(lhs, rexpr) \
  DCPP_ASSIGN_OR_RETURN_IMPL_(DCPP_CONCAT_(dcpp_result_, __LINE__), lhs, rexpr)
#define DCPP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(tmp).value()

#endif  // DCPP_STATUS_H_
