#include "dcpp/storage/data_files.h"

#include <algorithm>
#include <memory>
#include <mutex>

#include "dcpp/base/thread_pool.h"
#include "dcpp/storage/chunk_stream.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/format/zip.h"
#include "dcpp/storage/storage.h"
#include "dcpp/transform/transform.h"

namespace dcpp::storage {
namespace {

using format::zip::Bytes;

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

std::span<uint8_t> Writable(std::string& s) {
  return {reinterpret_cast<uint8_t*>(s.data()), s.size()};
}

// Items at most this long are read in one piece even when only part of them
// is needed: one read is cheaper than the several a partial read takes.
constexpr uint64_t kWholeReadBelow = uint64_t{1} << 20;
// Archive overhead allowed beyond a tensor chunk's bytes when a transformed
// item is decoded (headers, data.pkl): a cap on what corrupt data can make
// the decoder allocate, far above what torch or dcpp write.
constexpr uint64_t kArchiveSlack = uint64_t{64} << 20;
// A transformed chunk above kWholeReadBelow is read in blocks of this size
// and its decoded tensor bytes pass through windows of about this size.
constexpr uint64_t kStreamReadBytes = uint64_t{1} << 20;
constexpr uint64_t kStreamWindowBytes = uint64_t{256} << 10;

// An open data file and the byte range of one item in it, checked against
// the file's size (metadata is untrusted: never read or allocate what the
// file cannot hold).
struct ItemFile {
  std::unique_ptr<ReadableFile> file;
  std::string path;
};

Result<ItemFile> OpenItem(Storage& storage, const StorageInfo& s, std::string_view name) {
  if (Status bad = CheckEntryName(s.relative_path); !bad.ok())
    return DataLossError(Quoted(name) + ": metadata names data file '" + s.relative_path +
                         "': " + bad.message());
  const std::string path = storage.Describe(s.relative_path);
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, storage.OpenForRead(s.relative_path));
  DCPP_ASSIGN_OR_RETURN(uint64_t size, file->Size());
  if (s.offset > size || s.length > size - s.offset)
    return DataLossError(Quoted(name) + " is stored at bytes [" + std::to_string(s.offset) + ", " +
                         std::to_string(s.offset + s.length) + ") of " + path +
                         ", which has only " + std::to_string(size) + " bytes (truncated file?)");
  return ItemFile{std::move(file), std::move(path)};
}

// Copies the part of a saved chunk inside one target box, reading only the
// bytes the box spans. The chunk's storage record starts at `base` in `file`
// and is described by `src` (shape, strides, storage offset). A box that is
// one run of bytes in the target's layout is read straight into it; other
// boxes go through scratch memory, split along their outermost dimension
// where their span exceeds the scratch limit.
class BoxReader {
 public:
  BoxReader(const ReadableFile& file, uint64_t base, const format::DecodedTensor& src, uint64_t limit)
      : file_(file), base_(base), src_(src), esize_(ElementSize(src.dtype)), limit_(limit) {}

  // `lo`/`sz`: the box in chunk-local coordinates; `dst` has shape `sz`.
  Status Read(Shape lo, Shape sz, TensorView dst) {
    const size_t nd = sz.size();
    int64_t numel = 1;
    for (int64_t s : sz) numel *= s;
    if (numel == 0) return Status();
    int64_t first = src_.storage_offset, extent = 0;
    for (size_t d = 0; d < nd; ++d) {
      first += lo[d] * src_.strides[d];
      extent += (sz[d] - 1) * src_.strides[d];
    }
    const uint64_t span_bytes = static_cast<uint64_t>(extent + 1) * esize_;
    const uint64_t at = base_ + static_cast<uint64_t>(first) * esize_;
    if (SameContiguousLayout(sz, dst) && static_cast<int64_t>(span_bytes / esize_) == numel) {
      // The box is one run of the stored bytes in the target's own order:
      // read it straight into place, in one piece whatever its size.
      return file_.ReadAt(at, {static_cast<uint8_t*>(dst.data), span_bytes});
    }
    if (span_bytes > limit_ && numel > 1) {
      // Split along the dimension with the largest stride among those > 1.
      size_t d = nd;
      for (size_t k = 0; k < nd; ++k)
        if (sz[k] > 1 && (d == nd || src_.strides[k] > src_.strides[d])) d = k;
      const uint64_t per = static_cast<uint64_t>(std::max<int64_t>(src_.strides[d], 1)) * esize_;
      const int64_t step = std::max<int64_t>(1, static_cast<int64_t>(limit_ / per));
      for (int64_t j = 0; j < sz[d]; j += step) {
        Shape sub_lo = lo, sub_sz = sz;
        sub_lo[d] += j;
        sub_sz[d] = std::min(step, sz[d] - j);
        TensorView part = dst;
        part.data = static_cast<uint8_t*>(dst.data) + j * dst.strides[d] * int64_t(esize_);
        part.shape = sub_sz;
        DCPP_RETURN_IF_ERROR(Read(std::move(sub_lo), std::move(sub_sz), part));
      }
      return Status();
    }
    if (scratch_size_ < span_bytes) {
      scratch_.reset(new (std::nothrow) uint8_t[span_bytes]);
      if (!scratch_) return ResourceExhaustedError("cannot allocate a read buffer");
      scratch_size_ = span_bytes;
    }
    DCPP_RETURN_IF_ERROR(file_.ReadAt(at, {scratch_.get(), span_bytes}));
    TensorView from;
    from.data = scratch_.get();
    from.dtype = src_.dtype;
    from.shape = sz;
    from.strides = src_.strides;
    return CopyTensor(from, dst);
  }

 private:
  // True if the source box (strides of the stored tensor) and `dst` are both
  // row-major contiguous over `sz` (dimensions of size 1 do not matter).
  bool SameContiguousLayout(const Shape& sz, const TensorView& dst) const {
    int64_t expect = 1;
    for (size_t d = sz.size(); d-- > 0;) {
      if (sz[d] == 1) continue;
      if (src_.strides[d] != expect || dst.strides[d] != expect) return false;
      expect *= sz[d];
    }
    return true;
  }

  const ReadableFile& file_;
  const uint64_t base_;
  const format::DecodedTensor& src_;
  const size_t esize_;
  const uint64_t limit_;
  std::unique_ptr<uint8_t[]> scratch_;
  uint64_t scratch_size_ = 0;
};

// Decodes a transformed chunk as it is read, block by block, and lets a
// ChunkStream copy the tensor's bytes into the targets as they pass: a few
// MiB of memory whatever the chunk's size. Sets *fits to false (targets
// unspecified) when the archive is not laid out as ChunkStream assumes.
// Errors: the file's range or its transformed data is bad (DataLoss naming
// the item and the file), or the read failed.
Status StreamChunk(Storage& storage, std::string_view name, DType dtype,
                   const ChunkMeta& chunk, std::span<const ChunkTarget> targets, bool* fits) {
  DCPP_ASSIGN_OR_RETURN(ItemFile f, OpenItem(storage, chunk.storage, name));
  const uint64_t chunk_bytes = static_cast<uint64_t>(NumElements(chunk.sizes)) * ElementSize(dtype);
  ChunkStream stream(dtype, chunk, targets, kStreamWindowBytes);
  auto decoder = transform::NewDecoder(
      chunk.storage.transform_descriptors, chunk_bytes + kArchiveSlack,
      [&stream](std::span<const uint8_t> piece) { return stream.Write(piece); });
  const std::string where = Quoted(name) + " in " + f.path;
  if (!decoder.ok()) return decoder.status().WithContext(where);
  std::unique_ptr<uint8_t[]> block(new (std::nothrow) uint8_t[kStreamReadBytes]);
  if (!block) return ResourceExhaustedError("cannot allocate a read buffer").WithContext(where);
  for (uint64_t done = 0; done < chunk.storage.length;) {
    const uint64_t n = std::min(kStreamReadBytes, chunk.storage.length - done);
    const std::span<uint8_t> piece(block.get(), static_cast<size_t>(n));
    DCPP_RETURN_IF_ERROR(f.file->ReadAt(chunk.storage.offset + done, piece));
    DCPP_RETURN_IF_ERROR((*decoder)->Write(piece).WithContext(where));
    done += n;
  }
  DCPP_RETURN_IF_ERROR((*decoder)->Finish().WithContext(where));
  return stream.Finish(fits);
}

Status CheckDecoded(const format::DecodedTensor& d, DType dtype, const ChunkMeta& chunk,
                    const std::string& where) {
  if (d.dtype != dtype || d.shape != chunk.sizes)
    return DataLossError(where + ": stored tensor is " + std::string(TorchName(d.dtype)) + " " +
                         ShapeToString(d.shape) + " but the metadata says " +
                         std::string(TorchName(dtype)) + " " + ShapeToString(chunk.sizes));
  return Status();
}

// One item as the bytes that go to the file before transforms: for a tensor
// its torch.save archive (owned headers around the borrowed tensor bytes),
// otherwise the caller's bytes.
struct ItemBytes {
  format::zip::Layout layout;  // owns the archive's headers
  std::vector<Bytes> pieces;
  uint64_t size = 0;
  uint64_t in_bytes = 0;  // the caller's bytes (tensor bytes or `bytes`)
};

ItemBytes BytesOf(const StoreItem& item, const format::zip::WriteOptions& zip_options) {
  ItemBytes b;
  if (item.is_tensor) {
    b.layout = format::EncodeTensorArchive(item.tensor, zip_options);
    for (const auto& p : b.layout.pieces)
      b.pieces.push_back(p.is_borrowed ? p.borrowed : format::zip::AsBytes(p.owned));
    b.in_bytes = item.tensor.nbytes();
  } else {
    b.pieces.push_back(item.bytes);
    b.in_bytes = item.bytes.size();
  }
  for (const auto& p : b.pieces) b.size += p.size();
  return b;
}

std::string SavingWhere(const StoreItem& item, const std::string& path) {
  return "saving " + Quoted(item.name) + " to " + path;
}

// Untransformed items on several threads: every item's size is known before
// a byte is written (the archive's headers do not depend on the data), so
// each goes straight to its own offset.
Status WriteInParallel(WritableFile& file, const std::string& path, std::span<const StoreItem> items,
                       const StoreOptions& options, std::vector<StorageInfo>& infos,
                       const std::function<void(size_t, uint64_t)>& on_item) {
  format::zip::WriteOptions sizing;
  sizing.compute_crc32 = false;  // a CRC is a fixed-size field: same layout
  uint64_t offset = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    const uint64_t size = items[i].is_tensor
                              ? format::EncodeTensorArchive(items[i].tensor, sizing).total_size
                              : items[i].bytes.size();
    infos[i].offset = offset;
    infos[i].length = size;
    offset += size;
  }
  format::zip::WriteOptions zip_options;
  zip_options.compute_crc32 = options.checksums;
  std::mutex mu;  // on_item is called one item at a time
  return ParallelFor(items.size(), options.threads, [&](size_t i) -> Status {
    const ItemBytes b = BytesOf(items[i], zip_options);
    if (b.size != infos[i].length)
      return InternalError(SavingWhere(items[i], path) + ": the archive's size changed");
    DCPP_RETURN_IF_ERROR(
        file.WriteVAt(infos[i].offset, b.pieces).WithContext(SavingWhere(items[i], path)));
    if (on_item) {
      std::lock_guard<std::mutex> lock(mu);
      on_item(i, b.in_bytes);
    }
    return Status();
  });
}

}  // namespace

WriterThreads SplitWriterThreads(size_t files, int threads) {
  const size_t t = static_cast<size_t>(std::max(threads, 1));
  WriterThreads w;
  w.parallel_files = static_cast<int>(std::clamp<size_t>(files, 1, t));
  w.per_file = std::max(1, static_cast<int>(t) / w.parallel_files);
  return w;
}

Result<std::vector<StorageInfo>> WriteDataFile(
    Storage& storage, const std::string& name, std::span<const StoreItem> items,
    const StoreOptions& options, const std::function<void(size_t, uint64_t)>& on_item) {
  if (options.threads < 1)
    return InvalidArgumentError("StoreOptions.threads must be >= 1, got " +
                                std::to_string(options.threads));
  const std::string path = storage.Describe(name);
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<WritableFile> created, storage.CreateForWrite(name));
  WritableFile& file = *created;
  std::vector<StorageInfo> infos(items.size(), StorageInfo{name, 0, 0, {}});
  if (options.transforms.empty() && options.threads > 1 && items.size() > 1) {
    DCPP_RETURN_IF_ERROR(WriteInParallel(file, path, items, options, infos, on_item));
  } else {
    // One item after another: transformed sizes are known only once written.
    format::zip::WriteOptions zip_options;
    zip_options.compute_crc32 = options.checksums;
    uint64_t offset = 0;
    for (size_t i = 0; i < items.size(); ++i) {
      const StoreItem& item = items[i];
      const ItemBytes b = BytesOf(item, zip_options);
      StorageInfo& info = infos[i];
      info.offset = offset;
      const std::string where = SavingWhere(item, path);
      if (options.transforms.empty()) {
        DCPP_RETURN_IF_ERROR(file.WriteVAt(offset, b.pieces).WithContext(where));
        info.length = b.size;
      } else {
        transform::EncodeOptions eo;
        eo.zstd_level = options.compression_level;
        eo.zstd_workers = options.zstd_workers;
        eo.element_size = item.is_tensor ? static_cast<int>(ElementSize(item.tensor.dtype)) : 1;
        eo.size_hint = b.size;
        uint64_t written = 0;
        auto sink = [&](std::span<const uint8_t> out) -> Status {
          DCPP_RETURN_IF_ERROR(file.WriteAt(offset + written, out));
          written += out.size();
          return Status();
        };
        auto encoder =
            transform::NewEncoder(options.transforms, eo, sink, &info.transform_descriptors);
        if (!encoder.ok()) return encoder.status().WithContext(where);
        for (const auto& p : b.pieces) DCPP_RETURN_IF_ERROR((*encoder)->Write(p).WithContext(where));
        DCPP_RETURN_IF_ERROR((*encoder)->Finish().WithContext(where));
        info.length = written;
      }
      offset += info.length;
      if (on_item) on_item(i, b.in_bytes);
    }
  }
  if (options.sync) DCPP_RETURN_IF_ERROR(file.Sync());
  DCPP_RETURN_IF_ERROR(file.Close());
  return infos;
}

Result<std::string> ReadItem(Storage& location, const StorageInfo& storage,
                             std::string_view name, uint64_t max_bytes) {
  DCPP_ASSIGN_OR_RETURN(ItemFile f, OpenItem(location, storage, name));
  const bool transformed = !storage.transform_descriptors.empty();
  if (!transformed && storage.length > max_bytes)
    return DataLossError(Quoted(name) + " in " + f.path + " is " + std::to_string(storage.length) +
                         " bytes, more than the " + std::to_string(max_bytes) + " expected");
  std::string stored(storage.length, '\0');
  DCPP_RETURN_IF_ERROR(f.file->ReadAt(storage.offset, Writable(stored)));
  if (!transformed) return stored;
  auto decoded =
      transform::DecodeAll(storage.transform_descriptors, format::zip::AsBytes(stored), max_bytes);
  if (!decoded.ok()) return decoded.status().WithContext(Quoted(name) + " in " + f.path);
  return decoded;
}

Status ReadChunk(Storage& storage, std::string_view name, DType dtype, const ChunkMeta& chunk,
                 std::span<const ChunkTarget> targets, uint64_t buffer_limit) {
  const std::string where = Quoted(name) + " chunk at offsets " + ShapeToString(chunk.offsets) +
                            " (" + chunk.storage.relative_path + ")";
  const size_t nd = chunk.sizes.size();
  for (const ChunkTarget& t : targets) {
    bool ok = t.box_offsets.size() == nd && t.box_sizes.size() == nd &&
              t.dst.shape == t.box_sizes && t.dst.dtype == dtype && chunk.offsets.size() == nd;
    for (size_t d = 0; ok && d < nd; ++d)
      ok = t.box_offsets[d] >= chunk.offsets[d] && t.box_sizes[d] >= 0 &&
           t.box_offsets[d] + t.box_sizes[d] <= chunk.offsets[d] + chunk.sizes[d];
    if (!ok) return InvalidArgumentError(where + ": a read target lies outside the chunk");
  }
  const uint64_t chunk_bytes = static_cast<uint64_t>(NumElements(chunk.sizes)) * ElementSize(dtype);
  auto copy_from = [&](const TensorView& src) -> Status {
    for (const ChunkTarget& t : targets) {
      TensorView from = src;
      from.shape = t.box_sizes;
      auto* p = static_cast<uint8_t*>(src.data);
      for (size_t d = 0; d < nd; ++d)
        p += (t.box_offsets[d] - chunk.offsets[d]) * src.strides[d] *
             static_cast<int64_t>(ElementSize(dtype));
      from.data = p;
      DCPP_RETURN_IF_ERROR(CopyTensor(from, t.dst).WithContext(where));
    }
    return Status();
  };

  if (!chunk.storage.transform_descriptors.empty() && chunk_bytes > kWholeReadBelow) {
    bool fits = false;
    DCPP_RETURN_IF_ERROR(StreamChunk(storage, name, dtype, chunk, targets, &fits));
    if (fits) return Status();
    // Not laid out as DCP writers lay archives out: read it whole below,
    // which either succeeds or says what is wrong.
  }
  if (!chunk.storage.transform_descriptors.empty() || chunk.storage.length <= kWholeReadBelow) {
    DCPP_ASSIGN_OR_RETURN(std::string blob,
                          ReadItem(storage, chunk.storage, name, chunk_bytes + kArchiveSlack));
    auto decoded = format::DecodeTensorArchive(format::zip::AsBytes(blob));
    if (!decoded.ok()) return decoded.status().WithContext(where);
    DCPP_RETURN_IF_ERROR(CheckDecoded(*decoded, dtype, chunk, where));
    TensorView src;
    src.dtype = decoded->dtype;
    src.shape = decoded->shape;
    src.strides = decoded->strides;
    src.data = const_cast<uint8_t*>(decoded->storage.data()) +
               decoded->storage_offset * static_cast<int64_t>(ElementSize(src.dtype));
    return copy_from(src);
  }

  // A large untransformed chunk: read its archive's small records, then
  // only the bytes each target needs.
  DCPP_ASSIGN_OR_RETURN(ItemFile f, OpenItem(storage, chunk.storage, name));
  const uint64_t base = chunk.storage.offset;
  const ReadableFile& file = *f.file;
  auto read_at = [&file, base](uint64_t offset, uint64_t length) -> Result<std::string> {
    std::string out(length, '\0');
    DCPP_RETURN_IF_ERROR(file.ReadAt(base + offset, Writable(out)));
    return out;
  };
  constexpr uint64_t kMaxSmallRecord = uint64_t{16} << 20;
  auto reader = format::zip::Reader::OpenRanged(chunk.storage.length, read_at, kMaxSmallRecord);
  if (!reader.ok())
    return reader.status().WithContext("torch.save tensor archive").WithContext(where);
  auto described = format::DescribeTensorArchive(*reader);
  if (!described.ok()) return described.status().WithContext(where);
  DCPP_RETURN_IF_ERROR(CheckDecoded(*described, dtype, chunk, where));
  BoxReader box_reader(file, base + described->storage_record_offset, *described,
                       std::max<uint64_t>(buffer_limit, 1));
  for (const ChunkTarget& t : targets) {
    Shape lo(nd);
    for (size_t d = 0; d < nd; ++d) lo[d] = t.box_offsets[d] - chunk.offsets[d];
    DCPP_RETURN_IF_ERROR(box_reader.Read(std::move(lo), t.box_sizes, t.dst).WithContext(where));
  }
  return Status();
}

}  // namespace dcpp::storage
