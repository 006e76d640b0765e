// Save with SaveFormat::kSafetensors: a Hugging Face model directory, as
// torch's HuggingFaceStorageWriter writes it for a rank-0 save.
//
// Each file's header follows from the tensors' dtypes and shapes alone, so
// it is written first and every tensor's bytes go to their final offsets by
// positional writes straight from the caller's memory: nothing is staged,
// and the pieces of a ShardedTensor land in place (row runs), which is the
// consolidation torch does by reading every shard file back.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <new>
#include <random>
#include <unordered_map>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/engine/engine.h"
#include "dcpp/engine/safetensors_save.h"
#include "dcpp/engine/wire.h"
#include "dcpp/format/json.h"
#include "dcpp/format/safetensors.h"
#include "dcpp/plan/flatten.h"
#include "dcpp/plan/validate.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/safetensors_layout.h"

namespace dcpp::engine {
namespace {

namespace st = format::safetensors;
namespace json = format::json;

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

std::string RandomTag() {
  static constexpr char kHex[] = "0123456789abcdef";
  std::random_device rd;
  std::string out(8, '0');
  for (char& c : out) c = kHex[rd() % 16];
  return out;
}

// One tensor to write: its pieces (one for a plain tensor), each contiguous.
struct Piece {
  Shape offsets;
  TensorView view;  // contiguous
};
struct OutTensor {
  std::string fqn;
  DType dtype;
  Shape shape;
  std::vector<Piece> pieces;
  uint64_t nbytes = 0;
  bool is_plain = false;  // a tensor leaf (replicated across ranks), not shards
};

// `t` if it is contiguous, else a contiguous copy kept alive in `copies`.
Result<TensorView> Contiguous(const Tensor& t, std::vector<Tensor>& copies) {
  if (t.view().is_contiguous()) return t.view();
  DCPP_ASSIGN_OR_RETURN(Tensor c, Tensor::Empty(t.dtype(), t.shape()));
  DCPP_RETURN_IF_ERROR(CopyTensor(t.view(), c.view()));
  copies.push_back(std::move(c));
  return copies.back().view();
}

// Writes `piece` of a row-major tensor whose bytes start at `base` in
// `file`: one write per run of consecutive elements (the whole piece for a
// row band, a row's part for a column band).
Status WritePiece(storage::WritableFile& file, uint64_t base, const Shape& global,
                  const Piece& piece) {
  const size_t nd = global.size();
  const uint64_t esize = ElementSize(piece.view.dtype);
  const Shape& sizes = piece.view.shape;
  if (NumElements(sizes) == 0) return Status();
  // The run: dimensions k.. where the piece spans the full extent beyond k.
  size_t k = nd;
  while (k > 0 && (k == nd || sizes[k] == global[k])) --k;
  int64_t run = 1;
  for (size_t d = k; d < nd; ++d) run *= sizes[d];
  const Shape gstrides = ContiguousStrides(global);
  const auto* src = static_cast<const uint8_t*>(piece.view.data);
  Shape idx(k, 0);  // index over dims [0, k)
  for (int64_t done = 0;;) {
    int64_t at = 0;
    for (size_t d = 0; d < nd; ++d) at += (piece.offsets[d] + (d < k ? idx[d] : 0)) * gstrides[d];
    DCPP_RETURN_IF_ERROR(file.WriteAt(
        base + static_cast<uint64_t>(at) * esize,
        {src + static_cast<uint64_t>(done) * esize, static_cast<size_t>(run) * esize}));
    done += run;
    size_t d = k;
    while (d > 0) {
      --d;
      if (++idx[d] < sizes[d]) break;
      idx[d] = 0;
      if (d == 0) return Status();
    }
    if (k == 0) return Status();
  }
}

Result<std::vector<OutTensor>> CollectTensors(const Value& state_dict, std::vector<Tensor>& copies,
                                              bool require_tiling = true) {
  Value resolved = state_dict;
  if (resolved.is_dict()) {
    for (Value& v : resolved.dict().mutable_values()) {
      if (v.kind() != Value::Kind::kStateful) continue;
      auto sd = v.stateful()->StateDict();
      if (!sd.ok()) return sd.status();
      v = std::move(*sd);
    }
  }
  DCPP_ASSIGN_OR_RETURN(auto flat, plan::Flatten(resolved));
  std::vector<OutTensor> out;
  std::vector<std::string> others;
  for (const auto& f : flat) {
    const Value& v = *f.value;
    OutTensor t;
    t.fqn = f.fqn;
    if (v.is_tensor()) {
      t.dtype = v.tensor().dtype();
      t.shape = v.tensor().shape();
      DCPP_ASSIGN_OR_RETURN(TensorView view, Contiguous(v.tensor(), copies));
      t.pieces.push_back({Shape(t.shape.size(), 0), view});
      t.is_plain = true;
    } else if (v.is_sharded()) {
      const ShardedTensor& s = v.sharded();
      if (s.shards.empty())
        return InvalidArgumentError(Quoted(f.fqn) + ": a sharded tensor without shards");
      t.dtype = s.shards.front().local.dtype();
      t.shape = s.global_shape;
      std::vector<plan::Box> boxes;
      for (const auto& sh : s.shards) {
        if (sh.local.dtype() != t.dtype)
          return InvalidArgumentError(Quoted(f.fqn) + ": shards of different dtypes");
        DCPP_ASSIGN_OR_RETURN(TensorView view, Contiguous(sh.local, copies));
        t.pieces.push_back({sh.offsets, view});
        boxes.push_back({sh.offsets, sh.local.shape()});
      }
      // A safetensors tensor is whole: its shards must tile it (across
      // all ranks, in a distributed save: checked once they are gathered).
      DCPP_RETURN_IF_ERROR(plan::ValidateChunks(f.fqn, t.shape, boxes, require_tiling));
    } else {
      others.push_back(f.fqn + " (" + std::string(Value::KindName(v.kind())) + ")");
      continue;
    }
    t.nbytes = static_cast<uint64_t>(NumElements(t.shape)) * ElementSize(t.dtype);
    out.push_back(std::move(t));
  }
  if (!others.empty()) {
    std::string list;
    for (size_t i = 0; i < others.size() && i < 10; ++i) list += (i ? ", " : "") + others[i];
    if (others.size() > 10) list += ", ... (" + std::to_string(others.size()) + " in all)";
    return InvalidArgumentError("safetensors holds only tensors; the state dict also has " + list +
                                ": leave them out of what is saved");
  }
  return out;
}

// "model-00001-of-00003.safetensors", as torch's writer names files.
std::string FileName(size_t i, size_t n) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i, n);
  return buf;
}

bool IsModelFileName(std::string_view n) {
  // model-DDDDD-of-DDDDD.safetensors
  if (n.size() != 32 || n.substr(0, 6) != "model-" || n.substr(11, 4) != "-of-" ||
      n.substr(20) != ".safetensors")
    return false;
  for (size_t i : {6, 7, 8, 9, 10, 15, 16, 17, 18, 19})
    if (n[i] < '0' || n[i] > '9') return false;
  return true;
}

Result<Metadata> SaveSafetensorsDistributed(const Value& state_dict, storage::Storage& storage,
                                            const SaveOptions& o, ProcessGroup& pg);

Result<Metadata> SaveSafetensorsImpl(const Value& state_dict, storage::Storage& storage,
                                     const SaveOptions& o) {
  if (o.process_group && o.process_group->size() > 1)
    return SaveSafetensorsDistributed(state_dict, storage, o, *o.process_group);
  std::vector<Tensor> copies;
  DCPP_ASSIGN_OR_RETURN(std::vector<OutTensor> tensors, CollectTensors(state_dict, copies));
  std::vector<SafetensorsSource> sources;
  sources.reserve(tensors.size());
  for (const OutTensor& t : tensors) {
    sources.push_back({t.fqn, t.dtype, t.shape, [&t](const PieceSink& put) -> Status {
                         for (const Piece& p : t.pieces)
                           DCPP_RETURN_IF_ERROR(put(p.offsets, p.view));
                         return Status();
                       }});
  }
  return WriteSafetensors(sources, storage, o);
}

// This thread's reusable band buffer (fresh large bands would linger in
// malloc's arenas and grow the resident size).
void* BandBuffer(uint64_t bytes) {
  thread_local std::unique_ptr<uint8_t[]> buf;
  thread_local uint64_t size = 0;
  static uint8_t empty[8];
  if (bytes == 0) return empty;
  if (size < bytes) {
    buf.reset();
    buf.reset(new (std::nothrow) uint8_t[static_cast<size_t>(bytes)]);
    size = buf ? bytes : 0;
  }
  return buf.get();
}

// Rows of a saved chunk read at once through a buffer; a DCP chunk this
// small or smaller is read whole, so its CRC-32 is checked.
constexpr uint64_t kBandBytes = uint64_t{32} << 20;
// A safetensors piece copied in the kernel: no buffer, so larger pieces of
// work (still several per large tensor, for the threads to share).
constexpr uint64_t kCopyBytes = uint64_t{64} << 20;
// Output rows gathered from column-cut chunks before one write: a few MiB,
// so the band stays in the CPU's cache between the gather and the write.
constexpr uint64_t kGatherBytes = uint64_t{4} << 20;
// Writeback is started once this much of a piece has been written.
constexpr uint64_t kWritebackBytes = uint64_t{8} << 20;

// A piece of the writer's work.
struct Work {
  enum class Kind { kProduce, kRows, kGather };
  size_t tensor = 0;
  Kind kind = Kind::kProduce;
  size_t chunk = 0;   // kRows: the chunk
  int64_t row = 0;    // kRows: first row, in the chunk; kGather: in the tensor
  int64_t rows = 0;
  uint64_t bytes = 0;
};

// Bytes of one index of dimension 0 (the whole tensor for a 0-d one).
uint64_t RowBytes(const Shape& shape, DType dtype) {
  uint64_t n = ElementSize(dtype);
  for (size_t d = 1; d < shape.size(); ++d) n *= static_cast<uint64_t>(shape[d]);
  return n;
}

Result<std::vector<Work>> PlanWork(std::span<const SafetensorsSource> tensors) {
  std::vector<Work> work;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const SafetensorsSource& t = tensors[i];
    const uint64_t nbytes = static_cast<uint64_t>(NumElements(t.shape)) * ElementSize(t.dtype);
    bool copyable = t.chunk_storage != nullptr && !t.chunks.empty() && nbytes > 0;
    bool row_bands = true;  // every chunk spans the tensor beyond dimension 0
    for (const ChunkMeta& c : t.chunks) {
      if (!copyable) break;
      copyable = c.storage.transform_descriptors.empty() && c.sizes.size() == t.shape.size() &&
                 c.offsets.size() == t.shape.size();
      for (size_t d = 1; copyable && d < t.shape.size(); ++d)
        row_bands &= c.offsets[d] == 0 && c.sizes[d] == t.shape[d];
    }
    if (!copyable) {
      if (!t.produce) return InternalError(Quoted(t.fqn) + ": nothing produces its bytes");
      work.push_back({i, Work::Kind::kProduce, 0, 0, 0, nbytes});
      continue;
    }
    const uint64_t row_bytes = RowBytes(t.shape, t.dtype);
    if (t.shape.empty() || row_bands) {
      for (size_t c = 0; c < t.chunks.size(); ++c) {
        const ChunkMeta& chunk = t.chunks[c];
        const int64_t rows = t.shape.empty() ? 1 : chunk.sizes[0];
        const bool raw = chunk.storage.encoding == StorageInfo::Encoding::kRawTensor;
        const int64_t step = std::max<int64_t>(
            1, static_cast<int64_t>((raw ? kCopyBytes : kBandBytes) / std::max<uint64_t>(row_bytes, 1)));
        for (int64_t r = 0; r < rows; r += step) {
          const int64_t n = std::min(step, rows - r);
          work.push_back({i, Work::Kind::kRows, c, r, n, static_cast<uint64_t>(n) * row_bytes});
        }
      }
      continue;
    }
    const int64_t step =
        std::max<int64_t>(1, static_cast<int64_t>(kGatherBytes / std::max<uint64_t>(row_bytes, 1)));
    for (int64_t r = 0; r < t.shape[0]; r += step) {
      const int64_t n = std::min(step, t.shape[0] - r);
      work.push_back({i, Work::Kind::kGather, 0, r, n, static_cast<uint64_t>(n) * row_bytes});
    }
  }
  return work;
}

// Writes rows [item.row, + item.rows) of a chunk that spans the tensor
// beyond dimension 0: one contiguous range of the output. A safetensors
// piece is copied in the kernel where the storages allow it.
Status CopyRows(const Work& item, const SafetensorsSource& t, uint64_t base,
                storage::WritableFile& file) {
  const ChunkMeta& c = t.chunks[item.chunk];
  const uint64_t row_bytes = RowBytes(t.shape, t.dtype);
  const uint64_t len = static_cast<uint64_t>(item.rows) * row_bytes;
  const uint64_t out_at =
      base + static_cast<uint64_t>((t.shape.empty() ? 0 : c.offsets[0]) + item.row) * row_bytes;
  uint64_t done = 0;
  if (c.storage.encoding == StorageInfo::Encoding::kRawTensor) {
    const uint64_t chunk_bytes = static_cast<uint64_t>(NumElements(c.sizes)) * ElementSize(t.dtype);
    if (c.storage.length != chunk_bytes)
      return DataLossError(Quoted(t.fqn) + " chunk at offsets " + ShapeToString(c.offsets) + " (" +
                           c.storage.relative_path + "): stores " +
                           std::to_string(c.storage.length) + " bytes for " +
                           std::to_string(chunk_bytes) + " bytes of elements");
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::ReadableFile> src,
                          t.chunk_storage->OpenForRead(c.storage.relative_path));
    const uint64_t src_at = c.storage.offset + static_cast<uint64_t>(item.row) * row_bytes;
    DCPP_ASSIGN_OR_RETURN(done, file.CopyFrom(*src, src_at, out_at, len));
    // What the kernel did not copy goes through a band buffer.
    while (done < len) {
      const uint64_t n = std::min(len - done, kBandBytes);
      auto* buf = static_cast<uint8_t*>(BandBuffer(n));
      if (!buf) return ResourceExhaustedError("cannot allocate a copy buffer");
      DCPP_RETURN_IF_ERROR(src->ReadAt(src_at + done, {buf, static_cast<size_t>(n)}));
      DCPP_RETURN_IF_ERROR(file.WriteAt(out_at + done, {buf, static_cast<size_t>(n)}));
      done += n;
    }
    return Status();
  }
  Shape offsets = c.offsets, sizes = c.sizes;
  if (!t.shape.empty()) {
    offsets[0] += item.row;
    sizes[0] = item.rows;
  }
  const TensorView band = MakeView(BandBuffer(len), t.dtype, sizes);
  if (!band.data) return ResourceExhaustedError("cannot allocate a read buffer");
  const storage::ChunkTarget target{band, offsets, sizes};
  DCPP_RETURN_IF_ERROR(storage::ReadChunk(*t.chunk_storage, t.fqn, t.dtype, c, {&target, 1}));
  return file.WriteAt(out_at, {static_cast<const uint8_t*>(band.data), static_cast<size_t>(len)});
}

// Writes output rows [item.row, + item.rows) of a tensor cut by columns
// (and maybe rows): every chunk crossing them fills its part of a band
// buffer laid out as the output, then one write.
Status GatherRows(const Work& item, const SafetensorsSource& t, uint64_t base,
                  storage::WritableFile& file) {
  const uint64_t esize = ElementSize(t.dtype);
  const uint64_t row_bytes = RowBytes(t.shape, t.dtype);
  const uint64_t len = static_cast<uint64_t>(item.rows) * row_bytes;
  auto* band = static_cast<uint8_t*>(BandBuffer(len));
  if (!band) return ResourceExhaustedError("cannot allocate a gather buffer");
  const Shape strides = ContiguousStrides(t.shape);
  const int64_t lo = item.row, hi = item.row + item.rows;
  for (const ChunkMeta& c : t.chunks) {
    const int64_t from = std::max(lo, c.offsets[0]), to = std::min(hi, c.offsets[0] + c.sizes[0]);
    if (from >= to || NumElements(c.sizes) == 0) continue;
    Shape offsets = c.offsets, sizes = c.sizes;
    offsets[0] = from;
    sizes[0] = to - from;
    int64_t at = (from - lo) * strides[0];
    for (size_t d = 1; d < t.shape.size(); ++d) at += c.offsets[d] * strides[d];
    TensorView dst;
    dst.data = band + static_cast<uint64_t>(at) * esize;
    dst.dtype = t.dtype;
    dst.shape = sizes;
    dst.strides = strides;
    const storage::ChunkTarget target{dst, offsets, sizes};
    DCPP_RETURN_IF_ERROR(storage::ReadChunk(*t.chunk_storage, t.fqn, t.dtype, c, {&target, 1}));
  }
  return file.WriteAt(base + static_cast<uint64_t>(lo) * row_bytes,
                      {band, static_cast<size_t>(len)});
}

Status RunWork(const Work& item, const SafetensorsSource& t, uint64_t base,
               storage::WritableFile& file, bool sync) {
  switch (item.kind) {
    case Work::Kind::kProduce:
      return t.produce([&](const Shape& offsets, const TensorView& view) -> Status {
        if (view.dtype != t.dtype || offsets.size() != t.shape.size() ||
            view.shape.size() != t.shape.size() || !view.is_contiguous())
          return InternalError("a piece does not match its tensor");
        for (size_t d = 0; d < offsets.size(); ++d)
          if (offsets[d] < 0 || view.shape[d] < 0 || offsets[d] + view.shape[d] > t.shape[d])
            return InternalError("a piece lies outside its tensor");
        return WritePiece(file, base, t.shape, {offsets, view});
      });
    case Work::Kind::kRows:
      DCPP_RETURN_IF_ERROR(CopyRows(item, t, base, file));
      break;
    case Work::Kind::kGather:
      DCPP_RETURN_IF_ERROR(GatherRows(item, t, base, file));
      break;
  }
  if (sync && item.bytes >= kWritebackBytes) {
    // Rows pieces and bands are one range each: let the disk start on it.
    const uint64_t row_bytes = RowBytes(t.shape, t.dtype);
    const int64_t first = item.kind == Work::Kind::kRows
                              ? (t.shape.empty() ? 0 : t.chunks[item.chunk].offsets[0]) + item.row
                              : item.row;
    file.StartWriteback(base + static_cast<uint64_t>(first) * row_bytes, item.bytes);
  }
  return Status();
}

Result<Metadata> WriteSafetensorsImpl(std::span<const SafetensorsSource> tensors,
                                      storage::Storage& storage, const SaveOptions& o) {
  // Files: tensors in the given order, a new file when the cap is reached.
  std::vector<std::vector<size_t>> files(1);
  std::vector<uint64_t> nbytes(tensors.size());
  uint64_t in_file = 0, total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    for (int64_t d : tensors[i].shape)
      if (d < 0)
        return InvalidArgumentError(Quoted(tensors[i].fqn) + ": negative dimension in " +
                                    ShapeToString(tensors[i].shape));
    const uint64_t n =
        static_cast<uint64_t>(NumElements(tensors[i].shape)) * ElementSize(tensors[i].dtype);
    nbytes[i] = n;
    total += n;
    if (!o.fqn_to_file_index.empty()) {
      // The caller's assignment (torch's fqn_to_index_mapping): file k of N.
      auto it = o.fqn_to_file_index.find(tensors[i].fqn);
      if (it == o.fqn_to_file_index.end() || it->second < 1 || it->second > (1 << 20))
        return InvalidArgumentError(Quoted(tensors[i].fqn) +
                                    (it == o.fqn_to_file_index.end()
                                         ? " is missing from fqn_to_file_index"
                                         : ": file index must be in [1, 2^20]"));
      if (files.size() < static_cast<size_t>(it->second)) files.resize(it->second);
      files[it->second - 1].push_back(i);
      continue;
    }
    if (o.max_shard_size > 0 && in_file > 0 && in_file + n > o.max_shard_size) {
      files.emplace_back();
      in_file = 0;
    }
    files.back().push_back(i);
    in_file += n;
  }
  struct Planned {
    std::string name;
    st::Encoded enc;
    std::unique_ptr<storage::WritableFile> file;
  };
  std::vector<Planned> planned;
  std::vector<std::pair<size_t, uint64_t>> where(tensors.size());  // file, base offset
  for (size_t f = 0; f < files.size(); ++f) {
    std::vector<st::TensorSpec> specs;
    for (size_t i : files[f]) specs.push_back({tensors[i].fqn, tensors[i].dtype, tensors[i].shape});
    const std::pair<std::string, std::string> md[] = {{"format", "pt"}};
    DCPP_ASSIGN_OR_RETURN(st::Encoded enc, st::Encode(specs, md));
    for (size_t j = 0; j < files[f].size(); ++j)
      where[files[f][j]] = {f, enc.prefix_and_header.size() + enc.ranges[j].first};
    planned.push_back({FileName(f + 1, files.size()), std::move(enc), nullptr});
  }

  DCPP_RETURN_IF_ERROR(storage.CreateLocation());
  if (!o.overwrite) {
    DCPP_ASSIGN_OR_RETURN(storage::CheckpointFormat existing,
                          storage::DetectCheckpointFormat(storage));
    if (existing != storage::CheckpointFormat::kNone)
      return AlreadyExistsError(storage.Describe("") +
                                " already holds a checkpoint (overwrite=false)");
  }
  // Written under temporary names and renamed once all are complete, so a
  // failed save leaves no partial .safetensors file behind.
  const std::string tag = RandomTag();
  auto tmp_name = [&](const std::string& name) { return "." + name + "." + tag + ".tmp"; };
  const std::string index_name(storage::kSafetensorsIndexName);
  auto cleanup = [&](Status s) {
    for (Planned& pl : planned) {
      pl.file.reset();
      (void)storage.Remove(tmp_name(pl.name));
    }
    (void)storage.Remove(tmp_name(index_name));
    return s;
  };
  for (Planned& pl : planned) {
    auto file = storage.CreateForWrite(tmp_name(pl.name));
    if (!file.ok()) return cleanup(file.status());
    pl.file = std::move(*file);
    const auto& header = pl.enc.prefix_and_header;
    Status s =
        pl.file->WriteAt(0, {reinterpret_cast<const uint8_t*>(header.data()), header.size()});
    if (!s.ok()) return cleanup(s);
  }
  // The work: pieces of tensors, each written to a distinct range.
  DCPP_ASSIGN_OR_RETURN(std::vector<Work> work, PlanWork(tensors));
  // Interleave the files (the k-th piece of every file, then the k+1-th),
  // so that threads write different files, not one inode, where there are
  // several; and count each file's pieces so it is synced once they are done.
  {
    std::vector<size_t> seen(files.size(), 0);
    std::vector<std::pair<size_t, size_t>> key(work.size());
    for (size_t w = 0; w < work.size(); ++w) {
      const size_t f = where[work[w].tensor].first;
      key[w] = {seen[f]++, f};
    }
    std::vector<size_t> order(work.size());
    for (size_t w = 0; w < order.size(); ++w) order[w] = w;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return key[a] < key[b]; });
    std::vector<Work> sorted;
    sorted.reserve(work.size());
    for (size_t w : order) sorted.push_back(std::move(work[w]));
    work = std::move(sorted);
  }
  std::unique_ptr<std::atomic<size_t>[]> file_left(new std::atomic<size_t>[files.size()]);
  std::unique_ptr<std::atomic<size_t>[]> tensor_left(new std::atomic<size_t>[tensors.size()]);
  for (size_t f = 0; f < files.size(); ++f) file_left[f] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) tensor_left[i] = 0;
  for (const Work& w : work) {
    file_left[where[w.tensor].first]++;
    tensor_left[w.tensor]++;
  }
  std::vector<bool> has_work(files.size());
  for (size_t f = 0; f < files.size(); ++f) has_work[f] = file_left[f] > 0;
  std::mutex mu;
  Progress p{"write", 0, total, 0, tensors.size()};
  const int threads = o.io_threads > 0 ? o.io_threads : DefaultThreadCount();
  Status written = ParallelFor(work.size(), threads, [&](size_t w) -> Status {
    const Work& item = work[w];
    const SafetensorsSource& t = tensors[item.tensor];
    // Not a structured binding: clang 14 cannot capture one in the lambda below.
    const size_t f = where[item.tensor].first;
    const auto base = where[item.tensor].second;
    storage::WritableFile& file = *planned[f].file;
    const std::string at = "writing " + Quoted(t.fqn) + " to " + storage.Describe(planned[f].name);
    DCPP_RETURN_IF_ERROR(RunWork(item, t, base, file, o.sync_files).WithContext(at));
    if (--file_left[f] == 0 && o.sync_files) {
      // This file is complete: its fdatasync overlaps the other files' writes.
      DCPP_RETURN_IF_ERROR(file.Sync().WithContext(storage.Describe(planned[f].name)));
    }
    const bool tensor_done = --tensor_left[item.tensor] == 0;
    if (o.progress) {
      std::lock_guard<std::mutex> lock(mu);
      p.bytes_done += item.bytes;
      if (tensor_done) p.items_done++;
      o.progress(p);
    }
    return Status();
  });
  if (!written.ok()) return cleanup(written);
  for (size_t f = 0; f < planned.size(); ++f) {
    // Files without work (headers alone) were not synced by the workers.
    Status s = o.sync_files && !has_work[f] ? planned[f].file->Sync() : Status();
    if (s.ok()) s = planned[f].file->Close();
    if (!s.ok()) return cleanup(s);
  }
  // The index, as torch's writer writes it (json.dump(indent=2)).
  json::Object weight_map;
  for (size_t f = 0; f < files.size(); ++f)
    for (size_t i : files[f]) weight_map.Set(tensors[i].fqn, json::Json(planned[f].name));
  json::Object meta;
  meta.Set("total_size", json::Json(total));
  json::Object index;
  index.Set("metadata", json::Json(std::move(meta)));
  index.Set("weight_map", json::Json(std::move(weight_map)));
  const std::string index_text = json::Serialize(json::Json(std::move(index)), 2);
  {
    auto file = storage.CreateForWrite(tmp_name(index_name));
    if (!file.ok()) return cleanup(file.status());
    Status s = (*file)->WriteAt(
        0, {reinterpret_cast<const uint8_t*>(index_text.data()), index_text.size()});
    if (s.ok() && o.sync_files) s = (*file)->Sync();
    if (s.ok()) s = (*file)->Close();
    if (!s.ok()) return cleanup(s);
  }
  for (const Planned& pl : planned)
    DCPP_RETURN_IF_ERROR(storage.Rename(tmp_name(pl.name), pl.name));
  DCPP_RETURN_IF_ERROR(storage.Rename(tmp_name(index_name), index_name));
  // Files of an earlier, larger save under the names this one uses.
  if (auto names = storage.List(); names.ok()) {
    for (const std::string& n : *names) {
      if (!IsModelFileName(n)) continue;
      bool ours = false;
      for (const Planned& pl : planned) ours |= pl.name == n;
      if (!ours) (void)storage.Remove(n);
    }
  }
  if (o.sync_files) DCPP_RETURN_IF_ERROR(storage.SyncDirectory());
  return storage::ReadSafetensorsMetadata(storage);
}

// ---- Distributed: every rank's pieces, then one consolidation ----

// Hands `put` the chunks of a tensor (bare elements in `storage`) in row
// bands of at most kBandBytes.
Status ProduceFromRawChunks(storage::Storage& storage, const std::string& fqn, DType dtype,
                            const std::vector<ChunkMeta>& chunks, const PieceSink& put) {
  for (const ChunkMeta& c : chunks) {
    const size_t nd = c.sizes.size();
    const uint64_t row_bytes =
        (nd == 0 ? 1
                 : static_cast<uint64_t>(NumElements(Shape(c.sizes.begin() + 1, c.sizes.end())))) *
        ElementSize(dtype);
    const int64_t rows = nd == 0 ? 1 : c.sizes[0];
    const int64_t step =
        nd == 0 ? 1
                : std::max<int64_t>(
                      1, static_cast<int64_t>(kBandBytes / std::max<uint64_t>(row_bytes, 1)));
    for (int64_t r0 = 0; r0 < rows; r0 += step) {
      Shape offsets = c.offsets, sizes = c.sizes;
      if (nd > 0) {
        offsets[0] += r0;
        sizes[0] = std::min(step, rows - r0);
      }
      const TensorView band = MakeView(
          BandBuffer(static_cast<uint64_t>(NumElements(sizes)) * ElementSize(dtype)), dtype, sizes);
      if (!band.data) return ResourceExhaustedError("cannot allocate a read buffer");
      const storage::ChunkTarget target{band, offsets, sizes};
      DCPP_RETURN_IF_ERROR(storage::ReadChunk(storage, fqn, dtype, c, {&target, 1}));
      DCPP_RETURN_IF_ERROR(put(offsets, band));
    }
  }
  return Status();
}

json::Json ShapeJson(const Shape& s) {
  json::Array a;
  for (int64_t d : s) a.emplace_back(d);
  return json::Json(std::move(a));
}

Result<Shape> ShapeFromJson(const json::Json* v) {
  const json::Array* a = v ? v->GetArray() : nullptr;
  if (!a) return DataLossError("bad shape in a rank's piece list");
  Shape s;
  for (const json::Json& x : *a) {
    const int64_t* i = x.GetInt();
    if (!i) return DataLossError("bad shape in a rank's piece list");
    s.push_back(*i);
  }
  return s;
}

// This rank's part: its pieces (plain tensors on rank 0 only: replicated
// state is written once) in its own temporary file, described as JSON
// {"pieces": [{"fqn", "dtype", "shape", "offsets", "sizes", "at", "len"}]}.
Result<std::string> WriteRankPieces(const Value& state_dict, storage::Storage& storage,
                                    const std::string& file, bool write_plain) {
  std::vector<Tensor> copies;
  DCPP_ASSIGN_OR_RETURN(std::vector<OutTensor> tensors, CollectTensors(state_dict, copies, false));
  struct Ref {
    const OutTensor* t;
    const Piece* p;
  };
  // Plain tensors are replicated: only rank 0 keeps them.
  std::vector<Ref> kept;
  std::vector<st::TensorSpec> kept_specs;
  for (const OutTensor& t : tensors) {
    if (!write_plain && t.is_plain) continue;
    for (const Piece& p : t.pieces) {
      kept.push_back({&t, &p});
      kept_specs.push_back({"p" + std::to_string(kept_specs.size()), t.dtype, p.view.shape});
    }
  }
  DCPP_ASSIGN_OR_RETURN(st::Encoded enc, st::Encode(kept_specs));
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::WritableFile> out, storage.CreateForWrite(file));
  const auto& header = enc.prefix_and_header;
  DCPP_RETURN_IF_ERROR(
      out->WriteAt(0, {reinterpret_cast<const uint8_t*>(header.data()), header.size()}));
  json::Array list;
  for (size_t i = 0; i < kept.size(); ++i) {
    const Piece& p = *kept[i].p;
    const uint64_t at = header.size() + enc.ranges[i].first;
    const uint64_t len = enc.ranges[i].second - enc.ranges[i].first;
    DCPP_RETURN_IF_ERROR(
        out->WriteAt(at, {static_cast<const uint8_t*>(p.view.data), static_cast<size_t>(len)}));
    json::Object o;
    o.Set("fqn", json::Json(kept[i].t->fqn));
    o.Set("dtype", json::Json(TorchName(kept[i].t->dtype)));
    o.Set("shape", ShapeJson(kept[i].t->shape));
    o.Set("offsets", ShapeJson(p.offsets));
    o.Set("sizes", ShapeJson(p.view.shape));
    o.Set("at", json::Json(at));
    o.Set("len", json::Json(len));
    list.push_back(json::Json(std::move(o)));
  }
  DCPP_RETURN_IF_ERROR(out->Close());
  json::Object root;
  root.Set("pieces", json::Json(std::move(list)));
  return json::Serialize(json::Json(std::move(root)));
}

// Every rank's status agreed: the combined failure, or OK on every rank.
Status Agree(ProcessGroup& pg, const Status& local, std::string_view what) {
  auto all = pg.AllGather(EncodeStatus(local));
  if (!all.ok()) return all.status();
  return CombineRankFailures(what, DecodeStatuses(*all));
}

Result<Metadata> SaveSafetensorsDistributed(const Value& state_dict, storage::Storage& storage,
                                            const SaveOptions& o, ProcessGroup& pg) {
  constexpr int kCoordinator = 0;
  const bool coordinator = pg.rank() == kCoordinator;
  // 1. The coordinator prepares the directory and picks the save's tag.
  Status setup;
  std::string tag;
  if (coordinator) {
    tag = RandomTag();
    setup = CatchExceptions("preparing " + storage.Describe(""), [&]() -> Status {
      DCPP_RETURN_IF_ERROR(storage.CreateLocation());
      if (!o.overwrite) {
        DCPP_ASSIGN_OR_RETURN(storage::CheckpointFormat existing,
                              storage::DetectCheckpointFormat(storage));
        if (existing != storage::CheckpointFormat::kNone)
          return AlreadyExistsError(storage.Describe("") +
                                    " already holds a checkpoint (overwrite=false)");
      }
      return Status();
    });
  }
  DCPP_ASSIGN_OR_RETURN(tag, pg.Broadcast(tag, kCoordinator));
  DCPP_RETURN_IF_ERROR(Agree(pg, setup, "safetensors save"));
  // 2. Every rank writes its pieces to a temporary file of its own.
  auto piece_file = [&](int rank) {
    return ".pieces-" + std::to_string(rank) + "." + tag + ".tmp";
  };
  Result<std::string> mine = CatchExceptions("writing this rank's pieces", [&] {
    return WriteRankPieces(state_dict, storage, piece_file(pg.rank()), coordinator);
  });
  auto remove_pieces = [&] {
    if (coordinator)
      for (int r = 0; r < pg.size(); ++r) (void)storage.Remove(piece_file(r));
  };
  Status wrote = Agree(pg, mine.status(), "safetensors save");
  if (!wrote.ok()) {
    (void)storage.Remove(piece_file(pg.rank()));
    return wrote;
  }
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> lists, pg.Gather(*mine, kCoordinator));
  // 3. The coordinator consolidates them into full tensors, piece by piece
  // in bounded bands, and writes the model files and the index.
  Result<Metadata> result = InternalError("not the coordinator");
  if (coordinator) {
    result =
        CatchExceptions("consolidating into " + storage.Describe(""), [&]() -> Result<Metadata> {
          struct Gathered {
            std::string fqn;
            DType dtype;
            Shape shape;
            std::vector<ChunkMeta> chunks;
          };
          std::vector<Gathered> entries;
          std::unordered_map<std::string, size_t> index;
          for (int r = 0; r < pg.size(); ++r) {
            auto parsed = json::Parse(lists[static_cast<size_t>(r)]);
            if (!parsed.ok()) return parsed.status().WithContext("rank " + std::to_string(r));
            const json::Json* pieces = parsed->Find("pieces");
            if (!pieces || !pieces->GetArray()) return DataLossError("bad piece list from a rank");
            for (const json::Json& p : *pieces->GetArray()) {
              const json::Json* fqn = p.Find("fqn");
              const json::Json* dtype = p.Find("dtype");
              const json::Json* at = p.Find("at");
              const json::Json* len = p.Find("len");
              if (!fqn || !fqn->GetString() || !dtype || !dtype->GetString() || !at ||
                  !at->GetInt() || !len || !len->GetInt())
                return DataLossError("bad piece list from rank " + std::to_string(r));
              auto dt = DTypeFromTorchName(*dtype->GetString());
              if (!dt)
                return DataLossError("bad dtype in the piece list of rank " + std::to_string(r));
              DCPP_ASSIGN_OR_RETURN(Shape shape, ShapeFromJson(p.Find("shape")));
              ChunkMeta c;
              DCPP_ASSIGN_OR_RETURN(c.offsets, ShapeFromJson(p.Find("offsets")));
              DCPP_ASSIGN_OR_RETURN(c.sizes, ShapeFromJson(p.Find("sizes")));
              c.storage.relative_path = piece_file(r);
              c.storage.offset = static_cast<uint64_t>(*at->GetInt());
              c.storage.length = static_cast<uint64_t>(*len->GetInt());
              c.storage.encoding = StorageInfo::Encoding::kRawTensor;
              const std::string& name = *fqn->GetString();
              auto [it, fresh] = index.emplace(name, entries.size());
              if (fresh) entries.push_back({name, *dt, shape, {}});
              Gathered& g = entries[it->second];
              if (g.dtype != *dt || g.shape != shape)
                return InvalidArgumentError(
                    Quoted(name) + ": rank " + std::to_string(r) + " holds " +
                    std::string(TorchName(*dt)) + " " + ShapeToString(shape) + ", another rank " +
                    std::string(TorchName(g.dtype)) + " " + ShapeToString(g.shape));
              g.chunks.push_back(std::move(c));
            }
          }
          std::vector<SafetensorsSource> sources;
          for (const Gathered& g : entries) {
            std::vector<plan::Box> boxes;
            for (const ChunkMeta& c : g.chunks) boxes.push_back({c.offsets, c.sizes});
            // The ranks' shards together must tile each tensor.
            DCPP_RETURN_IF_ERROR(plan::ValidateChunks(g.fqn, g.shape, boxes, true));
            sources.push_back({g.fqn, g.dtype, g.shape,
                               [&storage, &g](const PieceSink& put) {
                                 return ProduceFromRawChunks(storage, g.fqn, g.dtype, g.chunks,
                                                             put);
                               },
                               &storage, g.chunks});
          }
          return WriteSafetensorsImpl(sources, storage, o);
        });
    remove_pieces();
  }
  // 4. Every rank returns the coordinator's outcome.
  DCPP_RETURN_IF_ERROR(Agree(pg, coordinator ? result.status() : Status(), "safetensors save"));
  if (coordinator) return result;
  return storage::ReadSafetensorsMetadata(storage);
}

}  // namespace

Result<Metadata> SaveSafetensors(const Value& state_dict, storage::Storage& storage,
                                 const SaveOptions& options) {
  return CatchExceptions("save to " + storage.Describe(""),
                         [&] { return SaveSafetensorsImpl(state_dict, storage, options); });
}

Result<Metadata> WriteSafetensors(std::span<const SafetensorsSource> tensors,
                                  storage::Storage& storage, const SaveOptions& options) {
  return CatchExceptions("save to " + storage.Describe(""),
                         [&] { return WriteSafetensorsImpl(tensors, storage, options); });
}

}  // namespace dcpp::engine
