// The fast .metadata decoder against the general one: where the fast path
// accepts, both must return the same Metadata; where it declines,
// DecodeMetadata is the general path. metadata_codec_test.cc tests what
// DecodeMetadata returns; this file tests which path returns it.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/metadata_codec_internal.h"
#include "dcpp/format/pickle.h"

namespace dcpp::format {
namespace {

using namespace std::string_literals;
using metadata_internal::DecodeMetadataFast;
using metadata_internal::DecodeMetadataGeneral;
namespace fs = std::filesystem;

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Whether the fast path accepted `bytes`; fails the test if it accepted
// something the general path decodes differently or rejects.
bool FastAgrees(std::string_view bytes, const std::string& what) {
  std::optional<Metadata> fast = DecodeMetadataFast(Bytes(bytes));
  if (!fast) return false;
  Result<Metadata> general = DecodeMetadataGeneral(Bytes(bytes));
  EXPECT_TRUE(general.ok()) << what << ": the fast path accepted what the general path rejects: "
                            << general.status().ToString();
  if (general.ok()) EXPECT_TRUE(*fast == *general) << what << ": the paths disagree";
  return true;
}

ChunkMeta Chunk(Shape offsets, Shape sizes, std::string file, uint64_t offset, uint64_t length,
                std::vector<std::string> transforms = {}) {
  return ChunkMeta{std::move(offsets), std::move(sizes),
                   StorageInfo{std::move(file), offset, length, std::move(transforms)}};
}

// Everything EncodeMetadata can write: bytes entries, transforms, paths with
// ints, 0-d and empty tensors, every memory format, offsets past 2^63.
Metadata RichMetadata() {
  Metadata md;
  EntryMeta w;
  w.fqn = "model.layer.weight";
  w.path = {"model"s, "layer"s, "weight"s};
  w.properties.requires_grad = true;
  w.size = {8, 6};
  w.chunks.push_back(Chunk({0, 0}, {4, 6}, "__0_0.distcp", 0, 100));
  w.chunks.push_back(Chunk({4, 0}, {4, 6}, "__1_0.distcp", 5'000'000'000, 200, {"stream.zstd/1"}));
  md.entries.push_back(w);
  EntryMeta o;
  o.fqn = "opt.state.0.exp_avg";
  o.path = {"opt"s, "state"s, int64_t{0}, "exp_avg"s};
  o.properties.dtype = DType::kBFloat16;
  o.properties.memory_format = MemoryFormat::kChannelsLast;
  o.properties.pin_memory = true;
  o.size = {3, 4, 5, 6};
  o.chunks.push_back(Chunk({0, 0, 0, 0}, {3, 4, 5, 6}, "__0_0.distcp", 100, 3000));
  md.entries.push_back(o);
  EntryMeta s;
  s.fqn = "scalar";
  s.properties.dtype = DType::kFloat64;
  s.properties.memory_format = MemoryFormat::kPreserve;
  s.chunks.push_back(Chunk({}, {}, "__0_0.distcp", 9'223'372'036'854'775'813ull, 8));
  md.entries.push_back(s);
  EntryMeta empty;
  empty.fqn = "empty";
  empty.properties.dtype = DType::kInt64;
  empty.size = {0};
  empty.chunks.push_back(Chunk({0}, {0}, "__0_0.distcp", 3100, 700));
  md.entries.push_back(empty);
  EntryMeta step;
  step.fqn = "step";
  step.kind = EntryMeta::Kind::kBytes;
  step.path = {"step"s};
  step.storage = StorageInfo{"__0_0.distcp", 100, 50, {}};
  md.entries.push_back(step);
  EntryMeta nopath;
  nopath.fqn = "nopath";
  nopath.kind = EntryMeta::Kind::kBytes;
  nopath.storage = StorageInfo{"__1_0.distcp", 0, 7, {"stream.zstd/1", "x/2"}};
  md.entries.push_back(nopath);
  md.storage_meta = StorageMeta{"/ckpt/step_1", "uuid-1", std::nullopt, {"a", "b"}};
  md.version = "1.0.0";
  return md;
}

// R ranks x T tensors, each row-sharded over all ranks (as bench/
// metadata_scale.py makes them), one file per rank.
Metadata RowSharded(int ranks, int tensors) {
  Metadata md;
  std::vector<uint64_t> file_offset(static_cast<size_t>(ranks), 0);
  for (int t = 0; t < tensors; ++t) {
    EntryMeta e;
    e.fqn = "model.layers." + std::to_string(t / 8) + ".w" + std::to_string(t % 8);
    e.path = {"model"s, "layers."s + std::to_string(t / 8) + ".w" + std::to_string(t % 8)};
    e.properties.dtype = t % 8 < 6 ? DType::kBFloat16 : DType::kFloat32;
    const int64_t rows = 4 + t % 5 * 16;
    const bool matrix = t % 8 < 6;
    e.size = matrix ? Shape{rows * ranks, 4096} : Shape{rows * ranks};
    for (int r = 0; r < ranks; ++r) {
      const uint64_t length = static_cast<uint64_t>(rows) * (matrix ? 8192 : 4) + 1100;
      Shape offsets = matrix ? Shape{rows * r, 0} : Shape{rows * r};
      Shape sizes = matrix ? Shape{rows, 4096} : Shape{rows};
      e.chunks.push_back(Chunk(offsets, sizes, "__" + std::to_string(r) + "_0.distcp",
                               file_offset[static_cast<size_t>(r)], length));
      file_offset[static_cast<size_t>(r)] += length;
    }
    md.entries.push_back(std::move(e));
  }
  md.storage_meta = StorageMeta{"/ckpt/scale", "uuid-3", std::nullopt, {}};
  md.version = "1.0.0";
  return md;
}

TEST(MetadataFastTest, TakesEveryTorchFixture) {
  int files = 0;
  for (const auto& entry : fs::directory_iterator(DCPP_TESTDATA_DIR)) {
    if (entry.path().extension() != ".metadata") continue;
    ++files;
    const std::string bytes = ReadFile(entry.path());
    EXPECT_TRUE(FastAgrees(bytes, entry.path().filename().string()))
        << entry.path() << " declined by the fast path";
  }
  EXPECT_GE(files, 4);
}

TEST(MetadataFastTest, TakesEveryEncoderOutput) {
  Metadata md = RichMetadata();
  EXPECT_TRUE(FastAgrees(EncodeMetadata(md), "rich"));
  std::optional<Metadata> back = DecodeMetadataFast(Bytes(EncodeMetadata(md)));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, md);

  // No planner_data (None), no storage_meta, no version.
  for (EntryMeta& e : md.entries) e.path.clear();
  md.storage_meta.reset();
  md.version.reset();
  back = DecodeMetadataFast(Bytes(EncodeMetadata(md)));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, md);
  EXPECT_TRUE(FastAgrees(EncodeMetadata(md), "bare"));

  // Nothing at all.
  back = DecodeMetadataFast(Bytes(EncodeMetadata(Metadata())));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, Metadata());
}

TEST(MetadataFastTest, LargeRowShardedSaveMatchesTheGeneralPathFieldByField) {
  // 64 x 300 = 19,200 chunks: memo indices past 2^16, batches of 1,000.
  const Metadata md = RowSharded(64, 300);
  const std::string bytes = EncodeMetadata(md);
  std::optional<Metadata> fast = DecodeMetadataFast(Bytes(bytes));
  ASSERT_TRUE(fast);
  Result<Metadata> general = DecodeMetadataGeneral(Bytes(bytes));
  ASSERT_TRUE(general.ok()) << general.status().ToString();
  ASSERT_EQ(fast->entries.size(), md.entries.size());
  for (size_t k = 0; k < md.entries.size(); ++k) {
    const EntryMeta& f = fast->entries[k];
    const EntryMeta& g = general->entries[k];
    ASSERT_EQ(f.fqn, g.fqn);
    EXPECT_EQ(f.path, g.path) << f.fqn;
    EXPECT_EQ(f.properties, g.properties) << f.fqn;
    EXPECT_EQ(f.size, g.size) << f.fqn;
    ASSERT_EQ(f.chunks.size(), g.chunks.size()) << f.fqn;
    for (size_t c = 0; c < f.chunks.size(); ++c) {
      EXPECT_EQ(f.chunks[c].offsets, g.chunks[c].offsets) << f.fqn << " chunk " << c;
      EXPECT_EQ(f.chunks[c].sizes, g.chunks[c].sizes) << f.fqn << " chunk " << c;
      EXPECT_EQ(f.chunks[c].storage, g.chunks[c].storage) << f.fqn << " chunk " << c;
    }
    EXPECT_EQ(f, md.entries[k]);
  }
  EXPECT_EQ(fast->storage_meta, general->storage_meta);
  EXPECT_EQ(fast->version, general->version);
}

// ---------------------------------------------------------------- hand-built pickles

// A `.metadata` pickle built by hand, for the shapes the join has to handle
// that EncodeMetadata never writes.
struct Hand {
  // One tensor "t" of size [4 * n] with n chunks in this order of row
  // offsets (as multiples of 4), and its storage records in this order.
  std::vector<int> chunk_rows = {0, 1, 2, 3};
  std::vector<int> record_rows = {0, 1, 2, 3};
  enum class Hint { kPosition, kNone, kWrong, kAbsent } hint = Hint::kPosition;
  bool storage_before_entries = false;
  bool duplicate_entry = false;
  bool ordered_dict_entries = false;
  std::string record_fqn = "t";  // the fqn of the last record

  std::string Build() const {
    const char* meta = "torch.distributed.checkpoint.metadata";
    pickle::Writer w;
    auto size1 = [&](int64_t v) {
      w.Global("torch", "Size");
      w.Int(v);
      w.Tuple(1);
      w.Memoize();
      w.Tuple(1);
      w.Memoize();
      w.Reduce();
      w.Memoize();
    };
    auto new_obj = [&](const char* module, const char* cls) {
      w.Global(module, cls);
      w.EmptyTuple();
      w.NewObj();
      w.Memoize();
    };
    auto key = [&](const char* k) {
      w.String(k);
      w.Memoize();
    };
    auto entries = [&]() {
      key("state_dict_metadata");
      if (ordered_dict_entries) {
        w.Global("collections", "OrderedDict");
        w.EmptyTuple();
        w.Reduce();
      } else {
        w.EmptyDict();
      }
      w.Memoize();
      w.Mark();
      for (int copy = 0; copy < (duplicate_entry ? 2 : 1); ++copy) {
        key("t");
        new_obj(meta, "TensorStorageMetadata");
        w.EmptyDict();
        w.Memoize();
        w.Mark();
        key("properties");
        new_obj(meta, "TensorProperties");
        w.Mark();
        w.Global("torch", "float32");
        w.Global("torch.serialization", "_get_layout");
        w.String("torch.strided");
        w.Tuple(1);
        w.Reduce();
        w.Bool(false);
        w.Global(meta, "_MEM_FORMAT_ENCODING");
        w.Int(0);
        w.Tuple(1);
        w.Reduce();
        w.Bool(false);
        w.Tuple(5);
        w.Build();
        key("size");
        size1(4 * static_cast<int64_t>(chunk_rows.size()));
        key("chunks");
        w.EmptyList();
        w.Memoize();
        w.Mark();
        for (int row : chunk_rows) {
          new_obj(meta, "ChunkStorageMetadata");
          w.EmptyDict();
          w.Memoize();
          w.Mark();
          key("offsets");
          size1(4 * row);
          key("sizes");
          size1(4);
          w.SetItems();
          w.Build();
        }
        w.Appends();
        w.SetItems();
        w.Build();
      }
      w.SetItems();
    };
    auto storage = [&]() {
      key("storage_data");
      w.EmptyDict();
      w.Memoize();
      w.Mark();
      for (size_t k = 0; k < record_rows.size(); ++k) {
        const int row = record_rows[k];
        new_obj(meta, "MetadataIndex");
        w.EmptyDict();
        w.Memoize();
        w.Mark();
        key("fqn");
        w.String(k + 1 == record_rows.size() ? record_fqn : "t");
        if (hint != Hint::kAbsent) {
          key("index");
          if (hint == Hint::kNone) {
            w.None();
          } else {
            // The chunk's position, or another chunk's.
            int pos = 0;
            while (chunk_rows[static_cast<size_t>(pos)] != row &&
                   pos + 1 < static_cast<int>(chunk_rows.size()))
              ++pos;
            w.Int(hint == Hint::kPosition ? pos : (pos + 1) % static_cast<int>(chunk_rows.size()));
          }
        }
        key("offset");
        size1(4 * row);
        w.SetItems();
        w.Build();
        new_obj("torch.distributed.checkpoint.filesystem", "_StorageInfo");
        w.EmptyDict();
        w.Memoize();
        w.Mark();
        key("relative_path");
        w.String("__" + std::to_string(k) + "_0.distcp");
        key("offset");
        w.Int(100 * row);
        key("length");
        w.Int(100 + static_cast<int64_t>(k));
        w.SetItems();
        w.Build();
      }
      w.SetItems();
    };
    new_obj(meta, "Metadata");
    w.EmptyDict();
    w.Memoize();
    w.Mark();
    if (storage_before_entries) {
      storage();
      entries();
    } else {
      entries();
      storage();
    }
    key("version");
    w.String("1.0.0");
    w.SetItems();
    w.Build();
    return w.Finish();
  }
};

// DecodeMetadata returns what the general path returns, and the fast path
// took the file iff `fast`.
void ExpectPath(const Hand& h, bool fast, const std::string& what) {
  const std::string bytes = h.Build();
  Result<Metadata> general = DecodeMetadataGeneral(Bytes(bytes));
  Result<Metadata> got = DecodeMetadata(bytes);
  EXPECT_EQ(FastAgrees(bytes, what), fast) << what;
  ASSERT_EQ(got.ok(), general.ok()) << what << ": " << general.status().ToString();
  if (got.ok()) {
    EXPECT_EQ(*got, *general) << what;
  } else {
    EXPECT_EQ(got.status().ToString(), general.status().ToString()) << what;
  }
}

TEST(MetadataFastTest, JoinsRecordsInAnyOrderWithOrWithoutHints) {
  Hand h;
  ExpectPath(h, true, "in order");
  h.record_rows = {3, 1, 0, 2};
  ExpectPath(h, true, "records shuffled");
  for (Hand::Hint hint : {Hand::Hint::kNone, Hand::Hint::kWrong, Hand::Hint::kAbsent}) {
    h.hint = hint;
    ExpectPath(h, true, "hint " + std::to_string(static_cast<int>(hint)));
    h.chunk_rows = {2, 0, 3, 1};  // chunks not in offset order: searched through a sorted order
    ExpectPath(h, true, "unsorted chunks, hint " + std::to_string(static_cast<int>(hint)));
    h.chunk_rows = {0, 1, 2, 3};
  }
  Result<Metadata> md = DecodeMetadata(h.Build());
  ASSERT_TRUE(md.ok());
  EXPECT_EQ(md->entries[0].chunks[3].storage.relative_path, "__0_0.distcp");  // row 3: record 0
}

TEST(MetadataFastTest, DeclinesWhatItCannotJoinAndTheGeneralPathDecides) {
  Hand h;
  h.record_rows = {0, 1, 2, 3, 1};  // a repeated key: the last record wins
  ExpectPath(h, true, "repeated record");
  h = Hand();
  h.record_rows = {0, 1, 2, 3, 7};  // a record for no chunk is unused
  ExpectPath(h, true, "record for no chunk");
  h.record_fqn = "other";  // nor for no entry
  ExpectPath(h, true, "record for no entry");

  h = Hand();
  h.record_rows = {0, 1, 3};  // a chunk without a record: DataLoss
  ExpectPath(h, false, "missing record");
  EXPECT_EQ(DecodeMetadata(h.Build()).status().code(), StatusCode::kDataLoss);

  h = Hand();
  h.chunk_rows = {0, 1, 1, 2};  // two chunks at one offset share a record
  h.record_rows = {0, 1, 2};
  ExpectPath(h, false, "duplicate chunk offsets");
  EXPECT_TRUE(DecodeMetadata(h.Build()).ok());

  h = Hand();
  h.storage_before_entries = true;
  ExpectPath(h, false, "storage_data first");
  EXPECT_TRUE(DecodeMetadata(h.Build()).ok());

  h = Hand();
  h.duplicate_entry = true;  // last value wins
  ExpectPath(h, false, "duplicate fqn");

  h = Hand();
  h.ordered_dict_entries = true;
  ExpectPath(h, false, "OrderedDict");
  EXPECT_TRUE(DecodeMetadata(h.Build()).ok());
}

// Whatever bytes it is given, the fast path accepts only what the general
// path decodes to the same Metadata (the fuzz target checks this at random;
// this is a deterministic sample of it).
TEST(MetadataFastTest, MutatedFilesNeverMakeThePathsDisagree) {
  std::vector<std::string> seeds = {EncodeMetadata(RichMetadata()), Hand().Build()};
  for (const char* name : {"basic.metadata", "legacy_shard_p2.metadata", "zstd.metadata"}) {
    seeds.push_back(ReadFile(fs::path(DCPP_TESTDATA_DIR) / name));
  }
  std::mt19937_64 rng(13);
  int accepted = 0;
  for (const std::string& seed : seeds) {
    ASSERT_TRUE(FastAgrees(seed, "seed"));
    for (int k = 0; k < 1500; ++k) {
      std::string bytes = seed;
      const int edits = 1 + static_cast<int>(rng() % 3);
      for (int e = 0; e < edits && !bytes.empty(); ++e) {
        const size_t at = rng() % bytes.size();
        switch (rng() % 4) {
          case 0:
            bytes[at] = static_cast<char>(rng());
            break;
          case 1:
            bytes[at] = static_cast<char>(bytes[at] ^ (1 << (rng() % 8)));
            break;
          case 2:
            bytes.erase(at, 1 + rng() % 4);
            break;
          default:
            bytes.insert(at, 1, static_cast<char>(rng()));
            break;
        }
      }
      if (FastAgrees(bytes, "mutation " + std::to_string(k))) ++accepted;
      if (HasFailure()) return;
    }
  }
  // Some mutations only change a number or a letter of a name: those decode.
  EXPECT_GT(accepted, 0);
}

TEST(MetadataFastTest, EveryTruncationIsDeclined) {
  const std::string bytes = ReadFile(fs::path(DCPP_TESTDATA_DIR) / "basic.metadata");
  for (size_t n = 0; n < bytes.size(); ++n) {
    ASSERT_FALSE(DecodeMetadataFast(Bytes(std::string_view(bytes).substr(0, n)))) << n;
  }
}

// ---------------------------------------------------------------- torch

bool HaveTorch() {
  static const bool have = std::system("python3 -c 'import torch' >/dev/null 2>&1") == 0;
  return have;
}

// torch's own Metadata pickled at every protocol Python writes.
TEST(MetadataFastTest, TakesTorchMetadataAtEveryProtocol) {
  if (!HaveTorch()) GTEST_SKIP() << "python3 with torch is not available";
  const fs::path dir = fs::temp_directory_path() / ("dcpp_fast_" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string script =
      "import os, pickle, sys\n"
      "import torch.distributed.checkpoint\n"
      "for path in sys.argv[2:]:\n"
      "    md = pickle.load(open(path, 'rb'))\n"
      "    for p in range(2, 6):\n"
      "        out = '%s/%s.p%d' % (sys.argv[1], os.path.basename(path), p)\n"
      "        open(out, 'wb').write(pickle.dumps(md, protocol=p))\n";
  std::ofstream(dir / "dump.py") << script;
  const char* names[] = {"basic.metadata", "zstd.metadata", "no_storage_meta.metadata",
                         "legacy_shard_p2.metadata"};
  std::string cmd = "python3 " + (dir / "dump.py").string() + " " + dir.string();
  for (const char* name : names) cmd += " " + (fs::path(DCPP_TESTDATA_DIR) / name).string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  for (const char* name : names) {
    for (int p = 2; p <= 5; ++p) {
      const std::string bytes = ReadFile(dir / (std::string(name) + ".p" + std::to_string(p)));
      EXPECT_TRUE(FastAgrees(bytes, std::string(name) + " protocol " + std::to_string(p)))
          << name << " at protocol " << p << " declined";
    }
  }
  fs::remove_all(dir);
}

// EncodeMetadata at scale writes what Python's pickler writes for the same
// objects, byte for byte (the encoder's per-chunk paths and memo indices
// past 2^16), and the fast path reads it back.
TEST(MetadataFastTest, LargeEncodingIsWhatPythonPicklesByteForByte) {
  if (!HaveTorch()) GTEST_SKIP() << "python3 with torch is not available";
  const Metadata md = RowSharded(32, 500);  // 16,000 chunks
  const std::string bytes = EncodeMetadata(md);
  std::optional<Metadata> back = DecodeMetadataFast(Bytes(bytes));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, md);
  const fs::path dir = fs::temp_directory_path() / ("dcpp_fast_enc_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "large.metadata", std::ios::binary) << bytes;
  std::ofstream(dir / "repickle.py")
      << "import pickle, sys\n"
         "import torch.distributed.checkpoint\n"
         "data = open(sys.argv[1], 'rb').read()\n"
         "md = pickle.loads(data)\n"
         "chunks = sum(len(v.chunks) for v in md.state_dict_metadata.values())\n"
         "assert chunks == 16000, chunks\n"
         "sys.exit(0 if pickle.dumps(md, protocol=2) == data else 3)\n";
  const std::string cmd = "python3 " + (dir / "repickle.py").string() + " " +
                          (dir / "large.metadata").string();
  EXPECT_EQ(std::system(cmd.c_str()), 0) << "Python re-pickles " << cmd << " differently";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dcpp::format
