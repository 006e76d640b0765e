#include "dcpp/engine/copy_checkpoint.h"

#include <gtest/gtest.h>

#include <cstring>
#include <unordered_set>

#include "dcpp/base/float_cast.h"
#include "dcpp/engine/engine.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/fault_injecting_storage.h"

namespace dcpp::engine {
namespace {

Tensor Floats(Shape shape, float first) {
  Tensor t = *Tensor::Empty(DType::kFloat32, shape);
  auto* p = static_cast<float*>(t.data());
  // Values bf16 cannot hold exactly, so a cast really rounds.
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = first + static_cast<float>(i) * 1.001f;
  return t;
}

// Tensors (one 2-D of 4,000 x 5, one [2, 20000] whose rows exceed small bands,
// a 0-d, an empty one), a tensor saved as two chunks, an int tensor (never
// cast), a plain value and a list.
Value State(float seed) {
  Value sd;
  sd["model"]["w"] = Floats({4000, 5}, seed);
  sd["model"]["wide"] = Floats({2, 20000}, seed + 1);
  sd["model"]["scalar"] = Floats({}, seed + 2);
  sd["model"]["empty"] = Floats({0, 3}, 0);
  Tensor full = Floats({6, 4}, seed + 3);
  ShardedTensor st;
  st.global_shape = {6, 4};
  for (int64_t r0 : {0, 3}) {
    Tensor piece = *Tensor::Empty(DType::kFloat32, {3, 4});
    std::memcpy(piece.data(), static_cast<const float*>(full.data()) + r0 * 4, 12 * 4);
    st.shards.push_back({{r0, 0}, piece});
  }
  sd["model"]["sharded"] = Value(std::move(st));
  Tensor ints = *Tensor::Empty(DType::kInt64, {10});
  for (int64_t i = 0; i < 10; ++i) static_cast<int64_t*>(ints.data())[i] = i * 7;
  sd["model"]["ints"] = ints;
  sd["step"] = 42;
  sd["optim"]["groups"] = Value::List({Value(1), Value("two"), Value(3.5)});
  return sd;
}

std::vector<const EntryMeta*> All(const Metadata& md) {
  std::vector<const EntryMeta*> out;
  for (const auto& e : md.entries) out.push_back(&e);
  return out;
}

std::string Stored(storage::Storage& st, const StorageInfo& info) {
  auto f = st.OpenForRead(info.relative_path);
  EXPECT_TRUE(f.ok());
  std::string out(info.length, '\0');
  EXPECT_TRUE((*f)->ReadAt(info.offset, {reinterpret_cast<uint8_t*>(out.data()), out.size()}).ok());
  return out;
}

struct Copied {
  std::unique_ptr<storage::Storage> src = storage::NewMemoryStorage("src:");
  std::unique_ptr<storage::Storage> dst = storage::NewMemoryStorage("dst:");
  Metadata src_md, dst_md;
};

Copied SaveAndCopy(const SaveOptions& save, const CopyOptions& copy) {
  Copied c;
  EXPECT_TRUE(Save(State(1), *c.src, save).ok());
  c.src_md = *ReadMetadata(*c.src);
  auto md = CopyCheckpoint(*c.src, All(c.src_md), *c.dst, copy);
  EXPECT_TRUE(md.ok()) << md.status().ToString();
  if (md.ok()) c.dst_md = *md;
  return c;
}

TEST(CopyCheckpointTest, CopiesStoredBytesAndKeepsEveryEntry) {
  CopyOptions o;
  o.save.io_threads = 3;
  Copied c = SaveAndCopy({}, o);
  // Committed once, and what was committed is what was returned.
  auto committed = ReadMetadata(*c.dst);
  ASSERT_TRUE(committed.ok());
  EXPECT_EQ(*committed, c.dst_md);
  ASSERT_EQ(c.dst_md.entries.size(), c.src_md.entries.size());
  std::unordered_set<std::string> files;
  for (size_t i = 0; i < c.src_md.entries.size(); ++i) {
    const EntryMeta &a = c.src_md.entries[i], &b = c.dst_md.entries[i];
    EXPECT_EQ(a.fqn, b.fqn);
    EXPECT_EQ(a.path, b.path);
    EXPECT_EQ(a.kind, b.kind);
    EXPECT_EQ(a.properties, b.properties);
    EXPECT_EQ(a.size, b.size);
    ASSERT_EQ(a.chunks.size(), b.chunks.size()) << a.fqn;
    // Nothing asked for a change: every item's stored bytes are the same.
    for (size_t k = 0; k < a.chunks.size(); ++k) {
      EXPECT_EQ(a.chunks[k].offsets, b.chunks[k].offsets);
      EXPECT_EQ(Stored(*c.src, a.chunks[k].storage), Stored(*c.dst, b.chunks[k].storage)) << a.fqn;
      files.insert(b.chunks[k].storage.relative_path);
    }
    if (!a.is_tensor()) {
      EXPECT_EQ(Stored(*c.src, a.storage), Stored(*c.dst, b.storage)) << a.fqn;
    }
  }
  EXPECT_EQ(files.size(), 3u);  // one file per thread
  auto a = LoadAll(*c.src, {}), b = LoadAll(*c.dst, {});
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
  EXPECT_TRUE(a->Equals(*b));
  EXPECT_EQ((*b)["optim"]["groups"].items().size(), 3u);
}

// Output transforms and casts re-encode, in bands far smaller than the
// tensors (band_bytes 256: many bands, and bands inside rows of "wide").
TEST(CopyCheckpointTest, ReencodesInBandsBitExact) {
  for (bool src_zstd : {false, true}) {
    for (bool dst_zstd : {false, true}) {
      SCOPED_TRACE(std::string(src_zstd ? "zstd" : "raw") + " -> " + (dst_zstd ? "zstd" : "raw"));
      SaveOptions save;
      if (src_zstd) save.transforms = {"stream.zstd/1"};
      CopyOptions o;
      o.band_bytes = 256;
      if (dst_zstd) o.save.transforms = {"stream.zstd/1"};
      Copied c = SaveAndCopy(save, o);
      auto a = LoadAll(*c.src, {}), b = LoadAll(*c.dst, {});
      ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
      EXPECT_TRUE(a->Equals(*b));
      for (const EntryMeta& e : c.dst_md.entries) {
        const StorageInfo& st = e.is_tensor() ? e.chunks[0].storage : e.storage;
        EXPECT_EQ(st.transform_descriptors.size(), dst_zstd ? 1u : 0u) << e.fqn;
      }
      if (dst_zstd) continue;
      // A re-encoded (banded) archive is byte for byte what Save writes for
      // the same tensor, CRC-32s included.
      const EntryMeta* w = c.dst_md.Find("model.w");
      ASSERT_NE(w, nullptr);
      EXPECT_EQ(Stored(*c.dst, w->chunks[0].storage),
                format::EncodeTensorArchive((*b)["model"]["w"].tensor().view()).Flatten());
    }
  }
}

TEST(CopyCheckpointTest, CastsFloatingTensorsOnly) {
  CopyOptions o;
  o.cast = DType::kBFloat16;
  o.band_bytes = 1000;
  Copied c = SaveAndCopy({}, o);
  auto a = LoadAll(*c.src, {}), b = LoadAll(*c.dst, {});
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().ToString();
  for (const char* name : {"w", "wide", "scalar", "sharded"}) {
    const Tensor& src = (*a)["model"][name].tensor();
    const Tensor& got = (*b)["model"][name].tensor();
    ASSERT_EQ(got.dtype(), DType::kBFloat16) << name;
    Tensor want = *Tensor::Empty(DType::kBFloat16, src.shape());
    CastFloats(src.view(), want.view());
    EXPECT_TRUE(got.BitwiseEquals(want)) << name;
    EXPECT_EQ(c.dst_md.Find(std::string("model.") + name)->properties.dtype, DType::kBFloat16);
  }
  EXPECT_TRUE((*b)["model"]["ints"].tensor().BitwiseEquals((*a)["model"]["ints"].tensor()));
  EXPECT_EQ((*b)["step"].as_int(), 42);
  CopyOptions to_int;
  to_int.cast = DType::kInt32;
  EXPECT_FALSE(CopyCheckpoint(*c.src, All(c.src_md), *c.dst, to_int).ok());
}

// A failure at any write, sync, close or rename leaves the checkpoint that
// was at the destination loadable and unchanged, or (none there) nothing
// that looks like a checkpoint, and no file of the failed copy.
TEST(CopyCheckpointTest, FailureLeavesDestinationIntact) {
  auto src = storage::NewMemoryStorage("src:");
  ASSERT_TRUE(Save(State(1), *src, {}).ok());
  const Metadata src_md = *ReadMetadata(*src);
  const Value old = State(9);
  int failures = 0;
  for (bool existing : {false, true}) {
    for (storage::OpKind kind : {storage::OpKind::kCreate, storage::OpKind::kWrite,
                                 storage::OpKind::kSync, storage::OpKind::kClose,
                                 storage::OpKind::kRename}) {
      for (uint64_t index = 0; index < 6; ++index) {
        SCOPED_TRACE(std::string(storage::OpKindName(kind)) + " #" + std::to_string(index) +
                     (existing ? " over a checkpoint" : ""));
        auto mem = storage::NewMemoryStorage("dst:");
        Value old_loaded;
        if (existing) {
          ASSERT_TRUE(Save(old, *mem, {}).ok());
          old_loaded = *LoadAll(*mem, {});
        }
        auto before = mem->List();
        ASSERT_TRUE(before.ok());
        auto fi = storage::FaultInjectingStorage::Wrap(*mem);
        ASSERT_TRUE(fi.ok());
        (*fi)->FailCall(kind, index, storage::FaultType::kIoError);
        CopyOptions o;
        o.save.io_threads = 2;
        o.band_bytes = 4096;
        o.save.transforms = {"stream.zstd/1"};  // re-encoded: many writes
        auto r = CopyCheckpoint(*src, All(src_md), **fi, o);
        if (r.ok()) {
          EXPECT_FALSE((*fi)->fired());
          continue;
        }
        ++failures;
        EXPECT_TRUE((*fi)->fired());
        if (existing) {
          auto back = LoadAll(*mem, {});
          ASSERT_TRUE(back.ok()) << back.status().ToString();
          EXPECT_TRUE(back->Equals(old_loaded));
        } else {
          EXPECT_EQ(storage::ReadCheckpointMetadata(*mem).status().code(), StatusCode::kNotFound);
        }
        auto after = mem->List();
        ASSERT_TRUE(after.ok());
        for (const std::string& n : *after) {
          if (io::IsDataFileName(n) || io::IsTempMetadataName(n)) {
            EXPECT_NE(std::find(before->begin(), before->end(), n), before->end())
                << n << " left behind";
          }
        }
      }
    }
  }
  EXPECT_GT(failures, 15);
}

TEST(CopyCheckpointTest, CopyIntoItsOwnLocationReplacesIt) {
  auto mem = storage::NewMemoryStorage();
  ASSERT_TRUE(Save(State(1), *mem, {}).ok());
  const Metadata md = *ReadMetadata(*mem);
  const Value before = *LoadAll(*mem, {});
  CopyOptions o;
  o.save.transforms = {"stream.zstd/1"};
  ASSERT_TRUE(CopyCheckpoint(*mem, All(md), *mem, o).ok());
  auto back = LoadAll(*mem, {});
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->Equals(before));
  // The old files are gone: only the new checkpoint's remain.
  const Metadata now = *ReadMetadata(*mem);
  std::unordered_set<std::string> used;
  for (const EntryMeta& e : now.entries) {
    if (!e.is_tensor()) used.insert(e.storage.relative_path);
    for (const ChunkMeta& c : e.chunks) used.insert(c.storage.relative_path);
  }
  auto names = mem->List();
  ASSERT_TRUE(names.ok());
  for (const std::string& n : *names) {
    if (io::IsDataFileName(n)) {
      EXPECT_TRUE(used.count(n)) << n;
    }
  }
}

}  // namespace
}  // namespace dcpp::engine
