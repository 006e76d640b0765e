// CRC-32 (IEEE 802.3 polynomial, as zlib and the zip format compute it).
//
// A thin wrapper over zlib so that no other file includes zlib.h, with a
// combine step so that pieces of one record checksummed on different threads
// can be joined without reading the bytes again.
#ifndef DCPP_BASE_CRC32_H_
#define DCPP_BASE_CRC32_H_

#include <cstdint>
#include <span>

namespace dcpp {

// The CRC-32 of `data`, continuing from `seed`: Crc32(b, Crc32(a)) equals the
// CRC-32 of a followed by b, and seed 0 starts a new checksum. Any size is
// accepted (inputs over 4 GiB are fed to zlib in pieces). Reads every byte of
// `data`; thread-safe (no shared state).
uint32_t Crc32(std::span<const uint8_t> data, uint32_t seed = 0);

// The CRC-32 of A followed by B, given a = Crc32(A), b = Crc32(B) and
// len_b = B's size in bytes. Any len_b is accepted, including lengths that
// do not fit zlib's z_off_t. Thread-safe.
uint32_t Crc32Combine(uint32_t a, uint32_t b, uint64_t len_b);

}  // namespace dcpp

#endif  // DCPP_BASE_CRC32_H_
