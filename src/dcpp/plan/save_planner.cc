#include "dcpp/plan/save_planner.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <limits>
#include <unordered_map>
#define PT(name)                                                                                  \
  do {                                                                                            \
    auto now_ = std::chrono::steady_clock::now();                                                 \
    if (getenv("PT"))                                                                             \
      fprintf(stderr, "  %-10s %.3f\n", name, std::chrono::duration<double>(now_ - pt_).count()); \
    pt_ = now_;                                                                                   \
  } while (0)

#include "dcpp/base/thread_pool.h"
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
      std::string_view text = fqn.substr(
          part_start, dot == std::string_view::npos ? std::string_view::npos : dot - part_start);
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

// Replica key order: values first, then tensors by chunk offsets.
int KeyCompare(const PlannedItem& x, const PlannedItem& y) {
  if (x.is_tensor != y.is_tensor) return x.is_tensor ? 1 : -1;
  if (!x.is_tensor) return 0;
  const auto c = std::lexicographical_compare_three_way(x.offsets.begin(), x.offsets.end(),
                                                        y.offsets.begin(), y.offsets.end());
  return c < 0 ? -1 : c > 0 ? 1 : 0;
}

std::string ToString(std::span<const int64_t> s) {
  return ShapeToString(Shape(s.begin(), s.end()));
}

// The common case of ValidateChunkViews(require_full_coverage = true), fed
// one chunk at a time while the chunk lists are built: chunks in bounds,
// already in order along the sweep dimension and each starting where the
// ones before it end, covering the tensor exactly. Clear() is true only
// when the full check would pass; anything else (including every failure)
// is left to the full check, which also writes the error.
class TilingCheck {
 public:
  explicit TilingCheck(const Shape& global) : global_(global) {
    if (global.empty()) {
      ok_ = false;  // 0-d: the full check is as cheap
    } else {
      sweep_ = static_cast<size_t>(std::max_element(global.begin(), global.end()) - global.begin());
    }
  }
  void Add(const Shape& offsets, const Shape& sizes) {
    if (!ok_) return;
    const size_t nd = global_.size();
    if (offsets.size() != nd || sizes.size() != nd) {
      ok_ = false;
      return;
    }
    int64_t volume = 1;
    for (size_t d = 0; d < nd; ++d) {
      if (offsets[d] < 0 || sizes[d] < 0 || offsets[d] > global_[d] ||
          sizes[d] > global_[d] - offsets[d] || __builtin_mul_overflow(volume, sizes[d], &volume)) {
        ok_ = false;
        return;
      }
    }
    const int64_t start = offsets[sweep_];
    if (__builtin_add_overflow(covered_, volume, &covered_) || start < last_start_) {
      ok_ = false;
      return;
    }
    last_start_ = start;
    if (volume == 0) return;  // empty chunks overlap nothing
    if (start < reach_) {
      ok_ = false;
      return;
    }
    reach_ = start + sizes[sweep_];
  }
  bool Clear() const {
    if (!ok_) return false;
    int64_t total = 1;
    for (int64_t d : global_)
      if (__builtin_mul_overflow(total, d, &total)) return false;
    return covered_ == total;
  }

 private:
  const Shape& global_;
  size_t sweep_ = 0;
  bool ok_ = true;
  int64_t covered_ = 0;
  int64_t last_start_ = std::numeric_limits<int64_t>::min();
  int64_t reach_ = std::numeric_limits<int64_t>::min();
};

// An item by its global number (ranks ascending, then plan order) and rank.
struct Holder {
  uint32_t g = 0;
  uint32_t rank = 0;
};

bool SpanEqual(std::span<const int64_t> a, std::span<const int64_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

constexpr uint32_t kNone = std::numeric_limits<uint32_t>::max();

// Below this many items per thread, threads cost more than they save.
constexpr size_t kMinItemsPerThread = 64 * 1024;

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
    const size_t total = item.offsets.size() + item.sizes.size() + item.global_shape.size();
    if (dims_.capacity() - dims_.size() < total)
      dims_.reserve(std::max(dims_.size() + total, 2 * dims_.capacity()));
    for (int64_t d : item.offsets) dims_.push_back(d);
    for (int64_t d : item.sizes) dims_.push_back(d);
    for (int64_t d : item.global_shape) dims_.push_back(d);
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
                                        const GlobalPlanOptions& options) {
  auto pt_ = std::chrono::steady_clock::now();
  const size_t num_ranks = plans.size();
  // Items are numbered globally, ranks ascending: rank r's item i is base[r] + i.
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
  // Every pass but the one building entries walks the items in this global
  // order, touching each rank's plan (and the previous rank's) sequentially.
  auto item_at = [&](const Holder& h) { return plans[h.rank].item(h.g - base[h.rank]); };

  // 1. Number the distinct FQNs. Ranks nearly always list the same FQNs in
  //    the same order, so an item is first compared with the previous rank's
  //    item at its position; the hash table is the fallback. Also learn, per
  //    FQN, whether its items' replica keys strictly increase in this order
  //    (chunks of a sharded tensor: no replicas) or are all equal (a value or
  //    tensor every holder has whole: one replica group).
  struct FqnState {
    uint32_t count = 0;
    Holder first, last;
    bool increasing = true;
    bool all_equal = true;
  };
  std::vector<uint32_t> fqn_id(n);
  std::vector<FqnState> state;
  std::unordered_map<std::string_view, uint32_t> id_of;
  for (size_t r = 0; r < num_ranks; ++r) {
    const LocalPlan& p = plans[r];
    const LocalPlan* prev = r > 0 ? &plans[r - 1] : nullptr;
    for (size_t i = 0; i < p.size(); ++i) {
      const uint32_t g = base[r] + static_cast<uint32_t>(i);
      const std::string_view fqn = p.fqn(i);
      uint32_t fid;
      if (prev != nullptr && i < prev->size() && prev->fqn(i) == fqn) {
        fid = fqn_id[base[r - 1] + i];
      } else {
        auto [it, fresh] = id_of.try_emplace(fqn, static_cast<uint32_t>(state.size()));
        if (fresh) state.emplace_back();
        fid = it->second;
      }
      fqn_id[g] = fid;
      FqnState& s = state[fid];
      const Holder h{g, static_cast<uint32_t>(r)};
      if (s.count == 0) {
        s.first = h;
      } else if (s.increasing || s.all_equal) {
        const int c = KeyCompare(item_at(s.last), p.item(i));
        if (c >= 0) s.increasing = false;
        if (c != 0) s.all_equal = false;
      }
      ++s.count;
      s.last = h;
    }
  }
  const size_t num_fqns = state.size();
  PT("ids");

  // 2. Replica groups of the FQNs that have replicas, in order of their first
  //    holder; every other item is a group of its own.
  std::vector<uint32_t> hold_begin(num_fqns + 1, 0);
  for (size_t f = 0; f < num_fqns; ++f)
    hold_begin[f + 1] = hold_begin[f] + (state[f].increasing ? 0 : state[f].count);
  std::vector<Holder> hold(hold_begin[num_fqns]);
  struct Group {
    uint32_t first;       // the first holder's global item number
    uint32_t begin, end;  // holders: hold[begin, end), ascending
  };
  std::vector<Group> groups;
  if (!hold.empty()) {
    std::vector<uint32_t> cursor(hold_begin.begin(), hold_begin.end() - 1);
    for (size_t r = 0; r < num_ranks; ++r)
      for (uint32_t g = base[r]; g < base[r + 1]; ++g)
        if (!state[fqn_id[g]].increasing) hold[cursor[fqn_id[g]]++] = {g, static_cast<uint32_t>(r)};
    auto less = [&](const Holder& a, const Holder& b) {
      return KeyCompare(item_at(a), item_at(b)) < 0;
    };
    for (size_t f = 0; f < num_fqns; ++f) {
      const uint32_t b = hold_begin[f], e = hold_begin[f + 1];
      if (b == e) continue;
      if (state[f].all_equal) {
        groups.push_back({hold[b].g, b, e});
        continue;
      }
      std::stable_sort(hold.begin() + b, hold.begin() + e, less);
      for (uint32_t k = b, run = b; k <= e; ++k) {
        if (k == e || (k > b && less(hold[k - 1], hold[k]))) {
          groups.push_back({hold[run].g, run, k});
          run = k;
        }
      }
    }
    std::sort(groups.begin(), groups.end(),
              [](const Group& a, const Group& b) { return a.first < b.first; });
  }
  PT("groups");

  // 3. One writer per group, groups taken in order of their first holder;
  //    in the same pass, what each rank writes, in plan order, checked
  //    against the copy of its FQN kept before it (the first makes the
  //    entry: DCP orders entries by first appearance). An item's fate is
  //    settled by the time the pass reaches it: its group's first holder
  //    comes no later.
  GlobalPlan gp;
  gp.keep.resize(num_ranks);
  gp.slots.resize(num_ranks);
  std::vector<uint8_t> kept(n, 0);
  std::vector<uint64_t> planned(num_ranks, 0);
  auto weight = [](const PlannedItem& item) {
    return item.is_tensor ? std::max<uint64_t>(item.nbytes, 1) : 1;
  };
  std::vector<uint32_t> entry_of(num_fqns, kNone);
  std::vector<uint32_t> chunks_of(num_fqns, 0);
  std::vector<uint32_t> entry_fqns;
  entry_fqns.reserve(num_fqns);
  size_t next_group = 0;
  for (size_t r = 0; r < num_ranks; ++r) {
    const LocalPlan& p = plans[r];
    std::vector<size_t>& keep = gp.keep[r];
    std::vector<std::pair<size_t, size_t>>& slots = gp.slots[r];
    keep.reserve(p.size());
    slots.reserve(p.size());
    for (uint32_t g = base[r]; g < base[r + 1]; ++g) {
      const size_t index = g - base[r];
      const uint32_t fid = fqn_id[g];
      FqnState& s = state[fid];
      const PlannedItem item = p.item(index);
      if (s.increasing) {
        kept[g] = 1;
        planned[r] += weight(item);
      } else if (next_group < groups.size() && groups[next_group].first == g) {
        const Group& gr = groups[next_group++];
        uint32_t best = gr.begin;
        for (uint32_t h = gr.begin + 1; h < gr.end && !options.to_lowest_rank; ++h)
          if (planned[hold[h].rank] < planned[hold[best].rank]) best = h;
        kept[hold[best].g] = 1;
        planned[hold[best].rank] += weight(item_at(hold[best]));
      }
      if (!kept[g]) continue;

      keep.push_back(index);
      if (entry_of[fid] == kNone) {
        entry_of[fid] = static_cast<uint32_t>(entry_fqns.size());
        entry_fqns.push_back(fid);
        s.first = {g, static_cast<uint32_t>(r)};
      } else {
        const PlannedItem before = item_at(s.last);
        auto where = [&] { return "'" + std::string(item.fqn) + "'"; };
        if (before.is_tensor != item.is_tensor) {
          std::vector<int> ranks;  // of the kept items of this FQN so far, this one included
          for (size_t q = 0; q <= r; ++q)
            for (size_t k : gp.keep[q])
              if (fqn_id[base[q] + k] == fid) ranks.push_back(static_cast<int>(q));
          return InvalidArgumentError(where() +
                                      " is a tensor on some ranks and a value on others (ranks " +
                                      RankList(ranks) + ")");
        }
        if (item.is_tensor && before.dtype != item.dtype)
          return InvalidArgumentError(
              where() + " has dtype " + std::string(TorchName(before.dtype)) + " on one rank and " +
              std::string(TorchName(item.dtype)) + " on rank " + std::to_string(r));
        if (item.is_tensor && !SpanEqual(before.global_shape, item.global_shape))
          return InvalidArgumentError(
              where() + " has global shape " + ToString(before.global_shape) + " on one rank and " +
              ToString(item.global_shape) + " on rank " + std::to_string(r));
      }
      s.last = {g, static_cast<uint32_t>(r)};
      // Values are deduplicated by FQN: an entry holds at most one.
      slots.push_back({entry_of[fid], item.is_tensor ? chunks_of[fid]++ : 0});
    }
    if (keep.capacity() > 2 * keep.size() + 16) {  // mostly replicas: give the rest back
      keep.shrink_to_fit();
      slots.shrink_to_fit();
    }
  }
  PT("keep");

  // 4. The entries. Their chunk lists are the bulk of the metadata and a
  //    transpose of the plans (ranks x tensors); a plain transpose touches a
  //    different page for nearly every chunk, so the lists are filled a
  //    block of ranks at a time, entry by entry within the block: the plans
  //    read and the lists written then stay within a small working set.
  //    Each thread fills the lists of a run of entries, in chunk order.
  const size_t num_entries = entry_fqns.size();
  Metadata& md = gp.metadata;
  md.entries.resize(num_entries);
  std::vector<uint8_t> entry_is_tensor(num_entries);
  for (size_t k = 0; k < num_entries; ++k) {
    const Holder first = state[entry_fqns[k]].first;
    const PlannedItem item = item_at(first);
    EntryMeta& e = md.entries[k];
    e.fqn = item.fqn;
    e.path = plans[first.rank].path(first.g - base[first.rank]);
    e.kind = item.is_tensor ? EntryMeta::Kind::kTensor : EntryMeta::Kind::kBytes;
    e.properties.dtype = item.dtype;
    e.size.assign(item.global_shape.begin(), item.global_shape.end());
    entry_is_tensor[k] = item.is_tensor;
    if (item.is_tensor) e.chunks.reserve(chunks_of[entry_fqns[k]]);
  }
  PT("entries");
  constexpr size_t kBlock = 32;
  const size_t threads =
      std::clamp<size_t>(options.threads > 0 ? options.threads : DefaultThreadCount(), 1,
                         std::max<size_t>(1, std::min(num_entries, total / kMinItemsPerThread)));
  // Entries whose chunks the quick check below could not clear.
  std::vector<std::vector<uint32_t>> unclear(threads);
  (void)ParallelFor(threads, static_cast<int>(threads), [&](size_t t) {
    const size_t k0 = num_entries * t / threads, k1 = num_entries * (t + 1) / threads;
    struct Pending {
      const int64_t* offsets;  // then the sizes
      uint32_t ndim[2];
    };
    std::vector<uint32_t> start(k1 - k0 + 1);
    std::vector<Pending> pending;
    std::vector<TilingCheck> checks;
    checks.reserve(k1 - k0);
    for (size_t k = k0; k < k1; ++k) checks.emplace_back(md.entries[k].size);
    for (size_t r0 = 0; r0 < num_ranks; r0 += kBlock) {
      const size_t r1 = std::min(num_ranks, r0 + kBlock);
      // Counting sort of the block's chunks of entries [k0, k1) by entry;
      // within an entry they stay in rank and plan order, i.e. chunk order.
      std::fill(start.begin(), start.end(), 0);
      for (size_t r = r0; r < r1; ++r)
        for (const auto& [entry, chunk] : gp.slots[r])
          if (entry >= k0 && entry < k1) start[entry - k0 + 1] += entry_is_tensor[entry];
      for (size_t k = k0; k < k1; ++k) start[k - k0 + 1] += start[k - k0];
      pending.resize(start[k1 - k0]);
      for (size_t r = r0; r < r1; ++r) {
        for (size_t j = 0; j < gp.slots[r].size(); ++j) {
          const size_t entry = gp.slots[r][j].first;
          if (entry < k0 || entry >= k1 || !entry_is_tensor[entry]) continue;
          const PlannedItem item = plans[r].item(gp.keep[r][j]);
          pending[start[entry - k0]++] = {item.offsets.data(),
                                          {static_cast<uint32_t>(item.offsets.size()),
                                           static_cast<uint32_t>(item.sizes.size())}};
        }
      }
      // start[k - k0] is now where entry k's chunks end (and entry k + 1's begin).
      constexpr size_t kAhead = 8;
      for (size_t k = k0, at = 0; k < k1; ++k) {
        std::vector<ChunkMeta>& chunks = md.entries[k].chunks;
        TilingCheck& check = checks[k - k0];
        for (; at < start[k - k0]; ++at) {
          if (at + kAhead < pending.size()) __builtin_prefetch(pending[at + kAhead].offsets);
          const Pending& q = pending[at];
          const int64_t* sizes = q.offsets + q.ndim[0];
          ChunkMeta& c = chunks.emplace_back();
          c.offsets.assign(q.offsets, sizes);
          c.sizes.assign(sizes, sizes + q.ndim[1]);
          check.Add(c.offsets, c.sizes);
        }
      }
    }
    for (size_t k = k0; k < k1; ++k)
      if (entry_is_tensor[k] && !checks[k - k0].Clear())
        unclear[t].push_back(static_cast<uint32_t>(k));
    return Status();
  });
  PT("chunks");

  // 5. Each tensor's chunks must tile it: the entries the quick check did
  //    not clear get the full check, and the first failing entry is
  //    reported (ParallelFor returns the failure with the lowest index).
  std::vector<uint32_t> check_fully;
  for (const auto& u : unclear) check_fully.insert(check_fully.end(), u.begin(), u.end());
  DCPP_RETURN_IF_ERROR(ParallelFor(check_fully.size(), static_cast<int>(threads), [&](size_t i) {
    const EntryMeta& e = md.entries[check_fully[i]];
    std::vector<BoxView> boxes;
    boxes.reserve(e.chunks.size());
    for (const auto& c : e.chunks) boxes.push_back({c.offsets, c.sizes});
    return ValidateChunkViews(e.fqn, e.size, boxes, true);
  }));
  PT("validate");
  return gp;
}

}  // namespace dcpp::plan
