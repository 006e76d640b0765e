// Hugging Face safetensors checkpoints in a Storage: the layouts torch's
// HuggingFaceStorageWriter and transformers write, read as a dcpp Metadata
// so that the engine's load path (planning, partial reads, threads) serves
// them as it serves DCP checkpoints.
//
// Layouts read (entries at the top of the location; sub-folders such as
// torch's `sharded/` are not looked into, as torch's reader does not):
//   - one or more `*.safetensors` files (`model.safetensors`, or
//     `model-00001-of-00003.safetensors` ...), each tensor a whole tensor;
//   - the same with `model.safetensors.index.json` (transformers, torch's
//     rank-0 writer): only the files its "weight_map" names are read, and
//     each tensor it names must be in the file it says;
//   - torch's distributed save without consolidation
//     (`shard-00001-model-00001-of-00001.safetensors` ...): a file whose
//     "__metadata__" holds "DCP_SHARDING_INFO" (JSON: {fqn: {"saved_offsets":
//     [...]}}) stores pieces of tensors at those offsets; the pieces of one
//     name from all files make up the tensor, whose shape is the largest
//     offset + piece shape in each dimension (as torch's reader computes it).
//   - one `.safetensors` file opened by its path (OpenStorage shows it alone).
// Each piece becomes a chunk whose StorageInfo is Encoding::kRawTensor: its
// byte range in the file. Safetensors has no checksums, so loads check
// structure and bounds only.
//
// Thread safety: as the Storage's.
#ifndef DCPP_STORAGE_SAFETENSORS_LAYOUT_H_
#define DCPP_STORAGE_SAFETENSORS_LAYOUT_H_

#include <memory>
#include <string>
#include <string_view>

#include "dcpp/metadata.h"
#include "dcpp/status.h"
#include "dcpp/storage/storage.h"

namespace dcpp::storage {

// The index transformers and torch write beside multi-file models.
inline constexpr std::string_view kSafetensorsIndexName = "model.safetensors.index.json";
inline constexpr std::string_view kSafetensorsSuffix = ".safetensors";
// The __metadata__ key under which torch records each piece's offsets.
inline constexpr std::string_view kDcpShardingInfoKey = "DCP_SHARDING_INFO";

// What a location holds.
enum class CheckpointFormat { kNone, kDcp, kSafetensors, kTorchSave };

// kDcp if `.metadata` is there (it wins: a DCP checkpoint may sit beside
// exported weights); else kSafetensors if a top-level entry ends in
// ".safetensors"; else kTorchSave if it is a single torch.save file opened
// through NewTorchSaveStorage (storage/torch_save_layout.h: the location
// shows kTorchSaveValuesName); else kNone. NotFound if the location does not exist;
// InvalidArgument if it is not directory-like.
Result<CheckpointFormat> DetectCheckpointFormat(Storage& storage);

// Builds the Metadata of the safetensors files in `storage` (see the top of
// this file) from their headers alone: a few small reads per file. Entries
// in file-name order, then each file's data order; paths empty (the FQN is
// the key, as in a Hugging Face state dict). Errors name the file and the
// tensor: DataLoss for a damaged header, an index naming a missing file or
// tensor, DCP_SHARDING_INFO that does not cover a tensor, or one name
// stored with different dtypes or ranks; Unimplemented for a sub-byte dtype
// (F4, F6_*) dcpp cannot hold; NotFound when there is no .safetensors file.
Result<Metadata> ReadSafetensorsMetadata(Storage& storage);

// The metadata of whatever checkpoint `storage` holds: .metadata decoded
// (storage::ReadCheckpointMetadata), ReadSafetensorsMetadata or
// ReadTorchSaveMetadata; none:
// ReadCheckpointMetadata's NotFound.
Result<Metadata> ReadAnyCheckpointMetadata(Storage& storage);

// A view of `dir` showing only its entry `name` (reads only; writes,
// renames, removes and locks are Unimplemented): how a single .safetensors
// file opens as a checkpoint.
std::unique_ptr<Storage> NewSingleFileStorage(std::unique_ptr<Storage> dir, std::string name);

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_SAFETENSORS_LAYOUT_H_
