#include "dcpp/plan/validate.h"

#include <gtest/gtest.h>

namespace dcpp::plan {
namespace {

TEST(ValidateChunksTest, AcceptsTilings) {
  // 10 rows over 4 ranks: 3, 3, 2, 2.
  EXPECT_TRUE(ValidateChunks("w", {10, 4},
                             {{{0, 0}, {3, 4}}, {{3, 0}, {3, 4}}, {{6, 0}, {2, 4}}, {{8, 0}, {2, 4}}},
                             true)
                  .ok());
  // 2x2 grid (rows x columns).
  EXPECT_TRUE(ValidateChunks("w", {4, 6},
                             {{{0, 0}, {2, 3}}, {{0, 3}, {2, 3}}, {{2, 0}, {2, 3}}, {{2, 3}, {2, 3}}},
                             true)
                  .ok());
  EXPECT_TRUE(ValidateChunks("s", {}, {{{}, {}}}, true).ok());
  EXPECT_TRUE(ValidateChunks("e", {0, 3}, {{{0, 0}, {0, 3}}}, true).ok());
}

TEST(ValidateChunksTest, RejectsOverlapGapsAndOutOfBounds) {
  Status s = ValidateChunks("w", {10}, {{{0}, {6}}, {{5}, {5}}}, true);
  EXPECT_NE(s.message().find("overlap"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("'w'"), std::string::npos);
  s = ValidateChunks("w", {10}, {{{0}, {5}}, {{6}, {4}}}, true);
  EXPECT_NE(s.message().find("cover 9 of 10"), std::string::npos) << s.message();
  EXPECT_TRUE(ValidateChunks("w", {10}, {{{0}, {5}}}, false).ok());
  s = ValidateChunks("w", {10}, {{{8}, {4}}}, false);
  EXPECT_NE(s.message().find("outside"), std::string::npos) << s.message();
  EXPECT_FALSE(ValidateChunks("w", {10}, {{{-1}, {4}}}, false).ok());
  EXPECT_FALSE(ValidateChunks("w", {10, 2}, {{{0}, {4}}}, false).ok());
  EXPECT_FALSE(ValidateChunks("s", {}, {{{}, {}}, {{}, {}}}, false).ok());
  // Overlap that only shows in the second dimension of a grid.
  s = ValidateChunks("g", {4, 4}, {{{0, 0}, {4, 3}}, {{0, 2}, {4, 2}}}, false);
  EXPECT_NE(s.message().find("overlap"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace dcpp::plan
