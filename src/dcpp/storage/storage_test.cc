#include "dcpp/storage/storage.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "dcpp/checkpoint.h"
#include "dcpp/engine/engine.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/fault_injecting_storage.h"
#include "temp_dir_test_base.h"

namespace dcpp::storage {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

std::span<const uint8_t> B(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string ReadAll(Storage& st, std::string_view name) {
  auto f = st.OpenForRead(name);
  if (!f.ok()) return "<" + f.status().ToString() + ">";
  std::string out(*(*f)->Size(), '\0');
  EXPECT_TRUE((*f)->ReadAt(0, {reinterpret_cast<uint8_t*>(out.data()), out.size()}).ok());
  return out;
}

Status Put(Storage& st, std::string_view name, std::string_view data, bool sync = true) {
  DCPP_ASSIGN_OR_RETURN(auto f, st.CreateForWrite(name));
  DCPP_RETURN_IF_ERROR(f->WriteAt(0, B(data)));
  if (sync) DCPP_RETURN_IF_ERROR(f->Sync());
  return f->Close();
}

// The contract every implementation keeps.
void ExpectContract(Storage& st) {
  ASSERT_TRUE(st.CreateLocation().ok());
  ASSERT_TRUE(Put(st, "b", "hello").ok());
  {
    auto f = st.CreateForWrite("a");
    ASSERT_TRUE(f.ok());
    std::span<const uint8_t> pieces[] = {B("xy"), B("z")};
    ASSERT_TRUE((*f)->WriteVAt(2, pieces).ok());
    ASSERT_TRUE((*f)->WriteAt(0, B("01")).ok());
    ASSERT_TRUE((*f)->Close().ok());
  }
  EXPECT_EQ(ReadAll(st, "a"), "01xyz");
  EXPECT_EQ(*st.Size("b"), 5u);
  EXPECT_EQ(*st.List(), (std::vector<std::string>{"a", "b"}));
  auto f = st.OpenForRead("b");
  ASSERT_TRUE(f.ok());
  uint8_t buf[4];
  EXPECT_EQ((*f)->ReadAt(3, buf).code(), StatusCode::kDataLoss);  // past the end
  ASSERT_TRUE(st.Rename("a", "b").ok());                           // replaces
  EXPECT_EQ(ReadAll(st, "b"), "01xyz");
  EXPECT_EQ(st.OpenForRead("a").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(st.Remove("a").code(), StatusCode::kNotFound);
  EXPECT_EQ(st.Rename("a", "c").code(), StatusCode::kNotFound);
  ASSERT_TRUE(st.Remove("b").ok());
  EXPECT_TRUE(st.SyncDirectory().ok());
  for (const char* bad : {"", "/etc/passwd", "../x", "a/../../x", "a//b", "./a"}) {
    EXPECT_EQ(st.OpenForRead(bad).status().code(), StatusCode::kDataLoss) << bad;
    EXPECT_EQ(st.CreateForWrite(bad).status().code(), StatusCode::kDataLoss) << bad;
  }
  // The lock excludes a second holder and names the first.
  auto l1 = st.TryLock(".dcpp.lock", "pid=1 host=h started=t save=first");
  ASSERT_TRUE(l1.ok()) << l1.status().ToString();
  auto l2 = st.TryLock(".dcpp.lock", "pid=2 host=h started=t save=second");
  ASSERT_EQ(l2.status().code(), StatusCode::kAborted);
  EXPECT_NE(l2.status().message().find("save=first"), std::string::npos) << l2.status().message();
  l1->reset();
  EXPECT_TRUE(st.TryLock(".dcpp.lock", "pid=3").ok());
}

class PosixStorageTest : public TempDirTest {};

TEST_F(PosixStorageTest, KeepsTheContract) {
  auto st = NewPosixStorage(Dir("loc/deeper"));
  ExpectContract(*st);
  EXPECT_EQ(st->Describe("x"), Dir("loc/deeper") + "/x");
}

TEST(MemoryStorageTest, KeepsTheContract) { ExpectContract(*NewMemoryStorage()); }

TEST_F(PosixStorageTest, LocksOfTwoStorageObjectsExcludeEachOtherAndTheFileStays) {
  auto a = NewPosixStorage(root_), b = NewPosixStorage(root_);
  auto la = a->TryLock(".dcpp.lock", "pid=1 host=h started=t save=aaa");
  ASSERT_TRUE(la.ok());
  std::ifstream in(root_ + "/.dcpp.lock");
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, "pid=1 host=h started=t save=aaa");
  EXPECT_EQ(b->TryLock(".dcpp.lock", "x").status().code(), StatusCode::kAborted);
  la->reset();
  EXPECT_TRUE(b->TryLock(".dcpp.lock", "x").ok());
  EXPECT_TRUE(fs::exists(root_ + "/.dcpp.lock"));
}

TEST(OpenStorageTest, PathsAndSchemes) {
  EXPECT_EQ(OpenStorage("").status().code(), StatusCode::kInvalidArgument);
  auto gs = OpenStorage("gs://bucket/ckpt");
  EXPECT_EQ(gs.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(gs.status().message().find("gs"), std::string::npos);
  {
    // s3:// is configured from the environment (no request is made here).
    std::map<std::string, std::optional<std::string>> saved;
    for (const char* name : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                             "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"}) {
      const char* v = std::getenv(name);
      saved[name] = v ? std::optional<std::string>(v) : std::nullopt;
      ::unsetenv(name);
    }
    ::setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials", 1);
    ::setenv("AWS_CONFIG_FILE", "/nonexistent/config", 1);
    auto none = OpenStorage("s3://bucket/ckpt");
    ::setenv("AWS_ACCESS_KEY_ID", "id", 1);
    ::setenv("AWS_SECRET_ACCESS_KEY", "secret", 1);
    auto s3 = OpenStorage("s3://bucket/ckpt/");
    auto bad = OpenStorage("s3://Bad_Bucket!/x");
    for (const auto& [name, value] : saved) {
      if (value) ::setenv(name.c_str(), value->c_str(), 1);
      else ::unsetenv(name.c_str());
    }
    if (s3.status().code() == StatusCode::kUnimplemented) {
      EXPECT_NE(s3.status().message().find("without S3"), std::string::npos);  // -DDCPP_WITH_S3=OFF
    } else {
      EXPECT_EQ(none.status().code(), StatusCode::kInvalidArgument);
      EXPECT_NE(none.status().message().find("AWS_ACCESS_KEY_ID"), std::string::npos);
      ASSERT_TRUE(s3.ok()) << s3.status().ToString();
      EXPECT_EQ((*s3)->Describe(".metadata"), "s3://bucket/ckpt/.metadata");
      EXPECT_EQ((*s3)->Describe(""), "s3://bucket/ckpt");
      EXPECT_TRUE((*s3)->PublishesOnClose());
      EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
    }
  }
  auto local = OpenStorage("/tmp/x");
  ASSERT_TRUE(local.ok());
  EXPECT_EQ((*local)->Describe(".metadata"), "/tmp/x/.metadata");
}

// Runs `fn` on a thread and fails (instead of hanging) if it takes longer
// than 10 s; a stuck thread is left behind.
template <typename Fn>
auto WithinTimeout(Fn fn) {
  auto task = std::make_shared<std::packaged_task<decltype(fn())()>>(std::move(fn));
  auto result = task->get_future();
  std::thread([task] { (*task)(); }).detach();
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "timed out: blocked";
    std::_Exit(1);  // a blocked read cannot be cancelled
  }
  return result.get();
}

Value Sample(int seed) {
  Value sd;
  Tensor t = *Tensor::Zeros(DType::kFloat32, {64, 64});
  auto* p = static_cast<float*>(t.data());
  for (int i = 0; i < 64 * 64; ++i) p[i] = static_cast<float>(i + seed);
  sd["w"] = t;
  sd["step"] = seed;
  return sd;
}

std::vector<std::string> DataFiles(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (io::IsDataFileName(e.path().filename().string())) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

TEST_F(PosixStorageTest, FifoAsMetadataIsRefusedWithoutBlocking) {
  const std::string dir = Dir("fifo_md");
  ASSERT_TRUE(Save(Sample(1), dir).ok());
  fs::remove(dir + "/.metadata");
  ASSERT_EQ(::mkfifo((dir + "/.metadata").c_str(), 0644), 0);
  auto md = WithinTimeout([&] { return ReadMetadata(dir); });
  ASSERT_FALSE(md.ok());
  EXPECT_EQ(md.status().code(), StatusCode::kDataLoss) << md.status().ToString();
  EXPECT_NE(md.status().message().find(dir + "/.metadata"), std::string::npos);
  EXPECT_NE(md.status().message().find("FIFO"), std::string::npos);
}

TEST_F(PosixStorageTest, FifoAsDataFileIsRefusedWithoutBlocking) {
  const std::string dir = Dir("fifo_data");
  ASSERT_TRUE(Save(Sample(1), dir).ok());
  const auto files = DataFiles(dir);
  ASSERT_EQ(files.size(), 1u);
  fs::remove(dir + "/" + files[0]);
  ASSERT_EQ(::mkfifo((dir + "/" + files[0]).c_str(), 0644), 0);
  auto all = WithinTimeout([&] { return LoadAll(dir); });
  ASSERT_FALSE(all.ok());
  EXPECT_EQ(all.status().code(), StatusCode::kDataLoss) << all.status().ToString();
  EXPECT_NE(all.status().message().find(files[0]), std::string::npos);
}

// Rewrites the checkpoint's metadata so that every item names `prefix` +
// its file, as an outside editor would: its save_id stays, so the sidecar
// checksum file (which would flag the edited .metadata) goes.
void Redirect(const std::string& dir, const std::string& prefix) {
  auto st = NewPosixStorage(dir);
  auto md = ReadCheckpointMetadata(*st);
  ASSERT_TRUE(md.ok());
  if (md->storage_meta && md->storage_meta->save_id)
    (void)st->Remove(".checksums." + *md->storage_meta->save_id);
  for (auto& e : md->entries) {
    if (e.is_tensor())
      for (auto& c : e.chunks) c.storage.relative_path = prefix + c.storage.relative_path;
    else
      e.storage.relative_path = prefix + e.storage.relative_path;
  }
  ASSERT_TRUE(CommitMetadata(*st, *md, false, "edit").ok());
}

TEST_F(PosixStorageTest, SymlinksLeavingTheCheckpointAreRefused) {
  const std::string dir = Dir("ckpt"), outside = Dir("outside");
  ASSERT_TRUE(Save(Sample(1), dir).ok());
  const auto files = DataFiles(dir);
  ASSERT_EQ(files.size(), 1u);
  fs::create_directories(outside);
  fs::copy_file(dir + "/" + files[0], outside + "/" + files[0]);

  // A symlinked sub-folder pointing outside: refused.
  fs::create_directory_symlink(outside, dir + "/sub");
  Redirect(dir, "sub/");
  auto all = LoadAll(dir);
  ASSERT_FALSE(all.ok());
  EXPECT_EQ(all.status().code(), StatusCode::kDataLoss) << all.status().ToString();
  EXPECT_NE(all.status().message().find("outside the checkpoint"), std::string::npos)
      << all.status().message();

  // A sub-folder symlinked inside the checkpoint is fine.
  fs::remove(dir + "/sub");
  fs::create_directories(dir + "/real");
  fs::copy_file(dir + "/" + files[0], dir + "/real/" + files[0]);
  fs::create_directory_symlink("real", dir + "/sub");
  auto inside = LoadAll(dir);
  ASSERT_TRUE(inside.ok()) << inside.status().ToString();
  EXPECT_TRUE(inside->Equals(Sample(1)));

  // The data file itself a symlink to outside: refused.
  Redirect(dir, "../");  // ".." is refused by name already
  EXPECT_EQ(LoadAll(dir).status().code(), StatusCode::kDataLoss);
  const std::string dir2 = Dir("ckpt2");
  ASSERT_TRUE(Save(Sample(2), dir2).ok());
  const auto files2 = DataFiles(dir2);
  fs::copy_file(dir2 + "/" + files2[0], outside + "/x.distcp");
  fs::remove(dir2 + "/" + files2[0]);
  fs::create_symlink(outside + "/x.distcp", dir2 + "/" + files2[0]);
  auto linked = LoadAll(dir2);
  ASSERT_FALSE(linked.ok());
  EXPECT_EQ(linked.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(linked.status().message().find(files2[0]), std::string::npos);
}

TEST_F(PosixStorageTest, SaveReclaimsLeftoversAndNothingElse) {
  const std::string dir = Dir("reclaim");
  ASSERT_TRUE(Save(Sample(1), dir).ok());
  const auto first = DataFiles(dir);
  for (const char* name : {"__0_0.deadbeef.distcp", "__3_1.distcp", ".metadata.tmp",
                           ".metadata.0badc0de.tmp", "notes.txt", "__0_0.distcp.bak", "x.distcp",
                           ".checksums.0ld-save", ".checksums.0ld-save.tmp"})
    std::ofstream(dir + "/" + name) << "junk";
  auto md = Save(Sample(2), dir);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename());
  std::sort(left.begin(), left.end());
  const auto now = DataFiles(dir);
  ASSERT_EQ(now.size(), 1u);
  EXPECT_NE(now, first);  // a new name: the old file went with the old checkpoint
  std::vector<std::string> expect = {".dcpp.lock", ".metadata", "__0_0.distcp.bak", now[0],
                                     "notes.txt", "x.distcp",
                                     ".checksums." + *md->storage_meta->save_id};
  std::sort(expect.begin(), expect.end());
  EXPECT_EQ(left, expect);
  auto all = LoadAll(dir);
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->Equals(Sample(2)));
}

TEST_F(PosixStorageTest, ASecondSaveWhileOneHoldsTheLockFailsNamingTheHolder) {
  // Save A on 2 thread ranks; while it writes (lock held), save B into the
  // same directory from another thread of this process.
  const std::string dir = Dir("race");
  std::promise<Status> b_result;
  std::once_flag once;
  auto statuses = RunOnThreadRanks(2, [&](ProcessGroup& pg) -> Status {
    SaveOptions o;
    o.process_group = &pg;
    if (pg.rank() == 0)
      o.progress = [&](const Progress&) {
        std::call_once(once, [&] {
          std::thread([&] { b_result.set_value(Save(Sample(7), dir).status()); }).join();
        });
      };
    Value sd = Sample(3);
    if (pg.rank() == 1) sd["extra"] = 5;
    return Save(sd, dir, o).status();
  }, milliseconds(20000));
  for (const Status& s : statuses) ASSERT_TRUE(s.ok()) << s.ToString();
  const Status b = b_result.get_future().get();
  ASSERT_EQ(b.code(), StatusCode::kAborted) << b.ToString();
  const std::string pid = "pid=" + std::to_string(::getpid()) + " host=";
  EXPECT_NE(b.message().find(pid), std::string::npos) << b.message();
  EXPECT_NE(b.message().find(" started="), std::string::npos) << b.message();
  EXPECT_NE(b.message().find(" save="), std::string::npos) << b.message();
  EXPECT_NE(b.message().find("lock_timeout_ms"), std::string::npos) << b.message();
  auto all = LoadAll(dir);
  ASSERT_TRUE(all.ok());
  EXPECT_EQ(all->Find("step")->DebugString(), Value(3).DebugString());  // A's, unmixed
}

TEST_F(PosixStorageTest, LockTimeoutWaitsForTheHolder) {
  const std::string dir = Dir("wait");
  fs::create_directories(dir);
  auto other = NewPosixStorage(dir);
  auto held = other->TryLock(".dcpp.lock", "pid=42 host=elsewhere started=now save=other");
  ASSERT_TRUE(held.ok());

  SaveOptions quick;
  quick.lock_timeout_ms = 100;
  auto t0 = std::chrono::steady_clock::now();
  Status s = Save(Sample(1), dir, quick).status();
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
  EXPECT_NE(s.message().find("pid=42 host=elsewhere"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("100 ms"), std::string::npos) << s.message();
  EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds(90));
  EXPECT_FALSE(fs::exists(dir + "/.metadata"));
  EXPECT_TRUE(DataFiles(dir).empty());  // nothing written without the lock

  std::thread release([&] {
    std::this_thread::sleep_for(milliseconds(300));
    held->reset();
  });
  SaveOptions patient;
  patient.lock_timeout_ms = 10000;
  t0 = std::chrono::steady_clock::now();
  auto md = Save(Sample(1), dir, patient);
  release.join();
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  EXPECT_GE(std::chrono::steady_clock::now() - t0, milliseconds(250));

  SaveOptions bad;
  bad.lock_timeout_ms = -1;
  EXPECT_EQ(Save(Sample(1), dir, bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(FaultInjectingStorageTest, RecoverKeepsOnlyWhatWasDurable) {
  auto mem = NewMemoryStorage();
  ASSERT_TRUE(Put(*mem, "old", "old-data").ok());
  auto fi = FaultInjectingStorage::Wrap(*mem);
  ASSERT_TRUE(fi.ok());
  FaultInjectingStorage& f = **fi;
  ASSERT_TRUE(Put(f, "synced", "abc", true).ok());     // data synced, entry not
  ASSERT_TRUE(f.SyncDirectory().ok());                 // now the entry too
  ASSERT_TRUE(Put(f, "unsynced", "xyz", false).ok());  // never synced
  {
    auto w = f.CreateForWrite("grows");
    ASSERT_TRUE((*w)->WriteAt(0, B("12")).ok());
    ASSERT_TRUE((*w)->Sync().ok());
    ASSERT_TRUE((*w)->WriteAt(2, B("34")).ok());  // after the last sync
  }
  ASSERT_TRUE(f.SyncDirectory().ok());
  ASSERT_TRUE(f.Rename("synced", "renamed").ok());  // not followed by a directory sync
  ASSERT_TRUE(f.Remove("old").ok());
  EXPECT_EQ(*mem->List(), (std::vector<std::string>{"grows", "renamed", "unsynced"}));
  ASSERT_TRUE(f.Recover().ok());
  EXPECT_EQ(*mem->List(), (std::vector<std::string>{"grows", "old", "synced", "unsynced"}));
  EXPECT_EQ(ReadAll(*mem, "old"), "old-data");
  EXPECT_EQ(ReadAll(*mem, "synced"), "abc");
  EXPECT_EQ(ReadAll(*mem, "unsynced"), "");  // its bytes were never synced
  EXPECT_EQ(ReadAll(*mem, "grows"), "12");
}

TEST(FaultInjectingStorageTest, FailuresAndCrashes) {
  auto mem = NewMemoryStorage();
  auto fi = FaultInjectingStorage::Wrap(*mem);
  FaultInjectingStorage& f = **fi;
  f.FailCall(OpKind::kWrite, 1, FaultType::kShortWrite);
  f.FailCall(OpKind::kSync, 0, FaultType::kIoError);
  auto w = f.CreateForWrite("a");
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE((*w)->WriteAt(0, B("1234")).ok());
  Status s = (*w)->WriteAt(4, B("5678"));
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
  EXPECT_EQ(ReadAll(*mem, "a"), "123456");  // half of the short write landed
  EXPECT_EQ((*w)->Sync().code(), StatusCode::kInternal);
  EXPECT_TRUE(f.fired());
  EXPECT_EQ(f.Count(OpKind::kWrite), 2u);
  f.CrashAt(f.TotalCalls() + 1);
  EXPECT_TRUE(f.Remove("a").ok());  // the last call before the crash
  EXPECT_FALSE(f.crashed());
  EXPECT_FALSE(f.Rename("x", "y").ok());
  EXPECT_TRUE(f.crashed());
  EXPECT_FALSE(f.OpenForRead("a").ok());  // nothing reaches storage any more
  EXPECT_FALSE(f.List().ok());
  ASSERT_TRUE(f.Recover().ok());
  EXPECT_TRUE(mem->List()->empty());  // "a" was never made durable
  EXPECT_TRUE(f.List().ok());
}

}  // namespace
}  // namespace dcpp::storage
