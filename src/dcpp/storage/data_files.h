// The storage layer of a DCP filesystem checkpoint: items to and from data
// files. Save and Load use it; so do adapters that keep another planner
// (torch's, through the Python package) and only hand dcpp the bytes.
//
// An item is stored as a torch.save archive (a tensor item: the tensor alone;
// a BYTE_IO item: whatever archive the caller made), optionally passed through
// stream transforms; StorageInfo records where and how.
#ifndef DCPP_STORAGE_DATA_FILES_H_
#define DCPP_STORAGE_DATA_FILES_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "dcpp/format/zip.h"
#include "dcpp/metadata.h"
#include "dcpp/storage/storage.h"
#include "dcpp/status.h"
#include "dcpp/tensor.h"

namespace dcpp::storage {

// One item for WriteDataFile: a tensor (written as its torch.save archive,
// bytes taken straight from `tensor`'s memory, which must stay valid and
// unchanged during the call) or ready-made bytes (`bytes`, written as is
// before transforms).
struct StoreItem {
  bool is_tensor = false;
  TensorView tensor;                   // is_tensor: any dense layout
  std::span<const uint8_t> bytes;      // !is_tensor
  std::string name;                    // for errors (the FQN)
  // If set, receives the CRC-32 of the bytes stored for this item (after
  // transforms), for the sidecar checksum file. Costs a pass over the item's
  // bytes: meant for BYTE_IO items, which are small.
  uint32_t* stored_crc32 = nullptr;
};

struct StoreOptions {
  bool checksums = true;                // CRC-32 in the tensor archives
  bool sync = true;                     // fsync the file before returning
  // With sync: ask the storage to start writing each large tensor's bytes
  // to the device as soon as they are in the file (WritableFile::
  // StartWriteback), so the final fsync overlaps the copying instead of
  // following it. Changes no byte and no guarantee.
  bool start_writeback = true;
  std::vector<std::string> transforms;  // descriptors, in application order
  int compression_level = 1;
  // zstd threads per item (transform::EncodeOptions::zstd_workers): 0 picks
  // by size; 1 when the caller already compresses several items at once.
  int zstd_workers = 0;
  // Threads writing the file's items at once (>= 1). Untransformed items
  // go straight to offsets computed beforehand, so several threads fill one
  // file: small items whole, a large tensor's bytes in 16 MiB ranges that
  // any thread takes (each checksummed slice by slice as it is written, the
  // CRCs combined). Buffered writes to one file serialize on its inode
  // lock, so extra threads here overlap checksumming with copying; separate
  // files are what run copies in parallel. Transformed items are written
  // one after another (their sizes are known only once compressed;
  // zstd_workers parallelizes those).
  int threads = 1;
};

// How `threads` writing threads (>= 1) spread over `files` data files:
// up to `threads` files at once, and the threads left over shared among
// them (StoreOptions::threads of each file).
struct WriterThreads {
  int parallel_files = 1;  // >= 1, even for no files
  int per_file = 1;        // >= 1
};
WriterThreads SplitWriterThreads(size_t files, int threads);

// Creates (or truncates) entry `name` of `storage` and writes `items` back to back in
// order, on up to options.threads threads. Returns one StorageInfo per item
// (relative_path = name). Calls on_item(i, bytes_in) after item i is
// written, one call at a time (from this thread, or from a writing thread
// when options.threads > 1). Memory: the caller's tensors are not copied
// (small items leave with their zip headers in one vectored write, large
// tensors straight from the caller's memory in 512 KiB slices, read once
// for the CRC and the copy); with transforms, a few MiB of buffers per
// call. The bytes are the same whatever options.threads. On error the partial file is
// left for the caller to remove, and the error names the item and the file
// (storage.Describe(name)); InvalidArgument when options.threads < 1.
// Thread-safe for distinct names (the storage is shared).
Result<std::vector<StorageInfo>> WriteDataFile(
    Storage& storage, const std::string& name, std::span<const StoreItem> items,
    const StoreOptions& options,
    const std::function<void(size_t, uint64_t)>& on_item = nullptr);

// What reads check beyond the archive's structure.
//  - verify_checksums: the CRC-32 each zip record of the item's torch.save
//    archive records (0 = none recorded, accepted: torch and dcpp write 0
//    with their CRC options off) is checked for every record read in full:
//    everything ReadItem returns, every chunk read whole, a large chunk's
//    small records and its storage record when a target asks for all of it
//    (computed over the bytes as they arrive, in cache-sized pieces, on the
//    reading thread), and chunks decoded as a stream (ChunkStream). A read
//    of only part of a large chunk (resharding) cannot check its storage
//    record: that part is NOT checked. zstd frames' content checksums are
//    checked whenever a frame has one, whatever this says.
//  - stored_crc32 (from the sidecar checksum file): the CRC-32 of the item's
//    stored bytes, checked by ReadItem when verify_checksums is on.
// A mismatch is DataLoss naming the item, the file and the item's offset.
struct ReadChecks {
  bool verify_checksums = true;
  std::optional<uint32_t> stored_crc32;
};

// Reads one item's stored bytes and undoes its transforms: the item's
// torch.save archive. `max_bytes` caps what the result may grow to (the
// decoder's allocation bound for untrusted transformed data). DataLoss when
// the recorded range lies outside the file, the transformed data is corrupt,
// storage.relative_path is not a valid entry name, or a checksum in `checks`
// does not match (bytes that are not a zip archive are returned unchecked:
// the caller's decoder reports them); errors name the item (`name`), the
// file and the item's offset. Thread-safe.
Result<std::string> ReadItem(Storage& location, const StorageInfo& storage,
                             std::string_view name, uint64_t max_bytes,
                             const ReadChecks& checks = {});

// Where a piece of a saved tensor chunk goes: `dst` receives the part of the
// chunk inside `box` (global coordinates, lying inside the chunk).
struct ChunkTarget {
  TensorView dst;               // shape == box sizes
  std::vector<int64_t> box_offsets;
  std::vector<int64_t> box_sizes;
};

// ReadChunk's default scratch: small enough to stay in the CPU cache.
inline constexpr uint64_t kReadScratchBytes = uint64_t{1} << 20;

// Fills `targets` from one saved tensor chunk: `chunk` (its global offsets,
// sizes and storage) of the tensor `name` with dtype `dtype`.
//  - Untransformed chunks above 1 MiB are read partially: a box that is one
//    run of the chunk in the target's own layout is read straight into the
//    target; any other is read span by span through at most `buffer_limit`
//    bytes of scratch (a column band reads the rows it crosses and copies
//    its part out). The default, 1 MiB, keeps the scratch in the CPU cache,
//    so the rows cost one pass over memory, not a write and a read-back.
//  - Transformed chunks above 1 MiB are decoded as they are read, their
//    tensor bytes copied into the targets as they pass (ChunkStream): a few
//    MiB whatever the chunk's size. One not stored row-major from element 0
//    (a permuted layout torch kept) is then read again and decoded whole.
//  - Smaller chunks are read (and decoded) whole.
//  - A chunk whose storage is Encoding::kRawTensor (a safetensors tensor)
//    holds the elements alone: its length must equal elements x element
//    size (DataLoss otherwise) and each target reads only its byte ranges,
//    as an untransformed archive's storage record is read.
// Checks the archive against the metadata (dtype, shape): DataLoss naming
// the tensor, its chunk and the file; corrupt transformed data is DataLoss
// naming the tensor and the file. Checksums as ReadChecks says (only
// verify_checksums is used here).
// Thread-safe (several chunks of one storage may be read at once).
Status ReadChunk(Storage& storage, std::string_view name, DType dtype, const ChunkMeta& chunk,
                 std::span<const ChunkTarget> targets, uint64_t buffer_limit = kReadScratchBytes,
                 const ReadChecks& checks = {});

// ---- For `dcpp verify`: every byte of a large chunk, on several threads ----

// Where a large untransformed chunk's storage record (its tensor bytes) lies
// and the CRC-32 its archive records for it.
struct StoredRecord {
  std::string relative_path;  // the data file
  uint64_t offset = 0;        // of the record's data, in the file
  uint64_t archive_offset = 0;  // of the record's data, in the item's archive
  uint64_t length = 0;
  format::zip::Entry entry;  // the record's zip entry (empty name: unknown)
  std::string where;         // the chunk, the file and the item's offset, for errors
};

// Opens an untransformed chunk and checks everything but its storage
// record's bytes, as ReadChunk does before a partial read: the archive's
// structure, its small records' CRC-32s, the tensor it describes against
// the metadata. Errors as ReadChunk's. (Transformed or small chunks are
// checked whole by ReadChunk with no targets.) Thread-safe.
Result<StoredRecord> DescribeStoredChunk(Storage& storage, std::string_view name, DType dtype,
                                         const ChunkMeta& chunk);

// The CRC-32 of `length` bytes at `offset` of the entry `relative_path`,
// read in cache-sized pieces into a per-thread buffer; combine pieces of one
// record computed on several threads with Crc32Combine. Thread-safe.
Result<uint32_t> CrcOfStoredRange(Storage& storage, std::string_view relative_path,
                                  uint64_t offset, uint64_t length);

// DataLoss naming the record if `crc` (of all of its bytes) differs from the
// CRC-32 its entry records (0 = none: OK).
Status CheckStoredRecord(const StoredRecord& record, uint32_t crc);

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_DATA_FILES_H_
