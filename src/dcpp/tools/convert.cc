#include "dcpp/tools/convert.h"

#include <fnmatch.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <unordered_map>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/float_cast.h"
#include "dcpp/engine/copy_checkpoint.h"
#include "dcpp/engine/engine.h"
#include "dcpp/engine/safetensors_save.h"
#include "dcpp/engine/torch_save_write.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/io/file.h"
#include "dcpp/plan/flatten.h"
#include "dcpp/plan/reshard.h"
#include "dcpp/plan/validate.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/storage.h"
#include "dcpp/storage/safetensors_layout.h"
#include "dcpp/tools/verify.h"

namespace dcpp::tools {
namespace {

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// Rows of a saved chunk read at once when streaming into safetensors.
constexpr uint64_t kBandBytes = uint64_t{32} << 20;

bool IsFloat(DType d) {
  return d == DType::kFloat16 || d == DType::kBFloat16 || d == DType::kFloat32 ||
         d == DType::kFloat64;
}

// The entries selected by `keys` (all when empty); InvalidArgument for a
// pattern that matches nothing.
Result<std::vector<const EntryMeta*>> Select(const Metadata& md,
                                             const std::vector<std::string>& keys) {
  std::vector<const EntryMeta*> out;
  std::vector<bool> used(keys.size(), false);
  for (const EntryMeta& e : md.entries) {
    bool take = keys.empty();
    for (size_t k = 0; k < keys.size(); ++k)
      if (fnmatch(keys[k].c_str(), e.fqn.c_str(), 0) == 0) take = used[k] = true;
    if (take) out.push_back(&e);
  }
  for (size_t k = 0; k < keys.size(); ++k)
    if (!used[k])
      return InvalidArgumentError("--keys " + Quoted(keys[k]) +
                                  " matches no entry of the checkpoint");
  return out;
}

// Scratch buffer `which` (0: read, 1: cast) of this thread, grown to at
// least `bytes` and reused: allocating a fresh band each time leaves freed
// bands in malloc's arenas (they sit near its mmap threshold), which grows
// the resident size well past what is in use. Null if allocation fails.
void* Buffer(int which, int64_t bytes) {
  thread_local std::unique_ptr<uint8_t[]> buf[2];
  thread_local int64_t size[2] = {0, 0};
  static uint8_t empty[8];
  if (bytes == 0) return empty;  // nothing is read or written through it
  if (size[which] < bytes) {
    buf[which].reset();
    buf[which].reset(new (std::nothrow) uint8_t[static_cast<size_t>(bytes)]);
    size[which] = buf[which] ? bytes : 0;
  }
  return buf[which].get();
}

Result<Metadata> ToSafetensors(storage::Storage& src, const std::vector<const EntryMeta*>& entries,
                               const std::string& dst, const ConvertOptions& o) {
  std::vector<std::string> others;
  for (const EntryMeta* e : entries)
    if (!e->is_tensor()) others.push_back(Quoted(e->fqn));
  if (!others.empty()) {
    std::string list;
    for (size_t i = 0; i < others.size() && i < 10; ++i) list += (i ? ", " : "") + others[i];
    if (others.size() > 10) list += ", ... (" + std::to_string(others.size()) + " in all)";
    return InvalidArgumentError("safetensors holds only tensors, but " +
                                std::to_string(others.size()) + " selected entr" +
                                (others.size() == 1 ? "y is not one: " : "ies are not: ") + list +
                                "; select the tensors with --keys (e.g. --keys 'model.*')");
  }
  // Progress as bands pass (a large tensor would otherwise report only
  // when it is done): bytes of the source's elements.
  struct Counter {
    std::mutex mu;
    Progress p;
  };
  auto counter = std::make_shared<Counter>();
  counter->p.phase = "convert";
  for (const EntryMeta* e : entries) {
    counter->p.items_total += e->chunks.size();
    for (const ChunkMeta& c : e->chunks)
      counter->p.bytes_total +=
          static_cast<uint64_t>(NumElements(c.sizes)) * ElementSize(e->properties.dtype);
  }
  auto report = [counter, &o](uint64_t bytes, size_t items) {
    if (!o.progress) return;
    std::lock_guard<std::mutex> lock(counter->mu);
    counter->p.bytes_done += bytes;
    counter->p.items_done += items;
    o.progress(counter->p);
  };
  std::vector<engine::SafetensorsSource> sources;
  for (const EntryMeta* e : entries) {
    std::vector<plan::Box> boxes;
    for (const ChunkMeta& c : e->chunks) boxes.push_back({c.offsets, c.sizes});
    DCPP_RETURN_IF_ERROR(plan::ValidateChunks(e->fqn, e->size, boxes, true));
    const DType from = e->properties.dtype;
    const DType to = o.dtype && IsFloat(from) ? *o.dtype : from;
    sources.push_back(
        {e->fqn, to, e->size, [&src, e, from, to, report](const engine::PieceSink& put) -> Status {
           for (const ChunkMeta& c : e->chunks) {
             const size_t nd = c.sizes.size();
             const uint64_t row_bytes = (nd == 0 ? 1
                                                 : static_cast<uint64_t>(NumElements(Shape(
                                                       c.sizes.begin() + 1, c.sizes.end())))) *
                                        ElementSize(from);
             const int64_t rows = nd == 0 ? 1 : c.sizes[0];
             // A compressed chunk is decoded from its start on every read: read
             // it in one piece rather than once per band.
             const int64_t step =
                 nd == 0 || !c.storage.transform_descriptors.empty()
                     ? std::max<int64_t>(rows, 1)
                     : std::max<int64_t>(
                           1, static_cast<int64_t>(kBandBytes / std::max<uint64_t>(row_bytes, 1)));
             for (int64_t r0 = 0; r0 < rows; r0 += step) {
               Shape offsets = c.offsets, sizes = c.sizes;
               if (nd > 0) {
                 offsets[0] += r0;
                 sizes[0] = std::min(step, rows - r0);
               }
               const TensorView band =
                   MakeView(Buffer(0, NumElements(sizes) * ElementSize(from)), from, sizes);
               if (!band.data) return ResourceExhaustedError("cannot allocate a read buffer");
               const storage::ChunkTarget target{band, offsets, sizes};
               DCPP_RETURN_IF_ERROR(storage::ReadChunk(src, e->fqn, from, c, {&target, 1}));
               if (to == from) {
                 DCPP_RETURN_IF_ERROR(put(offsets, band));
               } else {
                 const TensorView cast =
                     MakeView(Buffer(1, NumElements(sizes) * ElementSize(to)), to, sizes);
                 if (!cast.data) return ResourceExhaustedError("cannot allocate a cast buffer");
                 CastFloats(band, cast);
                 DCPP_RETURN_IF_ERROR(put(offsets, cast));
               }
               report(static_cast<uint64_t>(band.nbytes()), 0);
             }
             report(0, 1);
           }
           return Status();
         }});
    // Unchanged bytes: the writer copies the saved chunks itself.
    if (to == from) {
      sources.back().chunk_storage = &src;
      sources.back().chunks = e->chunks;
    }
  }
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> out, storage::OpenStorage(dst));
  SaveOptions so = o.save;
  so.progress = nullptr;  // reported above, band by band
  return engine::WriteSafetensors(sources, *out, so);
}

Result<Metadata> ToDcp(storage::Storage& src, const std::vector<const EntryMeta*>& entries,
                       const std::string& dst, const ConvertOptions& o) {
  // Streams item by item (engine/copy_checkpoint.h): stored bytes copied as
  // they are where nothing changes, so every entry stays what it was.
  engine::CopyOptions co;
  co.save = o.save;
  co.cast = o.dtype;
  co.progress = o.progress;
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> out, storage::OpenStorage(dst));
  return engine::CopyCheckpoint(src, entries, *out, co);
}

// Hands `put` the elements of tensor `e` of `src` in row-major order, in row
// bands of at most kBandBytes (one row at least; a tensor with compressed
// chunks whole, up to 1 GiB, so each chunk is decoded once), each band
// filled from the chunks it crosses and cast to `to` if that differs.
Status ProduceRowBands(storage::Storage& src, const EntryMeta& e, DType to,
                       const engine::BandSink& put) {
  const DType from = e.properties.dtype;
  const size_t nd = e.size.size();
  if (NumElements(e.size) == 0) return Status();
  const int64_t rows = nd == 0 ? 1 : e.size[0];
  const uint64_t row_bytes =
      (nd == 0 ? 1 : static_cast<uint64_t>(NumElements(Shape(e.size.begin() + 1, e.size.end())))) *
      ElementSize(from);
  bool transformed = false;
  for (const ChunkMeta& c : e.chunks) transformed |= !c.storage.transform_descriptors.empty();
  int64_t step = std::max<int64_t>(1, static_cast<int64_t>(kBandBytes / std::max<uint64_t>(row_bytes, 1)));
  if (nd == 0 || (transformed && row_bytes * static_cast<uint64_t>(rows) <= (uint64_t{1} << 30)))
    step = rows;
  for (int64_t r0 = 0; r0 < rows; r0 += step) {
    plan::Box band{Shape(nd, 0), e.size};
    if (nd > 0) {
      band.offsets[0] = r0;
      band.sizes[0] = std::min(step, rows - r0);
    }
    const int64_t n = NumElements(band.sizes);
    const TensorView view = MakeView(Buffer(0, n * ElementSize(from)), from, band.sizes);
    if (!view.data) return ResourceExhaustedError("cannot allocate a read buffer");
    for (const ChunkMeta& c : e.chunks) {
      auto overlap = plan::Intersect({c.offsets, c.sizes}, band);
      if (!overlap || NumElements(overlap->sizes) == 0) continue;
      const storage::ChunkTarget target{plan::SubView(view, band, *overlap), overlap->offsets,
                                        overlap->sizes};
      DCPP_RETURN_IF_ERROR(storage::ReadChunk(src, e.fqn, from, c, {&target, 1}));
    }
    TensorView out = view;
    if (to != from) {
      out = MakeView(Buffer(1, n * ElementSize(to)), to, band.sizes);
      if (!out.data) return ResourceExhaustedError("cannot allocate a cast buffer");
      CastFloats(view, out);
    }
    DCPP_RETURN_IF_ERROR(put({static_cast<const uint8_t*>(out.data), out.nbytes()}));
  }
  return Status();
}

Result<Metadata> ToTorchSave(storage::Storage& src, const std::vector<const EntryMeta*>& entries,
                             const std::string& dst, const ConvertOptions& o) {
  // Progress as bands pass: bytes of the written tensors' elements.
  struct Counter {
    std::mutex mu;
    Progress p;
  };
  auto counter = std::make_shared<Counter>();
  counter->p.phase = "convert";
  for (const EntryMeta* e : entries) {
    if (!e->is_tensor()) continue;
    const DType to = o.dtype && IsFloat(e->properties.dtype) ? *o.dtype : e->properties.dtype;
    counter->p.items_total += 1;
    counter->p.bytes_total += static_cast<uint64_t>(NumElements(e->size)) * ElementSize(to);
  }
  auto report = [counter, &o](uint64_t bytes, size_t items) {
    if (!o.progress) return;
    std::lock_guard<std::mutex> lock(counter->mu);
    counter->p.bytes_done += bytes;
    counter->p.items_done += items;
    o.progress(counter->p);
  };
  std::vector<engine::TorchSaveEntry> out;
  out.reserve(entries.size());
  for (const EntryMeta* e : entries) {
    engine::TorchSaveEntry t;
    t.fqn = e->fqn;
    t.path = e->path;
    if (e->is_tensor()) {
      std::vector<plan::Box> boxes;
      for (const ChunkMeta& c : e->chunks) boxes.push_back({c.offsets, c.sizes});
      DCPP_RETURN_IF_ERROR(plan::ValidateChunks(e->fqn, e->size, boxes, true));
      const DType from = e->properties.dtype;
      const DType to = o.dtype && IsFloat(from) ? *o.dtype : from;
      t.is_tensor = true;
      t.dtype = to;
      t.shape = e->size;
      t.produce = [&src, e, to, report](const engine::BandSink& put) -> Status {
        DCPP_RETURN_IF_ERROR(
            ProduceRowBands(src, *e, to, [&](std::span<const uint8_t> bytes) -> Status {
              DCPP_RETURN_IF_ERROR(put(bytes));
              report(bytes.size(), 0);
              return Status();
            }));
        report(0, 1);
        return Status();
      };
    } else {
      const uint64_t cap =
          std::min<uint64_t>(e->storage.length, uint64_t{1} << 32) * 64 + (uint64_t{64} << 20);
      DCPP_ASSIGN_OR_RETURN(std::string blob, storage::ReadItem(src, e->storage, e->fqn, cap));
      DCPP_ASSIGN_OR_RETURN(t.value,
                            format::DecodeValueArchive(format::zip::AsBytes(blob), Quoted(e->fqn)));
      if (t.value.kind() == Value::Kind::kOpaque)
        return UnimplementedError(Quoted(e->fqn) + " is " + t.value.opaque().description +
                                  ", which dcpp cannot write into a torch.save file; leave it "
                                  "out with --keys");
    }
    out.push_back(std::move(t));
  }
  // DST is a file: its folder is the storage (created if missing).
  std::string path = dst;
  if (path.rfind("file://", 0) == 0) path = path.substr(7);
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  const size_t slash = path.rfind('/');
  const std::string parent =
      slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty() || name == "." || name == "..")
    return InvalidArgumentError("torch.save destination " + Quoted(dst) + " is not a file name");
  if (auto dir = io::IsDirectory(path); dir.ok() && *dir)
    return InvalidArgumentError("torch.save destination " + dst +
                                " is a directory; name the file to write (e.g. " + path +
                                "/model.pt)");
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> dir, storage::OpenStorage(parent));
  DCPP_RETURN_IF_ERROR(dir->CreateLocation());
  engine::TorchSaveWriteOptions wo;
  wo.io_threads = o.save.io_threads;
  wo.sync = o.save.sync_files;
  wo.overwrite = o.save.overwrite;
  wo.checksums = o.save.checksums;
  DCPP_RETURN_IF_ERROR(engine::WriteTorchSave(out, *dir, name, wo));
  // What was written, read back as a checkpoint (its data.pkl re-parsed).
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> written, storage::OpenStorage(path));
  return engine::ReadMetadata(*written);
}

Result<Metadata> ConvertImpl(const std::string& src, const std::string& dst,
                             const ConvertOptions& options) {
  ConvertOptions o = options;
  if (!o.progress) o.progress = o.save.progress;  // where earlier callers set it
  if (o.dtype && !IsFloat(*o.dtype))
    return InvalidArgumentError("the cast dtype must be a floating dtype, not " +
                                std::string(TorchName(*o.dtype)));
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> in, storage::OpenStorage(src));
  DCPP_ASSIGN_OR_RETURN(Metadata md, engine::ReadMetadata(*in));
  DCPP_ASSIGN_OR_RETURN(std::vector<const EntryMeta*> entries, Select(md, o.keys));
  auto format = storage::DetectCheckpointFormat(*in);
  if (o.verify_source && format.ok() && *format == storage::CheckpointFormat::kDcp) {
    // Stored bytes are copied or streamed without a load's per-item checks:
    // the source is checked first, so damage stops the convert before
    // anything is written.
    VerifyOptions vo;
    vo.io_threads = o.save.io_threads;
    vo.progress = o.progress;
    DCPP_ASSIGN_OR_RETURN(VerifyReport report, Verify(src, vo));
    if (!report.ok()) {
      const VerifyProblem& p = report.problems.front();
      std::string more;
      if (report.problems.size() > 1)
        more = " (and " + std::to_string(report.problems.size() - 1) +
               " more problems: run `dcpp verify " + src + "`)";
      return DataLossError("cannot convert " + src + ": it is damaged: " +
                           (p.fqn.empty() ? "" : Quoted(p.fqn) + " ") + "in " + p.file + ": " +
                           p.message + more);
    }
  }
  if (o.torch_save) return ToTorchSave(*in, entries, dst, o);
  if (o.save.format == SaveFormat::kSafetensors) return ToSafetensors(*in, entries, dst, o);
  return ToDcp(*in, entries, dst, o);
}

}  // namespace

bool LooksLikeTorchSavePath(const std::string& dst) {
  std::string p = dst;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  if (p.size() != dst.size()) return false;  // a trailing '/' names a directory
  bool suffix = false;
  for (std::string_view s : {".pt", ".pth", ".bin"})
    suffix |= p.size() > s.size() && p.compare(p.size() - s.size(), s.size(), s) == 0;
  if (!suffix || p.find("://") != std::string::npos) return false;
  auto dir = io::IsDirectory(p);
  return !(dir.ok() && *dir);
}

std::optional<DType> ParseFloatDType(std::string_view name) {
  if (name == "bf16" || name == "bfloat16") return DType::kBFloat16;
  if (name == "f16" || name == "fp16" || name == "float16" || name == "half")
    return DType::kFloat16;
  if (name == "f32" || name == "fp32" || name == "float32" || name == "float")
    return DType::kFloat32;
  if (name == "f64" || name == "fp64" || name == "float64" || name == "double")
    return DType::kFloat64;
  return std::nullopt;
}

Result<Metadata> Convert(const std::string& src, const std::string& dst,
                         const ConvertOptions& options) {
  return CatchExceptions("convert " + src + " to " + dst,
                         [&] { return ConvertImpl(src, dst, options); });
}

Result<Metadata> Convert(const std::string& src, const std::string& dst,
                         const SaveOptions& options) {
  ConvertOptions o;
  o.save = options;
  return Convert(src, dst, o);
}

}  // namespace dcpp::tools
