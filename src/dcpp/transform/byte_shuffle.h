// dcpp.byteshuffle/1: regroups the bytes of fixed-width values so that byte k
// of every value in a block lies together (as HDF5's and blosc's shuffle
// filters do). Float tensors then compress much better: the sign/exponent
// bytes of weights repeat, their low mantissa bytes do not, and zstd's
// entropy coder sees the two kinds separately. The exact stream format is in
// docs/format.md ("Stream transforms"). Internal to the transform layer.
#ifndef DCPP_TRANSFORM_BYTE_SHUFFLE_H_
#define DCPP_TRANSFORM_BYTE_SHUFFLE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "dcpp/status.h"
#include "dcpp/transform/transform.h"

namespace dcpp::transform::internal {

// Stream header: [element width 1..16][block exponent 0..30]; a block holds
// width << exponent bytes (2^exponent values).
inline constexpr size_t kShuffleHeaderSize = 2;
inline constexpr int kShuffleMaxWidth = 16;
inline constexpr int kShuffleMaxBlockLog2 = 30;
// What this build writes: 2^18 values a block (512 KiB for 2-byte values).
// zstd codes each 128 KiB block with its own entropy tables, so a byte plane
// should span whole zstd blocks wherever the values start in the stream; with
// bf16 weights 2^16 values a block gain only 1% over no shuffle, 2^17 and
// more gain 14%.
inline constexpr int kShuffleDefaultBlockLog2 = 18;

// Shuffles one block: `size` bytes of `width`-byte values at `in` become all
// byte-0s, then all byte-1s, ... of the size / width whole values, followed
// by the size % width trailing bytes unchanged. `in` and `out` hold `size`
// bytes each and must not overlap. REQUIRES: 1 <= width <= 16.
void ShuffleBlock(const uint8_t* in, size_t size, int width, uint8_t* out);

// The inverse of ShuffleBlock for the same size and width.
void UnshuffleBlock(const uint8_t* in, size_t size, int width, uint8_t* out);

// An encoder that writes the header and then shuffled blocks of
// `width << block_log2` bytes to `sink` as they fill (the last block may be
// shorter). Holds one block of buffer. InvalidArgument unless
// 1 <= width <= 16 and 0 <= block_log2 <= 24 (bounded encoder memory).
Result<std::unique_ptr<Encoder>> NewByteShuffleEncoder(int width, int block_log2, ByteSink sink);

// A decoder for a dcpp.byteshuffle/1 stream, emitting one block at a time
// (it holds one block: a hostile header cannot make it allocate more than
// the bytes that arrive). DataLoss (naming the transform) for a missing or
// invalid header, or more than `max_output` decoded bytes.
Result<std::unique_ptr<Decoder>> NewByteShuffleDecoder(uint64_t max_output, ByteSink sink);

}  // namespace dcpp::transform::internal

#endif  // DCPP_TRANSFORM_BYTE_SHUFFLE_H_
