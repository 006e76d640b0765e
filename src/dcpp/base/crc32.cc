#include "dcpp/base/crc32.h"

#include <zlib.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace dcpp {
namespace {

#if defined(__x86_64__)
// CRC-32 by carry-less multiplication: folds 64 bytes per step with PCLMULQDQ
// (Gopal et al., "Fast CRC Computation for Generic Polynomials Using
// PCLMULQDQ Instruction", Intel, 2009), several times faster than zlib's
// table-driven loop, so that checksumming a save costs little next to the
// write. Constants are the bit-reflected fold and Barrett constants for the
// IEEE polynomial. `state` is the raw (un-inverted) CRC register; `n` is a
// multiple of 16 and at least 64.
#define DCPP_PCLMUL __attribute__((target("pclmul,sse4.1")))
DCPP_PCLMUL inline __m128i Load16(const uint8_t* q) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(q));
}
// x * k (the high and low halves by their constants), plus `next`.
DCPP_PCLMUL inline __m128i Fold(__m128i x, __m128i k, __m128i next) {
  return _mm_xor_si128(
      _mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), next);
}

DCPP_PCLMUL uint32_t FoldTail(__m128i x1, __m128i x2, __m128i x3, __m128i x4, const uint8_t* p,
                              size_t n);

DCPP_PCLMUL uint32_t FoldPclmul(const uint8_t* p, size_t n, uint32_t state) {
  const __m128i k1k2 = _mm_set_epi64x(0x1c6e41596, 0x154442bd4);
  __m128i x1 = _mm_xor_si128(Load16(p), _mm_cvtsi32_si128(static_cast<int>(state)));
  __m128i x2 = Load16(p + 16), x3 = Load16(p + 32), x4 = Load16(p + 48);
  p += 64;
  n -= 64;
  for (; n >= 64; n -= 64, p += 64) {
    x1 = Fold(x1, k1k2, Load16(p));
    x2 = Fold(x2, k1k2, Load16(p + 16));
    x3 = Fold(x3, k1k2, Load16(p + 32));
    x4 = Fold(x4, k1k2, Load16(p + 48));
  }
  return FoldTail(x1, x2, x3, x4, p, n);
}

// Folds four 16-byte accumulators (consecutive in the stream) into one, then
// the remaining `n` bytes (a multiple of 16) at `p`, and reduces to the CRC.
DCPP_PCLMUL uint32_t FoldTail(__m128i x1, __m128i x2, __m128i x3, __m128i x4, const uint8_t* p,
                              size_t n) {
  const __m128i k3k4 = _mm_set_epi64x(0x0ccaa009e, 0x1751997d0);
  const __m128i k5 = _mm_set_epi64x(0, 0x163cd6124);
  const __m128i poly_mu = _mm_set_epi64x(0x1f7011641, 0x1db710641);
  const __m128i mask32 = _mm_set_epi32(0, 0, 0, -1);
  x1 = Fold(x1, k3k4, x2);
  x1 = Fold(x1, k3k4, x3);
  x1 = Fold(x1, k3k4, x4);
  for (; n >= 16; n -= 16, p += 16) x1 = Fold(x1, k3k4, Load16(p));
  // 128 -> 64 bits.
  __m128i x = _mm_xor_si128(_mm_clmulepi64_si128(x1, k3k4, 0x10), _mm_srli_si128(x1, 8));
  // 64 -> 32 bits.
  x = _mm_xor_si128(_mm_srli_si128(x, 4), _mm_clmulepi64_si128(_mm_and_si128(x, mask32), k5, 0x00));
  // Barrett reduction.
  __m128i t = _mm_and_si128(_mm_clmulepi64_si128(_mm_and_si128(x, mask32), poly_mu, 0x10), mask32);
  x = _mm_xor_si128(x, _mm_clmulepi64_si128(t, poly_mu, 0x00));
  return static_cast<uint32_t>(_mm_extract_epi32(x, 1));
}

// The same fold four 64-byte registers wide with VPCLMULQDQ (AVX-512): 256
// bytes per step, about four times the 128-bit loop's throughput, so that
// checking CRCs while loading costs little next to the copy from the page
// cache. Fold constants for a 2048-bit distance, x^(2048+32) and
// x^(2048-32) mod P, bit-reflected and shifted as k1/k2 are. `n` is a
// multiple of 16 and at least 256.
#define DCPP_VPCLMUL __attribute__((target("vpclmulqdq,avx512f,avx512vl,pclmul,sse4.1")))
DCPP_VPCLMUL inline __m512i Load64(const uint8_t* q) { return _mm512_loadu_si512(q); }
DCPP_VPCLMUL inline __m512i Fold512(__m512i x, __m512i k, __m512i next) {
  return _mm512_ternarylogic_epi64(_mm512_clmulepi64_epi128(x, k, 0x00),
                                   _mm512_clmulepi64_epi128(x, k, 0x11), next, 0x96);
}

DCPP_VPCLMUL uint32_t FoldVpclmul(const uint8_t* p, size_t n, uint32_t state) {
  const __m512i k256 = _mm512_broadcast_i32x4(_mm_set_epi64x(0x1322d1430, 0x11542778a));
  const __m512i k64 = _mm512_broadcast_i32x4(_mm_set_epi64x(0x1c6e41596, 0x154442bd4));
  __m512i z0 = _mm512_xor_si512(Load64(p),
                                _mm512_zextsi128_si512(_mm_cvtsi32_si128(static_cast<int>(state))));
  __m512i z1 = Load64(p + 64), z2 = Load64(p + 128), z3 = Load64(p + 192);
  p += 256;
  n -= 256;
  for (; n >= 256; n -= 256, p += 256) {
    z0 = Fold512(z0, k256, Load64(p));
    z1 = Fold512(z1, k256, Load64(p + 64));
    z2 = Fold512(z2, k256, Load64(p + 128));
    z3 = Fold512(z3, k256, Load64(p + 192));
  }
  z0 = Fold512(z0, k64, z1);
  z0 = Fold512(z0, k64, z2);
  z0 = Fold512(z0, k64, z3);
  for (; n >= 64; n -= 64, p += 64) z0 = Fold512(z0, k64, Load64(p));
  return FoldTail(_mm512_extracti32x4_epi32(z0, 0), _mm512_extracti32x4_epi32(z0, 1),
                  _mm512_extracti32x4_epi32(z0, 2), _mm512_extracti32x4_epi32(z0, 3), p, n);
}

bool HaveVpclmul() {
  static const bool have = __builtin_cpu_supports("vpclmulqdq") &&
                           __builtin_cpu_supports("avx512f") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("pclmul");
  return have;
}

bool HavePclmul() {
  static const bool have = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
  return have;
}
#endif

}  // namespace

uint32_t Crc32(std::span<const uint8_t> data, uint32_t seed) {
#if defined(__x86_64__)
  if (data.size() >= 1024 && HaveVpclmul()) {
    const size_t n = data.size() & ~size_t{15};
    seed = ~FoldVpclmul(data.data(), n, ~seed);
    data = data.subspan(n);
  } else if (data.size() >= 256 && HavePclmul()) {
    const size_t n = data.size() & ~size_t{15};
    seed = ~FoldPclmul(data.data(), n, ~seed);
    data = data.subspan(n);
  }
#endif
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
