// A single torch.save file (a zip archive holding `<archive>/data.pkl` and
// the storage records `<archive>/data/<key>`) read as a checkpoint: a dcpp
// Metadata synthesized from its data.pkl, so that the engine's load path
// (planning, partial reads, threads), inspect, verify and convert serve it
// as they serve DCP checkpoints and safetensors files.
//
// data.pkl is parsed by the safe pickle reader (format/torch_pickle.h,
// DescribeObjectArchive): nothing is executed, a global outside what a plain
// state dict needs is an error naming it, and no storage record is read.
// The object (a dict) is flattened by DCP's rules (plan/flatten.h), so the
// FQNs are those torch_save_to_dcp would write, each entry keeping its
// ObjectPath (DCP's planner_data) so the nesting can be rebuilt.
//  - A tensor becomes chunks whose StorageInfo is Encoding::kRawTensor: byte
//    ranges of its storage record in the file. A contiguous tensor (any
//    storage offset; several tensors may share one storage) is one chunk.
//    Another layout (a transpose, channels_last, a strided slice) is cut
//    into the largest boxes that are row-major runs of the storage (a
//    transposed matrix: one chunk per column), at most kMaxChunksPerTensor;
//    beyond that the load is Unimplemented naming the FQN.
//  - A non-tensor leaf becomes a BYTE_IO entry whose bytes are a torch.save
//    archive of the value (as DCP stores values), served from memory by the
//    storage NewTorchSaveStorage returns under kTorchSaveValuesName.
// Tensor bytes are never held in memory: reads go to the file by range.
//
// Thread safety: as the Storage's; the values entry is built once, under a
// lock, on first use.
#ifndef DCPP_STORAGE_TORCH_SAVE_LAYOUT_H_
#define DCPP_STORAGE_TORCH_SAVE_LAYOUT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "dcpp/metadata.h"
#include "dcpp/status.h"
#include "dcpp/storage/storage.h"

namespace dcpp::storage {

// The entry a torch.save storage shows beside the file: the archives of the
// file's non-tensor values, back to back (each BYTE_IO entry's StorageInfo
// is a range of it). Its presence is how DetectCheckpointFormat recognizes
// such a storage.
inline constexpr std::string_view kTorchSaveValuesName = ".dcpp-torch-save-values";

// Most chunks one non-contiguous tensor is cut into.
inline constexpr size_t kMaxChunksPerTensor = size_t{1} << 16;

// Whether the first bytes of a file are a zip archive's (a local header or,
// for an empty archive, an end record): how OpenStorage tells a torch.save
// file from other single files. `head` may be shorter than 4 bytes (false).
bool LooksLikeZip(std::string_view head);

// A read-only view of `dir` showing its entry `name` (a torch.save file)
// and kTorchSaveValuesName (computed from the file on first use; errors
// reading it are those of ReadTorchSaveMetadata). Writes, renames, removes
// and locks are Unimplemented.
std::unique_ptr<Storage> NewTorchSaveStorage(std::unique_ptr<Storage> dir, std::string name);

// The Metadata of the torch.save file in `storage` (a storage from
// NewTorchSaveStorage, or any storage holding kTorchSaveValuesName and
// exactly one other entry, the file). Entries in the order of the flattened
// state dict; tensors as described at the top; values' StorageInfo ranges
// of kTorchSaveValuesName; storage_meta absent, version "1.0.0". Errors name
// the file: DataLoss for a file that is not a zip archive, a truncated or
// inconsistent one, a missing data.pkl or storage record, offsets outside
// the file, a malformed pickle; InvalidArgument for a pickle naming a global
// outside the allow-list (e.g. os.system: "global 'posix.system' is not
// allowed") or an object that is not a dict or whose keys collide when
// flattened; Unimplemented for objects dcpp cannot represent (naming the
// FQN where known) or a file in torch's legacy (pre-zip) format.
Result<Metadata> ReadTorchSaveMetadata(Storage& storage);

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_TORCH_SAVE_LAYOUT_H_
