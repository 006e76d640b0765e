#include "dcpp/plan/save_planner.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <unordered_map>

#include "dcpp/plan/validate.h"

namespace dcpp::plan {
namespace {

// ---------------------------------------------------------------- paths
//
// Compact path encoding (also what ranks send each other, so a decoder must
// accept exactly what the encoder writes):
//   0, k, p1 .. pk  (varints): the path is the FQN split at '.', with the
//                   parts at the ascending positions p1 .. pk being integers
//                   (in canonical decimal); every other part is a string.
//                   Nearly every path is of this form, as the FQN is made
//                   by joining the path with '.'.
//   1, n, then n elements: 0, length, bytes (a string) or 1, zigzag varint
//                   (an integer): any other path.

constexpr char kDerivedPath = 0;
constexpr char kExplicitPath = 1;

void PutVarint(std::string* out, uint64_t v) {
  char buf[10];
  size_t n = 0;
  while (v >= 0x80) {
    buf[n++] = static_cast<char>(v | 0x80);
    v >>= 7;
  }
  buf[n++] = static_cast<char>(v);
  out->append(buf, n);
}

// False when `s` ends inside the varint or it does not fit 64 bits.
bool GetVarint(std::string_view s, size_t* pos, uint64_t* v) {
  uint64_t out = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*pos >= s.size()) return false;
    const auto b = static_cast<uint8_t>(s[(*pos)++]);
    if (shift == 63 && b > 1) return false;
    out |= uint64_t{b & 0x7Fu} << shift;
    if (b < 0x80) {
      *v = out;
      return true;
    }
  }
  return false;
}

// The decimal text std::to_string gives `v`, in `buf`.
std::string_view IntText(int64_t v, char (&buf)[24]) {
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return std::string_view(buf, static_cast<size_t>(end - buf));
}

// The integer whose canonical decimal text is exactly `s`, if there is one
// (so that joining the decoded path gives back the FQN).
std::optional<int64_t> CanonicalInt(std::string_view s) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  char buf[24];
  if (IntText(v, buf) != s) return std::nullopt;
  return v;
}

void EncodePath(std::string_view fqn, const ObjectPath& path, std::string* out) {
  // The derived form applies when joining the parts with '.' gives the FQN
  // and no string part contains a '.'.
  bool derived = !path.empty();
  size_t pos = 0;
  size_t ints = 0;
  for (size_t i = 0; derived && i < path.size(); ++i) {
    if (i > 0) {
      if (pos >= fqn.size() || fqn[pos] != '.') {
        derived = false;
        break;
      }
      ++pos;
    }
    char buf[24];
    std::string_view part;
    if (const auto* s = std::get_if<std::string>(&path[i])) {
      part = *s;
      if (part.find('.') != std::string_view::npos) derived = false;
    } else {
      part = IntText(std::get<int64_t>(path[i]), buf);
      ++ints;
    }
    if (fqn.substr(pos, part.size()) != part) derived = false;
    pos += part.size();
  }
  if (derived && pos == fqn.size()) {
    out->push_back(kDerivedPath);
    PutVarint(out, ints);
    for (size_t i = 0; i < path.size(); ++i)
      if (std::holds_alternative<int64_t>(path[i])) PutVarint(out, i);
    return;
  }
  out->push_back(kExplicitPath);
  PutVarint(out, path.size());
  for (const PathElement& p : path) {
    if (const auto* s = std::get_if<std::string>(&p)) {
      out->push_back(0);
      PutVarint(out, s->size());
      out->append(*s);
    } else {
      const auto v = static_cast<uint64_t>(std::get<int64_t>(p));
      out->push_back(1);
      PutVarint(out, (v << 1) ^ (0 - (v >> 63)));  // zigzag
    }
  }
}

// Parses an encoded path of `fqn`; fills *out unless it is null. False when
// malformed, including trailing bytes.
bool ParsePath(std::string_view fqn, std::string_view enc, ObjectPath* out) {
  size_t pos = 1;
  uint64_t n = 0;
  if (enc.empty() || !GetVarint(enc, &pos, &n)) return false;
  if (enc[0] == kDerivedPath) {
    if (n > enc.size()) return false;  // each position takes a byte
    if (n == 0 && out == nullptr) return pos == enc.size();
    size_t part_start = 0;
    uint64_t part = 0;
    uint64_t next_int = 0;
    uint64_t ints_seen = 0;
    bool have_int = n > 0 && GetVarint(enc, &pos, &next_int);
    if (n > 0 && !have_int) return false;
    for (;;) {
      size_t dot = fqn.find('.', part_start);
      std::string_view text = fqn.substr(part_start, dot == std::string_view::npos
                                                         ? std::string_view::npos
                                                         : dot - part_start);
      if (have_int && next_int == part) {
        std::optional<int64_t> v = CanonicalInt(text);
        if (!v) return false;
        if (out) out->emplace_back(*v);
        ++ints_seen;
        have_int = false;
        if (ints_seen < n) {
          uint64_t following = 0;
          if (!GetVarint(enc, &pos, &following) || following <= next_int) return false;
          next_int = following;
          have_int = true;
        }
      } else if (out) {
        out->emplace_back(std::string(text));
      }
      if (dot == std::string_view::npos) break;
      part_start = dot + 1;
      ++part;
    }
    return ints_seen == n && pos == enc.size();
  }
  if (enc[0] != kExplicitPath || n > enc.size()) return false;
  for (uint64_t i = 0; i < n; ++i) {
    if (pos >= enc.size()) return false;
    const char tag = enc[pos++];
    uint64_t v = 0;
    if (!GetVarint(enc, &pos, &v)) return false;
    if (tag == 0) {
      if (v > enc.size() - pos) return false;
      if (out) out->emplace_back(std::string(enc.substr(pos, v)));
      pos += v;
    } else if (tag == 1) {
      if (out) out->emplace_back(static_cast<int64_t>((v >> 1) ^ (0 - (v & 1))));
    } else {
      return false;
    }
  }
  return pos == enc.size();
}

std::string RankList(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out;
}

bool SpanLess(std::span<const int64_t> a, std::span<const int64_t> b) {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
}

bool SpanEqual(std::span<const int64_t> a, std::span<const int64_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();

}  // namespace

// ---------------------------------------------------------------- LocalPlan

void LocalPlan::Reserve(size_t items, size_t text_bytes, size_t dims) {
  items_.reserve(items);
  text_.reserve(text_bytes);
  dims_.reserve(dims);
}

void LocalPlan::Add(const PlannedItem& item, std::string_view encoded_path) {
  Item rec{};
  rec.nbytes = item.nbytes;
  rec.text = text_.size();
  rec.dims = dims_.size();
  rec.fqn_size = static_cast<uint32_t>(item.fqn.size());
  rec.path_size = static_cast<uint32_t>(encoded_path.size());
  rec.is_tensor = item.is_tensor;
  rec.dtype = item.dtype;
  if (item.is_tensor) {
    rec.ndim[0] = static_cast<uint32_t>(item.offsets.size());
    rec.ndim[1] = static_cast<uint32_t>(item.sizes.size());
    rec.ndim[2] = static_cast<uint32_t>(item.global_shape.size());
    dims_.insert(dims_.end(), item.offsets.begin(), item.offsets.end());
    dims_.insert(dims_.end(), item.sizes.begin(), item.sizes.end());
    dims_.insert(dims_.end(), item.global_shape.begin(), item.global_shape.end());
  }
  text_.append(item.fqn);
  text_.append(encoded_path);
  items_.push_back(rec);
}

void LocalPlan::AddTensor(std::string_view fqn, const ObjectPath& path, DType dtype,
                          std::span<const int64_t> offsets, std::span<const int64_t> sizes,
                          std::span<const int64_t> global_shape, uint64_t nbytes) {
  std::string enc;
  EncodePath(fqn, path, &enc);
  Add({fqn, true, dtype, offsets, sizes, global_shape, nbytes}, enc);
}

void LocalPlan::AddValue(std::string_view fqn, const ObjectPath& path, uint64_t nbytes) {
  std::string enc;
  EncodePath(fqn, path, &enc);
  PlannedItem item;
  item.fqn = fqn;
  item.nbytes = nbytes;
  Add(item, enc);
}

Status LocalPlan::AddEncoded(const PlannedItem& item, std::string_view encoded_path) {
  constexpr uint64_t kMax = std::numeric_limits<uint32_t>::max();
  if (item.fqn.size() > kMax || encoded_path.size() > kMax || item.offsets.size() > kMax ||
      item.sizes.size() > kMax || item.global_shape.size() > kMax)
    return DataLossError("save plan item too large");
  if (!ParsePath(item.fqn, encoded_path, nullptr))
    return DataLossError("malformed path for '" + std::string(item.fqn) + "' in a save plan");
  Add(item, encoded_path);
  return Status();
}

ObjectPath LocalPlan::path(size_t i) const {
  ObjectPath out;
  (void)ParsePath(fqn(i), EncodedPath(i), &out);  // valid: checked when added
  return out;
}

// ---------------------------------------------------------------- global plan

Result<GlobalPlan> CreateGlobalSavePlan(const std::vector<LocalPlan>& plans,
                                        const DedupOptions& options) {
  const size_t num_ranks = plans.size();
  // Items are numbered globally: rank r's item i is base[r] + i.
  std::vector<uint32_t> base(num_ranks + 1);
  uint64_t total = 0;
  for (size_t r = 0; r < num_ranks; ++r) {
    base[r] = static_cast<uint32_t>(total);
    total += plans[r].size();
    if (total >= kNone)
      return ResourceExhaustedError("save plans hold " + std::to_string(total) +
                                    "+ items; at most 2^32 - 2 are supported");
  }
  base[num_ranks] = static_cast<uint32_t>(total);
  const uint32_t n = static_cast<uint32_t>(total);
  auto item_of = [&](uint32_t rank, uint32_t g) { return plans[rank].item(g - base[rank]); };

  // 1. Number the distinct FQNs. Ranks nearly always list the same FQNs in
  //    the same order, so an item is first compared with the previous rank's
  //    item at its position; the hash table is the fallback.
  std::vector<uint32_t> fqn_id(n);
  std::vector<uint32_t> rank_of(n);
  std::vector<std::string_view> fqns;
  std::unordered_map<std::string_view, uint32_t> id_of;
  for (size_t r = 0; r < num_ranks; ++r) {
    const LocalPlan& p = plans[r];
    const LocalPlan* prev = r > 0 ? &plans[r - 1] : nullptr;
    for (size_t i = 0; i < p.size(); ++i) {
      const uint32_t g = base[r] + static_cast<uint32_t>(i);
      rank_of[g] = static_cast<uint32_t>(r);
      const std::string_view fqn = p.fqn(i);
      if (prev != nullptr && i < prev->size() && prev->fqn(i) == fqn) {
        fqn_id[g] = fqn_id[base[r - 1] + i];
        continue;
      }
      auto [it, fresh] = id_of.try_emplace(fqn, static_cast<uint32_t>(fqns.size()));
      if (fresh) fqns.push_back(fqn);
      fqn_id[g] = it->second;
    }
  }
  const size_t num_fqns = fqns.size();

  // 2. Bucket the items by FQN (counting sort: each bucket in rank order).
  std::vector<uint32_t> bucket(num_fqns + 1, 0);
  for (uint32_t g = 0; g < n; ++g) ++bucket[fqn_id[g] + 1];
  for (size_t f = 0; f < num_fqns; ++f) bucket[f + 1] += bucket[f];
  std::vector<uint32_t> by_fqn(n);
  {
    std::vector<uint32_t> cursor(bucket.begin(), bucket.end() - 1);
    for (uint32_t g = 0; g < n; ++g) by_fqn[cursor[fqn_id[g]]++] = g;
  }

  // 3. Replica groups: items of one FQN with equal (tensor or value, chunk
  //    offsets). Each group ends up contiguous in by_fqn, holders ascending;
  //    group_at[g] is the group whose first holder is item g.
  std::vector<uint32_t> group_begin;
  group_begin.reserve(num_fqns + 1);
  std::vector<uint32_t> group_at(n, kNone);
  auto key_less = [&](uint32_t a, uint32_t b) {
    const PlannedItem x = item_of(rank_of[a], a), y = item_of(rank_of[b], b);
    if (x.is_tensor != y.is_tensor) return y.is_tensor;
    return x.is_tensor && SpanLess(x.offsets, y.offsets);
  };
  auto key_equal = [&](uint32_t a, uint32_t b) {
    const PlannedItem x = item_of(rank_of[a], a), y = item_of(rank_of[b], b);
    return x.is_tensor == y.is_tensor && (!x.is_tensor || SpanEqual(x.offsets, y.offsets));
  };
  auto add_group = [&](uint32_t at) {
    group_at[by_fqn[at]] = static_cast<uint32_t>(group_begin.size());
    group_begin.push_back(at);
  };
  for (size_t f = 0; f < num_fqns; ++f) {
    const uint32_t b = bucket[f], e = bucket[f + 1];
    // Usual cases first: chunks of a sharded tensor in rank order (all
    // distinct), or a value or tensor every rank holds whole (all equal).
    bool increasing = true, all_equal = true;
    for (uint32_t k = b + 1; k < e && (increasing || all_equal); ++k) {
      if (increasing && !key_less(by_fqn[k - 1], by_fqn[k])) increasing = false;
      if (all_equal && !key_equal(by_fqn[b], by_fqn[k])) all_equal = false;
    }
    if (e - b > 1 && increasing) {
      for (uint32_t k = b; k < e; ++k) add_group(k);
      continue;
    }
    if (!all_equal) {
      std::stable_sort(by_fqn.begin() + b, by_fqn.begin() + e, key_less);
      for (uint32_t k = b; k < e; ++k)
        if (k == b || !key_equal(by_fqn[k - 1], by_fqn[k])) add_group(k);
      continue;
    }
    add_group(b);
  }
  group_begin.push_back(n);

  // 4. One writer per group, groups taken in order of first appearance.
  std::vector<uint8_t> kept(n, 0);
  std::vector<uint64_t> planned(num_ranks, 0);
  for (uint32_t g = 0; g < n; ++g) {
    const uint32_t group = group_at[g];
    if (group == kNone) continue;
    const uint32_t s = group_begin[group], t = group_begin[group + 1];
    uint32_t best = s;
    for (uint32_t h = s + 1; h < t && !options.to_lowest_rank; ++h)
      if (planned[rank_of[by_fqn[h]]] < planned[rank_of[by_fqn[best]]]) best = h;
    const uint32_t w = by_fqn[best];
    kept[w] = 1;
    const PlannedItem item = item_of(rank_of[w], w);
    planned[rank_of[w]] += item.is_tensor ? std::max<uint64_t>(item.nbytes, 1) : 1;
  }

  GlobalPlan gp;
  gp.keep.resize(num_ranks);
  gp.slots.resize(num_ranks);
  std::vector<uint32_t> chunk_count(num_fqns, 0);
  for (size_t r = 0; r < num_ranks; ++r) {
    size_t count = 0;
    for (uint32_t g = base[r]; g < base[r + 1]; ++g) count += kept[g];
    gp.keep[r].reserve(count);
    gp.slots[r].reserve(count);
    for (uint32_t g = base[r]; g < base[r + 1]; ++g) {
      if (!kept[g]) continue;
      gp.keep[r].push_back(g - base[r]);
      if (plans[r].item(g - base[r]).is_tensor) ++chunk_count[fqn_id[g]];
    }
  }

  // 5. Entries in DCP order: ranks ascending, items in plan order.
  std::vector<uint32_t> entry_of(num_fqns, kNone);
  Metadata& md = gp.metadata;
  md.entries.reserve(num_fqns);
  for (size_t r = 0; r < num_ranks; ++r) {
    for (size_t index : gp.keep[r]) {
      const uint32_t fid = fqn_id[base[r] + index];
      const PlannedItem item = plans[r].item(index);
      if (entry_of[fid] == kNone) {
        entry_of[fid] = static_cast<uint32_t>(md.entries.size());
        EntryMeta& e = md.entries.emplace_back();
        e.fqn = item.fqn;
        e.path = plans[r].path(index);
        e.kind = item.is_tensor ? EntryMeta::Kind::kTensor : EntryMeta::Kind::kBytes;
        e.properties.dtype = item.dtype;
        e.size.assign(item.global_shape.begin(), item.global_shape.end());
        if (item.is_tensor) e.chunks.reserve(chunk_count[fid]);
      }
      const size_t entry = entry_of[fid];
      EntryMeta& e = md.entries[entry];
      const std::string where = "'" + std::string(item.fqn) + "'";
      if (e.is_tensor() != item.is_tensor) {
        // Every rank's kept items of this FQN so far, this one included.
        std::vector<int> ranks;
        for (size_t q = 0; q <= r; ++q)
          for (size_t k : gp.keep[q]) {
            if (q == r && k > index) break;
            if (fqn_id[base[q] + k] == fid) ranks.push_back(static_cast<int>(q));
          }
        return InvalidArgumentError(where +
                                    " is a tensor on some ranks and a value on others (ranks " +
                                    RankList(ranks) + ")");
      }
      if (!item.is_tensor) {
        // Values are deduplicated by FQN, so a second holder cannot reach here.
        gp.slots[r].push_back({entry, 0});
        continue;
      }
      if (e.properties.dtype != item.dtype)
        return InvalidArgumentError(where + " has dtype " +
                                    std::string(TorchName(e.properties.dtype)) +
                                    " on one rank and " + std::string(TorchName(item.dtype)) +
                                    " on rank " + std::to_string(r));
      if (!SpanEqual(e.size, item.global_shape))
        return InvalidArgumentError(
            where + " has global shape " + ShapeToString(e.size) + " on one rank and " +
            ShapeToString(Shape(item.global_shape.begin(), item.global_shape.end())) +
            " on rank " + std::to_string(r));
      gp.slots[r].push_back({entry, e.chunks.size()});
      ChunkMeta& c = e.chunks.emplace_back();
      c.offsets.assign(item.offsets.begin(), item.offsets.end());
      c.sizes.assign(item.sizes.begin(), item.sizes.end());
    }
  }

  // 6. Each tensor's chunks must tile it.
  std::vector<BoxView> boxes;
  for (const EntryMeta& e : md.entries) {
    if (!e.is_tensor()) continue;
    boxes.clear();
    boxes.reserve(e.chunks.size());
    for (const auto& c : e.chunks) boxes.push_back({c.offsets, c.sizes});
    DCPP_RETURN_IF_ERROR(ValidateChunks(e.fqn, e.size, boxes, true));
  }
  return gp;
}

}  // namespace dcpp::plan
