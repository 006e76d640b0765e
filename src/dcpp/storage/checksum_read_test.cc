// Checksums checked on read: ReadItem, ReadChunk's three read paths
// (whole, large straight into place, streamed through a transform), the
// sidecar checksum file, and verify_checksums = false.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

#include "dcpp/format/checksums.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/storage/chunk_stream.h"
#include "dcpp/io/file.h"
#include "dcpp/storage/checksum_file.h"
#include "dcpp/storage/data_files.h"
#include "temp_dir_test_base.h"

namespace dcpp::storage {
namespace {

class ChecksumReadTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    st_ = NewPosixStorage(root_);
  }
  std::unique_ptr<Storage> st_;

  void FlipByte(const std::string& name, uint64_t at) {
    std::fstream f(root_ + "/" + name, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good());
    f.seekg(static_cast<std::streamoff>(at));
    char c;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(static_cast<std::streamoff>(at));
    f.write(&c, 1);
  }

  // Writes a rows x cols float matrix as one item of "f.distcp".
  ChunkMeta Write(int64_t rows, int64_t cols, std::vector<std::string> transforms = {},
                  bool checksums = true) {
    data_.resize(rows * cols);
    for (size_t i = 0; i < data_.size(); ++i) data_[i] = static_cast<float>(i);
    StoreItem item{true, MakeView(data_.data(), DType::kFloat32, {rows, cols}), {}, "m"};
    StoreOptions o;
    o.transforms = std::move(transforms);
    o.checksums = checksums;
    o.sync = false;
    auto infos = WriteDataFile(*st_, "f.distcp", {&item, 1}, o);
    EXPECT_TRUE(infos.ok()) << infos.status().ToString();
    ChunkMeta c;
    c.offsets = {0, 0};
    c.sizes = {rows, cols};
    c.storage = (*infos)[0];
    return c;
  }

  // Reads the whole chunk (or the row band [r0, r0+nr)) into fresh memory.
  Status Read(const ChunkMeta& c, bool verify, int64_t r0 = 0, int64_t nr = -1) {
    if (nr < 0) nr = c.sizes[0];
    out_.assign(nr * c.sizes[1], -1.0f);
    ChunkTarget t{MakeView(out_.data(), DType::kFloat32, {nr, c.sizes[1]}), {r0, 0},
                  {nr, c.sizes[1]}};
    return ReadChunk(*st_, "m", DType::kFloat32, c, {&t, 1}, kReadScratchBytes,
                     {verify, std::nullopt});
  }

  void ExpectDataLoss(const Status& s) {
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_NE(s.message().find("'m'"), std::string::npos) << s.ToString();        // the FQN
    EXPECT_NE(s.message().find("f.distcp"), std::string::npos) << s.ToString();   // the file
    EXPECT_NE(s.message().find("item at byte"), std::string::npos) << s.ToString();
    EXPECT_NE(s.message().find("checksum mismatch"), std::string::npos) << s.ToString();
  }

  std::vector<float> data_, out_;
};

TEST_F(ChecksumReadTest, SmallChunkReadWhole) {
  const ChunkMeta c = Write(32, 32);  // 4 KiB: read whole
  ASSERT_TRUE(Read(c, true).ok());
  FlipByte("f.distcp", c.storage.offset + c.storage.length / 2);
  ExpectDataLoss(Read(c, true));
  EXPECT_TRUE(Read(c, false).ok());  // unchecked: loads the damaged bytes
}

TEST_F(ChecksumReadTest, LargeChunkReadInFullIsChecked) {
  const ChunkMeta c = Write(600, 700);  // 1.6 MiB: read straight into place
  ASSERT_TRUE(Read(c, true).ok());
  EXPECT_EQ(out_, data_);
  FlipByte("f.distcp", c.storage.offset + c.storage.length / 2);
  ExpectDataLoss(Read(c, true));
  EXPECT_TRUE(Read(c, false).ok());
  // A partial read cannot be checked, and is not.
  EXPECT_TRUE(Read(c, true, 100, 400).ok());
}

TEST_F(ChecksumReadTest, LargeChunkDataPklIsChecked) {
  const ChunkMeta c = Write(600, 700);
  // data.pkl is the first record; its bytes follow the first local header.
  FlipByte("f.distcp", c.storage.offset + 80);
  Status s = Read(c, true, 0, 10);  // even a partial read checks the small records
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
}

TEST_F(ChecksumReadTest, LargeChunkThroughScratchIsChecked) {
  const ChunkMeta c = Write(600, 700);
  FlipByte("f.distcp", c.storage.offset + c.storage.length / 3);
  // A column-major destination goes through scratch, all rows in order.
  out_.assign(600 * 700, 0);
  TensorView dst = MakeView(out_.data(), DType::kFloat32, {600, 700});
  dst.strides = {1, 600};
  ChunkTarget t{dst, {0, 0}, {600, 700}};
  ExpectDataLoss(ReadChunk(*st_, "m", DType::kFloat32, c, {&t, 1}));
}

TEST_F(ChecksumReadTest, StreamedChunkIsChecked) {
  // zstd of incompressible-looking floats; flip a byte of the compressed
  // stream: the zstd frame checksum or the zip CRC catches it.
  const ChunkMeta c = Write(600, 700, {"stream.zstd/1"});
  ASSERT_TRUE(Read(c, true).ok());
  EXPECT_EQ(out_, data_);
  FlipByte("f.distcp", c.storage.offset + c.storage.length / 2);
  Status s = Read(c, true);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find("'m'"), std::string::npos) << s.ToString();
}

TEST_F(ChecksumReadTest, StreamedChunkChecksTheZipCrcAsBytesPass) {
  // The archive is damaged before compression: every zstd frame is intact,
  // only the zip record's CRC can tell.
  const int64_t rows = 600, cols = 700;
  data_.resize(rows * cols);
  for (size_t i = 0; i < data_.size(); ++i) data_[i] = static_cast<float>(i);
  std::string archive =
      format::EncodeTensorArchive(MakeView(data_.data(), DType::kFloat32, {rows, cols})).Flatten();
  archive[archive.size() / 2] ^= 0x01;  // inside data/0
  StoreItem item;
  item.bytes = {reinterpret_cast<const uint8_t*>(archive.data()), archive.size()};
  item.name = "m";
  StoreOptions o;
  o.transforms = {"stream.zstd/1"};
  o.sync = false;
  auto infos = WriteDataFile(*st_, "f.distcp", {&item, 1}, o);
  ASSERT_TRUE(infos.ok());
  ChunkMeta c;
  c.offsets = {0, 0};
  c.sizes = {rows, cols};
  c.storage = (*infos)[0];
  ExpectDataLoss(Read(c, true));
  EXPECT_TRUE(Read(c, false).ok());
  // The stream itself (no fallback): Finish reports the mismatch.
  ChunkStream stream(DType::kFloat32, c, {}, 1 << 16, true);
  ASSERT_TRUE(stream.Write(format::zip::AsBytes(archive)).ok());
  bool fits = false;
  Status s = stream.Finish(&fits);
  EXPECT_TRUE(fits);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("data/0"), std::string::npos) << s.ToString();
}

TEST_F(ChecksumReadTest, ArchivesWithoutCrcsLoad) {
  const ChunkMeta c = Write(600, 700, {}, /*checksums=*/false);
  FlipByte("f.distcp", c.storage.offset + c.storage.length / 2);
  EXPECT_TRUE(Read(c, true).ok());  // nothing recorded: nothing to check against
}

TEST_F(ChecksumReadTest, ReadItemChecksStoredBytesAgainstTheSidecar) {
  const std::string blob = "not an archive, just bytes";
  uint32_t crc = 0;
  StoreItem item;
  item.bytes = {reinterpret_cast<const uint8_t*>(blob.data()), blob.size()};
  item.name = "v";
  item.stored_crc32 = &crc;
  StoreOptions o;
  o.sync = false;
  auto infos = WriteDataFile(*st_, "f.distcp", {&item, 1}, o);
  ASSERT_TRUE(infos.ok());
  ASSERT_NE(crc, 0u);
  ReadChecks checks{true, crc};
  ASSERT_TRUE(ReadItem(*st_, (*infos)[0], "v", 1 << 20, checks).ok());
  FlipByte("f.distcp", 3);
  auto bad = ReadItem(*st_, (*infos)[0], "v", 1 << 20, checks);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("'v'"), std::string::npos);
  checks.verify_checksums = false;
  EXPECT_TRUE(ReadItem(*st_, (*infos)[0], "v", 1 << 20, checks).ok());
}

TEST_F(ChecksumReadTest, SidecarIsFoundByTheSaveIdOnly) {
  Metadata md;
  md.storage_meta = StorageMeta{root_, "save-1", std::nullopt, {}};
  const std::string md_bytes = "pretend these are .metadata bytes";
  ASSERT_TRUE(WriteChecksumFile(*st_, MakeChecksumFile("save-1", md_bytes, {}), false).ok());
  ASSERT_TRUE(io::Exists(root_ + "/.checksums.save-1").value());
  auto found = ReadChecksumFile(*st_, md);
  ASSERT_TRUE(found.ok() && found->has_value());
  EXPECT_TRUE(CheckMetadataBytes(*st_, **found, md_bytes).ok());
  Status s = CheckMetadataBytes(*st_, **found, "pretend these are .metadata byteS");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(".metadata"), std::string::npos);
  // Another save's .metadata: its sidecar is absent, the stale one ignored.
  md.storage_meta->save_id = "save-2";
  found = ReadChecksumFile(*st_, md);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(found->has_value());
  // No save_id (old torch): no sidecar.
  md.storage_meta.reset();
  found = ReadChecksumFile(*st_, md);
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(found->has_value());
  // A damaged sidecar of this save is DataLoss naming it.
  md.storage_meta = StorageMeta{root_, "save-1", std::nullopt, {}};
  FlipByte(".checksums.save-1", 20);
  found = ReadChecksumFile(*st_, md);
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(found.status().message().find(".checksums.save-1"), std::string::npos);
}

}  // namespace
}  // namespace dcpp::storage
