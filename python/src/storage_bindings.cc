#include "storage_bindings.h"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "convert.h"
#include "dcpp/base/exception_barrier.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/storage.h"
#include "dcpp/transform/transform.h"
#include "errors.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace dcpp::python {
namespace {

// Runs task(i) for i in [0, n) on up to `threads` threads (the caller's
// among them). Call without the GIL.
template <typename Task>
void RunParallel(size_t n, int threads, const Task& task) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < n; i = next++) task(i);
  };
  std::vector<std::thread> pool;
  const size_t extra = std::min<size_t>(n, static_cast<size_t>(std::max(threads, 1))) - (n > 0);
  for (size_t t = 0; t < extra; ++t) {
    try {
      pool.emplace_back(worker);
    } catch (const std::system_error&) {
      break;  // fewer threads; the work still gets done
    }
  }
  worker();
  for (std::thread& t : pool) t.join();
}

// A buffer-protocol view held until the call ends. Released with the GIL.
struct HeldBuffer {
  Py_buffer view{};
  bool held = false;
  ~HeldBuffer() {
    if (held) PyBuffer_Release(&view);
  }
};

StorageInfo StorageFromPython(nb::handle s, const std::string& where) {
  StorageInfo info;
  try {
    info.relative_path = nb::cast<std::string>(s[0]);
    info.offset = nb::cast<uint64_t>(s[1]);
    info.length = nb::cast<uint64_t>(s[2]);
    if (!s[3].is_none()) info.transform_descriptors = nb::cast<std::vector<std::string>>(s[3]);
    if (nb::len(s) > 4 && nb::cast<bool>(s[4])) info.encoding = StorageInfo::Encoding::kRawTensor;
  } catch (const nb::cast_error&) {
    throw nb::type_error((where + ": storage must be (relative_path, offset, length, descriptors "
                                  "or None[, raw])")
                             .c_str());
  }
  return info;
}

// _write_files(dir, files, ...): files is a list of (name, items); an item
// is (fqn, "tensor", tensor) or (fqn, "bytes", buffer). Writes every file
// (WriteDataFile) on `threads` threads in all: files in parallel, and the
// threads left over shared among them (untransformed items of one file are
// written in parallel too). Returns per file a list of (offset, length,
// recorded descriptors) per item.
nb::list WriteFiles(const std::string& dir, nb::handle files, bool checksums, bool sync,
                    std::vector<std::string> transforms, int compression_level, int threads) {
  PyHelpers helpers = PyHelpers::Get();
  ToValueConverter conv(helpers, ToValueConverter::Purpose::kSave);
  struct FileJob {
    std::string name;
    std::vector<storage::StoreItem> items;
    std::vector<Tensor> copies;  // dense copies of non-dense tensors
  };
  std::vector<FileJob> jobs;
  std::vector<std::unique_ptr<HeldBuffer>> buffers;
  for (nb::handle f : files) {
    FileJob job;
    job.name = nb::cast<std::string>(f[0]);
    for (nb::handle item : f[1]) {
      storage::StoreItem si;
      si.name = nb::cast<std::string>(item[0]);
      const std::string kind = nb::cast<std::string>(item[1]);
      nb::handle data = item[2];
      if (kind == "bytes") {
        auto held = std::make_unique<HeldBuffer>();
        if (PyObject_GetBuffer(data.ptr(), &held->view, PyBUF_C_CONTIGUOUS) != 0)
          throw nb::python_error();
        held->held = true;
        si.bytes = std::span<const uint8_t>(static_cast<const uint8_t*>(held->view.buf),
                                            static_cast<size_t>(held->view.len));
        buffers.push_back(std::move(held));
      } else if (kind == "tensor") {
        Tensor t = conv.ConvertTensor(data, "'" + si.name + "'");
        if (!t.view().is_dense()) {
          t = ValueOrThrow(t.Clone());
          job.copies.push_back(t);
        }
        si.is_tensor = true;
        si.tensor = t.view();
      } else {
        throw nb::value_error(("'" + si.name + "': item kind must be 'tensor' or 'bytes'").c_str());
      }
      job.items.push_back(std::move(si));
    }
    jobs.push_back(std::move(job));
  }

  storage::StoreOptions options;
  options.checksums = checksums;
  options.sync = sync;
  options.transforms = std::move(transforms);
  options.compression_level = compression_level;
  if (threads < 1) throw nb::value_error("threads must be >= 1");
  const storage::WriterThreads split = storage::SplitWriterThreads(jobs.size(), threads);
  options.threads = split.per_file;
  std::vector<std::optional<Result<std::vector<StorageInfo>>>> results(jobs.size());
  std::unique_ptr<storage::Storage> location = ValueOrThrow(storage::OpenStorage(dir));
  {
    nb::gil_scoped_release release;
    RunParallel(jobs.size(), split.parallel_files, [&](size_t i) {
      // No exception may leave a worker thread (std::terminate).
      results[i] = CatchExceptions("writing " + jobs[i].name, [&] {
        return storage::WriteDataFile(*location, jobs[i].name, jobs[i].items, options);
      });
    });
  }
  nb::list out;
  for (size_t i = 0; i < jobs.size(); ++i) {
    if (!results[i]->ok()) ThrowStatus(results[i]->status());
    nb::list per_file;
    for (const StorageInfo& s : results[i]->value())
      per_file.append(nb::make_tuple(s.offset, s.length, nb::cast(s.transform_descriptors)));
    out.append(per_file);
  }
  return out;
}

// _read(dir, chunk_jobs, byte_jobs, threads): chunk_jobs are (fqn, dtype,
// chunk_offsets, chunk_sizes, storage, targets) with targets a list of
// (tensor, box_offsets, box_sizes) (global coordinates inside the chunk);
// byte_jobs are (fqn, storage, max_bytes). Fills the targets (ReadChunk),
// reads the byte items (ReadItem) and returns their bytes in order.
nb::list Read(const std::string& dir, nb::handle chunk_jobs, nb::handle byte_jobs, int threads,
              uint64_t buffer_limit) {
  PyHelpers helpers = PyHelpers::Get();
  ToValueConverter conv(helpers, ToValueConverter::Purpose::kLoadInto);
  struct ChunkJob {
    std::string fqn;
    DType dtype;
    ChunkMeta chunk;
    std::vector<storage::ChunkTarget> targets;
  };
  struct ByteJob {
    std::string fqn;
    StorageInfo storage;
    uint64_t max_bytes;
  };
  std::vector<ChunkJob> chunks;
  std::vector<ByteJob> bytes;
  for (nb::handle j : chunk_jobs) {
    ChunkJob job;
    job.fqn = nb::cast<std::string>(j[0]);
    const std::string where = "'" + job.fqn + "'";
    job.dtype = DTypeFromName(nb::cast<std::string>(j[1]), where);
    job.chunk.offsets = nb::cast<Shape>(j[2]);
    job.chunk.sizes = nb::cast<Shape>(j[3]);
    job.chunk.storage = StorageFromPython(j[4], where);
    for (nb::handle t : j[5]) {
      storage::ChunkTarget target;
      Tensor dst = conv.ConvertTensor(t[0], where);
      if (dst.dtype() != job.dtype)
        throw nb::value_error((where + ": the destination is " +
                               std::string(TorchName(dst.dtype())) + " but the checkpoint holds " +
                               std::string(TorchName(job.dtype)))
                                  .c_str());
      target.dst = dst.view();
      target.box_offsets = nb::cast<Shape>(t[1]);
      target.box_sizes = nb::cast<Shape>(t[2]);
      if (target.box_sizes != dst.shape())
        throw nb::value_error((where + ": destination shape " + ShapeToString(dst.shape()) +
                               " differs from the requested box " + ShapeToString(target.box_sizes))
                                  .c_str());
      job.targets.push_back(std::move(target));
    }
    chunks.push_back(std::move(job));
  }
  for (nb::handle j : byte_jobs) {
    ByteJob job;
    job.fqn = nb::cast<std::string>(j[0]);
    job.storage = StorageFromPython(j[1], "'" + job.fqn + "'");
    job.max_bytes = nb::cast<uint64_t>(j[2]);
    bytes.push_back(std::move(job));
  }

  std::vector<Status> chunk_status(chunks.size());
  std::unique_ptr<storage::Storage> location = ValueOrThrow(storage::OpenStorage(dir));
  std::vector<std::optional<Result<std::string>>> byte_results(bytes.size());
  {
    nb::gil_scoped_release release;
    // Byte items first: they are small, and the caller unpickles them while
    // nothing else waits on them.
    RunParallel(bytes.size() + chunks.size(), threads, [&](size_t i) {
      if (i < bytes.size()) {
        const ByteJob& b = bytes[i];
        byte_results[i] = CatchExceptions("reading '" + b.fqn + "'", [&] {
          return storage::ReadItem(*location, b.storage, b.fqn, b.max_bytes);
        });
      } else {
        const ChunkJob& c = chunks[i - bytes.size()];
        chunk_status[i - bytes.size()] = CatchExceptions("reading '" + c.fqn + "'", [&] {
          return storage::ReadChunk(*location, c.fqn, c.dtype, c.chunk, c.targets, buffer_limit);
        });
      }
    });
  }
  for (const Status& s : chunk_status) ThrowIfError(s);
  for (auto& r : byte_results)
    if (!r->ok()) ThrowStatus(r->status());
  conv.CopyBack();
  nb::list out;
  for (auto& r : byte_results) out.append(nb::bytes(r->value().data(), r->value().size()));
  return out;
}


// Runs fn() (returning a Status or Result) without the GIL, exceptions
// turned into a Status naming `operation`; raises its error with the GIL.
template <typename Fn>
auto Unlocked(const std::string& operation, Fn&& fn) {
  decltype(fn()) r = [&] {
    nb::gil_scoped_release release;
    return CatchExceptions(operation, std::forward<Fn>(fn));
  }();
  if constexpr (std::is_same_v<decltype(fn()), Status>) {
    ThrowIfError(r);
  } else {
    return ValueOrThrow(std::move(r));
  }
}

// The most a single read() hands back at once: the cap dcpp applies to
// .metadata (a hostile or mistaken object must not exhaust memory).
constexpr uint64_t kMaxWholeRead = uint64_t{4} << 30;

// A lock taken through _Storage.try_lock; keeps its storage alive (a
// StorageLock must go before the Storage that gave it).
class PyStorageLock {
 public:
  PyStorageLock(std::shared_ptr<storage::Storage> storage,
                std::unique_ptr<storage::StorageLock> lock)
      : storage_(std::move(storage)), lock_(std::move(lock)) {}
  ~PyStorageLock() { Release(); }

  // Drops the lock (an object store deletes its lock object: a request, so
  // without the GIL). Releasing twice is OK.
  void Release() {
    if (!lock_) return;
    std::unique_ptr<storage::StorageLock> closing = std::move(lock_);
    if (PyGILState_Check()) {
      nb::gil_scoped_release release;
      closing.reset();
    } else {
      closing.reset();
    }
  }
  bool held() const { return lock_ != nullptr; }

 private:
  std::shared_ptr<storage::Storage> storage_;
  std::unique_ptr<storage::StorageLock> lock_;
};

// _Storage(location): one checkpoint location (a directory path, file://
// path or s3://bucket/prefix, as storage::OpenStorage takes it), with the
// few entry operations dcpp.torch's writer and reader need besides the data
// files: whole small entries read and written, listing, removing, renaming
// and the location's lock. Errors raise dcpp's exceptions naming the entry
// (errors.h); every method that touches storage runs without the GIL.
// Opening makes no request.
class PyStorage {
 public:
  explicit PyStorage(const std::string& location)
      : storage_(ValueOrThrow(storage::OpenStorage(location))) {}

  std::string Describe(const std::string& name) const { return storage_->Describe(name); }
  bool PublishesOnClose() const { return storage_->PublishesOnClose(); }

  void CreateLocation() {
    Unlocked("create " + Describe(""), [&] { return storage_->CreateLocation(); });
  }

  uint64_t Size(const std::string& name) {
    return Unlocked("stat " + Describe(name), [&] { return storage_->Size(name); });
  }

  // Whether `name` exists; errors other than NotFound raise.
  bool Exists(const std::string& name) {
    return Unlocked("stat " + Describe(name), [&]() -> Result<bool> {
      Result<uint64_t> r = storage_->Size(name);
      if (r.ok()) return true;
      if (r.status().code() == StatusCode::kNotFound) return false;
      return r.status();
    });
  }

  // The bytes [offset, offset + length) of `name`, or from `offset` to its
  // end when `length` is None. DataLoss for a range past the end;
  // ResourceExhausted for more than 4 GiB.
  nb::bytes Read(const std::string& name, uint64_t offset, std::optional<uint64_t> length) {
    std::unique_ptr<storage::ReadableFile> file;
    const uint64_t n = Unlocked("read " + Describe(name), [&]() -> Result<uint64_t> {
      DCPP_ASSIGN_OR_RETURN(file, storage_->OpenForRead(name));
      if (length) return *length;
      DCPP_ASSIGN_OR_RETURN(uint64_t size, file->Size());
      if (offset > size)
        return DataLossError(Describe(name) + ": offset " + std::to_string(offset) +
                             " is past its end (" + std::to_string(size) + " bytes)");
      return size - offset;
    });
    if (n > kMaxWholeRead)
      ThrowStatus(ResourceExhaustedError("read " + Describe(name) + ": " + std::to_string(n) +
                                         " bytes, more than the cap of " +
                                         std::to_string(kMaxWholeRead)));
    // Filled in place without the GIL: nothing else sees the object yet.
    PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(n));
    if (out == nullptr) throw nb::python_error();
    nb::bytes bytes = nb::steal<nb::bytes>(out);
    uint8_t* dst = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out));
    Unlocked("read " + Describe(name),
             [&] { return file->ReadAt(offset, std::span<uint8_t>(dst, static_cast<size_t>(n))); });
    return bytes;
  }

  // Creates `name` holding `data` (any C-contiguous buffer), synced when
  // `sync`, and closes it: on an object store it is published whole here,
  // or not at all. On a directory a failure may leave a partial file.
  void Write(const std::string& name, nb::handle data, bool sync) {
    HeldBuffer held;
    if (PyObject_GetBuffer(data.ptr(), &held.view, PyBUF_C_CONTIGUOUS) != 0)
      throw nb::python_error();
    held.held = true;
    const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(held.view.buf),
                                         static_cast<size_t>(held.view.len));
    Unlocked("write " + Describe(name), [&]() -> Status {
      DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::WritableFile> f,
                            storage_->CreateForWrite(name));
      DCPP_RETURN_IF_ERROR(f->WriteAt(0, bytes));
      if (sync) DCPP_RETURN_IF_ERROR(f->Sync());
      return f->Close();
    });
  }

  std::vector<std::string> List() {
    return Unlocked("list " + Describe(""), [&] { return storage_->List(); });
  }

  void Remove(const std::string& name) {
    Unlocked("remove " + Describe(name), [&] { return storage_->Remove(name); });
  }

  void Rename(const std::string& from, const std::string& to) {
    Unlocked("rename " + Describe(from), [&] { return storage_->Rename(from, to); });
  }

  void SyncDirectory() {
    Unlocked("sync " + Describe(""), [&] { return storage_->SyncDirectory(); });
  }

  // Takes the lock `name` without waiting, recording `holder`; AbortedError
  // (quoting the holder's line) if someone else holds it.
  std::unique_ptr<PyStorageLock> TryLock(const std::string& name, const std::string& holder) {
    std::unique_ptr<storage::StorageLock> lock = Unlocked(
        "lock " + Describe(name), [&] { return storage_->TryLock(name, holder); });
    return std::make_unique<PyStorageLock>(storage_, std::move(lock));
  }

 private:
  std::shared_ptr<storage::Storage> storage_;
};

}  // namespace

void BindStorage(nb::module_& m) {
  m.def("_write_files", &WriteFiles, "dir"_a, "files"_a, "checksums"_a, "sync"_a, "transforms"_a,
        "compression_level"_a, "threads"_a);
  m.def("_read", &Read, "dir"_a, "chunk_jobs"_a, "byte_jobs"_a, "threads"_a,
        "buffer_limit"_a = storage::kReadScratchBytes);
  nb::class_<PyStorageLock>(m, "_StorageLock",
                            "A lock taken by _Storage.try_lock, held until released or collected.")
      .def("release", &PyStorageLock::Release)
      .def_prop_ro("held", &PyStorageLock::held);
  nb::class_<PyStorage>(m, "_Storage",
                        "A checkpoint location's entries (a directory or s3://bucket/prefix).")
      .def(nb::init<const std::string&>(), "location"_a)
      .def("describe", &PyStorage::Describe, "name"_a = "")
      .def_prop_ro("publishes_on_close", &PyStorage::PublishesOnClose)
      .def("create_location", &PyStorage::CreateLocation)
      .def("size", &PyStorage::Size, "name"_a)
      .def("exists", &PyStorage::Exists, "name"_a)
      .def("read", &PyStorage::Read, "name"_a, "offset"_a = 0, "length"_a.none() = nb::none())
      .def("write", &PyStorage::Write, "name"_a, "data"_a, "sync"_a = false)
      .def("list", &PyStorage::List)
      .def("remove", &PyStorage::Remove, "name"_a)
      .def("rename", &PyStorage::Rename, "src"_a, "dst"_a)
      .def("sync_directory", &PyStorage::SyncDirectory)
      .def("try_lock", &PyStorage::TryLock, "name"_a, "holder"_a);
  m.def("_known_transforms", &transform::KnownDescriptors,
        "The stream transform descriptors this build reads and writes.");
}

}  // namespace dcpp::python
