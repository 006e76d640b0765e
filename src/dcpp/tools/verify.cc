#include "dcpp/tools/verify.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <unordered_set>

#include "dcpp/base/crc32.h"
#include "dcpp/base/thread_pool.h"
#include "dcpp/format/checksums.h"
#include "dcpp/format/json.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/plan/validate.h"
#include "dcpp/storage/checksum_file.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/dcp_layout.h"
#include "dcpp/storage/safetensors_layout.h"
#include "dcpp/storage/storage.h"

namespace dcpp::tools {
namespace {

// Large uncompressed records are checksummed in segments of this size, each
// on whichever thread is free, then combined.
constexpr uint64_t kSegmentBytes = uint64_t{32} << 20;
// Items below this are read (and checked) whole.
constexpr uint64_t kWholeBelow = uint64_t{1} << 20;

struct Segment {
  size_t record;  // index into the records
  uint64_t offset, length;
  uint32_t crc = 0;
};

class Collector {
 public:
  void Problem(std::string fqn, std::string file, std::string message) {
    std::lock_guard<std::mutex> lock(mu_);
    problems_.push_back({std::move(fqn), std::move(file), std::move(message)});
  }
  std::vector<VerifyProblem> Take() {
    std::sort(problems_.begin(), problems_.end(), [](const auto& a, const auto& b) {
      return std::tie(a.file, a.fqn, a.message) < std::tie(b.file, b.fqn, b.message);
    });
    return std::move(problems_);
  }

 private:
  std::mutex mu_;
  std::vector<VerifyProblem> problems_;
};

class ProgressSink {
 public:
  ProgressSink(const ProgressCallback& cb, uint64_t bytes_total, size_t items_total) : cb_(cb) {
    p_.phase = "verify";
    p_.bytes_total = bytes_total;
    p_.items_total = items_total;
  }
  void Add(uint64_t bytes, size_t items) {
    std::lock_guard<std::mutex> lock(mu_);
    p_.bytes_done += bytes;
    p_.items_done += items;
    if (cb_) cb_(p_);
  }
  uint64_t bytes_done() const { return p_.bytes_done; }

 private:
  const ProgressCallback& cb_;
  std::mutex mu_;
  Progress p_;
};

// One stored item: a tensor chunk (chunk set) or a value.
struct Item {
  const EntryMeta* entry;
  const ChunkMeta* chunk;  // null for a value
  const StorageInfo& storage() const { return chunk ? chunk->storage : entry->storage; }
};

}  // namespace

Result<VerifyReport> Verify(const std::string& dir, const VerifyOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  VerifyReport report;
  report.checkpoint = dir;
  Collector problems;
  const std::string metadata_name(io::kMetadataFileName);

  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> location, storage::OpenStorage(dir));
  storage::Storage& st = *location;
  // A safetensors checkpoint: its headers stand for .metadata (there is no
  // sidecar), and its tensors are checked for structure and bounds only.
  auto format = storage::DetectCheckpointFormat(st);
  // A torch.save file likewise: its data.pkl stands for .metadata.
  const bool safetensors = format.ok() && (*format == storage::CheckpointFormat::kSafetensors ||
                                           *format == storage::CheckpointFormat::kTorchSave);
  std::string md_bytes;
  Result<Metadata> decoded = InternalError("unset");
  if (safetensors) {
    decoded = storage::ReadAnyCheckpointMetadata(st);
    if (!decoded.ok() && decoded.status().code() != StatusCode::kDataLoss &&
        decoded.status().code() != StatusCode::kUnimplemented)
      return decoded.status();
  } else {
    DCPP_ASSIGN_OR_RETURN(md_bytes, storage::ReadCheckpointMetadataBytes(st));
    decoded = storage::DecodeCheckpointMetadata(st, md_bytes);
  }
  if (!decoded.ok()) {
    report.problems.push_back({"", safetensors ? "" : metadata_name, decoded.status().ToString()});
    return report;
  }
  const Metadata& md = *decoded;
  report.entries = md.entries.size();

  // The sidecar, and .metadata against it.
  std::optional<format::ChecksumFile> sidecar;
  std::string current_sidecar;
  if (md.storage_meta && md.storage_meta->save_id)
    current_sidecar = format::ChecksumFileName(*md.storage_meta->save_id);
  auto side = safetensors ? Result<std::optional<format::ChecksumFile>>(std::nullopt)
                          : storage::ReadChecksumFile(st, md);
  if (!side.ok()) {
    problems.Problem("", current_sidecar, side.status().ToString());
  } else if (*side) {
    sidecar = std::move(**side);
    report.checksum_file = current_sidecar;
    Status s = storage::CheckMetadataBytes(st, *sidecar, md_bytes);
    if (!s.ok()) problems.Problem("", metadata_name, s.ToString());
  }

  // Structure: chunks tile each tensor; every item has storage.
  std::vector<Item> items;
  std::unordered_set<std::string> referenced;
  for (const EntryMeta& e : md.entries) {
    if (!e.is_tensor()) {
      if (e.storage.relative_path.empty())
        problems.Problem(e.fqn, "", "no storage record for this value");
      else
        items.push_back({&e, nullptr});
      continue;
    }
    std::vector<plan::Box> boxes;
    for (const ChunkMeta& c : e.chunks) {
      boxes.push_back({c.offsets, c.sizes});
      if (c.storage.relative_path.empty())
        problems.Problem(e.fqn, "",
                         "no storage record for the chunk at offsets " + ShapeToString(c.offsets));
      else
        items.push_back({&e, &c});
    }
    Status tiled = plan::ValidateChunks(e.fqn, e.size, boxes, /*require_full_coverage=*/true);
    if (!tiled.ok()) problems.Problem(e.fqn, "", "chunks do not tile the tensor: " + tiled.message());
  }
  for (const Item& it : items) referenced.insert(it.storage().relative_path);
  report.items = items.size();

  uint64_t total = 0;
  for (const Item& it : items) total += it.storage().length;
  ProgressSink progress(options.progress, total, items.size());
  const int threads = options.io_threads > 0 ? options.io_threads : DefaultThreadCount();

  // Phase 1: every item's structure and small records; small and compressed
  // items completely. Large uncompressed records are split into segments.
  std::vector<storage::StoredRecord> records;
  std::vector<const Item*> record_items;
  std::mutex records_mu;
  (void)ParallelFor(items.size(), threads, [&](size_t i) -> Status {
    const Item& it = items[i];
    const StorageInfo& s = it.storage();
    const std::string& fqn = it.entry->fqn;
    if (!it.chunk) {
      const uint64_t cap =
          std::min<uint64_t>(s.length, uint64_t{1} << 32) * 64 + (uint64_t{64} << 20);
      storage::ReadChecks checks;
      if (sidecar) {
        if (const auto* c = sidecar->Find(s.relative_path, s.offset, s.length))
          checks.stored_crc32 = c->crc32;
      }
      auto blob = storage::ReadItem(st, s, fqn, cap, checks);
      Status r = blob.status();
      if (r.ok()) {
        auto value = format::DecodeValueArchive(format::zip::AsBytes(*blob), "'" + fqn + "'");
        r = value.status();
      }
      if (!r.ok()) problems.Problem(fqn, s.relative_path, r.ToString());
      progress.Add(s.length, 1);
      return Status();
    }
    const DType dtype = it.entry->properties.dtype;
    if (!s.transform_descriptors.empty() || s.length <= kWholeBelow ||
        s.encoding == StorageInfo::Encoding::kRawTensor) {
      Status r = storage::ReadChunk(st, fqn, dtype, *it.chunk, {}, storage::kReadScratchBytes,
                                    {true, std::nullopt});
      if (!r.ok()) problems.Problem(fqn, s.relative_path, r.ToString());
      progress.Add(s.length, 1);
      return Status();
    }
    auto record = storage::DescribeStoredChunk(st, fqn, dtype, *it.chunk);
    if (!record.ok()) {
      problems.Problem(fqn, s.relative_path, record.status().ToString());
      progress.Add(s.length, 1);
      return Status();
    }
    std::lock_guard<std::mutex> lock(records_mu);
    records.push_back(std::move(*record));
    record_items.push_back(&it);
    return Status();
  });

  // Phase 2: the large records' bytes, segment by segment on all threads.
  std::vector<Segment> segments;
  for (size_t r = 0; r < records.size(); ++r) {
    for (uint64_t o = 0; o < records[r].length; o += kSegmentBytes)
      segments.push_back({r, o, std::min(kSegmentBytes, records[r].length - o)});
  }
  std::vector<Status> segment_status(segments.size());
  (void)ParallelFor(segments.size(), threads, [&](size_t i) -> Status {
    Segment& g = segments[i];
    const storage::StoredRecord& r = records[g.record];
    auto crc = storage::CrcOfStoredRange(st, r.relative_path, r.offset + g.offset, g.length);
    if (crc.ok()) g.crc = *crc;
    segment_status[i] = crc.status();
    progress.Add(g.length, 0);
    return Status();
  });
  std::vector<uint32_t> crcs(records.size(), 0);
  std::vector<Status> record_status(records.size());
  for (size_t i = 0; i < segments.size(); ++i) {  // in order: segments of a record are adjacent
    const Segment& g = segments[i];
    if (!segment_status[i].ok() && record_status[g.record].ok())
      record_status[g.record] = segment_status[i];
    crcs[g.record] = g.offset == 0 ? g.crc : Crc32Combine(crcs[g.record], g.crc, g.length);
  }
  for (size_t r = 0; r < records.size(); ++r) {
    const Item& it = *record_items[r];
    Status s = record_status[r].ok() ? storage::CheckStoredRecord(records[r], crcs[r])
                                     : record_status[r].WithContext(records[r].where);
    if (!s.ok()) problems.Problem(it.entry->fqn, it.storage().relative_path, s.ToString());
    // The rest of the item (headers, small records) was read in phase 1.
    progress.Add(it.storage().length - records[r].length, 1);
  }

  // Files nothing references.
  auto names = st.List();
  if (names.ok()) {
    for (const std::string& n : *names) {
      if (n == metadata_name || n == current_sidecar || referenced.count(n)) continue;
      if (io::IsDataFileName(n) || format::IsChecksumFileName(n) || io::IsTempMetadataName(n))
        report.unreferenced_files.push_back(n);
    }
  }
  report.problems = problems.Take();
  report.bytes_read = total;
  report.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

std::string VerifyReportText(const VerifyReport& r) {
  std::string out;
  for (const VerifyProblem& p : r.problems) {
    out += "DAMAGED ";
    out += p.fqn.empty() ? std::string("(checkpoint)") : "'" + p.fqn + "'";
    if (!p.file.empty()) out += " in " + p.file;
    out += ": " + p.message + "\n";
  }
  for (const std::string& f : r.unreferenced_files)
    out += "unreferenced file (not part of the checkpoint; space to reclaim): " + f + "\n";
  char line[256];
  const double gib = static_cast<double>(r.bytes_read) / (1 << 30);
  std::snprintf(line, sizeof line, "%s: %zu entries, %zu items, %.3f GiB read in %.2f s (%.2f GiB/s)%s\n",
                r.ok() ? "OK" : "DAMAGED", r.entries, r.items, gib, r.seconds,
                r.seconds > 0 ? gib / r.seconds : 0.0,
                r.checksum_file.empty() ? ", no sidecar checksum file"
                                        : (", sidecar " + r.checksum_file).c_str());
  out += std::string(r.ok() ? "" : std::to_string(r.problems.size()) + " problem(s); ") + line;
  return out;
}

std::string VerifyReportJson(const VerifyReport& r) {
  namespace json = format::json;
  json::Object o;
  o.Set("checkpoint", r.checkpoint);
  o.Set("ok", r.ok());
  o.Set("checksum_file", r.checksum_file);
  o.Set("entries", r.entries);
  o.Set("items", r.items);
  o.Set("bytes_read", r.bytes_read);
  o.Set("seconds", r.seconds);
  json::Array problems;
  for (const VerifyProblem& p : r.problems) {
    json::Object q;
    q.Set("fqn", p.fqn);
    q.Set("file", p.file);
    q.Set("message", p.message);
    problems.push_back(std::move(q));
  }
  o.Set("problems", std::move(problems));
  json::Array unref;
  for (const std::string& f : r.unreferenced_files) unref.push_back(f);
  o.Set("unreferenced_files", std::move(unref));
  return json::Serialize(o, 2) + "\n";
}

}  // namespace dcpp::tools
