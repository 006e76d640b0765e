// The S3 back end against a real S3 server (tests/s3/run_s3_tests.sh starts
// a local Ceph RADOS Gateway and sets S3_ENDPOINT, S3_ACCESS_KEY and
// S3_SECRET_KEY; without S3_ENDPOINT every test here is skipped). Each test
// works under its own prefix of one bucket made for this run.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "dcpp/checkpoint.h"
#include "dcpp/engine/engine.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/plan/reshard.h"
#include "dcpp/stateful.h"
#include "dcpp/storage/s3_storage.h"

namespace dcpp {
namespace {

using storage::S3Config;
using storage::Storage;

std::string EnvOr(const char* name, const char* fallback = "") {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

Tensor Iota(DType dtype, Shape shape, int seed = 0) {
  Tensor t = *Tensor::Zeros(dtype, std::move(shape));
  auto* p = static_cast<uint8_t*>(t.data());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<uint8_t>(i * 7 + seed + i / 251);
  return t;
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string RandomBytes(size_t n, int seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

class S3Test : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (EnvOr("S3_ENDPOINT").empty()) return;
    config_ = new S3Config;
    config_->endpoint = EnvOr("S3_ENDPOINT");
    config_->access_key = EnvOr("S3_ACCESS_KEY");
    config_->secret_key = EnvOr("S3_SECRET_KEY");
    config_->part_size = uint64_t{5} << 20;  // the minimum: multipart from 5 MiB on
    config_->read_part_size = uint64_t{1} << 20;
    config_->concurrency = 8;
    bucket_ = new std::string("dcpp-test-" + std::to_string(::getpid()) + "-" +
                              std::to_string(std::random_device{}() % 100000));
    // dcpp::Save("s3://...") configures itself from the environment, as
    // AWS's tools do.
    ::setenv("AWS_ENDPOINT_URL", config_->endpoint.c_str(), 1);
    ::setenv("AWS_ACCESS_KEY_ID", config_->access_key.c_str(), 1);
    ::setenv("AWS_SECRET_ACCESS_KEY", config_->secret_key.c_str(), 1);
    ::setenv("DCPP_S3_PART_SIZE", "5M", 1);
    ::unsetenv("AWS_SESSION_TOKEN");
    ::unsetenv("AWS_ENDPOINT_URL_S3");
    Status s = storage::CreateS3Bucket(*config_, *bucket_);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  void SetUp() override {
    if (!config_)
      GTEST_SKIP() << "S3_ENDPOINT is not set: run tests/s3/run_s3_tests.sh (it starts a local "
                      "S3 server) to run the S3 tests";
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    prefix_ = std::string(info->name());
  }

  // "s3://bucket/<test name>[/sub]".
  std::string Location(const std::string& sub = "") const {
    return "s3://" + *bucket_ + "/" + prefix_ + (sub.empty() ? "" : "/" + sub);
  }

  std::unique_ptr<Storage> Open(const std::string& location, S3Config c) {
    auto s = storage::NewS3Storage(location, std::move(c));
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }
  std::unique_ptr<Storage> Open(const std::string& location) { return Open(location, *config_); }

  static Status Put(Storage& st, const std::string& name, const std::string& bytes) {
    DCPP_ASSIGN_OR_RETURN(auto f, st.CreateForWrite(name));
    DCPP_RETURN_IF_ERROR(f->WriteAt(0, Bytes(bytes)));
    return f->Close();
  }
  static Result<std::string> Get(Storage& st, const std::string& name) {
    DCPP_ASSIGN_OR_RETURN(auto f, st.OpenForRead(name));
    DCPP_ASSIGN_OR_RETURN(uint64_t n, f->Size());
    std::string out(n, '\0');
    DCPP_RETURN_IF_ERROR(f->ReadAt(0, {reinterpret_cast<uint8_t*>(out.data()), n}));
    return out;
  }
  std::vector<std::string> Uploads(const std::string& location) {
    auto u = storage::ListS3MultipartUploads(*config_, location);
    EXPECT_TRUE(u.ok()) << u.status().ToString();
    return u.ok() ? *u : std::vector<std::string>{"<error>"};
  }

  static S3Config* config_;
  static std::string* bucket_;
  std::string prefix_;
};

S3Config* S3Test::config_ = nullptr;
std::string* S3Test::bucket_ = nullptr;

TEST_F(S3Test, ObjectsWriteReadListRemove) {
  auto st = Open(Location());
  ASSERT_TRUE(st);
  EXPECT_TRUE(st->PublishesOnClose());
  EXPECT_EQ(st->Describe("a"), Location() + "/a");
  ASSERT_TRUE(st->CreateLocation().ok());
  EXPECT_EQ(st->List().status().code(), StatusCode::kNotFound);  // nothing there yet

  ASSERT_TRUE(Put(*st, "small", "hello").ok());
  ASSERT_TRUE(Put(*st, "empty", "").ok());
  ASSERT_TRUE(Put(*st, "sub/x", "y").ok());
  // A multipart object (4 parts, the last short), written out of order by
  // 4 threads in 1 MiB pieces.
  const std::string big = RandomBytes((uint64_t{15} << 20) + 12345, 1);
  {
    auto f = st->CreateForWrite("big");
    ASSERT_TRUE(f.ok());
    std::vector<std::thread> writers;
    std::atomic<int> failures{0};
    const size_t piece = size_t{1} << 20, pieces = (big.size() + piece - 1) / piece;
    for (int t = 0; t < 4; ++t)
      writers.emplace_back([&, t] {
        for (size_t i = pieces - 1 - t; i < pieces; i -= 4) {
          const size_t n = std::min(piece, big.size() - i * piece);
          if (!(*f)->WriteAt(i * piece, Bytes(big).subspan(i * piece, n)).ok()) ++failures;
          if (i < 4) break;
        }
      });
    for (auto& w : writers) w.join();
    EXPECT_EQ(failures, 0);
    // Not visible before Close.
    EXPECT_EQ(st->Size("big").status().code(), StatusCode::kNotFound);
    ASSERT_TRUE((*f)->Close().ok());
  }
  EXPECT_TRUE(Uploads(Location()).empty());
  auto size = st->Size("big");
  ASSERT_TRUE(size.ok()) << size.status().ToString();
  EXPECT_EQ(*size, big.size());
  auto got = Get(*st, "big");  // 16 ranged GETs in parallel
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_TRUE(*got == big);
  auto small = Get(*st, "small");
  ASSERT_TRUE(small.ok());
  EXPECT_EQ(*small, "hello");
  EXPECT_EQ(*Get(*st, "empty"), "");

  // A positional read in the middle fetches just that range.
  {
    auto f = st->OpenForRead("big");
    ASSERT_TRUE(f.ok());
    std::string part(3 << 20, '\0');
    ASSERT_TRUE((*f)->ReadAt(5000000, {reinterpret_cast<uint8_t*>(part.data()), part.size()}).ok());
    EXPECT_TRUE(part == big.substr(5000000, part.size()));
    std::string past(10, '\0');
    Status s = (*f)->ReadAt(big.size() - 5, {reinterpret_cast<uint8_t*>(past.data()), 10});
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    EXPECT_NE(s.message().find(Location() + "/big"), std::string::npos) << s.message();
  }

  auto names = st->List();
  ASSERT_TRUE(names.ok()) << names.status().ToString();
  EXPECT_EQ(*names, (std::vector<std::string>{"big", "empty", "small", "sub"}));

  ASSERT_TRUE(st->Rename("small", "renamed").ok());
  EXPECT_EQ(*Get(*st, "renamed"), "hello");
  EXPECT_EQ(st->Size("small").status().code(), StatusCode::kNotFound);

  ASSERT_TRUE(st->Remove("renamed").ok());
  Status missing = st->Remove("renamed");
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
  auto open_missing = st->OpenForRead("nope");
  EXPECT_EQ(open_missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(open_missing.status().message().find(Location() + "/nope"), std::string::npos);
  EXPECT_EQ(st->OpenForRead("../x").status().code(), StatusCode::kDataLoss);
}

TEST_F(S3Test, AbandonedWriteLeavesNothing) {
  auto st = Open(Location());
  ASSERT_TRUE(st);
  {
    auto f = st->CreateForWrite("partial");
    ASSERT_TRUE(f.ok());
    const std::string data = RandomBytes(12 << 20, 2);  // two full parts go up
    ASSERT_TRUE((*f)->WriteAt(0, Bytes(data)).ok());
  }  // destroyed without Close: the upload is aborted
  EXPECT_EQ(st->Size("partial").status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Uploads(Location()).empty());
}

TEST_F(S3Test, LockExcludesAndTakesOverWhatIsGone) {
  auto st = Open(Location());
  auto other = Open(Location());
  ASSERT_TRUE(st && other);
  auto a = st->TryLock(".dcpp.lock", "pid=1 host=elsewhere started=x save=a");
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  auto b = other->TryLock(".dcpp.lock", "pid=2 host=elsewhere save=b");
  EXPECT_EQ(b.status().code(), StatusCode::kAborted);
  EXPECT_NE(b.status().message().find("save=a"), std::string::npos) << b.status().message();
  a->reset();  // released: the object is gone
  auto c = other->TryLock(".dcpp.lock", "pid=2 host=elsewhere save=c");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  c->reset();

  // A lock object left by this process when nothing here holds it (a
  // release that could not delete it) is taken over; one naming a process
  // of another host is not.
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  ASSERT_TRUE(Put(*st, ".dcpp.lock", "pid=" + std::to_string(::getpid()) + " host=" + host +
                                         " save=stale\n")
                  .ok());
  auto d = st->TryLock(".dcpp.lock", "pid=" + std::to_string(::getpid()) + " host=" + host +
                                         " save=d");
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  auto e = other->TryLock(".dcpp.lock", "pid=" + std::to_string(::getpid()) + " host=" + host +
                                            " save=e");
  EXPECT_EQ(e.status().code(), StatusCode::kAborted);  // held by d, in this process
  d->reset();
  ASSERT_TRUE(Put(*st, ".dcpp.lock", "pid=1 host=another-host save=old\n").ok());
  auto f = st->TryLock(".dcpp.lock", "pid=3 host=x save=f");
  EXPECT_EQ(f.status().code(), StatusCode::kAborted);
  EXPECT_NE(f.status().message().find("another-host"), std::string::npos);
  EXPECT_TRUE(st->Remove(".dcpp.lock").ok());
}

Value SampleState() {
  Value sd;
  sd["model"]["w"] = Iota(DType::kFloat32, {8, 4});
  sd["model"]["b"] = Iota(DType::kBFloat16, {4}, 1);
  sd["model"]["h"] = Iota(DType::kFloat16, {3, 5}, 2);
  sd["model"]["d"] = Iota(DType::kFloat64, {7}, 3);
  sd["model"]["i8"] = Iota(DType::kInt8, {9}, 4);
  sd["model"]["u8"] = Iota(DType::kUInt8, {9}, 5);
  sd["model"]["i16"] = Iota(DType::kInt16, {2, 2}, 6);
  sd["model"]["i32"] = Iota(DType::kInt32, {5}, 7);
  sd["model"]["flag"] = Iota(DType::kBool, {4}, 8);
  sd["model"]["scalar"] = Iota(DType::kInt64, {}, 9);
  sd["model"]["empty"] = Iota(DType::kFloat16, {0, 3});
  sd["model"]["big"] = Iota(DType::kFloat32, {3 << 20}, 10);  // 12 MiB: a multipart file
  sd["opt"]["lr"] = 0.001;
  sd["opt"]["betas"] = Value::Tuple({0.9, 0.999});
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
  return Value();
}

TEST_F(S3Test, RoundTripsEveryDtypePlainAndZstd) {
  const Value sd = SampleState();
  for (bool zstd : {false, true}) {
    for (int files : {1, 3}) {
      const std::string loc = Location(std::string(zstd ? "zstd" : "plain") + std::to_string(files));
      SaveOptions o;
      o.files_per_rank = files;
      if (zstd) o.transforms = {"stream.zstd/1"};
      auto md = Save(sd, loc, o);
      ASSERT_TRUE(md.ok()) << md.status().ToString();
      auto all = LoadAll(loc);
      ASSERT_TRUE(all.ok()) << all.status().ToString();
      EXPECT_TRUE(all->Equals(sd)) << loc;
      Value target = ZerosLike(sd);
      Status s = Load(target, loc);
      ASSERT_TRUE(s.ok()) << s.ToString();
      EXPECT_TRUE(target.Find("model")->Equals(*sd.Find("model"))) << loc;
      // The DCP layout, with no temporary names and no unfinished upload.
      auto st = Open(loc);
      auto names = st->List();
      ASSERT_TRUE(names.ok());
      int data_files = 0;
      for (const auto& n : *names) {
        EXPECT_FALSE(n.ends_with(".tmp")) << n;
        data_files += io::IsDataFileName(n);
      }
      EXPECT_EQ(data_files, files);
      EXPECT_TRUE(std::count(names->begin(), names->end(), ".metadata"));
      EXPECT_TRUE(Uploads(loc).empty());
    }
  }
}

class Counter final : public Stateful {
 public:
  explicit Counter(int64_t n) : n_(n), weights_(Iota(DType::kFloat32, {16}, static_cast<int>(n))) {}
  Result<Value> StateDict() override {
    Value v;
    v["n"] = n_;
    v["weights"] = weights_;  // borrowed: a load writes into it
    return v;
  }
  Status LoadStateDict(const Value& state) override {
    n_ = state.Find("n")->as_int();
    return Status();
  }
  int64_t n_;
  Tensor weights_;
};

TEST_F(S3Test, StatefulRoundTrip) {
  auto saved = std::make_shared<Counter>(5);
  Value sd;
  sd["counter"] = Value(std::shared_ptr<Stateful>(saved));
  ASSERT_TRUE(Save(sd, Location()).ok());
  auto loaded = std::make_shared<Counter>(0);
  Value target;
  target["counter"] = Value(std::shared_ptr<Stateful>(loaded));
  Status s = Load(target, Location());
  ASSERT_TRUE(s.ok()) << s.ToString();
  EXPECT_EQ(loaded->n_, 5);
  EXPECT_TRUE(loaded->weights_.BitwiseEquals(saved->weights_));
}

// Rank `rank` of `n`'s piece of `global` split along `dim` (zeros if `empty`).
ShardedTensor Shard(const Tensor& global, size_t dim, int n, int rank, bool empty) {
  const int64_t total = global.shape()[dim];
  int64_t start = 0;
  for (int i = 0; i < rank; ++i) start += total / n + (i < total % n);
  const int64_t len = total / n + (rank < total % n);
  ShardedTensor st;
  st.global_shape = global.shape();
  plan::Box whole{Shape(global.shape().size(), 0), global.shape()};
  plan::Box part = whole;
  part.offsets[dim] = start;
  part.sizes[dim] = len;
  Tensor piece = *Tensor::Zeros(global.dtype(), part.sizes);
  if (!empty) EXPECT_TRUE(CopyTensor(plan::SubView(global.view(), whole, part), piece.view()).ok());
  st.shards.push_back({part.offsets, piece});
  return st;
}

bool PiecesMatch(const ShardedTensor& st, const Tensor& global) {
  plan::Box whole{Shape(global.shape().size(), 0), global.shape()};
  for (const auto& s : st.shards)
    if (!Tensor::Borrow(plan::SubView(global.view(), whole, {s.offsets, s.local.shape()}))
             .BitwiseEquals(s.local))
      return false;
  return true;
}

TEST_F(S3Test, FourThreadRanksReshardToThree) {
  Tensor w = *Tensor::Zeros(DType::kInt32, {1024, 2048});  // 8 MiB: multipart per rank file
  for (int64_t i = 0; i < w.numel(); ++i) static_cast<int32_t*>(w.data())[i] = static_cast<int32_t>(i);
  const Tensor bias = Iota(DType::kFloat32, {6}, 3);
  for (const Status& s : RunOnThreadRanks(4, [&](ProcessGroup& pg) -> Status {
         Value sd;
         sd["w"] = Shard(w, 0, pg.size(), pg.rank(), false);
         sd["bias"] = bias;
         sd["step"] = 42;
         SaveOptions o;
         o.process_group = &pg;
         return Save(sd, Location(), o).status();
       }))
    ASSERT_TRUE(s.ok()) << s.ToString();
  std::mutex mu;
  for (const Status& s : RunOnThreadRanks(3, [&](ProcessGroup& pg) -> Status {
         Value sd;
         sd["w"] = Shard(w, 1, pg.size(), pg.rank(), true);  // columns: crosses every row chunk
         sd["bias"] = *Tensor::Zeros(DType::kFloat32, {6});
         sd["step"] = Value();
         LoadOptions o;
         o.process_group = &pg;
         DCPP_RETURN_IF_ERROR(Load(sd, Location(), o));
         std::lock_guard<std::mutex> lock(mu);
         EXPECT_TRUE(PiecesMatch(sd.Find("w")->sharded(), w)) << "rank " << pg.rank();
         EXPECT_TRUE(sd.Find("bias")->tensor().BitwiseEquals(bias));
         EXPECT_EQ(sd.Find("step")->as_int(), 42);
         return Status();
       }))
    ASSERT_TRUE(s.ok()) << s.ToString();
}

TEST_F(S3Test, PartialLoadFetchesOnlyTheRangesItNeeds) {
  Tensor w = *Tensor::Zeros(DType::kInt32, {1024, 2048});  // 8 MiB, one chunk
  for (int64_t i = 0; i < w.numel(); ++i) static_cast<int32_t*>(w.data())[i] = static_cast<int32_t>(i);
  Value sd;
  sd["w"] = w;
  sd["step"] = 1;
  ASSERT_TRUE(Save(sd, Location()).ok());
  for (bool whole : {false, true}) {
    auto st = Open(Location());
    Value target;
    // Rows [256, 512) of 1024: 2 MiB of the 8; or everything.
    target["w"] = whole ? Shard(w, 0, 1, 0, true) : Shard(w, 0, 4, 1, true);
    Status s = engine::Load(target, *st, {});
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_TRUE(PiecesMatch(target.Find("w")->sharded(), w));
    const storage::S3Traffic t = storage::S3TrafficOf(*st);
    const uint64_t needed = whole ? w.nbytes() : w.nbytes() / 4;
    // The needed bytes, plus .metadata, the sidecar and the archive's
    // headers and directory (about 130 KiB: the reader fetches the zip's
    // tail and head in 64 KiB probes).
    EXPECT_GE(t.bytes_received, needed);
    EXPECT_LT(t.bytes_received, needed + (256 << 10)) << "whole=" << whole;
    EXPECT_EQ(t.bytes_sent, 0u);
  }
}

std::vector<std::string> DataFiles(Storage& st) {
  std::vector<std::string> out;
  auto names = st.List();
  if (names.ok())
    for (const auto& n : *names)
      if (io::IsDataFileName(n)) out.push_back(n);
  return out;
}

TEST_F(S3Test, OverwriteReplacesAndRemovesOldObjects) {
  auto st = Open(Location());
  Value a;
  a["x"] = Iota(DType::kFloat32, {1000}, 1);
  ASSERT_TRUE(Save(a, Location()).ok());
  const auto old_files = DataFiles(*st);
  ASSERT_FALSE(old_files.empty());
  Value b;
  b["x"] = Iota(DType::kFloat32, {1000}, 2);
  SaveOptions keep;
  keep.overwrite = false;
  auto refused = Save(b, Location(), keep);
  EXPECT_EQ(refused.status().code(), StatusCode::kAlreadyExists);
  SaveOptions o;
  o.overwrite = true;
  auto md = Save(b, Location(), o);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  auto all = LoadAll(Location());
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->Equals(b));
  for (const auto& f : DataFiles(*st))
    EXPECT_EQ(std::count(old_files.begin(), old_files.end(), f), 0) << f << " was not removed";
  EXPECT_EQ(DataFiles(*st).size(), old_files.size());
}

// Forwards to an S3 storage, failing the Nth write to a data file.
class FailingWrites final : public Storage {
 public:
  FailingWrites(Storage& base, int fail_at) : base_(base), fail_at_(fail_at) {}
  std::string Describe(std::string_view n) const override { return base_.Describe(n); }
  bool PublishesOnClose() const override { return base_.PublishesOnClose(); }
  Status CreateLocation() override { return base_.CreateLocation(); }
  Result<std::unique_ptr<storage::ReadableFile>> OpenForRead(std::string_view n) override {
    return base_.OpenForRead(n);
  }
  Result<std::unique_ptr<storage::WritableFile>> CreateForWrite(std::string_view n) override {
    DCPP_ASSIGN_OR_RETURN(auto f, base_.CreateForWrite(n));
    if (!io::IsDataFileName(std::string(n))) return f;
    return std::unique_ptr<storage::WritableFile>(new File(std::move(f), this));
  }
  Result<uint64_t> Size(std::string_view n) override { return base_.Size(n); }
  Result<std::vector<std::string>> List() override { return base_.List(); }
  Status Rename(std::string_view a, std::string_view b) override { return base_.Rename(a, b); }
  Status Remove(std::string_view n) override { return base_.Remove(n); }
  Status SyncDirectory() override { return base_.SyncDirectory(); }
  Result<std::unique_ptr<storage::StorageLock>> TryLock(std::string_view n,
                                                        std::string_view h) override {
    return base_.TryLock(n, h);
  }

 private:
  class File final : public storage::WritableFile {
   public:
    File(std::unique_ptr<storage::WritableFile> f, FailingWrites* owner)
        : f_(std::move(f)), owner_(owner) {}
    Status WriteAt(uint64_t o, std::span<const uint8_t> d) override {
      DCPP_RETURN_IF_ERROR(owner_->Count());
      return f_->WriteAt(o, d);
    }
    Status WriteVAt(uint64_t o, std::span<const std::span<const uint8_t>> p) override {
      DCPP_RETURN_IF_ERROR(owner_->Count());
      return f_->WriteVAt(o, p);
    }
    Status Sync() override { return f_->Sync(); }
    Status Close() override { return f_->Close(); }

   private:
    std::unique_ptr<storage::WritableFile> f_;
    FailingWrites* owner_;
  };
  Status Count() {
    return ++writes_ == fail_at_ ? InternalError("injected write failure") : Status();
  }
  Storage& base_;
  const int fail_at_;
  std::atomic<int> writes_{0};
};

TEST_F(S3Test, FailedSaveLeavesNoMetadataAndNoUploads) {
  auto st = Open(Location());
  Value old;
  old["x"] = Iota(DType::kFloat32, {100}, 1);
  ASSERT_TRUE(Save(old, Location()).ok());
  Value sd;
  for (int i = 0; i < 6; ++i) sd["t" + std::to_string(i)] = Iota(DType::kFloat32, {2 << 20}, i);
  for (bool first_save : {true, false}) {
    const std::string loc = first_save ? Location("fresh") : Location();
    auto base = Open(loc);
    FailingWrites failing(*base, 4);
    SaveOptions o;
    o.overwrite = true;
    o.files_per_rank = 2;
    auto md = engine::Save(sd, failing, o);
    ASSERT_FALSE(md.ok());
    EXPECT_NE(md.status().message().find("injected write failure"), std::string::npos)
        << md.status().ToString();
    EXPECT_TRUE(Uploads(loc).empty());  // every multipart upload was aborted
    EXPECT_TRUE(DataFiles(*base).size() == (first_save ? 0u : 1u)) << DataFiles(*base).size();
    if (first_save) {
      EXPECT_EQ(base->Size(".metadata").status().code(), StatusCode::kNotFound);
    } else {
      auto all = LoadAll(loc);  // the old checkpoint is untouched
      ASSERT_TRUE(all.ok()) << all.status().ToString();
      EXPECT_TRUE(all->Equals(old));
    }
  }
}

TEST_F(S3Test, ServerStoppedMidSaveThenRetry) {
  const std::string pid_file = EnvOr("S3_RGW_PID_FILE");
  if (pid_file.empty()) GTEST_SKIP() << "S3_RGW_PID_FILE (the gateway's pid file) is not set";
  pid_t rgw = 0;
  std::ifstream(pid_file) >> rgw;
  ASSERT_GT(rgw, 0);
  S3Config c = *config_;
  c.stall_timeout_ms = 1000;
  c.connect_timeout_ms = 1000;
  c.max_attempts = 2;
  c.backoff_ms = 50;
  auto st = Open(Location(), c);
  Value sd;
  for (int i = 0; i < 3; ++i) sd["t" + std::to_string(i)] = Iota(DType::kFloat32, {2 << 20}, i);
  std::atomic<bool> stopped{false};
  SaveOptions o;
  o.files_per_rank = 1;
  o.progress = [&](const Progress& p) {
    if (p.phase == "write" && p.items_done >= 1 && !stopped.exchange(true)) ::kill(rgw, SIGSTOP);
  };
  auto md = engine::Save(sd, *st, o);
  ::kill(rgw, SIGCONT);
  ASSERT_TRUE(stopped);
  ASSERT_FALSE(md.ok());
  EXPECT_NE(md.status().message().find(c.endpoint), std::string::npos) << md.status().ToString();
  EXPECT_NE(md.status().message().find("attempts"), std::string::npos) << md.status().ToString();
  EXPECT_EQ(st->Size(".metadata").status().code(), StatusCode::kNotFound);
  // After the gateway is back, the same save succeeds (the lock object the
  // failed save could not delete names this process and is taken over).
  o.progress = nullptr;
  auto again = engine::Save(sd, *st, o);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  auto all = LoadAll(Location());
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_TRUE(all->Equals(sd));
  EXPECT_TRUE(Uploads(Location()).empty());
}

TEST_F(S3Test, WrongCredentialsArePermissionDenied) {
  Value sd;
  sd["x"] = Iota(DType::kFloat32, {10});
  ASSERT_TRUE(Save(sd, Location()).ok());
  S3Config bad = *config_;
  bad.secret_key = "not-the-secret";
  auto st = Open(Location(), bad);
  auto saved = engine::Save(sd, *st, {});
  EXPECT_EQ(saved.status().code(), StatusCode::kPermissionDenied) << saved.status().ToString();
  EXPECT_NE(saved.status().message().find("s3://" + *bucket_), std::string::npos);
  auto loaded = engine::LoadAll(*st, {});
  EXPECT_EQ(loaded.status().code(), StatusCode::kPermissionDenied) << loaded.status().ToString();
  bad = *config_;
  bad.access_key = "no-such-key";
  auto st2 = Open(Location(), bad);
  EXPECT_EQ(engine::ReadMetadata(*st2).status().code(), StatusCode::kPermissionDenied);
}

TEST_F(S3Test, MissingBucketIsNotFound) {
  const std::string loc = "s3://dcpp-no-such-bucket-" + std::to_string(::getpid()) + "/ckpt";
  Value sd;
  sd["x"] = Iota(DType::kFloat32, {10});
  auto saved = Save(sd, loc);
  EXPECT_EQ(saved.status().code(), StatusCode::kNotFound) << saved.status().ToString();
  EXPECT_NE(saved.status().message().find("dcpp-no-such-bucket"), std::string::npos);
  auto loaded = LoadAll(loc);
  EXPECT_EQ(loaded.status().code(), StatusCode::kNotFound) << loaded.status().ToString();
  EXPECT_NE(loaded.status().message().find("dcpp-no-such-bucket"), std::string::npos);
}

TEST_F(S3Test, TruncatedObjectIsDataLossNamingTheKey) {
  Value sd;
  sd["x"] = Iota(DType::kFloat32, {1 << 16});
  ASSERT_TRUE(Save(sd, Location()).ok());
  auto st = Open(Location());
  const auto files = DataFiles(*st);
  ASSERT_EQ(files.size(), 1u);
  auto bytes = Get(*st, files[0]);
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(Put(*st, files[0], bytes->substr(0, bytes->size() / 2)).ok());
  auto all = LoadAll(Location());
  EXPECT_EQ(all.status().code(), StatusCode::kDataLoss) << all.status().ToString();
  EXPECT_NE(all.status().message().find(Location()), std::string::npos) << all.status().ToString();
  EXPECT_NE(all.status().message().find(files[0]), std::string::npos) << all.status().ToString();
}

TEST_F(S3Test, ConfigFromEnvironmentAndProfiles) {
  // The environment the suite set up, then a profile file instead.
  auto c = S3Config::FromEnvironment();
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->endpoint, config_->endpoint);
  EXPECT_TRUE(c->path_style);
  EXPECT_EQ(c->part_size, uint64_t{5} << 20);
  const std::string dir = ::testing::TempDir();
  const std::string creds = dir + "/dcpp_s3_credentials";
  std::ofstream(creds) << "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n"
                       << "[ci]\naws_access_key_id = " << config_->access_key
                       << "\naws_secret_access_key = " << config_->secret_key << "\n";
  const std::string id = EnvOr("AWS_ACCESS_KEY_ID"), secret = EnvOr("AWS_SECRET_ACCESS_KEY");
  ::unsetenv("AWS_ACCESS_KEY_ID");
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  ::setenv("AWS_SHARED_CREDENTIALS_FILE", creds.c_str(), 1);
  ::setenv("AWS_PROFILE", "ci", 1);
  Value sd;
  sd["x"] = Iota(DType::kFloat32, {10});
  auto saved = Save(sd, Location());
  ::setenv("AWS_PROFILE", "nope", 1);
  auto no_profile = S3Config::FromEnvironment();
  ::unsetenv("AWS_PROFILE");
  ::setenv("DCPP_S3_PART_SIZE", "1M", 1);
  auto too_small = Save(sd, Location("small"));
  ::setenv("DCPP_S3_PART_SIZE", "5M", 1);
  ::unsetenv("AWS_SHARED_CREDENTIALS_FILE");
  ::setenv("AWS_ACCESS_KEY_ID", id.c_str(), 1);
  ::setenv("AWS_SECRET_ACCESS_KEY", secret.c_str(), 1);
  EXPECT_TRUE(saved.ok()) << saved.status().ToString();
  EXPECT_EQ(no_profile.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(no_profile.status().message().find("nope"), std::string::npos);
  EXPECT_EQ(too_small.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_small.status().message().find("DCPP_S3_PART_SIZE"), std::string::npos);
}

}  // namespace
}  // namespace dcpp
