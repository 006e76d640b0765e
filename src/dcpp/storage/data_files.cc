#include "dcpp/storage/data_files.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>

#include "dcpp/base/crc32.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/format/checksums.h"
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
// A storage record read in full straight into its destination is read in
// pieces of this size, each checksummed right after it lands, while it is
// still in the reading thread's cache.
constexpr uint64_t kCrcPieceBytes = uint64_t{256} << 10;

// Where an item is, for checksum errors: the file and the item's offset.
std::string ItemAt(const std::string& path, const StorageInfo& s) {
  return path + " (item at byte " + std::to_string(s.offset) + ", " + std::to_string(s.length) +
         " bytes)";
}

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
  // `crc_entry` (may be null: nothing checked): the storage record's zip
  // entry, whose CRC-32 is checked when the reads cover the whole record.
  BoxReader(const ReadableFile& file, uint64_t base, const format::DecodedTensor& src,
            uint64_t limit, const format::zip::Entry* crc_entry = nullptr)
      : file_(file),
        base_(base),
        src_(src),
        esize_(ElementSize(src.dtype)),
        limit_(limit),
        crc_entry_(crc_entry) {}

  // After the last Read: DataLoss if the reads covered the whole storage
  // record, one after another, and its CRC-32 differs from the recorded
  // one. Reads that covered less (a partial read) are not checked.
  Status CheckCrc() const {
    if (!crc_entry_ || crc_next_ != src_.storage_nbytes || src_.storage_nbytes == 0)
      return Status();
    return format::CheckRecordCrc(*crc_entry_, crc_, src_.storage_record_offset);
  }

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
      return ReadRange(at, {static_cast<uint8_t*>(dst.data), span_bytes});
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
    DCPP_RETURN_IF_ERROR(ReadRange(at, {scratch_.get(), span_bytes}));
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

  // Reads `out` from file offset `at`. While the reads so far ran through
  // the storage record from its start without a gap, and this one continues
  // them, the bytes are checksummed piece by piece as they arrive.
  Status ReadRange(uint64_t at, std::span<uint8_t> out) {
    const uint64_t record_start = base_;
    if (!crc_entry_ || crc_entry_->crc32 == 0 || crc_next_ == UINT64_MAX ||
        at != record_start + crc_next_) {
      crc_next_ = UINT64_MAX;  // not one pass from the start: nothing to check
      return file_.ReadAt(at, out);
    }
    for (uint64_t done = 0; done < out.size();) {
      const uint64_t n = std::min<uint64_t>(kCrcPieceBytes, out.size() - done);
      const std::span<uint8_t> piece = out.subspan(done, n);
      DCPP_RETURN_IF_ERROR(file_.ReadAt(at + done, piece));
      crc_ = Crc32(piece, crc_);
      done += n;
    }
    crc_next_ += out.size();
    return Status();
  }

  const ReadableFile& file_;
  const uint64_t base_;
  const format::DecodedTensor& src_;
  const size_t esize_;
  const uint64_t limit_;
  const format::zip::Entry* const crc_entry_;
  uint32_t crc_ = 0;
  uint64_t crc_next_ = 0;  // record bytes checksummed so far; UINT64_MAX: gave up
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
                   const ChunkMeta& chunk, std::span<const ChunkTarget> targets, bool verify,
                   bool* fits) {
  DCPP_ASSIGN_OR_RETURN(ItemFile f, OpenItem(storage, chunk.storage, name));
  const uint64_t chunk_bytes = static_cast<uint64_t>(NumElements(chunk.sizes)) * ElementSize(dtype);
  ChunkStream stream(dtype, chunk, targets, kStreamWindowBytes, verify);
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
  return stream.Finish(fits).WithContext(Quoted(name) + " in " + ItemAt(f.path, chunk.storage));
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

uint32_t CrcOfPieces(const std::vector<Bytes>& pieces) {
  uint32_t crc = 0;
  for (const Bytes& p : pieces) crc = Crc32(p, crc);
  return crc;
}

std::string SavingWhere(const StoreItem& item, const std::string& path) {
  return "saving " + Quoted(item.name) + " to " + path;
}

// Untransformed items: every item's size is known before a byte is written
// (the archive's headers do not depend on the data), so each goes straight
// to its own offset, and a large tensor's bytes are split into ranges that
// any thread may write. Each range is checksummed in cache-sized slices just
// before the slice is written, so the tensor's bytes come from memory once
// (the CRC and the copy into the file share the pass) and the CRC-32 of one
// large tensor is spread over the threads (pieces joined with Crc32Combine).
// The archive's own bytes around the tensor data (headers, data descriptor,
// central directory: the only places the CRC appears) are written by the
// thread that finishes the item's last range. Each write holds the file's
// inode lock for one slice, not for a whole tensor, so threads sharing a
// file take turns copying while the others checksum.
constexpr uint64_t kWriteRangeBytes = uint64_t{16} << 20;  // one task
constexpr uint64_t kWriteSliceBytes = uint64_t{512} << 10;  // CRC'd, then written

struct PlannedItem {
  Bytes data;                    // the tensor bytes written in ranges (empty: whole item)
  uint64_t data_at = 0;          // their offset in the item's archive
  std::vector<uint32_t> range_crcs;
  std::atomic<size_t> ranges_left{0};
};

// Where the archive `b` holds `data` (borrowed): the piece's index and its
// offset in the archive; SIZE_MAX if no borrowed piece is exactly `data`.
std::pair<size_t, uint64_t> FindData(const ItemBytes& b, Bytes data) {
  uint64_t at = 0;
  for (size_t k = 0; k < b.pieces.size(); ++k) {
    if (b.layout.pieces[k].is_borrowed && b.pieces[k].data() == data.data() &&
        b.pieces[k].size() == data.size())
      return {k, at};
    at += b.pieces[k].size();
  }
  return {SIZE_MAX, 0};
}

Status WriteUntransformed(WritableFile& file, const std::string& path,
                          std::span<const StoreItem> items, const StoreOptions& options,
                          std::vector<StorageInfo>& infos,
                          const std::function<void(size_t, uint64_t)>& on_item) {
  // Sizing borrows every record it can (no copies of small tensors) and
  // skips the CRCs: neither changes the layout's size or offsets.
  format::zip::WriteOptions sizing;
  sizing.compute_crc32 = false;
  sizing.copy_threshold = 1;
  // Tensor data the final layout borrows (at least its copy_threshold) is
  // written in ranges; smaller items in one write.
  format::zip::WriteOptions zip_options;
  zip_options.compute_crc32 = options.checksums;
  const uint64_t ranged_bytes = zip_options.copy_threshold;
  std::vector<PlannedItem> planned(items.size());
  struct Task {
    size_t item;
    size_t range;  // SIZE_MAX: the whole item in one write
  };
  std::vector<Task> tasks;
  uint64_t offset = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    PlannedItem& p = planned[i];
    infos[i].offset = offset;
    if (!items[i].is_tensor) {
      infos[i].length = items[i].bytes.size();
    } else {
      const ItemBytes sized = BytesOf(items[i], sizing);
      infos[i].length = sized.size;
      const Bytes data(static_cast<const uint8_t*>(items[i].tensor.data),
                       items[i].tensor.nbytes());
      if (data.size() >= ranged_bytes) {
        const auto [piece, at] = FindData(sized, data);
        if (piece != SIZE_MAX) {
          p.data = data;
          p.data_at = at;
        }
      }
    }
    offset += infos[i].length;
    if (p.data.empty()) {
      tasks.push_back({i, SIZE_MAX});
      continue;
    }
    const size_t ranges = static_cast<size_t>((p.data.size() + kWriteRangeBytes - 1) / kWriteRangeBytes);
    p.range_crcs.assign(ranges, 0);
    p.ranges_left = ranges;
    for (size_t r = 0; r < ranges; ++r) tasks.push_back({i, r});
  }
  std::mutex mu;  // on_item is called one item at a time
  auto done = [&](size_t i, uint64_t in_bytes) {
    if (!on_item) return;
    std::lock_guard<std::mutex> lock(mu);
    on_item(i, in_bytes);
  };
  return ParallelFor(tasks.size(), options.threads, [&](size_t t) -> Status {
    const size_t i = tasks[t].item;
    const StoreItem& item = items[i];
    PlannedItem& p = planned[i];
    if (tasks[t].range == SIZE_MAX) {
      const ItemBytes b = BytesOf(item, zip_options);
      if (b.size != infos[i].length)
        return InternalError(SavingWhere(item, path) + ": the archive's size changed");
      DCPP_RETURN_IF_ERROR(
          file.WriteVAt(infos[i].offset, b.pieces).WithContext(SavingWhere(item, path)));
      if (item.stored_crc32) *item.stored_crc32 = CrcOfPieces(b.pieces);
      done(i, b.in_bytes);
      return Status();
    }
    const Bytes data = p.data;
    const uint64_t begin = tasks[t].range * kWriteRangeBytes;
    const uint64_t end = std::min<uint64_t>(begin + kWriteRangeBytes, data.size());
    uint32_t crc = 0;
    for (uint64_t at = begin; at < end; at += kWriteSliceBytes) {
      const Bytes slice = data.subspan(at, std::min(kWriteSliceBytes, end - at));
      if (options.checksums) crc = Crc32(slice, crc);
      DCPP_RETURN_IF_ERROR(file.WriteAt(infos[i].offset + p.data_at + at, slice)
                               .WithContext(SavingWhere(item, path)));
    }
    if (options.sync && options.start_writeback)
      file.StartWriteback(infos[i].offset + p.data_at + begin, end - begin);
    p.range_crcs[tasks[t].range] = crc;
    if (p.ranges_left.fetch_sub(1) != 1) return Status();
    // The item's last range: its CRC is known, so the archive's other bytes
    // can be laid out (with it) and written around the data.
    uint32_t whole = p.range_crcs[0];
    for (size_t r = 1; r < p.range_crcs.size(); ++r) {
      const uint64_t len = std::min<uint64_t>(kWriteRangeBytes, data.size() - r * kWriteRangeBytes);
      whole = Crc32Combine(whole, p.range_crcs[r], len);
    }
    format::zip::WriteOptions final_options = zip_options;
    final_options.known_crc32 = [&](Bytes record) -> std::optional<uint32_t> {
      if (record.data() == data.data() && record.size() == data.size()) return whole;
      return std::nullopt;
    };
    const ItemBytes b = BytesOf(item, final_options);
    const auto [data_piece, data_at] = FindData(b, data);
    if (b.size != infos[i].length || data_piece == SIZE_MAX || data_at != p.data_at)
      return InternalError(SavingWhere(item, path) + ": the archive's layout changed");
    uint64_t at = infos[i].offset;
    std::vector<Bytes> run;  // consecutive pieces other than the data
    for (size_t k = 0; k <= b.pieces.size(); ++k) {
      if (k == b.pieces.size() || k == data_piece) {
        if (!run.empty())
          DCPP_RETURN_IF_ERROR(file.WriteVAt(at, run).WithContext(SavingWhere(item, path)));
        for (const Bytes& r : run) at += r.size();
        run.clear();
        if (k < b.pieces.size()) at += b.pieces[k].size();
        continue;
      }
      run.push_back(b.pieces[k]);
    }
    done(i, b.in_bytes);
    return Status();
  });
}

// A large untransformed chunk opened for reading part of it: its archive's
// small records read and checked against the metadata (and their CRC-32s,
// when verifying), its storage record located.
struct LargeChunk {
  std::shared_ptr<const ReadableFile> file;  // shared with the reader's read_at
  std::string path;
  format::zip::Reader reader;
  format::DecodedTensor described;
  std::string checked_at;  // the chunk, the file and the item's offset
  size_t storage_index = SIZE_MAX;  // the storage record's entry, when verifying
  const format::zip::Entry* storage_entry() const {
    return storage_index < reader.directory().entries.size()
               ? &reader.directory().entries[storage_index]
               : nullptr;
  }
};

Result<LargeChunk> OpenLargeChunk(Storage& storage, std::string_view name, DType dtype,
                                  const ChunkMeta& chunk, const std::string& where, bool verify) {
  DCPP_ASSIGN_OR_RETURN(ItemFile f, OpenItem(storage, chunk.storage, name));
  const uint64_t base = chunk.storage.offset;
  std::shared_ptr<const ReadableFile> file = std::move(f.file);
  auto read_at = [file, base](uint64_t offset, uint64_t length) -> Result<std::string> {
    std::string out(length, '\0');
    DCPP_RETURN_IF_ERROR(file->ReadAt(base + offset, Writable(out)));
    return out;
  };
  constexpr uint64_t kMaxSmallRecord = uint64_t{16} << 20;
  auto reader = format::zip::Reader::OpenRanged(chunk.storage.length, read_at, kMaxSmallRecord);
  if (!reader.ok())
    return reader.status().WithContext("torch.save tensor archive").WithContext(where);
  if (verify) {
    // The small records first (data.pkl above all), so damage there reads
    // as what it is rather than as whatever the decoder makes of it.
    for (const format::zip::Entry& e : reader->directory().entries) {
      if (e.crc32 == 0 || e.name.rfind("data/", 0) == 0) continue;  // storage records: below
      auto bytes = reader->Read(e.name);
      auto at = reader->Offset(e.name);
      if (bytes.ok() && at.ok())
        DCPP_RETURN_IF_ERROR(format::CheckRecordCrc(e, Crc32(*bytes), *at)
                                 .WithContext("torch.save tensor archive")
                                 .WithContext(where + " in " + ItemAt(f.path, chunk.storage)));
    }
  }
  auto described = format::DescribeTensorArchive(*reader);
  if (!described.ok()) return described.status().WithContext(where);
  DCPP_RETURN_IF_ERROR(CheckDecoded(*described, dtype, chunk, where));
  LargeChunk c{file, f.path, std::move(*reader), std::move(*described), {}, SIZE_MAX};
  c.checked_at = where + " in " + ItemAt(c.path, chunk.storage);
  if (verify) {
    // The small records (data.pkl among them) now; the storage record as
    // its bytes arrive, if a target reads all of it.
    const auto& entries = c.reader.directory().entries;
    for (size_t i = 0; i < entries.size(); ++i) {
      auto at = c.reader.Offset(entries[i].name);
      if (at.ok() && *at == c.described.storage_record_offset) c.storage_index = i;
    }
    // Without the storage record's entry (cannot happen for an archive
    // Describe accepted) nothing is checked rather than reading it whole.
    if (const format::zip::Entry* e = c.storage_entry())
      DCPP_RETURN_IF_ERROR(format::CheckArchiveCrcs(c.reader, e->name).WithContext(c.checked_at));
  }
  return c;
}

// A chunk stored as its bare elements (a safetensors tensor): only the bytes
// each target spans are read, straight into the target when it is one run
// of them, else span by span through at most `buffer_limit` bytes.
Status ReadRawChunk(Storage& storage, std::string_view name, DType dtype, const ChunkMeta& chunk,
                    std::span<const ChunkTarget> targets, uint64_t buffer_limit,
                    const std::string& where) {
  const uint64_t chunk_bytes = static_cast<uint64_t>(NumElements(chunk.sizes)) * ElementSize(dtype);
  if (!chunk.storage.transform_descriptors.empty())
    return DataLossError(where + ": a raw tensor chunk cannot have stream transforms");
  if (chunk.storage.length != chunk_bytes)
    return DataLossError(where + ": stores " + std::to_string(chunk.storage.length) +
                         " bytes, but " + std::string(TorchName(dtype)) + " " +
                         ShapeToString(chunk.sizes) + " takes " + std::to_string(chunk_bytes));
  DCPP_ASSIGN_OR_RETURN(ItemFile f, OpenItem(storage, chunk.storage, name));
  format::DecodedTensor src;
  src.dtype = dtype;
  src.shape = chunk.sizes;
  src.strides = ContiguousStrides(chunk.sizes);
  src.storage_nbytes = chunk_bytes;
  BoxReader reader(*f.file, chunk.storage.offset, src, std::max<uint64_t>(buffer_limit, 1));
  const size_t nd = chunk.sizes.size();
  for (const ChunkTarget& t : targets) {
    Shape lo(nd);
    for (size_t d = 0; d < nd; ++d) lo[d] = t.box_offsets[d] - chunk.offsets[d];
    DCPP_RETURN_IF_ERROR(reader.Read(std::move(lo), t.box_sizes, t.dst).WithContext(where));
  }
  return Status();
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
  if (options.transforms.empty()) {
    DCPP_RETURN_IF_ERROR(WriteUntransformed(file, path, items, options, infos, on_item));
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
        if (item.stored_crc32) *item.stored_crc32 = CrcOfPieces(b.pieces);
      } else {
        transform::EncodeOptions eo;
        eo.zstd_level = options.compression_level;
        eo.zstd_workers = options.zstd_workers;
        eo.element_size = item.is_tensor ? static_cast<int>(ElementSize(item.tensor.dtype)) : 1;
        eo.size_hint = b.size;
        uint64_t written = 0;
        uint32_t stored_crc = 0;
        auto sink = [&](std::span<const uint8_t> out) -> Status {
          DCPP_RETURN_IF_ERROR(file.WriteAt(offset + written, out));
          written += out.size();
          if (item.stored_crc32) stored_crc = Crc32(out, stored_crc);
          return Status();
        };
        auto encoder =
            transform::NewEncoder(options.transforms, eo, sink, &info.transform_descriptors);
        if (!encoder.ok()) return encoder.status().WithContext(where);
        for (const auto& p : b.pieces)
          DCPP_RETURN_IF_ERROR((*encoder)->Write(p).WithContext(where));
        DCPP_RETURN_IF_ERROR((*encoder)->Finish().WithContext(where));
        info.length = written;
        if (item.stored_crc32) *item.stored_crc32 = stored_crc;
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
                             std::string_view name, uint64_t max_bytes, const ReadChecks& checks) {
  DCPP_ASSIGN_OR_RETURN(ItemFile f, OpenItem(location, storage, name));
  const bool transformed = !storage.transform_descriptors.empty();
  if (!transformed && storage.length > max_bytes)
    return DataLossError(Quoted(name) + " in " + f.path + " is " + std::to_string(storage.length) +
                         " bytes, more than the " + std::to_string(max_bytes) + " expected");
  std::string stored(storage.length, '\0');
  DCPP_RETURN_IF_ERROR(f.file->ReadAt(storage.offset, Writable(stored)));
  const std::string where = Quoted(name) + " in " + ItemAt(f.path, storage);
  if (checks.verify_checksums && checks.stored_crc32) {
    const uint32_t crc = Crc32(format::zip::AsBytes(stored));
    if (crc != *checks.stored_crc32)
      return DataLossError(where + ": checksum mismatch: the stored bytes' CRC-32 differs from "
                                   "the one the checksum file records");
  }
  if (transformed) {
    auto decoded = transform::DecodeAll(storage.transform_descriptors,
                                        format::zip::AsBytes(stored), max_bytes);
    if (!decoded.ok()) return decoded.status().WithContext(where);
    stored = std::move(*decoded);
  }
  if (checks.verify_checksums)
    DCPP_RETURN_IF_ERROR(format::CheckArchiveBytes(format::zip::AsBytes(stored)).WithContext(where));
  return stored;
}

Status ReadChunk(Storage& storage, std::string_view name, DType dtype, const ChunkMeta& chunk,
                 std::span<const ChunkTarget> targets, uint64_t buffer_limit,
                 const ReadChecks& checks) {
  const bool verify = checks.verify_checksums;
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

  if (chunk.storage.encoding == StorageInfo::Encoding::kRawTensor)
    return ReadRawChunk(storage, name, dtype, chunk, targets, buffer_limit, where);

  if (!chunk.storage.transform_descriptors.empty() && chunk_bytes > kWholeReadBelow) {
    bool fits = false;
    DCPP_RETURN_IF_ERROR(StreamChunk(storage, name, dtype, chunk, targets, verify, &fits));
    if (fits) return Status();
    // Not laid out as DCP writers lay archives out: read it whole below,
    // which either succeeds or says what is wrong.
  }
  if (chunk.storage.transform_descriptors.empty() && chunk.storage.length <= kWholeReadBelow) {
    // A small untransformed chunk: read whole into this thread's scratch,
    // which is reused from chunk to chunk (already faulted in, and in
    // cache), rather than into fresh memory zero-filled first and then
    // overwritten by the read.
    DCPP_ASSIGN_OR_RETURN(ItemFile f, OpenItem(storage, chunk.storage, name));
    thread_local std::unique_ptr<uint8_t[]> scratch;
    thread_local uint64_t scratch_size = 0;
    const uint64_t n = chunk.storage.length;
    if (scratch_size < n) {
      scratch.reset(new (std::nothrow) uint8_t[kWholeReadBelow]);
      scratch_size = scratch ? kWholeReadBelow : 0;
      if (!scratch) return ResourceExhaustedError("cannot allocate a read buffer").WithContext(where);
    }
    const std::span<uint8_t> blob(scratch.get(), static_cast<size_t>(n));
    DCPP_RETURN_IF_ERROR(f.file->ReadAt(chunk.storage.offset, blob));
    if (verify)
      DCPP_RETURN_IF_ERROR(format::CheckArchiveBytes(blob).WithContext(
          Quoted(name) + " in " + ItemAt(f.path, chunk.storage)));
    auto decoded = format::DecodeTensorArchive(blob);
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
  if (!chunk.storage.transform_descriptors.empty()) {
    ReadChecks whole;
    whole.verify_checksums = verify;
    DCPP_ASSIGN_OR_RETURN(std::string blob,
                          ReadItem(storage, chunk.storage, name, chunk_bytes + kArchiveSlack, whole));
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
  DCPP_ASSIGN_OR_RETURN(LargeChunk c, OpenLargeChunk(storage, name, dtype, chunk, where, verify));
  BoxReader box_reader(*c.file, chunk.storage.offset + c.described.storage_record_offset,
                       c.described, std::max<uint64_t>(buffer_limit, 1), c.storage_entry());
  for (const ChunkTarget& t : targets) {
    Shape lo(nd);
    for (size_t d = 0; d < nd; ++d) lo[d] = t.box_offsets[d] - chunk.offsets[d];
    DCPP_RETURN_IF_ERROR(box_reader.Read(std::move(lo), t.box_sizes, t.dst).WithContext(where));
  }
  return box_reader.CheckCrc().WithContext(c.checked_at);
}

Result<StoredRecord> DescribeStoredChunk(Storage& storage, std::string_view name, DType dtype,
                                         const ChunkMeta& chunk) {
  const std::string where = Quoted(name) + " chunk at offsets " + ShapeToString(chunk.offsets) +
                            " (" + chunk.storage.relative_path + ")";
  DCPP_ASSIGN_OR_RETURN(LargeChunk c, OpenLargeChunk(storage, name, dtype, chunk, where, true));
  StoredRecord r;
  r.relative_path = chunk.storage.relative_path;
  r.archive_offset = c.described.storage_record_offset;
  r.offset = chunk.storage.offset + c.described.storage_record_offset;
  r.length = c.described.storage_nbytes;
  if (const format::zip::Entry* e = c.storage_entry()) r.entry = *e;
  r.where = c.checked_at;
  return r;
}

Status CheckStoredRecord(const StoredRecord& record, uint32_t crc) {
  format::zip::Entry e = record.entry;
  if (e.name.empty()) return Status();
  return format::CheckRecordCrc(e, crc, record.archive_offset).WithContext(record.where);
}

Result<uint32_t> CrcOfStoredRange(Storage& storage, std::string_view relative_path,
                                  uint64_t offset, uint64_t length) {
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> file, storage.OpenForRead(relative_path));
  thread_local std::unique_ptr<uint8_t[]> buffer;
  if (!buffer) buffer.reset(new (std::nothrow) uint8_t[kCrcPieceBytes * 4]);
  if (!buffer) return ResourceExhaustedError("cannot allocate a read buffer");
  uint32_t crc = 0;
  for (uint64_t done = 0; done < length;) {
    const uint64_t n = std::min<uint64_t>(kCrcPieceBytes * 4, length - done);
    const std::span<uint8_t> piece(buffer.get(), static_cast<size_t>(n));
    DCPP_RETURN_IF_ERROR(file->ReadAt(offset + done, piece));
    crc = Crc32(piece, crc);
    done += n;
  }
  return crc;
}

}  // namespace dcpp::storage
