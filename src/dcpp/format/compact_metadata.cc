#include "dcpp/format/compact_metadata.h"

#include <unordered_map>
#include <utility>

#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/metadata_codec_internal.h"

namespace dcpp::format {
namespace {

// Interns StorageInfo strings into a CompactMetadata being built.
class Interner {
 public:
  explicit Interner(CompactMetadata* md) : md_(md) {}

  CompactStorage Add(StorageInfo&& s) {
    CompactStorage c;
    c.offset = s.offset;
    c.length = s.length;
    c.encoding = s.encoding;
    auto [it, fresh] = files_.try_emplace(s.relative_path, md_->files.size());
    if (fresh) md_->files.push_back(std::move(s.relative_path));
    c.file = it->second;
    if (!s.transform_descriptors.empty()) {
      // Few distinct lists exist (usually one): a linear search is enough.
      size_t k = 1;
      while (k < md_->transform_sets.size() && md_->transform_sets[k] != s.transform_descriptors)
        ++k;
      if (k == md_->transform_sets.size())
        md_->transform_sets.push_back(std::move(s.transform_descriptors));
      c.transforms = static_cast<uint32_t>(k);
    }
    return c;
  }

 private:
  CompactMetadata* md_;
  std::unordered_map<std::string, uint32_t> files_;
};

template <typename T>
void Release(std::vector<T>& v) {
  std::vector<T>().swap(v);
}

}  // namespace

StorageInfo CompactMetadata::Expand(const CompactStorage& s) const {
  StorageInfo out;
  out.relative_path = files[s.file];
  out.offset = s.offset;
  out.length = s.length;
  out.transform_descriptors = transform_sets[s.transforms];
  out.encoding = s.encoding;
  return out;
}

ChunkMeta CompactMetadata::Chunk(size_t e, size_t k) const {
  const CompactEntry& ce = entries[e];
  ChunkMeta c;
  const auto o = ce.offsets(k), z = ce.sizes(k);
  c.offsets.assign(o.begin(), o.end());
  c.sizes.assign(z.begin(), z.end());
  c.storage = Expand(ce.chunks[k]);
  return c;
}

EntryMeta CompactMetadata::ExpandEntry(size_t e) const {
  std::vector<uint32_t> all(entries[e].num_chunks());
  for (uint32_t k = 0; k < all.size(); ++k) all[k] = k;
  return ExpandEntry(e, all);
}

EntryMeta CompactMetadata::ExpandEntry(size_t e, std::span<const uint32_t> chunks) const {
  const CompactEntry& ce = entries[e];
  EntryMeta out;
  out.fqn = ce.fqn;
  out.kind = ce.kind;
  out.path = ce.path;
  if (ce.is_tensor()) {
    out.properties = ce.properties;
    out.size = ce.size;
    out.chunks.reserve(chunks.size());
    for (uint32_t k : chunks) out.chunks.push_back(Chunk(e, k));
  } else {
    out.storage = Expand(ce.storage);
  }
  return out;
}

size_t CompactMetadata::MemoryBytes() const {
  size_t n = entries.capacity() * sizeof(CompactEntry);
  for (const CompactEntry& e : entries) {
    n += e.fqn.capacity() > 15 ? e.fqn.capacity() : 0;
    n += e.path.capacity() * sizeof(PathElement);
    n += e.size.capacity() * sizeof(int64_t);
    n += e.coords.capacity() * sizeof(int64_t);
    n += e.chunks.capacity() * sizeof(CompactStorage);
  }
  for (const std::string& f : files) n += sizeof(std::string) + (f.size() > 15 ? f.capacity() : 0);
  return n;
}

CompactMetadata Compact(Metadata&& md) {
  CompactMetadata out;
  Interner interner(&out);
  out.entries.reserve(md.entries.size());
  for (EntryMeta& e : md.entries) {
    CompactEntry& ce = out.entries.emplace_back();
    ce.fqn = std::move(e.fqn);
    ce.kind = e.kind;
    ce.path = std::move(e.path);
    if (e.is_tensor()) {
      ce.properties = e.properties;
      ce.size = std::move(e.size);
      const size_t d = ce.size.size();
      ce.coords.reserve(2 * d * e.chunks.size());
      ce.chunks.reserve(e.chunks.size());
      for (ChunkMeta& c : e.chunks) {
        // DecodeMetadata guarantees chunk ranks equal the tensor's; a
        // Metadata from elsewhere is padded/truncated so indexing stays in
        // bounds (the planner's tiling check then rejects it).
        c.offsets.resize(d, 0);
        c.sizes.resize(d, 0);
        ce.coords.insert(ce.coords.end(), c.offsets.begin(), c.offsets.end());
        ce.coords.insert(ce.coords.end(), c.sizes.begin(), c.sizes.end());
        ce.chunks.push_back(interner.Add(std::move(c.storage)));
      }
      Release(e.chunks);
    } else {
      ce.storage = interner.Add(std::move(e.storage));
    }
  }
  Release(md.entries);
  out.storage_meta = std::move(md.storage_meta);
  out.version = std::move(md.version);
  return out;
}

Metadata Expand(CompactMetadata&& md) {
  Metadata out;
  out.entries.reserve(md.entries.size());
  for (size_t e = 0; e < md.entries.size(); ++e) {
    out.entries.push_back(md.ExpandEntry(e));
    CompactEntry& ce = md.entries[e];
    Release(ce.coords);
    Release(ce.chunks);
  }
  out.storage_meta = std::move(md.storage_meta);
  out.version = std::move(md.version);
  md = CompactMetadata();
  return out;
}

Result<CompactMetadata> DecodeCompactMetadata(std::span<const uint8_t> bytes) {
  if (auto fast = metadata_internal::DecodeCompactMetadataFast(bytes)) return std::move(*fast);
  DCPP_ASSIGN_OR_RETURN(Metadata md, metadata_internal::DecodeMetadataGeneral(bytes));
  return Compact(std::move(md));
}

}  // namespace dcpp::format
