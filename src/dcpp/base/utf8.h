// The one UTF-8 encoder (for the JSON and pickle codecs and the torch
// pickle writer). Header-only: it runs once per character.
#ifndef DCPP_BASE_UTF8_H_
#define DCPP_BASE_UTF8_H_

#include <cstdint>
#include <string>

namespace dcpp {

// Appends code point `cp` to *out as UTF-8 (1 to 4 bytes). Lone surrogates
// (U+D800..U+DFFF) are encoded like any other code point, as Python's
// 'surrogatepass' does, so no input in range is rejected. REQUIRES:
// cp <= 0x10FFFF (callers decode or range-check it first); a larger value
// is written as 4 bytes that do not round-trip.
inline void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace dcpp

#endif  // DCPP_BASE_UTF8_H_
