// Bindings of dcpp::AsyncCheckpointer (include/dcpp/async_checkpointer.h)
// behind dcpp.AsyncCheckpointer and dcpp.async_save (python/dcpp/_async.py).
#ifndef DCPP_PYTHON_ASYNC_BINDINGS_H_
#define DCPP_PYTHON_ASYNC_BINDINGS_H_

#include <nanobind/nanobind.h>

namespace dcpp::python {

// Adds _AsyncCheckpointer and _AsyncSaveHandle to `m`.
void BindAsync(nanobind::module_& m);

}  // namespace dcpp::python

#endif  // DCPP_PYTHON_ASYNC_BINDINGS_H_
