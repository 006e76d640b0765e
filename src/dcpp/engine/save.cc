// dcpp::Save: plan the items of a state dict, write the data files in
// parallel, then commit .metadata. Single process (rank 0 of 1).
#include <algorithm>
#include <atomic>
#include <mutex>
#include <random>
#include <unordered_set>

#include "dcpp/base/thread_pool.h"
#include "dcpp/checkpoint.h"
#include "dcpp/engine/items.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/io/dcp_layout.h"
#include "dcpp/io/file.h"
#include "dcpp/plan/flatten.h"
#include "dcpp/plan/validate.h"

namespace dcpp {
namespace {

std::string RandomHex(size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::random_device rd;
  std::string out(n, '0');
  for (char& c : out) c = kHex[rd() % 16];
  return out;
}

// A random (version 4) UUID, as DCP's FileSystemWriter stores in save_id.
std::string Uuid4() {
  std::string h = RandomHex(32);
  h[12] = '4';
  h[16] = "89ab"[h[16] % 4];
  return h.substr(0, 8) + "-" + h.substr(8, 4) + "-" + h.substr(12, 4) + "-" + h.substr(16, 4) +
         "-" + h.substr(20);
}

// Write order and file assignment, as DCP's FileSystemWriter does it: one
// bucket (file) per thread; BYTE_IO items dealt round-robin, tensor items by
// size descending, each to the currently smallest bucket. Within a file,
// BYTE_IO items come first. Returns item indices per file.
std::vector<std::vector<size_t>> AssignFiles(const std::vector<engine::WriteItem>& items,
                                             const SaveOptions& o) {
  std::vector<std::vector<size_t>> files;
  if (!o.single_file_per_rank) {
    for (size_t i = 0; i < items.size(); ++i) files.push_back({i});
    return files;
  }
  const size_t bins = static_cast<size_t>(o.thread_count);
  files.resize(bins);
  std::vector<size_t> bytes_items, tensor_items;
  for (size_t i = 0; i < items.size(); ++i)
    (items[i].is_tensor() ? tensor_items : bytes_items).push_back(i);
  if (bins == 1) {
    files[0] = bytes_items;
    files[0].insert(files[0].end(), tensor_items.begin(), tensor_items.end());
    return files;
  }
  std::stable_sort(tensor_items.begin(), tensor_items.end(), [&](size_t a, size_t b) {
    return items[a].nbytes() > items[b].nbytes();
  });
  for (size_t k = 0; k < bytes_items.size(); ++k) files[k % bins].push_back(bytes_items[k]);
  std::vector<uint64_t> load(bins, 0);
  for (size_t i : tensor_items) {
    const size_t b = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    files[b].push_back(i);
    load[b] += items[i].nbytes();
  }
  return files;
}

class ProgressReporter {
 public:
  ProgressReporter(const ProgressCallback& cb, std::string_view phase, uint64_t bytes_total,
                   size_t items_total)
      : cb_(cb) {
    p_.phase = phase;
    p_.bytes_total = bytes_total;
    p_.items_total = items_total;
  }
  void Add(uint64_t bytes, size_t items) {
    if (!cb_) return;
    std::lock_guard<std::mutex> lock(mu_);
    p_.bytes_done += bytes;
    p_.items_done += items;
    cb_(p_);
  }

 private:
  const ProgressCallback& cb_;
  std::mutex mu_;
  Progress p_;
};

// Writes one data file: its items back to back, each a torch.save archive.
Status WriteDataFile(const std::string& dir, const std::string& name,
                     const std::vector<size_t>& item_ids,
                     std::vector<engine::WriteItem>& items, const SaveOptions& o,
                     ProgressReporter& progress) {
  DCPP_ASSIGN_OR_RETURN(io::File file, io::File::CreateForWrite(io::JoinPath(dir, name)));
  format::zip::WriteOptions zip_options;
  zip_options.compute_crc32 = o.checksums;
  uint64_t offset = 0;
  std::vector<std::span<const uint8_t>> pieces;
  for (size_t id : item_ids) {
    engine::WriteItem& item = items[id];
    format::zip::Layout layout;
    if (item.is_tensor()) {
      layout = format::EncodeTensorArchive(item.tensor.view(), zip_options);
      pieces.clear();
      for (const auto& p : layout.pieces)
        pieces.push_back(p.is_borrowed ? p.borrowed : format::zip::AsBytes(p.owned));
    } else {
      pieces.assign(1, format::zip::AsBytes(item.blob));
    }
    uint64_t length = 0;
    for (const auto& p : pieces) length += p.size();
    DCPP_RETURN_IF_ERROR(file.WriteVAt(offset, pieces).WithContext("saving '" + item.fqn + "'"));
    item.storage = {name, offset, length, {}};
    offset += length;
    progress.Add(item.nbytes(), 1);
  }
  if (o.sync_files) DCPP_RETURN_IF_ERROR(file.Sync());
  return file.Close();
}

Metadata BuildMetadata(const std::vector<engine::WriteItem>& items, const std::string& dir) {
  Metadata md;
  md.entries = engine::EntriesFromItems(items);
  StorageMeta sm;
  sm.checkpoint_id = dir;
  sm.save_id = Uuid4();
  md.storage_meta = std::move(sm);
  md.version = kDcpVersion;
  return md;
}

// Removes data files of the checkpoint being replaced that the new one does
// not use. Best effort: a leftover file costs space, never correctness.
void RemoveReplacedFiles(const std::string& dir, const Metadata& old_md, const Metadata& new_md) {
  std::unordered_set<std::string> keep;
  auto collect = [](const Metadata& md, auto&& fn) {
    for (const auto& e : md.entries) {
      if (e.is_tensor()) {
        for (const auto& c : e.chunks) fn(c.storage.relative_path);
      } else {
        fn(e.storage.relative_path);
      }
    }
  };
  collect(new_md, [&](const std::string& p) { keep.insert(p); });
  std::unordered_set<std::string> removed;
  collect(old_md, [&](const std::string& p) {
    if (keep.count(p) || !removed.insert(p).second) return;
    auto path = io::ResolveDataPath(dir, p);
    if (path.ok()) (void)io::RemoveFile(*path);
  });
}

// save_id of the checkpoint committed in `dir`, if one can be read.
std::optional<std::string> PublishedSaveId(const std::string& dir) {
  auto md = io::ReadCheckpointMetadata(dir);
  if (!md.ok() || !md->storage_meta) return std::nullopt;
  return md->storage_meta->save_id;
}

}  // namespace

Result<Metadata> Save(const Value& state_dict, const std::string& dir, const SaveOptions& o) {
  if (o.thread_count < 1)
    return InvalidArgumentError("SaveOptions.thread_count must be >= 1, got " +
                                std::to_string(o.thread_count));
  if (dir.empty()) return InvalidArgumentError("checkpoint path is empty");
  DCPP_ASSIGN_OR_RETURN(std::vector<engine::WriteItem> items, engine::PlanWriteItems(state_dict));
  // One process holds every piece: sharded tensors must be fully covered.
  for (const auto& e : engine::EntriesFromItems(items)) {
    if (!e.is_tensor()) continue;
    std::vector<plan::Box> boxes;
    for (const auto& c : e.chunks) boxes.push_back({c.offsets, c.sizes});
    DCPP_RETURN_IF_ERROR(plan::ValidateChunks(e.fqn, e.size, boxes, true));
  }

  DCPP_RETURN_IF_ERROR(io::CreateDirectories(dir));
  DCPP_ASSIGN_OR_RETURN(bool replacing, io::HasCommittedCheckpoint(dir));
  std::optional<Metadata> old_md;
  std::string tag;
  if (replacing) {
    if (!o.overwrite)
      return AlreadyExistsError("checkpoint " + dir +
                                " already exists and overwrite is off (SaveOptions.overwrite / "
                                "--overwrite to replace it)");
    // New data files get a fresh tag so the committed checkpoint stays
    // readable until the new .metadata replaces the old one.
    tag = RandomHex(8);
    auto md = io::ReadCheckpointMetadata(dir);
    if (md.ok()) old_md = std::move(*md);
  }

  const auto files = AssignFiles(items, o);
  uint64_t total_bytes = 0;
  for (const auto& item : items) total_bytes += item.nbytes();
  ProgressReporter progress(o.progress, "write", total_bytes, items.size());
  std::vector<std::string> names(files.size());
  for (size_t f = 0; f < files.size(); ++f) names[f] = io::DataFileName(0, static_cast<int>(f), tag);
  std::vector<std::atomic<bool>> created(files.size());
  Status s = ParallelFor(files.size(), o.thread_count, [&](size_t f) {
    created[f] = true;
    return WriteDataFile(dir, names[f], files[f], items, o, progress);
  });
  Metadata md = BuildMetadata(items, dir);
  if (s.ok()) {
    s = io::CommitMetadata(dir, md, o.sync_files);
    // A failure after the rename (say, the directory fsync) leaves our
    // .metadata published: then the data files must stay.
    if (!s.ok() && PublishedSaveId(dir) == md.storage_meta->save_id)
      return s.WithContext("save to " + dir + " committed, but not durably");
  }
  if (!s.ok()) {
    for (size_t f = 0; f < files.size(); ++f)
      if (created[f]) (void)io::RemoveFile(io::JoinPath(dir, names[f]));
    return s.WithContext("save to " + dir + " failed (nothing was committed)");
  }
  if (old_md) RemoveReplacedFiles(dir, *old_md, md);
  return md;
}

}  // namespace dcpp
