#include "dcpp/format/json.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <system_error>

#include "dcpp/base/utf8.h"

namespace dcpp::format::json {
namespace {

std::string Str(uint64_t v) { return std::to_string(v); }

// ---- Keyed hashing for Object ----

uint64_t Rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

// SipHash-1-3: a keyed hash, so that keys chosen by whoever wrote the JSON
// cannot be made to collide without knowing the table's key.
uint64_t SipHash13(uint64_t k0, uint64_t k1, std::string_view s) {
  uint64_t v0 = 0x736f6d6570736575ULL ^ k0;
  uint64_t v1 = 0x646f72616e646f6dULL ^ k1;
  uint64_t v2 = 0x6c7967656e657261ULL ^ k0;
  uint64_t v3 = 0x7465646279746573ULL ^ k1;
  const auto round = [&] {
    v0 += v1;
    v1 = Rotl(v1, 13);
    v1 ^= v0;
    v0 = Rotl(v0, 32);
    v2 += v3;
    v3 = Rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = Rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = Rotl(v1, 17);
    v1 ^= v2;
    v2 = Rotl(v2, 32);
  };
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  const size_t full = n - n % 8;
  for (size_t i = 0; i < full; i += 8) {
    uint64_t m = 0;
    for (int b = 0; b < 8; ++b) m |= uint64_t{p[i + b]} << (8 * b);
    v3 ^= m;
    round();
    v0 ^= m;
  }
  uint64_t last = uint64_t{n} << 56;
  for (size_t i = 0; i < n % 8; ++i) last |= uint64_t{p[full + i]} << (8 * i);
  v3 ^= last;
  round();
  v0 ^= last;
  v2 ^= 0xff;
  round();
  round();
  round();
  return v0 ^ v1 ^ v2 ^ v3;
}

// Objects this small are searched linearly; a table would cost more.
constexpr size_t kLinearMax = 8;

// ---- UTF-8 ----

// Length of the well-formed UTF-8 sequence starting at s[i] (1 to 4), or 0
// if it is not one (overlong forms, surrogates and code points past U+10FFFF
// are not well-formed).
size_t Utf8Length(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (s.size() - i < n) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return n;
}

// A byte for an error message: the character itself if printable ASCII.
std::string Describe(unsigned char c) {
  if (c > 0x20 && c < 0x7F && c != '\'') return std::string("'") + static_cast<char>(c) + "'";
  char buf[8];
  std::snprintf(buf, sizeof(buf), "0x%02x", c);
  return buf;
}

// ---- Parsing ----

class Parser {
 public:
  Parser(std::string_view text, const ParseOptions& options)
      : text_(text),
        options_(options),
        max_depth_(std::clamp(options.max_depth, 1, kMaxDepthLimit)) {}

  Status ParseDocument(Json* out) {
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") {
      return Error(0, "a byte-order mark is not allowed");
    }
    SkipSpace();
    DCPP_RETURN_IF_ERROR(ParseValue(out));
    SkipSpace();
    if (pos_ != text_.size()) {
      return Error(pos_, "unexpected " + Describe(Byte(pos_)) + " after the value");
    }
    return Status::Ok();
  }

 private:
  Status Error(size_t at, const std::string& what) const {
    return DataLossError("JSON: " + what + " at byte " + Str(at));
  }
  unsigned char Byte(size_t at) const { return static_cast<unsigned char>(text_[at]); }
  bool AtEnd() const { return pos_ >= text_.size(); }

  void SkipSpace() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  Status ParseValue(Json* out) {
    if (++values_ > options_.max_values) {
      return ResourceExhaustedError("JSON: more than " + Str(options_.max_values) +
                                    " values at byte " + Str(pos_));
    }
    if (AtEnd()) return Error(pos_, "unexpected end of text, expected a value");
    switch (text_[pos_]) {
      case '{':
        return ParseObject(out);
      case '[':
        return ParseArray(out);
      case '"': {
        std::string s;
        DCPP_RETURN_IF_ERROR(ParseString(&s));
        *out = Json(std::move(s));
        return Status::Ok();
      }
      case 't':
        return ParseLiteral("true", Json(true), out);
      case 'f':
        return ParseLiteral("false", Json(false), out);
      case 'n':
        return ParseLiteral("null", Json(), out);
      default:
        if (text_[pos_] == '-' || (text_[pos_] >= '0' && text_[pos_] <= '9')) {
          return ParseNumber(out);
        }
        return Error(pos_, "unexpected " + Describe(Byte(pos_)) + ", expected a value");
    }
  }

  Status ParseLiteral(std::string_view word, Json value, Json* out) {
    if (text_.substr(pos_, word.size()) != word) {
      return Error(pos_, "invalid literal, expected '" + std::string(word) + "'");
    }
    pos_ += word.size();
    *out = std::move(value);
    return Status::Ok();
  }

  Status Enter() {
    if (depth_ >= max_depth_) {
      return ResourceExhaustedError("JSON: nesting deeper than " + Str(max_depth_) +
                                    " levels at byte " + Str(pos_));
    }
    ++depth_;
    return Status::Ok();
  }

  Status ParseArray(Json* out) {
    DCPP_RETURN_IF_ERROR(Enter());
    ++pos_;  // '['
    Array items;
    SkipSpace();
    if (!AtEnd() && text_[pos_] == ']') {
      ++pos_;
    } else {
      for (;;) {
        Json item;
        DCPP_RETURN_IF_ERROR(ParseValue(&item));
        items.push_back(std::move(item));
        SkipSpace();
        if (AtEnd()) return Error(pos_, "unexpected end of text in an array");
        if (text_[pos_] == ',') {
          ++pos_;
          SkipSpace();
          continue;
        }
        if (text_[pos_] == ']') {
          ++pos_;
          break;
        }
        return Error(pos_, "expected ',' or ']' in an array, found " + Describe(Byte(pos_)));
      }
    }
    --depth_;
    *out = Json(std::move(items));
    return Status::Ok();
  }

  Status ParseObject(Json* out) {
    DCPP_RETURN_IF_ERROR(Enter());
    ++pos_;  // '{'
    Object members;
    SkipSpace();
    if (!AtEnd() && text_[pos_] == '}') {
      ++pos_;
    } else {
      for (;;) {
        if (AtEnd()) return Error(pos_, "unexpected end of text in an object");
        if (text_[pos_] != '"') {
          return Error(pos_, "expected a string key in an object, found " + Describe(Byte(pos_)));
        }
        const size_t key_at = pos_;
        std::string key;
        DCPP_RETURN_IF_ERROR(ParseString(&key));
        SkipSpace();
        if (AtEnd() || text_[pos_] != ':') return Error(pos_, "expected ':' after an object key");
        ++pos_;
        SkipSpace();
        Json value;
        DCPP_RETURN_IF_ERROR(ParseValue(&value));
        if (options_.allow_duplicate_keys) {
          members.Set(std::move(key), std::move(value));
        } else if (members.Contains(key)) {
          std::string shown = key.size() > 100 ? key.substr(0, 100) + "..." : key;
          return Error(key_at, "duplicate key " + Serialize(Json(std::move(shown))));
        } else {
          members.Insert(std::move(key), std::move(value));
        }
        SkipSpace();
        if (AtEnd()) return Error(pos_, "unexpected end of text in an object");
        if (text_[pos_] == ',') {
          ++pos_;
          SkipSpace();
          continue;
        }
        if (text_[pos_] == '}') {
          ++pos_;
          break;
        }
        return Error(pos_, "expected ',' or '}' in an object, found " + Describe(Byte(pos_)));
      }
    }
    --depth_;
    *out = Json(std::move(members));
    return Status::Ok();
  }

  // Four hex digits at `at`, or -1.
  int32_t Hex4(size_t at) const {
    if (at > text_.size() || text_.size() - at < 4) return -1;
    int32_t v = 0;
    for (size_t i = at; i < at + 4; ++i) {
      const char c = text_[i];
      int d;
      if (c >= '0' && c <= '9') {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
      } else {
        return -1;
      }
      v = v * 16 + d;
    }
    return v;
  }

  Status ParseString(std::string* out) {
    const size_t start = pos_;
    ++pos_;  // '"'
    for (;;) {
      // Copy the longest run of plain ASCII in one go.
      const size_t run = pos_;
      while (pos_ < text_.size()) {
        const unsigned char c = Byte(pos_);
        if (c < 0x20 || c == '"' || c == '\\' || c >= 0x80) break;
        ++pos_;
      }
      out->append(text_.substr(run, pos_ - run));
      if (AtEnd()) return Error(start, "unterminated string");
      const unsigned char c = Byte(pos_);
      if (c == '"') {
        ++pos_;
        return Status::Ok();
      }
      if (c < 0x20) {
        return Error(pos_, "unescaped control character " + Describe(c) + " in a string");
      }
      if (c >= 0x80) {
        const size_t n = Utf8Length(text_, pos_);
        if (n == 0) return Error(pos_, "invalid UTF-8 in a string");
        out->append(text_.substr(pos_, n));
        pos_ += n;
        continue;
      }
      // A backslash escape.
      if (text_.size() - pos_ < 2) return Error(start, "unterminated string");
      const char e = text_[pos_ + 1];
      switch (e) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          const int32_t cp = Hex4(pos_ + 2);
          if (cp < 0) return Error(pos_, "\\u must be followed by four hex digits");
          if (cp >= 0xDC00 && cp <= 0xDFFF) {
            return Error(pos_, "unpaired low surrogate escape in a string");
          }
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            const int32_t low = text_.substr(pos_ + 6, 2) == "\\u" ? Hex4(pos_ + 8) : -1;
            if (low < 0xDC00 || low > 0xDFFF) {
              return Error(pos_, "unpaired high surrogate escape in a string");
            }
            AppendUtf8(0x10000 + ((static_cast<uint32_t>(cp) - 0xD800) << 10) +
                           (static_cast<uint32_t>(low) - 0xDC00),
                       out);
            pos_ += 6;
          } else {
            AppendUtf8(static_cast<uint32_t>(cp), out);
          }
          pos_ += 4;
          break;
        }
        default:
          return Error(pos_, "invalid escape: " + Describe(Byte(pos_ + 1)) +
                                 " after a backslash in a string");
      }
      pos_ += 2;
    }
  }

  Status ParseNumber(Json* out) {
    const size_t start = pos_;
    const auto digits = [&] {
      const size_t from = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      return pos_ - from;
    };
    if (text_[pos_] == '-') ++pos_;
    if (AtEnd() || text_[pos_] < '0' || text_[pos_] > '9') {
      return Error(pos_, "expected a digit in a number");
    }
    if (text_[pos_] == '0') {
      ++pos_;  // a leading zero stands alone; "01" then fails as trailing data
    } else {
      digits();
    }
    bool integral = true;
    if (!AtEnd() && text_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) return Error(pos_, "expected a digit after '.' in a number");
      integral = false;
    }
    if (!AtEnd() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
      if (!AtEnd() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (digits() == 0) return Error(pos_, "expected a digit in a number's exponent");
      integral = false;
    }
    const std::string_view literal = text_.substr(start, pos_ - start);
    const char* first = literal.data();
    const char* last = first + literal.size();
    if (integral) {
      int64_t v = 0;
      const auto [ptr, ec] = std::from_chars(first, last, v);
      if (ec == std::errc() && ptr == last) {
        *out = Json(v);
        return Status::Ok();
      }
      // Too large for int64: fall through to a double.
    }
    double d = 0;
    const auto [ptr, ec] = std::from_chars(first, last, d);
    if (ec == std::errc() && ptr == last) {
      *out = Json(d);
      return Status::Ok();
    }
    if (ec == std::errc::result_out_of_range && ptr == last) {
      if (MagnitudeExponent(literal) > 0) {
        return Error(start, "number " + std::string(literal.substr(0, 40)) +
                                (literal.size() > 40 ? "..." : "") +
                                " is out of range of a double");
      }
      *out = Json(literal[0] == '-' ? -0.0 : 0.0);  // underflow
      return Status::Ok();
    }
    return Error(start, "malformed number");
  }

  // The power of ten of a valid number literal's leading significant digit
  // (only its sign matters: it tells overflow from underflow). 0 for zero.
  static int64_t MagnitudeExponent(std::string_view s) {
    size_t i = s[0] == '-' ? 1 : 0;
    int64_t first_digit_exp = 0;
    bool found = false;
    int64_t int_digits = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (!found && s[i] != '0') {
        found = true;
        first_digit_exp = -int_digits;  // fixed up by int_digits below
      }
      ++int_digits;
      ++i;
    }
    if (found) first_digit_exp += int_digits - 1;
    if (i < s.size() && s[i] == '.') {
      ++i;
      int64_t k = 0;
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
        ++k;
        if (!found && s[i] != '0') {
          found = true;
          first_digit_exp = -k;
        }
        ++i;
      }
    }
    if (!found) return 0;
    int64_t exp = 0;
    if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      const bool negative = i < s.size() && s[i] == '-';
      if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
      while (i < s.size()) {
        exp = std::min<int64_t>(exp * 10 + (s[i] - '0'), int64_t{1} << 40);
        ++i;
      }
      if (negative) exp = -exp;
    }
    return first_digit_exp + exp;
  }

  std::string_view text_;
  const ParseOptions& options_;
  const int max_depth_;
  size_t pos_ = 0;
  int depth_ = 0;
  size_t values_ = 0;
};

// ---- Serializing ----

void AppendString(std::string_view s, std::string* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t n = Utf8Length(s, i);
      if (n == 0) {
        out->append("\xEF\xBF\xBD");  // U+FFFD for a byte that is not UTF-8
        ++i;
      } else {
        out->append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (c < 0x20) {
          out->append("\\u00");
          out->push_back(kHex[c >> 4]);
          out->push_back(kHex[c & 0xF]);
        } else {
          out->push_back(static_cast<char>(c));
        }
    }
    ++i;
  }
  out->push_back('"');
}

void AppendDouble(double d, std::string* out) {
  if (!std::isfinite(d)) {
    out->append("null");
    return;
  }
  char buf[64];
  const auto [ptr, ec] = std::to_chars(buf, buf + sizeof(buf), d);
  const std::string_view text(buf, ec == std::errc() ? static_cast<size_t>(ptr - buf) : 0);
  out->append(text);
  if (text.find_first_of(".eE") == std::string_view::npos) out->append(".0");
}

void NewLine(int indent, int level, std::string* out) {
  out->push_back('\n');
  out->append(static_cast<size_t>(indent) * static_cast<size_t>(level), ' ');
}

void Write(const Json& v, int indent, int level, std::string* out) {
  if (v.is_null()) {
    out->append("null");
  } else if (const bool* b = v.GetBool()) {
    out->append(*b ? "true" : "false");
  } else if (const int64_t* i = v.GetInt()) {
    out->append(std::to_string(*i));
  } else if (const double* d = v.GetDouble()) {
    AppendDouble(*d, out);
  } else if (const std::string* s = v.GetString()) {
    AppendString(*s, out);
  } else if (const Array* a = v.GetArray()) {
    if (a->empty()) {
      out->append("[]");
      return;
    }
    out->push_back('[');
    for (size_t k = 0; k < a->size(); ++k) {
      if (k > 0) out->push_back(',');
      if (indent >= 0) NewLine(indent, level + 1, out);
      Write((*a)[k], indent, level + 1, out);
    }
    if (indent >= 0) NewLine(indent, level, out);
    out->push_back(']');
  } else if (const Object* o = v.GetObject()) {
    if (o->empty()) {
      out->append("{}");
      return;
    }
    out->push_back('{');
    bool first = true;
    for (const auto& [key, value] : *o) {
      if (!first) out->push_back(',');
      first = false;
      if (indent >= 0) NewLine(indent, level + 1, out);
      AppendString(key, out);
      out->append(indent >= 0 ? ": " : ":");
      Write(value, indent, level + 1, out);
    }
    if (indent >= 0) NewLine(indent, level, out);
    out->push_back('}');
  }
}

}  // namespace

std::string_view TypeName(Type type) {
  switch (type) {
    case Type::kNull:
      return "null";
    case Type::kBool:
      return "bool";
    case Type::kNumber:
      return "number";
    case Type::kString:
      return "string";
    case Type::kArray:
      return "array";
    case Type::kObject:
      return "object";
  }
  return "unknown";
}

// ---- Object ----

Object::Object() = default;
Object::Object(const Object&) = default;
Object& Object::operator=(const Object&) = default;
Object::~Object() = default;

Object::Object(Object&& other) noexcept
    : members_(std::move(other.members_)),
      slots_(std::move(other.slots_)),
      key0_(other.key0_),
      key1_(other.key1_) {
  other.members_.clear();
  other.slots_.clear();
}

Object& Object::operator=(Object&& other) noexcept {
  if (this != &other) {
    members_ = std::move(other.members_);
    slots_ = std::move(other.slots_);
    key0_ = other.key0_;
    key1_ = other.key1_;
    other.members_.clear();
    other.slots_.clear();
  }
  return *this;
}

uint64_t Object::Hash(std::string_view key) const { return SipHash13(key0_, key1_, key); }

size_t Object::IndexOf(std::string_view key) const {
  if (slots_.empty()) {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (members_[i].first == key) return i;
    }
    return members_.size();
  }
  const size_t mask = slots_.size() - 1;
  for (size_t s = Hash(key) & mask;; s = (s + 1) & mask) {
    const uint32_t slot = slots_[s];
    if (slot == 0) return members_.size();
    if (members_[slot - 1].first == key) return slot - 1;
  }
}

void Object::Rebuild(size_t slot_count) {
  if (key0_ == 0 && key1_ == 0) {
    // Unpredictable to whoever wrote the keys: where this table lives and
    // when it was built. Only lookup speed depends on it, never results.
    const uint64_t t =
        static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    const uint64_t here = reinterpret_cast<uintptr_t>(this);
    const uint64_t heap = reinterpret_cast<uintptr_t>(members_.data());
    key0_ = SipHash13(t, here, "dcpp.json.k0") | 1;
    key1_ = SipHash13(heap, t ^ here, "dcpp.json.k1");
  }
  slots_.assign(slot_count, 0);
  for (size_t i = 0; i < members_.size(); ++i) AddToIndex(i);
}

void Object::AddToIndex(size_t member_index) {
  if (slots_.empty()) {
    if (members_.size() > kLinearMax) {
      size_t n = 32;
      while (n < 2 * members_.size()) n *= 2;
      Rebuild(n);  // indexes every member, including this one
    }
    return;
  }
  if (2 * members_.size() > slots_.size()) {
    Rebuild(2 * slots_.size());
    return;
  }
  const size_t mask = slots_.size() - 1;
  size_t s = Hash(members_[member_index].first) & mask;
  while (slots_[s] != 0) s = (s + 1) & mask;
  slots_[s] = static_cast<uint32_t>(member_index + 1);
}

const Json* Object::Find(std::string_view key) const {
  const size_t i = IndexOf(key);
  return i < members_.size() ? &members_[i].second : nullptr;
}

Json* Object::Find(std::string_view key) {
  const size_t i = IndexOf(key);
  return i < members_.size() ? &members_[i].second : nullptr;
}

Json& Object::Set(std::string key, Json value) {
  const size_t i = IndexOf(key);
  if (i < members_.size()) {
    members_[i].second = std::move(value);
    return members_[i].second;
  }
  members_.emplace_back(std::move(key), std::move(value));
  AddToIndex(members_.size() - 1);
  return members_.back().second;
}

bool Object::Insert(std::string key, Json value) {
  if (IndexOf(key) < members_.size()) return false;
  members_.emplace_back(std::move(key), std::move(value));
  AddToIndex(members_.size() - 1);
  return true;
}

bool Object::Erase(std::string_view key) {
  const size_t i = IndexOf(key);
  if (i >= members_.size()) return false;
  members_.erase(members_.begin() + static_cast<std::ptrdiff_t>(i));
  if (!slots_.empty()) {
    if (members_.size() <= kLinearMax) {
      slots_.clear();
    } else {
      Rebuild(slots_.size());
    }
  }
  return true;
}

Json& Object::value(size_t i) { return members_[i].second; }

bool operator==(const Object& a, const Object& b) {
  if (a.size() != b.size()) return false;
  for (const auto& [key, value] : a) {
    const Json* other = b.Find(key);
    if (other == nullptr || !(*other == value)) return false;
  }
  return true;
}

// ---- Json ----

Type Json::type() const {
  switch (v_.index()) {
    case 0:
      return Type::kNull;
    case 1:
      return Type::kBool;
    case 2:
    case 3:
      return Type::kNumber;
    case 4:
      return Type::kString;
    case 5:
      return Type::kArray;
    default:
      return Type::kObject;
  }
}

bool Json::GetNumber(double* out) const {
  if (const int64_t* i = GetInt()) {
    *out = static_cast<double>(*i);
    return true;
  }
  if (const double* d = GetDouble()) {
    *out = *d;
    return true;
  }
  return false;
}

const Json* Json::Find(std::string_view key) const {
  const Object* o = GetObject();
  return o == nullptr ? nullptr : o->Find(key);
}

Json* Json::Find(std::string_view key) {
  Object* o = GetObject();
  return o == nullptr ? nullptr : o->Find(key);
}

Result<Json> Parse(std::string_view text, const ParseOptions& options) {
  if (text.size() > options.max_size) {
    return ResourceExhaustedError("JSON text of " + Str(text.size()) + " bytes exceeds the " +
                                  Str(options.max_size) + "-byte limit");
  }
  Json value;
  Parser parser(text, options);
  DCPP_RETURN_IF_ERROR(parser.ParseDocument(&value));
  return value;
}

std::string Serialize(const Json& value, int indent) {
  std::string out;
  Write(value, indent, 0, &out);
  return out;
}

}  // namespace dcpp::format::json
