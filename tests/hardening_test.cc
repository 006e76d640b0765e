// Hostile checkpoints against the load path: sizes .metadata declares are
// checked against the bytes stored before anything is allocated, and
// running out of memory is a status, never an abort. Memory is asserted in
// a child process under an address-space limit (tests/memory_limit.h).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <new>
#include <stdexcept>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/checkpoint.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/storage.h"
#include "memory_limit.h"
#include "temp_dir_test_base.h"

namespace dcpp {
namespace {

using testing::kCanLimitAddressSpace;
using testing::RunWithAddressSpaceLimit;

constexpr int64_t kElements = 100;

class OversizedDeclarationTest : public TempDirTest {
 protected:
  // A 100-element float32 tensor "w" and a value "step", saved by dcpp.
  void SaveSmall(const std::string& dir, std::vector<std::string> transforms = {}) {
    Tensor w = *Tensor::Zeros(DType::kFloat32, {kElements});
    for (int64_t i = 0; i < kElements; ++i) static_cast<float*>(w.data())[i] = float(i);
    Value sd;
    sd["w"] = w;
    sd["step"] = int64_t{42};
    SaveOptions o;
    o.transforms = std::move(transforms);
    ASSERT_TRUE(Save(sd, dir, o).ok());
  }
  // Rewrites dir/.metadata after `edit` changed the decoded metadata.
  template <typename Edit>
  void EditMetadata(const std::string& dir, Edit edit) {
    Result<Metadata> md = ReadMetadata(dir);
    ASSERT_TRUE(md.ok()) << md.status().ToString();
    EntryMeta* w = nullptr;
    for (auto& e : md->entries)
      if (e.fqn == "w") w = &e;
    ASSERT_NE(w, nullptr);
    edit(*w);
    auto location = storage::OpenStorage(dir);
    ASSERT_TRUE(location.ok());
    ASSERT_TRUE(storage::CommitMetadata(**location, *md, false, "edit").ok());
    // The sidecar checksum file would flag the edit itself; these tests are
    // about what the edited declarations make a load do.
    for (const auto& f : std::filesystem::directory_iterator(dir))
      if (f.path().filename().string().rfind(".checksums.", 0) == 0)
        std::filesystem::remove(f.path());
  }
  // Runs LoadAll and Load (into a state dict whose "w" dcpp allocates) in a
  // child limited to 256 MiB more address space; expects DataLoss naming
  // "w", from both, with the resident set growing less than 64 MiB.
  void ExpectDataLossWithoutAllocating(const std::string& dir) {
    Result<Value> all = LoadAll(dir);
    ASSERT_FALSE(all.ok());
    EXPECT_EQ(all.status().code(), StatusCode::kDataLoss) << all.status().ToString();
    EXPECT_NE(all.status().message().find("'w'"), std::string::npos) << all.status().ToString();
    if (!kCanLimitAddressSpace) GTEST_SKIP() << "sanitizer build: no RLIMIT_AS";
    const auto child = RunWithAddressSpaceLimit(uint64_t{256} << 20, [&] {
      Result<Value> r = LoadAll(dir);
      if (r.ok() || r.status().code() != StatusCode::kDataLoss) return 1;
      Value sd;
      sd["w"] = Value();
      sd["step"] = int64_t{0};
      Status s = Load(sd, dir);
      return s.code() == StatusCode::kDataLoss ? 0 : 2;
    });
    EXPECT_EQ(child.signal, 0);
    EXPECT_EQ(child.exit_code, 0);
    EXPECT_GE(child.rss_growth_kb, 0);
    EXPECT_LT(child.rss_growth_kb, 64 * 1024) << "the load allocated before validating";
  }
};

TEST_F(OversizedDeclarationTest, ChunkAndTensorClaim2GiB) {
  SaveSmall(Dir("c"));
  EditMetadata(Dir("c"), [](EntryMeta& w) {
    w.size = {int64_t{1} << 29};  // 2 GiB of float32
    w.chunks[0].sizes = {int64_t{1} << 29};
  });
  ExpectDataLossWithoutAllocating(Dir("c"));
  Status s = LoadAll(Dir("c")).status();
  EXPECT_NE(s.message().find("__0_0."), std::string::npos) << s.ToString();
}

TEST_F(OversizedDeclarationTest, TwoDimensionalClaimOf16GiB) {
  SaveSmall(Dir("c"));
  EditMetadata(Dir("c"), [](EntryMeta& w) {
    w.size = {int64_t{1} << 16, int64_t{1} << 16};  // 16 GiB of float32
    w.chunks[0].offsets = {0, 0};
    w.chunks[0].sizes = w.size;
  });
  ExpectDataLossWithoutAllocating(Dir("c"));
}

TEST_F(OversizedDeclarationTest, TensorSizeBeyondItsChunks) {
  SaveSmall(Dir("c"));
  EditMetadata(Dir("c"), [](EntryMeta& w) { w.size = {int64_t{1} << 32}; });  // 16 GiB
  ExpectDataLossWithoutAllocating(Dir("c"));
}

TEST_F(OversizedDeclarationTest, CompressedChunkClaims2GiB) {
  SaveSmall(Dir("c"), {"stream.zstd/1"});
  EditMetadata(Dir("c"), [](EntryMeta& w) {
    ASSERT_FALSE(w.chunks[0].storage.transform_descriptors.empty());
    w.size = {int64_t{1} << 29};
    w.chunks[0].sizes = {int64_t{1} << 29};
  });
  ExpectDataLossWithoutAllocating(Dir("c"));
}

TEST_F(OversizedDeclarationTest, ItemBeyondItsFile) {
  SaveSmall(Dir("c"));
  EditMetadata(Dir("c"), [](EntryMeta& w) { w.chunks[0].storage.length = uint64_t{1} << 33; });
  ExpectDataLossWithoutAllocating(Dir("c"));
}

TEST_F(OversizedDeclarationTest, UneditedCheckpointStillLoadsExactly) {
  SaveSmall(Dir("c"));
  Result<Value> all = LoadAll(Dir("c"));
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  const Tensor& w = (*all)["w"].tensor();
  for (int64_t i = 0; i < kElements; ++i) EXPECT_EQ(static_cast<const float*>(w.data())[i], i);
}

// The exception barrier: an allocation that throws inside a load's worker
// threads (a value's bytes read into a std::string) becomes
// ResourceExhausted instead of std::terminate.
TEST_F(OversizedDeclarationTest, OutOfMemoryIsResourceExhaustedNotAbort) {
  Value sd;
  sd["blob"] = std::string(size_t{96} << 20, 'x');
  ASSERT_TRUE(Save(sd, Dir("b")).ok());
  sd = Value();
  if (!kCanLimitAddressSpace) GTEST_SKIP() << "sanitizer build: no RLIMIT_AS";
  const auto child = RunWithAddressSpaceLimit(uint64_t{64} << 20, [&] {
    Result<Value> r = LoadAll(Dir("b"));
    if (r.ok()) return 10;
    std::fprintf(stderr, "child: %s\n", r.status().ToString().c_str());
    return static_cast<int>(r.status().code());
  });
  EXPECT_EQ(child.signal, 0) << "an exception escaped";
  EXPECT_EQ(child.exit_code, static_cast<int>(StatusCode::kResourceExhausted));
}

TEST(ExceptionBarrierTest, MapsExceptionsToStatuses) {
  Status s = CatchExceptions("load /x", []() -> Status { throw std::bad_alloc(); });
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "load /x: out of memory");
  Result<int> r = CatchExceptions("op", []() -> Result<int> { throw std::runtime_error("boom"); });
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("op: unexpected exception: boom"), std::string::npos);
  r = CatchExceptions("op", []() -> Result<int> { throw 7; });
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  r = CatchExceptions("op", []() -> Result<int> {
    std::vector<int> v;
    v.reserve(v.max_size() + 1);  // std::length_error
    return 1;
  });
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  r = CatchExceptions("op", []() -> Result<int> { return 5; });
  EXPECT_EQ(*r, 5);
  // In worker threads of ParallelFor, where an escaping exception would
  // terminate the process.
  s = ParallelFor(64, 4, [](size_t i) -> Status {
    if (i == 17) throw std::bad_alloc();
    return Status();
  });
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace dcpp
