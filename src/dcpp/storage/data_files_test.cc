#include "dcpp/storage/data_files.h"

#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "dcpp/format/torch_pickle.h"
#include "dcpp/io/file.h"
#include "temp_dir_test_base.h"

namespace dcpp::storage {
namespace {

class StorageTest : public TempDirTest {
 protected:
  void SetUp() override {
    TempDirTest::SetUp();
    st_ = NewPosixStorage(root_);
  }
  std::unique_ptr<Storage> st_;
};

// A rows x cols float tensor whose element (r, c) is r * 10000 + c.
std::vector<float> Matrix(int64_t rows, int64_t cols) {
  std::vector<float> m(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) m[r * cols + c] = static_cast<float>(r * 10000 + c);
  return m;
}

ChunkMeta ChunkOf(const StorageInfo& s, Shape sizes) {
  ChunkMeta c;
  c.offsets = Shape(sizes.size(), 0);
  c.sizes = std::move(sizes);
  c.storage = s;
  return c;
}

// Reads box [r0, r0+nr) x [c0, c0+nc) of a stored matrix with `limit` bytes
// of scratch and checks every element.
void ExpectBox(Storage& dir, const ChunkMeta& chunk, int64_t r0, int64_t nr, int64_t c0,
               int64_t nc, uint64_t limit, bool transposed_dst = false) {
  std::vector<float> out(nr * nc, -1.0f);
  TensorView dst = MakeView(out.data(), DType::kFloat32, {nr, nc});
  if (transposed_dst) dst.strides = {1, nr};  // column-major destination
  ChunkTarget t{dst, {r0, c0}, {nr, nc}};
  ASSERT_TRUE(ReadChunk(dir, "m", DType::kFloat32, chunk, {&t, 1}, limit).ok());
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t c = 0; c < nc; ++c) {
      const float got = transposed_dst ? out[c * nr + r] : out[r * nc + c];
      ASSERT_EQ(got, static_cast<float>((r0 + r) * 10000 + c0 + c)) << r << "," << c;
    }
}

TEST_F(StorageTest, PartialReadsOfALargeChunk) {
  const int64_t rows = 600, cols = 700;  // 1.6 MiB: above the whole-read size
  auto m = Matrix(rows, cols);
  StoreItem item{true, MakeView(m.data(), DType::kFloat32, {rows, cols}), {}, "m"};
  auto infos = WriteDataFile(*st_, "f.distcp", {&item, 1}, {});
  ASSERT_TRUE(infos.ok()) << infos.status().ToString();
  const ChunkMeta chunk = ChunkOf((*infos)[0], {rows, cols});
  ExpectBox(*st_, chunk, 0, rows, 0, cols, 64 << 20);      // everything, straight into place
  ExpectBox(*st_, chunk, 0, rows, 0, cols, 4096);          // the same, whatever the scratch
  ExpectBox(*st_, chunk, 100, 50, 0, cols, 64 << 20);      // a row band
  ExpectBox(*st_, chunk, 0, rows, 233, 233, 64 << 20);     // a column band
  ExpectBox(*st_, chunk, 17, 301, 5, 600, 4096);           // split into many small reads
  ExpectBox(*st_, chunk, 17, 301, 5, 600, 1);              // one element at a time
  ExpectBox(*st_, chunk, 3, 40, 650, 50, 64 << 20, true);  // into a transposed target
  ExpectBox(*st_, chunk, 599, 1, 699, 1, 64 << 20);        // the last element
}

TEST_F(StorageTest, PartialReadOfATransposedStoredChunk) {
  // The stored tensor is the transpose of a row-major buffer (torch keeps
  // such permuted layouts in the archive).
  const int64_t rows = 700, cols = 600;
  std::vector<float> buf(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) buf[c * rows + r] = static_cast<float>(r * 10000 + c);
  TensorView v = MakeView(buf.data(), DType::kFloat32, {rows, cols});
  v.strides = {1, rows};
  StoreItem item{true, v, {}, "m"};
  auto infos = WriteDataFile(*st_, "t.distcp", {&item, 1}, {});
  ASSERT_TRUE(infos.ok());
  const ChunkMeta chunk = ChunkOf((*infos)[0], {rows, cols});
  ExpectBox(*st_, chunk, 10, 300, 20, 500, 64 << 20);
  ExpectBox(*st_, chunk, 10, 300, 20, 500, 8192);
}

TEST_F(StorageTest, SeveralItemsInOneFileAndBytes) {
  auto small = Matrix(3, 4);
  auto big = Matrix(800, 400);
  const std::string blob = "not really an archive";
  StoreItem items[] = {
      {true, MakeView(small.data(), DType::kFloat32, {3, 4}), {}, "small"},
      {false, {}, {reinterpret_cast<const uint8_t*>(blob.data()), blob.size()}, "blob"},
      {true, MakeView(big.data(), DType::kFloat32, {800, 400}), {}, "big"},
  };
  std::vector<uint64_t> seen;
  auto infos = WriteDataFile(*st_, "f.distcp", items, {},
                             [&](size_t i, uint64_t bytes) { seen.push_back(bytes); });
  ASSERT_TRUE(infos.ok());
  ASSERT_EQ(infos->size(), 3u);
  EXPECT_EQ(seen, (std::vector<uint64_t>{48, blob.size(), 800 * 400 * 4}));
  EXPECT_EQ((*infos)[1].offset, (*infos)[0].length);
  EXPECT_EQ((*infos)[2].offset, (*infos)[1].offset + (*infos)[1].length);
  auto bytes = ReadItem(*st_, (*infos)[1], "blob", 1 << 20);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, blob);
  ExpectBox(*st_, ChunkOf((*infos)[0], {3, 4}), 1, 2, 1, 3, 64 << 20);
  ExpectBox(*st_, ChunkOf((*infos)[2], {800, 400}), 1, 799, 1, 300, 64 << 20);
}

TEST_F(StorageTest, SeveralThreadsWriteTheSameFileAsOne) {
  std::vector<std::vector<float>> data;
  std::vector<std::string> blobs = {"first blob", std::string(100000, 'x'), ""};
  std::vector<StoreItem> items;
  for (int i = 0; i < 9; ++i) {
    if (i % 3 == 1) {
      const std::string& b = blobs[i / 3];
      items.push_back({false, {}, {reinterpret_cast<const uint8_t*>(b.data()), b.size()},
                       "blob" + std::to_string(i)});
      continue;
    }
    const int64_t rows = 1 + i * 37, cols = 3 + (i % 4) * 100;  // below and above 64 KiB
    data.push_back(Matrix(rows, cols));
    items.push_back({true, MakeView(data.back().data(), DType::kFloat32, {rows, cols}), {},
                     "t" + std::to_string(i)});
  }
  auto one = WriteDataFile(*st_, "one.distcp", items, {});
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  StoreOptions parallel;
  parallel.threads = 3;
  std::vector<int> calls(items.size(), 0);
  auto three = WriteDataFile(*st_, "three.distcp", items, parallel,
                             [&](size_t i, uint64_t) { calls[i]++; });
  ASSERT_TRUE(three.ok()) << three.status().ToString();
  EXPECT_EQ(calls, std::vector<int>(items.size(), 1));
  ASSERT_EQ(three->size(), one->size());
  for (size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ((*three)[i].relative_path, "three.distcp");
    EXPECT_EQ((*three)[i].offset, (*one)[i].offset) << i;
    EXPECT_EQ((*three)[i].length, (*one)[i].length) << i;
  }
  auto a = io::ReadWholeFile(root_ + "/one.distcp", 1 << 30);
  auto b = io::ReadWholeFile(root_ + "/three.distcp", 1 << 30);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(*a == *b);  // byte for byte, CRCs included
  parallel.threads = 0;
  EXPECT_EQ(WriteDataFile(*st_, "none.distcp", items, parallel).status().code(),
            StatusCode::kInvalidArgument);
}

// Tensors above the write range size are written range by range on any
// thread, each range checksummed as it goes: the file must still be, byte
// for byte, the archives torch.save lays out (CRCs included), whatever the
// thread count, and with checksums off the CRC fields must be 0.
TEST_F(StorageTest, LargeTensorsWrittenInRangesAreTheArchivesByteForByte) {
  // 40 MiB (three 16 MiB ranges), a transposed 17 MiB view (dense, not
  // contiguous: its storage is written as is) and a small tensor.
  std::vector<uint32_t> big((40u << 20) / 4), wide((17u << 20) / 4), small(100);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint32_t>(i * 2654435761u);
  for (size_t i = 0; i < wide.size(); ++i) wide[i] = static_cast<uint32_t>(i ^ 0x5a5a5a5a);
  std::iota(small.begin(), small.end(), 7u);
  TensorView transposed = MakeView(wide.data(), DType::kInt32, {1024, int64_t(wide.size()) / 1024});
  std::swap(transposed.shape[0], transposed.shape[1]);
  std::swap(transposed.strides[0], transposed.strides[1]);
  const std::string blob = "pickled value";
  std::vector<StoreItem> items = {
      {true, MakeView(big.data(), DType::kInt32, {int64_t(big.size())}), {}, "big"},
      {false, {}, {reinterpret_cast<const uint8_t*>(blob.data()), blob.size()}, "blob"},
      {true, transposed, {}, "transposed"},
      {true, MakeView(small.data(), DType::kInt32, {100}), {}, "small"}};
  for (bool checksums : {true, false}) {
    format::zip::WriteOptions zo;
    zo.compute_crc32 = checksums;
    std::string expected;
    for (const StoreItem& item : items)
      expected += item.is_tensor ? format::EncodeTensorArchive(item.tensor, zo).Flatten()
                                 : std::string(blob);
    for (int threads : {1, 3}) {
      StoreOptions so;
      so.checksums = checksums;
      so.threads = threads;
      so.sync = false;
      std::vector<uint64_t> reported(items.size(), 0);
      auto infos = WriteDataFile(*st_, "f.distcp", items, so,
                                 [&](size_t i, uint64_t bytes) { reported[i] += bytes; });
      ASSERT_TRUE(infos.ok()) << infos.status().ToString();
      EXPECT_EQ(reported[0], big.size() * 4);
      EXPECT_EQ(reported[2], wide.size() * 4);
      auto got = io::ReadWholeFile(root_ + "/f.distcp", 1 << 30);
      ASSERT_TRUE(got.ok());
      ASSERT_EQ(got->size(), expected.size());
      EXPECT_TRUE(*got == expected) << "checksums " << checksums << ", threads " << threads;
      // Read back through the checking path: CRCs verified on the way.
      std::vector<uint32_t> back(big.size());
      ChunkTarget t{MakeView(back.data(), DType::kInt32, {int64_t(big.size())}), {0},
                    {int64_t(big.size())}};
      ChunkMeta chunk = ChunkOf((*infos)[0], {int64_t(big.size())});
      ASSERT_TRUE(ReadChunk(*st_, "big", DType::kInt32, chunk, {&t, 1}).ok());
      EXPECT_TRUE(back == big);
    }
  }
}

TEST(SplitWriterThreadsTest, FilesFirstThenThreadsWithinFiles) {
  struct Case {
    size_t files;
    int threads, parallel_files, per_file;
  } cases[] = {{1, 4, 1, 4}, {2, 4, 2, 2}, {3, 4, 3, 1}, {8, 2, 2, 1},
               {3, 8, 3, 2}, {0, 4, 1, 4}, {2, 0, 1, 1}};
  for (const Case& c : cases) {
    const WriterThreads w = SplitWriterThreads(c.files, c.threads);
    EXPECT_EQ(w.parallel_files, c.parallel_files) << c.files << " files, " << c.threads;
    EXPECT_EQ(w.per_file, c.per_file) << c.files << " files, " << c.threads;
  }
}

TEST_F(StorageTest, MetadataThatDisagreesWithTheFileIsDataLoss) {
  auto m = Matrix(600, 700);
  StoreItem item{true, MakeView(m.data(), DType::kFloat32, {600, 700}), {}, "m"};
  auto infos = WriteDataFile(*st_, "f.distcp", {&item, 1}, {});
  ASSERT_TRUE(infos.ok());
  std::vector<float> out(600 * 700);
  ChunkTarget t{MakeView(out.data(), DType::kFloat32, {600, 700}), {0, 0}, {600, 700}};

  ChunkMeta wrong_shape = ChunkOf((*infos)[0], {700, 600});
  t.dst = MakeView(out.data(), DType::kFloat32, {700, 600});
  t.box_sizes = {700, 600};
  Status s = ReadChunk(*st_, "m", DType::kFloat32, wrong_shape, {&t, 1});
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find("'m'"), std::string::npos) << s.ToString();

  ChunkMeta past_end = ChunkOf((*infos)[0], {600, 700});
  past_end.storage.length += 1;
  t.dst = MakeView(out.data(), DType::kFloat32, {600, 700});
  t.box_sizes = {600, 700};
  s = ReadChunk(*st_, "m", DType::kFloat32, past_end, {&t, 1});
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.ToString();

  // Corrupt the archive's end records: the partial reader refuses it.
  std::string bytes = *io::ReadWholeFile(root_ + "/f.distcp", 1 << 30);
  bytes[bytes.size() - 22] ^= 0xFF;  // EOCD signature
  ASSERT_TRUE(
      io::WriteFileAtomically(root_ + "/f.distcp",
                              {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()}, false)
          .ok());
  s = ReadChunk(*st_, "m", DType::kFloat32, ChunkOf((*infos)[0], {600, 700}), {&t, 1});
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();

  // A target outside the chunk is the caller's error.
  t.box_offsets = {1, 0};
  s = ReadChunk(*st_, "m", DType::kFloat32, ChunkOf((*infos)[0], {600, 700}), {&t, 1});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

TEST_F(StorageTest, TransformedItemsRoundTripAndCorruptionNamesTheItem) {
  auto m = Matrix(600, 700);
  const std::string blob(100000, 'v');
  StoreItem items[] = {
      {true, MakeView(m.data(), DType::kFloat32, {600, 700}), {}, "m"},
      {false, {}, {reinterpret_cast<const uint8_t*>(blob.data()), blob.size()}, "blob"},
  };
  for (const std::vector<std::string>& transforms :
       {std::vector<std::string>{"stream.zstd/1"},
        std::vector<std::string>{"dcpp.byteshuffle/1", "stream.zstd/1"}}) {
    StoreOptions o;
    o.transforms = transforms;
    auto infos = WriteDataFile(*st_, "z.distcp", items, o);
    ASSERT_TRUE(infos.ok()) << infos.status().ToString();
    const std::vector<std::string> recorded(transforms.rbegin(), transforms.rend());
    EXPECT_EQ((*infos)[0].transform_descriptors, recorded);
    EXPECT_LT((*infos)[1].length, blob.size() / 10);  // compressible: it did compress
    ExpectBox(*st_, ChunkOf((*infos)[0], {600, 700}), 5, 500, 7, 600, 4096);
    auto bytes = ReadItem(*st_, (*infos)[1], "blob", 1 << 20);
    ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
    EXPECT_EQ(*bytes, blob);
    // The decoder's output cap holds.
    EXPECT_EQ(ReadItem(*st_, (*infos)[1], "blob", 1000).status().code(), StatusCode::kDataLoss);

    // Damage the compressed tensor item in the middle.
    std::string file = *io::ReadWholeFile(root_ + "/z.distcp", 1 << 30);
    file[(*infos)[0].offset + (*infos)[0].length / 2] ^= 0x5A;
    ASSERT_TRUE(
        io::WriteFileAtomically(root_ + "/z.distcp",
                                {reinterpret_cast<const uint8_t*>(file.data()), file.size()}, false)
            .ok());
    std::vector<float> out(600 * 700);
    ChunkTarget t{MakeView(out.data(), DType::kFloat32, {600, 700}), {0, 0}, {600, 700}};
    Status s = ReadChunk(*st_, "m", DType::kFloat32, ChunkOf((*infos)[0], {600, 700}), {&t, 1});
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_NE(s.message().find("'m'"), std::string::npos) << s.ToString();
  }
  StoreOptions bad;
  bad.transforms = {"stream.lz4/1"};
  auto r = WriteDataFile(*st_, "bad.distcp", items, bad);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("stream.zstd/1"), std::string::npos) << r.status().ToString();
}

TEST_F(StorageTest, LargeTransformedChunksDecodeAsTheyAreRead) {
  // Row-major chunks stream through the decoder into the targets; a chunk
  // stored transposed is not laid out as the stream assumes and is read
  // whole instead. Either way every target gets its part.
  const int64_t rows = 700, cols = 600;
  auto m = Matrix(rows, cols);
  std::vector<float> t_buf(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) t_buf[c * rows + r] = m[r * cols + c];
  TensorView transposed = MakeView(t_buf.data(), DType::kFloat32, {rows, cols});
  transposed.strides = {1, rows};
  StoreItem items[] = {{true, MakeView(m.data(), DType::kFloat32, {rows, cols}), {}, "m"},
                       {true, transposed, {}, "t"}};
  StoreOptions o;
  o.transforms = {"stream.zstd/1"};
  auto infos = WriteDataFile(*st_, "s.distcp", items, o);
  ASSERT_TRUE(infos.ok()) << infos.status().ToString();
  for (size_t i = 0; i < 2; ++i) {
    const ChunkMeta chunk = ChunkOf((*infos)[i], {rows, cols});
    std::vector<float> whole(rows * cols, -1), band(rows * 100, -1), cm(40 * 50, -1);
    TensorView col_major = MakeView(cm.data(), DType::kFloat32, {40, 50});
    col_major.strides = {1, 40};
    const ChunkTarget targets[] = {
        {MakeView(whole.data(), DType::kFloat32, {rows, cols}), {0, 0}, {rows, cols}},
        {MakeView(band.data(), DType::kFloat32, {rows, 100}), {0, 250}, {rows, 100}},
        {col_major, {600, 550}, {40, 50}},
    };
    ASSERT_TRUE(ReadChunk(*st_, items[i].name, DType::kFloat32, chunk, targets).ok());
    EXPECT_EQ(whole, m) << items[i].name;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < 100; ++c) ASSERT_EQ(band[r * 100 + c], m[r * cols + 250 + c]);
    for (int64_t r = 0; r < 40; ++r)
      for (int64_t c = 0; c < 50; ++c) ASSERT_EQ(cm[c * 40 + r], m[(600 + r) * cols + 550 + c]);
  }
}

}  // namespace
}  // namespace dcpp::storage
