// Flattening a nested state dict to FQNs and back, exactly as DCP does
// (torch/distributed/checkpoint/_traverse.py, _nested_dict.py).
//
// Rules (current traversal): every dict is descended, its keys converted to
// strings as Python's str() would; a list is descended element-wise (path
// element = index) only if it holds a tensor or a container that must itself
// be descended, otherwise the whole list is one leaf; tuples and everything
// else are leaves. So empty dicts vanish and a tuple holding tensors is one
// pickled value. FQN = path elements joined by ".". The 2.3 traversal (used by
// loaders when keys are missing) also keeps dicts of plain values whole.
// Pure: no I/O.
#ifndef DCPP_PLAN_FLATTEN_H_
#define DCPP_PLAN_FLATTEN_H_

#include <string>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/status.h"
#include "dcpp/value.h"

namespace dcpp::plan {

enum class Traversal { kCurrent, kV2_3 };

// One leaf of a state dict. `value` points into the tree that was flattened
// and is valid while that tree is neither destroyed nor restructured.
template <typename V>
struct BasicFlatEntry {
  std::string fqn;
  ObjectPath path;
  V* value = nullptr;
};
using FlatEntry = BasicFlatEntry<const Value>;
using MutableFlatEntry = BasicFlatEntry<Value>;

// Flattens `state_dict` (REQUIRES: a dict; InvalidArgument otherwise, and for
// dict keys Python's str() cannot name here, and for duplicate FQNs such as
// {"a.b": 1, "a": {"b": 2}}, like DCP's "duplicated flatten key").
Result<std::vector<FlatEntry>> Flatten(const Value& state_dict,
                                       Traversal traversal = Traversal::kCurrent);
Result<std::vector<MutableFlatEntry>> FlattenMutable(Value& state_dict,
                                                     Traversal traversal = Traversal::kCurrent);

// "a.0.b" for ("a", 0, "b").
std::string PathToFqn(const ObjectPath& path);

// Sets `value` at `path` under `root` (a dict, or None which becomes one),
// creating dicts for string elements and lists (padded with None) for int
// elements, as DCP's set_element does. InvalidArgument if the path runs into
// a value of another kind.
Status SetElement(Value& root, const ObjectPath& path, Value value);

}  // namespace dcpp::plan

#endif  // DCPP_PLAN_FLATTEN_H_
