#include "dcpp/base/crc32.h"

#include <zlib.h>

#include <algorithm>
#include <limits>
#include <type_traits>

namespace dcpp {

uint32_t Crc32(std::span<const uint8_t> data, uint32_t seed) {
  // zlib's crc32 takes a uInt length; feed it at most 1 GiB at a time.
  constexpr size_t kMaxChunk = size_t{1} << 30;
  uLong crc = seed;
  while (!data.empty()) {
    const size_t n = std::min(data.size(), kMaxChunk);
    crc = crc32(crc, data.data(), static_cast<uInt>(n));
    data = data.subspan(n);
  }
  return static_cast<uint32_t>(crc);
}

uint32_t Crc32Combine(uint32_t a, uint32_t b, uint64_t len_b) {
  // crc32_combine(a, b, n) == shift(a, n) ^ b, and shift(a, n) is
  // crc32_combine(a, 0, n); shifts compose, so a length too large for
  // z_off_t is applied in pieces that fit.
  using Off = z_off_t;
  static_assert(std::is_signed_v<Off>);
  constexpr uint64_t kMaxStep = static_cast<uint64_t>(std::numeric_limits<Off>::max());
  uLong shifted = a;
  while (len_b > kMaxStep) {
    shifted = crc32_combine(shifted, 0, static_cast<Off>(kMaxStep));
    len_b -= kMaxStep;
  }
  shifted = crc32_combine(shifted, 0, static_cast<Off>(len_b));
  return static_cast<uint32_t>(shifted ^ b);
}

}  // namespace dcpp
