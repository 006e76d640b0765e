#include "async_bindings.h"

#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <string>
#include <vector>

#include "convert.h"
#include "dcpp/async_checkpointer.h"
#include "dcpp/engine/staging.h"
#include "errors.h"
#include "options.h"
#include "process_groups.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace dcpp::python {
namespace {

// Owns the C++ checkpointer; close() (or garbage collection) waits for the
// save in flight without holding the GIL.
struct PyAsyncCheckpointer {
  std::unique_ptr<AsyncCheckpointer> impl;

  ~PyAsyncCheckpointer() { Close(); }

  void Close() {
    if (!impl) return;
    std::unique_ptr<AsyncCheckpointer> closing = std::move(impl);
    if (PyGILState_Check()) {
      nb::gil_scoped_release release;
      closing.reset();
    } else {
      closing.reset();
    }
  }

  AsyncCheckpointer& Get() {
    if (!impl) throw nb::value_error("this AsyncCheckpointer is closed");
    return *impl;
  }
};

// Staging happens here, with the GIL released once the state dict is
// converted (tensors borrowed); the returned handle resolves when the
// background save ends.
AsyncSaveHandle SaveImpl(PyAsyncCheckpointer& self, nb::handle state_dict, const std::string& path,
                         int thread_count, int io_threads, bool single_file_per_rank,
                         bool sync_files, bool overwrite, bool checksums,
                         std::vector<std::string> transforms, int compression_level,
                         bool dedup_to_lowest_rank, nb::object progress, int64_t lock_timeout_ms,
                         nb::object process_group, std::string format, uint64_t max_shard_size,
                         std::map<std::string, int> fqn_to_file_index) {
  AsyncCheckpointer& c = self.Get();
  // The group given to the checkpointer (its adapter, or None): a rank
  // whose state dict does not convert tells the others over it, on this
  // thread, before anything is staged (the background saves use the
  // checkpointer's duplicate).
  std::unique_ptr<ProcessGroup> group = MakePyProcessGroup(process_group);
  PyHelpers helpers = PyHelpers::Get();
  ToValueConverter conv(helpers, ToValueConverter::Purpose::kSave);
  Value sd;
  SaveOptions o;
  PrepareSave(state_dict,
              {thread_count, io_threads, single_file_per_rank, sync_files, overwrite,
               checksums, std::move(transforms), compression_level,
               dedup_to_lowest_rank, lock_timeout_ms, std::move(format),
               max_shard_size, std::move(fqn_to_file_index)},
              std::move(progress), group.get(), conv, &sd, &o);
  nb::gil_scoped_release release;
  return c.Save(sd, path, std::move(o));
}

nb::dict Stats(const AsyncSaveHandle& h) {
  AsyncSaveStats s = h.stats();
  nb::dict d;
  d["staged_bytes"] = s.staged_bytes;
  d["stage_seconds"] = s.stage_seconds;
  d["write_seconds"] = s.write_seconds;
  d["pool_grew"] = s.pool_grew;
  return d;
}

// dcpp.torch.Stager's copies: `tensors` (torch tensors or arrays) staged
// into `pool`, returned as tensors (torch for torch inputs) that own their
// share of the pool, so the mapping stays in use until they are gone.
nb::list StageTensors(engine::StagingPool& pool, nb::list tensors, int threads) {
  PyHelpers helpers = PyHelpers::Get();
  ToValueConverter conv(helpers, ToValueConverter::Purpose::kSave);
  std::vector<Value> items;
  std::vector<bool> is_torch;
  for (size_t i = 0; i < tensors.size(); ++i) {
    nb::handle t = tensors[i];
    is_torch.push_back(helpers.IsTorchTensor(t));
    items.emplace_back(conv.ConvertTensor(t, "tensors[" + std::to_string(i) + "]"));
  }
  Value list = Value::List(std::move(items));
  Result<engine::StageResult> staged = [&] {
    nb::gil_scoped_release release;
    return engine::Stage(list, pool, threads);
  }();
  engine::StageResult r = ValueOrThrow(std::move(staged));
  nb::list out;
  const std::vector<Value>& got = r.staged.items();
  for (size_t i = 0; i < got.size(); ++i)
    out.append(TensorToPython(got[i].tensor(), helpers, is_torch[i],
                              "tensors[" + std::to_string(i) + "]"));
  return out;
}

}  // namespace

void BindAsync(nb::module_& m) {
  nb::class_<engine::StagingPool>(m, "_StagingPool")
      .def(
          "__init__",
          [](engine::StagingPool* self, uint64_t max_bytes, bool lock_memory) {
            new (self) engine::StagingPool({.max_bytes = max_bytes, .lock_memory = lock_memory});
          },
          "max_bytes"_a = 0, "lock_memory"_a = false)
      .def("stage", &StageTensors, "tensors"_a, "threads"_a = 0)
      .def_prop_ro("total_bytes", &engine::StagingPool::total_bytes);

  nb::class_<AsyncSaveHandle>(m, "_AsyncSaveHandle")
      .def(
          "wait",
          [](const AsyncSaveHandle& h) {
            Result<Metadata> r = [&] {
              nb::gil_scoped_release release;
              return h.Wait();
            }();
            return ValueOrThrow(std::move(r));
          },
          "Blocks (without the GIL) until the save ends; its Metadata, or raises its error.")
      .def("done", &AsyncSaveHandle::Done)
      .def("stats", &Stats);

  nb::class_<PyAsyncCheckpointer>(m, "_AsyncCheckpointer")
      .def(
          "__init__",
          [](PyAsyncCheckpointer* self, uint64_t max_staging_bytes, bool lock_memory,
             int staging_threads, nb::object process_group) {
            // Create duplicates the group (collective), calling the adapter.
            std::unique_ptr<ProcessGroup> group = MakePyProcessGroup(process_group);
            AsyncCheckpointerOptions o;
            o.process_group = group.get();
            o.max_staging_bytes = max_staging_bytes;
            o.lock_memory = lock_memory;
            o.staging_threads = staging_threads;
            Result<std::unique_ptr<AsyncCheckpointer>> c = [&] {
              nb::gil_scoped_release release;
              return AsyncCheckpointer::Create(o);
            }();
            new (self) PyAsyncCheckpointer{ValueOrThrow(std::move(c))};
          },
          "max_staging_bytes"_a = 0, "lock_memory"_a = false, "staging_threads"_a = 0,
          "process_group"_a.none() = nb::none())
      .def("save", &SaveImpl, "state_dict"_a, "path"_a, "thread_count"_a, "io_threads"_a,
           "single_file_per_rank"_a, "sync_files"_a, "overwrite"_a, "checksums"_a, "transforms"_a,
           "compression_level"_a, "dedup_to_lowest_rank"_a, "progress"_a.none(),
           "lock_timeout_ms"_a = 0, "process_group"_a.none() = nb::none(), "format"_a = "dcp",
           "max_shard_size"_a = 0, "fqn_to_file_index"_a = std::map<std::string, int>())
      .def("close", &PyAsyncCheckpointer::Close)
      .def_prop_ro("pool_bytes", [](PyAsyncCheckpointer& self) {
        return self.impl ? self.impl->pool_bytes() : 0;
      });
}

}  // namespace dcpp::python
