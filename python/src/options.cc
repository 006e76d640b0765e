#include "options.h"

#include "convert.h"
#include "process_groups.h"

#include <memory>
#include <utility>

namespace nb = nanobind;

namespace dcpp::python {
namespace {

// The callable is shared so copies of the std::function never touch Python
// reference counts without the GIL.
struct PyCallback {
  nb::object fn;
  ~PyCallback() {
    nb::gil_scoped_acquire gil;
    fn.reset();
  }
};

}  // namespace

ProgressCallback WrapProgress(nb::object fn) {
  if (fn.is_none()) return nullptr;
  if (!PyCallable_Check(fn.ptr())) throw nb::type_error("progress must be callable or None");
  auto cb = std::make_shared<PyCallback>();
  cb->fn = std::move(fn);
  return [cb](const Progress& p) {
    nb::gil_scoped_acquire gil;
    try {
      cb->fn(nb::str(p.phase.data(), p.phase.size()), p.bytes_done, p.bytes_total, p.items_done,
             p.items_total);
    } catch (nb::python_error& e) {
      // dcpp cannot stop on a callback's exception; report it like Python
      // reports errors in __del__.
      e.discard_as_unraisable("dcpp progress callback");
    }
  };
}

SaveOptions MakeSaveOptions(SaveKeywords k, nb::object progress) {
  SaveOptions o;
  o.files_per_rank = k.thread_count;
  o.io_threads = k.io_threads;
  o.single_file_per_rank = k.single_file_per_rank;
  o.sync_files = k.sync_files;
  o.overwrite = k.overwrite;
  o.checksums = k.checksums;
  o.transforms = std::move(k.transforms);
  o.compression_level = k.compression_level;
  o.dedup_to_lowest_rank = k.dedup_to_lowest_rank;
  o.lock_timeout_ms = k.lock_timeout_ms;
  if (k.format == "safetensors")
    o.format = SaveFormat::kSafetensors;
  else if (k.format != "dcp")
    throw nb::value_error(("format must be 'dcp' or 'safetensors', got '" + k.format + "'").c_str());
  o.max_shard_size = k.max_shard_size;
  o.fqn_to_file_index = std::move(k.fqn_to_file_index);
  o.progress = WrapProgress(std::move(progress));
  return o;
}

void PrepareSave(nb::handle state_dict, SaveKeywords k, nb::object progress, ProcessGroup* group,
                 ToValueConverter& conv, Value* sd, SaveOptions* o) {
  LocalStep step(group);
  step.Run([&] {
    *sd = conv.ConvertStateDict(state_dict);
    *o = MakeSaveOptions(std::move(k), std::move(progress));
  });
  step.Agree("save");
}

}  // namespace dcpp::python
