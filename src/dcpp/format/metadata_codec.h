// The DCP `.metadata` file (a pickled torch.distributed.checkpoint Metadata)
// to and from dcpp::Metadata. What dcpp writes and accepts is summarized in
// docs/format.md (".metadata" and "Reading"). Pure: no I/O. Decoder in
// metadata_codec_decode.cc, encoder in metadata_codec_encode.cc.
#ifndef DCPP_FORMAT_METADATA_CODEC_H_
#define DCPP_FORMAT_METADATA_CODEC_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "dcpp/metadata.h"
#include "dcpp/status.h"

namespace dcpp::format {

// Reads a `.metadata` written by torch's DCP (DefaultSavePlanner +
// FileSystemWriter, any torch 2.x, pickle protocols 2-5) or by
// EncodeMetadata. Nothing in the pickle is executed: it is parsed into inert
// nodes and only these globals are accepted: the DCP metadata classes
// (Metadata, TensorStorageMetadata, BytesStorageMetadata,
// ChunkStorageMetadata, TensorProperties, _MEM_FORMAT_ENCODING,
// MetadataIndex, StorageMeta), filesystem._StorageInfo, the legacy _shard
// TensorProperties / MEM_FORMAT_ENCODING, torch.Size, torch dtypes,
// torch.serialization._get_layout, pathlib's Path classes (also under
// pathlib._local) and collections.OrderedDict.
//
// `storage_data` is joined onto the entries: a tensor chunk's StorageInfo is
// the record keyed by (fqn, chunk offsets), a bytes entry's the record keyed
// by (fqn, None), as torch looks them up. planner_data fills EntryMeta::path
// (empty when absent). Fields added in later torch releases (storage_meta,
// version, transform_descriptors, MetadataIndex.offset/index) may be
// missing and take their Python defaults; StorageMeta.checkpoint_id may be a
// str or a pickled pathlib path (its parts are joined into one string).
//
// Errors:
//   InvalidArgument: any other global (names it and says the file was not
//     written by DCP's default planner and FileSystemWriter);
//   Unimplemented: a layout other than torch.strided or a dtype dcpp lacks
//     (names the FQN);
//   DataLoss: a malformed pickle, objects of the wrong shape, a chunk or
//     bytes entry with no storage_data record, chunk offsets/sizes whose rank
//     differs from the tensor's, that are negative, or that reach beyond the
//     tensor's size (names the FQN);
//   ResourceExhausted: the graph would expand beyond a size proportional to
//     the input (hostile sharing through the pickle memo).
// Never crashes and never recurses without bound, whatever the input.
// Thread-safe.
//
// Speed and memory: the pickles DCP's writers produce (torch's, any
// protocol, and EncodeMetadata's) are read by a streaming decoder that
// builds the Metadata directly (metadata_codec_fast.cc): for a 512,000-chunk
// file ~1.2x the file's size in memory besides the input, >10x faster than
// Python's pickle.load of it. Anything else, and every error, goes through
// the general pickle VM (~40x the file in memory, capped at 64x), so the
// errors above are always the general path's. Files beyond the VM's caps
// (more than ~500,000 chunks) decode only through the fast path. A load
// decodes with DecodeCompactMetadata (compact_metadata.h) instead: the same
// decoder into a form ~0.4x the file (1.4x with the input, vs ~2.25x here).
Result<Metadata> DecodeMetadata(std::span<const uint8_t> bytes);
inline Result<Metadata> DecodeMetadata(std::string_view bytes) {
  return DecodeMetadata(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

// Writes `md` as the pickle (protocol 2) torch's DCP writes: the same classes,
// fields and state shapes, so `pickle.load` in torch returns an equal
// Metadata and torch.distributed.checkpoint loads the checkpoint. Specifics:
//   * planner_data = {fqn: tuple(path)} for entries with a non-empty path,
//     or None when no entry has one;
//   * storage_data = {MetadataIndex(fqn, chunk offsets, index=chunk
//     position): _StorageInfo} for tensor chunks and {MetadataIndex(fqn,
//     index=None): _StorageInfo} for bytes entries; transform_descriptors is
//     written only when non-empty;
//   * storage_meta as StorageMeta with checkpoint_id a str (never a pathlib
//     path). When `checkpoint_id_hint` is non-empty it fills a missing
//     checkpoint_id, and a missing storage_meta becomes
//     StorageMeta(checkpoint_id=hint); otherwise a missing one is None;
//   * version as given (None when absent).
// Globals, equal strings, layouts and memory-format enums are memoized as
// Python's pickler memoizes them, so large metadata stays compact and
// Python's own pickle.dumps(pickle.loads(output), protocol=2) reproduces the
// output byte for byte.
// REQUIRES: entry FQNs are unique (as Python dict keys are); the values are
// written as given, without DecodeMetadata's validation. Thread-safe.
std::string EncodeMetadata(const Metadata& md, const std::string& checkpoint_id_hint = "");

}  // namespace dcpp::format

#endif  // DCPP_FORMAT_METADATA_CODEC_H_
