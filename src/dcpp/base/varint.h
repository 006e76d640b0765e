// LEB128 varints: an unsigned 64-bit integer as 1 to 10 bytes, 7 bits a
// byte, low bits first, the high bit set on every byte but the last. The
// one codec for the compact byte strings dcpp builds itself (messages
// between ranks, save plans' encoded paths); never part of a file format.
// Header-only, as the readers sit in hot decoding loops.
#ifndef DCPP_BASE_VARINT_H_
#define DCPP_BASE_VARINT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dcpp {

// Appends `v` to *out (at most 10 bytes). Any value is accepted.
inline void PutVarint(std::string* out, uint64_t v) {
  char buf[10];
  size_t n = 0;
  while (v >= 0x80) {
    buf[n++] = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  buf[n++] = static_cast<char>(v);
  out->append(buf, n);
}

namespace varint_internal {
// GetVarint without the fast path.
inline bool GetVarintSlow(std::string_view s, size_t* pos, uint64_t* v) {
  uint64_t out = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= s.size()) return false;
    const auto b = static_cast<uint8_t>(s[(*pos)++]);
    if (shift == 63 && b > 1) return false;  // beyond 64 bits
    out |= uint64_t{b & 0x7Fu} << shift;
    if (b < 0x80) {
      *v = out;
      return true;
    }
  }
  return false;
}
}  // namespace varint_internal

// Reads the varint at s[*pos] into *v and advances *pos past it. False on
// bad input: `s` ends inside the varint, or it does not fit 64 bits (more
// than 10 bytes, or a 10th byte above 1); *pos is then somewhere after its
// old value and *v unchanged. REQUIRES: *pos <= s.size().
inline bool GetVarint(std::string_view s, size_t* pos, uint64_t* v) {
  // One- and two-byte values (below 2^14) are by far the most common.
  if (s.size() - *pos >= 2) {
    const auto b0 = static_cast<uint8_t>(s[*pos]);
    if (b0 < 0x80) {
      *v = b0;
      *pos += 1;
      return true;
    }
    const auto b1 = static_cast<uint8_t>(s[*pos + 1]);
    if (b1 < 0x80) {
      *v = (b0 & 0x7Fu) | (uint64_t{b1} << 7);
      *pos += 2;
      return true;
    }
  }
  return varint_internal::GetVarintSlow(s, pos, v);
}

}  // namespace dcpp

#endif  // DCPP_BASE_VARINT_H_
