#include "storage_bindings.h"

#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
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

}  // namespace

void BindStorage(nb::module_& m) {
  m.def("_write_files", &WriteFiles, "dir"_a, "files"_a, "checksums"_a, "sync"_a, "transforms"_a,
        "compression_level"_a, "threads"_a);
  m.def("_read", &Read, "dir"_a, "chunk_jobs"_a, "byte_jobs"_a, "threads"_a,
        "buffer_limit"_a = storage::kReadScratchBytes);
  m.def("_known_transforms", &transform::KnownDescriptors,
        "The stream transform descriptors this build reads and writes.");
}

}  // namespace dcpp::python
