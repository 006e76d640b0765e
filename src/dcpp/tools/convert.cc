#include "dcpp/tools/convert.h"

#include <fnmatch.h>

#include <cstring>
#include <memory>
#include <new>
#include <unordered_map>

#include "dcpp/base/exception_barrier.h"
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

namespace dcpp::tools {
namespace {

std::string Quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

// Rows of a saved chunk read at once when streaming into safetensors.
constexpr uint64_t kBandBytes = uint64_t{32} << 20;

bool IsFloat(DType d) {
  return d == DType::kFloat16 || d == DType::kBFloat16 || d == DType::kFloat32 ||
         d == DType::kFloat64;
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff, x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400));
      x = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ff) << 13);
    }
  } else if (exp == 0x1f) {
    x = sign | 0x7f800000 | (mant << 13);
  } else {
    x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

// Round to nearest even, as torch's .half() does.
uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000;
  uint32_t mant = x & 0x7fffff;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xff);
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00 | (mant ? 0x200 : 0));
  const int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000;
    const uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t half = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) ++half;  // a carry rounds up to inf
  return static_cast<uint16_t>(sign | half);
}

float BF16ToFloat(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t FloatToBF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffff) > 0x7f800000) return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN
  x += 0x7fff + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

// Casts the contiguous floating tensor `src` into `dst` (same shape).
void CastFloats(const TensorView& src, const TensorView& dst) {
  const int64_t n = NumElements(src.shape);
  const auto* s = static_cast<const uint8_t*>(src.data);
  auto* d = static_cast<uint8_t*>(dst.data);
  for (int64_t i = 0; i < n; ++i) {
    double v = 0;
    switch (src.dtype) {
      case DType::kFloat16: {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        v = HalfToFloat(h);
        break;
      }
      case DType::kBFloat16: {
        uint16_t h;
        std::memcpy(&h, s + 2 * i, 2);
        v = BF16ToFloat(h);
        break;
      }
      case DType::kFloat32: {
        float f;
        std::memcpy(&f, s + 4 * i, 4);
        v = f;
        break;
      }
      default: {
        std::memcpy(&v, s + 8 * i, 8);
        break;
      }
    }
    switch (dst.dtype) {
      case DType::kFloat16: {
        const uint16_t h = FloatToHalf(static_cast<float>(v));
        std::memcpy(d + 2 * i, &h, 2);
        break;
      }
      case DType::kBFloat16: {
        const uint16_t h = FloatToBF16(static_cast<float>(v));
        std::memcpy(d + 2 * i, &h, 2);
        break;
      }
      case DType::kFloat32: {
        const float f = static_cast<float>(v);
        std::memcpy(d + 4 * i, &f, 4);
        break;
      }
      default:
        std::memcpy(d + 8 * i, &v, 8);
        break;
    }
  }
}

Result<Tensor> CastTensor(const Tensor& t, DType to) {
  DCPP_ASSIGN_OR_RETURN(Tensor src, Tensor::Empty(t.dtype(), t.shape()));
  DCPP_RETURN_IF_ERROR(CopyTensor(t.view(), src.view()));  // contiguous
  DCPP_ASSIGN_OR_RETURN(Tensor out, Tensor::Empty(to, t.shape()));
  CastFloats(src.view(), out.view());
  return out;
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
  std::vector<engine::SafetensorsSource> sources;
  for (const EntryMeta* e : entries) {
    std::vector<plan::Box> boxes;
    for (const ChunkMeta& c : e->chunks) boxes.push_back({c.offsets, c.sizes});
    DCPP_RETURN_IF_ERROR(plan::ValidateChunks(e->fqn, e->size, boxes, true));
    const DType from = e->properties.dtype;
    const DType to = o.dtype && IsFloat(from) ? *o.dtype : from;
    sources.push_back(
        {e->fqn, to, e->size, [&src, e, from, to](const engine::PieceSink& put) -> Status {
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
             }
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
  return engine::WriteSafetensors(sources, *out, o.save);
}

Result<Metadata> ToDcp(storage::Storage& src, const Metadata& src_md,
                       const std::vector<const EntryMeta*>& entries, const std::string& dst,
                       const ConvertOptions& o) {
  // Tensors through LoadAll (exact FQNs); values copied as their stored
  // archives, so each stays the one value it was, whatever is inside it.
  LoadAllOptions load_options;
  load_options.io_threads = o.save.io_threads;
  for (const EntryMeta* e : entries)
    if (e->is_tensor()) load_options.keys.push_back(e->fqn);
  Value state = Value::EmptyDict();
  if (!load_options.keys.empty()) {
    DCPP_ASSIGN_OR_RETURN(state, engine::LoadAll(src, load_options));
  }
  for (const EntryMeta* e : entries) {
    if (e->is_tensor()) continue;
    const uint64_t cap =
        std::min<uint64_t>(e->storage.length, uint64_t{1} << 32) * 64 + (uint64_t{64} << 20);
    DCPP_ASSIGN_OR_RETURN(std::string blob, storage::ReadItem(src, e->storage, e->fqn, cap));
    const ObjectPath path = e->path.empty() ? ObjectPath{e->fqn} : e->path;
    DCPP_RETURN_IF_ERROR(plan::SetElement(state, path, Value(Opaque{std::move(blob), "copied"}))
                             .WithContext("rebuilding " + Quoted(e->fqn)));
  }
  if (o.dtype) {
    DCPP_ASSIGN_OR_RETURN(auto flat, plan::FlattenMutable(state));
    for (auto& f : flat) {
      if (!f.value->is_tensor() || !IsFloat(f.value->tensor().dtype())) continue;
      if (f.value->tensor().dtype() == *o.dtype) continue;
      DCPP_ASSIGN_OR_RETURN(Tensor cast, CastTensor(f.value->tensor(), *o.dtype));
      *f.value = Value(std::move(cast));
    }
  }
  // Save records what a tensor's memory says (dtype); the source's extra
  // tensor properties are metadata only, so they are copied into the
  // metadata before it is committed (in the same locked commit).
  std::unordered_map<std::string_view, const EntryMeta*> by_fqn;
  for (const EntryMeta* e : entries) by_fqn.emplace(e->fqn, e);
  auto copy_properties = [&](Metadata& md) -> Status {
    size_t matched = 0;
    for (auto& e : md.entries) {
      auto it = by_fqn.find(e.fqn);
      if (it == by_fqn.end()) continue;
      ++matched;
      if (e.is_tensor() && it->second->is_tensor()) {
        const DType written = e.properties.dtype;
        e.properties = it->second->properties;
        e.properties.dtype = written;  // a cast changes it
      }
    }
    if (matched != entries.size() || md.entries.size() != entries.size())
      return InternalError("converting " + src.Describe("") + " changed its set of keys (" +
                           std::to_string(entries.size()) + " in, " +
                           std::to_string(md.entries.size()) + " out, " + std::to_string(matched) +
                           " matched); " + dst + " would not be a faithful copy");
    return Status();
  };
  (void)src_md;
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> out, storage::OpenStorage(dst));
  return engine::Save(state, *out, o.save, copy_properties);
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
      t.produce = [&src, e, to](const engine::BandSink& put) {
        return ProduceRowBands(src, *e, to, put);
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
                             const ConvertOptions& o) {
  if (o.dtype && !IsFloat(*o.dtype))
    return InvalidArgumentError("the cast dtype must be a floating dtype, not " +
                                std::string(TorchName(*o.dtype)));
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> in, storage::OpenStorage(src));
  DCPP_ASSIGN_OR_RETURN(Metadata md, engine::ReadMetadata(*in));
  DCPP_ASSIGN_OR_RETURN(std::vector<const EntryMeta*> entries, Select(md, o.keys));
  if (o.torch_save) return ToTorchSave(*in, entries, dst, o);
  if (o.save.format == SaveFormat::kSafetensors) return ToSafetensors(*in, entries, dst, o);
  return ToDcp(*in, md, entries, dst, o);
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
