// Stream transforms: DCP's extension mechanism. A transform rewrites the
// bytes of one stored item (compression, byte shuffling, ...) and is recorded
// in the item's StorageInfo.transform_descriptors as "name/version", so a
// reader needs no configuration: it looks each descriptor up here and undoes
// it. Built-in transforms only (no registration from outside, no globals):
//   stream.zstd/1       zstd frame, as torch's ZStandard extension writes and
//                       reads it: dcpp writes exactly one frame per item (torch
//                       reads only the first) and reads any frame(s) back to back
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
  // zstd level (1 = fast; up to ZSTD_maxCLevel(); negative = faster; 0 =
  // zstd's default, 3). Outside ZSTD_minCLevel()..ZSTD_maxCLevel() is
  // InvalidArgument.
  int zstd_level = 1;
  // zstd worker threads for one item (still one frame): 0 picks by size
  // (none below 8 MiB or when the size is unknown, then one per 4 MiB up to
  // DefaultThreadCount()); 1 or more forces that many (1 = none, the calling
  // thread compresses). Callers that already run items in parallel should
  // pass 1. Negative is InvalidArgument.
  int zstd_workers = 0;
  // Width in bytes of the values in the stream (the tensor's element size;
  // 1 for pickled values). Used by dcpp.byteshuffle/1 (1..16, else
  // InvalidArgument); 1 makes it a copy.
  int element_size = 1;
  // Total input bytes if known (0 = unknown); lets zstd record the content
  // size and choose its workers. When set, writing a different total is
  // InvalidArgument (from Write or Finish), never a frame with a wrong size.
  uint64_t size_hint = 0;
};

// One item's byte stream passing through transforms, fed in pieces: Write
// any number of times, then Finish once; output goes to the sink as it is
// produced, in pieces of bounded size (at most about 1 MiB; a stage holds
// at most a few MiB whatever the input size, plus zstd's per-worker buffers
// when an encoder uses workers). After an error, or after Finish, every
// call returns an error (InvalidArgument, or the error itself for the
// failing call). Not thread-safe (one item, one thread at a time). Encoders
// and decoders are both such stages.
class StreamStage {
 public:
  virtual ~StreamStage() = default;
  Status Write(std::span<const uint8_t> data);
  Status Finish();

 protected:
  // The transform's own steps, called only while the stage is usable;
  // Write and Finish above keep the state.
  virtual Status DoWrite(std::span<const uint8_t> data) = 0;
  virtual Status DoFinish() = 0;

 private:
  enum class State { kOpen, kFinished, kFailed };
  State state_ = State::kOpen;
};
using Encoder = StreamStage;  // takes an item's bytes, emits what is stored
using Decoder = StreamStage;  // takes the stored bytes, emits the item's

// Creates the encoder chain for `descriptors` in application order (e.g.
// {"dcpp.byteshuffle/1", "stream.zstd/1"}): data written to the result goes
// through each transform in turn and ends in `sink`. An empty list passes
// bytes through. Sets *recorded to the descriptors as the metadata records
// them (reversed). InvalidArgument for an unknown or malformed descriptor or
// a version this build cannot write, listing the known descriptors.
Result<std::unique_ptr<Encoder>> NewEncoder(const std::vector<std::string>& descriptors,
                                            const EncodeOptions& options, ByteSink sink,
                                            std::vector<std::string>* recorded);

// Convenience: encodes a whole buffer through NewEncoder (size_hint 0 is
// taken as data.size(), so the zstd frame records the content size).
Result<std::string> EncodeAll(const std::vector<std::string>& descriptors,
                              const EncodeOptions& options, std::span<const uint8_t> data,
                              std::vector<std::string>* recorded);

// Creates the decoder chain undoing `recorded` (metadata order: recorded[0]
// is undone first): the stored bytes written to the result come out of
// `sink` as the original stream, in pieces of at most about 1 MiB, so an
// item of any size decodes in a few MiB of memory. Limits and errors as
// DecodeAll's (the limits apply to the bytes produced so far, the
// truncation checks at Finish); an error returned by `sink` is returned as
// it is. InvalidArgument for an unknown or malformed descriptor, before any
// bytes are written.
Result<std::unique_ptr<Decoder>> NewDecoder(const std::vector<std::string>& recorded,
                                            uint64_t max_output, ByteSink sink);

// Undoes `recorded` (metadata order: recorded[0] is undone first) on one
// item's stored bytes and returns the original stream (NewDecoder over a
// buffer). `max_output` caps the
// final size, and each intermediate at what max_output bytes can at most
// encode to through the transforms still to undo (untrusted input must not
// make us allocate without bound): exceeding it is DataLoss. Corrupt or
// truncated data is DataLoss naming the transform; an unknown or malformed
// descriptor or a version this build cannot read is InvalidArgument listing
// the known ones (as "stream.zstd/1, dcpp.byteshuffle/1"), reported before
// any decoding. An empty list returns the stored bytes. Thread-safe.
Result<std::string> DecodeAll(const std::vector<std::string>& recorded,
                              std::span<const uint8_t> stored, uint64_t max_output);

// An upper bound on the bytes that `stored_bytes` of an item stored through
// `recorded` can decode to, whatever those bytes are, so a reader can check
// sizes declared elsewhere before it allocates. Sound by the formats as
// this build's decoders accept them: dcpp.byteshuffle/1 keeps the size; a
// zstd block takes at least 4 bytes (3-byte header and one RLE byte) and
// yields at most 128 KiB (the format's cap, which the streaming decoder
// enforces although the header's size field could state 2 MiB; the
// one-shot ZSTD_decompress does not), so zstd expands at most 2^15 times.
// transform_test.cc checks this against hand-made frames. Saturates at
// UINT64_MAX.
// InvalidArgument for an unknown or malformed descriptor (as NewDecoder).
Result<uint64_t> MaxDecodedSize(const std::vector<std::string>& recorded, uint64_t stored_bytes);

// The descriptors this build knows, in a stable order.
std::vector<std::string> KnownDescriptors();

}  // namespace dcpp::transform

#endif  // DCPP_TRANSFORM_TRANSFORM_H_
