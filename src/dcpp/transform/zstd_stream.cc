#include "dcpp/transform/zstd_stream.h"

#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <limits>
#include <utility>

#include "dcpp/base/thread_pool.h"

namespace dcpp::transform::internal {
namespace {

constexpr std::string_view kName = "stream.zstd/1";

// Output handed to the sink per call: a multiple of zstd's preferred output
// size (one block plus framing), about 1 MiB, so sink calls are few and
// large while memory stays bounded whatever the input size.
size_t MaxOutPiece() { return 8 * ZSTD_CStreamOutSize(); }

// Item size per worker when the count is ours to choose: zstd's jobs at
// level 1 are a few MiB, so smaller shares would leave workers idle.
constexpr uint64_t kBytesPerWorker = 4ull << 20;

std::string Prefixed(std::string_view what) {
  std::string s(kName);
  s += ": ";
  s += what;
  return s;
}

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const noexcept { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* d) const noexcept { ZSTD_freeDCtx(d); }
};
using CCtxPtr = std::unique_ptr<ZSTD_CCtx, CCtxFree>;
using DCtxPtr = std::unique_ptr<ZSTD_DCtx, DCtxFree>;

// One spare context per thread. A context is taken out while in use and put
// back afterwards, so two encoders alive on one thread never share one.
CCtxPtr& SpareCCtx() {
  thread_local CCtxPtr spare;
  return spare;
}
DCtxPtr& SpareDCtx() {
  thread_local DCtxPtr spare;
  return spare;
}

bool ZstdHasThreads() {
  const ZSTD_bounds b = ZSTD_cParam_getBounds(ZSTD_c_nbWorkers);
  return !ZSTD_isError(b.error) && b.upperBound > 0;
}

class ZstdEncoder final : public Encoder {
 public:
  ZstdEncoder(CCtxPtr cctx, int workers, size_t out_capacity, ByteSink sink)
      : cctx_(std::move(cctx)),
        workers_(workers),
        out_capacity_(out_capacity),
        out_(new uint8_t[out_capacity]),
        sink_(std::move(sink)) {}

  ~ZstdEncoder() override {
    // A context with workers owns threads and their buffers: not worth
    // keeping around idle, so only single-threaded ones are cached.
    if (workers_ == 0 && !SpareCCtx()) {
      ZSTD_CCtx_reset(cctx_.get(), ZSTD_reset_session_and_parameters);
      SpareCCtx() = std::move(cctx_);
    }
  }

  Status DoWrite(std::span<const uint8_t> data) override { return Compress(data, ZSTD_e_continue); }

  Status DoFinish() override {
    Status s = Compress({}, ZSTD_e_end);
    if (s.ok() && out_pos_ > 0) s = Emit();
    return s;
  }

 private:
  Status Emit() {
    Status s = sink_(std::span<const uint8_t>(out_.get(), out_pos_));
    out_pos_ = 0;
    return s;
  }

  static Status CompressError(size_t code) {
    const std::string name = ZSTD_getErrorName(code);
    switch (ZSTD_getErrorCode(code)) {
      case ZSTD_error_srcSize_wrong:
        return InvalidArgumentError(
            Prefixed("the bytes written differ from the size given in advance (" + name + ")"));
      case ZSTD_error_memory_allocation:
        return ResourceExhaustedError(Prefixed("compression: " + name));
      default:
        return InternalError(Prefixed("compression failed: " + name));
    }
  }

  // Feeds `data` with `mode`; for ZSTD_e_end, until the frame is complete.
  // Output is passed on only when the buffer is full (and by Finish), so the
  // sink sees few, large pieces.
  Status Compress(std::span<const uint8_t> data, ZSTD_EndDirective mode) {
    ZSTD_inBuffer in{data.data(), data.size(), 0};
    while (true) {
      ZSTD_outBuffer out{out_.get(), out_capacity_, out_pos_};
      const size_t remaining = ZSTD_compressStream2(cctx_.get(), &out, &in, mode);
      out_pos_ = out.pos;
      if (ZSTD_isError(remaining)) return CompressError(remaining);
      if (out_pos_ == out_capacity_) DCPP_RETURN_IF_ERROR(Emit());
      const bool done = mode == ZSTD_e_end ? remaining == 0 : in.pos == in.size;
      if (done) return Status();
    }
  }

  CCtxPtr cctx_;
  const int workers_;
  const size_t out_capacity_;
  std::unique_ptr<uint8_t[]> out_;  // uninitialised: zstd writes before we read
  size_t out_pos_ = 0;
  ByteSink sink_;
};

}  // namespace

int ZstdWorkersFor(int requested, uint64_t size_hint) {
  int workers = requested;
  if (requested == 0) {
    if (size_hint < kZstdWorkersMinSize) return 0;
    const uint64_t by_size = size_hint / kBytesPerWorker;
    workers = static_cast<int>(std::min<uint64_t>(by_size, DefaultThreadCount()));
  }
  if (workers <= 1 || !ZstdHasThreads()) return 0;
  const ZSTD_bounds b = ZSTD_cParam_getBounds(ZSTD_c_nbWorkers);
  return std::min(workers, b.upperBound);
}

uint64_t ZstdDeclaredSize(std::span<const uint8_t> stored) {
  const unsigned long long n = ZSTD_getFrameContentSize(stored.data(), stored.size());
  return n == ZSTD_CONTENTSIZE_UNKNOWN || n == ZSTD_CONTENTSIZE_ERROR ? 0 : n;
}

uint64_t ZstdEncodedBound(uint64_t size) {
  // ZSTD_compressBound is size + size/256 + a small constant; the checked
  // form also works where size_t is narrower than 64 bits.
  const uint64_t extra = size / 256 + (128 << 10);
  return size > std::numeric_limits<uint64_t>::max() - extra ? std::numeric_limits<uint64_t>::max()
                                                             : size + extra;
}

Result<std::unique_ptr<Encoder>> NewZstdEncoder(int level, int workers, uint64_t size_hint,
                                                ByteSink sink) {
  if (level < ZSTD_minCLevel() || level > ZSTD_maxCLevel()) {
    return InvalidArgumentError(Prefixed("compression level " + std::to_string(level) +
                                         " is outside " + std::to_string(ZSTD_minCLevel()) + ".." +
                                         std::to_string(ZSTD_maxCLevel())));
  }
  if (workers < 0) {
    return InvalidArgumentError(Prefixed("negative worker count " + std::to_string(workers)));
  }
  if (!sink) return InvalidArgumentError(Prefixed("no sink"));
  CCtxPtr cctx = std::move(SpareCCtx());
  if (!cctx) cctx.reset(ZSTD_createCCtx());
  if (!cctx) return ResourceExhaustedError(Prefixed("cannot allocate a compression context"));
  ZSTD_CCtx_reset(cctx.get(), ZSTD_reset_session_and_parameters);
  auto set = [&](ZSTD_cParameter p, int v, const char* what) -> Status {
    const size_t r = ZSTD_CCtx_setParameter(cctx.get(), p, v);
    if (ZSTD_isError(r)) {
      return InvalidArgumentError(Prefixed(std::string("cannot set ") + what + " to " +
                                           std::to_string(v) + ": " + ZSTD_getErrorName(r)));
    }
    return Status();
  };
  DCPP_RETURN_IF_ERROR(set(ZSTD_c_compressionLevel, level, "the compression level"));
  // 4 bytes a frame buy end-to-end detection of corrupt data on read; every
  // zstd decoder (torch's included) verifies it.
  DCPP_RETURN_IF_ERROR(set(ZSTD_c_checksumFlag, 1, "the checksum flag"));
  if (workers > 0) DCPP_RETURN_IF_ERROR(set(ZSTD_c_nbWorkers, workers, "the worker count"));
  if (size_hint > 0) {
    const size_t r = ZSTD_CCtx_setPledgedSrcSize(cctx.get(), size_hint);
    if (ZSTD_isError(r)) {
      return InvalidArgumentError(Prefixed("cannot pledge a content size of " +
                                           std::to_string(size_hint) + ": " +
                                           ZSTD_getErrorName(r)));
    }
  }
  size_t capacity = MaxOutPiece();
  if (size_hint > 0 && size_hint < capacity) {
    capacity = std::min(capacity, ZSTD_compressBound(static_cast<size_t>(size_hint)));
  }
  return std::unique_ptr<Encoder>(
      new ZstdEncoder(std::move(cctx), workers, capacity, std::move(sink)));
}

namespace {

// Decodes frames back to back as their bytes arrive, into a buffer of
// MaxOutPiece() bytes handed to the sink whenever it fills.
class ZstdDecoder final : public Decoder {
 public:
  ZstdDecoder(DCtxPtr dctx, uint64_t max_output, ByteSink sink)
      : dctx_(std::move(dctx)),
        max_output_(max_output),
        out_(new uint8_t[MaxOutPiece()]),
        sink_(std::move(sink)) {}

  ~ZstdDecoder() override {
    if (!SpareDCtx()) {
      ZSTD_DCtx_reset(dctx_.get(), ZSTD_reset_session_only);
      SpareDCtx() = std::move(dctx_);
    }
  }

  Status DoWrite(std::span<const uint8_t> data) override {
    ZSTD_inBuffer in{data.data(), data.size(), 0};
    while (true) {
      ZSTD_outBuffer ob{out_.get(), MaxOutPiece(), out_pos_};
      const size_t in_before = in.pos, out_before = out_pos_;
      const size_t ret = ZSTD_decompressStream(dctx_.get(), &ob, &in);
      if (ZSTD_isError(ret)) return Corrupt(ret, consumed_ + in.pos);
      produced_ += ob.pos - out_pos_;
      out_pos_ = ob.pos;
      if (produced_ > max_output_)
        return DataLossError(Prefixed("decoded size exceeds the limit of " +
                                      std::to_string(max_output_) + " bytes"));
      if (out_pos_ == MaxOutPiece()) DCPP_RETURN_IF_ERROR(Emit());
      if (ret == 0) {  // a frame ended and is fully flushed
        in_frame_ = false;
        ++frames_;
        frame_start_ = consumed_ + in.pos;
      } else if (in.pos > in_before || ob.pos > out_before) {
        // Only progress opens a frame: a call with no input left (after a
        // frame ended just as the buffer filled) asks for the next frame's
        // header, which need not come.
        in_frame_ = true;
      }
      // Done when zstd has taken all the input and had room to flush.
      if (in.pos == in.size && ob.pos < ob.size) break;
    }
    consumed_ += data.size();
    return Status();
  }

  Status DoFinish() override {
    if (consumed_ == 0) return DataLossError(Prefixed("no zstd frame (the stored item is empty)"));
    if (in_frame_)
      return DataLossError(Prefixed("truncated: the input ends inside the zstd frame starting at "
                                    "byte offset " +
                                    std::to_string(frame_start_) + " of " +
                                    std::to_string(consumed_) + " stored bytes"));
    return out_pos_ > 0 ? Emit() : Status();
  }

 private:
  Status Corrupt(size_t code, uint64_t at) {
    const std::string name = ZSTD_getErrorName(code);
    if (frames_ > 0 && ZSTD_getErrorCode(code) == ZSTD_error_prefix_unknown)
      return DataLossError(Prefixed("the bytes from byte offset " + std::to_string(frame_start_) +
                                    ", after the zstd frame(s), are not a zstd frame (" + name +
                                    ")"));
    return DataLossError(Prefixed("corrupt zstd frame starting at byte offset " +
                                  std::to_string(frame_start_) + " (error near byte " +
                                  std::to_string(at) + "): " + name));
  }

  Status Emit() {
    Status s = sink_(std::span<const uint8_t>(out_.get(), out_pos_));
    out_pos_ = 0;
    return s;
  }

  DCtxPtr dctx_;
  const uint64_t max_output_;
  std::unique_ptr<uint8_t[]> out_;  // uninitialised: zstd writes before we read
  size_t out_pos_ = 0;
  ByteSink sink_;
  uint64_t consumed_ = 0;     // stored bytes taken by earlier Writes
  uint64_t produced_ = 0;     // decoded bytes so far
  uint64_t frame_start_ = 0;  // stored offset where the current frame began
  uint64_t frames_ = 0;
  bool in_frame_ = false;     // the last frame seen is unfinished
};

}  // namespace

Result<std::unique_ptr<Decoder>> NewZstdDecoder(uint64_t max_output, ByteSink sink) {
  if (!sink) return InvalidArgumentError(Prefixed("no sink"));
  DCtxPtr dctx = std::move(SpareDCtx());
  if (!dctx) dctx.reset(ZSTD_createDCtx());
  if (!dctx) return ResourceExhaustedError(Prefixed("cannot allocate a decompression context"));
  ZSTD_DCtx_reset(dctx.get(), ZSTD_reset_session_only);
  return std::unique_ptr<Decoder>(new ZstdDecoder(std::move(dctx), max_output, std::move(sink)));
}

}  // namespace dcpp::transform::internal
