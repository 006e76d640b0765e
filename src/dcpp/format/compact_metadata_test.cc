// The compact .metadata form: it stands for exactly the Metadata
// DecodeMetadata returns (through the fast path and the general fallback),
// and it is small.
#include "dcpp/format/compact_metadata.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

#include "dcpp/format/metadata_codec.h"
#include "memory_limit.h"

namespace dcpp::format {
namespace {

using namespace std::string_literals;
namespace fs = std::filesystem;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

ChunkMeta Chunk(Shape offsets, Shape sizes, std::string file, uint64_t offset, uint64_t length,
                std::vector<std::string> transforms = {}) {
  return {std::move(offsets), std::move(sizes), {std::move(file), offset, length, transforms}};
}

// Bytes entries, transforms (two distinct lists), 0-d and empty tensors,
// chunks out of order, several files.
Metadata Mixed() {
  Metadata md;
  EntryMeta w;
  w.fqn = "model.w";
  w.path = {"model"s, "w"s};
  w.size = {8, 6};
  w.chunks.push_back(Chunk({4, 0}, {4, 6}, "__1_0.distcp", 5'000'000'000, 200, {"stream.zstd/1"}));
  w.chunks.push_back(Chunk({0, 0}, {4, 6}, "__0_0.distcp", 0, 100));
  md.entries.push_back(w);
  EntryMeta s;
  s.fqn = "scalar";
  s.properties.dtype = DType::kFloat64;
  s.chunks.push_back(Chunk({}, {}, "__0_0.distcp", 100, 8, {"a/1", "b/2"}));
  md.entries.push_back(s);
  EntryMeta empty;
  empty.fqn = "empty";
  empty.size = {0, 3};
  empty.chunks.push_back(Chunk({0, 0}, {0, 3}, "__2_0.distcp", 0, 700));
  md.entries.push_back(empty);
  EntryMeta step;
  step.fqn = "step";
  step.kind = EntryMeta::Kind::kBytes;
  step.path = {"step"s, int64_t{3}};
  step.storage = StorageInfo{"__0_0.distcp", 108, 50, {"stream.zstd/1"}};
  md.entries.push_back(step);
  md.storage_meta = StorageMeta{"/ckpt", "uuid-1", std::nullopt, {"m"}};
  md.version = "1.0.0";
  return md;
}

Metadata RowSharded(int ranks, int tensors) {
  Metadata md;
  std::vector<uint64_t> at(static_cast<size_t>(ranks), 0);
  for (int t = 0; t < tensors; ++t) {
    EntryMeta e;
    e.fqn = "model.layers." + std::to_string(t / 8) + ".w" + std::to_string(t % 8);
    e.path = {"model"s, e.fqn.substr(6)};
    e.properties.dtype = DType::kBFloat16;
    e.size = {16 * ranks, 4096};
    for (int r = 0; r < ranks; ++r) {
      e.chunks.push_back(Chunk({16 * r, 0}, {16, 4096}, "__" + std::to_string(r) + "_0.distcp",
                               at[static_cast<size_t>(r)], 132160));
      at[static_cast<size_t>(r)] += 132160;
    }
    md.entries.push_back(std::move(e));
  }
  md.storage_meta = StorageMeta{"/ckpt", "uuid-2", std::nullopt, {}};
  md.version = "1.0.0";
  return md;
}

TEST(CompactMetadataTest, CompactAndExpandAreInverses) {
  const Metadata md = Mixed();
  CompactMetadata c = Compact(Metadata(md));
  EXPECT_EQ(c.files.size(), 3u);
  EXPECT_EQ(c.transform_sets.size(), 3u);  // none, zstd, a+b
  ASSERT_EQ(c.entries.size(), md.entries.size());
  EXPECT_EQ(c.entries[0].num_chunks(), 2u);
  const auto o = c.entries[0].offsets(0);
  EXPECT_EQ(Shape(o.begin(), o.end()), (Shape{4, 0}));
  EXPECT_EQ(c.Chunk(0, 0), md.entries[0].chunks[0]);
  EXPECT_EQ(c.ExpandEntry(3), md.entries[3]);
  const uint32_t second[] = {1};
  EntryMeta only = c.ExpandEntry(0, second);
  ASSERT_EQ(only.chunks.size(), 1u);
  EXPECT_EQ(only.chunks[0], md.entries[0].chunks[1]);
  EXPECT_EQ(Expand(std::move(c)), md);
  EXPECT_TRUE(c.entries.empty());  // consumed
}

TEST(CompactMetadataTest, DecodesWhatDecodeMetadataDecodes) {
  for (const Metadata& md : {Mixed(), RowSharded(5, 9), Metadata()}) {
    const std::string bytes = EncodeMetadata(md);
    Result<CompactMetadata> c = DecodeCompactMetadata(bytes);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    EXPECT_EQ(Expand(std::move(*c)), md);
  }
  // torch's own files, and damaged copies of them: both decoders accept the
  // same inputs (the fast path or the general fallback) and agree, or both
  // fail with the same error.
  std::mt19937 rng(13);
  int files = 0;
  for (const auto& entry : fs::directory_iterator(DCPP_TESTDATA_DIR)) {
    if (entry.path().extension() != ".metadata") continue;
    ++files;
    const std::string seed = ReadFile(entry.path());
    for (int trial = 0; trial < 300; ++trial) {
      std::string bytes = seed;
      if (trial > 0) {
        const int edits = 1 + static_cast<int>(rng() % 3);
        for (int k = 0; k < edits; ++k)
          bytes[rng() % bytes.size()] = static_cast<char>(rng() % 256);
      }
      Result<Metadata> full = DecodeMetadata(bytes);
      Result<CompactMetadata> compact = DecodeCompactMetadata(bytes);
      ASSERT_EQ(full.ok(), compact.ok()) << entry.path() << " trial " << trial;
      if (full.ok()) {
        EXPECT_EQ(Expand(std::move(*compact)), *full) << entry.path() << " trial " << trial;
      } else {
        EXPECT_EQ(full.status().ToString(), compact.status().ToString());
      }
    }
  }
  EXPECT_GE(files, 3);
}

// The point of the form: a row-sharded checkpoint's metadata in well under
// the file's size, decoded without ever holding a Metadata.
TEST(CompactMetadataTest, DecodesInAFractionOfTheFile) {
  const std::string bytes = EncodeMetadata(RowSharded(32, 1000));  // 32,000 chunks
  Result<CompactMetadata> c = DecodeCompactMetadata(bytes);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // 56 bytes per 2-d chunk (~190 in a Metadata) against ~150 in the pickle.
  EXPECT_LT(c->MemoryBytes(), bytes.size() / 2);
  if constexpr (!testing::kCanLimitAddressSpace) GTEST_SKIP() << "sanitizers distort memory";
  // The decode's whole peak, measured in a child process: below the file's
  // size (Metadata's decode adds ~1.25x).
  const testing::ChildResult r = testing::RunWithAddressSpaceLimit(
      uint64_t{1} << 30, [&] { return DecodeCompactMetadata(bytes).ok() ? 0 : 1; });
  ASSERT_EQ(r.exit_code, 0);
  if (r.rss_growth_kb < 0) GTEST_SKIP() << "no /proc/self/status";
  EXPECT_LT(static_cast<uint64_t>(r.rss_growth_kb) * 1024, bytes.size() * 3 / 4)
      << "file " << bytes.size() << " bytes";
}

}  // namespace
}  // namespace dcpp::format
