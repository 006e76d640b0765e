#include "dcpp/base/varint.h"

#include <gtest/gtest.h>

#include <limits>
#include <string>
#include <vector>

namespace dcpp {
namespace {

using namespace std::string_literals;

TEST(VarintTest, RoundTripsAtEveryLengthBoundary) {
  std::string buf;
  std::vector<uint64_t> values;
  for (int bits = 0; bits <= 64; bits += 7) {
    const uint64_t v = bits == 0 ? 0 : uint64_t{1} << bits;
    for (uint64_t d : {uint64_t{0}, uint64_t{1}}) values.push_back(v - d);
  }
  values.push_back(std::numeric_limits<uint64_t>::max());
  for (uint64_t v : values) PutVarint(&buf, v);
  size_t pos = 0;
  for (uint64_t v : values) {
    // Decoded with the fast path (two or more bytes left) and without it
    // (the varint alone, as the last bytes of its input).
    std::string alone;
    PutVarint(&alone, v);
    size_t alone_pos = 0;
    uint64_t got = ~v, got_alone = ~v;
    ASSERT_TRUE(GetVarint(buf, &pos, &got)) << v;
    ASSERT_TRUE(GetVarint(alone, &alone_pos, &got_alone)) << v;
    EXPECT_EQ(got, v);
    EXPECT_EQ(got_alone, v);
    EXPECT_EQ(alone_pos, alone.size());
  }
  EXPECT_EQ(pos, buf.size());
}

TEST(VarintTest, LittleEndianSevenBitGroups) {
  std::string buf;
  PutVarint(&buf, 0);
  PutVarint(&buf, 127);
  PutVarint(&buf, 128);
  PutVarint(&buf, 300);
  EXPECT_EQ(buf, "\x00\x7f\x80\x01\xac\x02"s);
  std::string max;
  PutVarint(&max, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(max, std::string(9, '\xff') + "\x01"s);
}

TEST(VarintTest, RejectsTruncatedAndOversizedInput) {
  for (const std::string& bad : {""s, "\x80"s, "\xff\xff"s, std::string(11, '\x80'),
                                 std::string(10, '\x80') + "\x01"s,
                                 std::string(9, '\xff') + "\x02"s}) {
    size_t pos = 0;
    uint64_t v = 7;
    EXPECT_FALSE(GetVarint(bad, &pos, &v)) << testing::PrintToString(bad);
    EXPECT_EQ(v, 7u);
    EXPECT_LE(pos, bad.size());
  }
  // A varint that starts past the first byte, with the fast path's two
  // bytes available but the value longer than two.
  const std::string s = "\x01\x80\x80\x01"s;
  size_t pos = 1;
  uint64_t v = 0;
  ASSERT_TRUE(GetVarint(s, &pos, &v));
  EXPECT_EQ(v, uint64_t{1} << 14);
  EXPECT_EQ(pos, 4u);
}

}  // namespace
}  // namespace dcpp
