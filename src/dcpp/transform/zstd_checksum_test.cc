// zstd frame content checksums: written by dcpp's encoder and checked by the
// decoder whenever a frame carries one.
#include <gtest/gtest.h>

#include <random>

#include "dcpp/transform/transform.h"

namespace dcpp::transform {
namespace {

TEST(ZstdChecksumTest, AFlippedByteInAStoredBlockIsCaughtByTheFrameChecksum) {
  // Random bytes do not compress: zstd stores them as raw blocks, so a
  // flipped byte decodes "fine" and only the content checksum can tell.
  std::mt19937 rng(7);
  std::string data(200000, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  std::vector<std::string> recorded;
  auto stored = EncodeAll({"stream.zstd/1"}, {}, {reinterpret_cast<const uint8_t*>(data.data()),
                                                  data.size()},
                          &recorded);
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  auto as_bytes = [](const std::string& s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  auto clean = DecodeAll(recorded, as_bytes(*stored), data.size());
  ASSERT_TRUE(clean.ok());
  EXPECT_EQ(*clean, data);
  std::string bad = *stored;
  bad[bad.size() / 2] ^= 0x01;
  auto r = DecodeAll(recorded, as_bytes(bad), data.size());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("checksum"), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace dcpp::transform
