// Python objects <-> dcpp::Value.
//
// A state dict is a tree of dicts (any dict subclass, e.g. OrderedDict),
// lists and tuples (exactly those types) whose leaves are
//   * None, bool, int (within int64), float, str, bytes (exact types);
//   * tensors, borrowed without a copy: torch.Tensor (CPU; others are staged
//     through a CPU copy) read through its data_ptr/shape/stride, and numpy
//     arrays or any CPU array exporting DLPack or the buffer protocol;
//   * dcpp.ShardedTensor (global shape + dcpp.Shard pieces at offsets);
//   * torch's DTensor and ShardedTensor (torch.distributed._shard), as the
//     dcpp.ShardedTensor of their local shards at their global offsets
//     (dcpp._types._distributed_to_sharded): saving writes the local
//     shards (replicas of a replicated placement are written once), loading
//     fills them in place, whatever the saved sharding;
//   * dcpp.Opaque (bytes of a pickled object, written back verbatim);
//   * anything else: pickled with torch.save as DCP does (needs torch), and
//     loaded back as the same object or, when it cannot be unpickled safely,
//     as dcpp.Opaque.
// At the top level, an object with state_dict() and load_state_dict()
// (torch's Stateful protocol) is saved as its state_dict(), and on load
// receives the loaded state through load_state_dict(), as dcp.save/load do.
//
// Everything here needs the GIL and raises Python exceptions (as
// nanobind::python_error or nanobind's builtin exceptions) whose messages
// name the offending entry, e.g. "state_dict['model']['w']".
#ifndef DCPP_PYTHON_CONVERT_H_
#define DCPP_PYTHON_CONVERT_H_

#include <nanobind/nanobind.h>

#include <string>
#include <utility>
#include <vector>

#include "dcpp/tensor.h"
#include "dcpp/value.h"

namespace dcpp::python {

// The pieces of the pure-Python side (dcpp._types) the converters call,
// looked up once per top-level call.
struct PyHelpers {
  nanobind::object sharded_type;        // dcpp.ShardedTensor
  nanobind::object opaque_type;         // dcpp.Opaque
  nanobind::object pickle_other;        // (obj, where) -> bytes (torch.save), or raises TypeError
  nanobind::object unpickle_opaque;     // (blob, description, weights_only) -> object
  nanobind::object torch_from_bytes;    // (uint8 ndarray, dtype name, shape, strides) -> Tensor
  nanobind::object normalize_array;     // (array, where) -> native-endian array, positive strides
  nanobind::object copy_into;           // (dst, src): copies a tensor or an array in place
  nanobind::object torch_tensor_type;   // torch.Tensor, or None when torch is not imported
  nanobind::object torch_strided;       // torch.strided, or None
  nanobind::object numpy_ndarray_type;  // numpy.ndarray, or None when numpy is not imported
  // torch's DTensor and ShardedTensor classes among those already imported
  // (an empty tuple without torch.distributed).
  nanobind::object distributed_types;
  nanobind::object distributed_to_sharded;  // (obj, where) -> dcpp.ShardedTensor

  static PyHelpers Get();

  bool IsTorchTensor(nanobind::handle obj) const;
  // A numpy array, or any object exporting DLPack.
  bool IsArray(nanobind::handle obj) const;
  // A DTensor or a torch ShardedTensor.
  bool IsDistributed(nanobind::handle obj) const;
};

// The dtype named by torch (without "torch."); raises ValueError naming
// `where` when dcpp does not know it.
DType DTypeFromName(const std::string& name, const std::string& where);

// Builds Values from Python objects. Tensors are borrowed: the converter
// keeps a reference to every array it borrows (and to every temporary it
// makes) in keep_alive(), which must outlive every use of the Values.
class ToValueConverter {
 public:
  enum class Purpose {
    kSave,      // tensors are read; any device (non-CPU tensors are copied to CPU)
    kLoadInto,  // tensors are written: must be writable; non-CPU ones go through
                // a CPU tensor copied back by FinishLoad()
  };

  ToValueConverter(const PyHelpers& helpers, Purpose purpose);

  // Converts a top-level state dict (a dict; TypeError otherwise), turning
  // Stateful objects at the top level into their state_dict().
  Value ConvertStateDict(nanobind::handle state_dict);

  // Converts one tensor-like object (torch tensor or array) into a borrowed
  // Tensor; `where` names it in errors.
  Tensor ConvertTensor(nanobind::handle obj, const std::string& where);

  // After a successful Load of the Value from ConvertStateDict into
  // `state_dict`: copies staged tensors back, replaces non-tensor leaves by
  // the loaded values and hands Stateful objects their loaded state.
  void FinishLoad(nanobind::handle state_dict, const Value& loaded, bool torch_tensors,
                  bool weights_only);

  // Copies every staged tensor (see Purpose::kLoadInto) into its
  // destination. FinishLoad calls it; call it directly when the Values were
  // filled by something other than Load.
  void CopyBack();

  std::vector<nanobind::object>& keep_alive() { return keep_; }

 private:
  Value Convert(nanobind::handle obj, int depth);
  Value ConvertKey(nanobind::handle key);
  Value ConvertSharded(nanobind::handle obj);
  Tensor ConvertTorch(nanobind::handle obj, const std::string& where);
  Tensor ConvertArray(nanobind::handle obj, const std::string& where);
  std::string Where() const;

  const PyHelpers& helpers_;
  Purpose purpose_;
  std::vector<std::string> path_;  // for messages: "['model']['w']"
  std::vector<nanobind::object> keep_;
  // (destination tensor, CPU staging tensor) pairs for kLoadInto.
  std::vector<std::pair<nanobind::object, nanobind::object>> copy_back_;
  // Top-level Stateful objects: position in the state dict, the object, and
  // the state_dict() that was converted in its place.
  struct StatefulEntry {
    size_t index;
    nanobind::object object;
    nanobind::object state;
  };
  std::vector<StatefulEntry> statefuls_;
};

struct FromValueOptions {
  bool torch_tensors = false;  // tensors as torch.Tensor (else numpy.ndarray)
  bool weights_only = true;    // how Opaque values are unpickled (see dcpp._types)
};

// The Python object for `value`. Tensors are exported without a copy: the
// array shares ownership of the Tensor's memory.
// `where` names the value in errors ("state_dict['w']").
nanobind::object FromValue(const Value& value, const PyHelpers& helpers,
                           const FromValueOptions& options, const std::string& where);

// Exports one tensor as FromValue does.
nanobind::object TensorToPython(const Tensor& tensor, const PyHelpers& helpers, bool torch_tensor,
                                const std::string& where);

}  // namespace dcpp::python

#endif  // DCPP_PYTHON_CONVERT_H_
