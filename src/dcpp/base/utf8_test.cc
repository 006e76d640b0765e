#include "dcpp/base/utf8.h"

#include <gtest/gtest.h>

#include <string>

namespace dcpp {
namespace {

using namespace std::string_literals;

std::string Utf8(uint32_t cp) {
  std::string out = "x";  // appends, never overwrites
  AppendUtf8(cp, &out);
  return out.substr(1);
}

TEST(Utf8Test, EncodesEachLengthAtItsBoundaries) {
  EXPECT_EQ(Utf8(0), "\x00"s);
  EXPECT_EQ(Utf8(0x7F), "\x7f");
  EXPECT_EQ(Utf8(0x80), "\xc2\x80");
  EXPECT_EQ(Utf8(0xFF), "\xc3\xbf");  // Latin-1 bytes, as the pickle writers use it
  EXPECT_EQ(Utf8(0x7FF), "\xdf\xbf");
  EXPECT_EQ(Utf8(0x800), "\xe0\xa0\x80");
  EXPECT_EQ(Utf8(0x20AC), "\xe2\x82\xac");  // euro sign
  EXPECT_EQ(Utf8(0xFFFF), "\xef\xbf\xbf");
  EXPECT_EQ(Utf8(0x10000), "\xf0\x90\x80\x80");
  EXPECT_EQ(Utf8(0x1F600), "\xf0\x9f\x98\x80");
  EXPECT_EQ(Utf8(0x10FFFF), "\xf4\x8f\xbf\xbf");
}

TEST(Utf8Test, LoneSurrogatesPassThrough) {
  // Python's 'surrogatepass'.
  EXPECT_EQ(Utf8(0xD800), "\xed\xa0\x80");
  EXPECT_EQ(Utf8(0xDFFF), "\xed\xbf\xbf");
}

}  // namespace
}  // namespace dcpp
