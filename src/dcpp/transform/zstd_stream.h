// stream.zstd/1 on top of libzstd: the encoder and decoder behind the
// transform layer. Internal to the transform layer.
#ifndef DCPP_TRANSFORM_ZSTD_STREAM_H_
#define DCPP_TRANSFORM_ZSTD_STREAM_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "dcpp/status.h"
#include "dcpp/transform/transform.h"

namespace dcpp::transform::internal {

// Items below this size are compressed on the calling thread alone when the
// worker count is left to us: starting workers costs more than it saves.
inline constexpr uint64_t kZstdWorkersMinSize = 8ull << 20;

// zstd's worker threads for an item of `size_hint` bytes (0 = unknown) when
// the caller asked for `requested` (EncodeOptions::zstd_workers): 0 means
// "compress on the calling thread", n >= 2 means n workers. 0 as well when
// this libzstd was built without threads.
int ZstdWorkersFor(int requested, uint64_t size_hint);

// An encoder writing exactly one zstd frame (with a content checksum, and
// the content size when `size_hint` > 0) to `sink`, in pieces of at most
// about 1 MiB. With `size_hint` > 0 the frame pledges that size, and
// writing a different amount is InvalidArgument (from Write or Finish).
// `workers` as returned by ZstdWorkersFor. InvalidArgument for a level
// outside ZSTD_minCLevel()..ZSTD_maxCLevel(); ResourceExhausted when zstd
// cannot allocate. Compression contexts without workers are reused through
// a small per-thread cache, so creating encoders in a loop is cheap.
Result<std::unique_ptr<Encoder>> NewZstdEncoder(int level, int workers, uint64_t size_hint,
                                                ByteSink sink);

// The content size the zstd frame at the start of `stored` declares, or 0
// when it declares none or `stored` does not start with a zstd frame. A
// hint for sizing a buffer, never trusted as the real size.
uint64_t ZstdDeclaredSize(std::span<const uint8_t> stored);

// The most bytes one zstd frame of `size` input bytes takes (saturating at
// UINT64_MAX): what a compressed intermediate of a transform chain may be.
uint64_t ZstdEncodedBound(uint64_t size);

// A decoder for every zstd frame in the stored stream (one or more, back to
// back, as a streaming decoder reads them; skippable frames are skipped),
// emitting pieces of at most about 1 MiB. DataLoss naming "stream.zstd/1"
// for empty, truncated or corrupt input, bytes after the last frame that do
// not form a frame, a checksum mismatch, or more than `max_output` decoded
// bytes (noticed within 1 MiB of the limit). Frames needing a window above
// 128 MiB are refused (zstd's default decoder limit). Reuses a per-thread
// decoder context.
Result<std::unique_ptr<Decoder>> NewZstdDecoder(uint64_t max_output, ByteSink sink);

}  // namespace dcpp::transform::internal

#endif  // DCPP_TRANSFORM_ZSTD_STREAM_H_
