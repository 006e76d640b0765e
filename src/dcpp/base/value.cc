#include "dcpp/value.h"

#include <cstring>

namespace dcpp {

// ---- Dict ----

Dict::Dict() = default;
Dict::Dict(const Dict&) = default;
Dict::Dict(Dict&&) noexcept = default;
Dict& Dict::operator=(const Dict&) = default;
Dict& Dict::operator=(Dict&&) noexcept = default;
Dict::~Dict() = default;

const Value* Dict::Find(std::string_view key) const {
  auto it = string_index_.find(std::string(key));
  return it == string_index_.end() ? nullptr : &values_[it->second];
}

Value* Dict::Find(std::string_view key) {
  return const_cast<Value*>(static_cast<const Dict*>(this)->Find(key));
}

const Value* Dict::FindKey(const Value& key) const {
  if (key.kind() == Value::Kind::kString) return Find(key.as_string());
  for (size_t i = 0; i < keys_.size(); ++i)
    if (keys_[i].Equals(key)) return &values_[i];
  return nullptr;
}

Value* Dict::FindKey(const Value& key) {
  return const_cast<Value*>(static_cast<const Dict*>(this)->FindKey(key));
}

void Dict::Set(Value key, Value value) {
  if (Value* existing = FindKey(key)) {
    *existing = std::move(value);
    return;
  }
  if (key.kind() == Value::Kind::kString) string_index_.emplace(key.as_string(), keys_.size());
  keys_.push_back(std::move(key));
  values_.push_back(std::move(value));
}

Value& Dict::operator[](std::string_view key) {
  if (Value* v = Find(key)) return *v;
  Set(Value(key), Value());
  return values_.back();
}

// ---- Value ----

Value Value::Bytes(std::string bytes) {
  Value v;
  v.v_ = BytesBox{std::move(bytes)};
  return v;
}

Value Value::List(std::vector<Value> items) {
  Value v;
  v.v_ = ListBox{std::move(items)};
  return v;
}

Value Value::Tuple(std::vector<Value> items) {
  Value v;
  v.v_ = TupleBox{std::move(items)};
  return v;
}

Value::Kind Value::kind() const {
  static constexpr Kind kByIndex[] = {Kind::kNone,  Kind::kBool,  Kind::kInt,   Kind::kFloat,
                                      Kind::kString, Kind::kBytes, Kind::kList,  Kind::kTuple,
                                      Kind::kDict,  Kind::kTensor, Kind::kOpaque, Kind::kSharded,
                                      Kind::kStateful};
  return kByIndex[v_.index()];
}

std::string_view Value::KindName(Kind kind) {
  switch (kind) {
    case Kind::kNone: return "None";
    case Kind::kBool: return "bool";
    case Kind::kInt: return "int";
    case Kind::kFloat: return "float";
    case Kind::kString: return "str";
    case Kind::kBytes: return "bytes";
    case Kind::kList: return "list";
    case Kind::kTuple: return "tuple";
    case Kind::kDict: return "dict";
    case Kind::kTensor: return "tensor";
    case Kind::kOpaque: return "opaque";
    case Kind::kSharded: return "sharded tensor";
    case Kind::kStateful: return "stateful";
  }
  return "?";
}

const std::string& Value::as_string() const {
  if (auto* b = std::get_if<BytesBox>(&v_)) return b->data;
  return std::get<std::string>(v_);
}

const std::vector<Value>& Value::items() const {
  if (auto* t = std::get_if<TupleBox>(&v_)) return t->items;
  return std::get<ListBox>(v_).items;
}

std::vector<Value>& Value::items() {
  if (auto* t = std::get_if<TupleBox>(&v_)) return t->items;
  return std::get<ListBox>(v_).items;
}

Value& Value::operator[](std::string_view key) {
  if (is_none()) v_ = Dict();
  return std::get<Dict>(v_)[key];
}

const Value* Value::Find(std::string_view key) const {
  const Dict* d = std::get_if<Dict>(&v_);
  return d ? d->Find(key) : nullptr;
}

bool Value::Equals(const Value& o) const {
  if (kind() != o.kind()) return false;
  switch (kind()) {
    case Kind::kNone: return true;
    case Kind::kBool: return as_bool() == o.as_bool();
    case Kind::kInt: return as_int() == o.as_int();
    case Kind::kFloat: {
      double a = as_float(), b = o.as_float();
      return std::memcmp(&a, &b, sizeof a) == 0;
    }
    case Kind::kString:
    case Kind::kBytes: return as_string() == o.as_string();
    case Kind::kList:
    case Kind::kTuple: {
      const auto &a = items(), &b = o.items();
      if (a.size() != b.size()) return false;
      for (size_t i = 0; i < a.size(); ++i)
        if (!a[i].Equals(b[i])) return false;
      return true;
    }
    case Kind::kDict: {
      const Dict &a = dict(), &b = o.dict();
      if (a.size() != b.size()) return false;
      for (size_t i = 0; i < a.size(); ++i)
        if (!a.keys()[i].Equals(b.keys()[i]) || !a.values()[i].Equals(b.values()[i])) return false;
      return true;
    }
    case Kind::kTensor: return tensor().BitwiseEquals(o.tensor());
    case Kind::kOpaque: return opaque().blob == o.opaque().blob;
    case Kind::kSharded: {
      const ShardedTensor &a = sharded(), &b = o.sharded();
      if (a.global_shape != b.global_shape || a.shards.size() != b.shards.size()) return false;
      for (size_t i = 0; i < a.shards.size(); ++i)
        if (a.shards[i].offsets != b.shards[i].offsets ||
            !a.shards[i].local.BitwiseEquals(b.shards[i].local))
          return false;
      return true;
    }
    case Kind::kStateful: return stateful() == o.stateful();
  }
  return false;
}

std::string Value::DebugString(int max_items) const {
  auto seq = [&](const std::vector<Value>& items, const char* open, const char* close) {
    std::string out = open;
    for (size_t i = 0; i < items.size(); ++i) {
      if (i) out += ", ";
      if (static_cast<int>(i) == max_items) return out + "..." + close;
      out += items[i].DebugString(max_items);
    }
    return out + close;
  };
  switch (kind()) {
    case Kind::kNone: return "None";
    case Kind::kBool: return as_bool() ? "True" : "False";
    case Kind::kInt: return std::to_string(as_int());
    case Kind::kFloat: return std::to_string(as_float());
    case Kind::kString: return "'" + as_string() + "'";
    case Kind::kBytes: return "b<" + std::to_string(as_string().size()) + " bytes>";
    case Kind::kList: return seq(items(), "[", "]");
    case Kind::kTuple: return seq(items(), "(", items().size() == 1 ? ",)" : ")");
    case Kind::kDict: {
      std::string out = "{";
      for (size_t i = 0; i < dict().size(); ++i) {
        if (i) out += ", ";
        if (static_cast<int>(i) == max_items) return out + "...}";
        out += dict().keys()[i].DebugString(max_items) + ": " +
               dict().values()[i].DebugString(max_items);
      }
      return out + "}";
    }
    case Kind::kTensor:
      return "tensor(" + std::string(TorchName(tensor().dtype())) + ", " +
             ShapeToString(tensor().shape()) + ")";
    case Kind::kOpaque: return "<opaque: " + opaque().description + ">";
    case Kind::kSharded:
      return "sharded(" +
             std::string(sharded().shards.empty() ? "?" : TorchName(sharded().shards[0].local.dtype())) +
             ", " + ShapeToString(sharded().global_shape) + ", " +
             std::to_string(sharded().shards.size()) + " local shards)";
    case Kind::kStateful: return "<stateful object>";
  }
  return "?";
}

}  // namespace dcpp
