// End-to-end tests of dcpp::Save / Load / LoadAll on real files.
#include "dcpp/checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "dcpp/io/file.h"
#include "temp_dir_test_base.h"

namespace dcpp {
namespace {

namespace fs = std::filesystem;

using CheckpointTest = TempDirTest;

Tensor Iota(DType dtype, Shape shape, int seed = 0) {
  Tensor t = *Tensor::Zeros(dtype, std::move(shape));
  auto* p = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(i * 7 + seed);
  return t;
}

Value SampleState() {
  Value sd;
  sd["model"]["w"] = Iota(DType::kFloat32, {8, 4});
  sd["model"]["b"] = Iota(DType::kBFloat16, {4}, 1);
  sd["model"]["scalar"] = Iota(DType::kInt64, {}, 2);
  sd["model"]["empty"] = Iota(DType::kFloat16, {0, 3});
  sd["opt"]["groups"] = Value::List({Value()});
  sd["opt"]["groups"].items()[0]["lr"] = 0.001;
  sd["opt"]["groups"].items()[0]["betas"] = Value::Tuple({0.9, 0.999});
  sd["step"] = 12;
  sd["tag"] = "run-7";
  sd["blob"] = Value::Bytes(std::string("\0\1\2", 3));
  return sd;
}

Value ZerosLike(const Value& v) {
  if (v.is_tensor()) return Value(*Tensor::Zeros(v.tensor().dtype(), v.tensor().shape()));
  if (v.is_dict()) {
    Value out = Value::EmptyDict();
    for (size_t i = 0; i < v.dict().size(); ++i)
      out.dict().Set(v.dict().keys()[i], ZerosLike(v.dict().values()[i]));
    return out;
  }
  if (v.kind() == Value::Kind::kList) {
    std::vector<Value> items;
    for (const auto& x : v.items()) items.push_back(ZerosLike(x));
    return Value::List(std::move(items));
  }
  return Value();
}

TEST_F(CheckpointTest, SaveThenLoadAllAndInPlace) {
  const Value sd = SampleState();
  for (int threads : {1, 3}) {
    for (bool single : {true, false}) {
      SaveOptions o;
      o.files_per_rank = threads;
      o.single_file_per_rank = single;
      const std::string dir = Dir("t" + std::to_string(threads) + (single ? "s" : "m"));
      auto md = Save(sd, dir, o);
      ASSERT_TRUE(md.ok()) << md.status().ToString();
      EXPECT_EQ(md->entries.size(), 9u);
      EXPECT_TRUE(fs::exists(dir + "/.metadata"));
      for (const auto& e : fs::directory_iterator(dir))  // no temporary metadata left
        EXPECT_FALSE(e.path().filename().string().ends_with(".tmp")) << e.path();

      auto all = LoadAll(dir);
      ASSERT_TRUE(all.ok()) << all.status().ToString();
      EXPECT_TRUE(all->Equals(sd)) << all->DebugString();

      Value target = ZerosLike(sd);
      ASSERT_TRUE(Load(target, dir).ok());
      EXPECT_TRUE(target.Equals(sd)) << target.DebugString();

      auto read_md = ReadMetadata(dir);
      ASSERT_TRUE(read_md.ok());
      EXPECT_EQ(*read_md, *md);
    }
  }
}

TEST_F(CheckpointTest, IoThreadsWriteTheSameFiles) {
  // Several threads in one file (io_threads > files) write what one writes.
  Value sd = SampleState();
  sd["model"]["big"] = Iota(DType::kFloat32, {300, 200}, 3);  // above 64 KiB: borrowed
  for (int files : {1, 2}) {
    std::vector<std::string> dirs;
    for (int io : {1, 4}) {
      SaveOptions o;
      o.files_per_rank = files;
      o.io_threads = io;
      dirs.push_back(Dir("io" + std::to_string(files) + "_" + std::to_string(io)));
      ASSERT_TRUE(Save(sd, dirs.back(), o).ok());
    }
    // `__0_{f}.{tag}.distcp`, the tag random per save.
    auto data_file = [](const std::string& dir, int f) {
      const std::string prefix = "__0_" + std::to_string(f) + ".";
      for (const auto& e : fs::directory_iterator(dir))
        if (e.path().filename().string().starts_with(prefix)) return e.path().string();
      return dir + "/" + prefix + "?.distcp";
    };
    for (int f = 0; f < files; ++f) {
      const std::string name = "__0_" + std::to_string(f);
      auto a = io::ReadWholeFile(data_file(dirs[0], f), 1 << 30);
      auto b = io::ReadWholeFile(data_file(dirs[1], f), 1 << 30);
      ASSERT_TRUE(a.ok() && b.ok()) << name;
      EXPECT_TRUE(*a == *b) << name;
    }
    auto all = LoadAll(dirs[1]);
    ASSERT_TRUE(all.ok());
    EXPECT_TRUE(all->Equals(sd));
  }
  SaveOptions bad;
  bad.io_threads = -1;
  EXPECT_EQ(Save(sd, Dir("bad_io"), bad).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(CheckpointTest, StridedSourcesAndDestinations) {
  // A 6x4 base; save its transpose (dense) and every other column (not dense).
  Tensor base = Iota(DType::kInt32, {6, 4});
  TensorView transposed = base.view();
  transposed.shape = {4, 6};
  transposed.strides = {1, 4};
  TensorView every_other = base.view();
  every_other.shape = {6, 2};
  every_other.strides = {4, 2};
  Value sd;
  sd["t"] = Tensor::Borrow(transposed);
  sd["e"] = Tensor::Borrow(every_other);
  ASSERT_TRUE(Save(sd, Dir("s")).ok());

  // Load "t" into a destination that is itself a transposed view.
  Tensor storage = *Tensor::Zeros(DType::kInt32, {6, 4});
  TensorView dst = storage.view();
  dst.shape = {4, 6};
  dst.strides = {1, 4};
  Value target;
  target["t"] = Tensor::Borrow(dst);
  target["e"] = *Tensor::Zeros(DType::kInt32, {6, 2});
  ASSERT_TRUE(Load(target, Dir("s")).ok());
  EXPECT_TRUE(target.Equals(sd));
  EXPECT_TRUE(storage.BitwiseEquals(base));
}

TEST_F(CheckpointTest, LoadErrorsNameTheKey) {
  ASSERT_TRUE(Save(SampleState(), Dir("c")).ok());
  Value wrong_shape = ZerosLike(SampleState());
  wrong_shape["model"]["w"] = *Tensor::Zeros(DType::kFloat32, {4, 8});
  Status s = Load(wrong_shape, Dir("c"));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'model.w'"), std::string::npos) << s.message();

  Value wrong_dtype = ZerosLike(SampleState());
  wrong_dtype["model"]["b"] = *Tensor::Zeros(DType::kFloat16, {4});
  s = Load(wrong_dtype, Dir("c"));
  EXPECT_NE(s.message().find("dtype mismatch"), std::string::npos) << s.message();

  Value extra = ZerosLike(SampleState());
  extra["new"] = *Tensor::Zeros(DType::kFloat32, {1});
  s = Load(extra, Dir("c"));
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_NE(s.message().find("'new'"), std::string::npos) << s.message();
  LoadOptions partial;
  partial.allow_partial_load = true;
  EXPECT_TRUE(Load(extra, Dir("c"), partial).ok());

  EXPECT_EQ(LoadAll(Dir("missing")).status().code(), StatusCode::kNotFound);
  fs::create_directories(Dir("empty"));
  EXPECT_EQ(ReadMetadata(Dir("empty")).status().code(), StatusCode::kNotFound);
}

TEST_F(CheckpointTest, OverwriteIsAtomicAndOptional) {
  Value first;
  first["x"] = Iota(DType::kFloat32, {16});
  ASSERT_TRUE(Save(first, Dir("o")).ok());
  Value second;
  second["y"] = Iota(DType::kFloat64, {3}, 5);
  SaveOptions no_overwrite;
  no_overwrite.overwrite = false;
  EXPECT_EQ(Save(second, Dir("o"), no_overwrite).status().code(), StatusCode::kAlreadyExists);
  auto still = LoadAll(Dir("o"));
  ASSERT_TRUE(still.ok());
  EXPECT_TRUE(still->Equals(first));

  ASSERT_TRUE(Save(second, Dir("o")).ok());
  auto now = LoadAll(Dir("o"));
  ASSERT_TRUE(now.ok());
  EXPECT_TRUE(now->Equals(second));
  size_t data_files = 0;
  for (const auto& f : fs::directory_iterator(Dir("o")))
    data_files += f.path().extension() == ".distcp";
  EXPECT_EQ(data_files, 1u);  // the replaced checkpoint's file was removed
}

TEST_F(CheckpointTest, KeyFilterAndProgress) {
  const Value sd = SampleState();
  size_t calls = 0;
  Progress last;
  SaveOptions so;
  so.progress = [&](const Progress& p) {
    ++calls;
    last = p;
  };
  ASSERT_TRUE(Save(sd, Dir("k"), so).ok());
  EXPECT_EQ(calls, 9u);
  EXPECT_EQ(last.items_done, last.items_total);
  EXPECT_EQ(last.bytes_done, last.bytes_total);

  LoadAllOptions lo;
  lo.keys = {"model", "step"};
  auto part = LoadAll(Dir("k"), lo);
  ASSERT_TRUE(part.ok());
  EXPECT_EQ(part->dict().size(), 2u);
  EXPECT_EQ(part->Find("model")->dict().size(), 4u);
  EXPECT_EQ(part->Find("step")->as_int(), 12);
}

TEST_F(CheckpointTest, BadOptionsAndState) {
  SaveOptions o;
  o.files_per_rank = 0;
  EXPECT_EQ(Save(SampleState(), Dir("b"), o).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Save(Value(3), Dir("b")).status().code(), StatusCode::kInvalidArgument);
  TensorView bad = MakeView(nullptr, DType::kFloat32, {2});
  Value sd;
  sd["null"] = Tensor::Borrow(bad);
  Status s = Save(sd, Dir("b")).status();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'null'"), std::string::npos) << s.message();
  EXPECT_FALSE(fs::exists(Dir("b") + "/.metadata"));
}

}  // namespace
}  // namespace dcpp
