#include "dcpp/tools/verify.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "dcpp/checkpoint.h"
#include "dcpp/format/checksums.h"
#include "dcpp/io/file.h"
#include "temp_dir_test_base.h"

namespace dcpp::tools {
namespace {

class VerifyTest : public TempDirTest {
 protected:
  // Saves {"w": 600x700 floats (large), "b": 16x16 floats (small), "step": 42}.
  Metadata SaveSample(SaveOptions o = {}) {
    w_.resize(600 * 700);
    b_.resize(256);
    for (size_t i = 0; i < w_.size(); ++i) w_[i] = static_cast<float>(i % 1000) * 0.5f;
    for (size_t i = 0; i < b_.size(); ++i) b_[i] = static_cast<float>(i);
    Value sd = Value::EmptyDict();
    sd["w"] = Tensor::Borrow(MakeView(w_.data(), DType::kFloat32, {600, 700}));
    sd["b"] = Tensor::Borrow(MakeView(b_.data(), DType::kFloat32, {16, 16}));
    sd["step"] = 42;
    o.sync_files = false;
    auto md = Save(sd, Dir("ck"), o);
    EXPECT_TRUE(md.ok()) << md.status().ToString();
    return *md;
  }

  const StorageInfo& StorageOf(const Metadata& md, const std::string& fqn) {
    for (const auto& e : md.entries)
      if (e.fqn == fqn) return e.is_tensor() ? e.chunks[0].storage : e.storage;
    ADD_FAILURE() << fqn;
    return md.entries[0].storage;
  }

  void Flip(const std::string& file, uint64_t at, uint8_t mask = 0x10) {
    std::fstream f(Dir("ck") + "/" + file, std::ios::in | std::ios::out | std::ios::binary);
    ASSERT_TRUE(f.good()) << file;
    f.seekg(static_cast<std::streamoff>(at));
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ mask);
    f.seekp(static_cast<std::streamoff>(at));
    f.write(&c, 1);
  }

  std::vector<float> w_, b_;
};

TEST_F(VerifyTest, CleanCheckpointVerifiesWithItsSidecar) {
  const Metadata md = SaveSample();
  const std::string sidecar = format::ChecksumFileName(*md.storage_meta->save_id);
  ASSERT_TRUE(io::Exists(Dir("ck") + "/" + sidecar).value());
  auto r = Verify(Dir("ck"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->ok()) << VerifyReportText(*r);
  EXPECT_EQ(r->checksum_file, sidecar);
  EXPECT_EQ(r->items, 3u);
  EXPECT_GT(r->bytes_read, 600u * 700 * 4);
  EXPECT_TRUE(r->unreferenced_files.empty());
  EXPECT_NE(VerifyReportJson(*r).find("\"ok\": true"), std::string::npos);
}

TEST_F(VerifyTest, CompressedCheckpointVerifies) {
  SaveOptions o;
  o.transforms = {"stream.zstd/1"};
  SaveSample(o);
  auto r = Verify(Dir("ck"));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->ok()) << VerifyReportText(*r);
}

TEST_F(VerifyTest, FlippedTensorByteIsFoundByVerifyAndLoad) {
  const Metadata md = SaveSample();
  for (const char* fqn : {"w", "b"}) {
    const StorageInfo& s = StorageOf(md, fqn);
    Flip(s.relative_path, s.offset + s.length / 2);
    auto r = Verify(Dir("ck"), {.io_threads = 3});
    ASSERT_TRUE(r.ok());
    ASSERT_EQ(r->problems.size(), 1u) << VerifyReportText(*r);
    EXPECT_EQ(r->problems[0].fqn, fqn);
    EXPECT_EQ(r->problems[0].file, s.relative_path);
    const std::string text = VerifyReportText(*r);
    EXPECT_NE(text.find("DAMAGED '" + std::string(fqn) + "'"), std::string::npos) << text;

    Value sd = Value::EmptyDict();
    std::vector<float> w(600 * 700), b(256);
    sd["w"] = Tensor::Borrow(MakeView(w.data(), DType::kFloat32, {600, 700}));
    sd["b"] = Tensor::Borrow(MakeView(b.data(), DType::kFloat32, {16, 16}));
    sd["step"] = 0;
    Status s1 = Load(sd, Dir("ck"));
    ASSERT_FALSE(s1.ok());
    EXPECT_EQ(s1.code(), StatusCode::kDataLoss);
    EXPECT_NE(s1.message().find("'" + std::string(fqn) + "'"), std::string::npos) << s1.ToString();
    EXPECT_NE(s1.message().find(s.relative_path), std::string::npos) << s1.ToString();
    auto all = LoadAll(Dir("ck"));
    EXPECT_FALSE(all.ok());
    LoadOptions off;
    off.verify_checksums = false;
    EXPECT_TRUE(Load(sd, Dir("ck"), off).ok());
    LoadAllOptions all_off;
    all_off.verify_checksums = false;
    EXPECT_TRUE(LoadAll(Dir("ck"), all_off).ok());
    Flip(s.relative_path, s.offset + s.length / 2);  // repair for the next round
  }
  auto r = Verify(Dir("ck"));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->ok()) << VerifyReportText(*r);
}

TEST_F(VerifyTest, FlippedPickledValueIsFound) {
  const Metadata md = SaveSample();
  const StorageInfo& s = StorageOf(md, "step");
  // The pickled 42 (BININT1 0x2a) lies in data.pkl near the item's start.
  std::string bytes(s.length, '\0');
  {
    std::ifstream f(Dir("ck") + "/" + s.relative_path, std::ios::binary);
    f.seekg(static_cast<std::streamoff>(s.offset));
    f.read(bytes.data(), static_cast<std::streamsize>(s.length));
  }
  const size_t at = bytes.find("K*");  // BININT1 42
  ASSERT_NE(at, std::string::npos);
  Flip(s.relative_path, s.offset + at + 1, 0x01);  // 42 -> 43
  auto r = Verify(Dir("ck"));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->problems.size(), 1u) << VerifyReportText(*r);
  EXPECT_EQ(r->problems[0].fqn, "step");
  auto all = LoadAll(Dir("ck"));
  ASSERT_FALSE(all.ok());
  EXPECT_EQ(all.status().code(), StatusCode::kDataLoss);
  LoadAllOptions off;
  off.verify_checksums = false;
  auto unchecked = LoadAll(Dir("ck"), off);
  ASSERT_TRUE(unchecked.ok()) << unchecked.status().ToString();
}

TEST_F(VerifyTest, DamagedMetadataIsCaughtThroughTheSidecar) {
  SaveSample();
  // Flip a byte of the checkpoint_id string kept in .metadata: the pickle
  // still decodes, only the sidecar knows the bytes changed.
  std::string md_bytes;
  {
    std::ifstream f(Dir("ck") + "/.metadata", std::ios::binary);
    md_bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  const size_t at = md_bytes.find(root_);
  ASSERT_NE(at, std::string::npos);
  Flip(".metadata", at + root_.size() - 1, 0x01);
  auto r = Verify(Dir("ck"));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->problems.size(), 1u) << VerifyReportText(*r);
  EXPECT_EQ(r->problems[0].file, ".metadata");
  Value sd = Value::EmptyDict();
  auto all = LoadAll(Dir("ck"));
  ASSERT_FALSE(all.ok());
  EXPECT_NE(all.status().message().find(".metadata"), std::string::npos);
}

TEST_F(VerifyTest, OverwriteKeepsOneSidecarAndStaleOnesAreNoDamage) {
  const Metadata first = SaveSample();
  const Metadata second = SaveSample();  // overwrite
  const std::string old_sidecar = format::ChecksumFileName(*first.storage_meta->save_id);
  const std::string new_sidecar = format::ChecksumFileName(*second.storage_meta->save_id);
  EXPECT_FALSE(io::Exists(Dir("ck") + "/" + old_sidecar).value());
  EXPECT_TRUE(io::Exists(Dir("ck") + "/" + new_sidecar).value());
  // A sidecar of a save that never committed (a crash before the rename)
  // and a stray data file: reported as unreferenced, not as damage.
  std::filesystem::copy_file(Dir("ck") + "/" + new_sidecar, Dir("ck") + "/.checksums.crashed");
  std::ofstream(Dir("ck") + "/__9_0.deadbeef.distcp") << "x";
  auto r = Verify(Dir("ck"));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->ok()) << VerifyReportText(*r);
  EXPECT_EQ(r->unreferenced_files,
            (std::vector<std::string>{".checksums.crashed", "__9_0.deadbeef.distcp"}));
  // Loading ignores them too.
  EXPECT_TRUE(LoadAll(Dir("ck")).ok());
}

TEST_F(VerifyTest, ItemsPastTheEndOfTheirFileAreDamage) {
  // Two row shards of an 8x4 tensor, saved as a sharded tensor, then one
  // chunk's metadata claims a file range past the end.
  std::vector<float> top(16, 1.0f), bottom(16, 2.0f);
  ShardedTensor st;
  st.global_shape = {8, 4};
  st.shards.push_back({{0, 0}, Tensor::Borrow(MakeView(top.data(), DType::kFloat32, {4, 4}))});
  st.shards.push_back({{4, 0}, Tensor::Borrow(MakeView(bottom.data(), DType::kFloat32, {4, 4}))});
  Value sd = Value::EmptyDict();
  sd["t"] = Value(std::move(st));
  SaveOptions o;
  o.sync_files = false;
  ASSERT_TRUE(Save(sd, Dir("ck"), o).ok());
  auto clean = Verify(Dir("ck"));
  ASSERT_TRUE(clean.ok());
  EXPECT_TRUE(clean->ok()) << VerifyReportText(*clean);
  // Truncate the data file: both items now end past it.
  auto md = ReadMetadata(Dir("ck"));
  ASSERT_TRUE(md.ok());
  const std::string file = md->entries[0].chunks[0].storage.relative_path;
  std::filesystem::resize_file(Dir("ck") + "/" + file, 100);
  auto r = Verify(Dir("ck"));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->ok());
  for (const auto& p : r->problems) EXPECT_EQ(p.fqn, "t");
}

TEST_F(VerifyTest, NoCheckpointIsNotFound) {
  auto r = Verify(Dir("nothing"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNotFound);
}

}  // namespace
}  // namespace dcpp::tools
