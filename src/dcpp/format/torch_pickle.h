// The data.pkl codec of torch.save archives: the bytes DCP stores for each
// tensor item (a torch.save of one tensor) and for each BYTE_IO item (a
// torch.save of an arbitrary Python object). What is written and accepted
// is summarized in docs/format.md ("Items" and "Reading").
//
// Writing produces what torch 2.13's torch.save produces: data.pkl byte for
// byte for a tensor (and for simple values), records in torch's order.
// Reading never executes anything: the pickle is parsed into inert nodes
// (format/pickle.h) and only then interpreted. Pure: no I/O.
#ifndef DCPP_FORMAT_TORCH_PICKLE_H_
#define DCPP_FORMAT_TORCH_PICKLE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/dtype.h"
#include "dcpp/format/zip.h"
#include "dcpp/status.h"
#include "dcpp/tensor.h"
#include "dcpp/value.h"

namespace dcpp::format {

// Builds the torch.save archive of one tensor, as DCP writes it for a tensor
// item: records data.pkl, .format_version ("1"), .storage_alignment ("64"),
// byteorder ("little"), data/0 (the tensor's bytes), version ("3\n"), under
// the archive name in `options` ("archive" by default). torch.save's
// informational .data/serialization_id record is not written; torch.load
// does not need it.
//
// data.pkl is the protocol-2 program torch.save emits for a CPU tensor with
// these dtype/shape/strides, storage offset 0 and requires_grad False:
// _rebuild_tensor_v2 over a legacy typed storage (numel in elements), or
// _rebuild_tensor_v3 over torch.storage.UntypedStorage (numel in bytes) plus
// the dtype for dtypes without a legacy storage class (uint16/32/64, float8).
//
// REQUIRES: view.is_dense() (contiguous or a permutation of contiguous, e.g.
// a transpose; the storage is then exactly the nbytes() bytes at view.data)
// and non-negative dims. data/0 borrows view.data when it is at least
// options.copy_threshold bytes: the memory must then outlive the Layout.
// Thread-safe (no shared state).
zip::Layout EncodeTensorArchive(const TensorView& view, const zip::WriteOptions& options = {});

// One tensor read from a tensor archive, pointing into the archive bytes.
struct DecodedTensor {
  DType dtype = DType::kFloat32;
  Shape shape;
  Shape strides;               // in elements; any non-negative layout torch allows
  int64_t storage_offset = 0;  // in elements of `dtype`
  // Where the storage record's data starts, from the start of the archive
  // (lets a reader that holds only part of the archive find the bytes).
  uint64_t storage_record_offset = 0;
  uint64_t storage_nbytes = 0;
  // The whole storage record, borrowed from the archive passed to
  // DecodeTensorArchive (same lifetime). Element [0, 0, ...] of the tensor is
  // at storage.data() + storage_offset * ElementSize(dtype); element idx is at
  // that position + sum(idx[d] * strides[d]) elements.
  zip::Bytes storage;
};

// Parses an in-memory tensor archive written by torch.save (or by
// EncodeTensorArchive). data.pkl must build exactly one tensor through
// torch._utils._rebuild_tensor_v2/_v3 (optionally wrapped in
// _rebuild_parameter); only the globals needed for that are accepted
// (anything else: InvalidArgument naming the global). Checks:
//   * a `version` (or `.data/version`) record is present and supported;
//   * `byteorder` is "little" or absent; "big" is Unimplemented here because
//     the result borrows the archive bytes and cannot swap them (the value
//     decoder, which copies, does swap);
//   * the storage record holds exactly the bytes the persistent id claims
//     (numel * element size) and the tensor's furthest addressed element,
//     storage_offset + sum((size[d]-1) * stride[d]), lies inside it (checked
//     arithmetic); otherwise DataLoss;
//   * tensor flags torch stores as metadata (conj/neg bits) and quantized or
//     unknown storage types are Unimplemented.
// Malformed zip or pickle bytes are DataLoss. Never crashes on any input.
// Thread-safe.
Result<DecodedTensor> DecodeTensorArchive(zip::Bytes archive);

// As DecodeTensorArchive, from a zip::Reader (e.g. one reading a file
// piecewise), without reading the storage record: the result's `storage` is
// empty; storage_record_offset and storage_nbytes say where the bytes are
// (checked to lie inside the archive, and to hold every element the tensor
// addresses). Thread-safe.
Result<DecodedTensor> DescribeTensorArchive(const zip::Reader& reader);

// Builds the complete torch.save archive (pickle protocol 2, as torch.save
// writes BYTE_IO items) of the Python object equivalent to `value`:
//   None/bool/int/float/str -> the same; bytes -> bytes (through
//   _codecs.encode, which torch.load(weights_only=True) accepts, also for the
//   empty bytes); list -> list; tuple -> tuple; Dict -> plain dict in
//   insertion order (keys may be any hashable value: None, bool, int, float,
//   str, bytes, tuples of those, tensors); Tensor -> a tensor rebuilt like
//   torch.save's, its bytes in record data/N (N in first-seen order; a
//   tensor occurring twice, same data/dtype/shape/strides, is pickled once
//   and referenced, as Python does for one object). Non-dense tensors are
//   copied into a contiguous storage first.
// Memoization follows Python's pickler (equal strings share one memo entry,
// as Python's interned strings do), so simple values come out byte-identical
// to torch.save's data.pkl and both torch.load(weights_only=False) and
// torch.load(weights_only=True) return an equal object.
// Errors: InvalidArgument for an Opaque anywhere (the caller writes an
// Opaque's blob verbatim instead), a ShardedTensor or Stateful anywhere (DCP
// stores shards as tensor items and saves a Stateful's state dict), a
// list/dict used as a dict key, a negative dim or stride, or containers
// nested deeper than 200; ResourceExhausted if a tensor copy cannot be
// allocated. Thread-safe.
Result<std::string> EncodeValueArchive(const Value& value);

// Reads the torch.save archive of a plain value (a DCP BYTE_IO item). The
// pickle is parsed with every global allowed (nothing is ever called, so
// this is safe) and interpreted: dict/list/tuple/str/bytes/int/float/bool/
// None; collections.OrderedDict -> Dict; _codecs.encode(str, 'latin1') and
// bytes()/bytearray(...) -> bytes; torch.Size -> tuple of ints; tensors
// (_rebuild_tensor_v2/_v3, _rebuild_parameter) -> a Tensor viewing an owned
// copy of its whole storage with the saved strides and storage offset;
// tensors on one storage share one copy (as in torch); a big-endian archive
// is byte-swapped to little-endian by each storage's first tensor's element
// size (complex: per component).
//
// When anything in the object has no Value equivalent (an instance of a user
// class, a numpy scalar, a set, a complex, a torch.device, an int beyond
// int64, an unhashable dict key, a sparse/quantized/conjugated tensor,
// containers nested deeper than 200 or more shared references than can be
// expanded, a zip or pickle feature dcpp's readers lack, ...), the result is
// Opaque{blob = all of `archive`, description = what it was, e.g.
// "an instance of mymod.MyClass"}: that is not an error.
// Corrupt or truncated archives, pickles and storage records are DataLoss
// whose message starts with `fqn_for_errors` (ResourceExhausted when a parser
// size cap is hit or a storage copy cannot be allocated). Allocates at most
// the sizes of the records it reads plus the parsed graph. Thread-safe.
Result<Value> DecodeValueArchive(zip::Bytes archive, std::string_view fqn_for_errors);


// ---- Whole torch.save files (a state dict saved with torch.save) ----

// One tensor of a torch.save object as its pickle describes it; its bytes
// are not read. Element idx is at byte storage_record_offset +
// (storage_offset + sum(idx[d] * strides[d])) * ElementSize(dtype) of the
// archive (checked to lie inside the storage record).
struct StoredTensorRef {
  DType dtype = DType::kFloat32;
  Shape shape;
  Shape strides;               // in elements, non-negative
  int64_t storage_offset = 0;  // in elements of `dtype`
  std::string storage_key;     // the record is "data/<storage_key>"
  uint64_t storage_record_offset = 0;  // where the record's data starts in the archive
  uint64_t storage_nbytes = 0;
  bool requires_grad = false;
};

// What DescribeObjectArchive found: the object torch.load would return, in
// which every tensor is a stand-in, and what each stand-in stands for.
struct DescribedObject {
  // Dicts (OrderedDict too), lists, tuples and plain values as
  // DecodeValueArchive builds them. Each tensor is a stand-in Tensor with
  // the saved dtype, shape and strides whose data() points at its
  // StoredTensorRef in `tensors` (NOT at elements: a stand-in's elements
  // must never be read; Find maps it back). A tensor object reached twice
  // (tied weights) gives two stand-ins for one StoredTensorRef.
  Value root;
  // In order of first appearance in the pickle.
  std::shared_ptr<const std::deque<StoredTensorRef>> tensors;

  // The ref `t` stands for, or null if `t` is not one of this object's
  // stand-ins.
  const StoredTensorRef* Find(const Tensor& t) const;
};

// Parses the data.pkl of a torch.save archive read through `reader`
// (e.g. piecewise from a file) without reading any storage record.
// The pickle is parsed with the globals torch.load(weights_only=True)
// needs for plain state dicts (torch._utils._rebuild_tensor_v2/_v3 and
// _rebuild_parameter, storage classes, dtypes, torch.Size,
// collections.OrderedDict, _codecs.encode, builtins bytes/bytearray);
// any other global is InvalidArgument naming it (nothing is ever called).
// An OrderedDict's attributes (nn.Module.state_dict()'s `_metadata`) are
// dropped, as DCP's flattening drops them.
// Checks as DescribeTensorArchive for each tensor: its storage record
// exists, has the persistent id's size and holds every element the tensor
// addresses (DataLoss otherwise). Unimplemented, naming what, for objects
// dcpp has no Value for (sets, complex numbers, torch.device, sparse or
// quantized tensors, tensors with conj/neg flags or Python attributes,
// big-endian archives with multi-byte tensors, shared references too many
// to expand). Other malformed input is DataLoss. Thread-safe.
Result<DescribedObject> DescribeObjectArchive(const zip::Reader& reader);

// The data.pkl of torch.save(value) for a writer that streams tensor bytes
// itself: as EncodeValueArchive pickles `value`, except that a tensor whose
// data() is null and numel() > 0 is a placeholder: it is pickled as a
// contiguous CPU tensor of its dtype and shape on a storage of its own
// whose bytes the caller supplies. Every tensor gets its own storage record
// data/N, N = 0, 1, ... in pickling order (tensors with data that occur
// twice are pickled once, as in EncodeValueArchive).
struct PickledObject {
  std::string data_pkl;
  struct Storage {
    std::string key;           // record "data/<key>"
    uint64_t nbytes = 0;
    const Tensor* placeholder = nullptr;  // the placeholder (in `value`), or null
    zip::Bytes bytes;          // a tensor with data: its bytes (kept alive below)
  };
  std::vector<Storage> storages;
  std::vector<Tensor> keep_alive;  // contiguous copies of non-dense tensors
};
// Errors as EncodeValueArchive's.
Result<PickledObject> EncodeObjectPickle(const Value& value);

// The records of a torch.save archive in torch.save's order: data.pkl,
// .format_version, .storage_alignment, byteorder, data/<key> for each of
// `storages` (name and bytes as given), version. The strings in the
// result's data spans are static or borrowed from `data_pkl` and
// `storages`, which must outlive it.
std::vector<zip::RecordSpec> TorchSaveRecords(std::string_view data_pkl,
                                              std::vector<zip::RecordSpec> storages);

}  // namespace dcpp::format

#endif  // DCPP_FORMAT_TORCH_PICKLE_H_
