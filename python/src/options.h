// Options shared by the bindings: dcpp::SaveOptions from the keyword
// arguments of dcpp.save / dcpp.async_save, and Python progress callables.
#ifndef DCPP_PYTHON_OPTIONS_H_
#define DCPP_PYTHON_OPTIONS_H_

#include <nanobind/nanobind.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "dcpp/checkpoint.h"

namespace dcpp::python {

class ToValueConverter;  // convert.h

// A ProgressCallback calling `fn` (None = none) with the GIL held, from
// whatever thread dcpp reports on; an exception it raises is reported as
// unraisable. TypeError if `fn` is not callable.
ProgressCallback WrapProgress(nanobind::object fn);

// What dcpp.save's keywords mean (python/dcpp/__init__.py validates them).
struct SaveKeywords {
  int thread_count = 1;  // SaveOptions::files_per_rank, torch's name
  int io_threads = 0;
  bool single_file_per_rank = true;
  bool sync_files = true;
  bool overwrite = true;
  bool checksums = true;
  std::vector<std::string> transforms;
  int compression_level = 1;
  bool dedup_to_lowest_rank = false;
  int64_t lock_timeout_ms = 0;
  std::string format = "dcp";  // "dcp" or "safetensors" (ValueError otherwise)
  uint64_t max_shard_size = 0;
  std::map<std::string, int> fqn_to_file_index;
};
SaveOptions MakeSaveOptions(SaveKeywords k, nanobind::object progress);

// What dcpp.save and AsyncCheckpointer.save do before the C++ call, with
// the GIL held: convert `state_dict` (tensors borrowed; `conv` keeps them
// alive) into *sd and the keywords into *o. With a group of several ranks,
// a rank whose conversion raises meets the others in one collective over
// `group` carrying the error, so every rank raises the same one (LocalStep).
void PrepareSave(nanobind::handle state_dict, SaveKeywords k, nanobind::object progress,
                 ProcessGroup* group, ToValueConverter& conv, Value* sd, SaveOptions* o);

}  // namespace dcpp::python

#endif  // DCPP_PYTHON_OPTIONS_H_
