#include "dcpp/storage/torch_save_layout.h"

#include <cstring>
#include <numeric>

#include <gtest/gtest.h>

#include "dcpp/format/torch_pickle.h"
#include "dcpp/format/zip.h"
#include "dcpp/plan/reshard.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/safetensors_layout.h"

namespace dcpp::storage {
namespace {

Tensor Iota(DType dtype, Shape shape) {
  Tensor t = *Tensor::Zeros(dtype, shape);
  auto* p = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(i * 7 + 3);
  return t;
}

// A transposed view of `t` (2-d), sharing its bytes.
Tensor Transposed(const Tensor& t) {
  TensorView v = t.view();
  std::swap(v.shape[0], v.shape[1]);
  std::swap(v.strides[0], v.strides[1]);
  return Tensor::Borrow(v);
}

void Put(Storage& s, const std::string& name, const std::string& bytes) {
  auto f = s.CreateForWrite(name);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_TRUE((*f)->WriteAt(0, format::zip::AsBytes(bytes)).ok());
  ASSERT_TRUE((*f)->Close().ok());
}

std::unique_ptr<Storage> FileStorage(const std::string& bytes) {
  auto mem = NewMemoryStorage("mem:");
  Put(*mem, "model.pt", bytes);
  return NewTorchSaveStorage(std::move(mem), "model.pt");
}

// Reads entry `e` of `s` whole into a contiguous tensor.
Result<Tensor> ReadWhole(Storage& s, const EntryMeta& e) {
  DCPP_ASSIGN_OR_RETURN(Tensor out, Tensor::Zeros(e.properties.dtype, e.size));
  const plan::Box whole{Shape(e.size.size(), 0), e.size};
  for (const ChunkMeta& c : e.chunks) {
    const plan::Box box{c.offsets, c.sizes};
    if (NumElements(c.sizes) == 0) continue;
    const ChunkTarget t{plan::SubView(out.view(), whole, box), c.offsets, c.sizes};
    DCPP_RETURN_IF_ERROR(ReadChunk(s, e.fqn, e.properties.dtype, c, {&t, 1}));
  }
  return out;
}

TEST(TorchSaveLayout, NestedStateDictOpensAsCheckpoint) {
  Tensor w = Iota(DType::kFloat32, {3, 5});
  Tensor tied = w;  // the same tensor object twice (tied weights)
  Tensor t = Iota(DType::kBFloat16, {4, 6});
  Value sd = Value::EmptyDict();
  sd["model"]["embed.weight"] = Value(w);
  sd["model"]["head.weight"] = Value(tied);
  sd["model"]["proj_t"] = Value(Transposed(t));
  sd["model"]["scalar"] = Value(Iota(DType::kInt64, {}));
  sd["model"]["empty"] = Value(*Tensor::Zeros(DType::kFloat16, {0, 3}));
  sd["model"]["mask"] = Value(Iota(DType::kBool, {7}));
  sd["optim"]["param_groups"] =
      Value::List({Value(Dict()), Value::List({Value(int64_t{0}), Value(int64_t{1})})});
  sd["optim"]["param_groups"].items()[0]["lr"] = Value(0.5);
  sd["optim"]["param_groups"].items()[0]["params"] =
      Value::List({Value(int64_t{0}), Value(int64_t{1})});
  sd["step"] = Value(int64_t{42});
  sd["name"] = Value("run-7");
  auto bytes = format::EncodeValueArchive(sd);
  ASSERT_TRUE(bytes.ok()) << bytes.status().ToString();
  auto st = FileStorage(*bytes);

  auto format = DetectCheckpointFormat(*st);
  ASSERT_TRUE(format.ok());
  EXPECT_EQ(*format, CheckpointFormat::kTorchSave);
  auto md = ReadAnyCheckpointMetadata(*st);
  ASSERT_TRUE(md.ok()) << md.status().ToString();

  std::vector<std::string> fqns;
  for (const auto& e : md->entries) fqns.push_back(e.fqn);
  EXPECT_EQ(fqns, (std::vector<std::string>{
                      "model.embed.weight", "model.head.weight", "model.proj_t", "model.scalar",
                      "model.empty", "model.mask", "optim.param_groups.0.lr",
                      "optim.param_groups.0.params", "optim.param_groups.1", "step", "name"}));
  const EntryMeta* lr = md->Find("optim.param_groups.0.lr");
  ASSERT_NE(lr, nullptr);
  EXPECT_EQ(lr->path, (ObjectPath{std::string("optim"), std::string("param_groups"), int64_t{0},
                                  std::string("lr")}));

  // Contiguous tensors are one chunk; the two tied entries read the same bytes.
  const EntryMeta* embed = md->Find("model.embed.weight");
  const EntryMeta* head = md->Find("model.head.weight");
  ASSERT_EQ(embed->chunks.size(), 1u);
  EXPECT_EQ(embed->chunks[0].storage, head->chunks[0].storage);
  EXPECT_EQ(embed->chunks[0].storage.encoding, StorageInfo::Encoding::kRawTensor);
  // The transpose: one chunk per column of the view (a row of the storage).
  const EntryMeta* proj = md->Find("model.proj_t");
  EXPECT_EQ(proj->size, (Shape{6, 4}));
  EXPECT_EQ(proj->chunks.size(), 4u);

  for (const auto& [fqn, want] : std::vector<std::pair<std::string, Tensor>>{
           {"model.embed.weight", w},
           {"model.head.weight", w},
           {"model.proj_t", Transposed(t)},
           {"model.scalar", sd["model"]["scalar"].tensor()},
           {"model.empty", sd["model"]["empty"].tensor()},
           {"model.mask", sd["model"]["mask"].tensor()}}) {
    const EntryMeta* e = md->Find(fqn);
    ASSERT_NE(e, nullptr) << fqn;
    auto got = ReadWhole(*st, *e);
    ASSERT_TRUE(got.ok()) << fqn << ": " << got.status().ToString();
    EXPECT_TRUE(got->BitwiseEquals(want)) << fqn;
  }
  // Values are served as torch.save archives of the value.
  const EntryMeta* name = md->Find("name");
  ASSERT_EQ(name->kind, EntryMeta::Kind::kBytes);
  EXPECT_EQ(name->storage.relative_path, kTorchSaveValuesName);
  auto blob = ReadItem(*st, name->storage, name->fqn, 1 << 20);
  ASSERT_TRUE(blob.ok()) << blob.status().ToString();
  auto v = format::DecodeValueArchive(format::zip::AsBytes(*blob), "name");
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->Equals(Value("run-7")));
  const EntryMeta* group1 = md->Find("optim.param_groups.1");
  blob = ReadItem(*st, group1->storage, group1->fqn, 1 << 20);
  ASSERT_TRUE(blob.ok());
  v = format::DecodeValueArchive(format::zip::AsBytes(*blob), "g");
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->Equals(Value::List({Value(int64_t{0}), Value(int64_t{1})})));
}

TEST(TorchSaveLayout, ValueHoldingTensorsIsMaterialized) {
  Value sd = Value::EmptyDict();
  // A tuple is a leaf even when it holds tensors (DCP pickles it whole).
  Tensor a = Iota(DType::kFloat32, {2, 2});
  sd["pair"] = Value::Tuple({Value(a), Value(int64_t{3})});
  auto bytes = format::EncodeValueArchive(sd);
  ASSERT_TRUE(bytes.ok());
  auto st = FileStorage(*bytes);
  auto md = ReadTorchSaveMetadata(*st);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  ASSERT_EQ(md->entries.size(), 1u);
  auto blob = ReadItem(*st, md->entries[0].storage, "pair", 1 << 20);
  ASSERT_TRUE(blob.ok());
  auto v = format::DecodeValueArchive(format::zip::AsBytes(*blob), "pair");
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->Equals(sd["pair"])) << v->DebugString();
}

std::string ArchiveWithPickle(const std::string& data_pkl) {
  std::vector<format::zip::RecordSpec> records = {{"data.pkl", format::zip::AsBytes(data_pkl)},
                                                  {"version", format::zip::AsBytes("3\n")}};
  return format::zip::LayOut(records).Flatten();
}

TEST(TorchSaveLayout, HostilePickleIsRefusedNamingTheGlobal) {
  // os.system('true') as protocol 2: GLOBAL, args tuple, REDUCE.
  const std::string pkl = std::string("\x80\x02") + "cos\nsystem\nX\x04\x00\x00\x00true\x85R.";
  auto st = FileStorage(ArchiveWithPickle(pkl));
  auto md = ReadTorchSaveMetadata(*st);
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(md.status().message().find("os.system"), std::string::npos) << md.status().ToString();
  EXPECT_NE(md.status().message().find("model.pt"), std::string::npos) << md.status().ToString();
  // The values entry reports the same error.
  EXPECT_FALSE(st->OpenForRead(kTorchSaveValuesName).ok());
}

TEST(TorchSaveLayout, NotADictIsAnError) {
  auto bytes = format::EncodeValueArchive(Value(Iota(DType::kFloat32, {2})));
  ASSERT_TRUE(bytes.ok());
  auto md = ReadTorchSaveMetadata(*FileStorage(*bytes));
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(md.status().message().find("not a dict"), std::string::npos);
}

TEST(TorchSaveLayout, DamagedFilesAreClearErrors) {
  Value sd = Value::EmptyDict();
  sd["w"] = Value(Iota(DType::kFloat32, {64, 64}));
  auto bytes = format::EncodeValueArchive(sd);
  ASSERT_TRUE(bytes.ok());
  // Every truncation fails with DataLoss naming the file, never crashes.
  for (size_t keep : {size_t{0}, size_t{3}, size_t{100}, bytes->size() / 2, bytes->size() - 1}) {
    auto md = ReadTorchSaveMetadata(*FileStorage(bytes->substr(0, keep)));
    ASSERT_FALSE(md.ok()) << keep;
    EXPECT_EQ(md.status().code(), StatusCode::kDataLoss) << keep << md.status().ToString();
    EXPECT_NE(md.status().message().find("model.pt"), std::string::npos);
  }
  // A legacy (non-zip) torch.save says so.
  auto legacy = ReadTorchSaveMetadata(*FileStorage(std::string("\x80\x02}q\x00.", 6)));
  ASSERT_FALSE(legacy.ok());
  EXPECT_EQ(legacy.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(legacy.status().message().find("legacy"), std::string::npos);
  // A zip without data.pkl is not a torch.save file.
  std::vector<format::zip::RecordSpec> other = {{"readme.txt", format::zip::AsBytes("hi")}};
  auto md = ReadTorchSaveMetadata(*FileStorage(format::zip::LayOut(other).Flatten()));
  ASSERT_FALSE(md.ok());
  EXPECT_NE(md.status().message().find("data.pkl"), std::string::npos);
}

TEST(TorchSaveLayout, StorageIsReadOnlyAndListsTheValuesEntry) {
  auto bytes = format::EncodeValueArchive([] {
    Value sd = Value::EmptyDict();
    sd["x"] = Value(int64_t{1});
    return sd;
  }());
  auto st = FileStorage(*bytes);
  auto names = st->List();
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{std::string(kTorchSaveValuesName), "model.pt"}));
  EXPECT_EQ(st->CreateForWrite("x").status().code(), StatusCode::kUnimplemented);
  EXPECT_EQ(st->OpenForRead("other").status().code(), StatusCode::kNotFound);
}

TEST(TorchSaveLayout, LooksLikeZip) {
  EXPECT_TRUE(LooksLikeZip(std::string_view("PK\x03\x04rest", 8)));
  EXPECT_FALSE(LooksLikeZip("PK"));
  EXPECT_FALSE(LooksLikeZip(std::string_view("\x80\x02}q", 4)));
}

}  // namespace
}  // namespace dcpp::storage
