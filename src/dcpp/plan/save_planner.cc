#include "dcpp/plan/save_planner.h"

#include <algorithm>
#include <unordered_map>

#include "dcpp/plan/validate.h"

namespace dcpp::plan {
namespace {

struct ItemKey {
  std::string_view fqn;
  const Shape* offsets;  // null for values
  bool operator==(const ItemKey& o) const {
    return fqn == o.fqn && (offsets == nullptr) == (o.offsets == nullptr) &&
           (offsets == nullptr || *offsets == *o.offsets);
  }
};

struct ItemKeyHash {
  size_t operator()(const ItemKey& k) const {
    size_t h = std::hash<std::string_view>()(k.fqn);
    if (k.offsets)
      for (int64_t o : *k.offsets) h = h * 1000003 ^ std::hash<int64_t>()(o);
    return h;
  }
};

std::string RankList(const std::vector<int>& ranks) {
  std::string out;
  for (size_t i = 0; i < ranks.size(); ++i) out += (i ? ", " : "") + std::to_string(ranks[i]);
  return out;
}

}  // namespace

Result<GlobalPlan> CreateGlobalSavePlan(const std::vector<LocalPlan>& plans,
                                        const DedupOptions& options) {
  // Replicas of each (fqn, offsets), in first-seen order (ranks ascending).
  struct Group {
    std::vector<std::pair<int, size_t>> holders;  // (rank, item index)
  };
  std::vector<Group> groups;
  std::unordered_map<ItemKey, size_t, ItemKeyHash> group_of;
  for (size_t r = 0; r < plans.size(); ++r) {
    for (size_t i = 0; i < plans[r].items.size(); ++i) {
      const PlannedItem& item = plans[r].items[i];
      ItemKey key{item.fqn, item.is_tensor ? &item.offsets : nullptr};
      auto [it, fresh] = group_of.try_emplace(key, groups.size());
      if (fresh) groups.emplace_back();
      groups[it->second].holders.push_back({static_cast<int>(r), i});
    }
  }

  GlobalPlan gp;
  gp.keep.resize(plans.size());
  std::vector<uint64_t> planned(plans.size(), 0);
  for (const Group& g : groups) {
    size_t best = 0;
    for (size_t h = 1; h < g.holders.size() && !options.to_lowest_rank; ++h)
      if (planned[g.holders[h].first] < planned[g.holders[best].first]) best = h;
    const auto [rank, index] = g.holders[best];
    const PlannedItem& item = plans[rank].items[index];
    planned[rank] += item.is_tensor ? std::max<uint64_t>(item.nbytes, 1) : 1;
    gp.keep[rank].push_back(index);
  }
  for (auto& k : gp.keep) std::sort(k.begin(), k.end());

  // Entries in DCP order: ranks ascending, items in plan order.
  std::unordered_map<std::string_view, size_t> entry_of;
  std::vector<std::vector<int>> entry_ranks;
  gp.slots.resize(plans.size());
  Metadata& md = gp.metadata;
  for (size_t r = 0; r < plans.size(); ++r) {
    for (size_t index : gp.keep[r]) {
      const PlannedItem& item = plans[r].items[index];
      auto [it, fresh] = entry_of.try_emplace(item.fqn, md.entries.size());
      if (fresh) {
        EntryMeta e;
        e.fqn = item.fqn;
        e.path = item.path;
        e.kind = item.is_tensor ? EntryMeta::Kind::kTensor : EntryMeta::Kind::kBytes;
        e.properties.dtype = item.dtype;
        e.size = item.global_shape;
        md.entries.push_back(std::move(e));
        entry_ranks.emplace_back();
      }
      EntryMeta& e = md.entries[it->second];
      entry_ranks[it->second].push_back(static_cast<int>(r));
      const std::string where = "'" + item.fqn + "'";
      if (e.is_tensor() != item.is_tensor)
        return InvalidArgumentError(where + " is a tensor on some ranks and a value on others (ranks " +
                                    RankList(entry_ranks[it->second]) + ")");
      if (!item.is_tensor) {
        // Values are deduplicated by FQN, so a second holder cannot reach here.
        gp.slots[r].push_back({it->second, 0});
        continue;
      }
      if (e.properties.dtype != item.dtype)
        return InvalidArgumentError(where + " has dtype " + std::string(TorchName(e.properties.dtype)) +
                                    " on one rank and " + std::string(TorchName(item.dtype)) +
                                    " on rank " + std::to_string(r));
      if (e.size != item.global_shape)
        return InvalidArgumentError(where + " has global shape " + ShapeToString(e.size) +
                                    " on one rank and " + ShapeToString(item.global_shape) +
                                    " on rank " + std::to_string(r));
      gp.slots[r].push_back({it->second, e.chunks.size()});
      e.chunks.push_back({item.offsets, item.sizes, {}});
    }
  }
  for (const EntryMeta& e : md.entries) {
    if (!e.is_tensor()) continue;
    std::vector<Box> boxes;
    boxes.reserve(e.chunks.size());
    for (const auto& c : e.chunks) boxes.push_back({c.offsets, c.sizes});
    DCPP_RETURN_IF_ERROR(ValidateChunks(e.fqn, e.size, boxes, true));
  }
  return gp;
}

}  // namespace dcpp::plan
