#include "dcpp/engine/items.h"

#include <unordered_map>

#include "dcpp/format/torch_pickle.h"
#include "dcpp/plan/flatten.h"
#include "dcpp/plan/validate.h"

namespace dcpp::engine {

namespace {

Status CheckLayout(const TensorView& v) {
  if (v.strides.size() != v.shape.size())
    return InvalidArgumentError("tensor has " + std::to_string(v.strides.size()) +
                                " strides for " + std::to_string(v.shape.size()) + " dims");
  for (size_t d = 0; d < v.shape.size(); ++d)
    if (v.shape[d] < 0 || v.strides[d] < 0)
      return InvalidArgumentError("tensor has a negative size or stride: shape " +
                                  ShapeToString(v.shape) + ", strides " + ShapeToString(v.strides));
  if (v.data == nullptr && v.numel() > 0) return InvalidArgumentError("tensor data is null");
  return Status();
}

// A dense tensor to write: the caller's memory when it is dense, else a
// contiguous copy.
Result<Tensor> DenseTensor(const Tensor& t) {
  DCPP_RETURN_IF_ERROR(CheckLayout(t.view()));
  if (t.view().is_dense()) return t;
  return t.Clone();
}

Status AddSharded(const ShardedTensor& st, WriteItem base, std::vector<WriteItem>& items) {
  std::vector<plan::Box> boxes;
  for (const auto& shard : st.shards) {
    if (shard.local.dtype() != st.shards[0].local.dtype())
      return InvalidArgumentError("shards mix dtypes " +
                                  std::string(TorchName(st.shards[0].local.dtype())) + " and " +
                                  std::string(TorchName(shard.local.dtype())));
    boxes.push_back({shard.offsets, shard.local.shape()});
  }
  // Coverage is a property of all ranks' shards together: checked globally.
  DCPP_RETURN_IF_ERROR(plan::ValidateChunks(base.fqn, st.global_shape, boxes, false));
  for (const auto& shard : st.shards) {
    WriteItem item = base;
    item.has_tensor = true;
    DCPP_ASSIGN_OR_RETURN(item.tensor, DenseTensor(shard.local));
    item.offsets = shard.offsets;
    item.global_shape = st.global_shape;
    items.push_back(std::move(item));
  }
  return Status();
}

}  // namespace

Result<std::vector<WriteItem>> PlanWriteItems(const Value& state_dict) {
  DCPP_ASSIGN_OR_RETURN(auto flat, plan::Flatten(state_dict));
  std::vector<WriteItem> items;
  items.reserve(flat.size());
  for (auto& entry : flat) {
    WriteItem item;
    item.fqn = std::move(entry.fqn);
    item.path = std::move(entry.path);
    const Value& v = *entry.value;
    const std::string where = "'" + item.fqn + "'";
    if (v.is_tensor()) {
      auto dense = DenseTensor(v.tensor());
      if (!dense.ok()) return dense.status().WithContext(where);
      item.has_tensor = true;
      item.tensor = std::move(*dense);
      item.global_shape = item.tensor.shape();
      item.offsets.assign(item.global_shape.size(), 0);
    } else if (v.is_sharded()) {
      if (v.sharded().shards.empty()) continue;  // this process holds no piece
      DCPP_RETURN_IF_ERROR(AddSharded(v.sharded(), std::move(item), items).WithContext(where));
      continue;
    } else if (v.kind() == Value::Kind::kOpaque) {
      item.blob = v.opaque().blob;
    } else {
      auto blob = format::EncodeValueArchive(v);
      if (!blob.ok()) return blob.status().WithContext(where);
      item.blob = std::move(*blob);
    }
    items.push_back(std::move(item));
  }
  return items;
}

std::vector<EntryMeta> EntriesFromItems(const std::vector<WriteItem>& items) {
  std::vector<EntryMeta> entries;
  std::unordered_map<std::string_view, size_t> index;
  for (const auto& item : items) {
    auto [it, fresh] = index.try_emplace(item.fqn, entries.size());
    if (fresh) {
      EntryMeta e;
      e.fqn = item.fqn;
      e.path = item.path;
      if (item.is_tensor()) {
        e.kind = EntryMeta::Kind::kTensor;
        e.properties.dtype = item.tensor.dtype();
        e.size = item.global_shape;
      } else {
        e.kind = EntryMeta::Kind::kBytes;
        e.storage = item.storage;
      }
      entries.push_back(std::move(e));
    }
    if (item.is_tensor())
      entries[it->second].chunks.push_back({item.offsets, item.tensor.shape(), item.storage});
  }
  return entries;
}

}  // namespace dcpp::engine
