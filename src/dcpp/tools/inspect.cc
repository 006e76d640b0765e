#include "dcpp/tools/inspect.h"

#include <algorithm>
#include <cstdio>
#include <map>

#include "dcpp/format/json.h"

namespace dcpp::tools {
namespace {

std::string HumanBytes(uint64_t n) {
  static const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, kUnits[u]);
  return buf;
}

uint64_t StoredBytes(const EntryMeta& e) {
  if (!e.is_tensor()) return e.storage.length;
  uint64_t n = 0;
  for (const auto& c : e.chunks) n += c.storage.length;
  return n;
}

std::vector<std::string> Files(const EntryMeta& e) {
  std::vector<std::string> files;
  auto add = [&](const std::string& f) {
    if (std::find(files.begin(), files.end(), f) == files.end()) files.push_back(f);
  };
  if (e.is_tensor()) {
    for (const auto& c : e.chunks) add(c.storage.relative_path);
  } else {
    add(e.storage.relative_path);
  }
  return files;
}

std::string Join(const std::vector<std::string>& parts, size_t max_parts) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i == max_parts) return out + ", ... (" + std::to_string(parts.size()) + " files)";
    if (i) out += ", ";
    out += parts[i];
  }
  return out;
}

}  // namespace

std::string InspectText(const std::string& dir, const Metadata& md) {
  struct Row {
    std::string fqn, type, shape, chunks, bytes, files;
  };
  std::vector<Row> rows;
  Row header{"FQN", "TYPE", "SHAPE", "CHUNKS", "STORED", "FILES"};
  uint64_t total = 0;
  size_t tensors = 0;
  std::map<std::string, uint64_t> per_file;
  for (const auto& e : md.entries) {
    const uint64_t stored = StoredBytes(e);
    total += stored;
    Row r;
    r.fqn = e.fqn;
    if (e.is_tensor()) {
      ++tensors;
      r.type = std::string(TorchName(e.properties.dtype));
      if (e.properties.requires_grad) r.type += " (grad)";
      r.shape = ShapeToString(e.size);
      r.chunks = std::to_string(e.chunks.size());
      for (const auto& c : e.chunks) per_file[c.storage.relative_path] += c.storage.length;
    } else {
      r.type = "bytes";
      r.shape = "-";
      r.chunks = "-";
      per_file[e.storage.relative_path] += e.storage.length;
    }
    r.bytes = std::to_string(stored);
    r.files = Join(Files(e), 3);
    rows.push_back(std::move(r));
  }
  size_t w[5] = {header.fqn.size(), header.type.size(), header.shape.size(), header.chunks.size(),
                 header.bytes.size()};
  for (const auto& r : rows) {
    w[0] = std::max(w[0], r.fqn.size());
    w[1] = std::max(w[1], r.type.size());
    w[2] = std::max(w[2], r.shape.size());
    w[3] = std::max(w[3], r.chunks.size());
    w[4] = std::max(w[4], r.bytes.size());
  }
  w[0] = std::min<size_t>(w[0], 80);
  auto line = [&](const Row& r) {
    char buf[64];
    std::string out = r.fqn;
    out.resize(std::max(out.size(), w[0]), ' ');
    for (auto [s, width] : {std::pair{&r.type, w[1]}, {&r.shape, w[2]}}) {
      out += "  " + *s;
      out.append(width - std::min(width, s->size()), ' ');
    }
    std::snprintf(buf, sizeof buf, "  %*s  %*s", static_cast<int>(w[3]), r.chunks.c_str(),
                  static_cast<int>(w[4]), r.bytes.c_str());
    return out + buf + "  " + r.files + "\n";
  };
  std::string out = "checkpoint " + dir + "\n";
  out += "  format version " + md.version.value_or("(none: written before 1.0.0)") + "; " +
         std::to_string(md.entries.size()) + " entries (" + std::to_string(tensors) +
         " tensors, " + std::to_string(md.entries.size() - tensors) + " other values); " +
         HumanBytes(total) + " stored in " + std::to_string(per_file.size()) + " data files\n";
  if (md.storage_meta && md.storage_meta->save_id)
    out += "  save id " + *md.storage_meta->save_id + "\n";
  out += "\n" + line(header);
  for (const auto& r : rows) out += line(r);
  out += "\nfiles:\n";
  for (const auto& [file, bytes] : per_file)
    out += "  " + file + "  " + std::to_string(bytes) + " bytes (" + HumanBytes(bytes) + ")\n";
  return out;
}

std::string InspectJson(const std::string& dir, const Metadata& md) {
  using format::json::Array;
  using format::json::Json;
  using format::json::Object;
  auto shape = [](const Shape& s) {
    Array a;
    for (int64_t d : s) a.push_back(Json(d));
    return Json(std::move(a));
  };
  auto storage = [](Object& obj, const StorageInfo& s) {
    obj.Set("file", Json(s.relative_path));
    obj.Set("offset", Json(s.offset));
    obj.Set("length", Json(s.length));
    Array t;
    for (const auto& d : s.transform_descriptors) t.push_back(Json(d));
    obj.Set("transforms", Json(std::move(t)));
  };
  Object root;
  root.Set("path", Json(dir));
  root.Set("version", md.version ? Json(*md.version) : Json());
  Array entries;
  uint64_t total = 0;
  std::map<std::string, uint64_t> per_file;
  for (const auto& e : md.entries) {
    Object j;
    j.Set("fqn", Json(e.fqn));
    total += StoredBytes(e);
    if (e.is_tensor()) {
      j.Set("kind", Json("tensor"));
      j.Set("dtype", Json(TorchName(e.properties.dtype)));
      j.Set("shape", shape(e.size));
      j.Set("requires_grad", Json(e.properties.requires_grad));
      Array chunks;
      for (const auto& c : e.chunks) {
        Object cj;
        cj.Set("offsets", shape(c.offsets));
        cj.Set("sizes", shape(c.sizes));
        storage(cj, c.storage);
        per_file[c.storage.relative_path] += c.storage.length;
        chunks.push_back(Json(std::move(cj)));
      }
      j.Set("chunks", Json(std::move(chunks)));
    } else {
      j.Set("kind", Json("bytes"));
      storage(j, e.storage);
      per_file[e.storage.relative_path] += e.storage.length;
    }
    j.Set("stored_bytes", Json(StoredBytes(e)));
    entries.push_back(Json(std::move(j)));
  }
  root.Set("entries", Json(std::move(entries)));
  root.Set("total_stored_bytes", Json(total));
  Object files;
  for (const auto& [file, bytes] : per_file) files.Set(file, Json(bytes));
  root.Set("files", Json(std::move(files)));
  return format::json::Serialize(Json(std::move(root)), 2) + "\n";
}

}  // namespace dcpp::tools
