#include "dcpp/tools/bench.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "temp_dir_test_base.h"

namespace dcpp::tools {
namespace {

class BenchTest : public TempDirTest {
 protected:
  // Writes an image of random bytes for `tensors` (fqn, dtype name, shape),
  // 64-byte aligned as run_benchmarks.py lays them out, and its index.
  void WriteState(const std::vector<std::tuple<std::string, std::string, Shape>>& tensors) {
    std::string index = "{\"tensors\": [";
    std::mt19937_64 rng(7);
    bool first = true;
    for (const auto& [fqn, dtype, shape] : tensors) {
      const uint64_t n = NumElements(shape) * ElementSize(*DTypeFromTorchName(dtype));
      if (!first) index += ", ";
      first = false;
      std::string dims;
      for (int64_t d : shape) dims += (dims.empty() ? "" : ",") + std::to_string(d);
      index += "{\"fqn\": \"" + fqn + "\", \"dtype\": \"" + dtype + "\", \"shape\": [" + dims +
               "], \"offset\": " + std::to_string(image_.size()) + "}";
      for (uint64_t i = 0; i < n; ++i) image_.push_back(static_cast<char>(rng()));
      image_.resize((image_.size() + 63) / 64 * 64, '\0');
    }
    index += "]}";
    std::ofstream(Path("state.img"), std::ios::binary).write(image_.data(), image_.size());
    std::ofstream(Path("state.json")) << index;
    options_.image_path = Path("state.img");
    options_.index_path = Path("state.json");
  }

  std::string Path(const std::string& name) const { return Dir(name); }

  std::string image_;
  BenchOptions options_;
};

// Shapes that do not divide by 3 or 4 ranks, a tensor with fewer rows than
// ranks (replicated when saving), vectors and a 0-d tensor.
const std::vector<std::tuple<std::string, std::string, Shape>> kTensors = {
    {"model.embed.weight", "bfloat16", {37, 10}},
    {"model.layers.0.mlp.up.weight", "bfloat16", {13, 7, 3}},
    {"model.layers.0.norm.weight", "bfloat16", {10}},
    {"model.few_rows", "float32", {2, 9}},
    {"optim.state.model.embed.weight.exp_avg", "float32", {37, 10}},
    {"optim.state.model.embed.weight.step", "float32", {}},
};

TEST(ParseBenchIndexTest, ReadsEntries) {
  auto parsed = ParseBenchIndex(
      R"({"version": 1, "tensors": [
            {"fqn": "a.b", "dtype": "bfloat16", "shape": [3, 4], "offset": 0},
            {"fqn": "a.c", "dtype": "float32", "shape": [], "offset": 64}]})",
      68);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  ASSERT_EQ(parsed->size(), 2u);
  EXPECT_EQ((*parsed)[0].fqn, "a.b");
  EXPECT_EQ((*parsed)[0].dtype, DType::kBFloat16);
  EXPECT_EQ((*parsed)[0].shape, (Shape{3, 4}));
  EXPECT_EQ((*parsed)[0].nbytes, 24u);
  EXPECT_EQ((*parsed)[1].offset, 64u);
  EXPECT_EQ((*parsed)[1].nbytes, 4u);
}

TEST(ParseBenchIndexTest, RejectsBadIndexes) {
  const std::pair<const char*, const char*> cases[] = {
      {R"({"t": []})", "no \"tensors\""},
      {R"({"tensors": [{"fqn": "a", "dtype": "float32", "shape": [2]}]})", "integer \"offset\""},
      {R"({"tensors": [{"fqn": "a", "dtype": "float33", "shape": [2], "offset": 0}]})",
       "unknown dtype"},
      {R"({"tensors": [{"fqn": "a", "dtype": "float32", "shape": [-1], "offset": 0}]})", ">= 0"},
      {R"({"tensors": [{"fqn": "a", "dtype": "float32", "shape": [2.0], "offset": 0}]})", ">= 0"},
      {R"({"tensors": [{"fqn": "a", "dtype": "float32", "shape": [30], "offset": 0}]})",
       "outside the image"},
      {R"({"tensors": [{"fqn": "a", "dtype": "float32", "shape": [1], "offset": 100}]})",
       "outside the image"},
      {R"({"tensors": [{"fqn": "a", "dtype": "float64",
            "shape": [4294967296, 4294967296], "offset": 0}]})",
       "overflows"},
      {R"({"tensors": [{"fqn": "a..b", "dtype": "float32", "shape": [1], "offset": 0}]})",
       "non-empty components"},
      {R"({"tensors": [{"fqn": "a", "dtype": "float32", "shape": [1], "offset": 0},
                       {"fqn": "a", "dtype": "float32", "shape": [1], "offset": 4}]})",
       "repeats"},
      {R"({"tensors": [{"fqn": "a.b", "dtype": "float32", "shape": [1], "offset": 0},
                       {"fqn": "a.b.c", "dtype": "float32", "shape": [1], "offset": 4}]})",
       "also holds"},
      {R"({"tensors": [)", "bench index"},
  };
  for (const auto& [text, want] : cases) {
    auto parsed = ParseBenchIndex(text, 64);
    ASSERT_FALSE(parsed.ok()) << text;
    EXPECT_EQ(parsed.status().code(), StatusCode::kDataLoss) << text;
    EXPECT_NE(parsed.status().message().find(want), std::string::npos)
        << text << " -> " << parsed.status().message();
  }
}

// The checkpoint BenchSave writes holds exactly the image's bytes: checked
// with LoadAll, independently of BenchLoad's own verification.
void ExpectCheckpointHoldsImage(const std::string& dir, const std::string& image,
                                const std::string& index) {
  auto all = LoadAll(dir);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  auto entries = ParseBenchIndex(index, image.size());
  ASSERT_TRUE(entries.ok());
  for (const BenchTensor& t : *entries) {
    const Value* v = &*all;
    size_t start = 0;
    for (size_t dot; v && (dot = t.fqn.find('.', start)) != std::string::npos; start = dot + 1)
      v = v->Find(t.fqn.substr(start, dot - start));
    if (v) v = v->Find(t.fqn.substr(start));
    ASSERT_TRUE(v && v->is_tensor()) << t.fqn;
    EXPECT_EQ(v->tensor().shape(), t.shape) << t.fqn;
    ASSERT_EQ(v->tensor().nbytes(), t.nbytes) << t.fqn;
    EXPECT_EQ(std::memcmp(v->tensor().data(), image.data() + t.offset, t.nbytes), 0) << t.fqn;
  }
}

TEST_F(BenchTest, SavesAndLoadsOnOneRank) {
  WriteState(kTensors);
  options_.checkpoint_dir = Path("ckpt");
  options_.sync_files = false;
  auto saved = BenchSave(options_);
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  EXPECT_EQ(saved->op, "save");
  EXPECT_EQ(saved->tensors, kTensors.size());
  EXPECT_EQ(saved->bytes, 37 * 10 * 2 + 13 * 7 * 3 * 2 + 10 * 2 + 2 * 9 * 4 + 37 * 10 * 4 + 4);
  EXPECT_GT(saved->max_rss_bytes, 0u);
  std::ifstream index_file(options_.index_path);
  const std::string index((std::istreambuf_iterator<char>(index_file)), {});
  ExpectCheckpointHoldsImage(options_.checkpoint_dir, image_, index);
  auto loaded = BenchLoad(options_);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_TRUE(loaded->verified);
  EXPECT_EQ(loaded->bytes, saved->bytes);
}

TEST_F(BenchTest, SavesOnFourRanksAndLoadsOnThree) {
  WriteState(kTensors);
  options_.checkpoint_dir = Path("ckpt");
  options_.sync_files = false;
  options_.ranks = 4;
  auto saved = BenchSave(options_);
  ASSERT_TRUE(saved.ok()) << saved.status().ToString();
  EXPECT_EQ(saved->ranks, 4);
  // Row shards: every rank wrote a data file of its own.
  for (int r = 0; r < 4; ++r) {
    // `__{r}_0.{tag}.distcp`: the tag is random per save.
    const std::string prefix = "__" + std::to_string(r) + "_0.";
    bool found = false;
    for (const auto& f : std::filesystem::directory_iterator(Path("ckpt")))
      found |= f.path().filename().string().starts_with(prefix);
    EXPECT_TRUE(found) << r;
  }
  std::ifstream index_file(options_.index_path);
  const std::string index((std::istreambuf_iterator<char>(index_file)), {});
  ExpectCheckpointHoldsImage(options_.checkpoint_dir, image_, index);
  options_.ranks = 3;
  auto loaded = BenchLoad(options_);
  ASSERT_TRUE(loaded.ok()) << loaded.status().ToString();
  EXPECT_TRUE(loaded->verified);
  EXPECT_EQ(loaded->ranks, 3);
}

TEST_F(BenchTest, LoadFindsBytesThatDifferFromTheImage) {
  WriteState(kTensors);
  options_.checkpoint_dir = Path("ckpt");
  options_.sync_files = false;
  ASSERT_TRUE(BenchSave(options_).ok());
  // One bit of model.layers.0.mlp.up.weight (at image offset 768, element 5)
  // changes after the save: the check must name that tensor and byte.
  image_[768 + 10] ^= 1;
  std::ofstream(Path("state.img"), std::ios::binary).write(image_.data(), image_.size());
  for (int ranks : {1, 3}) {
    options_.ranks = ranks;
    auto loaded = BenchLoad(options_);
    ASSERT_FALSE(loaded.ok()) << ranks;
    EXPECT_EQ(loaded.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(loaded.status().message().find("'model.layers.0.mlp.up.weight'"), std::string::npos)
        << loaded.status().message();
    if (ranks == 1) {
      EXPECT_NE(loaded.status().message().find("byte 10 "), std::string::npos)
          << loaded.status().message();
    }
  }
  options_.verify = false;
  EXPECT_TRUE(BenchLoad(options_).ok());
}

TEST_F(BenchTest, ReportsMissingInputs) {
  options_.image_path = Path("none.img");
  options_.index_path = Path("none.json");
  options_.checkpoint_dir = Path("ckpt");
  auto saved = BenchSave(options_);
  ASSERT_FALSE(saved.ok());
  EXPECT_EQ(saved.status().code(), StatusCode::kNotFound);
  EXPECT_NE(saved.status().message().find("none.img"), std::string::npos);
  options_.ranks = 0;
  EXPECT_EQ(BenchLoad(options_).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(BenchTest, CompressesTheTensorsOfOneDType) {
  // Random bytes do not compress; a run of zeros does, so the ratio shows
  // which tensors were picked.
  WriteState({{"a", "bfloat16", {64, 64}}, {"b", "float32", {256, 64}}});
  std::memset(image_.data() + 8192, 0, 256 * 64 * 4);
  std::ofstream(Path("state.img"), std::ios::binary).write(image_.data(), image_.size());
  auto bf16 = BenchCompress(Path("state.img"), Path("state.json"), "bfloat16", {"stream.zstd/1"},
                            1, 1);
  ASSERT_TRUE(bf16.ok()) << bf16.status().ToString();
  EXPECT_EQ(bf16->tensors, 1u);
  EXPECT_EQ(bf16->bytes, 64u * 64 * 2);
  EXPECT_GT(bf16->stored_bytes, bf16->bytes);  // random: a little framing on top
  EXPECT_GT(bf16->libzstd_stored_bytes, bf16->bytes);
  EXPECT_GT(bf16->encode_seconds, 0);
  auto all = BenchCompress(Path("state.img"), Path("state.json"), "",
                           {"dcpp.byteshuffle/1", "stream.zstd/1"}, 3, 2);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(all->tensors, 2u);
  EXPECT_LT(all->stored_bytes, all->bytes / 2);  // the zeros did compress
  const std::string j = CompressResultJson(*all);
  for (const char* key : {"\"op\":\"compress\"", "\"transforms\":[\"dcpp.byteshuffle/1\",",
                          "\"compression_level\":3", "\"stored_bytes\":", "\"decode_seconds\":",
                          "\"libzstd_seconds\":"})
    EXPECT_NE(j.find(key), std::string::npos) << key << " in " << j;

  EXPECT_EQ(BenchCompress(Path("state.img"), Path("state.json"), "float16", {"stream.zstd/1"}, 1)
                .status()
                .code(),
            StatusCode::kInvalidArgument);  // no such tensor
  EXPECT_EQ(BenchCompress(Path("state.img"), Path("state.json"), "", {"stream.nope/1"}, 1)
                .status()
                .code(),
            StatusCode::kInvalidArgument);
}

TEST(BenchMemcpyTest, CopiesAndReports) {
  auto r = BenchMemcpy(3 << 20);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->bytes, 3u << 20);
  EXPECT_TRUE(r->verified);
  EXPECT_GE(r->max_rss_bytes, 6u << 20);  // both buffers were touched
  auto empty = BenchMemcpy(0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(empty->bytes, 0u);
}

TEST(BenchResultJsonTest, HasEveryField) {
  BenchResult r;
  r.op = "save";
  r.seconds = 1.5;
  r.bytes = 10;
  r.transforms = {"stream.zstd/1"};
  const std::string j = BenchResultJson(r);
  for (const char* key :
       {"\"op\":\"save\"", "\"seconds\":1.5", "\"bytes\":10", "\"tensors\":", "\"ranks\":1",
        "\"threads\":", "\"transforms\":[\"stream.zstd/1\"]", "\"compression_level\":",
        "\"rss_before_bytes\":", "\"max_rss_bytes\":", "\"verified\":false"})
    EXPECT_NE(j.find(key), std::string::npos) << key << " in " << j;
}

}  // namespace
}  // namespace dcpp::tools
