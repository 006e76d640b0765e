// Bindings of the storage layer (src/dcpp/storage/data_files.h) for dcpp.torch:
// torch's planners decide what goes where; these functions move the bytes,
// many files or chunks per call, on C++ threads without the GIL; _Storage
// gives the writer and reader the location's other entries (.metadata, the
// lock, listing and removal) on any storage, directory or object store.
#ifndef DCPP_PYTHON_STORAGE_BINDINGS_H_
#define DCPP_PYTHON_STORAGE_BINDINGS_H_

#include <nanobind/nanobind.h>

namespace dcpp::python {

// Adds _write_files, _read, _known_transforms, _Storage and _StorageLock to `m`.
void BindStorage(nanobind::module_& m);

}  // namespace dcpp::python

#endif  // DCPP_PYTHON_STORAGE_BINDINGS_H_
