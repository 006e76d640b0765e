// Writing one torch.save file from entries whose tensor bytes are produced
// on demand (what `dcpp convert --to torch-save` does): the nested state
// dict torch's dcp_to_torch_save writes, streamed to disk.
#ifndef DCPP_ENGINE_TORCH_SAVE_WRITE_H_
#define DCPP_ENGINE_TORCH_SAVE_WRITE_H_

#include <functional>
#include <span>
#include <string>

#include "dcpp/metadata.h"
#include "dcpp/status.h"
#include "dcpp/storage/storage.h"
#include "dcpp/value.h"

namespace dcpp::engine {

// Receives the next bytes of a tensor's elements (row-major, the entry's
// dtype, little-endian), borrowed for the call only.
using BandSink = std::function<Status(std::span<const uint8_t> bytes)>;

// One entry of the state dict to write.
struct TorchSaveEntry {
  std::string fqn;   // for errors
  ObjectPath path;   // where it goes in the nested dict; empty: {fqn}
  bool is_tensor = false;
  // Tensor: dtype and shape, and `produce`, which must hand `put` all of
  // the tensor's bytes, in order, in pieces of any size (e.g. row bands read
  // from another checkpoint through a bounded buffer). Called once, from
  // one of the writer threads; several entries' produce run at once.
  DType dtype = DType::kFloat32;
  Shape shape;
  std::function<Status(const BandSink& put)> produce;
  // Not a tensor: the value (plain values, containers, tensors with data;
  // no Opaque, ShardedTensor or Stateful: InvalidArgument naming the FQN).
  Value value;
};

struct TorchSaveWriteOptions {
  int io_threads = 0;     // producers run at once; 0: DefaultThreadCount()
  bool sync = true;       // fsync the file and the directory
  bool overwrite = true;  // false: AlreadyExists if `name` exists
  bool checksums = true;  // CRC-32 of every record, as torch.save writes
};

// Writes `entries` as the torch.save file `name` in `dir`: the object is a
// dict built by placing each entry at its path in order (DCP's
// set_element: string elements make dicts, int elements lists), pickled as
// torch.save pickles it (each tensor a contiguous CPU tensor on a storage of
// its own, requires_grad False, as dcp_to_torch_save's loaded tensors are),
// records in torch.save's order (data.pkl first, then data/0, data/1, ...).
// The file's layout follows from the shapes alone, so each tensor's bytes go
// straight to their place with positional writes as they are produced, the
// CRC-32 computed on the way; descriptors and the central directory are
// written last. The file is written under a temporary name beside `name`,
// synced, and renamed over `name` only when complete: a failure removes the
// temporary and leaves an existing `name` untouched. Memory: data.pkl and
// the values, plus whatever the producers hold. Errors name the FQN and the
// file; a producer handing more or fewer bytes than the tensor has is
// Internal.
Status WriteTorchSave(std::span<const TorchSaveEntry> entries, storage::Storage& dir,
                      const std::string& name, const TorchSaveWriteOptions& options);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_TORCH_SAVE_WRITE_H_
