#include "dcpp/base/crc32.h"

#include <gtest/gtest.h>
#include <zlib.h>

#include <random>
#include <vector>

namespace dcpp {
namespace {

// Every size and alignment, across the zlib, 128-bit and 512-bit paths,
// agrees with zlib's crc32, from any seed.
TEST(Crc32Test, MatchesZlibForAnySizeOffsetAndSeed) {
  std::mt19937_64 rng(1);
  std::vector<uint8_t> buf(1 << 20);
  for (auto& c : buf) c = static_cast<uint8_t>(rng());
  for (int t = 0; t < 2000; ++t) {
    const size_t off = rng() % 64;
    const size_t len = t < 1200 ? static_cast<size_t>(t) : rng() % (buf.size() - 64);
    const uint32_t seed = t % 3 == 0 ? 0 : static_cast<uint32_t>(rng());
    const uint32_t want = static_cast<uint32_t>(crc32(seed, buf.data() + off, static_cast<uInt>(len)));
    ASSERT_EQ(Crc32({buf.data() + off, len}, seed), want) << "offset " << off << " length " << len;
  }
}

TEST(Crc32Test, PiecesCombine) {
  std::vector<uint8_t> a(5000, 1), b(70000, 2);
  std::vector<uint8_t> ab(a);
  ab.insert(ab.end(), b.begin(), b.end());
  EXPECT_EQ(Crc32Combine(Crc32(a), Crc32(b), b.size()), Crc32(ab));
  EXPECT_EQ(Crc32(b, Crc32(a)), Crc32(ab));
}

}  // namespace
}  // namespace dcpp
