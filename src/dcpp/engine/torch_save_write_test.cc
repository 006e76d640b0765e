#include "dcpp/engine/torch_save_write.h"

#include <algorithm>
#include <cstring>

#include <gtest/gtest.h>

#include "dcpp/base/crc32.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/format/zip.h"

namespace dcpp::engine {
namespace {

Tensor Iota(DType dtype, Shape shape) {
  Tensor t = *Tensor::Zeros(dtype, shape);
  auto* p = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(i * 13 + 1);
  return t;
}

// A tensor entry whose bytes come from `t` in pieces of `piece` bytes.
TorchSaveEntry FromTensor(std::string fqn, ObjectPath path, Tensor t, size_t piece) {
  TorchSaveEntry e;
  e.fqn = std::move(fqn);
  e.path = std::move(path);
  e.is_tensor = true;
  e.dtype = t.dtype();
  e.shape = t.shape();
  e.produce = [t, piece](const BandSink& put) -> Status {
    const auto* p = static_cast<const uint8_t*>(t.data());
    for (size_t at = 0; at < t.nbytes(); at += piece)
      DCPP_RETURN_IF_ERROR(put({p + at, std::min(piece, t.nbytes() - at)}));
    return Status::Ok();
  };
  return e;
}

TorchSaveEntry FromValue(std::string fqn, ObjectPath path, Value v) {
  TorchSaveEntry e;
  e.fqn = std::move(fqn);
  e.path = std::move(path);
  e.value = std::move(v);
  return e;
}

std::string ReadAll(storage::Storage& s, const std::string& name) {
  auto f = s.OpenForRead(name);
  EXPECT_TRUE(f.ok());
  if (!f.ok()) return "";
  std::string out(static_cast<size_t>(*(*f)->Size()), '\0');
  EXPECT_TRUE((*f)->ReadAt(0, {reinterpret_cast<uint8_t*>(out.data()), out.size()}).ok());
  return out;
}

using S = std::string;
using I = int64_t;

TEST(TorchSaveWrite, NestedStateDictRoundTripsWithCrcs) {
  Tensor w = Iota(DType::kFloat32, {33, 17});
  Tensor b = Iota(DType::kBFloat16, {17});
  Tensor scalar = Iota(DType::kInt64, {});
  Tensor empty = *Tensor::Zeros(DType::kFloat16, {0, 4});
  Tensor m = Iota(DType::kFloat32, {17});
  std::vector<TorchSaveEntry> entries;
  entries.push_back(FromTensor("model.w", {S("model"), S("w")}, w, 1000));
  entries.push_back(FromTensor("model.b", {S("model"), S("b")}, b, 7));
  entries.push_back(FromTensor("step_t", {S("step_t")}, scalar, 3));
  entries.push_back(FromTensor("model.empty", {S("model"), S("empty")}, empty, 8));
  entries.push_back(FromTensor("optim.state.0.exp_avg", {S("optim"), S("state"), I{0}, S("exp_avg")},
                               m, 64));
  entries.push_back(FromValue("optim.state.0.step", {S("optim"), S("state"), I{0}, S("step")},
                              Value(int64_t{5})));
  entries.push_back(FromValue("optim.param_groups.0.lr",
                              {S("optim"), S("param_groups"), I{0}, S("lr")}, Value(0.01)));
  entries.push_back(FromValue("flat_key", {}, Value("text")));
  auto mem = storage::NewMemoryStorage();
  Status s = WriteTorchSave(entries, *mem, "out.pt", {});
  ASSERT_TRUE(s.ok()) << s.ToString();
  auto names = mem->List();
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"out.pt"});  // no temporary left

  const std::string file = ReadAll(*mem, "out.pt");
  auto v = format::DecodeValueArchive(format::zip::AsBytes(file), "out.pt");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  Value want = Value::EmptyDict();
  want["model"]["w"] = Value(w);
  want["model"]["b"] = Value(b);
  want["step_t"] = Value(scalar);
  want["model"]["empty"] = Value(empty);
  // optim.state is a list here: DCP's set_element makes int path elements
  // list indices, as dcp_to_torch_save does.
  Value state0 = Value::EmptyDict();
  state0["exp_avg"] = Value(m);
  state0["step"] = Value(int64_t{5});
  want["optim"]["state"] = Value::List({state0});
  Value group = Value::EmptyDict();
  group["lr"] = Value(0.01);
  want["optim"]["param_groups"] = Value::List({group});
  want["flat_key"] = Value("text");
  EXPECT_TRUE(v->Equals(want)) << v->DebugString(20) << "\nwant " << want.DebugString(20);

  // Records in torch.save's order, every CRC right.
  auto reader = format::zip::Reader::Open(format::zip::AsBytes(file));
  ASSERT_TRUE(reader.ok());
  std::vector<std::string> order;
  for (const auto& e : reader->directory().entries) {
    order.push_back(e.name);
    auto data = reader->Read(e.name);
    ASSERT_TRUE(data.ok());
    EXPECT_EQ(Crc32(*data), e.crc32) << e.name;
  }
  EXPECT_EQ(order.front(), "data.pkl");
  EXPECT_EQ(order.back(), "version");
  EXPECT_EQ(order[4], "data/0");
}

TEST(TorchSaveWrite, FailureLeavesExistingFileAndNoTemporary) {
  auto mem = storage::NewMemoryStorage();
  {
    std::vector<TorchSaveEntry> ok = {FromValue("x", {}, Value(int64_t{1}))};
    ASSERT_TRUE(WriteTorchSave(ok, *mem, "out.pt", {}).ok());
  }
  const std::string before = ReadAll(*mem, "out.pt");
  TorchSaveEntry bad = FromTensor("w", {}, Iota(DType::kFloat32, {1024}), 100);
  bad.produce = [](const BandSink& put) -> Status {
    static const uint8_t bytes[16] = {};
    DCPP_RETURN_IF_ERROR(put({bytes, 16}));
    return DataLossError("source chunk is damaged");
  };
  std::vector<TorchSaveEntry> entries;
  entries.push_back(std::move(bad));
  Status s = WriteTorchSave(entries, *mem, "out.pt", {});
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("'w'"), std::string::npos) << s.ToString();
  EXPECT_EQ(ReadAll(*mem, "out.pt"), before);
  EXPECT_EQ(*mem->List(), std::vector<std::string>{"out.pt"});

  // A producer short of bytes is an error too.
  TorchSaveEntry shortp = FromTensor("w", {}, Iota(DType::kFloat32, {4}), 100);
  shortp.produce = [](const BandSink& put) -> Status {
    static const uint8_t bytes[4] = {};
    return put({bytes, 4});
  };
  entries.clear();
  entries.push_back(std::move(shortp));
  s = WriteTorchSave(entries, *mem, "out.pt", {});
  EXPECT_EQ(s.code(), StatusCode::kInternal) << s.ToString();
  // overwrite off refuses an existing file.
  TorchSaveWriteOptions no_overwrite;
  no_overwrite.overwrite = false;
  std::vector<TorchSaveEntry> one = {FromValue("x", {}, Value(int64_t{2}))};
  EXPECT_EQ(WriteTorchSave(one, *mem, "out.pt", no_overwrite).code(),
            StatusCode::kAlreadyExists);
}

}  // namespace
}  // namespace dcpp::engine
