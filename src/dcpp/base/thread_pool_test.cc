#include "dcpp/base/thread_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <vector>

namespace dcpp {
namespace {

TEST(ParallelForTest, RunsEveryIndexOnce) {
  std::vector<std::atomic<int>> hits(1000);
  ASSERT_TRUE(ParallelFor(hits.size(), 4, [&](size_t i) {
                hits[i]++;
                return Status();
              }).ok());
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST(ParallelForTest, ReportsLowestFailure) {
  Status s = ParallelFor(100, 1, [&](size_t i) {
    return i >= 7 ? DataLossError("item " + std::to_string(i)) : Status();
  });
  EXPECT_EQ(s.message(), "item 7");
  EXPECT_TRUE(ParallelFor(0, 4, [](size_t) { return InternalError("never"); }).ok());
}

}  // namespace
}  // namespace dcpp
