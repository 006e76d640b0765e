// A `.metadata` held compactly, for loading at scale: what dcpp::Metadata
// says, with each tensor's chunks as one flat array of offsets and sizes and
// one array of storage records whose file names and transform lists are
// interned once per checkpoint.
//
// Why. dcpp::Metadata keeps every chunk as two heap vectors and a
// StorageInfo with its own strings: ~190 bytes per 2-d chunk, 1.2x the
// file's bytes for DCP's pickles, and at 1,024 ranks x 2,000 tensors (2
// million chunks) ~400 MB on every loading rank. Here a 2-d chunk costs 56
// bytes (32 of coordinates, 24 of storage), ~0.35x the file. The load
// planner (plan/compact_load_planner.h) plans over this form and keeps only
// the chunks a rank reads. Internal to dcpp (format/, plan/, engine/); the
// public form stays dcpp::Metadata.
//
// Pure: no I/O. Not thread-safe to mutate; const use from many threads is.
#ifndef DCPP_FORMAT_COMPACT_METADATA_H_
#define DCPP_FORMAT_COMPACT_METADATA_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/status.h"

namespace dcpp::format {

// Where one item's bytes are (StorageInfo), with its strings interned in the
// CompactMetadata that holds it.
struct CompactStorage {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint32_t file = 0;        // index into CompactMetadata::files
  uint32_t transforms = 0;  // index into CompactMetadata::transform_sets (0: none)
  StorageInfo::Encoding encoding = StorageInfo::Encoding::kTorchSave;

  friend bool operator==(const CompactStorage&, const CompactStorage&) = default;
};

// One entry (EntryMeta). Chunk k of a tensor entry with d = size.size()
// dimensions has its offsets at coords[2dk, 2dk + d) and its sizes at
// coords[2dk + d, 2dk + 2d), and its storage at chunks[k]; chunks keep the
// file's order (the order of EntryMeta::chunks).
struct CompactEntry {
  std::string fqn;
  EntryMeta::Kind kind = EntryMeta::Kind::kTensor;
  ObjectPath path;
  TensorProperties properties;  // kTensor only
  Shape size;                   // kTensor only
  std::vector<int64_t> coords;  // kTensor only
  std::vector<CompactStorage> chunks;  // kTensor only; its size is the chunk count
  CompactStorage storage;              // kBytes only

  bool is_tensor() const { return kind == EntryMeta::Kind::kTensor; }
  size_t num_chunks() const { return chunks.size(); }
  size_t dims() const { return size.size(); }
  // REQUIRES: k < num_chunks().
  std::span<const int64_t> offsets(size_t k) const {
    return {coords.data() + 2 * dims() * k, dims()};
  }
  std::span<const int64_t> sizes(size_t k) const {
    return {coords.data() + 2 * dims() * k + dims(), dims()};
  }
};

struct CompactMetadata {
  // In the order of the file's state_dict_metadata, as Metadata::entries.
  std::vector<CompactEntry> entries;
  // Distinct relative paths, and distinct transform descriptor lists
  // (transform_sets[0] is always the empty list).
  std::vector<std::string> files;
  std::vector<std::vector<std::string>> transform_sets{{}};
  std::optional<StorageMeta> storage_meta;
  std::optional<std::string> version;

  // The StorageInfo `s` stands for. REQUIRES: `s` belongs to this object.
  StorageInfo Expand(const CompactStorage& s) const;
  // Entry `e`'s chunk `k` as a ChunkMeta. REQUIRES: in range.
  ChunkMeta Chunk(size_t e, size_t k) const;
  // Entry `e` as an EntryMeta, with all its chunks or (`chunks` given) only
  // those, in the order given. REQUIRES: in range.
  EntryMeta ExpandEntry(size_t e) const;
  EntryMeta ExpandEntry(size_t e, std::span<const uint32_t> chunks) const;

  // The heap bytes this object holds (approximately: container capacities
  // and string lengths), for benchmarks and tests.
  size_t MemoryBytes() const;
};

// Compacts `md`, consuming it entry by entry (so the peak is about the
// larger of the two forms, not their sum).
CompactMetadata Compact(Metadata&& md);

// Expands `md` into a Metadata, consuming it entry by entry. The inverse of
// Compact: Expand(Compact(m)) == m.
Metadata Expand(CompactMetadata&& md);

// DecodeMetadata (metadata_codec.h), straight into the compact form: the
// same acceptance and errors, and Expand(*DecodeCompactMetadata(b)) ==
// *DecodeMetadata(b). Pickles DCP's writers produce are read by the
// streaming decoder without building a Metadata: peak memory about the
// result's MemoryBytes() (~0.35x the file for 2-d row shards) plus a few
// MiB, besides the input. Anything else goes through the general pickle VM
// and is then compacted. Thread-safe.
Result<CompactMetadata> DecodeCompactMetadata(std::span<const uint8_t> bytes);
inline Result<CompactMetadata> DecodeCompactMetadata(std::string_view bytes) {
  return DecodeCompactMetadata(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

}  // namespace dcpp::format

#endif  // DCPP_FORMAT_COMPACT_METADATA_H_
