#include "dcpp/format/zip.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "dcpp/base/crc32.h"

namespace dcpp::format::zip {
namespace {

// ---- Helpers ----

std::string TestDataDir() {
  return std::string(DCPP_TESTDATA_DIR) + "/";
}

std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool WriteFile(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  return static_cast<bool>(out);
}

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "dcpp_zip_test_" + std::to_string(getpid()) + "_" + name;
}

// Runs python3 on `script`; returns its exit status and stdout+stderr.
int RunPython(const std::string& script, std::string* output) {
  const std::string path = TempPath("script.py");
  if (!WriteFile(path, script)) return -1;
  FILE* p = popen(("python3 " + path + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  output->clear();
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) output->append(buf, n);
  const int rc = pclose(p);
  std::remove(path.c_str());
  return rc;
}

bool HavePython(const std::string& import_line) {
  std::string out;
  return RunPython(import_line + "\n", &out) == 0;
}

std::string Hex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

// A manifest written by testdata/make_zip_testdata.py from Python's zipfile.
struct Manifest {
  struct Record {
    std::string name;
    uint64_t size = 0;
    std::string data;  // empty when the manifest omits it
  };
  std::string archive = "archive";
  uint32_t alignment = 64;
  bool compute_crc32 = true;
  std::vector<Record> records;
  uint64_t gap_offset = 0;
  uint64_t gap_size = 0;
};

std::optional<Manifest> ReadManifest(const std::string& path) {
  const std::optional<std::string> text = ReadFile(path);
  if (!text) return std::nullopt;
  Manifest m;
  std::istringstream in(*text);
  std::string key;
  while (in >> key) {
    if (key == "archive") {
      in >> m.archive;
    } else if (key == "alignment") {
      in >> m.alignment;
    } else if (key == "compute_crc32") {
      int v;
      in >> v;
      m.compute_crc32 = v != 0;
    } else if (key == "record") {
      Manifest::Record r;
      std::string hex;
      in >> r.name >> r.size >> hex;
      if (hex != "-") r.data = Hex(hex);
      m.records.push_back(std::move(r));
    } else if (key == "gap") {
      in >> m.gap_offset >> m.gap_size;
    } else {
      return std::nullopt;
    }
  }
  return m;
}

::testing::AssertionResult SameBytes(std::string_view want, std::string_view got) {
  const size_t n = std::min(want.size(), got.size());
  for (size_t i = 0; i < n; ++i) {
    if (want[i] != got[i]) {
      return ::testing::AssertionFailure()
             << "first difference at byte " << i << ": want 0x" << std::hex
             << (static_cast<int>(want[i]) & 0xFF) << ", got 0x"
             << (static_cast<int>(got[i]) & 0xFF) << std::dec << " (sizes " << want.size()
             << " and " << got.size() << ")";
    }
  }
  if (want.size() != got.size()) {
    return ::testing::AssertionFailure()
           << "sizes differ: want " << want.size() << ", got " << got.size();
  }
  return ::testing::AssertionSuccess();
}

uint16_t Le16(std::string_view s, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(s[at]) | static_cast<uint8_t>(s[at + 1]) << 8);
}
uint32_t Le32(std::string_view s, size_t at) {
  return Le16(s, at) | uint32_t{Le16(s, at + 2)} << 16;
}
uint64_t Le64(std::string_view s, size_t at) {
  return Le32(s, at) | uint64_t{Le32(s, at + 4)} << 32;
}
void SetLe16(std::string& s, size_t at, uint16_t v) {
  s[at] = static_cast<char>(v & 0xFF);
  s[at + 1] = static_cast<char>(v >> 8);
}
void SetLe32(std::string& s, size_t at, uint32_t v) {
  SetLe16(s, at, v & 0xFFFF);
  SetLe16(s, at + 2, v >> 16);
}
void SetLe64(std::string& s, size_t at, uint64_t v) {
  SetLe32(s, at, v & 0xFFFFFFFF);
  SetLe32(s, at + 4, v >> 32);
}

// Position of the n-th occurrence of `needle` in `hay`.
size_t FindNth(std::string_view hay, std::string_view needle, int n) {
  size_t at = std::string_view::npos;
  size_t from = 0;
  for (int i = 0; i <= n; ++i) {
    at = hay.find(needle, from);
    if (at == std::string_view::npos) return at;
    from = at + 1;
  }
  return at;
}

const std::string kCdSig("PK\x01\x02", 4);
const std::string kEndSig("PK\x05\x06", 4);
const std::string kZip64EndSig("PK\x06\x06", 4);

// Lays out the manifest's records (all data present) and compares with the
// torch file byte for byte, at several copy thresholds.
void ExpectSameAsTorch(const std::string& dir, const std::string& name) {
  SCOPED_TRACE(dir + name);
  const std::optional<std::string> torch_bytes = ReadFile(dir + name + ".zip");
  const std::optional<Manifest> m = ReadManifest(dir + name + ".txt");
  ASSERT_TRUE(torch_bytes.has_value());
  ASSERT_TRUE(m.has_value());
  ASSERT_FALSE(m->records.empty());
  std::vector<RecordSpec> records;
  for (const Manifest::Record& r : m->records) {
    ASSERT_EQ(r.data.size(), r.size) << r.name;
    records.push_back({r.name, AsBytes(r.data)});
  }
  for (size_t threshold : {size_t{0}, size_t{1}, size_t{16}, size_t{64} * 1024}) {
    SCOPED_TRACE("copy_threshold " + std::to_string(threshold));
    WriteOptions options;
    options.archive_name = m->archive;
    options.alignment = m->alignment;
    options.compute_crc32 = m->compute_crc32;
    options.copy_threshold = threshold;
    ASSERT_TRUE(CheckLayOut(records, options).ok());
    const Layout layout = LayOut(records, options);
    EXPECT_EQ(layout.total_size, torch_bytes->size());
    EXPECT_TRUE(SameBytes(*torch_bytes, layout.Flatten()));
    // Owned pieces are merged: never two in a row.
    for (size_t i = 1; i < layout.pieces.size(); ++i) {
      EXPECT_FALSE(!layout.pieces[i - 1].is_borrowed && !layout.pieces[i].is_borrowed);
    }
    // Borrowed pieces point into the caller's data, never at copies.
    for (const Piece& p : layout.pieces) {
      if (!p.is_borrowed) continue;
      bool from_input = false;
      for (const RecordSpec& r : records) from_input |= p.borrowed.data() == r.data.data();
      EXPECT_TRUE(from_input);
      EXPECT_GE(p.borrowed.size(), threshold);
    }
  }
}

// The records of torch's 4x4 archive, from the committed manifest.
Manifest TorchManifest4x4() {
  std::optional<Manifest> m = ReadManifest(TestDataDir() + "zip_torch_4x4.txt");
  return m ? *m : Manifest{};
}

std::vector<RecordSpec> Specs(const Manifest& m) {
  std::vector<RecordSpec> out;
  for (const Manifest::Record& r : m.records) out.push_back({r.name, AsBytes(r.data)});
  return out;
}

// ---- CRC-32 ----

TEST(Crc32, StandardCheckValue) {
  // The CRC-32/ISO-HDLC check value, also Python's zlib.crc32(b"123456789").
  EXPECT_EQ(Crc32(AsBytes("123456789")), 0xCBF43926u);
  EXPECT_EQ(Crc32(AsBytes("")), 0u);
  EXPECT_EQ(Crc32(AsBytes("6789"), Crc32(AsBytes("12345"))), 0xCBF43926u);
}

TEST(Crc32, MatchesZlibAtManyLengthsAlignmentsAndSeeds) {
  // Covers the carry-less-multiplication path (>= 256 bytes) and its tails.
  std::mt19937_64 rng(7);
  std::vector<uint8_t> buf(1 << 20);
  for (auto& b : buf) b = static_cast<uint8_t>(rng());
  for (int i = 0; i < 3000; ++i) {
    const size_t offset = rng() % 64;
    const size_t length = i < 600 ? static_cast<size_t>(i) : rng() % (buf.size() - 64);
    const uint32_t seed = i % 2 ? static_cast<uint32_t>(rng()) : 0;
    ASSERT_EQ(Crc32({buf.data() + offset, length}, seed),
              crc32(seed, buf.data() + offset, static_cast<uInt>(length)))
        << "length " << length << " offset " << offset;
  }
}

TEST(Crc32, CombineMatchesConcatenation) {
  std::mt19937 rng(7);
  for (size_t split : {size_t{0}, size_t{1}, size_t{100}, size_t{999}, size_t{1000}}) {
    std::string data(1000, '\0');
    for (char& c : data) c = static_cast<char>(rng());
    const Bytes all = AsBytes(data);
    EXPECT_EQ(Crc32Combine(Crc32(all.first(split)), Crc32(all.subspan(split)), 1000 - split),
              Crc32(all));
  }
}

TEST(Crc32, CombineWithLargeLengthMatchesZlib) {
  for (uint64_t len : {uint64_t{1} << 32, (uint64_t{1} << 40) + 3, ~uint64_t{0} >> 1}) {
    const uLong want = crc32_combine(0x12345678, 0x9abcdef0, static_cast<z_off_t>(len));
    EXPECT_EQ(Crc32Combine(0x12345678, 0x9abcdef0, len), static_cast<uint32_t>(want)) << len;
  }
  // Beyond z_off_t: shifting by n then by m equals shifting by n + m.
  const uint64_t big = ~uint64_t{0};
  const uint32_t step = Crc32Combine(0x12345678, 0, big - 5);
  EXPECT_EQ(Crc32Combine(0x12345678, 0x9abcdef0, big), Crc32Combine(step, 0x9abcdef0, 5));
}

// ---- Writer: byte-exact against torch.save ----

// A CRC the caller already knows is written where LayOut would have put
// the one it computes, and records the hook declines are computed as usual.
TEST(ZipWriter, KnownCrcReplacesTheComputedOne) {
  const std::string big(100000, 'b'), small = "small record";
  const std::vector<RecordSpec> records = {{"data/0", AsBytes(big)}, {"x", AsBytes(small)}};
  WriteOptions computed;
  const std::string want = LayOut(records, computed).Flatten();
  WriteOptions known = computed;
  int asked = 0;
  known.known_crc32 = [&](Bytes data) -> std::optional<uint32_t> {
    ++asked;
    if (data.data() == reinterpret_cast<const uint8_t*>(big.data())) return Crc32(AsBytes(big));
    return std::nullopt;
  };
  EXPECT_EQ(LayOut(records, known).Flatten(), want);
  EXPECT_EQ(asked, 2);
  // A wrong value shows up in the archive: the hook's value is what is used.
  known.known_crc32 = [&](Bytes data) -> std::optional<uint32_t> {
    if (data.data() == reinterpret_cast<const uint8_t*>(big.data())) return 0x12345678u;
    return std::nullopt;
  };
  EXPECT_NE(LayOut(records, known).Flatten(), want);
  // With CRCs off the hook is not consulted.
  known.compute_crc32 = false;
  known.known_crc32 = [&](Bytes) -> std::optional<uint32_t> {
    ADD_FAILURE() << "asked with compute_crc32 off";
    return std::nullopt;
  };
  computed.compute_crc32 = false;
  EXPECT_EQ(LayOut(records, known).Flatten(), LayOut(records, computed).Flatten());
}

TEST(ZipWriter, MatchesCommittedTorchArchives) {
  for (const char* name :
       {"zip_torch_4x4", "zip_torch_nocrc", "zip_torch_multi", "zip_torch_align100"}) {
    ExpectSameAsTorch(TestDataDir(), name);
  }
}

TEST(ZipWriter, TorchRecordsAreTheExpectedOnes) {
  // Guards the fixtures themselves: the record order torch 2.x writes.
  const Manifest m = TorchManifest4x4();
  std::vector<std::string> names;
  for (const auto& r : m.records) names.push_back(r.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"data.pkl", ".format_version", ".storage_alignment",
                                      "byteorder", "data/0", "version", ".data/serialization_id"}));
}

TEST(ZipWriter, MatchesInstalledTorch) {
  if (!HavePython("import torch")) GTEST_SKIP() << "python3 with torch not available";
  const std::string dir = TempPath("fresh/");
  std::string out;
  const int rc =
      RunPython("import runpy, sys\nsys.argv = ['x', '--out', '" + dir + "']\nrunpy.run_path('" +
                    TestDataDir() + "make_zip_testdata.py', run_name='__main__')\n",
                &out);
  ASSERT_EQ(rc, 0) << out;
  for (const char* name :
       {"zip_torch_4x4", "zip_torch_nocrc", "zip_torch_multi", "zip_torch_align100"}) {
    ExpectSameAsTorch(dir, name);
  }
  std::filesystem::remove_all(dir);
}

// torch.save of a 2**32 + 1 byte tensor, with the data cut out: exercises a
// record of size >= 0xFFFFFFFF (zip64 sizes, 24-byte descriptor) and records
// whose local headers start past 4 GiB (zip64 offsets).
TEST(ZipWriter, MatchesTorchZip64Skeleton) {
  const std::optional<std::string> skeleton =
      ReadFile(TestDataDir() + "zip_torch_big_skeleton.bin");
  const std::optional<Manifest> m = ReadManifest(TestDataDir() + "zip_torch_big_skeleton.txt");
  ASSERT_TRUE(skeleton.has_value());
  ASSERT_TRUE(m.has_value());
  ASSERT_GT(m->gap_size, uint64_t{0xFFFFFFFF});
  std::vector<RecordSpec> records;
  for (const Manifest::Record& r : m->records) {
    if (r.size == m->gap_size) {
      // Never dereferenced: CRCs are off and the record is borrowed.
      records.push_back({r.name, Bytes(static_cast<const uint8_t*>(nullptr), r.size)});
    } else {
      ASSERT_EQ(r.data.size(), r.size);
      records.push_back({r.name, AsBytes(r.data)});
    }
  }
  WriteOptions options;
  options.archive_name = m->archive;
  options.compute_crc32 = false;
  const Layout layout = LayOut(records, options);
  ASSERT_EQ(layout.total_size, skeleton->size() + m->gap_size);
  std::string owned;
  uint64_t at = 0;
  int borrowed = 0;
  for (const Piece& p : layout.pieces) {
    if (p.is_borrowed) {
      ++borrowed;
      EXPECT_EQ(at, m->gap_offset);
      EXPECT_EQ(p.borrowed.size(), m->gap_size);
      EXPECT_EQ(p.borrowed.data(), nullptr);
    } else {
      owned += p.owned;
    }
    at += p.size();
  }
  EXPECT_EQ(borrowed, 1);
  EXPECT_TRUE(SameBytes(*skeleton, owned));
}

// The reader on torch's real zip64 archive, through the free functions
// (the whole archive would need 4 GiB in memory).
TEST(ZipReader, ParsesTorchZip64Skeleton) {
  const std::optional<std::string> skeleton =
      ReadFile(TestDataDir() + "zip_torch_big_skeleton.bin");
  const std::optional<Manifest> m = ReadManifest(TestDataDir() + "zip_torch_big_skeleton.txt");
  ASSERT_TRUE(skeleton.has_value());
  ASSERT_TRUE(m.has_value());
  const uint64_t archive_size = skeleton->size() + m->gap_size;
  const Bytes skel = AsBytes(*skeleton);
  // Archive offset -> skeleton offset (valid outside the gap only).
  const auto skel_at = [&](uint64_t offset) {
    return static_cast<size_t>(offset < m->gap_offset ? offset : offset - m->gap_size);
  };
  Result<EndRecord> end = ParseEnd(skel.last(kMinTailBytes), archive_size);
  ASSERT_TRUE(end.ok()) << end.status().ToString();
  EXPECT_EQ(end->entry_count, m->records.size());
  EXPECT_GT(end->cd_offset, uint64_t{0xFFFFFFFF});
  Result<Directory> dir = ParseCentralDirectory(skel.subspan(skel_at(end->cd_offset), end->cd_size),
                                                *end, archive_size);
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  EXPECT_EQ(dir->archive_name, m->archive);
  ASSERT_EQ(dir->entries.size(), m->records.size());
  for (size_t i = 0; i < m->records.size(); ++i) {
    const Entry& e = dir->entries[i];
    const Manifest::Record& r = m->records[i];
    EXPECT_EQ(e.name, r.name);
    EXPECT_EQ(e.uncompressed_size, r.size);
    EXPECT_EQ(e.compressed_size, r.size);
    EXPECT_EQ(e.crc32, 0u);
    Result<uint64_t> offset =
        DataOffset(skel.subspan(skel_at(e.local_header_offset)), e, archive_size);
    ASSERT_TRUE(offset.ok()) << offset.status().ToString();
    EXPECT_EQ(*offset % 64, 0u) << r.name;
    if (r.size == m->gap_size) {
      EXPECT_EQ(*offset, m->gap_offset);
    } else {
      EXPECT_EQ(skeleton->substr(skel_at(*offset), r.size), r.data) << r.name;
    }
  }
}

// ---- Writer: layout properties ----

TEST(ZipWriter, SingleTensorArchiveIsOwnedBorrowedOwned) {
  const Manifest m = TorchManifest4x4();
  const std::string big(1 << 20, 'x');
  std::vector<RecordSpec> records = Specs(m);
  for (RecordSpec& r : records) {
    if (r.name == "data/0") r.data = AsBytes(big);
  }
  const Layout layout = LayOut(records);
  ASSERT_EQ(layout.pieces.size(), 3u);
  EXPECT_FALSE(layout.pieces[0].is_borrowed);
  EXPECT_TRUE(layout.pieces[1].is_borrowed);
  EXPECT_FALSE(layout.pieces[2].is_borrowed);
  EXPECT_EQ(layout.pieces[1].borrowed.data(), reinterpret_cast<const uint8_t*>(big.data()));
  EXPECT_EQ(layout.pieces[0].size() % 64, 0u);  // the tensor starts aligned
}

TEST(ZipReader, RangedReaderMatchesInMemoryReader) {
  // Sizes around the 64 KiB windows the ranged reader fetches up front.
  for (size_t payload : {size_t{10}, size_t{60} << 10, size_t{100} << 10, size_t{300} << 10}) {
    std::string big(payload, 'x');
    for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 7);
    const std::string small = "small record";
    const std::string archive =
        LayOut(
            {{"data.pkl", AsBytes(small)}, {"data/0", AsBytes(big)}, {"version", AsBytes("3\n")}})
            .Flatten();
    int fetches = 0;
    auto read_at = [&](uint64_t offset, uint64_t length) -> Result<std::string> {
      ++fetches;
      if (offset + length > archive.size()) return DataLossError("read past end");
      return archive.substr(offset, length);
    };
    auto ranged = Reader::OpenRanged(archive.size(), read_at, 1 << 20);
    ASSERT_TRUE(ranged.ok()) << payload << ": " << ranged.status().ToString();
    auto whole = Reader::Open(AsBytes(archive));
    ASSERT_TRUE(whole.ok());
    for (const char* name : {"data.pkl", "data/0", "version"}) {
      auto a = ranged->Read(name);
      auto b = whole->Read(name);
      ASSERT_TRUE(a.ok() && b.ok()) << name;
      EXPECT_TRUE(std::equal(a->begin(), a->end(), b->begin(), b->end())) << name;
      EXPECT_EQ(*ranged->Offset(name), *whole->Offset(name));
    }
    EXPECT_LE(fetches, 6) << payload;
    // A record larger than max_read outside the windows is refused.
    auto capped = Reader::OpenRanged(archive.size(), read_at, 1024);
    ASSERT_TRUE(capped.ok());
    auto refused = capped->Read("data/0");
    if (payload >= (size_t{300} << 10)) {
      EXPECT_EQ(refused.status().code(), StatusCode::kResourceExhausted);
      EXPECT_EQ((*capped->Stat("data/0"))->compressed_size, payload);
    }
  }
  // read_at errors come back as they are.
  auto failing = Reader::OpenRanged(
      1000, [](uint64_t, uint64_t) -> Result<std::string> { return DataLossError("disk on fire"); },
      1024);
  EXPECT_EQ(failing.status().code(), StatusCode::kDataLoss);
}

TEST(ZipWriter, EmptyArchive) {
  const Layout layout = LayOut({});
  EXPECT_EQ(layout.total_size, kMinTailBytes);
  const std::string bytes = layout.Flatten();
  Result<Reader> reader = Reader::Open(AsBytes(bytes));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_TRUE(reader->directory().entries.empty());
  EXPECT_EQ(reader->Read("data.pkl").status().code(), StatusCode::kNotFound);
}

TEST(ZipWriter, RejectsBadInputsWithAnEmptyLayout) {
  const std::string data = "abc";
  const auto bad = [](const std::vector<RecordSpec>& records, const WriteOptions& options) {
    const Status s = CheckLayOut(records, options);
    const Layout layout = LayOut(records, options);
    return s.code() == StatusCode::kInvalidArgument && layout.pieces.empty() &&
           layout.total_size == 0;
  };
  WriteOptions options;
  EXPECT_TRUE(bad({{"a", AsBytes(data)}, {"a", AsBytes(data)}}, options));
  EXPECT_TRUE(bad({{"", AsBytes(data)}}, options));
  EXPECT_TRUE(bad({{std::string("a\0b", 3), AsBytes(data)}}, options));
  EXPECT_TRUE(bad({{"dir/", AsBytes(data)}}, options));
  EXPECT_TRUE(bad({{std::string(0xFFFF - 7, 'n'), AsBytes(data)}}, options));
  EXPECT_TRUE(CheckLayOut({{std::string(0xFFFF - 8, 'n'), AsBytes(data)}}, options).ok());
  EXPECT_TRUE(bad({{"a", Bytes(static_cast<const uint8_t*>(nullptr), 10)}}, options));
  WriteOptions o = options;
  o.alignment = 0;
  EXPECT_TRUE(bad({{"a", AsBytes(data)}}, o));
  o.alignment = kMaxAlignment + 1;
  EXPECT_TRUE(bad({{"a", AsBytes(data)}}, o));
  o.alignment = kMaxAlignment;
  EXPECT_TRUE(CheckLayOut({{"a", AsBytes(data)}}, o).ok());
  o = options;
  o.archive_name = "";
  EXPECT_TRUE(bad({{"a", AsBytes(data)}}, o));
  o.archive_name = "x/y";
  EXPECT_TRUE(bad({{"a", AsBytes(data)}}, o));
  // A directory entry without data is fine, as in miniz.
  EXPECT_TRUE(CheckLayOut({{"dir/", Bytes()}}, options).ok());
}

TEST(ZipWriter, NullDataIsNeverReadWhenBorrowedWithoutCrc) {
  WriteOptions options;
  options.compute_crc32 = false;
  options.copy_threshold = 16;
  const std::vector<RecordSpec> records = {
      {"data/0", Bytes(static_cast<const uint8_t*>(nullptr), uint64_t{1} << 40)}};
  ASSERT_TRUE(CheckLayOut(records, options).ok());
  const Layout layout = LayOut(records, options);
  ASSERT_EQ(layout.pieces.size(), 3u);
  EXPECT_EQ(layout.pieces[1].borrowed.size(), uint64_t{1} << 40);
  // Below the threshold it would be copied, so it is refused.
  options.copy_threshold = size_t{1} << 41;
  EXPECT_FALSE(CheckLayOut(records, options).ok());
}

// ---- Round trip ----

TEST(ZipRoundTrip, LayOutFlattenRead) {
  std::mt19937 rng(1);
  for (uint32_t alignment : {1u, 7u, 64u, 100u, 4096u}) {
    for (size_t threshold : {size_t{0}, size_t{100}, size_t{1} << 20}) {
      SCOPED_TRACE("alignment " + std::to_string(alignment) + " threshold " +
                   std::to_string(threshold));
      std::vector<std::string> datas;
      const std::vector<size_t> sizes = {0, 1, 3, 63, 64, 65, 1000, 70000, 0, 5};
      for (size_t size : sizes) {
        std::string d(size, '\0');
        for (char& c : d) c = static_cast<char>(rng());
        datas.push_back(std::move(d));
      }
      std::vector<RecordSpec> records;
      for (size_t i = 0; i < datas.size(); ++i) {
        records.push_back({"data/" + std::to_string(i), AsBytes(datas[i])});
      }
      records.push_back({"\xc3\xa9t\xc3\xa9/x.bin", AsBytes(datas[6])});  // UTF-8 name
      WriteOptions options;
      options.alignment = alignment;
      options.copy_threshold = threshold;
      options.archive_name = "my_blob";
      const Layout layout = LayOut(records, options);
      const std::string bytes = layout.Flatten();
      ASSERT_EQ(bytes.size(), layout.total_size);
      Result<Reader> reader = Reader::Open(AsBytes(bytes));
      ASSERT_TRUE(reader.ok()) << reader.status().ToString();
      EXPECT_EQ(reader->directory().archive_name, "my_blob");
      ASSERT_EQ(reader->directory().entries.size(), records.size());
      for (size_t i = 0; i < records.size(); ++i) {
        const Entry& e = reader->directory().entries[i];
        EXPECT_EQ(e.name, records[i].name);
        EXPECT_EQ(e.crc32, Crc32(records[i].data));
        EXPECT_EQ(e.method, 0);
        Result<Bytes> data = reader->Read(records[i].name);
        ASSERT_TRUE(data.ok()) << data.status().ToString();
        EXPECT_TRUE(
            std::equal(data->begin(), data->end(), records[i].data.begin(), records[i].data.end()));
        Result<uint64_t> offset = reader->Offset(records[i].name);
        ASSERT_TRUE(offset.ok());
        EXPECT_EQ(*offset % alignment, 0u);
        EXPECT_EQ(data->data(), reinterpret_cast<const uint8_t*>(bytes.data()) + *offset);
        EXPECT_EQ(reader->directory().Find(records[i].name), &e);
      }
      EXPECT_EQ(reader->Read("missing").status().code(), StatusCode::kNotFound);
      EXPECT_EQ(reader->directory().Find("missing"), nullptr);
    }
  }
}

TEST(ZipReader, ReadsTorchArchive) {
  const std::optional<std::string> bytes = ReadFile(TestDataDir() + "zip_torch_4x4.zip");
  ASSERT_TRUE(bytes.has_value());
  Result<Reader> reader = Reader::Open(AsBytes(*bytes));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(reader->directory().archive_name, "archive");
  // Offsets verified with Python on the real torch.save output.
  EXPECT_EQ(*reader->Offset("data.pkl"), 64u);
  EXPECT_EQ(*reader->Offset("data/0"), 704u);
  Result<Bytes> version = reader->Read("version");
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(std::string(version->begin(), version->end()), "3\n");
  const Manifest m = TorchManifest4x4();
  for (const auto& r : m.records) {
    Result<Bytes> data = reader->Read(r.name);
    ASSERT_TRUE(data.ok()) << r.name;
    EXPECT_EQ(std::string(data->begin(), data->end()), r.data);
  }
}

TEST(ZipReader, AcceptsArchiveComment) {
  std::string bytes = LayOut(Specs(TorchManifest4x4())).Flatten();
  SetLe16(bytes, bytes.size() - 2, 5);
  bytes += "hello";
  Result<Reader> reader = Reader::Open(AsBytes(bytes));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_TRUE(reader->Read("data/0").ok());
}

// ---- Acceptance by other readers ----

TEST(ZipInterop, PythonZipfileReadsAndVerifiesCrcs) {
  if (!HavePython("import zipfile")) GTEST_SKIP() << "python3 not available";
  std::vector<std::string> datas = {"", "x", std::string(100000, 'q'), "hello world"};
  std::vector<RecordSpec> records = {
      {"empty", AsBytes(datas[0])},
      {"one", AsBytes(datas[1])},
      {"data/0", AsBytes(datas[2])},
      {"dir/nested name", AsBytes(datas[3])},
  };
  const std::string path = TempPath("py.zip");
  ASSERT_TRUE(WriteFile(path, LayOut(records).Flatten()));
  std::string out;
  const int rc = RunPython(
      "import zipfile\n"
      "z = zipfile.ZipFile('" +
          path +
          "')\n"
          "assert z.testzip() is None\n"
          "for i in z.infolist():\n"
          "    print(i.filename, i.file_size, len(z.read(i)))\n",
      &out);
  std::remove(path.c_str());
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(out,
            "archive/empty 0 0\narchive/one 1 1\narchive/data/0 100000 100000\n"
            "archive/dir/nested name 11 11\n");
}

// Archives from another writer: Python's zipfile, stored entries, one with
// forced zip64 sizes, extra fields of its own and an archive comment.
TEST(ZipInterop, ReadsPythonZipfileArchives) {
  if (!HavePython("import zipfile")) GTEST_SKIP() << "python3 not available";
  const std::string path = TempPath("from_py.zip");
  std::string out;
  const int rc = RunPython(
      "import zipfile\n"
      "with zipfile.ZipFile('" +
          path +
          "', 'w', zipfile.ZIP_STORED) as z:\n"
          "    z.writestr('blob/a', b'alpha')\n"
          "    with z.open('blob/big', 'w', force_zip64=True) as f:\n"
          "        f.write(bytes(range(256)) * 10)\n"
          "    i = zipfile.ZipInfo('blob/x', date_time=(2020, 1, 2, 3, 4, 6))\n"
          "    i.extra = b'\\x55\\x54\\x05\\x00\\x01\\x00\\x00\\x00\\x00'\n"
          "    z.writestr(i, b'')\n"
          "    z.comment = b'made by python'\n",
      &out);
  ASSERT_EQ(rc, 0) << out;
  const std::optional<std::string> bytes = ReadFile(path);
  std::remove(path.c_str());
  ASSERT_TRUE(bytes.has_value());
  Result<Reader> reader = Reader::Open(AsBytes(*bytes));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(reader->directory().archive_name, "blob");
  ASSERT_EQ(reader->directory().entries.size(), 3u);
  Result<Bytes> a = reader->Read("a");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(std::string(a->begin(), a->end()), "alpha");
  Result<Bytes> big = reader->Read("big");
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  ASSERT_EQ(big->size(), 2560u);
  for (size_t i = 0; i < big->size(); ++i) ASSERT_EQ((*big)[i], i % 256) << i;
  EXPECT_EQ(reader->directory().entries[1].crc32, Crc32(*big));
  Result<Bytes> x = reader->Read("x");
  ASSERT_TRUE(x.ok()) << x.status().ToString();
  EXPECT_TRUE(x->empty());
}

// An archive holding a data.pkl from a real torch.save (in the committed
// fixture), laid out by dcpp, loads with weights_only=True, also through
// the path that computes storage offsets from the layout instead of reading
// local headers.
TEST(ZipInterop, TorchLoadsOurLayout) {
  if (!HavePython("import torch")) GTEST_SKIP() << "python3 with torch not available";
  const Manifest m = TorchManifest4x4();
  std::vector<RecordSpec> records;
  // The tensor's bytes are replaced, so the check shows torch read ours.
  std::vector<float> values(16);
  for (int i = 0; i < 16; ++i) values[i] = static_cast<float>(100 + i);
  for (const auto& r : m.records) {
    if (r.name == ".data/serialization_id") continue;  // optional, only logged
    if (r.name == "data/0") {
      records.push_back(
          {r.name, Bytes(reinterpret_cast<const uint8_t*>(values.data()), 16 * sizeof(float))});
    } else {
      records.push_back({r.name, AsBytes(r.data)});
    }
  }
  for (bool crc : {true, false}) {
    WriteOptions options;
    options.compute_crc32 = crc;
    options.copy_threshold = 8;  // borrow the tensor
    const std::string path = TempPath("torch.pt");
    ASSERT_TRUE(WriteFile(path, LayOut(records, options).Flatten()));
    std::string out;
    const int rc = RunPython(
        "import torch, torch.utils.serialization\n"
        "want = torch.arange(100, 116, dtype=torch.float32).reshape(4, 4)\n"
        "t = torch.load('" +
            path +
            "', weights_only=True)\n"
            "assert torch.equal(t, want), t\n"
            "torch.utils.serialization.config.load.calculate_storage_offsets = True\n"
            "t = torch.load('" +
            path +
            "', weights_only=True, mmap=True)\n"
            "assert torch.equal(t, want), t\n"
            "print('ok')\n",
        &out);
    std::remove(path.c_str());
    EXPECT_EQ(rc, 0) << out;
    EXPECT_EQ(out, "ok\n");
  }
}

// ---- zip64 layout math (no data is touched: null spans, CRCs off) ----

// The archive described by a Layout, without materialising borrowed data.
class SparseArchive {
 public:
  explicit SparseArchive(const Layout& layout) {
    uint64_t at = 0;
    for (const Piece& p : layout.pieces) {
      if (!p.is_borrowed) owned_[at] = &p.owned;
      at += p.size();
    }
    size_ = at;
  }
  uint64_t size() const { return size_; }
  // Bytes from `offset` to the end of the owned piece holding it.
  Bytes At(uint64_t offset) const {
    auto it = owned_.upper_bound(offset);
    if (it == owned_.begin()) return {};
    --it;
    const uint64_t rel = offset - it->first;
    if (rel >= it->second->size()) return {};
    return AsBytes(*it->second).subspan(rel);
  }
  std::string_view Str(uint64_t offset, size_t n) const {
    const Bytes b = At(offset);
    if (b.size() < n) return {};
    return std::string_view(reinterpret_cast<const char*>(b.data()), n);
  }

 private:
  std::map<uint64_t, const std::string*> owned_;
  uint64_t size_ = 0;
};

struct Parsed {
  EndRecord end;
  Directory dir;
  std::vector<uint64_t> data_offsets;
};

::testing::AssertionResult ParseSparse(const SparseArchive& a, Parsed* out) {
  const Bytes tail = a.At(a.size() - kMinTailBytes);
  if (tail.size() != kMinTailBytes) return ::testing::AssertionFailure() << "no tail";
  Result<EndRecord> end = ParseEnd(tail, a.size());
  if (!end.ok()) return ::testing::AssertionFailure() << end.status().ToString();
  const Bytes cd = a.At(end->cd_offset).first(end->cd_size);
  Result<Directory> dir = ParseCentralDirectory(cd, *end, a.size());
  if (!dir.ok()) return ::testing::AssertionFailure() << dir.status().ToString();
  out->end = *end;
  out->dir = *dir;
  for (const Entry& e : dir->entries) {
    Result<uint64_t> offset = DataOffset(a.At(e.local_header_offset), e, a.size());
    if (!offset.ok()) return ::testing::AssertionFailure() << offset.status().ToString();
    out->data_offsets.push_back(*offset);
  }
  return ::testing::AssertionSuccess();
}

Bytes Fake(uint64_t size) { return Bytes(static_cast<const uint8_t*>(nullptr), size); }

WriteOptions NoCrc() {
  WriteOptions o;
  o.compute_crc32 = false;
  o.copy_threshold = 1;
  return o;
}

TEST(ZipZip64, SizeThresholdIsInclusive) {
  // Sizes 0xFFFFFFFE and 0xFFFFFFFF straddle miniz's ">= 0xFFFFFFFF" test.
  for (uint64_t size : {uint64_t{0xFFFFFFFE}, uint64_t{0xFFFFFFFF}, uint64_t{5} << 32}) {
    SCOPED_TRACE(size);
    const bool zip64 = size >= 0xFFFFFFFF;
    const Layout layout = LayOut({{"data/0", Fake(size)}}, NoCrc());
    const SparseArchive a(layout);
    const std::string_view h = a.Str(0, 30);
    ASSERT_EQ(h.size(), 30u);
    const uint16_t name_len = Le16(h, 26);
    const uint16_t extra_len = Le16(h, 28);
    EXPECT_EQ(Le32(h, 18), 0u);  // sizes live elsewhere
    EXPECT_EQ(Le32(h, 22), 0u);
    const std::string_view extra = a.Str(30 + name_len, extra_len);
    if (zip64) {
      EXPECT_EQ(Le16(extra, 0), 1);
      EXPECT_EQ(Le16(extra, 2), 16);
      EXPECT_EQ(Le64(extra, 4), size);
      EXPECT_EQ(Le64(extra, 12), 0u);  // miniz writes 0 compressed size here
      EXPECT_EQ(extra.substr(20, 2), "FB");
    } else {
      EXPECT_EQ(extra.substr(0, 2), "FB");
    }
    const uint64_t data_offset = 30 + name_len + extra_len;
    EXPECT_EQ(data_offset % 64, 0u);
    const std::string_view dd = a.Str(data_offset + size, 24);
    ASSERT_FALSE(dd.empty());
    EXPECT_EQ(dd.substr(0, 4), std::string_view("PK\x07\x08", 4));
    if (zip64) {
      EXPECT_EQ(Le64(dd, 8), size);
      EXPECT_EQ(Le64(dd, 16), size);
    } else {
      EXPECT_EQ(Le32(dd, 8), size);
      EXPECT_EQ(Le32(dd, 12), size);
    }
    const uint64_t cd_offset = data_offset + size + (zip64 ? 24 : 16);
    const std::string_view cdh = a.Str(cd_offset, 46);
    ASSERT_EQ(cdh.substr(0, 4), kCdSig);
    EXPECT_EQ(Le32(cdh, 20), zip64 ? 0xFFFFFFFFu : size);
    EXPECT_EQ(Le16(cdh, 30), zip64 ? 20 : 0);
    Parsed p;
    ASSERT_TRUE(ParseSparse(a, &p));
    EXPECT_EQ(p.end.cd_offset, cd_offset);
    EXPECT_EQ(p.dir.entries[0].uncompressed_size, size);
    EXPECT_EQ(p.data_offsets[0], data_offset);
  }
}

TEST(ZipZip64, OffsetThresholdIsInclusive) {
  // The first record's data starts at 64 ("archive/a" needs 43 header bytes)
  // and is followed by a 16-byte descriptor, so a size of 0xFFFFFFFF - 80
  // puts the second local header exactly at 0xFFFFFFFF; one byte less puts
  // it at 0xFFFFFFFE.
  for (uint64_t first : {uint64_t{0xFFFFFFFF - 81}, uint64_t{0xFFFFFFFF - 80}}) {
    SCOPED_TRACE(first);
    const uint64_t second_at = 64 + first + 16;
    const bool zip64 = second_at >= 0xFFFFFFFF;
    const Layout layout = LayOut({{"a", Fake(first)}, {"b", Fake(100)}, {"c", Bytes()}}, NoCrc());
    const SparseArchive a(layout);
    const std::string_view h = a.Str(second_at, 30);
    ASSERT_EQ(h.substr(0, 4), std::string_view("PK\x03\x04", 4));
    const uint16_t extra_len = Le16(h, 28);
    const std::string_view extra = a.Str(second_at + 39, extra_len);
    if (zip64) {
      EXPECT_EQ(Le16(extra, 0), 1);
      EXPECT_EQ(Le16(extra, 2), 8);
      EXPECT_EQ(Le64(extra, 4), second_at);
    } else {
      EXPECT_EQ(extra.substr(0, 2), "FB");
    }
    const uint64_t data_offset = second_at + 39 + extra_len;
    EXPECT_EQ(data_offset % 64, 0u);
    // A zip64 extra (offset only) still makes the descriptor 24 bytes.
    const std::string_view dd = a.Str(data_offset + 100, 24);
    ASSERT_EQ(dd.substr(0, 4), std::string_view("PK\x07\x08", 4));
    if (zip64) {
      EXPECT_EQ(Le64(dd, 8), 100u);
      EXPECT_EQ(Le64(dd, 16), 100u);
    } else {
      EXPECT_EQ(Le32(dd, 8), 100u);
      EXPECT_EQ(dd.substr(16, 4), std::string_view("PK\x03\x04", 4));
    }
    Parsed p;
    ASSERT_TRUE(ParseSparse(a, &p));
    ASSERT_EQ(p.dir.entries.size(), 3u);
    EXPECT_EQ(p.dir.entries[1].local_header_offset, second_at);
    EXPECT_EQ(p.data_offsets[1], data_offset);
    // The empty record: no descriptor, flags 0x0800, zip64 offset extra.
    const uint64_t third_at = data_offset + 100 + (zip64 ? 24 : 16);
    EXPECT_EQ(p.dir.entries[2].local_header_offset, third_at);
    const std::string_view h3 = a.Str(third_at, 30);
    EXPECT_EQ(Le16(h3, 6), 0x0800);
    EXPECT_EQ(Le16(a.Str(third_at + 39, 4), 0), 1);  // zip64 extra first
    EXPECT_EQ(p.data_offsets[2] % 64, 0u);
    // CD offset is past 4 GiB: the classic EOCD saturates it.
    const std::string_view eocd = a.Str(a.size() - 22, 22);
    EXPECT_EQ(eocd.substr(0, 4), kEndSig);
    EXPECT_EQ(Le32(eocd, 16), 0xFFFFFFFFu);
    EXPECT_EQ(p.end.cd_offset, third_at + 30 + 9 + Le16(h3, 28));
  }
}

// ---- Corrupt input ----

// Opens and reads every entry; whatever happens, returned spans must lie
// inside the archive. Returns true if everything read fine.
bool OpenAndReadAll(std::string_view bytes) {
  const Bytes archive = AsBytes(bytes);
  Result<Reader> reader = Reader::Open(archive);
  if (!reader.ok()) {
    EXPECT_FALSE(reader.status().message().empty());
    return false;
  }
  bool all_ok = true;
  for (const Entry& e : reader->directory().entries) {
    Result<Bytes> data = reader->Read(e.name);
    if (!data.ok()) {
      all_ok = false;
      continue;
    }
    EXPECT_GE(data->data(), archive.data());
    EXPECT_LE(data->data() + data->size(), archive.data() + archive.size());
    EXPECT_EQ(data->size(), e.uncompressed_size);
  }
  return all_ok;
}

std::vector<std::string> CorruptionInputs() {
  std::vector<std::string> out;
  if (auto t = ReadFile(TestDataDir() + "zip_torch_4x4.zip")) out.push_back(*t);
  if (auto t = ReadFile(TestDataDir() + "zip_torch_multi.zip")) out.push_back(*t);
  const std::string a = "abc", b(300, 'b');
  out.push_back(LayOut({{"x", AsBytes(a)}, {"y", Bytes()}, {"z", AsBytes(b)}}).Flatten());
  return out;
}

TEST(ZipCorrupt, EveryTruncationFails) {
  for (const std::string& bytes : CorruptionInputs()) {
    ASSERT_TRUE(OpenAndReadAll(bytes));
    for (size_t n = 0; n < bytes.size(); ++n) {
      EXPECT_FALSE(Reader::Open(AsBytes(bytes).first(n)).ok()) << "prefix of " << n;
      // Dropping leading bytes shifts every offset.
      EXPECT_FALSE(OpenAndReadAll(std::string_view(bytes).substr(bytes.size() - n)))
          << "suffix of " << n;
    }
  }
}

TEST(ZipCorrupt, EverySingleByteChangeIsSafe) {
  for (const std::string& original : CorruptionInputs()) {
    int failures = 0;
    for (size_t i = 0; i < original.size(); ++i) {
      for (uint8_t change : {0x01, 0x80, 0xFF}) {
        std::string bytes = original;
        bytes[i] = static_cast<char>(bytes[i] ^ change);
        failures += !OpenAndReadAll(bytes);
      }
      for (char set : {'\0', '\xFF'}) {
        std::string bytes = original;
        if (bytes[i] == set) continue;
        bytes[i] = set;
        failures += !OpenAndReadAll(bytes);
      }
    }
    EXPECT_GT(failures, 0);
  }
}

TEST(ZipCorrupt, RandomDamageIsSafe) {
  std::mt19937 rng(42);
  for (const std::string& original : CorruptionInputs()) {
    for (int iter = 0; iter < 2000; ++iter) {
      std::string bytes = original;
      const int changes = 1 + static_cast<int>(rng() % 8);
      for (int c = 0; c < changes; ++c) {
        bytes[rng() % bytes.size()] = static_cast<char>(rng());
      }
      OpenAndReadAll(bytes);
    }
  }
}

class ZipCrafted : public ::testing::Test {
 protected:
  void SetUp() override {
    data_ = {"hello", std::string(200, 'd'), "xyz"};
    records_ = {{"data/1", AsBytes(data_[0])},
                {"data/2", AsBytes(data_[1])},
                {"version", AsBytes(data_[2])}};
    bytes_ = LayOut(records_).Flatten();
    eocd_ = bytes_.size() - 22;
    z64_ = bytes_.size() - 22 - 20 - 56;
    cd_ = Le64(bytes_, z64_ + 48);
  }
  Status OpenStatus() const { return Reader::Open(AsBytes(bytes_)).status(); }

  std::vector<std::string> data_;
  std::vector<RecordSpec> records_;
  std::string bytes_;
  size_t eocd_ = 0, z64_ = 0, cd_ = 0;
};

TEST_F(ZipCrafted, Baseline) { EXPECT_TRUE(OpenAndReadAll(bytes_)); }

TEST_F(ZipCrafted, TrailingGarbageIsRejected) {
  bytes_ += "junk";
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, CentralDirectoryOutOfRange) {
  SetLe64(bytes_, z64_ + 48, cd_ + 1000);
  SetLe32(bytes_, eocd_ + 16, static_cast<uint32_t>(cd_ + 1000));
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, ClassicAndZip64Disagree) {
  SetLe32(bytes_, eocd_ + 16, static_cast<uint32_t>(cd_ + 1));
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, SaturatedFieldsWithoutZip64AreRejected) {
  bytes_[eocd_ - 20] = 'X';  // break the locator signature
  SetLe32(bytes_, eocd_ + 16, 0xFFFFFFFF);
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, HugeEntryCountIsCappedByDirectorySize) {
  SetLe64(bytes_, z64_ + 24, uint64_t{1} << 60);
  SetLe64(bytes_, z64_ + 32, uint64_t{1} << 60);
  SetLe16(bytes_, eocd_ + 8, 0xFFFF);
  SetLe16(bytes_, eocd_ + 10, 0xFFFF);
  const Status s = OpenStatus();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("entries"), std::string::npos) << s.message();
}

TEST_F(ZipCrafted, LocatorPointsOutside) {
  SetLe64(bytes_, eocd_ - 20 + 8, ~uint64_t{0} - 10);
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
  SetLe64(bytes_, eocd_ - 20 + 8, 0);
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, MultiDiskIsUnimplemented) {
  SetLe32(bytes_, eocd_ - 20 + 16, 2);
  EXPECT_EQ(OpenStatus().code(), StatusCode::kUnimplemented);
}

TEST_F(ZipCrafted, CompressedAndEncryptedRecordsAreUnimplemented) {
  const size_t second = FindNth(bytes_, kCdSig, 1);
  SetLe16(bytes_, second + 10, 8);  // deflate
  Result<Reader> reader = Reader::Open(AsBytes(bytes_));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ(reader->Read("data/2").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(reader->Offset("data/2").status().code(), StatusCode::kUnimplemented);
  EXPECT_TRUE(reader->Read("data/1").ok());
  SetLe16(bytes_, second + 10, 0);
  SetLe16(bytes_, second + 8, 0x0809);  // encrypted
  reader = Reader::Open(AsBytes(bytes_));
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->Read("data/2").status().code(), StatusCode::kUnimplemented);
}

TEST_F(ZipCrafted, DuplicateNamesAreRejected) {
  const size_t second = FindNth(bytes_, kCdSig, 1);
  bytes_[second + 46 + std::string("archive/data/").size()] = '1';  // data/2 -> data/1
  const Status s = OpenStatus();
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("data/1"), std::string::npos) << s.message();
}

TEST_F(ZipCrafted, NameOutsideArchiveFolderIsRejected) {
  const size_t second = FindNth(bytes_, kCdSig, 1);
  bytes_[second + 46] = 'X';
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
  const size_t first = FindNth(bytes_, kCdSig, 0);
  SetLe16(bytes_, first + 28, 3);  // "arc": no folder at all
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, StoredSizesMustAgree) {
  const size_t first = FindNth(bytes_, kCdSig, 0);
  SetLe32(bytes_, first + 20, 4);
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, EntryRunningIntoDirectoryIsRejected) {
  const size_t last = FindNth(bytes_, kCdSig, 2);
  SetLe32(bytes_, last + 20, 1000);
  SetLe32(bytes_, last + 24, 1000);
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, BrokenLocalHeaderFailsOnlyThatRead) {
  const size_t second = FindNth(bytes_, kCdSig, 1);
  const uint32_t lho = Le32(bytes_, second + 42);
  bytes_[lho] = 'X';
  Result<Reader> reader = Reader::Open(AsBytes(bytes_));
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->Read("data/2").status().code(), StatusCode::kDataLoss);
  EXPECT_TRUE(reader->Read("data/1").ok());
  bytes_[lho] = 'P';
  SetLe16(bytes_, lho + 28, 0xFFFF);  // local extra length pushes data past the end
  reader = Reader::Open(AsBytes(bytes_));
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->Read("data/2").status().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, Zip64ExtraTooShort) {
  const size_t first = FindNth(bytes_, kCdSig, 0);
  SetLe32(bytes_, first + 42, 0xFFFFFFFF);  // offset now needs a zip64 extra
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST_F(ZipCrafted, BytesAfterLastEntryAreRejected) {
  SetLe64(bytes_, z64_ + 24, 2);
  SetLe64(bytes_, z64_ + 32, 2);
  SetLe16(bytes_, eocd_ + 8, 2);
  SetLe16(bytes_, eocd_ + 10, 2);
  EXPECT_EQ(OpenStatus().code(), StatusCode::kDataLoss);
}

TEST(ZipReader, ArgumentChecks) {
  const std::string bytes = LayOut(Specs(TorchManifest4x4())).Flatten();
  const Bytes all = AsBytes(bytes);
  EXPECT_EQ(ParseEnd(all, all.size() - 1).status().code(), StatusCode::kInvalidArgument);
  Result<EndRecord> end = ParseEnd(all.last(kMinTailBytes), all.size());
  ASSERT_TRUE(end.ok());
  EXPECT_EQ(ParseCentralDirectory(all.subspan(end->cd_offset, end->cd_size - 1), *end, all.size())
                .status()
                .code(),
            StatusCode::kInvalidArgument);
  Entry e;
  e.local_header_offset = 0;
  EXPECT_EQ(DataOffset(all.first(29), e, all.size()).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ParseEnd(all.last(21), all.size()).status().code(), StatusCode::kDataLoss);
  // A tail that holds the EOCD but not the zip64 locator still parses when
  // the classic fields suffice.
  Result<EndRecord> classic = ParseEnd(all.last(22), all.size());
  ASSERT_TRUE(classic.ok()) << classic.status().ToString();
  EXPECT_EQ(classic->cd_offset, end->cd_offset);
}


TEST(ZipLayout, GivenCrcsAreUsedAndDataIsNotRead) {
  const std::string big(100000, 'x');
  std::vector<RecordSpec> records = {{"data.pkl", AsBytes("pkl")}, {"data/0", AsBytes(big)}};
  WriteOptions o;
  o.copy_threshold = 0;
  o.compute_crc32 = false;
  o.record_crc32 = {0x11111111u, 0x22222222u};
  // The streamed record needs no data: only its size.
  records[1].data = Bytes(static_cast<const uint8_t*>(nullptr), big.size());
  ASSERT_TRUE(CheckLayOut(records, o).ok());
  Layout layout = LayOut(records, o);
  ASSERT_FALSE(layout.pieces.empty());
  std::string archive;
  for (const Piece& p : layout.pieces)
    archive += p.is_borrowed && p.borrowed.data() == nullptr
                   ? std::string(p.borrowed.size(), 'x')
                   : (p.is_borrowed ? std::string(reinterpret_cast<const char*>(p.borrowed.data()),
                                                  p.borrowed.size())
                                    : p.owned);
  auto reader = Reader::Open(AsBytes(archive));
  ASSERT_TRUE(reader.ok()) << reader.status().ToString();
  EXPECT_EQ((*reader->Stat("data.pkl"))->crc32, 0x11111111u);
  EXPECT_EQ((*reader->Stat("data/0"))->crc32, 0x22222222u);
  // One CRC per record, or none.
  o.record_crc32 = {1};
  EXPECT_EQ(CheckLayOut(records, o).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dcpp::format::zip
