// A small, strict JSON (RFC 8259) value, parser and serializer: used for
// safetensors headers, `dcpp inspect --json` and test manifests. Pure: no I/O,
// no exceptions, no global state.
//
// Numbers: an integer literal (no fraction, no exponent) that fits in int64
// is kept as int64; every other number is a double (so 1.0 stays a double and
// 2**64 becomes one). Parsing is strict: trailing garbage, a byte-order mark,
// raw control characters in strings, invalid escapes, invalid UTF-8 and lone
// surrogate escapes (\ud800 without its low half) are errors that give the
// byte offset. Objects keep insertion order and reject duplicate keys unless
// asked not to.
#ifndef DCPP_FORMAT_JSON_H_
#define DCPP_FORMAT_JSON_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "dcpp/status.h"

namespace dcpp::format::json {

class Json;
using Array = std::vector<Json>;

enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

// "null", "bool", "number", "string", "array" or "object".
std::string_view TypeName(Type type);

// A JSON object: members in insertion order, with lookup by key in O(1)
// expected time (a hash table with a per-table random key, so crafted keys
// cannot make lookups quadratic). Copyable and movable; not thread-safe for
// concurrent mutation (concurrent const use is fine).
class Object {
 public:
  using Member = std::pair<std::string, Json>;

  Object();
  Object(const Object&);
  Object(Object&&) noexcept;
  Object& operator=(const Object&);
  Object& operator=(Object&&) noexcept;
  ~Object();

  size_t size() const;  // defined below Json (see there)
  bool empty() const;

  // The value stored under `key`, or null if there is none. The pointer is
  // valid until the object is next modified.
  const Json* Find(std::string_view key) const;
  Json* Find(std::string_view key);
  bool Contains(std::string_view key) const { return Find(key) != nullptr; }

  // Stores `value` under `key`: appended if the key is new, else the old value
  // is replaced in its original position. Returns the stored value (valid
  // until the next modification).
  Json& Set(std::string key, Json value);
  // Appends `key` with `value` if the key is new and returns true; otherwise
  // changes nothing and returns false.
  bool Insert(std::string key, Json value);
  // Removes `key` if present (linear time); returns whether it was there.
  bool Erase(std::string_view key);

  // Members in insertion order. Keys are read-only so the index stays valid;
  // change values through Find or value(i).
  const std::vector<Member>& members() const { return members_; }
  std::vector<Member>::const_iterator begin() const;
  std::vector<Member>::const_iterator end() const;
  // REQUIRES: i < size().
  Json& value(size_t i);

  // Same keys with equal values; member order does not matter.
  friend bool operator==(const Object& a, const Object& b);

 private:
  size_t IndexOf(std::string_view key) const;  // members_.size() if absent
  uint64_t Hash(std::string_view key) const;
  void Rebuild(size_t slot_count);
  void AddToIndex(size_t member_index);

  std::vector<Member> members_;
  // Open-addressing table of member index + 1 (0 = empty), built only once
  // the object outgrows a linear scan. Its size is a power of two.
  std::vector<uint32_t> slots_;
  uint64_t key0_ = 0, key1_ = 0;  // hash key, chosen when the table is built
};

// A JSON value. Copyable and movable; a moved-from value is null. Values
// nested more deeply than a few thousand levels (never produced by Parse) may
// exhaust the stack when destroyed, compared or serialized.
class Json {
 public:
  Json() = default;        // null
  Json(std::nullptr_t) {}  // NOLINT: implicit by design
  Json(bool v) : v_(v) {}  // NOLINT
  // Any integer type except bool; unsigned values above INT64_MAX become doubles.
  template <typename T,
            std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Json(T v) {  // NOLINT
    if constexpr (std::is_unsigned_v<T> && sizeof(T) >= sizeof(int64_t)) {
      if (v > static_cast<T>(INT64_MAX)) {
        v_ = static_cast<double>(v);
        return;
      }
    }
    v_ = static_cast<int64_t>(v);
  }
  Json(double v) : v_(v) {}                         // NOLINT
  Json(float v) : v_(static_cast<double>(v)) {}     // NOLINT
  Json(std::string v) : v_(std::move(v)) {}         // NOLINT
  Json(std::string_view v) : v_(std::string(v)) {}  // NOLINT
  Json(const char* v) : v_(std::string(v)) {}       // NOLINT; REQUIRES: v != nullptr
  Json(Array v) : v_(std::move(v)) {}               // NOLINT
  Json(Object v) : v_(std::move(v)) {}              // NOLINT

  Json(const Json&) = default;
  Json& operator=(const Json&) = default;
  Json(Json&& other) noexcept : v_(std::move(other.v_)) { other.v_ = nullptr; }
  Json& operator=(Json&& other) noexcept {
    if (this != &other) {
      v_ = std::move(other.v_);
      other.v_ = nullptr;
    }
    return *this;
  }

  Type type() const;
  bool is_null() const { return std::holds_alternative<std::nullptr_t>(v_); }
  bool is_bool() const { return std::holds_alternative<bool>(v_); }
  bool is_number() const { return is_int() || is_double(); }
  bool is_int() const { return std::holds_alternative<int64_t>(v_); }  // an int64 number
  bool is_double() const { return std::holds_alternative<double>(v_); }
  bool is_string() const { return std::holds_alternative<std::string>(v_); }
  bool is_array() const { return std::holds_alternative<Array>(v_); }
  bool is_object() const { return std::holds_alternative<Object>(v_); }

  // Checked accessors: a pointer to the value if it has that type, else null.
  // Pointers stay valid until this value is modified or destroyed.
  const bool* GetBool() const { return std::get_if<bool>(&v_); }
  // Only numbers held as int64 (never a double such as 1.0 or 1e3).
  const int64_t* GetInt() const { return std::get_if<int64_t>(&v_); }
  const double* GetDouble() const { return std::get_if<double>(&v_); }
  const std::string* GetString() const { return std::get_if<std::string>(&v_); }
  const Array* GetArray() const { return std::get_if<Array>(&v_); }
  Array* GetArray() { return std::get_if<Array>(&v_); }
  const Object* GetObject() const { return std::get_if<Object>(&v_); }
  Object* GetObject() { return std::get_if<Object>(&v_); }
  // Any number as a double (int64 values are converted, possibly rounding);
  // false if this is not a number.
  bool GetNumber(double* out) const;

  // The member `key` of an object; null if this is not an object or has no
  // such member.
  const Json* Find(std::string_view key) const;
  Json* Find(std::string_view key);

  // Same type and value (int64 1 and double 1.0 differ; NaN differs from
  // itself); objects compare without regard to member order.
  friend bool operator==(const Json& a, const Json& b) { return a.v_ == b.v_; }

 private:
  std::variant<std::nullptr_t, bool, int64_t, double, std::string, Array, Object> v_;
};

// Nesting deeper than this is refused whatever ParseOptions::max_depth says.
inline constexpr int kMaxDepthLimit = 1000;

struct ParseOptions {
  // Texts longer than this are refused (ResourceExhausted) before parsing.
  // The default is safetensors' header cap.
  size_t max_size = 100'000'000;
  // Arrays and objects nested deeper than this are refused (ResourceExhausted);
  // clamped to [1, kMaxDepthLimit].
  int max_depth = 128;
  // More values than this in total (ResourceExhausted) bounds memory: a value
  // in memory is far larger than its shortest text ("0,").
  size_t max_values = 10'000'000;
  // false: a repeated key in one object is an error. true: the last value
  // wins, at the key's first position (Python's json behaviour).
  bool allow_duplicate_keys = false;
};

// Parses one JSON text (RFC 8259; surrounding whitespace allowed, nothing
// else). DataLoss for malformed text, with the byte offset and what was
// expected; ResourceExhausted when a ParseOptions cap is hit. Numbers whose
// magnitude exceeds a double's range are errors; ones too small round to 0.
// Thread-safe.
Result<Json> Parse(std::string_view text, const ParseOptions& options = {});

// Serializes `value`. indent < 0: compact, no whitespace at all. indent >= 0:
// one member or element per line, nested `indent` spaces deeper, ": " after
// keys (Python's json.dumps(indent=n) layout). int64 values print as integers;
// doubles print in the shortest form that parses back to the same double, with
// ".0" added when that form looks like an integer (so they stay doubles), and
// NaN and infinities print as null. Strings are escaped as RFC 8259 requires
// (quote, backslash, control characters) and otherwise kept as UTF-8; bytes
// that are not valid UTF-8 are written as U+FFFD so the output is always
// valid JSON. Parse(Serialize(v)) == v for every value Parse can return.
std::string Serialize(const Json& value, int indent = -1);

// Defined here, where Json is complete, rather than inside Object: clang 14
// with libstdc++ 12 in C++20 mode instantiates these constexpr vector members
// on the spot, which fails while Json is incomplete.
inline size_t Object::size() const { return members_.size(); }
inline bool Object::empty() const { return members_.empty(); }
inline std::vector<Object::Member>::const_iterator Object::begin() const {
  return members_.begin();
}
inline std::vector<Object::Member>::const_iterator Object::end() const { return members_.end(); }

}  // namespace dcpp::format::json

#endif  // DCPP_FORMAT_JSON_H_
