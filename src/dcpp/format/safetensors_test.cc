#include "dcpp/format/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace dcpp::format::safetensors {
namespace {

std::span<const uint8_t> AsSpan(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// A file: the 8-byte length, `header` as is, then `data_bytes` zero bytes.
std::string FileOf(const std::string& header, size_t data_bytes) {
  std::string f(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) f[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return f + header + std::string(data_bytes, '\0');
}

Result<Header> ParseFile(const std::string& file) { return Parse(AsSpan(file), file.size()); }

// Parse must fail with `code` and a message containing `part`.
::testing::AssertionResult Fails(const std::string& file, StatusCode code, std::string_view part) {
  auto r = ParseFile(file);
  if (r.ok()) return ::testing::AssertionFailure() << "parsed";
  if (r.status().code() != code) return ::testing::AssertionFailure() << r.status().ToString();
  if (r.status().message().find(part) == std::string::npos)
    return ::testing::AssertionFailure()
           << "'" << r.status().message() << "' lacks '" << part << "'";
  return ::testing::AssertionSuccess();
}

// What safetensors 0.8's safetensors.torch.save writes for
//   {"b": zeros(3, f16), "a": zeros(2, 2), "c": zeros(1, bool), "z": zeros(0),
//    "s": tensor(1.0), "u": zeros(2, uint16)}, metadata={"format": "pt"}
// (368 header bytes, 407 in all), captured from the package.
constexpr std::string_view kPackageHeader =
    R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
    R"("s":{"dtype":"F32","shape":[],"data_offsets":[16,20]},"z":{"dtype":"F32","shape":[0],)"
    R"("data_offsets":[20,20]},"b":{"dtype":"F16","shape":[3],"data_offsets":[20,26]},"u":)"
    R"({"dtype":"U16","shape":[2],"data_offsets":[26,30]},"c":{"dtype":"BOOL","shape":[1],)"
    R"("data_offsets":[30,31]}}     )";

TEST(SafetensorsEncode, MatchesThePackageByteForByte) {
  std::vector<TensorSpec> specs = {
      {"b", DType::kFloat16, {3}}, {"a", DType::kFloat32, {2, 2}}, {"c", DType::kBool, {1}},
      {"z", DType::kFloat32, {0}}, {"s", DType::kFloat32, {}},     {"u", DType::kUInt16, {2}},
  };
  std::vector<std::pair<std::string, std::string>> md = {{"format", "pt"}};
  auto enc = Encode(specs, md);
  ASSERT_TRUE(enc.ok()) << enc.status().ToString();
  ASSERT_EQ(kPackageHeader.size(), 368u);
  EXPECT_EQ(enc->prefix_and_header, FileOf(std::string(kPackageHeader), 0));
  EXPECT_EQ(enc->file_size(), 407u);
  EXPECT_EQ(enc->prefix_and_header.size() % 8, 0u);
  // Ranges follow the input order.
  EXPECT_EQ(enc->ranges[0], (std::pair<uint64_t, uint64_t>{20, 26}));  // b
  EXPECT_EQ(enc->ranges[1], (std::pair<uint64_t, uint64_t>{0, 16}));   // a
  EXPECT_EQ(enc->ranges[2], (std::pair<uint64_t, uint64_t>{30, 31}));  // c
}

TEST(SafetensorsParse, ReadsThePackagesFile) {
  auto h = ParseFile(FileOf(std::string(kPackageHeader), 31));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), 6u);
  EXPECT_EQ(h->data_offset, 376u);
  EXPECT_EQ(h->data_size, 31u);
  ASSERT_EQ(h->metadata.size(), 1u);
  EXPECT_EQ(*h->FindMetadata("format"), "pt");
  const TensorInfo* a = h->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype.dtype, DType::kFloat32);
  EXPECT_EQ(a->shape, (Shape{2, 2}));
  EXPECT_EQ(a->begin, 0u);
  EXPECT_EQ(a->end, 16u);
  EXPECT_EQ(h->Find("s")->shape, Shape{});
  EXPECT_EQ(h->Find("u")->dtype.dtype, DType::kUInt16);
  EXPECT_EQ(h->Find("c")->dtype.dtype, DType::kBool);
  // In data order.
  for (size_t i = 1; i < h->tensors.size(); ++i)
    EXPECT_LE(h->tensors[i - 1].end, h->tensors[i].begin);
}

TEST(SafetensorsEncode, RoundTripsEveryDType) {
  std::vector<TensorSpec> specs;
  for (int i = 0; i < kNumDTypes; ++i) {
    const DType d = static_cast<DType>(i);
    if (!LookupDType(d)) {
      EXPECT_EQ(d, DType::kComplex128);
      continue;
    }
    specs.push_back({"t." + std::string(TorchName(d)), d, {3, i % 3}});
  }
  specs.push_back({"scalar", DType::kInt64, {}});
  auto enc = Encode(specs);
  ASSERT_TRUE(enc.ok()) << enc.status().ToString();
  auto h = ParseFile(enc->prefix_and_header + std::string(enc->data_size, '\0'));
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  ASSERT_EQ(h->tensors.size(), specs.size());
  EXPECT_TRUE(h->metadata.empty());
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorInfo* t = h->Find(specs[i].name);
    ASSERT_NE(t, nullptr) << specs[i].name;
    EXPECT_EQ(t->dtype.dtype, specs[i].dtype) << specs[i].name;
    EXPECT_EQ(t->shape, specs[i].shape);
    EXPECT_EQ(t->begin, enc->ranges[i].first);
    EXPECT_EQ(t->end, enc->ranges[i].second);
    // Every tensor is aligned to its element size (largest dtypes first).
    EXPECT_EQ((h->data_offset + t->begin) % ElementSize(specs[i].dtype), 0u) << specs[i].name;
  }
}

TEST(SafetensorsEncode, MetadataEscapesAsThePackageDoes) {
  std::vector<TensorSpec> none;
  std::vector<std::pair<std::string, std::string>> md = {{"k", "2\n\xc3\xa9/\x01\"\\"}};
  auto enc = Encode(none, md);
  ASSERT_TRUE(enc.ok());
  // serde_json: short escapes, \u00XX for other control bytes, UTF-8 and '/' as is.
  const std::string want = R"({"__metadata__":{"k":"2\n)"
                           "\xc3\xa9"
                           R"(/\u0001\"\\"}})";
  EXPECT_EQ(enc->prefix_and_header.substr(8, want.size()), want);
  auto h = ParseFile(enc->prefix_and_header);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->metadata, md);
}

TEST(SafetensorsEncode, RefusesWhatCannotBeStored) {
  auto code = [](std::vector<TensorSpec> specs,
                 std::vector<std::pair<std::string, std::string>> md = {}) {
    return Encode(specs, md).status().code();
  };
  EXPECT_EQ(code({{"x", DType::kComplex128, {1}}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"x", DType::kFloat32, {1}}, {"x", DType::kInt8, {1}}}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"", DType::kFloat32, {1}}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"__metadata__", DType::kFloat32, {1}}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"x", DType::kFloat32, {-1}}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({}, {{"a", "1"}, {"a", "2"}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"x", DType::kFloat32, {1}}}), StatusCode::kOk);
}

TEST(SafetensorsParse, SubByteDTypes) {
  auto ok = ParseFile(FileOf(R"({"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]},)"
                             R"("b":{"dtype":"F4","shape":[2],"data_offsets":[3,4]}})",
                             4));
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_FALSE(ok->Find("a")->dtype.dtype.has_value());
  EXPECT_EQ(ok->Find("b")->dtype.bits, 4);
  EXPECT_TRUE(Fails(FileOf(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2),
                    StatusCode::kDataLoss, "byte boundary"));
}

TEST(SafetensorsParse, EmptyAndNullMetadata) {
  auto empty = ParseFile(FileOf("{}", 0));
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->tensors.empty());
  auto null_md = ParseFile(FileOf(R"( {"__metadata__":null}  )", 0));
  ASSERT_TRUE(null_md.ok()) << null_md.status().ToString();
  EXPECT_TRUE(null_md->metadata.empty());
}

TEST(SafetensorsParse, AdversarialHeaders) {
  const std::string t = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  // Sanity: the base case parses.
  ASSERT_TRUE(ParseFile(FileOf("{" + t + "}", 8)).ok());
  // Length prefix.
  EXPECT_TRUE(Fails("abc", StatusCode::kDataLoss, "fewer than the 8"));
  std::string huge(8, '\0');
  huge[7] = 0x7f;
  EXPECT_TRUE(Fails(huge + "{}", StatusCode::kResourceExhausted, "exceeds the cap"));
  std::string past = FileOf("{}", 0);
  past[0] = 9;
  EXPECT_TRUE(Fails(past, StatusCode::kDataLoss, "runs past the end"));
  // JSON.
  EXPECT_TRUE(Fails(FileOf("{\"t\":", 0), StatusCode::kDataLoss, "safetensors header"));
  EXPECT_TRUE(Fails(FileOf("[]", 0), StatusCode::kDataLoss, "not an object"));
  EXPECT_TRUE(Fails(FileOf("{" + t + "," + t + "}", 8), StatusCode::kDataLoss, "duplicate key"));
  EXPECT_TRUE(
      Fails(FileOf(std::string("{}\0", 3), 0), StatusCode::kDataLoss, "safetensors header"));
  auto one = [](const std::string& body) { return "{\"t\":{" + body + "}}"; };
  // Tensor fields.
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F31","shape":[2],"data_offsets":[0,8])"), 8),
                    StatusCode::kDataLoss, "unknown dtype 'F31'"));
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","data_offsets":[0,8])"), 8), StatusCode::kDataLoss,
                    "lacks \"shape\""));
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), 8),
                    StatusCode::kDataLoss, "non-negative integer"));
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"), 8),
                    StatusCode::kDataLoss, "non-negative integer"));
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","shape":[3],"data_offsets":[0,8])"), 8),
                    StatusCode::kDataLoss, "F32 [3] takes 12 bytes"));
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","shape":[2],"data_offsets":[8,0])"), 8),
                    StatusCode::kDataLoss, "end before they begin"));
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","shape":[2],"data_offsets":[0])"), 8),
                    StatusCode::kDataLoss, "two integers"));
  EXPECT_TRUE(Fails(
      FileOf(one(R"("dtype":"U8","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,0])"),
             0),
      StatusCode::kDataLoss, "overflows"));
  // Layout of the data section.
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,8])"), 4),
                    StatusCode::kDataLoss, "truncated"));
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","shape":[2],"data_offsets":[0,8])"), 9),
                    StatusCode::kDataLoss, "trailing bytes"));
  EXPECT_TRUE(Fails(FileOf(one(R"("dtype":"F32","shape":[2],"data_offsets":[4,12])"), 12),
                    StatusCode::kDataLoss, "gap"));
  EXPECT_TRUE(Fails(FileOf(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("u":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           8),
                    StatusCode::kDataLoss, "'u': data_offsets [4, 8) overlap"));
  EXPECT_TRUE(Fails(FileOf(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("u":{"dtype":"F32","shape":[1],"data_offsets":[1000000,1000004]}})",
                           12),
                    StatusCode::kDataLoss, "'u'"));
  // Metadata.
  EXPECT_TRUE(
      Fails(FileOf(R"({"__metadata__":{"a":1}})", 0), StatusCode::kDataLoss, "not a string"));
  EXPECT_TRUE(Fails(FileOf(R"({"__metadata__":[]})", 0), StatusCode::kDataLoss, "not an object"));
  // Too short a buffer for the header is the caller's problem, not the file's.
  const std::string file = FileOf("{" + t + "}", 8);
  EXPECT_EQ(Parse(AsSpan(file).subspan(0, 12), file.size()).status().code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dcpp::format::safetensors
