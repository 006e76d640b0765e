#include "dcpp/tools/async_demo.h"

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>

#include "dcpp/tools/demo_state.h"
#include "temp_dir_test_base.h"

namespace dcpp::tools {
namespace {

using AsyncDemoTest = TempDirTest;

// XorStamp moves any piece, at any byte offset, from one step's values to
// another's: what the demo's training loop relies on, and what the snapshot
// check compares against.
TEST(DemoStateTest, XorStampMovesAPieceBetweenSteps) {
  for (uint64_t offset : {0, 1, 6, 8, 13, 4096}) {
    for (size_t n : {0, 1, 7, 8, 9, 63, 200}) {
      std::vector<uint8_t> piece(n), want(n);
      demo::Generate(5, offset, piece.data(), n, 3);
      demo::XorStamp(demo::Stamp(3) ^ demo::Stamp(11), offset, piece.data(), n);
      demo::Generate(5, offset, want.data(), n, 11);
      EXPECT_EQ(piece, want) << "offset " << offset << " n " << n;
    }
  }
  EXPECT_EQ(demo::Stamp(0), 0u);
  EXPECT_NE(demo::Stamp(1), demo::Stamp(2));
  // Different steps give different bytes everywhere a word differs.
  std::vector<uint8_t> a(64), b(64);
  demo::Generate(1, 0, a.data(), a.size(), 1);
  demo::Generate(1, 0, b.data(), b.size(), 2);
  EXPECT_NE(a, b);
}

// The check behind "holds step N's values" fails for another step's bytes.
TEST_F(AsyncDemoTest, LoadAndVerifyTellsStepsApart) {
  const auto specs = demo::TransformerSpecs(5);
  auto saved = RunOnThreadRanks(2, [&](ProcessGroup& pg) -> Status {
    DCPP_ASSIGN_OR_RETURN(Value state, demo::MakeRowShardState(specs, 2, pg.rank(), 3, nullptr));
    SaveOptions so;
    so.process_group = &pg;
    so.sync_files = false;
    return Save(state, Dir("s3"), so).status();
  });
  for (const auto& s : saved) ASSERT_TRUE(s.ok()) << s.ToString();
  for (int64_t step : {3, 4}) {
    std::atomic<uint64_t> bytes{0};
    std::atomic<size_t> pieces{0};
    auto loaded = RunOnThreadRanks(3, [&](ProcessGroup& pg) {
      return demo::LoadAndVerify(pg, specs, Dir("s3"), 1, nullptr, step, &bytes, &pieces);
    });
    for (const auto& s : loaded) {
      if (step == 3) {
        EXPECT_TRUE(s.ok()) << s.ToString();
      } else {
        EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
        EXPECT_NE(s.message().find("differ from the state at step 4"), std::string::npos)
            << s.ToString();
      }
    }
  }
}

TEST_F(AsyncDemoTest, SmallRunOnThreadRanksReportsEveryCheckpointAndVerifies) {
  AsyncDemoOptions o;
  o.dir = Dir("demo");
  o.size_mib = 5;
  o.ranks = 2;
  o.load_ranks = 3;
  o.steps = 6;
  o.every = 3;
  o.step_ms = 2;
  o.sync_files = false;
  o.keep = true;
  auto r = RunAsyncDemo(o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->ranks, 2);
  EXPECT_EQ(r->verified_step, 6);
  EXPECT_EQ(r->verified_bytes, r->state_bytes);
  EXPECT_GT(r->verified_pieces, r->tensors);  // 3 column pieces per matrix
  for (const AsyncDemoLoop* loop : {&r->sync_loop, &r->async_loop}) {
    ASSERT_EQ(loop->checkpoints.size(), 2u);
    EXPECT_EQ(loop->checkpoints[0].step, 3);
    EXPECT_EQ(loop->checkpoints[1].step, 6);
    EXPECT_EQ(loop->step_seconds.size(), 6u);
    EXPECT_EQ(loop->clean_steps + loop->overlapped_steps, 6);
    for (const auto& c : loop->checkpoints) EXPECT_GT(c.blocked_seconds, 0);
  }
  EXPECT_EQ(r->sync_loop.overlapped_steps, 0);  // nothing runs behind a sync save
  for (const auto& c : r->async_loop.checkpoints) {
    EXPECT_EQ(c.staged_bytes, r->state_bytes);  // every rank's share, once
    EXPECT_GT(c.write_seconds, 0);
    EXPECT_LE(c.stage_seconds, c.blocked_seconds);
  }
  EXPECT_TRUE(r->async_loop.checkpoints[0].pool_grew);
  EXPECT_FALSE(r->async_loop.checkpoints[1].pool_grew);
  EXPECT_GT(r->memcpy_seconds, 0);
  // Every checkpoint of both loops was committed where the report says.
  for (const char* loop : {"sync", "async"})
    for (const char* step : {"step_000003", "step_000006"})
      EXPECT_TRUE(std::filesystem::exists(o.dir + "/" + loop + "/" + step + "/.metadata"))
          << loop << "/" << step;
  const std::string text = FormatAsyncDemoReport(o, *r);
  EXPECT_NE(text.find("every byte holds step 6's values"), std::string::npos) << text;
  EXPECT_NE(text.find("[pool allocated]"), std::string::npos) << text;
}

TEST(AsyncDemoOptionsTest, RejectsFewerStepsThanTheCheckpointInterval) {
  AsyncDemoOptions o;
  o.steps = 4;
  o.every = 5;
  auto r = RunAsyncDemo(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("every 5"), std::string::npos) << r.status().ToString();
}

}  // namespace
}  // namespace dcpp::tools
