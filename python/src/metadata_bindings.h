// Bindings that let dcpp.torch build torch's own Metadata objects from a
// `.metadata` file without Python's pickle: the bytes are checked by dcpp's
// decoder (format/metadata_codec.h) and parsed by its safe pickle VM
// (format/pickle.h), and the objects are built only from the classes and
// functions of the table python/dcpp/_torch_metadata.py passes in.
#ifndef DCPP_PYTHON_METADATA_BINDINGS_H_
#define DCPP_PYTHON_METADATA_BINDINGS_H_

#include <nanobind/nanobind.h>

namespace dcpp::python {

// Adds _torch_metadata to `m`.
void BindTorchMetadata(nanobind::module_& m);

}  // namespace dcpp::python

#endif  // DCPP_PYTHON_METADATA_BINDINGS_H_
