// What a checkpoint's `.metadata` file says, as plain structs.
//
// DCP pickles these as Python dataclasses (Metadata, TensorStorageMetadata,
// BytesStorageMetadata, ChunkStorageMetadata, TensorProperties, MetadataIndex,
// _StorageInfo, StorageMeta). dcpp joins `storage_data` (MetadataIndex ->
// _StorageInfo) onto the entries it locates, so each chunk carries where its
// bytes live. docs/format.md lists exactly what is written and accepted.
#ifndef DCPP_METADATA_H_
#define DCPP_METADATA_H_

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "dcpp/dtype.h"
#include "dcpp/tensor.h"

namespace dcpp {

// Where one stored item's bytes are: [offset, offset + length) of
// `relative_path` (relative to the checkpoint directory), after undoing
// `transform_descriptors` (e.g. "stream.zstd/1"), first descriptor outermost.
struct StorageInfo {
  // How the bytes hold the item. kTorchSave: a torch.save archive (every DCP
  // item). kRawTensor: a tensor chunk's elements themselves, row-major and
  // little-endian, untransformed: a tensor of a safetensors file, described
  // by metadata dcpp builds from the file's header. DCP's .metadata has no
  // way to say kRawTensor, so such metadata is never written as .metadata.
  enum class Encoding : uint8_t { kTorchSave, kRawTensor };

  std::string relative_path;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::vector<std::string> transform_descriptors;
  Encoding encoding = Encoding::kTorchSave;

  friend bool operator==(const StorageInfo&, const StorageInfo&) = default;
};

// torch.memory_format as DCP encodes it (_MEM_FORMAT_ENCODING).
enum class MemoryFormat : uint8_t { kContiguous = 0, kChannelsLast = 1, kPreserve = 2 };

// TensorProperties; layout is always torch.strided (others are rejected).
struct TensorProperties {
  DType dtype = DType::kFloat32;
  bool requires_grad = false;
  MemoryFormat memory_format = MemoryFormat::kContiguous;
  bool pin_memory = false;

  friend bool operator==(const TensorProperties&, const TensorProperties&) = default;
};

// One saved piece of a tensor: its global offsets and sizes, and its bytes.
struct ChunkMeta {
  Shape offsets;
  Shape sizes;
  StorageInfo storage;

  friend bool operator==(const ChunkMeta&, const ChunkMeta&) = default;
};

// One element of a path from the state dict root: a dict key or a list index.
using PathElement = std::variant<std::string, int64_t>;
using ObjectPath = std::vector<PathElement>;

// One flattened state dict entry (one FQN).
struct EntryMeta {
  enum class Kind { kTensor, kBytes };

  std::string fqn;
  Kind kind = Kind::kTensor;
  // The path that produced `fqn` (from Metadata.planner_data); empty if the
  // checkpoint has no planner_data for it.
  ObjectPath path;

  // kTensor only.
  TensorProperties properties;
  Shape size;  // global shape
  std::vector<ChunkMeta> chunks;

  // kBytes only: where the torch.save bytes of the value are.
  StorageInfo storage;

  bool is_tensor() const { return kind == Kind::kTensor; }
  friend bool operator==(const EntryMeta&, const EntryMeta&) = default;
};

// StorageMeta. checkpoint_id is a string (DCP's writer pickles a
// pathlib.PosixPath; dcpp reads either and writes a str).
struct StorageMeta {
  std::optional<std::string> checkpoint_id;
  std::optional<std::string> save_id;
  std::optional<std::string> load_id;
  std::vector<std::string> modules;

  friend bool operator==(const StorageMeta&, const StorageMeta&) = default;
};

struct Metadata {
  // In the order of the file's state_dict_metadata (DCP's plan order).
  std::vector<EntryMeta> entries;
  // Absent in checkpoints written before storage_meta existed.
  std::optional<StorageMeta> storage_meta;
  // "1.0.0" for current writers; absent in older checkpoints.
  std::optional<std::string> version;

  // The entry for `fqn`, or nullptr. Linear; build an index for many lookups.
  const EntryMeta* Find(std::string_view fqn) const;

  friend bool operator==(const Metadata&, const Metadata&) = default;
};

// The DCP format version dcpp writes.
inline constexpr const char* kDcpVersion = "1.0.0";

}  // namespace dcpp

#endif  // DCPP_METADATA_H_
