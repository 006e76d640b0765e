// Stream transforms: DCP's extension mechanism. A transform rewrites the
// bytes of one stored item (compression, byte shuffling, ...) and is recorded
// in the item's StorageInfo.transform_descriptors as "name/version", so a
// reader needs no configuration: it looks each descriptor up here and undoes
// it. Built-in transforms only (no registration from outside, no globals):
//   stream.zstd/1       zstd frame, as torch's ZStandard extension writes and
//                       reads it (any zstd frame(s) a streaming decoder accepts)
//   dcpp.byteshuffle/1  groups byte k of every element together (better zstd
//                       ratios on float data); format in docs/format.md
//
// Order. Encoders apply in the order the caller lists them; the metadata
// records the descriptors in the order a reader undoes them (the last one
// applied first), which is the order torch's FileSystemReader follows.
#ifndef DCPP_TRANSFORM_TRANSFORM_H_
#define DCPP_TRANSFORM_TRANSFORM_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/status.h"

namespace dcpp::transform {

// Receives encoded bytes, in order. The span is valid only during the call.
// A non-OK status aborts the encoding and is returned by the encoder.
using ByteSink = std::function<Status(std::span<const uint8_t>)>;

struct EncodeOptions {
  // zstd level (1 = fast; up to ZSTD_maxCLevel(); negative = faster).
  int zstd_level = 1;
  // zstd worker threads for one item: 0 picks by size (none below 8 MiB,
  // then up to DefaultThreadCount()); 1 or more forces that many (1 = none).
  int zstd_workers = 0;
  // Width in bytes of the values in the stream (the tensor's element size;
  // 1 for pickled values). Used by dcpp.byteshuffle/1; 1 makes it a copy.
  int element_size = 1;
  // Total input bytes if known (0 = unknown); lets zstd record the content
  // size and choose its workers.
  uint64_t size_hint = 0;
};

// Encodes one item's stream. Write any number of times, then Finish once;
// output goes to the sink as it is produced, in pieces of bounded size (the
// encoder holds at most a few MiB regardless of the input size). After an
// error the encoder is unusable. Not thread-safe (one item, one thread).
class Encoder {
 public:
  virtual ~Encoder() = default;
  virtual Status Write(std::span<const uint8_t> data) = 0;
  virtual Status Finish() = 0;
};

// Creates the encoder chain for `descriptors` in application order (e.g.
// {"dcpp.byteshuffle/1", "stream.zstd/1"}): data written to the result goes
// through each transform in turn and ends in `sink`. An empty list passes
// bytes through. Sets *recorded to the descriptors as the metadata records
// them (reversed). InvalidArgument for an unknown or malformed descriptor or
// a version this build cannot write, listing the known descriptors.
Result<std::unique_ptr<Encoder>> NewEncoder(const std::vector<std::string>& descriptors,
                                            const EncodeOptions& options, ByteSink sink,
                                            std::vector<std::string>* recorded);

// Convenience: encodes a whole buffer through NewEncoder.
Result<std::string> EncodeAll(const std::vector<std::string>& descriptors,
                              const EncodeOptions& options, std::span<const uint8_t> data,
                              std::vector<std::string>* recorded);

// Undoes `recorded` (metadata order: recorded[0] is undone first) on one
// item's stored bytes and returns the original stream. `max_output` caps
// every intermediate and the final size (untrusted input must not make us
// allocate without bound): exceeding it is DataLoss. Corrupt or truncated
// data is DataLoss naming the transform; an unknown descriptor or a version
// this build cannot read is InvalidArgument listing the known ones (as
// "stream.zstd/1, dcpp.byteshuffle/1"). Thread-safe.
Result<std::string> DecodeAll(const std::vector<std::string>& recorded,
                              std::span<const uint8_t> stored, uint64_t max_output);

// The descriptors this build knows, in a stable order.
std::vector<std::string> KnownDescriptors();

}  // namespace dcpp::transform

#endif  // DCPP_TRANSFORM_TRANSFORM_H_
