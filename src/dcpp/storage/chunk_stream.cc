#include "dcpp/storage/chunk_stream.h"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "dcpp/base/crc32.h"
#include "dcpp/format/checksums.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/format/zip.h"
#include "dcpp/plan/reshard.h"

namespace dcpp::storage {
namespace {

constexpr std::string_view kLocalHeaderSignature("PK\x03\x04", 4);
constexpr size_t kLocalHeaderSize = 30;

uint16_t U16At(const std::string& s, size_t at) {
  return static_cast<uint16_t>(static_cast<uint8_t>(s[at]) |
                               (static_cast<uint8_t>(s[at + 1]) << 8));
}

// "<archive>/data/<digits>": the name torch gives a storage record.
bool IsStorageRecordName(std::string_view name) {
  const size_t slash = name.rfind('/');
  if (slash == std::string_view::npos || slash + 1 == name.size()) return false;
  for (char c : name.substr(slash + 1))
    if (c < '0' || c > '9') return false;
  const std::string_view folder = name.substr(0, slash);
  return folder.size() > 5 && folder.substr(folder.size() - 5) == "/data";
}

Shape RowMajorStrides(const Shape& sizes) {
  Shape strides(sizes.size(), 1);
  for (size_t d = sizes.size(); d-- > 1;) strides[d - 1] = strides[d] * sizes[d];
  return strides;
}

}  // namespace

ChunkStream::ChunkStream(DType dtype, const ChunkMeta& chunk, std::span<const ChunkTarget> targets,
                         uint64_t window_bytes, bool verify_checksums)
    : dtype_(dtype),
      chunk_(chunk),
      targets_(targets),
      esize_(ElementSize(dtype)),
      record_bytes_(static_cast<uint64_t>(NumElements(chunk.sizes)) * ElementSize(dtype)),
      index_(chunk.sizes.size(), 0),
      verify_(verify_checksums) {
  const Shape& s = chunk_.sizes;
  if (record_bytes_ == 0 || s.empty()) {
    window_size_ = record_bytes_;  // no bytes, or a 0-d tensor: one element
    return;
  }
  // The outermost dimension whose one index step fits the window.
  uint64_t slab = esize_;
  for (size_t d = s.size(); d-- > 0;) {
    window_dim_ = d;
    slab_bytes_ = slab;
    if (d == 0 || slab * static_cast<uint64_t>(s[d]) > window_bytes) break;
    slab *= static_cast<uint64_t>(s[d]);
  }
  // Every dimension is > 0 here, so slab_bytes_ >= esize_ > 0.
  window_rows_ = std::clamp<int64_t>(static_cast<int64_t>(window_bytes / slab_bytes_), 1,
                                     s[window_dim_]);
  window_size_ = static_cast<uint64_t>(window_rows_) * slab_bytes_;
}

Status ChunkStream::Write(std::span<const uint8_t> piece) {
  Take(piece);
  return Status();
}

void ChunkStream::Take(std::span<const uint8_t> piece) {
  switch (state_) {
    case State::kHead:
      head_.append(reinterpret_cast<const char*>(piece.data()), piece.size());
      FindRecord();
      break;
    case State::kRecord:
      TakeRecordBytes(piece);
      break;
    case State::kTail:
      if (piece.size() > kMaxAroundBytes - tail_.size()) {
        state_ = State::kMisfit;
        break;
      }
      tail_.append(reinterpret_cast<const char*>(piece.data()), piece.size());
      break;
    case State::kMisfit:
      break;
  }
}

void ChunkStream::FindRecord() {
  while (true) {
    const size_t p = std::string_view(head_).find(kLocalHeaderSignature, scanned_);
    if (p == std::string_view::npos) {
      // A signature may straddle the end: rescan its first three bytes.
      scanned_ = std::max(scanned_, head_.size() >= 3 ? head_.size() - 3 : size_t{0});
      break;
    }
    scanned_ = p;
    if (p + kLocalHeaderSize > head_.size()) break;  // the rest of it is still to come
    const size_t name_size = U16At(head_, p + 26), extra_size = U16At(head_, p + 28);
    const size_t data = p + kLocalHeaderSize + name_size + extra_size;
    if (data > head_.size()) break;
    if (IsStorageRecordName(std::string_view(head_).substr(p + kLocalHeaderSize, name_size))) {
      const std::string rest = head_.substr(data);
      head_.resize(data);
      state_ = record_bytes_ == 0 ? State::kTail : State::kRecord;
      Take({reinterpret_cast<const uint8_t*>(rest.data()), rest.size()});
      return;
    }
    scanned_ = p + 1;
  }
  if (head_.size() > kMaxAroundBytes) state_ = State::kMisfit;
}

void ChunkStream::TakeRecordBytes(std::span<const uint8_t> piece) {
  if (verify_ && record_taken_ < record_bytes_) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(piece.size(),
                                                            record_bytes_ - record_taken_));
    record_crc_ = Crc32(piece.first(n), record_crc_);
    record_taken_ += n;
  }
  while (!piece.empty() && state_ == State::kRecord) {
    if (window_.empty() && piece.size() >= window_size_) {
      // A whole window in the piece: copy out of it directly.
      const size_t size = static_cast<size_t>(window_size_);  // FlushWindow moves on
      FlushWindow(piece.data());
      piece = piece.subspan(size);
      continue;
    }
    const size_t take =
        static_cast<size_t>(std::min<uint64_t>(piece.size(), window_size_ - window_.size()));
    window_.insert(window_.end(), piece.begin(), piece.begin() + take);
    piece = piece.subspan(take);
    if (window_.size() == window_size_) {
      FlushWindow(window_.data());
      window_.clear();
    }
  }
  if (!piece.empty()) Take(piece);  // past the record
}

void ChunkStream::FlushWindow(const uint8_t* data) {
  const Shape& s = chunk_.sizes;
  const size_t nd = s.size();
  plan::Box box{chunk_.offsets, Shape(nd, 1)};
  for (size_t d = 0; d < nd; ++d) {
    if (d < window_dim_) box.offsets[d] += index_[d];
    if (d == window_dim_) {
      box.offsets[d] += index_[d];
      box.sizes[d] = static_cast<int64_t>(window_size_ / slab_bytes_);
    }
    if (d > window_dim_) box.sizes[d] = s[d];
  }
  TensorView src;
  src.data = const_cast<uint8_t*>(data);
  src.dtype = dtype_;
  src.shape = box.sizes;
  src.strides = RowMajorStrides(box.sizes);
  for (const ChunkTarget& t : targets_) {
    const plan::Box target{t.box_offsets, t.box_sizes};
    auto overlap = plan::Intersect(box, target);
    if (!overlap) continue;
    if (!CopyTensor(plan::SubView(src, box, *overlap), plan::SubView(t.dst, target, *overlap))
             .ok())
      state_ = State::kMisfit;  // cannot happen for checked targets; never trust it
  }
  record_done_ += window_size_;
  if (record_done_ >= record_bytes_) {
    if (state_ == State::kRecord) state_ = State::kTail;
    return;
  }
  // The next window: along window_dim_, carrying into the dimensions before.
  if (nd == 0) return;
  index_[window_dim_] += box.sizes[window_dim_];
  for (size_t d = window_dim_; d > 0 && index_[d] >= s[d]; --d) {
    index_[d] = 0;
    ++index_[d - 1];
  }
  window_size_ =
      static_cast<uint64_t>(std::min(window_rows_, s[window_dim_] - index_[window_dim_])) *
      slab_bytes_;
}

bool ChunkStream::Describes(Status* crc) const {
  // The archive as it passed, with the record's bytes (already in the
  // targets) read as zeros: the description needs only what lies around it.
  const uint64_t head = head_.size(), size = head + record_bytes_ + tail_.size();
  auto read_at = [&](uint64_t offset, uint64_t length) -> Result<std::string> {
    if (offset > size || length > size - offset)
      return DataLossError("read past the end of the streamed archive");
    std::string out(static_cast<size_t>(length), '\0');
    for (uint64_t i = 0; i < length;) {
      const uint64_t at = offset + i;
      uint64_t n;
      if (at < head) {
        n = std::min(length - i, head - at);
        std::memcpy(out.data() + i, head_.data() + at, static_cast<size_t>(n));
      } else if (at < head + record_bytes_) {
        n = std::min(length - i, head + record_bytes_ - at);
      } else {
        n = length - i;  // the rest lies in the tail (checked above)
        std::memcpy(out.data() + i, tail_.data() + (at - head - record_bytes_),
                    static_cast<size_t>(n));
      }
      i += n;
    }
    return out;
  };
  auto reader = format::zip::Reader::OpenRanged(size, read_at, kMaxAroundBytes);
  if (!reader.ok()) return false;
  auto d = format::DescribeTensorArchive(*reader);
  if (!d.ok() || d->dtype != dtype_ || d->shape != chunk_.sizes || d->storage_offset != 0 ||
      d->storage_record_offset != head || d->storage_nbytes != record_bytes_)
    return false;
  if (record_bytes_ != 0) {
    const Shape expected = RowMajorStrides(d->shape);
    for (size_t k = 0; k < d->shape.size(); ++k)
      if (d->shape[k] > 1 && d->strides[k] != expected[k]) return false;
  }
  if (verify_) {
    // The storage record passed through record_crc_ (the reader sees zeros
    // there); every other record lies in head_ or tail_.
    const format::zip::Entry* storage = nullptr;
    for (const format::zip::Entry& e : reader->directory().entries) {
      auto at = reader->Offset(e.name);
      if (at.ok() && *at == head) storage = &e;
    }
    if (!storage) return false;  // cannot happen once Describe agreed
    *crc = format::CheckRecordCrc(*storage, record_crc_, head);
    if (crc->ok()) *crc = format::CheckArchiveCrcs(*reader, storage->name);
    if (!crc->ok()) *crc = crc->WithContext("torch.save tensor archive");
  }
  return true;
}

Status ChunkStream::Finish(bool* fits) {
  Status crc;
  *fits = state_ == State::kTail && Describes(&crc);
  return *fits ? crc : Status();
}

}  // namespace dcpp::storage
