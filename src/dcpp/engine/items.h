// From a state dict to the items a save writes: one per FQN, tensors as views
// of the caller's memory and every other value encoded as its torch.save
// bytes. Shared by the save paths; no I/O.
#ifndef DCPP_ENGINE_ITEMS_H_
#define DCPP_ENGINE_ITEMS_H_

#include <string>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/status.h"
#include "dcpp/value.h"

namespace dcpp::engine {

struct WriteItem {
  std::string fqn;
  ObjectPath path;
  // Tensor items: the tensor to write, always dense (contiguous or a
  // permutation of it). A non-dense caller tensor is copied into an owning
  // contiguous one; otherwise this borrows the caller's memory.
  Tensor tensor;
  bool has_tensor = false;
  // Where the tensor sits in the global tensor (a plain tensor: at zeros,
  // global_shape = its shape; a shard of a ShardedTensor: its piece).
  Shape offsets;
  Shape global_shape;
  // BYTE_IO items: the complete torch.save archive of the value (or an
  // Opaque value's original bytes).
  std::string blob;
  // Filled in when the item has been written.
  StorageInfo storage;
  uint32_t stored_crc32 = 0;  // BYTE_IO items: CRC-32 of the stored bytes (sidecar)

  bool is_tensor() const { return has_tensor; }
  uint64_t nbytes() const { return has_tensor ? tensor.nbytes() : blob.size(); }
};

// Flattens `state_dict` (DCP's rules) and prepares one item per leaf (one
// per shard for a ShardedTensor), in flatten order. InvalidArgument names the
// FQN of a leaf that cannot be saved (negative dims or strides, shards that
// leave the global shape, overlap or mix dtypes, an unencodable value).
Result<std::vector<WriteItem>> PlanWriteItems(const Value& state_dict);

// Groups items into metadata entries by FQN, in first-seen order: one chunk
// per tensor item (with its StorageInfo), BYTE_IO entries as they are.
std::vector<EntryMeta> EntriesFromItems(const std::vector<WriteItem>& items);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_ITEMS_H_
