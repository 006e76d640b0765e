#include "dcpp/format/torch_pickle.h"

#include <stdlib.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "dcpp/format/pickle.h"
#include "dcpp/format/zip.h"

namespace dcpp::format {
namespace {

namespace pk = pickle;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

std::string TestdataDir() {
  return std::string(DCPP_TESTDATA_DIR) + "/";
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFileOrDie(const std::string& path, std::string_view data) {
  std::ofstream out(path, std::ios::binary);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << path;
}

zip::Bytes B(std::string_view s) { return zip::AsBytes(s); }

std::string Record(const std::string& archive, std::string_view name) {
  auto reader = zip::Reader::Open(B(archive));
  if (!reader.ok()) return "<" + reader.status().ToString() + ">";
  auto data = reader->Read(name);
  if (!data.ok()) return "<" + data.status().ToString() + ">";
  return std::string(reinterpret_cast<const char*>(data->data()), data->size());
}

std::vector<std::string> RecordNames(const std::string& archive) {
  std::vector<std::string> names;
  auto reader = zip::Reader::Open(B(archive));
  if (!reader.ok()) return names;
  for (const auto& e : reader->directory().entries) names.push_back(e.name);
  return names;
}

std::string Hex(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += kHex[c >> 4];
    out += kHex[c & 15];
  }
  return out;
}

// A tensor owning `bytes` laid out with `strides` (in elements).
Tensor MakeTensor(DType dtype, Shape shape, Shape strides, const std::string& storage) {
  auto owner = std::make_shared<std::string>(storage);
  TensorView v;
  v.data = owner->empty() ? nullptr : owner->data();
  v.dtype = dtype;
  v.shape = std::move(shape);
  v.strides = std::move(strides);
  return Tensor::Adopt(v, std::shared_ptr<void>(owner, owner->data()));
}

Tensor Contiguous(DType dtype, Shape shape, const std::string& storage) {
  Shape strides = ContiguousStrides(shape);
  return MakeTensor(dtype, std::move(shape), std::move(strides), storage);
}

template <typename T>
std::string Pod(std::initializer_list<T> values) {
  std::string out;
  for (T v : values) out.append(reinterpret_cast<const char*>(&v), sizeof(T));
  return out;
}

std::string Pattern(size_t n, unsigned seed) {
  std::string out(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (size_t i = 0; i < n; ++i) {
    x = x * 1103515245u + 12345u;
    out[i] = static_cast<char>(x >> 24);
  }
  return out;
}

std::string Join(const Shape& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
  return out;
}

std::string StorageOf(const DecodedTensor& t) {
  return std::string(reinterpret_cast<const char*>(t.storage.data()), t.storage.size());
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/dcpp_torch_pickle_XXXXXX";
    path_ = ::mkdtemp(tmpl) ? tmpl : "";
  }
  ~TempDir() {
    if (!path_.empty()) (void)std::system(("rm -rf '" + path_ + "'").c_str());
  }
  const std::string& path() const { return path_; }
  std::string operator/(std::string_view name) const { return path_ + "/" + std::string(name); }

 private:
  std::string path_;
};

bool TorchAvailable() {
  static const bool available =
      std::system("python3 -c 'import torch, numpy' >/dev/null 2>&1") == 0;
  return available;
}

// Runs `script` (Python source) with `args`; returns its exit status and
// combined output.
int RunPython(const TempDir& dir, const std::string& script, const std::string& args,
              std::string* output) {
  const std::string script_path = dir / "script.py";
  const std::string out_path = dir / "script.out";
  WriteFileOrDie(script_path, script);
  const std::string cmd = "python3 '" + script_path + "' " + args + " > '" + out_path + "' 2>&1";
  int rc = std::system(cmd.c_str());
  *output = ReadFileOrDie(out_path);
  return rc;
}

// ---------------------------------------------------------------------------
// Hand-built pickles and archives for corruption tests
// ---------------------------------------------------------------------------

struct TensorPickleSpec {
  std::string rebuild = "_rebuild_tensor_v2";
  std::string storage_module = "torch";
  std::string storage_class = "FloatStorage";
  std::string key = "0";
  int64_t numel = 16;
  int64_t offset = 0;
  Shape shape = {4, 4};
  Shape strides = {4, 1};
  std::string dtype;  // _rebuild_tensor_v3's dtype name
  bool conj_metadata = false;
};

std::string TensorPickle(const TensorPickleSpec& p) {
  pk::Writer w;
  w.Global("torch._utils", p.rebuild);
  w.Mark();
  w.Mark();
  w.String("storage");
  w.Global(p.storage_module, p.storage_class);
  w.String(p.key);
  w.String("cpu");
  w.Int(p.numel);
  w.Tuple(5);
  w.BinPersId();
  w.Int(p.offset);
  w.Mark();
  for (int64_t d : p.shape) w.Int(d);
  w.Tuple(p.shape.size() + 4);  // always the MARK form
  w.Mark();
  for (int64_t d : p.strides) w.Int(d);
  w.Tuple(p.strides.size() + 4);
  w.Bool(false);
  w.Global("collections", "OrderedDict");
  w.EmptyTuple();
  w.Reduce();
  if (!p.dtype.empty()) w.Global("torch", p.dtype);
  if (p.conj_metadata) {
    w.EmptyDict();
    w.String("conj");
    w.Bool(true);
    w.SetItem();
  }
  w.Tuple(99);  // MARK form
  w.Reduce();
  return w.Finish();
}

struct ArchiveSpec {
  std::string data_pkl;
  std::vector<std::pair<std::string, std::string>> storages;
  std::string byteorder = "little";  // empty: no record
  std::string version = "3\n";       // empty: no record
};

std::string BuildArchive(const ArchiveSpec& a) {
  std::vector<zip::RecordSpec> records;
  records.push_back({"data.pkl", B(a.data_pkl)});
  if (!a.byteorder.empty()) records.push_back({"byteorder", B(a.byteorder)});
  for (const auto& [name, bytes] : a.storages) records.push_back({"data/" + name, B(bytes)});
  if (!a.version.empty()) records.push_back({"version", B(a.version)});
  return zip::LayOut(records).Flatten();
}

// ---------------------------------------------------------------------------
// Tensor archives: structure and round trip (no Python needed)
// ---------------------------------------------------------------------------

// Verified against torch 2.13: torch.save(torch.arange(16.).reshape(4, 4))
// writes exactly these 154 bytes as data.pkl (docs/format.md, "Items").
constexpr char kTorch4x4FloatPkl[] =
    "\x80\x02"
    "ctorch._utils\n_rebuild_tensor_v2\nq\x00((X\x07\x00\x00\x00storageq\x01"
    "ctorch\nFloatStorage\nq\x02X\x01\x00\x00\x00"
    "0q\x03X\x03\x00\x00\x00"
    "cpuq\x04K\x10tq\x05"
    "QK\x00K\x04K\x04\x86q\x06K\x04K\x01\x86q\x07\x89"
    "ccollections\nOrderedDict\nq\x08)Rq\ttq\n"
    "Rq\x0b.";

TEST(TorchPickleTest, TensorArchiveRecordsAndDataPkl) {
  std::string storage = Pattern(64, 1);
  TensorView view = MakeView(storage.data(), DType::kFloat32, {4, 4});
  std::string archive = EncodeTensorArchive(view).Flatten();
  EXPECT_EQ(RecordNames(archive),
            (std::vector<std::string>{"data.pkl", ".format_version", ".storage_alignment",
                                      "byteorder", "data/0", "version"}));
  EXPECT_EQ(Hex(Record(archive, "data.pkl")),
            Hex(std::string(kTorch4x4FloatPkl, sizeof(kTorch4x4FloatPkl) - 1)));
  EXPECT_EQ(Record(archive, ".format_version"), "1");
  EXPECT_EQ(Record(archive, ".storage_alignment"), "64");
  EXPECT_EQ(Record(archive, "byteorder"), "little");
  EXPECT_EQ(Record(archive, "data/0"), storage);
  EXPECT_EQ(Record(archive, "version"), "3\n");
}

TEST(TorchPickleTest, TensorArchiveBorrowsLargeStorage) {
  std::string storage = Pattern(1 << 17, 2);
  TensorView view = MakeView(storage.data(), DType::kInt64, {1 << 14});
  zip::WriteOptions options;
  options.copy_threshold = 0;  // even data.pkl would be borrowed: must still be copied
  zip::Layout layout = EncodeTensorArchive(view, options);
  bool borrowed = false;
  for (const auto& p : layout.pieces) {
    if (p.is_borrowed) {
      EXPECT_EQ(p.borrowed.data(), reinterpret_cast<const uint8_t*>(storage.data()));
      borrowed = true;
    }
  }
  EXPECT_TRUE(borrowed);
  std::string archive = layout.Flatten();
  auto decoded = DecodeTensorArchive(B(archive));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(
      std::string(reinterpret_cast<const char*>(decoded->storage.data()), decoded->storage.size()),
      storage);
}

TEST(TorchPickleTest, TensorArchiveHonoursAlignment) {
  std::string storage = Pattern(40, 4);
  zip::WriteOptions options;
  options.alignment = 256;
  std::string archive =
      EncodeTensorArchive(MakeView(storage.data(), DType::kFloat64, {5}), options).Flatten();
  EXPECT_EQ(Record(archive, ".storage_alignment"), "256");
  auto decoded = DecodeTensorArchive(B(archive));
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(decoded->storage_record_offset % 256, 0u);
  EXPECT_EQ(StorageOf(*decoded), storage);
}

struct TensorCase {
  DType dtype;
  Shape shape;
  Shape strides;
};

std::vector<TensorCase> TensorCases() {
  std::vector<TensorCase> cases;
  for (int d = 0; d < kNumDTypes; ++d) cases.push_back({static_cast<DType>(d), {2, 3}, {3, 1}});
  cases.push_back({DType::kFloat32, {3, 2}, {1, 3}});                   // transposed
  cases.push_back({DType::kUInt32, {4, 2}, {1, 4}});                    // transposed, v3
  cases.push_back({DType::kFloat64, {}, {}});                           // 0-d
  cases.push_back({DType::kUInt16, {}, {}});                            // 0-d, v3
  cases.push_back({DType::kFloat32, {0, 3}, {3, 1}});                   // zero-size
  cases.push_back({DType::kFloat8E4M3FN, {2, 0}, {1, 1}});              // zero-size, v3
  cases.push_back({DType::kInt64, {1, 2, 1, 3, 2}, {12, 6, 6, 2, 1}});  // > 3 dims
  cases.push_back({DType::kInt16, {2, 3, 4}, {1, 2, 6}});               // fully permuted
  cases.push_back({DType::kUInt8, {300}, {1}});                         // BININT2 numel
  cases.push_back({DType::kFloat32, {70000}, {1}});  // BININT numel, borrowed data
  cases.push_back({DType::kBFloat16, {1, 1}, {1, 1}});
  return cases;
}

size_t StorageBytes(const TensorCase& c) {
  return static_cast<size_t>(NumElements(c.shape)) * ElementSize(c.dtype);
}

TEST(TorchPickleTest, TensorRoundTripEveryDType) {
  unsigned seed = 10;
  for (const TensorCase& c : TensorCases()) {
    SCOPED_TRACE(std::string(TorchName(c.dtype)) + " " + ShapeToString(c.shape));
    std::string storage = Pattern(StorageBytes(c), seed++);
    TensorView view{storage.empty() ? nullptr : storage.data(), c.dtype, c.shape, c.strides};
    ASSERT_TRUE(view.is_dense());
    std::string archive = EncodeTensorArchive(view).Flatten();
    auto decoded = DecodeTensorArchive(B(archive));
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(decoded->dtype, c.dtype);
    EXPECT_EQ(decoded->shape, c.shape);
    EXPECT_EQ(decoded->strides, c.strides);
    EXPECT_EQ(decoded->storage_offset, 0);
    EXPECT_EQ(decoded->storage_nbytes, storage.size());
    ASSERT_EQ(decoded->storage.size(), storage.size());
    EXPECT_EQ(decoded->storage.data(),
              reinterpret_cast<const uint8_t*>(archive.data()) + decoded->storage_record_offset);
    EXPECT_EQ(decoded->storage_record_offset % 64, 0u);
    EXPECT_EQ(std::memcmp(decoded->storage.data(), storage.data(), storage.size()), 0);

    // The same tensor as a value.
    Value v(MakeTensor(c.dtype, c.shape, c.strides, storage));
    auto encoded = EncodeValueArchive(v);
    ASSERT_TRUE(encoded.ok()) << encoded.status().ToString();
    auto back = DecodeValueArchive(B(*encoded), "t");
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    ASSERT_TRUE(back->is_tensor()) << back->DebugString();
    EXPECT_TRUE(back->Equals(v)) << back->DebugString();
    EXPECT_EQ(back->tensor().strides(), c.strides);
    EXPECT_TRUE(back->tensor().owns_data());
  }
}

// ---------------------------------------------------------------------------
// Tensor archives against real torch
// ---------------------------------------------------------------------------

constexpr char kTensorScript[] = R"PY(
import io, os, sys, zipfile
import torch
from torch.utils.serialization import config

def storage_bytes(t):
    s = t.untyped_storage()
    return torch.empty(0, dtype=torch.uint8).set_(s, 0, (s.nbytes(),), (1,)).numpy().tobytes()

d, n = sys.argv[1], int(sys.argv[2])
fails = []
for i in range(n):
    name, shape, strides = open(f"{d}/case_{i}.txt").read().split("\n")[:3]
    dtype = getattr(torch, name)
    shape = [int(x) for x in shape.split(",") if x]
    strides = [int(x) for x in strides.split(",") if x]
    raw = open(f"{d}/case_{i}.bin", "rb").read()
    storage = (torch.UntypedStorage.from_buffer(raw, dtype=torch.uint8) if raw
               else torch.UntypedStorage(0))
    t = torch.empty(0, dtype=dtype).set_(storage, 0, shape, strides)
    buf = io.BytesIO()
    torch.save(t, buf)
    open(f"{d}/torch_{i}.pt", "wb").write(buf.getvalue())
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    open(f"{d}/torch_{i}.pkl", "wb").write(z.read("archive/data.pkl"))
    open(f"{d}/torch_{i}.names", "w").write("\n".join(x.filename for x in z.infolist()))
    path = f"{d}/ours_{i}.pt"
    loads = []
    for wo in (True, False):
        with open(path, "rb") as f:
            loads.append(("weights_only=%s" % wo, torch.load(f, weights_only=wo)))
    loads.append(("mmap", torch.load(path, mmap=True, weights_only=True)))
    config.load.calculate_storage_offsets = True
    loads.append(("mmap+calculated offsets", torch.load(path, mmap=True, weights_only=True)))
    config.load.calculate_storage_offsets = False
    for how, u in loads:
        got = (u.dtype, list(u.shape), list(u.stride()), u.storage_offset(),
               storage_bytes(u), u.requires_grad)
        want = (dtype, shape, strides, 0, raw, False)
        if got != want:
            fails.append(f"case {i} ({name} {shape} {strides}) {how}: "
                         f"got {got[:4]} want {want[:4]}")
print("\n".join(fails) if fails else "OK")
sys.exit(1 if fails else 0)
)PY";

TEST(TorchPickleTest, TensorArchivesMatchTorchSave) {
  if (!TorchAvailable()) GTEST_SKIP() << "python3 with torch is not available";
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::vector<TensorCase> cases = TensorCases();
  std::vector<std::string> storages;
  for (size_t i = 0; i < cases.size(); ++i) {
    const TensorCase& c = cases[i];
    storages.push_back(Pattern(StorageBytes(c), 100 + i));
    std::string& s = storages.back();
    TensorView view{s.empty() ? nullptr : s.data(), c.dtype, c.shape, c.strides};
    WriteFileOrDie(
        dir / ("case_" + std::to_string(i) + ".txt"),
        std::string(TorchName(c.dtype)) + "\n" + Join(c.shape) + "\n" + Join(c.strides) + "\n");
    WriteFileOrDie(dir / ("case_" + std::to_string(i) + ".bin"), s);
    WriteFileOrDie(dir / ("ours_" + std::to_string(i) + ".pt"),
                   EncodeTensorArchive(view).Flatten());
  }
  std::string output;
  int rc = RunPython(dir, kTensorScript, "'" + dir.path() + "' " + std::to_string(cases.size()),
                     &output);
  EXPECT_EQ(rc, 0) << output;

  for (size_t i = 0; i < cases.size(); ++i) {
    const TensorCase& c = cases[i];
    SCOPED_TRACE(std::string(TorchName(c.dtype)) + " " + ShapeToString(c.shape) + " strides " +
                 ShapeToString(c.strides));
    const std::string ours = ReadFileOrDie(dir / ("ours_" + std::to_string(i) + ".pt"));
    const std::string theirs = ReadFileOrDie(dir / ("torch_" + std::to_string(i) + ".pt"));
    // data.pkl byte-identical to torch.save's.
    const std::string torch_pkl = ReadFileOrDie(dir / ("torch_" + std::to_string(i) + ".pkl"));
    EXPECT_EQ(Hex(Record(ours, "data.pkl")), Hex(torch_pkl));
    // Same records in the same order, except torch's informational
    // .data/serialization_id, which dcpp does not write.
    std::vector<std::string> names;
    std::istringstream in(ReadFileOrDie(dir / ("torch_" + std::to_string(i) + ".names")));
    for (std::string line; std::getline(in, line);) names.push_back(line);
    ASSERT_FALSE(names.empty());
    EXPECT_EQ(names.back(), "archive/.data/serialization_id");
    names.pop_back();
    std::vector<std::string> ours_names;
    for (const auto& n : RecordNames(ours)) ours_names.push_back("archive/" + n);
    EXPECT_EQ(ours_names, names);
    // dcpp decodes torch's archive to the same tensor.
    auto decoded = DecodeTensorArchive(B(theirs));
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_EQ(decoded->dtype, c.dtype);
    EXPECT_EQ(decoded->shape, c.shape);
    EXPECT_EQ(decoded->strides, c.strides);
    EXPECT_EQ(std::string(reinterpret_cast<const char*>(decoded->storage.data()),
                          decoded->storage.size()),
              storages[i]);
    // Ours and torch's archives are identical up to where torch's extra
    // record starts (same layout, same CRCs).
    const size_t common = std::min(ours.size(), theirs.size());
    size_t same = 0;
    while (same < common && ours[same] == theirs[same]) ++same;
    auto reader = zip::Reader::Open(B(ours));
    ASSERT_TRUE(reader.ok());
    auto version_offset = reader->Offset("version");
    ASSERT_TRUE(version_offset.ok());
    EXPECT_GE(same, *version_offset + 2) << "archives differ at byte " << same;
  }
}

// ---------------------------------------------------------------------------
// Tensor archives written by torch (committed fixtures)
// ---------------------------------------------------------------------------

struct Fixture {
  std::string bytes;
  explicit Fixture(const std::string& name)
      : bytes(ReadFileOrDie(TestdataDir() + "torch_pickle_" + name + ".pt")) {}
  zip::Bytes span() const { return B(bytes); }
};

TEST(TorchPickleTest, DecodesTorchTransposed) {
  Fixture f("tensor_transposed");  // arange(6, float32).reshape(2, 3).t()
  auto t = DecodeTensorArchive(f.span());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->dtype, DType::kFloat32);
  EXPECT_EQ(t->shape, (Shape{3, 2}));
  EXPECT_EQ(t->strides, (Shape{1, 3}));
  EXPECT_EQ(t->storage_offset, 0);
  EXPECT_EQ(StorageOf(*t), Pod<float>({0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(t->storage.data(), f.span().data() + t->storage_record_offset);

  auto v = DecodeValueArchive(f.span(), "w");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_TRUE(v->Equals(
      Value(MakeTensor(DType::kFloat32, {3, 2}, {1, 3}, Pod<float>({0, 1, 2, 3, 4, 5})))));
}

TEST(TorchPickleTest, DecodesTorch0dEmptyUInt16OffsetParameter) {
  {
    Fixture f("tensor_0d");
    auto t = DecodeTensorArchive(f.span());  // tensor(2.5, float64)
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->dtype, DType::kFloat64);
    EXPECT_EQ(t->shape, Shape{});
    EXPECT_EQ(t->strides, Shape{});
    EXPECT_EQ(StorageOf(*t), Pod<double>({2.5}));
  }
  {
    Fixture f("tensor_empty");
    auto t = DecodeTensorArchive(f.span());  // zeros(0, 3, int16)
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->dtype, DType::kInt16);
    EXPECT_EQ(t->shape, (Shape{0, 3}));
    EXPECT_EQ(t->strides, (Shape{3, 1}));
    EXPECT_EQ(t->storage_nbytes, 0u);
  }
  {
    Fixture f("tensor_uint16");
    auto t = DecodeTensorArchive(f.span());  // [0, 1, 2, 65535]
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->dtype, DType::kUInt16);
    EXPECT_EQ(t->shape, Shape{4});
    EXPECT_EQ(StorageOf(*t), Pod<uint16_t>({0, 1, 2, 65535}));
  }
  {
    Fixture f("tensor_offset");  // arange(10, int32)[2:5]
    auto t = DecodeTensorArchive(f.span());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->dtype, DType::kInt32);
    EXPECT_EQ(t->shape, Shape{3});
    EXPECT_EQ(t->storage_offset, 2);
    EXPECT_EQ(StorageOf(*t), Pod<int32_t>({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
    auto v = DecodeValueArchive(f.span(), "w");
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    EXPECT_TRUE(v->Equals(Value(Contiguous(DType::kInt32, {3}, Pod<int32_t>({2, 3, 4})))))
        << v->DebugString();
  }
  {
    Fixture f("tensor_parameter");
    auto t = DecodeTensorArchive(f.span());  // Parameter(ones(2, bf16))
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ(t->dtype, DType::kBFloat16);
    EXPECT_EQ(t->shape, Shape{2});
    EXPECT_EQ(StorageOf(*t), Pod<uint16_t>({0x3F80, 0x3F80}));
  }
}

// ---------------------------------------------------------------------------
// Values written by torch (committed fixtures)
// ---------------------------------------------------------------------------

TEST(TorchPickleTest, DecodesTorchNestedValue) {
  Fixture f("value_nested");
  auto v = DecodeValueArchive(f.span(), "state.extra");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  // See torch_pickle_make_testdata.py.
  Dict od;
  od.Set("b", 2);
  od.Set("a", 1);
  Dict want;
  want.Set("int", 7);
  want.Set("neg", int64_t{INT64_MIN});
  want.Set("float", 0.5);
  want.Set("str", "h\xc3\xa9llo");
  want.Set("bytes", Value::Bytes(std::string("\x00\xff"
                                             "ab",
                                             4)));
  want.Set("none", Value());
  want.Set("flags", Value::List({true, false}));
  want.Set("tuple", Value::Tuple({1, "a", 2.0, Value()}));
  want.Set("od", Value(od));
  want.Set(3, "int key");
  want.Set("size", Value::Tuple({2, 3}));
  EXPECT_TRUE(v->Equals(Value(want))) << v->DebugString(20);
}

TEST(TorchPickleTest, DecodesTensorsSharingOneStorage) {
  Fixture f("value_shared");  // (s, s[1:], s) with s = arange(4, float32)
  auto v = DecodeValueArchive(f.span(), "x");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ASSERT_EQ(v->kind(), Value::Kind::kTuple);
  ASSERT_EQ(v->items().size(), 3u);
  const Tensor& a = v->items()[0].tensor();
  const Tensor& b = v->items()[1].tensor();
  const Tensor& c = v->items()[2].tensor();
  EXPECT_TRUE(a.BitwiseEquals(Contiguous(DType::kFloat32, {4}, Pod<float>({0, 1, 2, 3}))));
  EXPECT_TRUE(b.BitwiseEquals(Contiguous(DType::kFloat32, {3}, Pod<float>({1, 2, 3}))));
  // One copy of the storage, as in torch.
  EXPECT_EQ(static_cast<const char*>(b.data()), static_cast<const char*>(a.data()) + 4);
  EXPECT_EQ(c.data(), a.data());
}

TEST(TorchPickleTest, UserClassAndNumpyScalarBecomeOpaque) {
  {
    Fixture f("value_userclass");  // {"obj": mymod.MyClass()}
    auto v = DecodeValueArchive(f.span(), "x");
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    ASSERT_EQ(v->kind(), Value::Kind::kOpaque);
    EXPECT_EQ(v->opaque().blob, f.bytes);
    EXPECT_EQ(v->opaque().description, "an instance of mymod.MyClass");
  }
  {
    Fixture f("value_numpy");  // np.float64(1.5)
    auto v = DecodeValueArchive(f.span(), "x");
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    ASSERT_EQ(v->kind(), Value::Kind::kOpaque);
    EXPECT_EQ(v->opaque().blob, f.bytes);
    EXPECT_NE(v->opaque().description.find("numpy scalar"), std::string::npos)
        << v->opaque().description;
  }
}

TEST(TorchPickleTest, TensorDecoderRejectsValueArchives) {
  for (const char* name : {"value_nested", "value_userclass", "value_numpy", "value_shared"}) {
    SCOPED_TRACE(name);
    Fixture f(name);
    auto t = DecodeTensorArchive(f.span());
    EXPECT_FALSE(t.ok());
  }
}

// ---------------------------------------------------------------------------
// Values: encoding against real torch
// ---------------------------------------------------------------------------

struct ValueCase {
  Value value;
  std::string python;   // an expression building the same object
  bool byte_identical;  // whether data.pkl must equal torch.save's
};

Tensor FloatRange(Shape shape) {
  std::string bytes;
  for (int64_t i = 0; i < NumElements(shape); ++i) {
    float f = static_cast<float>(i);
    bytes.append(reinterpret_cast<const char*>(&f), 4);
  }
  return Contiguous(DType::kFloat32, std::move(shape), bytes);
}

std::vector<ValueCase> ValueCases() {
  std::vector<ValueCase> cases;
  cases.push_back({Value(5), "5", true});
  cases.push_back({Value("hello"), "'hello'", true});
  cases.push_back({Value("h\xc3\xa9llo \xe2\x9c\x93"), "'h\\u00e9llo \\u2713'", true});
  {
    Dict d;
    d.Set("a", 1.0);
    d.Set("b", 2.0);
    cases.push_back({Value(d), "{'a': 1.0, 'b': 2.0}", true});
  }
  cases.push_back({Value::List({1, 2, 3}), "[1, 2, 3]", true});
  {
    Dict x, y, d;
    x.Set("a", 1);
    y.Set("a", 2);
    d.Set("x", Value(x));
    d.Set("y", Value(y));
    d.Set(3, Value());
    d.Set(Value::Tuple({1, "q"}), true);
    cases.push_back({Value(d), "{'x': {'a': 1}, 'y': {'a': 2}, 3: None, (1, 'q'): True}", true});
  }
  cases.push_back({Value::List({0, 255, 256, 65535, 65536, -1, int64_t{-2147483648LL},
                                int64_t{2147483648LL}, int64_t{INT64_MAX}, int64_t{INT64_MIN}}),
                   "[0, 255, 256, 65535, 65536, -1, -2**31, 2**31, 2**63 - 1, -2**63]", true});
  cases.push_back({Value(int64_t{INT64_MIN}), "-2**63", true});
  cases.push_back({Value::Bytes("abc"), "b'abc'", true});
  cases.push_back({Value::Bytes(std::string("\x00\xff\x80", 3)), "b'\\x00\\xff\\x80'", true});
  cases.push_back({Value::Bytes("x"), "b'x'", true});
  // torch.save writes b'' as __builtin__.bytes(), which weights_only refuses.
  cases.push_back({Value::Bytes(""), "b''", false});
  cases.push_back({Value::Tuple({1, 2, 3, 4}), "(1, 2, 3, 4)", true});
  cases.push_back({Value::Tuple({}), "()", true});
  cases.push_back({Value::Tuple({Value::Tuple({}), Value::List({})}), "((), [])", true});
  cases.push_back({Value::List({1.0 / 0.0, -0.0, 1e-300, std::nan("")}),
                   "[float('inf'), -0.0, 1e-300, float('nan')]", true});
  {
    Dict model, root;
    model.Set("layers", Value::List({1, 2.5, "x", Value(), true}));
    model.Set("cfg", Value::Tuple({"a", Value::Bytes("bb")}));
    root.Set("model", Value(model));
    root.Set("step", 100);
    cases.push_back({Value(root),
                     "{'model': {'layers': [1, 2.5, 'x', None, True], 'cfg': ('a', b'bb')}, "
                     "'step': 100}",
                     true});
  }
  {
    std::vector<Value> items;
    for (int i = 0; i < 1001; ++i) items.emplace_back(i);
    cases.push_back({Value::List(items), "list(range(1001))", true});
    Dict d;
    for (int i = 0; i < 1001; ++i) d.Set("k" + std::to_string(i), i);
    cases.push_back({Value(d), "{'k%d' % i: i for i in range(1001)}", true});
  }
  cases.push_back({Value::Tuple({Value(FloatRange({2, 3}))}),
                   "(torch.arange(6, dtype=torch.float32).reshape(2, 3),)", true});
  {
    Tensor t = FloatRange({2});
    cases.push_back({Value::Tuple({Value(t), Value(t)}),
                     "((t := torch.arange(2, dtype=torch.float32)), t)", true});
  }
  {
    Dict d;
    d.Set("u", Value(Contiguous(DType::kUInt16, {2}, Pod<uint16_t>({1, 2}))));
    d.Set("t", Value(MakeTensor(DType::kFloat32, {3, 2}, {1, 3}, Pod<float>({0, 1, 2, 3, 4, 5}))));
    d.Set("e", Value(Contiguous(DType::kInt8, {0}, "")));
    d.Set("s", Value(Contiguous(DType::kFloat64, {}, Pod<double>({3.5}))));
    cases.push_back({Value(d),
                     "{'u': torch.tensor([1, 2], dtype=torch.uint16), "
                     "'t': torch.arange(6, dtype=torch.float32).reshape(2, 3).t(), "
                     "'e': torch.zeros(0, dtype=torch.int8), "
                     "'s': torch.tensor(3.5, dtype=torch.float64)}",
                     true});
  }
  return cases;
}

constexpr char kValueScript[] = R"PY(
import io, math, sys, zipfile
from collections import OrderedDict
import torch

def same(a, b):
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return (a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
                and a.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                == b.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(a, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return list(a.keys()) == list(b.keys()) and all(same(a[k], b[k]) for k in a)
    return a == b

d = sys.argv[1]
exprs = open(f"{d}/values.txt").read().split("\n")
fails = []
for i, expr in enumerate(exprs):
    obj = eval(expr)
    buf = io.BytesIO()
    torch.save(obj, buf)
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    open(f"{d}/vtorch_{i}.pkl", "wb").write(z.read("archive/data.pkl"))
    for wo in (True, False):
        with open(f"{d}/vours_{i}.pt", "rb") as f:
            try:
                got = torch.load(f, weights_only=wo)
            except Exception as e:
                fails.append(f"case {i} ({expr[:60]}) weights_only={wo}: "
                             f"{type(e).__name__}: {str(e)[:300]}")
                continue
        if not same(got, obj):
            fails.append(f"case {i} ({expr[:60]}) weights_only={wo}: loaded {got!r:.200}")
print("\n".join(fails) if fails else "OK")
sys.exit(1 if fails else 0)
)PY";

TEST(TorchPickleTest, ValueRoundTrip) {
  for (const ValueCase& c : ValueCases()) {
    SCOPED_TRACE(c.python.substr(0, 80));
    auto encoded = EncodeValueArchive(c.value);
    ASSERT_TRUE(encoded.ok()) << encoded.status().ToString();
    auto decoded = DecodeValueArchive(B(*encoded), "v");
    ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    EXPECT_TRUE(decoded->Equals(c.value))
        << decoded->DebugString() << " vs " << c.value.DebugString();
  }
}

TEST(TorchPickleTest, ValuesLoadInTorchAndMatchTorchSave) {
  if (!TorchAvailable()) GTEST_SKIP() << "python3 with torch is not available";
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::vector<ValueCase> cases = ValueCases();
  std::string exprs;
  for (size_t i = 0; i < cases.size(); ++i) {
    auto encoded = EncodeValueArchive(cases[i].value);
    ASSERT_TRUE(encoded.ok()) << encoded.status().ToString();
    WriteFileOrDie(dir / ("vours_" + std::to_string(i) + ".pt"), *encoded);
    exprs += (i ? "\n" : "") + cases[i].python;
  }
  WriteFileOrDie(dir / "values.txt", exprs);
  std::string output;
  EXPECT_EQ(RunPython(dir, kValueScript, "'" + dir.path() + "'", &output), 0) << output;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (!cases[i].byte_identical) continue;
    SCOPED_TRACE(cases[i].python.substr(0, 80));
    const std::string ours = ReadFileOrDie(dir / ("vours_" + std::to_string(i) + ".pt"));
    EXPECT_EQ(Hex(Record(ours, "data.pkl")),
              Hex(ReadFileOrDie(dir / ("vtorch_" + std::to_string(i) + ".pkl"))));
  }
}

// Objects dcpp cannot represent, written by torch at test time.
constexpr char kOpaqueScript[] = R"PY(
import io, sys, warnings
warnings.filterwarnings("ignore")
import torch
d = sys.argv[1]
deep = []
for _ in range(250):
    deep = [deep]
selfref = []
selfref.append(selfref)
cases = [
    {1, 2},
    frozenset([1]),
    1 + 2j,
    torch.device("cpu"),
    2**70,
    -(2**64),
    deep,
    selfref,
    {"a": [1, {2}]},
    torch.tensor([1, 2], dtype=torch.int8).to_sparse(),
    torch.quantize_per_tensor(torch.ones(2), 0.5, 0, torch.quint8),
    torch.ones(2, dtype=torch.complex64).conj(),
]
for i, obj in enumerate(cases):
    buf = io.BytesIO()
    torch.save(obj, buf)
    open(f"{d}/opaque_{i}.pt", "wb").write(buf.getvalue())
print(len(cases))
)PY";

TEST(TorchPickleTest, UnrepresentableObjectsBecomeOpaque) {
  if (!TorchAvailable()) GTEST_SKIP() << "python3 with torch is not available";
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  std::string output;
  ASSERT_EQ(RunPython(dir, kOpaqueScript, "'" + dir.path() + "'", &output), 0) << output;
  const std::vector<std::string> want = {"a set",
                                         "a frozenset",
                                         "a complex number",
                                         "a torch.device",
                                         "an integer outside the int64 range",
                                         "an integer outside the int64 range",
                                         "nested deeper than 200",
                                         "nested deeper than 200",
                                         "a set",
                                         "torch._utils._rebuild_sparse_tensor",
                                         "torch._utils._rebuild_qtensor",
                                         "conj/neg"};
  ASSERT_EQ(output, std::to_string(want.size()) + "\n");
  for (size_t i = 0; i < want.size(); ++i) {
    SCOPED_TRACE(i);
    const std::string blob = ReadFileOrDie(dir / ("opaque_" + std::to_string(i) + ".pt"));
    auto v = DecodeValueArchive(B(blob), "x");
    ASSERT_TRUE(v.ok()) << v.status().ToString();
    ASSERT_EQ(v->kind(), Value::Kind::kOpaque) << v->DebugString();
    EXPECT_EQ(v->opaque().blob, blob);
    EXPECT_NE(v->opaque().description.find(want[i]), std::string::npos) << v->opaque().description;
  }
}

// ---------------------------------------------------------------------------
// Encoding errors
// ---------------------------------------------------------------------------

TEST(TorchPickleTest, EncodeRejectsWhatPythonCannotHold) {
  EXPECT_EQ(EncodeValueArchive(Value(Opaque{"blob", "thing"})).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeValueArchive(Value::List({1, Value(Opaque{"blob", "thing"})})).status().code(),
            StatusCode::kInvalidArgument);
  Dict bad_key;
  bad_key.Set(Value::List({1}), 2);
  EXPECT_EQ(EncodeValueArchive(Value(bad_key)).status().code(), StatusCode::kInvalidArgument);
  Dict bad_tuple_key;
  bad_tuple_key.Set(Value::Tuple({1, Value::EmptyDict()}), 2);
  EXPECT_EQ(EncodeValueArchive(Value(bad_tuple_key)).status().code(), StatusCode::kInvalidArgument);
  Value deep = Value::List();
  for (int i = 0; i < 250; ++i) deep = Value::List({deep});
  EXPECT_EQ(EncodeValueArchive(deep).status().code(), StatusCode::kInvalidArgument);
  Value ok = Value::List();
  for (int i = 0; i < 150; ++i) ok = Value::List({ok});
  auto encoded = EncodeValueArchive(ok);
  ASSERT_TRUE(encoded.ok()) << encoded.status().ToString();
  auto back = DecodeValueArchive(B(*encoded), "x");
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->Equals(ok));
}

TEST(TorchPickleTest, NonDenseTensorValueIsStoredContiguously) {
  // Every other element of an 8-element int32 buffer.
  std::string storage = Pod<int32_t>({0, 1, 2, 3, 4, 5, 6, 7});
  Tensor strided = MakeTensor(DType::kInt32, {4}, {2}, storage);
  auto encoded = EncodeValueArchive(Value(strided));
  ASSERT_TRUE(encoded.ok()) << encoded.status().ToString();
  EXPECT_EQ(Record(*encoded, "data/0"), Pod<int32_t>({0, 2, 4, 6}));
  auto back = DecodeValueArchive(B(*encoded), "x");
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->Equals(Value(strided)));
}

// ---------------------------------------------------------------------------
// Corrupt, truncated and hostile input
// ---------------------------------------------------------------------------

TEST(TorchPickleTest, TruncatedArchivesAreErrors) {
  std::string storage = Pattern(48, 7);
  Dict d;
  d.Set("t", Value(Contiguous(DType::kFloat32, {3, 4}, storage)));
  d.Set("s", "text");
  auto value_archive = EncodeValueArchive(Value(d));
  ASSERT_TRUE(value_archive.ok());
  std::string tensor_archive =
      EncodeTensorArchive(MakeView(storage.data(), DType::kFloat32, {3, 4})).Flatten();
  for (size_t n = 0; n < value_archive->size(); ++n) {
    auto v = DecodeValueArchive(B(std::string_view(*value_archive).substr(0, n)), "opt.state");
    ASSERT_FALSE(v.ok()) << n;
    EXPECT_EQ(v.status().code(), StatusCode::kDataLoss) << n;
    EXPECT_EQ(v.status().message().rfind("opt.state: ", 0), 0u) << v.status().message();
  }
  for (size_t n = 0; n < tensor_archive.size(); ++n) {
    auto t = DecodeTensorArchive(B(std::string_view(tensor_archive).substr(0, n)));
    ASSERT_FALSE(t.ok()) << n;
  }
}

TEST(TorchPickleTest, FlippedBytesNeverCrash) {
  std::string storage = Pattern(24, 8);
  Dict d;
  d.Set("t", Value(Contiguous(DType::kInt16, {3, 4}, storage)));
  d.Set("l", Value::List({1, "a", Value::Bytes("b"), Value::Tuple({2.5})}));
  auto value_archive = EncodeValueArchive(Value(d));
  ASSERT_TRUE(value_archive.ok());
  std::string tensor_archive =
      EncodeTensorArchive(MakeView(storage.data(), DType::kInt16, {3, 4})).Flatten();
  for (const std::string* archive : {&*value_archive, &tensor_archive}) {
    for (size_t i = 0; i < archive->size(); ++i) {
      for (unsigned char x : {0x01, 0x80, 0xFF}) {
        std::string copy = *archive;
        copy[i] = static_cast<char>(copy[i] ^ x);
        auto v = DecodeValueArchive(B(copy), "x");
        if (!v.ok()) {
          EXPECT_EQ(v.status().code(), StatusCode::kDataLoss) << v.status().ToString();
        }
        (void)DecodeTensorArchive(B(copy));
      }
    }
  }
}

TEST(TorchPickleTest, StorageSizeAndBoundsAreChecked) {
  const std::string bytes64 = Pattern(64, 9);
  struct Case {
    const char* what;
    TensorPickleSpec spec;
    std::string storage;
    StatusCode code;
  };
  std::vector<Case> cases;
  {
    TensorPickleSpec s;
    cases.push_back({"valid", s, bytes64, StatusCode::kOk});
  }
  {
    TensorPickleSpec s;
    s.numel = 15;  // record holds 16 floats
    cases.push_back({"numel mismatch", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.strides = {5, 1};  // element [3][3] is at 18 > 15
    cases.push_back({"stride past end", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.offset = 1;
    cases.push_back({"offset past end", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.shape = {2, 2};
    s.offset = 11;  // last element 11 + 4 + 1 = 16 > 15
    cases.push_back({"offset + extent past end", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.shape = {2, 2};
    s.offset = 10;  // last element 15: fits
    cases.push_back({"offset + extent fits", s, bytes64, StatusCode::kOk});
  }
  {
    TensorPickleSpec s;
    s.shape = {3, 2};
    s.strides = {int64_t{1} << 62, 1};  // overflows
    cases.push_back({"overflowing stride", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.shape = {-1, 4};
    cases.push_back({"negative size", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.strides = {4};
    cases.push_back({"stride rank", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.numel = INT64_MAX;  // numel * 4 overflows
    cases.push_back({"numel overflow", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.key = "1";  // no data/1 record
    cases.push_back({"missing storage", s, bytes64, StatusCode::kDataLoss});
  }
  {
    TensorPickleSpec s;
    s.rebuild = "_rebuild_tensor_v3";
    s.storage_module = "torch.storage";
    s.storage_class = "UntypedStorage";
    s.numel = 64;
    s.dtype = "float32";
    cases.push_back({"v3 float32", s, bytes64, StatusCode::kOk});
  }
  {
    TensorPickleSpec s;
    s.rebuild = "_rebuild_tensor_v3";
    s.storage_module = "torch.storage";
    s.storage_class = "UntypedStorage";
    s.numel = 64;
    s.dtype = "complex32";  // a dtype dcpp lacks
    cases.push_back({"unknown dtype", s, bytes64, StatusCode::kUnimplemented});
  }
  {
    TensorPickleSpec s;
    s.conj_metadata = true;
    cases.push_back({"conj bit", s, bytes64, StatusCode::kUnimplemented});
  }
  {
    TensorPickleSpec s;
    s.storage_class = "QInt8Storage";
    cases.push_back({"quantized", s, bytes64, StatusCode::kUnimplemented});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string archive = BuildArchive({TensorPickle(c.spec), {{"0", c.storage}}});
    auto t = DecodeTensorArchive(B(archive));
    EXPECT_EQ(t.status().code(), c.code) << t.status().ToString();
    auto v = DecodeValueArchive(B(archive), "x");
    if (c.code == StatusCode::kOk) {
      ASSERT_TRUE(v.ok()) << v.status().ToString();
      EXPECT_TRUE(v->is_tensor());
    } else if (c.code == StatusCode::kUnimplemented) {
      ASSERT_TRUE(v.ok()) << v.status().ToString();
      EXPECT_EQ(v->kind(), Value::Kind::kOpaque);
    } else {
      EXPECT_EQ(v.status().code(), StatusCode::kDataLoss) << v.status().ToString();
      EXPECT_EQ(v.status().message().rfind("x: ", 0), 0u) << v.status().message();
    }
  }
}

TEST(TorchPickleTest, ArchiveRecordsAreChecked) {
  const std::string pkl = TensorPickle({});
  const std::string storage = Pattern(64, 3);
  {
    ArchiveSpec a{pkl, {{"0", storage}}};
    a.version = "";
    EXPECT_EQ(DecodeTensorArchive(B(BuildArchive(a))).status().code(), StatusCode::kDataLoss);
    EXPECT_EQ(DecodeValueArchive(B(BuildArchive(a)), "x").status().code(), StatusCode::kDataLoss);
  }
  {
    ArchiveSpec a{pkl, {{"0", storage}}};
    a.version = "11\n";
    EXPECT_EQ(DecodeTensorArchive(B(BuildArchive(a))).status().code(), StatusCode::kUnimplemented);
    a.version = "x";
    EXPECT_EQ(DecodeTensorArchive(B(BuildArchive(a))).status().code(), StatusCode::kDataLoss);
  }
  {
    ArchiveSpec a{pkl, {{"0", storage}}};
    a.byteorder = "middle";
    EXPECT_EQ(DecodeTensorArchive(B(BuildArchive(a))).status().code(), StatusCode::kDataLoss);
    a.byteorder = "";  // absent: little-endian
    EXPECT_TRUE(DecodeTensorArchive(B(BuildArchive(a))).ok());
  }
  {
    // Not a zip at all.
    EXPECT_EQ(DecodeTensorArchive(B("definitely not a zip archive")).status().code(),
              StatusCode::kDataLoss);
    EXPECT_EQ(DecodeValueArchive(B(""), "x").status().code(), StatusCode::kDataLoss);
  }
  {
    // data.pkl that is not a pickle.
    ArchiveSpec a{"garbage", {{"0", storage}}};
    EXPECT_FALSE(DecodeTensorArchive(B(BuildArchive(a))).ok());
    EXPECT_EQ(DecodeValueArchive(B(BuildArchive(a)), "x").status().code(), StatusCode::kDataLoss);
  }
}

TEST(TorchPickleTest, BigEndianArchives) {
  // float32 [1.0, 2.0] stored big-endian.
  const std::string be("\x3f\x80\x00\x00\x40\x00\x00\x00", 8);
  TensorPickleSpec spec;
  spec.numel = 2;
  spec.shape = {2};
  spec.strides = {1};
  ArchiveSpec a{TensorPickle(spec), {{"0", be}}};
  a.byteorder = "big";
  const std::string archive = BuildArchive(a);
  // The tensor decoder borrows the archive and cannot swap.
  EXPECT_EQ(DecodeTensorArchive(B(archive)).status().code(), StatusCode::kUnimplemented);
  auto v = DecodeValueArchive(B(archive), "x");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_TRUE(v->Equals(Value(Contiguous(DType::kFloat32, {2}, Pod<float>({1.0f, 2.0f})))))
      << v->DebugString();

  // One-byte elements need no swap.
  TensorPickleSpec bytes_spec = spec;
  bytes_spec.storage_class = "ByteStorage";
  bytes_spec.numel = 8;
  bytes_spec.shape = {8};
  ArchiveSpec b{TensorPickle(bytes_spec), {{"0", be}}};
  b.byteorder = "big";
  const std::string b_archive = BuildArchive(b);
  auto t = DecodeTensorArchive(B(b_archive));
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(StorageOf(*t), be);
}

TEST(TorchPickleTest, GlobalsAreNeverCalled) {
  // os.system('...') as a value: described, never executed.
  pk::Writer w;
  w.Global("os", "system");
  w.String("touch /tmp/dcpp_should_not_exist");
  w.Tuple(1);
  w.Reduce();
  const std::string archive = BuildArchive({w.Finish(), {}});
  auto v = DecodeValueArchive(B(archive), "x");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  ASSERT_EQ(v->kind(), Value::Kind::kOpaque);
  EXPECT_EQ(v->opaque().description, "an object built by os.system");
  // The tensor decoder does not even accept the global.
  EXPECT_EQ(DecodeTensorArchive(B(archive)).status().code(), StatusCode::kInvalidArgument);
}

TEST(TorchPickleTest, SharedReferencesCannotExplode) {
  // l0 = [], l1 = [l0, l0], l2 = [l1, l1], ...: 2^60 leaves if expanded.
  pk::Writer w;
  w.EmptyList();
  uint32_t prev = w.Memoize();
  for (int i = 0; i < 60; ++i) {
    w.EmptyList();
    w.Mark();
    w.Get(prev);
    w.Get(prev);
    w.Appends();
    prev = w.Memoize();
  }
  auto v = DecodeValueArchive(B(BuildArchive({w.Finish(), {}})), "x");
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  EXPECT_EQ(v->kind(), Value::Kind::kOpaque);
}

}  // namespace
}  // namespace dcpp::format
