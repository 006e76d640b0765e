// Save with SaveFormat::kSafetensors: a Hugging Face model directory, as
// torch's HuggingFaceStorageWriter writes it for a rank-0 save.
//
// Each file's header follows from the tensors' dtypes and shapes alone, so
// it is written first and every tensor's bytes go to their final offsets by
// positional writes straight from the caller's memory: nothing is staged,
// and the pieces of a ShardedTensor land in place (row runs), which is the
// consolidation torch does by reading every shard file back.
#include <atomic>
#include <mutex>
#include <random>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/engine/engine.h"
#include "dcpp/engine/safetensors_save.h"
#include "dcpp/format/json.h"
#include "dcpp/format/safetensors.h"
#include "dcpp/plan/flatten.h"
#include "dcpp/plan/validate.h"
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
  for (int64_t done = 0;; ) {
    int64_t at = 0;
    for (size_t d = 0; d < nd; ++d)
      at += (piece.offsets[d] + (d < k ? idx[d] : 0)) * gstrides[d];
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

Result<std::vector<OutTensor>> CollectTensors(const Value& state_dict,
                                              std::vector<Tensor>& copies) {
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
      // A safetensors tensor is whole: its shards must tile it.
      DCPP_RETURN_IF_ERROR(plan::ValidateChunks(f.fqn, t.shape, boxes, true));
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
    return InvalidArgumentError("safetensors holds only tensors; the state dict also has " +
                                list + ": leave them out of what is saved");
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

Result<Metadata> SaveSafetensorsImpl(const Value& state_dict, storage::Storage& storage,
                                     const SaveOptions& o) {
  if (o.process_group && o.process_group->size() > 1)
    return UnimplementedError(
        "a distributed save in safetensors format is not implemented yet: save from one rank "
        "(gather the state dict there), or save DCP and convert with `dcpp convert --to "
        "safetensors`");
  std::vector<Tensor> copies;
  DCPP_ASSIGN_OR_RETURN(std::vector<OutTensor> tensors, CollectTensors(state_dict, copies));
  std::vector<SafetensorsSource> sources;
  sources.reserve(tensors.size());
  for (const OutTensor& t : tensors) {
    sources.push_back({t.fqn, t.dtype, t.shape, [&t](const PieceSink& put) -> Status {
                         for (const Piece& p : t.pieces) DCPP_RETURN_IF_ERROR(put(p.offsets, p.view));
                         return Status();
                       }});
  }
  return WriteSafetensors(sources, storage, o);
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
    if (o.max_shard_size > 0 && in_file > 0 && in_file + n > o.max_shard_size) {
      files.emplace_back();
      in_file = 0;
    }
    files.back().push_back(i);
    in_file += n;
    total += n;
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
    Status s = pl.file->WriteAt(
        0, {reinterpret_cast<const uint8_t*>(header.data()), header.size()});
    if (!s.ok()) return cleanup(s);
  }
  // Every tensor in parallel: positional writes to distinct ranges.
  std::mutex mu;
  Progress p{"write", 0, total, 0, tensors.size()};
  const int threads = o.io_threads > 0 ? o.io_threads : DefaultThreadCount();
  Status written = ParallelFor(tensors.size(), threads, [&](size_t i) -> Status {
    const SafetensorsSource& t = tensors[i];
    const auto [f, base] = where[i];
    storage::WritableFile& file = *planned[f].file;
    const std::string at = "writing " + Quoted(t.fqn) + " to " + storage.Describe(planned[f].name);
    DCPP_RETURN_IF_ERROR(t.produce([&](const Shape& offsets, const TensorView& view) -> Status {
                           if (view.dtype != t.dtype || offsets.size() != t.shape.size() ||
                               view.shape.size() != t.shape.size() || !view.is_contiguous())
                             return InternalError("a piece does not match its tensor");
                           for (size_t d = 0; d < offsets.size(); ++d)
                             if (offsets[d] < 0 || view.shape[d] < 0 ||
                                 offsets[d] + view.shape[d] > t.shape[d])
                               return InternalError("a piece lies outside its tensor");
                           return WritePiece(file, base, t.shape, {offsets, view});
                         }).WithContext(at));
    if (o.progress) {
      std::lock_guard<std::mutex> lock(mu);
      p.bytes_done += nbytes[i];
      p.items_done++;
      o.progress(p);
    }
    return Status();
  });
  if (!written.ok()) return cleanup(written);
  for (Planned& pl : planned) {
    Status s = o.sync_files ? pl.file->Sync() : Status();
    if (s.ok()) s = pl.file->Close();
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
