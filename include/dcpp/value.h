// Value: a state dict, and everything that can sit in one.
//
// A state dict is a tree of dicts, lists and tuples whose leaves are tensors
// or plain values (None, bool, int, float, str, bytes). Save and Load
// flatten it to FQNs by DCP's rules: dict keys and list indices joined with
// '.', a list descended only when it holds a tensor or a container that
// must be, tuples kept whole, empty dicts dropped. A value that needs a Python
// class dcpp cannot represent is carried as Opaque: its original bytes, which
// dcpp writes back unchanged.
#ifndef DCPP_VALUE_H_
#define DCPP_VALUE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "dcpp/tensor.h"

#include <memory>

namespace dcpp {

class Value;
class Stateful;  // dcpp/stateful.h

// An insertion-ordered mapping. Keys are Values (Python allows int keys);
// lookups by string key are O(1). Not thread-safe for concurrent mutation.
class Dict {
 public:
  Dict();
  Dict(const Dict&);
  Dict(Dict&&) noexcept;
  Dict& operator=(const Dict&);
  Dict& operator=(Dict&&) noexcept;
  ~Dict();

  size_t size() const;  // defined below Value (see there)
  bool empty() const;
  const std::vector<Value>& keys() const { return keys_; }
  const std::vector<Value>& values() const { return values_; }
  std::vector<Value>& mutable_values() { return values_; }

  // The value under `key`, or nullptr. FindKey matches any key by equality.
  const Value* FindKey(const Value& key) const;
  Value* FindKey(const Value& key);
  const Value* Find(std::string_view key) const;
  Value* Find(std::string_view key);

  // Inserts or replaces; keeps the original position when replacing.
  void Set(Value key, Value value);
  // The value under `key`, inserting None first if absent.
  Value& operator[](std::string_view key);

 private:
  std::vector<Value> keys_;
  std::vector<Value> values_;
  std::unordered_map<std::string, size_t> string_index_;
};

// A pickled Python object dcpp does not model (e.g. an instance of a user
// class). `blob` holds the complete torch.save bytes it was read from, so it
// can be written back verbatim; `description` says what it is.
struct Opaque {
  std::string blob;
  std::string description;
};

// A tensor split into pieces (what DTensor and ShardedTensor give DCP): the
// global shape and the pieces this process holds, each placed at its global
// offsets. Pieces must lie inside the global shape and must not overlap;
// across all ranks of a save they must cover it.
struct ShardedTensor {
  struct Shard {
    Shape offsets;  // global index of the piece's first element
    Tensor local;   // the piece; its shape is the piece's size
  };
  Shape global_shape;
  std::vector<Shard> shards;
};

class Value {
 public:
  enum class Kind {
    kNone, kBool, kInt, kFloat, kString, kBytes, kList, kTuple, kDict, kTensor, kOpaque, kSharded,
    kStateful
  };

  Value() = default;  // None
  Value(std::nullptr_t) {}
  Value(bool b) : v_(b) {}
  Value(int v) : v_(int64_t{v}) {}
  Value(int64_t v) : v_(v) {}
  Value(double v) : v_(v) {}
  Value(std::string s) : v_(std::move(s)) {}
  Value(std::string_view s) : v_(std::string(s)) {}
  Value(const char* s) : v_(std::string(s)) {}
  Value(Dict d) : v_(std::move(d)) {}
  Value(Tensor t) : v_(std::move(t)) {}
  Value(Opaque o) : v_(std::move(o)) {}
  Value(ShardedTensor s) : v_(std::move(s)) {}
  // A Stateful object (shared: the caller keeps its own reference).
  Value(std::shared_ptr<Stateful> s) : v_(std::move(s)) {}

  static Value Bytes(std::string bytes);
  static Value List(std::vector<Value> items = {});
  static Value Tuple(std::vector<Value> items = {});
  static Value EmptyDict() { return Value(Dict()); }

  Kind kind() const;
  bool is_none() const { return kind() == Kind::kNone; }
  bool is_dict() const { return kind() == Kind::kDict; }
  bool is_tensor() const { return kind() == Kind::kTensor; }
  bool is_sharded() const { return kind() == Kind::kSharded; }
  // List or tuple.
  bool is_sequence() const { return kind() == Kind::kList || kind() == Kind::kTuple; }

  // Accessors. REQUIRES: the matching kind (checked with assert; in release
  // builds a wrong kind throws std::bad_variant_access).
  bool as_bool() const { return std::get<bool>(v_); }
  int64_t as_int() const { return std::get<int64_t>(v_); }
  double as_float() const { return std::get<double>(v_); }
  // The text of a str, or the bytes of a bytes value.
  const std::string& as_string() const;
  // Items of a list or tuple.
  const std::vector<Value>& items() const;
  std::vector<Value>& items();
  const Dict& dict() const { return std::get<Dict>(v_); }
  Dict& dict() { return std::get<Dict>(v_); }
  const Tensor& tensor() const { return std::get<Tensor>(v_); }
  Tensor& tensor() { return std::get<Tensor>(v_); }
  const Opaque& opaque() const { return std::get<Opaque>(v_); }
  const ShardedTensor& sharded() const { return std::get<ShardedTensor>(v_); }
  ShardedTensor& sharded() { return std::get<ShardedTensor>(v_); }
  const std::shared_ptr<Stateful>& stateful() const { return std::get<std::shared_ptr<Stateful>>(v_); }

  // Dict access by string key. REQUIRES: is_dict() (a None value becomes an
  // empty dict first, so `sd["a"]["b"] = x` builds nested dicts).
  Value& operator[](std::string_view key);
  // nullptr unless this is a dict holding `key`.
  const Value* Find(std::string_view key) const;

  // Deep equality; tensors compare with Tensor::BitwiseEquals, floats by bits.
  bool Equals(const Value& other) const;

  // A short, Python-like rendering for messages ("tensor(float32, [4, 4])").
  std::string DebugString(int max_items = 8) const;

  static std::string_view KindName(Kind kind);

 private:
  struct BytesBox { std::string data; };
  struct ListBox { std::vector<Value> items; };
  struct TupleBox { std::vector<Value> items; };
  std::variant<std::monostate, bool, int64_t, double, std::string, BytesBox, ListBox, TupleBox,
               Dict, Tensor, Opaque, ShardedTensor, std::shared_ptr<Stateful>>
      v_;
};

// Defined here, where Value is complete, rather than inside Dict: clang 14
// with libstdc++ 12 in C++20 mode instantiates std::vector<Value>::size (a
// constexpr function) on the spot, which fails while Value is incomplete.
inline size_t Dict::size() const { return keys_.size(); }
inline bool Dict::empty() const { return keys_.empty(); }

}  // namespace dcpp

#endif  // DCPP_VALUE_H_
