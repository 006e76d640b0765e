// Safetensors files and directories opened as checkpoints: metadata built
// from their headers, LoadAll / Load (resharded) through the engine, and
// damaged files.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "dcpp/checkpoint.h"
#include "dcpp/format/safetensors.h"
#include "dcpp/tools/convert.h"
#include "temp_dir_test_base.h"

namespace dcpp {
namespace {

namespace st = format::safetensors;

// A float32 tensor whose element i is base + i.
Tensor Iota(Shape shape, float base = 0) {
  Tensor t = *Tensor::Empty(DType::kFloat32, shape);
  auto* p = static_cast<float*>(t.data());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = base + static_cast<float>(i);
  return t;
}

struct FileTensor {
  std::string name;
  Tensor t;
};

// Writes a safetensors file the way the package lays it out.
void WriteFile(const std::string& path, const std::vector<FileTensor>& tensors,
               std::vector<std::pair<std::string, std::string>> metadata = {}) {
  std::vector<st::TensorSpec> specs;
  for (const auto& ft : tensors) specs.push_back({ft.name, ft.t.dtype(), ft.t.shape()});
  auto enc = st::Encode(specs, metadata);
  ASSERT_TRUE(enc.ok()) << enc.status().ToString();
  std::string bytes = enc->prefix_and_header;
  const size_t base = bytes.size();
  bytes.resize(base + enc->data_size);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i].t;
    if (t.nbytes() == 0) continue;  // an empty tensor may have no memory
    std::memcpy(bytes.data() + base + enc->ranges[i].first, t.data(), t.nbytes());
  }
  std::ofstream(path, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

class SafetensorsCheckpointTest : public TempDirTest {};

TEST_F(SafetensorsCheckpointTest, SingleFileAndDirectoryLoadAll) {
  const std::string dir = Dir("m");
  std::filesystem::create_directories(dir);
  Tensor w = Iota({3, 4}), b = Iota({4}, 100);
  Tensor ids = *Tensor::Zeros(DType::kInt64, {2});
  static_cast<int64_t*>(ids.data())[1] = 7;
  WriteFile(dir + "/model.safetensors", {{"layer.weight", w},
                                         {"layer.bias", b},
                                         {"ids", ids},
                                         {"empty", Iota({0, 3})},
                                         {"scalar", Iota({}, 5)}});
  for (const std::string& path : {dir, dir + "/model.safetensors"}) {
    SCOPED_TRACE(path);
    auto md = ReadMetadata(path);
    ASSERT_TRUE(md.ok()) << md.status().ToString();
    ASSERT_EQ(md->entries.size(), 5u);
    const EntryMeta* e = md->Find("layer.weight");
    ASSERT_NE(e, nullptr);
    EXPECT_EQ(e->size, (Shape{3, 4}));
    ASSERT_EQ(e->chunks.size(), 1u);
    EXPECT_EQ(e->chunks[0].storage.encoding, StorageInfo::Encoding::kRawTensor);
    EXPECT_EQ(e->chunks[0].storage.relative_path, "model.safetensors");
    EXPECT_EQ(e->chunks[0].storage.length, 48u);
    auto all = LoadAll(path);
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    EXPECT_TRUE((*all)["layer.weight"].tensor().BitwiseEquals(w));
    EXPECT_TRUE((*all)["layer.bias"].tensor().BitwiseEquals(b));
    EXPECT_TRUE((*all)["ids"].tensor().BitwiseEquals(ids));
    EXPECT_EQ((*all)["empty"].tensor().shape(), (Shape{0, 3}));
    EXPECT_EQ(static_cast<const float*>((*all)["scalar"].tensor().data())[0], 5.0f);
  }
  // Load in place into a nested state dict: FQNs join the keys with dots.
  Value sd;
  sd["layer"]["weight"] = *Tensor::Zeros(DType::kFloat32, {3, 4});
  LoadOptions lo;
  lo.allow_partial_load = false;
  Value part;
  part["layer"]["weight"] = *Tensor::Zeros(DType::kFloat32, {3, 4});
  part["layer"]["bias"] = *Tensor::Zeros(DType::kFloat32, {4});
  ASSERT_TRUE(Load(part, dir).ok());
  EXPECT_TRUE(part["layer"]["weight"].tensor().BitwiseEquals(w));
  EXPECT_TRUE(part["layer"]["bias"].tensor().BitwiseEquals(b));
  // A DCP-only option does not matter; a dtype mismatch is still refused.
  Value wrong;
  wrong["layer"]["bias"] = *Tensor::Zeros(DType::kFloat64, {4});
  EXPECT_EQ(Load(wrong, dir).code(), StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsCheckpointTest, IndexedMultiFileModel) {
  const std::string dir = Dir("m");
  std::filesystem::create_directories(dir);
  Tensor a = Iota({8, 2}), b = Iota({5}, 50);
  WriteFile(dir + "/model-00001-of-00002.safetensors", {{"a", a}});
  WriteFile(dir + "/model-00002-of-00002.safetensors", {{"b", b}});
  WriteFile(dir + "/stray.safetensors", {{"c", Iota({1})}});  // not in the index: not read
  WriteText(
      dir + "/model.safetensors.index.json",
      R"({"metadata": {"total_size": 84}, "weight_map": {)"
      R"("a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})");
  auto all = LoadAll(dir);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->dict().size(), 2u);
  EXPECT_TRUE((*all)["a"].tensor().BitwiseEquals(a));
  EXPECT_TRUE((*all)["b"].tensor().BitwiseEquals(b));
  // An index that names the wrong file is refused, naming the tensor.
  WriteText(dir + "/model.safetensors.index.json",
            R"({"weight_map": {"a": "model-00002-of-00002.safetensors"}})");
  auto bad = ReadMetadata(dir);
  EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("'a'"), std::string::npos) << bad.status().ToString();
  WriteText(dir + "/model.safetensors.index.json", R"({"weight_map": {"a": "gone.safetensors"}})");
  EXPECT_EQ(ReadMetadata(dir).status().code(), StatusCode::kNotFound);
}

// torch's save_distributed layout: pieces of one tensor in several files,
// placed by DCP_SHARDING_INFO.
TEST_F(SafetensorsCheckpointTest, ShardedPiecesReshardOnLoad) {
  const std::string dir = Dir("sharded");
  std::filesystem::create_directories(dir);
  Tensor full = Iota({6, 4});
  auto rows = [&](int64_t r0, int64_t n) {
    Tensor t = *Tensor::Empty(DType::kFloat32, {n, 4});
    std::memcpy(t.data(), static_cast<float*>(full.data()) + r0 * 4, n * 4 * sizeof(float));
    return t;
  };
  Tensor v = Iota({3}, 9);
  WriteFile(
      dir + "/shard-00001-model-00001-of-00001.safetensors", {{"w", rows(0, 4)}, {"v", v}},
      {{"DCP_SHARDING_INFO", R"({"w": {"saved_offsets": [0, 0]}, "v": {"saved_offsets": [0]}})"}});
  WriteFile(dir + "/shard-00002-model-00001-of-00001.safetensors", {{"w", rows(4, 2)}},
            {{"DCP_SHARDING_INFO", R"({"w": {"saved_offsets": [4, 0]}})"}});
  auto md = ReadMetadata(dir);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  const EntryMeta* w = md->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->size, (Shape{6, 4}));
  EXPECT_EQ(w->chunks.size(), 2u);
  auto all = LoadAll(dir);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_TRUE((*all)["w"].tensor().BitwiseEquals(full));
  EXPECT_TRUE((*all)["v"].tensor().BitwiseEquals(v));
  // A column band crossing both pieces: read row by row from each.
  ShardedTensor cols;
  cols.global_shape = {6, 4};
  cols.shards.push_back({{0, 1}, *Tensor::Zeros(DType::kFloat32, {6, 2})});
  Value sd;
  sd["w"] = std::move(cols);
  ASSERT_TRUE(Load(sd, dir).ok());
  const auto* got = static_cast<const float*>(sd["w"].sharded().shards[0].local.data());
  for (int r = 0; r < 6; ++r)
    for (int c = 0; c < 2; ++c) EXPECT_EQ(got[r * 2 + c], static_cast<float>(r * 4 + c + 1));
  // Without an index the pieces present define the tensor (as torch's
  // reader has it): a missing last piece leaves a smaller tensor.
  std::filesystem::remove(dir + "/shard-00002-model-00001-of-00001.safetensors");
  auto partial = LoadAll(dir);
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ((*partial)["w"].tensor().shape(), (Shape{4, 4}));
  // A piece that leaves a hole is not covered, and the load says so.
  WriteFile(dir + "/shard-00002-model-00001-of-00001.safetensors", {{"w", rows(4, 2)}},
            {{"DCP_SHARDING_INFO", R"({"w": {"saved_offsets": [5, 0]}})"}});
  auto holed = LoadAll(dir);
  EXPECT_FALSE(holed.ok());
  // Sharding info lacking a tensor is refused, naming it and the file.
  WriteFile(dir + "/shard-00003-model-00001-of-00001.safetensors", {{"x", v}},
            {{"DCP_SHARDING_INFO", R"({"y": {"saved_offsets": [0]}})"}});
  auto lacking = ReadMetadata(dir);
  EXPECT_EQ(lacking.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(lacking.status().message().find("'x'"), std::string::npos);
}

TEST_F(SafetensorsCheckpointTest, DamagedFilesGiveClearErrors) {
  const std::string dir = Dir("m");
  std::filesystem::create_directories(dir);
  WriteFile(dir + "/model.safetensors", {{"w", Iota({16})}});
  const std::string path = dir + "/model.safetensors";
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size - 4);
  auto md = ReadMetadata(dir);
  EXPECT_EQ(md.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(md.status().message().find("model.safetensors"), std::string::npos)
      << md.status().ToString();
  const std::string header = "{\"w\": 1}        ";  // 16 bytes
  WriteText(path, std::string("\x10\0\0\0\0\0\0\0", 8) + header);
  md = ReadMetadata(dir);
  EXPECT_EQ(md.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(md.status().message().find("'w'"), std::string::npos) << md.status().ToString();
  // A directory with neither .metadata nor .safetensors files: DCP's NotFound.
  std::filesystem::remove(path);
  EXPECT_EQ(ReadMetadata(dir).status().code(), StatusCode::kNotFound);
}

TEST_F(SafetensorsCheckpointTest, SaveWritesAModelDirectory) {
  const std::string dir = Dir("out");
  Value sd;
  Tensor w = Iota({64, 8}), b = Iota({8}, 3);
  sd["model"]["w"] = w;
  sd["model"]["b"] = b;
  sd["model"]["e"] = Iota({0});
  // Column shards of one tensor, consolidated in place.
  Tensor full = Iota({5, 6}, 1000);
  ShardedTensor cols;
  cols.global_shape = {5, 6};
  for (int64_t c0 : {0, 4}) {
    const int64_t n = c0 == 0 ? 4 : 2;
    Tensor piece = *Tensor::Empty(DType::kFloat32, {5, n});
    for (int64_t r = 0; r < 5; ++r)
      for (int64_t c = 0; c < n; ++c)
        static_cast<float*>(piece.data())[r * n + c] =
            static_cast<const float*>(full.data())[r * 6 + c0 + c];
    cols.shards.push_back({{0, c0}, piece});
  }
  sd["model"]["cols"] = cols;
  SaveOptions o;
  o.format = SaveFormat::kSafetensors;
  o.max_shard_size = 64 * 8 * 4;  // w fills the first file
  auto md = Save(sd, dir, o);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_TRUE(std::filesystem::exists(dir + "/model-00001-of-00002.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/model-00002-of-00002.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/model.safetensors.index.json"));
  EXPECT_EQ(md->Find("model.w")->chunks[0].storage.relative_path,
            "model-00001-of-00002.safetensors");
  EXPECT_EQ(md->Find("model.b")->chunks[0].storage.relative_path,
            "model-00002-of-00002.safetensors");
  auto all = LoadAll(dir);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_TRUE((*all)["model.w"].tensor().BitwiseEquals(w));
  EXPECT_TRUE((*all)["model.b"].tensor().BitwiseEquals(b));
  EXPECT_TRUE((*all)["model.cols"].tensor().BitwiseEquals(full));
  EXPECT_EQ((*all)["model.e"].tensor().shape(), Shape{0});
  // Saving again with one file replaces the two.
  o.max_shard_size = 0;
  ASSERT_TRUE(Save(sd, dir, o).ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/model-00002-of-00002.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(dir + "/model-00001-of-00001.safetensors"));
  ASSERT_TRUE(LoadAll(dir).ok());
  o.overwrite = false;
  EXPECT_EQ(Save(sd, dir, o).status().code(), StatusCode::kAlreadyExists);
  // Files chosen per FQN (torch's fqn_to_index_mapping).
  o.overwrite = true;
  o.fqn_to_file_index = {{"model.w", 2}, {"model.b", 1}, {"model.e", 1}, {"model.cols", 3}};
  auto mapped = Save(sd, dir, o);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  EXPECT_EQ(mapped->Find("model.w")->chunks[0].storage.relative_path,
            "model-00002-of-00003.safetensors");
  EXPECT_EQ(mapped->Find("model.cols")->chunks[0].storage.relative_path,
            "model-00003-of-00003.safetensors");
  EXPECT_FALSE(std::filesystem::exists(dir + "/model-00001-of-00001.safetensors"));
  o.fqn_to_file_index.erase("model.e");
  auto missing = Save(sd, dir, o);
  EXPECT_EQ(missing.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(missing.status().message().find("model.e"), std::string::npos);
}

TEST_F(SafetensorsCheckpointTest, SaveRefusesNonTensorsByName) {
  Value sd;
  sd["w"] = Iota({2});
  sd["step"] = 10;
  sd["opt"]["lr"] = 0.5;
  SaveOptions o;
  o.format = SaveFormat::kSafetensors;
  auto md = Save(sd, Dir("out"), o);
  EXPECT_EQ(md.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(md.status().message().find("step"), std::string::npos) << md.status().ToString();
  EXPECT_NE(md.status().message().find("opt.lr"), std::string::npos) << md.status().ToString();
  EXPECT_FALSE(std::filesystem::exists(Dir("out") + "/model.safetensors.index.json"));
}

TEST_F(SafetensorsCheckpointTest, ConvertBetweenDcpAndSafetensors) {
  // A DCP checkpoint: a tensor saved as row shards (several chunks), a
  // compressed one, and a plain value.
  Tensor full = Iota({9, 5});
  ShardedTensor rows;
  rows.global_shape = {9, 5};
  for (int64_t r0 : {0, 4}) {
    const int64_t n = r0 == 0 ? 4 : 5;
    Tensor piece = *Tensor::Empty(DType::kFloat32, {n, 5});
    std::memcpy(piece.data(), static_cast<const float*>(full.data()) + r0 * 5, n * 5 * 4);
    rows.shards.push_back({{r0, 0}, piece});
  }
  Value sd;
  sd["model"]["w"] = rows;
  sd["model"]["b"] = Iota({5}, 0.5f);
  sd["step"] = 7;
  ASSERT_TRUE(Save(sd, Dir("dcp")).ok());

  tools::ConvertOptions to_st;
  to_st.save.format = SaveFormat::kSafetensors;
  // The plain value cannot go: a clear error naming it.
  auto refused = tools::Convert(Dir("dcp"), Dir("st"), to_st);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("'step'"), std::string::npos)
      << refused.status().ToString();
  to_st.keys = {"model.*"};
  auto md = tools::Convert(Dir("dcp"), Dir("st"), to_st);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  auto back = LoadAll(Dir("st"));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->dict().size(), 2u);
  EXPECT_TRUE((*back)["model.w"].tensor().BitwiseEquals(full));
  // A pattern matching nothing is an error, not an empty export.
  to_st.keys = {"modle.*"};
  EXPECT_EQ(tools::Convert(Dir("dcp"), Dir("st2"), to_st).status().code(),
            StatusCode::kInvalidArgument);

  // Cast on the way: bf16 rounding to nearest even, checked on values
  // bf16 holds exactly and on one it rounds.
  to_st.keys = {"model.w"};
  to_st.dtype = DType::kBFloat16;
  ASSERT_TRUE(tools::Convert(Dir("dcp"), Dir("bf16"), to_st).ok());
  auto cast = LoadAll(Dir("bf16"));
  ASSERT_TRUE(cast.ok()) << cast.status().ToString();
  const Tensor& c = (*cast)["model.w"].tensor();
  ASSERT_EQ(c.dtype(), DType::kBFloat16);
  const auto* bits = static_cast<const uint16_t*>(c.data());
  EXPECT_EQ(bits[0], 0x0000);   // 0.0
  EXPECT_EQ(bits[1], 0x3f80);   // 1.0
  EXPECT_EQ(bits[44], 0x4230);  // 44.0

  // And back to DCP: every entry as it was.
  tools::ConvertOptions to_dcp;
  auto again = tools::Convert(Dir("st"), Dir("dcp2"), to_dcp);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  auto dcp_back = LoadAll(Dir("dcp2"));
  ASSERT_TRUE(dcp_back.ok()) << dcp_back.status().ToString();
  EXPECT_TRUE((*dcp_back)["model.w"].tensor().BitwiseEquals(full));
  // DCP -> DCP keeps the plain value.
  ASSERT_TRUE(tools::Convert(Dir("dcp"), Dir("dcp3"), to_dcp).ok());
  auto kept = LoadAll(Dir("dcp3"));
  ASSERT_TRUE(kept.ok()) << kept.status().ToString();
  EXPECT_EQ((*kept)["step"].as_int(), 7);
  EXPECT_TRUE((*kept)["model"]["w"].tensor().BitwiseEquals(full));
}

// A distributed save: each rank's shards, then one consolidation into full
// tensors on rank 0.
TEST_F(SafetensorsCheckpointTest, DistributedSaveConsolidates) {
  const std::string dir = Dir("dist");
  Tensor rows_full = Iota({10, 3}), grid_full = Iota({6, 8}, 500), bias = Iota({4}, 9);
  auto slice = [](const Tensor& full, int64_t r0, int64_t nr, int64_t c0, int64_t nc) {
    const int64_t cols = full.shape()[1];
    Tensor t = *Tensor::Empty(DType::kFloat32, {nr, nc});
    for (int64_t r = 0; r < nr; ++r)
      for (int64_t c = 0; c < nc; ++c)
        static_cast<float*>(t.data())[r * nc + c] =
            static_cast<const float*>(full.data())[(r0 + r) * cols + c0 + c];
    return t;
  };
  auto run = [&](bool with_value, bool drop_piece) {
    return RunOnThreadRanks(4, [&](ProcessGroup& pg) -> Status {
      const int r = pg.rank();
      Value sd;
      ShardedTensor rows;  // uneven: 3, 3, 3, 1 rows
      rows.global_shape = {10, 3};
      rows.shards.push_back({{3 * r, 0}, slice(rows_full, 3 * r, r == 3 ? 1 : 3, 0, 3)});
      ShardedTensor grid;  // 2 x 2 blocks of 3 x 4
      grid.global_shape = {6, 8};
      if (!(drop_piece && r == 1))
        grid.shards.push_back(
            {{3 * (r / 2), 4 * (r % 2)}, slice(grid_full, 3 * (r / 2), 3, 4 * (r % 2), 4)});
      sd["model"]["rows"] = rows;
      sd["model"]["grid"] = grid;
      sd["model"]["bias"] = bias;  // replicated
      if (with_value && r == 2) sd["step"] = 3;
      SaveOptions o;
      o.format = SaveFormat::kSafetensors;
      o.process_group = &pg;
      auto md = Save(sd, dir, o);
      return md.status();
    });
  };
  for (const Status& s : run(false, false)) ASSERT_TRUE(s.ok()) << s.ToString();
  auto all = LoadAll(dir);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_TRUE((*all)["model.rows"].tensor().BitwiseEquals(rows_full));
  EXPECT_TRUE((*all)["model.grid"].tensor().BitwiseEquals(grid_full));
  EXPECT_TRUE((*all)["model.bias"].tensor().BitwiseEquals(bias));
  for (const auto& f : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(f.path().filename().string().find(".tmp"), std::string::npos) << f.path();
  // Three ranks load column bands of it (rank 0 finds the format, every
  // rank reads the headers and its byte ranges).
  for (const Status& s : RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
         const int r = pg.rank();
         const int64_t c0 = r * 3, nc = r == 2 ? 2 : 3;  // 8 columns: 3, 3, 2
         ShardedTensor band;
         band.global_shape = {6, 8};
         band.shards.push_back({{0, c0}, *Tensor::Zeros(DType::kFloat32, {6, nc})});
         Value sd;
         sd["model"]["grid"] = band;
         LoadOptions lo;
         lo.process_group = &pg;
         DCPP_RETURN_IF_ERROR(Load(sd, dir, lo));
         if (!sd["model"]["grid"].sharded().shards[0].local.BitwiseEquals(
                 slice(grid_full, 0, 6, c0, nc)))
           return InternalError("rank " + std::to_string(r) + " loaded wrong values");
         return Status();
       }))
    EXPECT_TRUE(s.ok()) << s.ToString();
  // A rank with a non-tensor value: every rank returns the same error.
  auto statuses = run(true, false);
  for (const Status& s : statuses) {
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.message(), statuses[0].message());
    EXPECT_NE(s.message().find("rank 2"), std::string::npos) << s.ToString();
  }
  // Shards that leave a hole: refused, nothing temporary left behind.
  for (const Status& s : run(false, true)) {
    EXPECT_FALSE(s.ok());
    EXPECT_NE(s.message().find("model.grid"), std::string::npos) << s.ToString();
  }
  for (const auto& f : std::filesystem::directory_iterator(dir))
    EXPECT_EQ(f.path().filename().string().find(".tmp"), std::string::npos) << f.path();
  ASSERT_TRUE(LoadAll(dir).ok());  // the earlier model is intact
}

// Pieces larger than the writer's 4 MiB gather bands, cut by columns and on
// a 2 x 2 grid with uneven rows, into several files (interleaved across the
// writer threads, each synced when its last piece is done): bit-exact.
TEST_F(SafetensorsCheckpointTest, DistributedSaveGathersColumnPiecesAcrossBands) {
  const std::string dir = Dir("bands");
  Tensor grid_full = Iota({1101, 2048}), cols_full = Iota({700, 3000}, 7), rows_full =
                                                                           Iota({1203, 1024}, 3);
  auto slice = [](const Tensor& full, int64_t r0, int64_t nr, int64_t c0, int64_t nc) {
    const int64_t cols = full.shape()[1];
    Tensor t = *Tensor::Empty(DType::kFloat32, {nr, nc});
    for (int64_t r = 0; r < nr; ++r)
      std::memcpy(static_cast<float*>(t.data()) + r * nc,
                  static_cast<const float*>(full.data()) + (r0 + r) * cols + c0,
                  static_cast<size_t>(nc) * sizeof(float));
    return t;
  };
  for (const Status& s : RunOnThreadRanks(4, [&](ProcessGroup& pg) -> Status {
         const int r = pg.rank();
         Value sd;
         ShardedTensor grid;  // rows 551 + 550, columns 1024 + 1024
         grid.global_shape = {1101, 2048};
         const int64_t gr0 = r / 2 == 0 ? 0 : 551, gnr = r / 2 == 0 ? 551 : 550;
         grid.shards.push_back({{gr0, 1024 * (r % 2)}, slice(grid_full, gr0, gnr, 1024 * (r % 2),
                                                             1024)});
         ShardedTensor cols;  // 750 columns each
         cols.global_shape = {700, 3000};
         cols.shards.push_back({{0, 750 * r}, slice(cols_full, 0, 700, 750 * r, 750)});
         ShardedTensor rows;  // 301, 301, 301, 300 rows
         rows.global_shape = {1203, 1024};
         rows.shards.push_back(
             {{301 * r, 0}, slice(rows_full, 301 * r, r == 3 ? 300 : 301, 0, 1024)});
         sd["grid"] = grid;
         sd["cols"] = cols;
         sd["rows"] = rows;
         SaveOptions o;
         o.format = SaveFormat::kSafetensors;
         o.process_group = &pg;
         o.max_shard_size = 5 << 20;  // a file per tensor
         o.io_threads = 3;
         return Save(sd, dir, o).status();
       }))
    ASSERT_TRUE(s.ok()) << s.ToString();
  size_t files = 0;
  for (const auto& f : std::filesystem::directory_iterator(dir))
    files += f.path().extension() == ".safetensors";
  EXPECT_EQ(files, 3u);
  auto all = LoadAll(dir);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_TRUE((*all)["grid"].tensor().BitwiseEquals(grid_full));
  EXPECT_TRUE((*all)["cols"].tensor().BitwiseEquals(cols_full));
  EXPECT_TRUE((*all)["rows"].tensor().BitwiseEquals(rows_full));
}

}  // namespace
}  // namespace dcpp
