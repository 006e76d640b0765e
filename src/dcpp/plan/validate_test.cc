#include "dcpp/plan/validate.h"

#include <gtest/gtest.h>

namespace dcpp::plan {
namespace {

TEST(ValidateChunksTest, AcceptsTilings) {
  // 10 rows over 4 ranks: 3, 3, 2, 2.
  EXPECT_TRUE(
      ValidateChunks("w", {10, 4},
                     {{{0, 0}, {3, 4}}, {{3, 0}, {3, 4}}, {{6, 0}, {2, 4}}, {{8, 0}, {2, 4}}}, true)
          .ok());
  // 2x2 grid (rows x columns).
  EXPECT_TRUE(
      ValidateChunks("w", {4, 6},
                     {{{0, 0}, {2, 3}}, {{0, 3}, {2, 3}}, {{2, 0}, {2, 3}}, {{2, 3}, {2, 3}}}, true)
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

TEST(ValidateChunksTest, OrderDoesNotMatter) {
  // Row shards listed out of order, with an empty chunk among them.
  EXPECT_TRUE(ValidateChunks("w", {10, 4},
                             {{{8, 0}, {2, 4}},
                              {{0, 0}, {3, 4}},
                              {{3, 0}, {0, 4}},
                              {{6, 0}, {2, 4}},
                              {{3, 0}, {3, 4}}},
                             true)
                  .ok());
  // 3x3 grid, shuffled: chunks that share rows must be compared across columns.
  std::vector<Box> grid;
  for (int64_t i : {2, 0, 1})
    for (int64_t j : {1, 2, 0}) grid.push_back({{i * 2, j * 3}, {2, 3}});
  EXPECT_TRUE(ValidateChunks("g", {6, 9}, grid, true).ok());
  grid.push_back({{2, 4}, {1, 1}});
  Status s = ValidateChunks("g", {6, 9}, grid, false);
  EXPECT_NE(s.message().find("overlap"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("offsets [2, 4] sizes [1, 1]"), std::string::npos) << s.message();
}

TEST(ValidateChunksTest, NamesTheFirstOpenChunkItOverlaps) {
  // c overlaps both a and b (which do not overlap each other); of the chunks
  // still open along rows, a ends first, so it is the one named.
  const Box a = {{0, 0}, {4, 2}}, b = {{0, 2}, {6, 2}}, c = {{3, 1}, {2, 2}};
  Status s = ValidateChunks("w", {10, 4}, {b, a, c}, false);
  EXPECT_NE(s.message().find("chunks offsets [0, 0] sizes [4, 2] and offsets [3, 1] sizes [2, 2] "
                             "overlap"),
            std::string::npos)
      << s.message();
}

TEST(ValidateChunksTest, ViewsAndHugeShapes) {
  const Shape global = {int64_t{1} << 40, int64_t{1} << 40};
  const Shape off = {0, 0}, size = {1, 1};
  const BoxView one[] = {{off, size}};
  Status s = ValidateChunkViews("h", global, one, true);
  EXPECT_NE(s.message().find("cover 1 of more than 2^63 - 1 elements"), std::string::npos)
      << s.message();
  EXPECT_TRUE(ValidateChunkViews("h", global, one, false).ok());
  const Shape big = {int64_t{1} << 40, int64_t{1} << 40};
  const BoxView whole[] = {{off, big}};
  s = ValidateChunkViews("h", global, whole, true);
  EXPECT_NE(s.message().find("overflow"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace dcpp::plan
