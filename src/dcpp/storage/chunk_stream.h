// Fills read targets from a saved tensor chunk whose torch.save archive
// arrives as a stream (the output of a transform decoder), without holding
// the archive: the storage record's bytes are copied into the targets
// window by window as they pass.
//
// A zip archive says where its records lie only in the central directory,
// at the very end, and torch writes no sizes in the local headers. So the
// stream is routed by the layout every DCP writer produces, and that
// assumption is checked once the whole archive has passed:
//   - the storage record is the first record after data.pkl whose local
//     header names "<archive>/data/<digits>"; its data starts where that
//     header ends;
//   - it holds the chunk's elements row-major, from element 0, in exactly
//     numel * element size bytes.
// Bytes before the record (data.pkl and small records) and after it (the
// central directory) are kept; Finish then reads the archive's own
// description of itself (format::DescribeTensorArchive, the same check a
// whole read makes) and compares. An archive laid out otherwise (a permuted
// layout, an unusual writer, a hostile file) is never trusted: Finish says
// so, and the caller reads the chunk whole instead, which either succeeds
// or names what is wrong.
//
// Checksums: the storage record's CRC-32 is computed as its bytes pass and,
// with the records around it (held anyway), compared at Finish with what
// the archive records (0 = none recorded: accepted).
#ifndef DCPP_STORAGE_CHUNK_STREAM_H_
#define DCPP_STORAGE_CHUNK_STREAM_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "dcpp/storage/data_files.h"
#include "dcpp/metadata.h"
#include "dcpp/status.h"
#include "dcpp/tensor.h"

namespace dcpp::storage {

class ChunkStream {
 public:
  // `targets` as for ReadChunk (checked by the caller to lie inside the
  // chunk); they must outlive the stream. Holds about `window_bytes` of
  // record bytes at a time, plus what lies around the record (refused above
  // kMaxAroundBytes).
  // `verify_checksums`: check the records' CRC-32s (see above).
  ChunkStream(DType dtype, const ChunkMeta& chunk, std::span<const ChunkTarget> targets,
              uint64_t window_bytes, bool verify_checksums = true);

  // Takes the next piece of the decoded archive (a transform::ByteSink).
  // Never fails: what does not fit the assumed layout is noted for Finish.
  Status Write(std::span<const uint8_t> piece);

  // After the last piece. OK: every target holds its part of the chunk, and
  // the archive, checked as a whole read checks it, is laid out as assumed.
  // Otherwise `*fits` is false and the targets hold nothing meaningful: the
  // caller must read the chunk whole. An archive that fits but whose CRC-32s
  // do not match (when checked) is DataLoss naming the record; the caller
  // adds the item and the file.
  Status Finish(bool* fits);

  // Bytes kept before or after the storage record, at most.
  static constexpr uint64_t kMaxAroundBytes = uint64_t{1} << 20;

 private:
  enum class State { kHead, kRecord, kTail, kMisfit };

  void Take(std::span<const uint8_t> piece);
  void FindRecord();
  void TakeRecordBytes(std::span<const uint8_t> piece);
  void FlushWindow(const uint8_t* data);  // window_size_ bytes
  // Whether the archive is laid out as assumed; if so and checksums are
  // checked, *crc says whether its records' CRC-32s match.
  bool Describes(Status* crc) const;

  const DType dtype_;
  const ChunkMeta& chunk_;
  const std::span<const ChunkTarget> targets_;
  const size_t esize_;
  const uint64_t record_bytes_;  // numel * element size
  State state_ = State::kHead;
  std::string head_;       // the archive up to the record's data
  size_t scanned_ = 1;     // head_ offsets below this hold no record header
  std::string tail_;       // the archive after the record
  uint64_t record_done_ = 0;
  // Windows: along dimension window_dim_, window_rows_ indices at a time,
  // the dimensions before it fixed (index_), those after it whole.
  size_t window_dim_ = 0;
  int64_t window_rows_ = 1;
  uint64_t slab_bytes_ = 0;  // one index step along window_dim_
  Shape index_;              // the current window's first index
  std::vector<uint8_t> window_;
  uint64_t window_size_ = 0;  // bytes the current window takes
  const bool verify_;
  uint32_t record_crc_ = 0;    // CRC-32 of the record bytes taken so far
  uint64_t record_taken_ = 0;  // record bytes taken (checksummed) so far
};

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_CHUNK_STREAM_H_
