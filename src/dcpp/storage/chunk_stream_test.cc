#include "dcpp/storage/chunk_stream.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "dcpp/format/torch_pickle.h"

namespace dcpp::storage {
namespace {

std::string Testdata(const std::string& name) {
  const std::string dir = std::string(DCPP_TESTDATA_DIR) + "/";
  std::ifstream in(dir + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << dir + name;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ChunkMeta Chunk(Shape offsets, Shape sizes) {
  ChunkMeta c;
  c.offsets = std::move(offsets);
  c.sizes = std::move(sizes);
  return c;
}

// Streams `archive` in pieces of `piece` bytes into `targets`.
bool Stream(const std::string& archive, DType dtype, const ChunkMeta& chunk,
            std::span<const ChunkTarget> targets, size_t piece, uint64_t window) {
  ChunkStream s(dtype, chunk, targets, window);
  for (size_t at = 0; at < archive.size(); at += piece) {
    const size_t n = std::min(piece, archive.size() - at);
    EXPECT_TRUE(s.Write({reinterpret_cast<const uint8_t*>(archive.data()) + at, n}).ok());
  }
  bool fits = true;
  EXPECT_TRUE(s.Finish(&fits).ok());
  return fits;
}

TEST(ChunkStreamTest, RoutesDcppArchivesIntoEveryKindOfTarget) {
  // A 3-d chunk at global offsets (5, 10, 0): value = its global index.
  const Shape sizes{3, 50, 40};
  std::vector<float> data(3 * 50 * 40);
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 50; ++j)
      for (int64_t k = 0; k < 40; ++k)
        data[(i * 50 + j) * 40 + k] = static_cast<float>((5 + i) * 10000 + (10 + j) * 100 + k);
  const std::string archive =
      format::EncodeTensorArchive(MakeView(data.data(), DType::kFloat32, sizes)).Flatten();
  const ChunkMeta chunk = Chunk({5, 10, 0}, sizes);

  for (uint64_t window : {uint64_t{1}, uint64_t{1000}, uint64_t{7000}, uint64_t{1} << 20}) {
    for (size_t piece : {size_t{1}, size_t{999}, size_t{1} << 20}) {
      std::vector<float> whole(data.size(), -1), band(3 * 50 * 7, -1), cols(2 * 13 * 40, -1);
      TensorView transposed = MakeView(cols.data(), DType::kFloat32, {2, 13, 40});
      transposed.strides = {1, 2, 26};  // column-major destination
      const ChunkTarget targets[] = {
          {MakeView(whole.data(), DType::kFloat32, sizes), {5, 10, 0}, sizes},
          {MakeView(band.data(), DType::kFloat32, {3, 50, 7}), {5, 10, 33}, {3, 50, 7}},
          {transposed, {6, 37, 0}, {2, 13, 40}},
      };
      ASSERT_TRUE(Stream(archive, DType::kFloat32, chunk, targets, piece, window))
          << "window " << window << " piece " << piece;
      EXPECT_EQ(whole, data);
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 50; ++j)
          for (int64_t k = 0; k < 7; ++k)
            ASSERT_EQ(band[(i * 50 + j) * 7 + k], data[(i * 50 + j) * 40 + 33 + k]);
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 13; ++j)
          for (int64_t k = 0; k < 40; ++k)
            ASSERT_EQ(cols[i + 2 * j + 26 * k], data[((1 + i) * 50 + 27 + j) * 40 + k]);
    }
  }
}

TEST(ChunkStreamTest, RoutesArchivesTorchWrote) {
  // torch.save(torch.arange(16.).reshape(4, 4)), see make_zip_testdata.py.
  const std::string archive = Testdata("zip_torch_4x4.zip");
  std::vector<float> out(16, -1);
  const ChunkTarget t{MakeView(out.data(), DType::kFloat32, {4, 4}), {0, 0}, {4, 4}};
  for (size_t piece : {size_t{1}, size_t{100}, archive.size()}) {
    ASSERT_TRUE(Stream(archive, DType::kFloat32, Chunk({0, 0}, {4, 4}), {&t, 1}, piece, 16));
    for (int i = 0; i < 16; ++i) ASSERT_EQ(out[i], static_cast<float>(i));
  }
}

TEST(ChunkStreamTest, EmptyAndScalarChunks) {
  std::vector<float> none;
  const std::string empty =
      format::EncodeTensorArchive(MakeView(none.data(), DType::kFloat32, {5, 0, 3})).Flatten();
  EXPECT_TRUE(Stream(empty, DType::kFloat32, Chunk({0, 0, 0}, {5, 0, 3}), {}, 7, 1 << 20));
  double x = 2.5, out = 0;
  const std::string scalar =
      format::EncodeTensorArchive(MakeView(&x, DType::kFloat64, {})).Flatten();
  const ChunkTarget t{MakeView(&out, DType::kFloat64, {}), {}, {}};
  EXPECT_TRUE(Stream(scalar, DType::kFloat64, Chunk({}, {}), {&t, 1}, 3, 1 << 20));
  EXPECT_EQ(out, 2.5);
}

TEST(ChunkStreamTest, AnythingElseDoesNotFit) {
  std::vector<float> out(6);
  const ChunkTarget t{MakeView(out.data(), DType::kFloat32, {3, 2}), {0, 0}, {3, 2}};
  // A permuted layout (a transpose torch saved as is) and a view with a
  // storage offset are correct archives, just not row-major from element 0.
  EXPECT_FALSE(Stream(Testdata("torch_pickle_tensor_transposed.pt"), DType::kFloat32,
                      Chunk({0, 0}, {3, 2}), {&t, 1}, 64, 8));
  std::vector<int32_t> ints(3);
  const ChunkTarget ti{MakeView(ints.data(), DType::kInt32, {3}), {0}, {3}};
  EXPECT_FALSE(Stream(Testdata("torch_pickle_tensor_offset.pt"), DType::kInt32, Chunk({0}, {3}),
                      {&ti, 1}, 64, 8));

  std::vector<float> m(16);
  const ChunkTarget tm{MakeView(m.data(), DType::kFloat32, {4, 4}), {0, 0}, {4, 4}};
  const std::string good = Testdata("zip_torch_4x4.zip");
  EXPECT_FALSE(Stream(good.substr(0, good.size() - 10), DType::kFloat32, Chunk({0, 0}, {4, 4}),
                      {&tm, 1}, 64, 16));  // truncated
  EXPECT_FALSE(Stream(good, DType::kFloat64, Chunk({0, 0}, {2, 4}), {}, 64, 16));  // other dtype
  EXPECT_FALSE(Stream(good, DType::kFloat32, Chunk({0, 0}, {2, 8}), {}, 64, 16));  // other shape
  EXPECT_FALSE(Stream(std::string(5000, 'P'), DType::kFloat32, Chunk({0, 0}, {4, 4}), {}, 64, 16));
  // A fake storage header ahead of the real one routes the wrong bytes; the
  // central directory then disagrees.
  std::string fake = good;
  const std::string version = "archive/.format_version";
  const size_t version_at = fake.find(version);  // its local header, before data/0's
  ASSERT_NE(version_at, std::string::npos);
  ASSERT_LT(version_at, fake.find("archive/data/0"));
  fake.replace(version_at, version.size(), "archive/data/0000000001");  // same length
  EXPECT_FALSE(Stream(fake, DType::kFloat32, Chunk({0, 0}, {4, 4}), {&tm, 1}, 64, 16));
}

}  // namespace
}  // namespace dcpp::storage
