#include "dcpp/plan/flatten.h"

#include <unordered_set>

namespace dcpp::plan {
namespace {

// Python's str() of a dict key, for the key kinds a state dict can hold.
Result<std::string> KeyToString(const Value& key) {
  switch (key.kind()) {
    case Value::Kind::kString: return key.as_string();
    case Value::Kind::kInt: return std::to_string(key.as_int());
    case Value::Kind::kBool: return std::string(key.as_bool() ? "True" : "False");
    case Value::Kind::kNone: return std::string("None");
    default:
      return InvalidArgumentError("state dict key " + key.DebugString() +
                                  " cannot be flattened: use str or int keys");
  }
}

bool IsContainer(const Value& v) { return v.is_dict() || v.kind() == Value::Kind::kList; }

// _is_terminal of the current traversal (v2_3: dicts are inspected too).
bool IsTerminal(const Value& v, Traversal t) {
  const std::vector<Value>* items = nullptr;
  if (v.is_dict()) {
    if (t == Traversal::kCurrent) return false;
    items = &v.dict().values();
  } else if (v.kind() == Value::Kind::kList) {
    items = &v.items();
  } else {
    return true;
  }
  for (const Value& e : *items) {
    if (IsContainer(e) && !IsTerminal(e, t)) return false;
    if (e.is_tensor() || e.is_sharded()) return false;
  }
  return true;
}

template <typename V>
class Flattener {
 public:
  explicit Flattener(Traversal t) : traversal_(t) {}

  Status Visit(ObjectPath& path, V& value) {
    if (path.size() > 1000) return InvalidArgumentError("state dict nested deeper than 1000 levels");
    if (traversal_ == Traversal::kCurrent && value.is_dict()) return VisitDict(path, value);
    if (IsTerminal(value, traversal_)) return Emit(path, value);
    if (value.is_dict()) return VisitDict(path, value);
    if (value.is_sequence()) {
      auto& items = value.items();
      for (size_t i = 0; i < items.size(); ++i) {
        path.emplace_back(static_cast<int64_t>(i));
        DCPP_RETURN_IF_ERROR(Visit(path, items[i]));
        path.pop_back();
      }
    }
    return Status();
  }

  Status VisitDict(ObjectPath& path, V& value) {
    auto& dict = value.dict();
    for (size_t i = 0; i < dict.size(); ++i) {
      DCPP_ASSIGN_OR_RETURN(std::string key, KeyToString(dict.keys()[i]));
      path.emplace_back(std::move(key));
      DCPP_RETURN_IF_ERROR(Visit(path, Child(value, i)));
      path.pop_back();
    }
    return Status();
  }

  std::vector<BasicFlatEntry<V>> Take() { return std::move(entries_); }

 private:
  static V& Child(V& dict_value, size_t i) {
    if constexpr (std::is_const_v<V>) {
      return dict_value.dict().values()[i];
    } else {
      return dict_value.dict().mutable_values()[i];
    }
  }

  Status Emit(const ObjectPath& path, V& value) {
    std::string fqn = PathToFqn(path);
    if (!seen_.insert(fqn).second) return InvalidArgumentError("duplicated flatten key " + fqn);
    entries_.push_back({std::move(fqn), path, &value});
    return Status();
  }

  Traversal traversal_;
  std::vector<BasicFlatEntry<V>> entries_;
  std::unordered_set<std::string> seen_;
};

template <typename V>
Result<std::vector<BasicFlatEntry<V>>> FlattenImpl(V& state_dict, Traversal t) {
  if (!state_dict.is_dict())
    return InvalidArgumentError("a state dict must be a dict, got " +
                                std::string(Value::KindName(state_dict.kind())));
  Flattener<V> f(t);
  ObjectPath path;
  // Top-level values are always visited, even when they are plain dicts (v2_3
  // too: DCP calls _traverse_obj on each top-level value).
  auto& dict = state_dict.dict();
  for (size_t i = 0; i < dict.size(); ++i) {
    DCPP_ASSIGN_OR_RETURN(std::string key, KeyToString(dict.keys()[i]));
    path.assign(1, PathElement(std::move(key)));
    if constexpr (std::is_const_v<V>) {
      DCPP_RETURN_IF_ERROR(f.Visit(path, dict.values()[i]));
    } else {
      DCPP_RETURN_IF_ERROR(f.Visit(path, dict.mutable_values()[i]));
    }
  }
  return f.Take();
}

}  // namespace

Result<std::vector<FlatEntry>> Flatten(const Value& state_dict, Traversal traversal) {
  return FlattenImpl<const Value>(state_dict, traversal);
}

Result<std::vector<MutableFlatEntry>> FlattenMutable(Value& state_dict, Traversal traversal) {
  return FlattenImpl<Value>(state_dict, traversal);
}

std::string PathToFqn(const ObjectPath& path) {
  std::string out;
  for (size_t i = 0; i < path.size(); ++i) {
    if (i) out += '.';
    if (const auto* s = std::get_if<std::string>(&path[i])) {
      out += *s;
    } else {
      out += std::to_string(std::get<int64_t>(path[i]));
    }
  }
  return out;
}

Status SetElement(Value& root, const ObjectPath& path, Value value) {
  if (path.empty()) return InvalidArgumentError("empty object path");
  Value* cur = &root;
  for (size_t i = 0; i < path.size(); ++i) {
    const bool last = i + 1 == path.size();
    Value* slot = nullptr;
    if (const auto* key = std::get_if<std::string>(&path[i])) {
      if (cur->is_none()) *cur = Value::EmptyDict();
      if (!cur->is_dict())
        return InvalidArgumentError("path " + PathToFqn(path) + " runs into a " +
                                    std::string(Value::KindName(cur->kind())) + " at '" + *key + "'");
      slot = &cur->dict()[*key];
    } else {
      const int64_t index = std::get<int64_t>(path[i]);
      if (index < 0 || index > (int64_t{1} << 32))
        return InvalidArgumentError("path " + PathToFqn(path) + " has a bad list index");
      if (cur->is_none()) *cur = Value::List();
      if (cur->kind() != Value::Kind::kList)
        return InvalidArgumentError("path " + PathToFqn(path) + " runs into a " +
                                    std::string(Value::KindName(cur->kind())) + " at index " +
                                    std::to_string(index));
      auto& items = cur->items();
      if (static_cast<int64_t>(items.size()) <= index) items.resize(static_cast<size_t>(index) + 1);
      slot = &items[static_cast<size_t>(index)];
    }
    if (last) {
      *slot = std::move(value);
      return Status();
    }
    cur = slot;
  }
  return Status();
}

}  // namespace dcpp::plan
