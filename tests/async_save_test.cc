// Async saves (include/dcpp/async_checkpointer.h): snapshot semantics, the
// reused pool, many thread ranks with the caller using its own group at the
// same time, and failures on every rank with nothing committed.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <thread>

#include "dcpp/async_checkpointer.h"
#include "dcpp/checkpoint.h"
#include "dcpp/engine/engine.h"
#include "dcpp/storage/fault_injecting_storage.h"
#include "temp_dir_test_base.h"

namespace dcpp {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using AsyncSaveTest = TempDirTest;

Tensor Filled(DType dtype, const Shape& shape, float base) {
  Tensor t = *Tensor::Zeros(dtype, shape);
  if (dtype == DType::kFloat32) {
    auto* p = static_cast<float*>(t.data());
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = base + static_cast<float>(i);
  } else {
    auto* p = static_cast<uint8_t*>(t.data());
    for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(base + i * 7);
  }
  return t;
}

void Scribble(const Tensor& t) { std::memset(t.data(), 0xAB, t.nbytes()); }

class Counter : public Stateful {
 public:
  Result<Value> StateDict() override {
    if (fail) return InvalidArgumentError("counter refuses");
    Value v;
    v["count"] = count;
    return v;
  }
  Status LoadStateDict(const Value& state) override {
    count = state.Find("count")->as_int();
    return Status();
  }
  int64_t count = 0;
  bool fail = false;
};

TEST_F(AsyncSaveTest, CheckpointHoldsTheValuesAtTheCall) {
  auto ckpt = AsyncCheckpointer::Create({.staging_threads = 2});
  ASSERT_TRUE(ckpt.ok()) << ckpt.status().ToString();
  // A big tensor (split into several copy pieces), a transposed one (dense,
  // kept in its layout), a strided slice (made contiguous), a scalar, plain
  // values and a Stateful.
  Tensor big = Filled(DType::kFloat32, {3000, 1000}, 1.f);
  Tensor base = Filled(DType::kFloat32, {64, 32}, 5.f);
  TensorView transposed = base.view();
  transposed.shape = {32, 64};
  transposed.strides = {1, 32};
  Tensor wide = Filled(DType::kUInt8, {16, 10}, 3.f);
  TensorView every_other = wide.view();
  every_other.shape = {16, 5};
  every_other.strides = {10, 2};
  auto counter = std::make_shared<Counter>();
  counter->count = 41;
  Value sd;
  sd["model"]["big"] = big;
  sd["model"]["t"] = Tensor::Borrow(transposed);
  sd["model"]["slice"] = Tensor::Borrow(every_other);
  sd["model"]["scalar"] = Filled(DType::kFloat32, {}, 9.f);
  sd["step"] = 1000;
  sd["name"] = "run";
  sd["counter"] = std::shared_ptr<Stateful>(counter);

  // What the checkpoint must hold: deep copies taken before the call.
  Value expected;
  expected["model"]["big"] = *big.Clone();
  expected["model"]["t"] = *Tensor::Borrow(transposed).Clone();
  expected["model"]["slice"] = *Tensor::Borrow(every_other).Clone();
  expected["model"]["scalar"] = *sd["model"]["scalar"].tensor().Clone();

  AsyncSaveHandle h = (*ckpt)->Save(sd, Dir("snap"));
  // The caller changes everything as soon as Save returns.
  Scribble(big);
  Scribble(base);
  Scribble(wide);
  Scribble(sd["model"]["scalar"].tensor());
  counter->count = -1;
  sd["step"] = 7;
  Result<Metadata> md = h.Wait();
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_TRUE(h.Done());
  EXPECT_GT(h.stats().staged_bytes, big.nbytes());
  EXPECT_TRUE(h.stats().pool_grew);
  EXPECT_GE((*ckpt)->pool_bytes(), h.stats().staged_bytes);

  auto all = LoadAll(Dir("snap"));
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  for (const char* k : {"big", "t", "slice", "scalar"}) {
    const Value* got = all->Find("model")->Find(k);
    ASSERT_NE(got, nullptr) << k;
    EXPECT_TRUE(got->tensor().BitwiseEquals(expected["model"][k].tensor())) << k;
  }
  EXPECT_EQ(all->Find("step")->as_int(), 1000);
  EXPECT_EQ(all->Find("name")->as_string(), "run");
  EXPECT_EQ(all->Find("counter")->Find("count")->as_int(), 41);
}

TEST_F(AsyncSaveTest, PoolIsReusedAndGrowsOnlyWithTheState) {
  auto ckpt = AsyncCheckpointer::Create();
  ASSERT_TRUE(ckpt.ok());
  Tensor w = Filled(DType::kFloat32, {1 << 18}, 0.f);  // 1 MiB
  Value sd;
  sd["w"] = w;
  AsyncSaveHandle first = (*ckpt)->Save(sd, Dir("a"));
  ASSERT_TRUE(first.Wait().ok());
  const uint64_t pool = (*ckpt)->pool_bytes();
  for (int i = 0; i < 5; ++i) {
    static_cast<float*>(w.data())[0] = static_cast<float>(i);
    // No Wait in between: Save waits for the previous save itself.
    AsyncSaveHandle h = (*ckpt)->Save(sd, Dir("b"));
    EXPECT_FALSE(h.stats().pool_grew);
    if (i == 4) ASSERT_TRUE(h.Wait().ok());
  }
  EXPECT_EQ((*ckpt)->pool_bytes(), pool);
  auto last = LoadAll(Dir("b"));
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(static_cast<const float*>(last->Find("w")->tensor().data())[0], 4.f);
  sd["w2"] = Filled(DType::kFloat32, {1 << 20}, 0.f);  // the state grows
  AsyncSaveHandle grown = (*ckpt)->Save(sd, Dir("c"));
  EXPECT_TRUE(grown.stats().pool_grew);
  ASSERT_TRUE(grown.Wait().ok());
  EXPECT_GT((*ckpt)->pool_bytes(), pool);
}

TEST_F(AsyncSaveTest, CapExceededFailsThroughTheHandleAndWritesNothing) {
  auto ckpt = AsyncCheckpointer::Create({.max_staging_bytes = 1024});
  ASSERT_TRUE(ckpt.ok());
  Value sd;
  sd["w"] = Filled(DType::kFloat32, {1024}, 0.f);
  AsyncSaveHandle h = (*ckpt)->Save(sd, Dir("cap"));
  Result<Metadata> md = h.Wait();
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), StatusCode::kResourceExhausted) << md.status().ToString();
  EXPECT_NE(md.status().message().find("max_staging_bytes"), std::string::npos);
  EXPECT_FALSE(fs::exists(Dir("cap") + "/.metadata"));
  // The checkpointer stays usable.
  Value small;
  small["x"] = 1;
  EXPECT_TRUE((*ckpt)->Save(small, Dir("cap")).Wait().ok());
}

TEST_F(AsyncSaveTest, DestructorWaitsForTheSaveInFlight) {
  Value sd;
  sd["w"] = Filled(DType::kFloat32, {1 << 20}, 2.f);
  AsyncSaveHandle h;
  {
    auto ckpt = AsyncCheckpointer::Create();
    ASSERT_TRUE(ckpt.ok());
    h = (*ckpt)->Save(sd, Dir("dtor"));
  }
  EXPECT_TRUE(h.Done());
  EXPECT_TRUE(h.Wait().ok());
  EXPECT_TRUE(fs::exists(Dir("dtor") + "/.metadata"));
}

TEST_F(AsyncSaveTest, ConvenienceAsyncSave) {
  Value sd;
  sd["w"] = Filled(DType::kFloat32, {100}, 2.f);
  AsyncSaveHandle h = AsyncSave(sd, Dir("conv"));
  ASSERT_TRUE(h.Wait().ok());
  EXPECT_TRUE(h.WaitFor(milliseconds(0)));
  auto all = LoadAll(Dir("conv"));
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->Find("w")->tensor().BitwiseEquals(sd["w"].tensor()));
}

// Four thread ranks save shards asynchronously while each rank's thread
// keeps using its own group; three ranks load the snapshot back.
TEST_F(AsyncSaveTest, ThreadRanksWithTheCallerUsingItsGroupMeanwhile) {
  constexpr int kRanks = 4;
  const Shape global{40, 6};
  Tensor full = Filled(DType::kFloat32, global, 0.f);
  auto statuses = RunOnThreadRanks(kRanks, [&](ProcessGroup& pg) -> Status {
    DCPP_ASSIGN_OR_RETURN(auto ckpt, AsyncCheckpointer::Create({.process_group = &pg}));
    const int64_t rows = global[0] / kRanks;
    Tensor mine = *Tensor::Zeros(DType::kFloat32, {rows, global[1]});
    std::memcpy(mine.data(), static_cast<float*>(full.data()) + pg.rank() * rows * global[1],
                mine.nbytes());
    Value sd;
    sd["w"] = ShardedTensor{global, {{{pg.rank() * rows, 0}, mine}}};
    sd["step"] = 5;
    SaveOptions o;
    o.process_group = &pg;
    AsyncSaveHandle h = ckpt->Save(sd, Dir("ranks"), o);
    Scribble(mine);
    // "Training": the caller's own collectives while the save runs.
    for (int i = 0; i < 20; ++i) {
      DCPP_ASSIGN_OR_RETURN(auto all, pg.AllGather(std::to_string(i * 10 + pg.rank())));
      for (int q = 0; q < kRanks; ++q)
        if (all[q] != std::to_string(i * 10 + q)) return InternalError("mixed collectives");
    }
    return h.Wait().status();
  });
  for (const auto& s : statuses) EXPECT_TRUE(s.ok()) << s.ToString();
  auto loaded = RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
    Value sd;
    Tensor col = *Tensor::Zeros(DType::kFloat32, {global[0], 2});
    sd["w"] = ShardedTensor{global, {{{0, 2 * pg.rank()}, col}}};
    LoadOptions o;
    o.process_group = &pg;
    DCPP_RETURN_IF_ERROR(Load(sd, Dir("ranks"), o));
    const float* p = static_cast<const float*>(col.data());
    for (int64_t r = 0; r < global[0]; ++r)
      for (int64_t c = 0; c < 2; ++c)
        if (p[r * 2 + c] != static_cast<float>(r * global[1] + 2 * pg.rank() + c))
          return InternalError("wrong value at " + std::to_string(r));
    return Status();
  });
  for (const auto& s : loaded) EXPECT_TRUE(s.ok()) << s.ToString();
}

// Failures: a staging error on one rank and a write error injected on
// another both fail every rank's handle with the same error naming the
// rank, and nothing is committed.
TEST_F(AsyncSaveTest, FailuresResolveEveryRanksHandleAlike) {
  constexpr int kRanks = 4;
  for (int scenario = 0; scenario < 3; ++scenario) {
    SCOPED_TRACE("scenario " + std::to_string(scenario));
    const std::string dir = Dir("fail" + std::to_string(scenario));
    fs::create_directories(dir);
    auto posix = storage::NewPosixStorage(dir);
    auto faulty = storage::FaultInjectingStorage::Wrap(*posix);
    ASSERT_TRUE(faulty.ok());
    if (scenario == 2)
      (*faulty)->FailCallsNamed(storage::OpKind::kCreate, "__3_0.", storage::FaultType::kNoSpace);
    std::vector<std::string> messages(kRanks);
    auto statuses = RunOnThreadRanks(kRanks, [&](ProcessGroup& pg) -> Status {
      AsyncCheckpointerOptions co{.process_group = &pg};
      if (scenario == 0 && pg.rank() == 1) co.max_staging_bytes = 16;
      DCPP_ASSIGN_OR_RETURN(auto ckpt, engine::CreateAsyncCheckpointerOver(**faulty, co));
      auto counter = std::make_shared<Counter>();
      counter->fail = scenario == 1 && pg.rank() == 2;
      Value sd;
      sd["w"] = ShardedTensor{{8, 4}, {{{2 * pg.rank(), 0}, Filled(DType::kFloat32, {2, 4}, 1)}}};
      sd["c"] = std::shared_ptr<Stateful>(counter);
      SaveOptions o;
      o.process_group = &pg;
      AsyncSaveHandle h = ckpt->Save(sd, dir, o);
      return h.Wait().status();
    }, milliseconds(30000));
    const char* want_rank[] = {"rank 1", "rank 2", "rank 3"};
    for (int r = 0; r < kRanks; ++r) {
      ASSERT_FALSE(statuses[r].ok());
      EXPECT_EQ(statuses[r], statuses[0]) << "rank " << r;
      EXPECT_NE(statuses[r].message().find(want_rank[scenario]), std::string::npos)
          << statuses[r].ToString();
    }
    EXPECT_FALSE(fs::exists(dir + "/.metadata"));
  }
}

}  // namespace
}  // namespace dcpp
