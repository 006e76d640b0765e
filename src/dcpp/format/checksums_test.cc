#include "dcpp/format/checksums.h"

#include <gtest/gtest.h>

#include "dcpp/base/crc32.h"
#include "dcpp/format/torch_pickle.h"

namespace dcpp::format {
namespace {

ChecksumFile Sample() {
  ChecksumFile f;
  f.save_id = "3f2b9c1e-0d4a-4e8f-9b7a-1c2d3e4f5a6b";
  f.metadata_size = 963;
  f.metadata_crc32 = 0xdeadbeef;
  f.items.push_back({"step", "__0_0.distcp", 0, 1261, 0x12bf2cc2});
  f.items.push_back({"opt.\"name\"\n", "__1_0.abcd.distcp", 1261, 77, 0});
  return f;
}

TEST(ChecksumFileTest, RoundTrips) {
  const ChecksumFile f = Sample();
  const std::string text = EncodeChecksumFile(f);
  auto back = DecodeChecksumFile(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, f);
  ASSERT_NE(back->Find("__1_0.abcd.distcp", 1261, 77), nullptr);
  EXPECT_EQ(back->Find("__1_0.abcd.distcp", 1261, 77)->fqn, "opt.\"name\"\n");
  EXPECT_EQ(back->Find("__1_0.abcd.distcp", 1261, 78), nullptr);
  EXPECT_EQ(back->Find("__0_0.distcp", 1, 1261), nullptr);
}

TEST(ChecksumFileTest, EmptyItemsRoundTrip) {
  ChecksumFile f;
  f.save_id = "x";
  auto back = DecodeChecksumFile(EncodeChecksumFile(f));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, f);
}

// Any single flipped bit and any truncation of the file is refused: the
// sidecar's own CRC tells its damage apart from the checkpoint's.
TEST(ChecksumFileTest, EveryFlippedBitAndTruncationIsRefused) {
  const std::string text = EncodeChecksumFile(Sample());
  for (size_t i = 0; i < text.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = text;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      auto r = DecodeChecksumFile(bad);
      if (r.ok()) {
        // Only a change JSON ignores may decode, and then to the same content.
        EXPECT_EQ(*r, Sample()) << "byte " << i << " bit " << bit;
      } else {
        EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
      }
    }
  }
  for (size_t n = 0; n + 1 < text.size(); ++n) {
    auto r = DecodeChecksumFile(text.substr(0, n));
    EXPECT_FALSE(r.ok()) << "truncated to " << n;
  }
}

TEST(ChecksumFileTest, RefusesWellFormedButWrongFiles) {
  for (const char* text : {"", "{}", "[]", "null", "{\"format\":\"dcpp.checksums/2\"}",
                           "{\"format\":\"dcpp.checksums/1\",\"save_id\":\"a\"}"}) {
    auto r = DecodeChecksumFile(text);
    ASSERT_FALSE(r.ok()) << text;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << text;
  }
  // A field of the wrong type, with a correct self CRC over it.
  std::string text = EncodeChecksumFile(Sample());
  const size_t at = text.find("\"offset\":0");
  ASSERT_NE(at, std::string::npos);
  text.replace(at, 10, "\"offset\":-1");
  const size_t self = text.rfind(",\"self_crc32\"");
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x",
                Crc32({reinterpret_cast<const uint8_t*>(text.data()), self}));
  text = text.substr(0, self) + ",\"self_crc32\":\"" + hex + "\"}\n";
  auto r = DecodeChecksumFile(text);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("offset"), std::string::npos) << r.status().ToString();
}

TEST(ChecksumFileTest, NamesFollowTheSaveId) {
  EXPECT_EQ(ChecksumFileName("abc-123_X"), ".checksums.abc-123_X");
  EXPECT_EQ(ChecksumFileName(""), "");
  EXPECT_EQ(ChecksumFileName("../etc"), "");
  EXPECT_EQ(ChecksumFileName("a/b"), "");
  EXPECT_EQ(ChecksumFileName(std::string(129, 'a')), "");
  EXPECT_EQ(SaveIdOfChecksumFile(".checksums.abc"), "abc");
  EXPECT_FALSE(IsChecksumFileName(".checksums."));
  EXPECT_FALSE(IsChecksumFileName(".checksums.abc.tmp"));
  EXPECT_FALSE(IsChecksumFileName(".metadata"));
  EXPECT_TRUE(IsChecksumFileName(".checksums.3f2b9c1e-0d4a-4e8f-9b7a-1c2d3e4f5a6b"));
}

TEST(ArchiveCrcTest, CatchesAFlippedByteInAnyRecord) {
  const float data[6] = {1, 2, 3, 4, 5, 6};
  const std::string archive =
      EncodeTensorArchive(MakeView(const_cast<float*>(data), DType::kFloat32, {2, 3})).Flatten();
  ASSERT_TRUE(CheckArchiveBytes(zip::AsBytes(archive)).ok());
  auto reader = zip::Reader::Open(zip::AsBytes(archive));
  ASSERT_TRUE(reader.ok());
  for (const zip::Entry& e : reader->directory().entries) {
    auto at = reader->Offset(e.name);
    ASSERT_TRUE(at.ok());
    if (e.compressed_size == 0) continue;
    std::string bad = archive;
    bad[*at] = static_cast<char>(bad[*at] ^ 0x01);
    Status s = CheckArchiveBytes(zip::AsBytes(bad));
    ASSERT_FALSE(s.ok()) << e.name;
    EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    EXPECT_NE(s.message().find(e.name), std::string::npos) << s.ToString();
  }
}

TEST(ArchiveCrcTest, ArchivesWithoutCrcsAreAccepted) {
  const float data[4] = {1, 2, 3, 4};
  zip::WriteOptions no_crc;
  no_crc.compute_crc32 = false;
  std::string archive =
      EncodeTensorArchive(MakeView(const_cast<float*>(data), DType::kFloat32, {4}), no_crc)
          .Flatten();
  auto reader = zip::Reader::Open(zip::AsBytes(archive));
  ASSERT_TRUE(reader.ok());
  auto at = reader->Offset("data/0");
  ASSERT_TRUE(at.ok());
  archive[*at] ^= 0x40;  // nothing records what it was
  EXPECT_TRUE(CheckArchiveBytes(zip::AsBytes(archive)).ok());
  // Bytes that are no archive are left to the decoder.
  EXPECT_TRUE(CheckArchiveBytes(zip::AsBytes(std::string("not a zip"))).ok());
}

TEST(ArchiveCrcTest, RecordCrcMismatchNamesTheRecordAndOffset) {
  zip::Entry e;
  e.name = "data.pkl";
  e.crc32 = 0x12345678;
  e.compressed_size = 10;
  EXPECT_TRUE(CheckRecordCrc(e, 0x12345678, 64).ok());
  Status s = CheckRecordCrc(e, 0x12345679, 64);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("data.pkl"), std::string::npos);
  EXPECT_NE(s.message().find("64"), std::string::npos);
  e.crc32 = 0;  // none recorded
  EXPECT_TRUE(CheckRecordCrc(e, 0x12345679, 64).ok());
}

}  // namespace
}  // namespace dcpp::format
