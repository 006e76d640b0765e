#include "dcpp/transform/byte_shuffle.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace dcpp::transform::internal {
namespace {

constexpr std::string_view kName = "dcpp.byteshuffle/1";

// A fixed width lets the compiler keep the inner loop in registers; the
// generic loop is several times slower for the common widths 2 and 4.
template <int W>
void ShuffleFixed(const uint8_t* in, size_t n, uint8_t* out) {
  size_t i = 0;
#if defined(__SSE2__)
  if constexpr (W == 2) {
    // 16 values a step: even bytes via mask, odd bytes via shift, then pack.
    const __m128i low = _mm_set1_epi16(0x00FF);
    for (; i + 16 <= n; i += 16) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i + 16));
      const __m128i lo = _mm_packus_epi16(_mm_and_si128(a, low), _mm_and_si128(b, low));
      const __m128i hi = _mm_packus_epi16(_mm_srli_epi16(a, 8), _mm_srli_epi16(b, 8));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), lo);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + n + i), hi);
    }
  }
#endif
  for (; i < n; ++i) {
    for (int j = 0; j < W; ++j) out[j * n + i] = in[i * W + j];
  }
}

template <int W>
void UnshuffleFixed(const uint8_t* in, size_t n, uint8_t* out) {
  size_t i = 0;
#if defined(__SSE2__)
  if constexpr (W == 2) {
    for (; i + 16 <= n; i += 16) {
      const __m128i lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i));
      const __m128i hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + n + i));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), _mm_unpacklo_epi8(lo, hi));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i + 16), _mm_unpackhi_epi8(lo, hi));
    }
  }
#endif
  for (; i < n; ++i) {
    for (int j = 0; j < W; ++j) out[i * W + j] = in[j * n + i];
  }
}

void ShuffleGeneric(const uint8_t* in, size_t n, int w, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    for (int j = 0; j < w; ++j) out[j * n + i] = in[i * w + j];
  }
}

void UnshuffleGeneric(const uint8_t* in, size_t n, int w, uint8_t* out) {
  for (size_t i = 0; i < n; ++i) {
    for (int j = 0; j < w; ++j) out[i * w + j] = in[j * n + i];
  }
}

class ByteShuffleEncoder final : public Encoder {
 public:
  ByteShuffleEncoder(int width, int block_log2, ByteSink sink)
      : width_(width),
        block_size_(static_cast<size_t>(width) << block_log2),
        sink_(std::move(sink)) {
    pending_.reserve(block_size_);
    shuffled_.resize(block_size_);
    header_[0] = static_cast<uint8_t>(width);
    header_[1] = static_cast<uint8_t>(block_log2);
  }

  Status DoWrite(std::span<const uint8_t> data) override { return WriteImpl(data); }
  Status DoFinish() override { return FinishImpl(); }

 private:
  Status EmitHeaderOnce() {
    if (header_sent_) return Status();
    header_sent_ = true;
    return sink_(std::span<const uint8_t>(header_, kShuffleHeaderSize));
  }

  Status EmitBlock(const uint8_t* block, size_t size) {
    DCPP_RETURN_IF_ERROR(EmitHeaderOnce());
    ShuffleBlock(block, size, width_, shuffled_.data());
    return sink_(std::span<const uint8_t>(shuffled_.data(), size));
  }

  Status WriteImpl(std::span<const uint8_t> data) {
    // Top up a partly filled block first; then shuffle whole blocks straight
    // from the caller's buffer (no copy) and keep the rest for later.
    if (!pending_.empty()) {
      const size_t take = std::min(data.size(), block_size_ - pending_.size());
      pending_.insert(pending_.end(), data.begin(), data.begin() + take);
      data = data.subspan(take);
      if (pending_.size() < block_size_) return Status();
      DCPP_RETURN_IF_ERROR(EmitBlock(pending_.data(), block_size_));
      pending_.clear();
    }
    while (data.size() >= block_size_) {
      DCPP_RETURN_IF_ERROR(EmitBlock(data.data(), block_size_));
      data = data.subspan(block_size_);
    }
    pending_.insert(pending_.end(), data.begin(), data.end());
    return Status();
  }

  Status FinishImpl() {
    if (!pending_.empty()) {
      DCPP_RETURN_IF_ERROR(EmitBlock(pending_.data(), pending_.size()));
      pending_.clear();
    }
    return EmitHeaderOnce();  // an empty stream is the header alone
  }

  const int width_;
  const size_t block_size_;
  ByteSink sink_;
  uint8_t header_[kShuffleHeaderSize];
  bool header_sent_ = false;
  std::vector<uint8_t> pending_;   // < block_size_ bytes of the next block
  std::vector<uint8_t> shuffled_;  // one shuffled block, handed to the sink
};

}  // namespace

namespace {

// Runs `fixed(std::integral_constant<int, W>{})` for the widths with an
// unrolled loop and `generic()` for the others, then copies the bytes of a
// trailing partial value, which both directions leave in place.
template <typename Fixed, typename Generic>
void ForWidth(const uint8_t* in, size_t size, int width, uint8_t* out, Fixed fixed,
              Generic generic) {
  const size_t n = size / static_cast<size_t>(width);
  switch (width) {
    case 1:
      std::memcpy(out, in, n);
      break;
    case 2:
      fixed(std::integral_constant<int, 2>{}, n);
      break;
    case 4:
      fixed(std::integral_constant<int, 4>{}, n);
      break;
    case 8:
      fixed(std::integral_constant<int, 8>{}, n);
      break;
    case 16:
      fixed(std::integral_constant<int, 16>{}, n);
      break;
    default:
      generic(n);
      break;
  }
  const size_t whole = n * static_cast<size_t>(width);
  std::memcpy(out + whole, in + whole, size - whole);
}

}  // namespace

void ShuffleBlock(const uint8_t* in, size_t size, int width, uint8_t* out) {
  ForWidth(
      in, size, width, out, [&](auto w, size_t n) { ShuffleFixed<decltype(w)::value>(in, n, out); },
      [&](size_t n) { ShuffleGeneric(in, n, width, out); });
}

void UnshuffleBlock(const uint8_t* in, size_t size, int width, uint8_t* out) {
  ForWidth(
      in, size, width, out,
      [&](auto w, size_t n) { UnshuffleFixed<decltype(w)::value>(in, n, out); },
      [&](size_t n) { UnshuffleGeneric(in, n, width, out); });
}

Result<std::unique_ptr<Encoder>> NewByteShuffleEncoder(int width, int block_log2, ByteSink sink) {
  if (width < 1 || width > kShuffleMaxWidth) {
    return InvalidArgumentError(std::string(kName) + ": element size " + std::to_string(width) +
                                " is outside 1..16");
  }
  if (block_log2 < 0 || block_log2 > 24) {
    return InvalidArgumentError(std::string(kName) + ": block exponent " +
                                std::to_string(block_log2) + " is outside 0..24");
  }
  if (!sink) return InvalidArgumentError(std::string(kName) + ": no sink");
  return std::unique_ptr<Encoder>(new ByteShuffleEncoder(width, block_log2, std::move(sink)));
}

namespace {

// Reads the header, then unshuffles each block once it has fully arrived
// (the last one at Finish). Holds one block, allocated as its bytes come.
class ByteShuffleDecoder final : public Decoder {
 public:
  ByteShuffleDecoder(uint64_t max_output, ByteSink sink)
      : max_output_(max_output), sink_(std::move(sink)) {}

  Status DoWrite(std::span<const uint8_t> data) override {
    while (header_size_ < kShuffleHeaderSize && !data.empty()) {
      header_[header_size_++] = data.front();
      data = data.subspan(1);
      if (header_size_ == kShuffleHeaderSize) DCPP_RETURN_IF_ERROR(CheckHeader());
    }
    if (data.size() > max_output_ - payload_)
      return DataLossError(std::string(kName) + ": decoded size " +
                           std::to_string(payload_ + data.size()) + "+ exceeds the limit of " +
                           std::to_string(max_output_) + " bytes");
    payload_ += data.size();
    while (!data.empty()) {
      if (pending_.empty() && data.size() >= block_size_) {
        // A whole block in the caller's buffer: unshuffle it from there.
        DCPP_RETURN_IF_ERROR(EmitBlock(data.first(static_cast<size_t>(block_size_))));
        data = data.subspan(static_cast<size_t>(block_size_));
        continue;
      }
      const size_t take = static_cast<size_t>(
          std::min<uint64_t>(data.size(), block_size_ - pending_.size()));
      pending_.insert(pending_.end(), data.begin(), data.begin() + take);
      data = data.subspan(take);
      if (pending_.size() == block_size_) DCPP_RETURN_IF_ERROR(EmitPending());
    }
    return Status();
  }

  Status DoFinish() override {
    if (header_size_ < kShuffleHeaderSize)
      return DataLossError(std::string(kName) + ": stream of " + std::to_string(header_size_) +
                           " bytes is shorter than its 2-byte header");
    return pending_.empty() ? Status() : EmitPending();
  }

 private:
  Status CheckHeader() {
    const int width = header_[0], block_log2 = header_[1];
    if (width < 1 || width > kShuffleMaxWidth)
      return DataLossError(std::string(kName) + ": header byte 0 (element width) is " +
                           std::to_string(width) + ", expected 1..16");
    if (block_log2 > kShuffleMaxBlockLog2)
      return DataLossError(std::string(kName) + ": header byte 1 (block exponent) is " +
                           std::to_string(block_log2) + ", expected 0..30");
    width_ = width;
    // width <= 16 and block_log2 <= 30: the block size fits in 35 bits.
    block_size_ = static_cast<uint64_t>(width) << block_log2;
    return Status();
  }

  Status EmitBlock(std::span<const uint8_t> block) {
    unshuffled_.resize(block.size());
    UnshuffleBlock(block.data(), block.size(), width_, unshuffled_.data());
    return sink_(std::span<const uint8_t>(unshuffled_.data(), unshuffled_.size()));
  }

  Status EmitPending() {
    Status s = EmitBlock(pending_);
    pending_.clear();
    return s;
  }

  const uint64_t max_output_;
  ByteSink sink_;
  uint8_t header_[kShuffleHeaderSize] = {};
  size_t header_size_ = 0;
  int width_ = 1;
  uint64_t block_size_ = 1;
  uint64_t payload_ = 0;             // bytes after the header so far
  std::vector<uint8_t> pending_;     // < block_size_ bytes of the current block
  std::vector<uint8_t> unshuffled_;  // one block, handed to the sink
};

}  // namespace

Result<std::unique_ptr<Decoder>> NewByteShuffleDecoder(uint64_t max_output, ByteSink sink) {
  if (!sink) return InvalidArgumentError(std::string(kName) + ": no sink");
  return std::unique_ptr<Decoder>(new ByteShuffleDecoder(max_output, std::move(sink)));
}

}  // namespace dcpp::transform::internal
