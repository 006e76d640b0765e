#include "dcpp/plan/save_planner.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <unordered_map>

#include "dcpp/base/thread_pool.h"
#include "dcpp/base/varint.h"
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
//
// CreateGlobalSavePlan runs in phases, each a function below:
//   NumberItems       every item gets a global number (ranks ascending)
//   IdentifyFqns      distinct FQNs, and which of them have replicas
//   GroupReplicas     the replica groups of those FQNs
//   ChooseWriters     one writer per replica group (the dedup)
//   AssignEntries     DCP's entry order, each kept item's slot, and the
//                     checks that an FQN means the same thing on every rank
//   MakeEntries       the entries' FQN, path, kind, dtype and size
//   FillChunkLists    the tensors' chunk lists, with a quick tiling check
//   CheckTiling       the full tiling check of what the quick one left
// All but the last three walk the items in global order, touching each
// rank's plan (and the previous rank's) sequentially.

namespace {

// Global item numbers: rank r's item i is base[r] + i.
struct Numbering {
  std::span<const LocalPlan> plans;
  std::vector<uint32_t> base;  // num_ranks + 1 elements; base.back() == n
  uint32_t n = 0;

  size_t num_ranks() const { return plans.size(); }
  PlannedItem item(const Holder& h) const { return plans[h.rank].item(h.g - base[h.rank]); }
};

// Numbers the items of `plans` (borrowed by the result). ResourceExhausted
// when there are kNone or more, as numbers and kNone must fit 32 bits.
Result<Numbering> NumberItems(const std::vector<LocalPlan>& plans) {
  Numbering num{plans, std::vector<uint32_t>(plans.size() + 1), 0};
  uint64_t total = 0;
  for (size_t r = 0; r < plans.size(); ++r) {
    num.base[r] = static_cast<uint32_t>(total);
    total += plans[r].size();
    if (total >= kNone)
      return ResourceExhaustedError("save plans hold " + std::to_string(total) +
                                    "+ items; at most 2^32 - 2 are supported");
  }
  num.base[plans.size()] = num.n = static_cast<uint32_t>(total);
  return num;
}

// Per distinct FQN: its holders, and the order of their replica keys.
struct FqnState {
  uint32_t count = 0;  // items with this FQN
  Holder first, last;  // see IdentifyFqns and AssignEntries
  // The items' replica keys strictly increase in global order (chunks of a
  // sharded tensor: no replicas) ...
  bool increasing = true;
  // ... or are all equal (a value, or a tensor every holder has whole: one
  // replica group).
  bool all_equal = true;
};

struct FqnTable {
  std::vector<uint32_t> id;     // per global item: its FQN's number
  std::vector<FqnState> state;  // per FQN, numbered by first appearance
};

// Numbers the distinct FQNs in order of first appearance and fills their
// state (first and last holder in global order). Ranks nearly always list
// the same FQNs in the same order, so an item is first compared with the
// previous rank's item at its position; a hash table is the fallback.
// Cannot fail.
FqnTable IdentifyFqns(const Numbering& num) {
  FqnTable t;
  t.id.resize(num.n);
  std::unordered_map<std::string_view, uint32_t> id_of;
  for (size_t r = 0; r < num.num_ranks(); ++r) {
    const LocalPlan& p = num.plans[r];
    const LocalPlan* prev = r > 0 ? &num.plans[r - 1] : nullptr;
    for (size_t i = 0; i < p.size(); ++i) {
      const uint32_t g = num.base[r] + static_cast<uint32_t>(i);
      const std::string_view fqn = p.fqn(i);
      uint32_t fid;
      if (prev != nullptr && i < prev->size() && prev->fqn(i) == fqn) {
        fid = t.id[num.base[r - 1] + i];
      } else {
        auto [it, fresh] = id_of.try_emplace(fqn, static_cast<uint32_t>(t.state.size()));
        if (fresh) t.state.emplace_back();
        fid = it->second;
      }
      t.id[g] = fid;
      FqnState& s = t.state[fid];
      const Holder h{g, static_cast<uint32_t>(r)};
      if (s.count == 0) {
        s.first = h;
      } else if (s.increasing || s.all_equal) {
        const int c = KeyCompare(num.item(s.last), p.item(i));
        if (c >= 0) s.increasing = false;
        if (c != 0) s.all_equal = false;
      }
      ++s.count;
      s.last = h;
    }
  }
  return t;
}

struct Replicas {
  // Holders of the FQNs that are not `increasing`, FQN by FQN; within an
  // FQN, by replica key and then global order.
  std::vector<Holder> hold;
  struct Group {
    uint32_t first;       // the first holder's global item number
    uint32_t begin, end;  // holders: hold[begin, end), ascending
  };
  // The replica groups (items of one FQN with equal keys), ordered by their
  // first holder. Items of `increasing` FQNs are in no group: each is its
  // own writer.
  std::vector<Group> groups;
};

// Groups the replicas of every FQN that has any. Cannot fail. O(n log n)
// in the holders of FQNs whose keys neither increase nor are all equal,
// linear otherwise.
Replicas GroupReplicas(const Numbering& num, const FqnTable& fqns) {
  const size_t num_fqns = fqns.state.size();
  std::vector<uint32_t> hold_begin(num_fqns + 1, 0);
  for (size_t f = 0; f < num_fqns; ++f)
    hold_begin[f + 1] = hold_begin[f] + (fqns.state[f].increasing ? 0 : fqns.state[f].count);
  Replicas rep;
  rep.hold.resize(hold_begin[num_fqns]);
  if (rep.hold.empty()) return rep;
  std::vector<Holder>& hold = rep.hold;
  std::vector<uint32_t> cursor(hold_begin.begin(), hold_begin.end() - 1);
  for (size_t r = 0; r < num.num_ranks(); ++r)
    for (uint32_t g = num.base[r]; g < num.base[r + 1]; ++g)
      if (!fqns.state[fqns.id[g]].increasing)
        hold[cursor[fqns.id[g]]++] = {g, static_cast<uint32_t>(r)};
  auto less = [&](const Holder& a, const Holder& b) {
    return KeyCompare(num.item(a), num.item(b)) < 0;
  };
  for (size_t f = 0; f < num_fqns; ++f) {
    const uint32_t b = hold_begin[f], e = hold_begin[f + 1];
    if (b == e) continue;
    if (fqns.state[f].all_equal) {
      rep.groups.push_back({hold[b].g, b, e});
      continue;
    }
    std::stable_sort(hold.begin() + b, hold.begin() + e, less);
    for (uint32_t k = b, run = b; k <= e; ++k) {
      if (k == e || (k > b && less(hold[k - 1], hold[k]))) {
        rep.groups.push_back({hold[run].g, run, k});
        run = k;
      }
    }
  }
  std::sort(rep.groups.begin(), rep.groups.end(),
            [](const Replicas::Group& a, const Replicas::Group& b) { return a.first < b.first; });
  return rep;
}

// Which items are written: per global item, 1 if kept. Every item of an
// `increasing` FQN is kept; of each replica group exactly one, chosen when
// the walk in global order reaches the group's first holder: the lowest
// rank with `to_lowest_rank`, else the holder whose rank has the fewest
// bytes planned so far (ties: the lowest rank). Cannot fail.
std::vector<uint8_t> ChooseWriters(const Numbering& num, const FqnTable& fqns,
                                   const Replicas& rep, bool to_lowest_rank) {
  std::vector<uint8_t> kept(num.n, 0);
  std::vector<uint64_t> planned(num.num_ranks(), 0);
  auto weight = [](const PlannedItem& item) {
    return item.is_tensor ? std::max<uint64_t>(item.nbytes, 1) : 1;
  };
  size_t next_group = 0;
  for (size_t r = 0; r < num.num_ranks(); ++r) {
    const LocalPlan& p = num.plans[r];
    for (uint32_t g = num.base[r]; g < num.base[r + 1]; ++g) {
      if (fqns.state[fqns.id[g]].increasing) {
        kept[g] = 1;
        planned[r] += weight(p.item(g - num.base[r]));
      } else if (next_group < rep.groups.size() && rep.groups[next_group].first == g) {
        const Replicas::Group& gr = rep.groups[next_group++];
        uint32_t best = gr.begin;
        for (uint32_t h = gr.begin + 1; h < gr.end && !to_lowest_rank; ++h)
          if (planned[rep.hold[h].rank] < planned[rep.hold[best].rank]) best = h;
        kept[rep.hold[best].g] = 1;
        planned[rep.hold[best].rank] += weight(num.item(rep.hold[best]));
      }
    }
  }
  return kept;
}

// The entries in DCP's order: one per FQN, in order of its first kept
// item (plans in rank order, items in plan order).
struct EntryOrder {
  std::vector<uint32_t> fqn;     // per entry: its FQN's number
  std::vector<uint32_t> chunks;  // per FQN: kept tensor chunks
};

// Fills gp->keep and gp->slots from `kept`, numbers the entries, and checks
// each kept item against the kept item of its FQN before it: the same kind
// (tensor or value), dtype and global shape, else InvalidArgument naming
// the FQN and ranks (the first offender in global order; gp is then
// partly filled). Sets each FQN's state.first to its first kept item and
// state.last to its last.
Result<EntryOrder> AssignEntries(const Numbering& num, FqnTable& fqns,
                                 const std::vector<uint8_t>& kept, GlobalPlan* gp) {
  const size_t num_fqns = fqns.state.size();
  gp->keep.resize(num.num_ranks());
  gp->slots.resize(num.num_ranks());
  EntryOrder order;
  order.fqn.reserve(num_fqns);
  order.chunks.assign(num_fqns, 0);
  std::vector<uint32_t> entry_of(num_fqns, kNone);
  for (size_t r = 0; r < num.num_ranks(); ++r) {
    const LocalPlan& p = num.plans[r];
    std::vector<size_t>& keep = gp->keep[r];
    std::vector<std::pair<size_t, size_t>>& slots = gp->slots[r];
    keep.reserve(p.size());
    slots.reserve(p.size());
    for (uint32_t g = num.base[r]; g < num.base[r + 1]; ++g) {
      if (!kept[g]) continue;
      const size_t index = g - num.base[r];
      const uint32_t fid = fqns.id[g];
      FqnState& s = fqns.state[fid];
      const PlannedItem item = p.item(index);
      keep.push_back(index);
      if (entry_of[fid] == kNone) {
        entry_of[fid] = static_cast<uint32_t>(order.fqn.size());
        order.fqn.push_back(fid);
        s.first = {g, static_cast<uint32_t>(r)};
      } else {
        const PlannedItem before = num.item(s.last);
        auto where = [&] { return "'" + std::string(item.fqn) + "'"; };
        if (before.is_tensor != item.is_tensor) {
          std::vector<int> ranks;  // of the kept items of this FQN so far, this one included
          for (size_t q = 0; q <= r; ++q)
            for (size_t k : gp->keep[q])
              if (fqns.id[num.base[q] + k] == fid) ranks.push_back(static_cast<int>(q));
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
      slots.push_back({entry_of[fid], item.is_tensor ? order.chunks[fid]++ : 0});
    }
    if (keep.capacity() > 2 * keep.size() + 16) {  // mostly replicas: give the rest back
      keep.shrink_to_fit();
      slots.shrink_to_fit();
    }
  }
  return order;
}

// Creates md->entries from their first kept items (storage and chunk lists
// empty; chunk capacity reserved). Returns, per entry, whether it is a
// tensor. Cannot fail.
std::vector<uint8_t> MakeEntries(const Numbering& num, const FqnTable& fqns,
                                 const EntryOrder& order, Metadata* md) {
  const size_t num_entries = order.fqn.size();
  md->entries.resize(num_entries);
  std::vector<uint8_t> is_tensor(num_entries);
  for (size_t k = 0; k < num_entries; ++k) {
    const Holder first = fqns.state[order.fqn[k]].first;
    const PlannedItem item = num.item(first);
    EntryMeta& e = md->entries[k];
    e.fqn = item.fqn;
    e.path = num.plans[first.rank].path(first.g - num.base[first.rank]);
    e.kind = item.is_tensor ? EntryMeta::Kind::kTensor : EntryMeta::Kind::kBytes;
    e.properties.dtype = item.dtype;
    e.size.assign(item.global_shape.begin(), item.global_shape.end());
    is_tensor[k] = item.is_tensor;
    if (item.is_tensor) e.chunks.reserve(order.chunks[order.fqn[k]]);
  }
  return is_tensor;
}

// Fills the tensor entries' chunk lists of gp->metadata from gp->keep and
// gp->slots, in chunk order, on `threads` threads (each a run of entries),
// and returns the tensor entries that the quick TilingCheck could not
// clear, ascending. Cannot fail.
//
// The chunk lists are the bulk of the metadata and a transpose of the
// plans (ranks x tensors); a plain transpose touches a different page for
// nearly every chunk, so the lists are filled a block of ranks at a time,
// entry by entry within the block: the plans read and the lists written
// then stay within a small working set.
std::vector<uint32_t> FillChunkLists(const Numbering& num, const std::vector<uint8_t>& is_tensor,
                                     size_t threads, GlobalPlan* gp) {
  constexpr size_t kBlock = 32;
  const size_t num_ranks = num.num_ranks();
  const size_t num_entries = is_tensor.size();
  std::vector<EntryMeta>& entries = gp->metadata.entries;
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
    for (size_t k = k0; k < k1; ++k) checks.emplace_back(entries[k].size);
    for (size_t r0 = 0; r0 < num_ranks; r0 += kBlock) {
      const size_t r1 = std::min(num_ranks, r0 + kBlock);
      // Counting sort of the block's chunks of entries [k0, k1) by entry;
      // within an entry they stay in rank and plan order, i.e. chunk order.
      std::fill(start.begin(), start.end(), 0);
      for (size_t r = r0; r < r1; ++r)
        for (const auto& [entry, chunk] : gp->slots[r])
          if (entry >= k0 && entry < k1) start[entry - k0 + 1] += is_tensor[entry];
      for (size_t k = k0; k < k1; ++k) start[k - k0 + 1] += start[k - k0];
      pending.resize(start[k1 - k0]);
      for (size_t r = r0; r < r1; ++r) {
        for (size_t j = 0; j < gp->slots[r].size(); ++j) {
          const size_t entry = gp->slots[r][j].first;
          if (entry < k0 || entry >= k1 || !is_tensor[entry]) continue;
          const PlannedItem item = num.plans[r].item(gp->keep[r][j]);
          pending[start[entry - k0]++] = {item.offsets.data(),
                                          {static_cast<uint32_t>(item.offsets.size()),
                                           static_cast<uint32_t>(item.sizes.size())}};
        }
      }
      // start[k - k0] is now where entry k's chunks end (and entry k + 1's begin).
      constexpr size_t kAhead = 8;
      for (size_t k = k0, at = 0; k < k1; ++k) {
        std::vector<ChunkMeta>& chunks = entries[k].chunks;
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
      if (is_tensor[k] && !checks[k - k0].Clear()) unclear[t].push_back(static_cast<uint32_t>(k));
    return Status();
  });
  std::vector<uint32_t> all;
  for (const auto& u : unclear) all.insert(all.end(), u.begin(), u.end());
  return all;
}

// The full check that each of `entries` (indices into md.entries) has
// chunks in bounds, not overlapping and covering the tensor: the error of
// the first failing entry in `entries` order (InvalidArgument naming the
// FQN), else OK.
Status CheckTiling(const Metadata& md, const std::vector<uint32_t>& entries, size_t threads) {
  return ParallelFor(entries.size(), static_cast<int>(threads), [&](size_t i) {
    const EntryMeta& e = md.entries[entries[i]];
    std::vector<BoxView> boxes;
    boxes.reserve(e.chunks.size());
    for (const auto& c : e.chunks) boxes.push_back({c.offsets, c.sizes});
    return ValidateChunkViews(e.fqn, e.size, boxes, true);
  });
}

}  // namespace

Result<GlobalPlan> CreateGlobalSavePlan(const std::vector<LocalPlan>& plans,
                                        const GlobalPlanOptions& options) {
  DCPP_ASSIGN_OR_RETURN(const Numbering num, NumberItems(plans));
  FqnTable fqns = IdentifyFqns(num);
  const Replicas replicas = GroupReplicas(num, fqns);
  const std::vector<uint8_t> kept = ChooseWriters(num, fqns, replicas, options.to_lowest_rank);
  GlobalPlan gp;
  DCPP_ASSIGN_OR_RETURN(const EntryOrder order, AssignEntries(num, fqns, kept, &gp));
  const std::vector<uint8_t> is_tensor = MakeEntries(num, fqns, order, &gp.metadata);
  const size_t threads = std::clamp<size_t>(
      options.threads > 0 ? options.threads : DefaultThreadCount(), 1,
      std::max<size_t>(1, std::min<size_t>(is_tensor.size(), num.n / kMinItemsPerThread)));
  const std::vector<uint32_t> unclear = FillChunkLists(num, is_tensor, threads, &gp);
  DCPP_RETURN_IF_ERROR(CheckTiling(gp.metadata, unclear, threads));
  return gp;
}

}  // namespace dcpp::plan
