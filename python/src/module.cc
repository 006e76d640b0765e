// dcpp._dcpp: the extension module behind the dcpp Python package. The
// public, documented API is python/dcpp/__init__.py, which validates and
// normalizes arguments and calls these functions; names starting with an
// underscore here are private to the package.
//
// Every function that does I/O releases the GIL while dcpp works: Python
// objects are converted first (tensors borrowed, kept alive by the
// converter), then dcpp runs on its own threads, then results are converted
// back with the GIL held.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include <memory>
#include <string>
#include <vector>

#include "convert.h"
#include "dcpp/checkpoint.h"
#include "dcpp/storage/checksum_file.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/storage.h"
#include "dcpp/tools/convert.h"
#include "dcpp/tools/verify.h"
#include "errors.h"
#include "async_bindings.h"
#include "metadata_bindings.h"
#include "options.h"
#include "process_groups.h"
#include "storage_bindings.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace dcpp::python {
namespace {

std::string KindName(EntryMeta::Kind k) {
  return k == EntryMeta::Kind::kTensor ? "tensor" : "bytes";
}

std::string MemoryFormatName(MemoryFormat f) {
  switch (f) {
    case MemoryFormat::kContiguous:
      return "contiguous_format";
    case MemoryFormat::kChannelsLast:
      return "channels_last";
    case MemoryFormat::kPreserve:
      return "preserve_format";
  }
  return "unknown";
}

std::string StorageRepr(const StorageInfo& s) {
  std::string r = "StorageInfo(relative_path='" + s.relative_path +
                  "', offset=" + std::to_string(s.offset) + ", length=" + std::to_string(s.length);
  if (!s.transform_descriptors.empty()) {
    r += ", transform_descriptors=[";
    for (size_t i = 0; i < s.transform_descriptors.size(); ++i)
      r += (i ? ", '" : "'") + s.transform_descriptors[i] + "'";
    r += "]";
  }
  return r + ")";
}

void BindMetadata(nb::module_& m) {
  nb::class_<StorageInfo>(m, "StorageInfo",
                          "Where one stored item's bytes are: [offset, offset + length) of "
                          "relative_path, after undoing transform_descriptors (first outermost).")
      .def_ro("relative_path", &StorageInfo::relative_path)
      .def_ro("offset", &StorageInfo::offset)
      .def_ro("length", &StorageInfo::length)
      .def_ro("transform_descriptors", &StorageInfo::transform_descriptors)
      .def_prop_ro(
          "raw",
          [](const StorageInfo& s) { return s.encoding == StorageInfo::Encoding::kRawTensor; },
          "True for a tensor stored as its bare elements (a safetensors tensor), "
          "False for a torch.save archive (DCP).")
      .def("__repr__", &StorageRepr);

  nb::class_<ChunkMeta>(m, "Chunk", "One saved piece of a tensor: global offsets, sizes, storage.")
      .def_ro("offsets", &ChunkMeta::offsets)
      .def_ro("sizes", &ChunkMeta::sizes)
      .def_ro("storage", &ChunkMeta::storage)
      .def("__repr__", [](const ChunkMeta& c) {
        return "Chunk(offsets=" + ShapeToString(c.offsets) + ", sizes=" + ShapeToString(c.sizes) +
               ", storage=" + StorageRepr(c.storage) + ")";
      });

  nb::class_<EntryMeta>(m, "Entry",
                        "One flattened state dict entry (one FQN): a tensor, with its global "
                        "size and saved chunks, or a pickled value ('bytes') with its storage.")
      .def_ro("fqn", &EntryMeta::fqn)
      .def_prop_ro(
          "kind", [](const EntryMeta& e) { return KindName(e.kind); }, "'tensor' or 'bytes'.")
      .def_ro("path", &EntryMeta::path,
              "The keys and list indices leading to the entry from the state dict root "
              "(empty when the checkpoint does not record them).")
      .def_prop_ro(
          "dtype",
          [](const EntryMeta& e) -> std::optional<std::string> {
            if (!e.is_tensor()) return std::nullopt;
            return std::string(TorchName(e.properties.dtype));
          },
          "torch's dtype name ('float32', 'bfloat16', ...) for tensors, else None.")
      .def_prop_ro(
          "size", [](const EntryMeta& e) { return e.size; }, "Global shape (tensors).")
      .def_prop_ro("requires_grad", [](const EntryMeta& e) { return e.properties.requires_grad; })
      .def_prop_ro("memory_format",
                   [](const EntryMeta& e) { return MemoryFormatName(e.properties.memory_format); })
      .def_prop_ro("pin_memory", [](const EntryMeta& e) { return e.properties.pin_memory; })
      .def_ro("chunks", &EntryMeta::chunks)
      .def_prop_ro(
          "storage",
          [](const EntryMeta& e) -> std::optional<StorageInfo> {
            if (e.is_tensor()) return std::nullopt;
            return e.storage;
          },
          "Where a 'bytes' entry is stored (None for tensors).")
      .def("__repr__", [](const EntryMeta& e) {
        if (!e.is_tensor()) return "Entry('" + e.fqn + "', bytes)";
        return "Entry('" + e.fqn + "', " + std::string(TorchName(e.properties.dtype)) + " " +
               ShapeToString(e.size) + ", " + std::to_string(e.chunks.size()) + " chunks)";
      });

  nb::class_<StorageMeta>(m, "StorageMeta")
      .def_ro("checkpoint_id", &StorageMeta::checkpoint_id)
      .def_ro("save_id", &StorageMeta::save_id)
      .def_ro("load_id", &StorageMeta::load_id)
      .def_ro("modules", &StorageMeta::modules);

  nb::class_<Metadata>(m, "Metadata",
                       "What a checkpoint's .metadata says: its entries in save order. "
                       "Index it by FQN: md['model.weight'].")
      .def_ro("entries", &Metadata::entries)
      .def_ro("storage_meta", &Metadata::storage_meta)
      .def_ro("version", &Metadata::version)
      .def(
          "keys",
          [](const Metadata& md) {
            std::vector<std::string> keys;
            keys.reserve(md.entries.size());
            for (const EntryMeta& e : md.entries) keys.push_back(e.fqn);
            return keys;
          },
          "The FQNs, in save order.")
      .def("__len__", [](const Metadata& md) { return md.entries.size(); })
      .def("__contains__",
           [](const Metadata& md, const std::string& fqn) { return md.Find(fqn) != nullptr; })
      .def("__getitem__",
           [](const Metadata& md, const std::string& fqn) {
             const EntryMeta* e = md.Find(fqn);
             if (e == nullptr) throw nb::key_error(fqn.c_str());
             return *e;
           })
      .def("__repr__", [](const Metadata& md) {
        return "Metadata(" + std::to_string(md.entries.size()) + " entries, version " +
               md.version.value_or("unknown") + ")";
      });
}

Metadata SaveImpl(nb::handle state_dict, const std::string& path, int thread_count,
                  int io_threads, bool single_file_per_rank, bool sync_files, bool overwrite,
                  bool checksums, std::vector<std::string> transforms, int compression_level,
                  bool dedup_to_lowest_rank, nb::object progress, int64_t lock_timeout_ms,
                  nb::object process_group, std::string format, uint64_t max_shard_size,
                  std::map<std::string, int> fqn_to_file_index) {
  std::unique_ptr<ProcessGroup> group = MakePyProcessGroup(process_group);
  PyHelpers helpers = PyHelpers::Get();
  ToValueConverter conv(helpers, ToValueConverter::Purpose::kSave);
  Value sd;
  SaveOptions o;
  PrepareSave(state_dict,
              {thread_count, io_threads, single_file_per_rank, sync_files, overwrite,
               checksums, std::move(transforms), compression_level,
               dedup_to_lowest_rank, lock_timeout_ms, std::move(format),
               max_shard_size, std::move(fqn_to_file_index)},
              std::move(progress), group.get(), conv, &sd, &o);
  o.process_group = group.get();
  Result<Metadata> md = [&] {
    nb::gil_scoped_release release;
    return Save(sd, path, o);
  }();
  return ValueOrThrow(std::move(md));
}

Metadata ConvertImpl(const std::string& src, const std::string& dst, const std::string& to,
                     std::vector<std::string> keys, const std::string& dtype,
                     uint64_t max_shard_size, int io_threads, bool sync_files, bool overwrite,
                     nb::object progress) {
  tools::ConvertOptions o;
  if (to == "safetensors")
    o.save.format = SaveFormat::kSafetensors;
  else if (to == "torch-save" || to == "torch_save")
    o.torch_save = true;
  else if (to != "dcp")
    throw nb::value_error(
        ("to must be 'dcp', 'safetensors' or 'torch-save', got '" + to + "'").c_str());
  if (!dtype.empty()) {
    o.dtype = tools::ParseFloatDType(dtype);
    if (!o.dtype)
      throw nb::value_error(("dtype must be bf16, f16, f32 or f64, got '" + dtype + "'").c_str());
  }
  o.keys = std::move(keys);
  o.save.max_shard_size = max_shard_size;
  o.save.io_threads = io_threads;
  o.save.sync_files = sync_files;
  o.save.overwrite = overwrite;
  o.save.progress = WrapProgress(std::move(progress));
  Result<Metadata> md = [&] {
    nb::gil_scoped_release release;
    return tools::Convert(src, dst, o);
  }();
  return ValueOrThrow(std::move(md));
}

void LoadIntoImpl(nb::handle state_dict, const std::string& path, int thread_count,
                  bool allow_partial_load, nb::object progress, bool torch_tensors,
                  bool weights_only, bool verify_checksums, nb::object process_group) {
  std::unique_ptr<ProcessGroup> group = MakePyProcessGroup(process_group);
  PyHelpers helpers = PyHelpers::Get();
  ToValueConverter conv(helpers, ToValueConverter::Purpose::kLoadInto);
  Value sd;
  LoadOptions o;
  LocalStep step(group.get());
  step.Run([&] {
    sd = conv.ConvertStateDict(state_dict);
    o.progress = WrapProgress(std::move(progress));
  });
  step.Agree("load");
  o.process_group = group.get();
  o.io_threads = thread_count;
  o.allow_partial_load = allow_partial_load;
  o.verify_checksums = verify_checksums;
  Status s = [&] {
    nb::gil_scoped_release release;
    return Load(sd, path, o);
  }();
  ThrowIfError(s);
  conv.FinishLoad(state_dict, sd, torch_tensors, weights_only);
}

nb::object LoadAllImpl(const std::string& path, int thread_count, std::vector<std::string> keys,
                       nb::object progress, bool torch_tensors, bool weights_only,
                       bool verify_checksums, nb::object process_group) {
  std::unique_ptr<ProcessGroup> group = MakePyProcessGroup(process_group);
  PyHelpers helpers = PyHelpers::Get();
  LoadAllOptions o;
  o.io_threads = thread_count;
  o.keys = std::move(keys);
  o.verify_checksums = verify_checksums;
  o.progress = WrapProgress(std::move(progress));
  // Every rank reads the whole selection; with a group the ranks then agree
  // on the outcome, so all of them return or all raise the same error.
  Result<Value> v = [&]() -> Result<Value> {
    nb::gil_scoped_release release;
    Result<Value> r = LoadAll(path, o);
    Status all = AgreeOnStatus(group.get(), "load", r.status());
    if (!all.ok()) return all;
    return r;
  }();
  Value value = ValueOrThrow(std::move(v));
  return FromValue(value, helpers, FromValueOptions{torch_tensors, weights_only}, "state_dict");
}

// For the package's own argument checks with a process group: this rank
// raised `exception` before reaching dcpp, and takes part in the first
// collective of the call anyway, so that every rank raises the same error
// (see LocalStep).
void FailTogetherImpl(const std::string& what, nb::object process_group, nb::handle exception) {
  std::unique_ptr<ProcessGroup> group = MakePyProcessGroup(process_group);
  LocalStep step(group.get());
  step.Fail(exception);
  step.Agree(what);
  throw nb::type_error("dcpp: _fail_together did not raise");  // unreachable with a group
}

Metadata ReadMetadataImpl(const std::string& path) {
  Result<Metadata> md = [&] {
    nb::gil_scoped_release release;
    return ReadMetadata(path);
  }();
  return ValueOrThrow(std::move(md));
}

// dcpp.verify: the report as a dict (the package wraps it).
nb::dict VerifyImpl(const std::string& path, int thread_count, nb::object progress) {
  tools::VerifyOptions o;
  o.io_threads = thread_count;
  o.progress = WrapProgress(std::move(progress));
  Result<tools::VerifyReport> r = [&] {
    nb::gil_scoped_release release;
    return tools::Verify(path, o);
  }();
  tools::VerifyReport report = ValueOrThrow(std::move(r));
  nb::dict d;
  d["checkpoint"] = report.checkpoint;
  d["ok"] = report.ok();
  d["checksum_file"] = report.checksum_file;
  d["entries"] = report.entries;
  d["items"] = report.items;
  d["bytes_read"] = report.bytes_read;
  d["seconds"] = report.seconds;
  nb::list problems;
  for (const auto& p : report.problems) {
    nb::dict q;
    q["fqn"] = p.fqn;
    q["file"] = p.file;
    q["message"] = p.message;
    problems.append(q);
  }
  d["problems"] = problems;
  nb::list unref;
  for (const auto& f : report.unreferenced_files) unref.append(f);
  d["unreferenced_files"] = unref;
  d["text"] = tools::VerifyReportText(report);
  return d;
}

// For writers that commit .metadata themselves (the torch drop-in writer):
// writes the sidecar checksum file for the exact `metadata_bytes` about to
// be committed in `dir`, after the data files are written and before the
// .metadata rename. Returns the sidecar's name, or None when the metadata
// has no save_id usable as a file name (then there is no sidecar).
std::optional<std::string> WriteChecksumFileImpl(const std::string& dir, nb::bytes metadata_bytes,
                                                 bool sync) {
  std::string bytes(metadata_bytes.c_str(), metadata_bytes.size());
  Result<std::optional<std::string>> r = [&]() -> Result<std::optional<std::string>> {
    nb::gil_scoped_release release;
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> st, storage::OpenStorage(dir));
    DCPP_ASSIGN_OR_RETURN(Metadata md, storage::DecodeCheckpointMetadata(*st, bytes));
    if (!md.storage_meta || !md.storage_meta->save_id) return std::optional<std::string>();
    const std::string name = format::ChecksumFileName(*md.storage_meta->save_id);
    if (name.empty()) return std::optional<std::string>();
    DCPP_ASSIGN_OR_RETURN(format::ChecksumFile f,
                          storage::ChecksumFileFromData(*st, md, *md.storage_meta->save_id, bytes));
    DCPP_RETURN_IF_ERROR(storage::WriteChecksumFile(*st, f, sync));
    return std::optional<std::string>(name);
  }();
  return ValueOrThrow(std::move(r));
}

}  // namespace
}  // namespace dcpp::python

NB_MODULE(_dcpp, m) {
  using namespace dcpp::python;
  m.doc() = "dcpp's C++ core. Use the dcpp package, not this module.";
  RegisterErrors(m);
  RegisterExceptionTranslator();
  BindMetadata(m);
  m.def("save", &SaveImpl, "state_dict"_a, "path"_a, "thread_count"_a, "io_threads"_a,
        "single_file_per_rank"_a, "sync_files"_a, "overwrite"_a, "checksums"_a, "transforms"_a,
        "compression_level"_a, "dedup_to_lowest_rank"_a, "progress"_a.none(),
        "lock_timeout_ms"_a = 0, "process_group"_a.none() = nb::none(), "format"_a = "dcp",
        "max_shard_size"_a = 0, "fqn_to_file_index"_a = std::map<std::string, int>());
  m.def("convert", &ConvertImpl, "src"_a, "dst"_a, "to"_a = "dcp",
        "keys"_a = std::vector<std::string>(), "dtype"_a = "", "max_shard_size"_a = 0,
        "io_threads"_a = 0, "sync_files"_a = true, "overwrite"_a = true,
        "progress"_a.none() = nb::none());
  m.def("load_into", &LoadIntoImpl, "state_dict"_a, "path"_a, "thread_count"_a,
        "allow_partial_load"_a, "progress"_a.none(), "torch_tensors"_a, "weights_only"_a,
        "verify_checksums"_a = true, "process_group"_a.none() = nb::none());
  m.def("load_all", &LoadAllImpl, "path"_a, "thread_count"_a, "keys"_a, "progress"_a.none(),
        "torch_tensors"_a, "weights_only"_a, "verify_checksums"_a = true,
        "process_group"_a.none() = nb::none());
  m.def("_fail_together", &FailTogetherImpl, "what"_a, "process_group"_a, "exception"_a);
  m.def("verify", &VerifyImpl, "path"_a, "thread_count"_a = 0, "progress"_a.none() = nb::none());
  m.def("_write_checksum_file", &WriteChecksumFileImpl, "dir"_a, "metadata_bytes"_a,
        "sync"_a = true);
  m.def("read_metadata", &ReadMetadataImpl, "path"_a);
  BindStorage(m);
  BindAsync(m);
  BindProcessGroups(m);
  BindTorchMetadata(m);
}
