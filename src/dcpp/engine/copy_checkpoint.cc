// engine::CopyCheckpoint: a DCP checkpoint written from another one's
// entries, item by item through bounded buffers, committed once.
#include "dcpp/engine/copy_checkpoint.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>

#include "dcpp/base/crc32.h"
#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/float_cast.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/engine/commit.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/plan/validate.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/transform/transform.h"

namespace dcpp::engine {
namespace {

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// Bytes moved per positional read and write when copying stored bytes: large
// enough that the system calls cost nothing next to the copy, small enough
// to stay a bounded buffer per thread.
constexpr uint64_t kCopyBytes = uint64_t{8} << 20;

// One saved item of the output: a chunk of a tensor entry or a value entry.
struct Work {
  size_t entry = 0;
  size_t chunk = SIZE_MAX;  // SIZE_MAX: the entry is a value
  const StorageInfo* src = nullptr;
  bool copy = false;      // stored bytes copied as they are
  uint64_t bytes = 0;     // source-side bytes (progress and balancing)
};

// A growable buffer reused by one thread (see tools/convert.cc: fresh
// allocations of band size leave malloc's arenas larger than what is used).
class Scratch {
 public:
  uint8_t* Get(uint64_t bytes) {
    static uint8_t empty[8];
    if (bytes == 0) return empty;
    if (size_ < bytes) {
      buf_.reset();
      buf_.reset(new (std::nothrow) uint8_t[static_cast<size_t>(bytes)]);
      size_ = buf_ ? bytes : 0;
    }
    return buf_.get();
  }

 private:
  std::unique_ptr<uint8_t[]> buf_;
  uint64_t size_ = 0;
};

struct Shared {
  storage::Storage& src;
  storage::Storage& dst;
  std::span<const EntryMeta* const> entries;
  const CopyOptions& o;
  std::vector<std::string> recorded;  // descriptors the output's transforms record
  ProgressReporter& progress;
};

// One output data file, written front to back by one thread.
class FileWriter {
 public:
  FileWriter(const Shared& s, std::string name, storage::WritableFile& file)
      : s_(s), name_(std::move(name)), file_(file) {}

  // Copies the stored bytes of `run` (items lying back to back in one
  // source file) to the end of this file; fills each item's StorageInfo and,
  // for values, the CRC-32 of its stored bytes.
  Status CopyRun(std::span<const Work> run, std::vector<StorageInfo>& infos,
                 std::vector<uint32_t>& crcs, std::span<const size_t> ids) {
    const std::string& path = run.front().src->relative_path;
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::ReadableFile> in, s_.src.OpenForRead(path));
    const uint64_t begin = run.front().src->offset;
    uint64_t total = 0;
    for (const Work& w : run) total += w.src->length;
    uint8_t* buf = copy_.Get(std::min(total, kCopyBytes));
    if (!buf) return ResourceExhaustedError("cannot allocate a copy buffer");
    size_t item = 0;              // the item the next byte belongs to
    uint64_t item_left = run.empty() ? 0 : run[0].src->length;
    uint32_t crc = 0;
    auto finish_items = [&] {
      while (item < run.size() && item_left == 0) {
        crcs[ids[item]] = crc;
        crc = 0;
        s_.progress.Add(run[item].bytes, 1);
        if (++item < run.size()) item_left = run[item].src->length;
      }
    };
    finish_items();  // empty items first
    for (uint64_t done = 0; done < total;) {
      const uint64_t n = std::min(kCopyBytes, total - done);
      const std::span<uint8_t> piece(buf, static_cast<size_t>(n));
      DCPP_RETURN_IF_ERROR(in->ReadAt(begin + done, piece)
                               .WithContext("copying " + Quoted(Fqn(run[item])) + " from " +
                                            s_.src.Describe(path)));
      // Values' stored bytes are checksummed while in cache, for the
      // sidecar; tensor archives carry their own CRC-32s.
      for (uint64_t at = 0; at < n;) {
        const uint64_t take = std::min(item_left, n - at);
        if (run[item].chunk == SIZE_MAX) crc = Crc32(piece.subspan(at, take), crc);
        at += take;
        item_left -= take;
        finish_items();
      }
      DCPP_RETURN_IF_ERROR(file_.WriteAt(offset_ + done, piece)
                               .WithContext("writing " + s_.dst.Describe(name_)));
      done += n;
    }
    uint64_t at = offset_;
    for (size_t k = 0; k < run.size(); ++k) {
      infos[ids[k]] = StorageInfo{name_, at, run[k].src->length, run[k].src->transform_descriptors};
      at += run[k].src->length;
    }
    offset_ += total;
    return Status();
  }

  // Decodes one item and writes it again (output transforms, cast).
  Status Reencode(const Work& w, StorageInfo& info, uint32_t& crc) {
    const EntryMeta& e = *s_.entries[w.entry];
    if (w.chunk == SIZE_MAX) return ReencodeValue(e, info, crc);
    return ReencodeChunk(e, e.chunks[w.chunk], info).WithContext(
        "converting " + Quoted(e.fqn) + " chunk at " + ShapeToString(e.chunks[w.chunk].offsets));
  }

  uint64_t size() const { return offset_; }

 private:
  std::string Fqn(const Work& w) const { return s_.entries[w.entry]->fqn; }

  // Starts an item at the end of the file: bytes given to the returned
  // encoder go through the output's transforms to the file.
  Result<std::unique_ptr<transform::Encoder>> Begin(int element_size, uint64_t size_hint,
                                                    StorageInfo& info, uint32_t* crc) {
    info = StorageInfo{name_, offset_, 0, {}};
    written_ = 0;
    transform::EncodeOptions eo;
    eo.zstd_level = s_.o.save.compression_level;
    eo.zstd_workers = 1;  // the other threads are busy with other files
    eo.element_size = element_size;
    eo.size_hint = size_hint;
    if (crc) *crc = 0;
    auto sink = [this, crc](std::span<const uint8_t> out) -> Status {
      DCPP_RETURN_IF_ERROR(file_.WriteAt(offset_ + written_, out)
                               .WithContext("writing " + s_.dst.Describe(name_)));
      written_ += out.size();
      if (crc) *crc = Crc32(out, *crc);
      return Status();
    };
    return transform::NewEncoder(s_.o.save.transforms, eo, sink, &info.transform_descriptors);
  }

  Status End(transform::Encoder& enc, StorageInfo& info) {
    DCPP_RETURN_IF_ERROR(enc.Finish());
    info.length = written_;
    offset_ += written_;
    return Status();
  }

  Status ReencodeValue(const EntryMeta& e, StorageInfo& info, uint32_t& crc) {
    // The cap LoadAll uses for a value's archive (a decoder's allocation
    // bound against hostile transformed data).
    const uint64_t cap =
        std::min<uint64_t>(e.storage.length, uint64_t{1} << 32) * 64 + (uint64_t{64} << 20);
    DCPP_ASSIGN_OR_RETURN(std::string blob, storage::ReadItem(s_.src, e.storage, e.fqn, cap));
    DCPP_ASSIGN_OR_RETURN(auto enc, Begin(1, blob.size(), info, &crc));
    DCPP_RETURN_IF_ERROR(enc->Write(format::zip::AsBytes(blob)));
    DCPP_RETURN_IF_ERROR(End(*enc, info));
    s_.progress.Add(blob.size(), 1);
    return Status();
  }

  Status ReencodeChunk(const EntryMeta& e, const ChunkMeta& c, StorageInfo& info) {
    const DType from = e.properties.dtype;
    const DType to = s_.o.cast && IsCastableFloat(from) ? *s_.o.cast : from;
    const int64_t numel = NumElements(c.sizes);
    const uint64_t in_bytes = static_cast<uint64_t>(numel) * ElementSize(from);
    const uint64_t out_bytes = static_cast<uint64_t>(numel) * ElementSize(to);
    const uint64_t band = std::max<uint64_t>(s_.o.band_bytes, 1);
    format::zip::WriteOptions zo;
    zo.compute_crc32 = s_.o.save.checksums;
    // Banded only where the storage record is a borrowed piece of the
    // archive's layout (at least copy_threshold bytes).
    const bool whole = std::max(in_bytes, out_bytes) <= band || out_bytes < zo.copy_threshold ||
                       c.sizes.empty() || !c.storage.transform_descriptors.empty();
    if (whole) {
      // One read (a transformed chunk decodes once), one archive.
      const TensorView src = MakeView(read_.Get(in_bytes), from, c.sizes);
      if (!src.data) return ResourceExhaustedError("cannot allocate a read buffer");
      const storage::ChunkTarget target{src, c.offsets, c.sizes};
      DCPP_RETURN_IF_ERROR(storage::ReadChunk(s_.src, e.fqn, from, c, {&target, 1}));
      TensorView out = src;
      if (to != from) {
        out = MakeView(cast_.Get(out_bytes), to, c.sizes);
        if (!out.data) return ResourceExhaustedError("cannot allocate a cast buffer");
        CastFloats(src, out);
      }
      const format::zip::Layout layout = format::EncodeTensorArchive(out, zo);
      DCPP_ASSIGN_OR_RETURN(
          auto enc, Begin(static_cast<int>(ElementSize(to)), layout.total_size, info, nullptr));
      for (const auto& p : layout.pieces)
        DCPP_RETURN_IF_ERROR(
            enc->Write(p.is_borrowed ? p.borrowed : format::zip::AsBytes(p.owned)));
      DCPP_RETURN_IF_ERROR(End(*enc, info));
      s_.progress.Add(in_bytes, 1);
      return Status();
    }
    // In bands: the archive's headers before the storage record do not
    // depend on its bytes, and its CRC-32 is needed only after them.
    const TensorView shape_only = MakeView(nullptr, to, c.sizes);
    format::zip::WriteOptions sizing = zo;
    sizing.compute_crc32 = false;
    const format::zip::Layout head = format::EncodeStreamedTensorArchive(shape_only, 0, sizing);
    if (head.pieces.size() != 3 || head.pieces[0].is_borrowed || !head.pieces[1].is_borrowed ||
        head.pieces[1].size() != out_bytes)
      return InternalError("unexpected tensor archive layout");
    DCPP_ASSIGN_OR_RETURN(
        auto enc, Begin(static_cast<int>(ElementSize(to)), head.total_size, info, nullptr));
    DCPP_RETURN_IF_ERROR(enc->Write(format::zip::AsBytes(head.pieces[0].owned)));
    // Bands along dimension d: the dimensions before it one index at a time,
    // `step` indices of d, the dimensions after it whole.
    const size_t nd = c.sizes.size();
    size_t d = 0;
    uint64_t inner = std::max(ElementSize(from), ElementSize(to));  // bytes of one index of d
    for (size_t k = 1; k < nd; ++k) inner *= static_cast<uint64_t>(c.sizes[k]);
    while (inner > band && d + 1 < nd) {
      ++d;
      inner /= static_cast<uint64_t>(c.sizes[d]);
    }
    const int64_t step =
        std::clamp<int64_t>(static_cast<int64_t>(band / inner), 1, c.sizes[d]);
    int64_t outer = 1;
    for (size_t k = 0; k < d; ++k) outer *= c.sizes[k];
    uint32_t crc = 0;
    for (int64_t o = 0; o < outer; ++o) {
      Shape offsets = c.offsets, sizes = c.sizes;
      for (int64_t rest = o, k = static_cast<int64_t>(d) - 1; k >= 0; --k) {
        offsets[k] += rest % c.sizes[k];
        sizes[k] = 1;
        rest /= c.sizes[k];
      }
      for (int64_t r0 = 0; r0 < c.sizes[d]; r0 += step) {
        Shape bo = offsets, bs = sizes;
        bo[d] = c.offsets[d] + r0;
        bs[d] = std::min(step, c.sizes[d] - r0);
        const uint64_t n = static_cast<uint64_t>(NumElements(bs));
        const TensorView got = MakeView(read_.Get(n * ElementSize(from)), from, bs);
        if (!got.data) return ResourceExhaustedError("cannot allocate a read buffer");
        const storage::ChunkTarget target{got, bo, bs};
        DCPP_RETURN_IF_ERROR(storage::ReadChunk(s_.src, e.fqn, from, c, {&target, 1}));
        TensorView out = got;
        if (to != from) {
          out = MakeView(cast_.Get(n * ElementSize(to)), to, bs);
          if (!out.data) return ResourceExhaustedError("cannot allocate a cast buffer");
          CastFloats(got, out);
        }
        const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(out.data),
                                             static_cast<size_t>(n * ElementSize(to)));
        if (zo.compute_crc32) crc = Crc32(bytes, crc);  // while the band is in cache
        DCPP_RETURN_IF_ERROR(enc->Write(bytes));
        s_.progress.Add(n * ElementSize(from), 0);
      }
    }
    const format::zip::Layout tail = format::EncodeStreamedTensorArchive(shape_only, crc, zo);
    if (tail.pieces.size() != 3 || tail.total_size != head.total_size)
      return InternalError("unexpected tensor archive layout");
    DCPP_RETURN_IF_ERROR(enc->Write(format::zip::AsBytes(tail.pieces[2].owned)));
    DCPP_RETURN_IF_ERROR(End(*enc, info));
    s_.progress.Add(0, 1);
    return Status();
  }

  const Shared& s_;
  const std::string name_;
  storage::WritableFile& file_;
  uint64_t offset_ = 0;   // where the next item starts
  uint64_t written_ = 0;  // of the current re-encoded item
  Scratch copy_, read_, cast_;
};

// Writes the items `ids` (in order) into the data file `name`.
Status WriteFile(const Shared& s, const std::string& name, const std::vector<Work>& work,
                 const std::vector<size_t>& ids, std::vector<StorageInfo>& infos,
                 std::vector<uint32_t>& crcs) {
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::WritableFile> file, s.dst.CreateForWrite(name));
  FileWriter writer(s, name, *file);
  std::vector<Work> run;
  std::vector<size_t> run_ids;
  auto flush = [&]() -> Status {
    if (run.empty()) return Status();
    Status st = writer.CopyRun(run, infos, crcs, run_ids);
    run.clear();
    run_ids.clear();
    return st;
  };
  for (size_t id : ids) {
    const Work& w = work[id];
    if (!w.copy) {
      DCPP_RETURN_IF_ERROR(flush());
      DCPP_RETURN_IF_ERROR(writer.Reencode(w, infos[id], crcs[id]));
      continue;
    }
    const bool follows = !run.empty() && run.back().src->relative_path == w.src->relative_path &&
                         run.back().src->offset + run.back().src->length == w.src->offset;
    if (!follows) DCPP_RETURN_IF_ERROR(flush());
    run.push_back(w);
    run_ids.push_back(id);
  }
  DCPP_RETURN_IF_ERROR(flush());
  if (s.o.save.sync_files) DCPP_RETURN_IF_ERROR(file->Sync().WithContext(s.dst.Describe(name)));
  return file->Close().WithContext(s.dst.Describe(name));
}

// DataLoss naming the entry if its chunks do not tile it exactly or a
// chunk's stored item cannot hold the elements it claims.
Status CheckStoredTensor(const storage::Storage& src, const EntryMeta& e) {
  std::vector<plan::Box> boxes;
  boxes.reserve(e.chunks.size());
  for (const ChunkMeta& c : e.chunks) boxes.push_back({c.offsets, c.sizes});
  Status tiled = plan::ValidateChunks(e.fqn, e.size, boxes, true);
  if (!tiled.ok())
    return DataLossError(src.Describe(io::kMetadataFileName) + ": " + tiled.message());
  for (const ChunkMeta& c : e.chunks) {
    const uint64_t needed =
        static_cast<uint64_t>(NumElements(c.sizes)) * ElementSize(e.properties.dtype);
    auto most = transform::MaxDecodedSize(c.storage.transform_descriptors, c.storage.length);
    if (!most.ok()) return most.status().WithContext("'" + e.fqn + "'");
    if (*most < needed)
      return DataLossError(src.Describe(c.storage.relative_path) + ": '" + e.fqn +
                           "' chunk at " + ShapeToString(c.offsets) + " claims " +
                           std::to_string(needed) + " bytes of elements, but its item holds " +
                           std::to_string(c.storage.length) + " stored bytes");
  }
  return Status();
}

Result<Metadata> CopyImpl(storage::Storage& src, std::span<const EntryMeta* const> entries,
                          storage::Storage& dst, const CopyOptions& o) {
  const SaveOptions& so = o.save;
  if (so.format != SaveFormat::kDcp)
    return InvalidArgumentError("CopyCheckpoint writes DCP only");
  if (so.process_group != nullptr && so.process_group->size() > 1)
    return InvalidArgumentError("CopyCheckpoint runs in one process (no process_group)");
  if (so.files_per_rank < 1)
    return InvalidArgumentError("SaveOptions.files_per_rank must be >= 1, got " +
                                std::to_string(so.files_per_rank));
  if (so.io_threads < 0)
    return InvalidArgumentError("SaveOptions.io_threads must be >= 0, got " +
                                std::to_string(so.io_threads));
  if (so.lock_timeout_ms < 0)
    return InvalidArgumentError("SaveOptions.lock_timeout_ms must be >= 0, got " +
                                std::to_string(so.lock_timeout_ms));
  if (o.cast && !IsCastableFloat(*o.cast))
    return InvalidArgumentError("the cast dtype must be a floating dtype, not " +
                                std::string(TorchName(*o.cast)));
  std::vector<std::string> recorded;
  {
    // What the output's transforms record, and an unknown transform
    // refused before anything is written.
    auto probe = transform::NewEncoder(
        so.transforms, {}, [](auto) { return Status(); }, &recorded);
    if (!probe.ok()) return probe.status().WithContext("SaveOptions.transforms");
  }

  // The items, in source-file order so that neighbours copy as one run.
  std::vector<Work> work;
  uint64_t total = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const EntryMeta& e = *entries[i];
    auto copyable = [&](const StorageInfo& st) {
      return st.encoding == StorageInfo::Encoding::kTorchSave &&
             st.transform_descriptors == recorded;
    };
    if (!e.is_tensor()) {
      work.push_back({i, SIZE_MAX, &e.storage, copyable(e.storage), e.storage.length});
    } else {
      // Stored bytes are copied without being decoded: what a load would
      // check first is checked here, so a damaged .metadata (chunks that do
      // not tile the tensor, items too short for what they claim) is not
      // copied into a checkpoint that looks valid.
      DCPP_RETURN_IF_ERROR(CheckStoredTensor(src, e));
      const DType from = e.properties.dtype;
      const bool cast = o.cast && IsCastableFloat(from) && *o.cast != from;
      for (size_t c = 0; c < e.chunks.size(); ++c) {
        const StorageInfo& st = e.chunks[c].storage;
        const bool copy = !cast && copyable(st);
        const uint64_t elems =
            static_cast<uint64_t>(NumElements(e.chunks[c].sizes)) * ElementSize(from);
        work.push_back({i, c, &st, copy, copy ? st.length : elems});
      }
    }
    for (size_t k = work.size(); k-- > 0 && work[k].entry == i;) total += work[k].bytes;
  }
  std::vector<size_t> order(work.size());
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const StorageInfo &x = *work[a].src, &y = *work[b].src;
    if (x.relative_path != y.relative_path) return x.relative_path < y.relative_path;
    return x.offset < y.offset;
  });
  const int threads =
      so.io_threads > 0 ? so.io_threads : std::max(so.files_per_rank, DefaultThreadCount());
  // Files: each a contiguous stretch of `order` of about total / n bytes.
  std::vector<std::vector<size_t>> files;
  if (!so.single_file_per_rank) {
    for (size_t k : order) files.push_back({k});
  } else if (!order.empty()) {
    const size_t n = std::min(order.size(), static_cast<size_t>(std::max(so.files_per_rank,
                                                                         threads)));
    files.resize(1);
    uint64_t acc = 0;
    for (size_t k : order) {
      const uint64_t boundary = total / n * files.size();
      if (files.size() < n && acc >= boundary && !files.back().empty()) files.emplace_back();
      files.back().push_back(k);
      acc += work[k].bytes;
    }
  }
  ProgressReporter counted(o.progress, "convert", total, work.size());
  const Shared shared{src, dst, entries, o, std::move(recorded), counted};

  const std::string tag = NewSaveTag();
  std::unique_ptr<storage::StorageLock> lock;
  DCPP_RETURN_IF_ERROR(PrepareSaveLocation(dst, so, tag, &lock));
  std::vector<std::string> names(files.size());
  for (size_t f = 0; f < files.size(); ++f) names[f] = io::DataFileName(0, static_cast<int>(f), tag);
  std::vector<std::atomic<bool>> started(files.size());
  std::vector<StorageInfo> infos(work.size());
  std::vector<uint32_t> crcs(work.size(), 0);
  Status written = ParallelFor(files.size(), threads, [&](size_t f) -> Status {
    started[f] = true;
    return CatchExceptions("writing " + dst.Describe(names[f]), [&] {
      return WriteFile(shared, names[f], work, files[f], infos, crcs);
    });
  });
  auto remove_created = [&] {
    for (size_t f = 0; f < files.size(); ++f)
      if (started[f]) (void)dst.Remove(names[f]);
  };
  if (!written.ok()) {
    remove_created();
    return written.WithContext("converting into " + dst.Describe("") +
                               " failed (nothing was committed)");
  }
  Metadata md;
  md.entries.reserve(entries.size());
  for (const EntryMeta* e : entries) md.entries.push_back(*e);
  std::vector<format::ItemChecksum> sidecar;
  for (size_t k = 0; k < work.size(); ++k) {
    const Work& w = work[k];
    EntryMeta& e = md.entries[w.entry];
    if (w.chunk == SIZE_MAX) {
      e.storage = infos[k];
      sidecar.push_back({e.fqn, infos[k].relative_path, infos[k].offset, infos[k].length, crcs[k]});
    } else {
      e.chunks[w.chunk].storage = infos[k];
    }
  }
  if (o.cast)
    for (EntryMeta& e : md.entries)
      if (e.is_tensor() && IsCastableFloat(e.properties.dtype)) e.properties.dtype = *o.cast;
  bool committed = false;
  Status status = CommitSave(dst, md, std::move(sidecar), so, tag, nullptr, &committed);
  if (!committed) remove_created();
  if (!status.ok())
    return status.WithContext(committed ? "converting into " + dst.Describe("")
                                        : "converting into " + dst.Describe("") +
                                              " failed (nothing was committed)");
  return md;
}

}  // namespace

Result<Metadata> CopyCheckpoint(storage::Storage& src, std::span<const EntryMeta* const> entries,
                                storage::Storage& dst, const CopyOptions& options) {
  return CatchExceptions("converting into " + dst.Describe(""),
                         [&] { return CopyImpl(src, entries, dst, options); });
}

}  // namespace dcpp::engine
