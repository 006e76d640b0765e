#include "metadata_bindings.h"

#include <nanobind/stl/string.h>

#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/pickle.h"
#include "dcpp/plan/validate.h"
#include "errors.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace dcpp::python {
namespace {

namespace pk = format::pickle;

// What the caller's table allows one global to be used as.
struct Role {
  enum Kind { kValue, kCall, kNew, kNewSetState } kind = kValue;
  nb::object obj;
  nb::object fields;  // kNew: the state keys kept (a frozenset)
};

// Python objects from the parsed pickle graph, as pickle.load would build
// them, but only through the roles of the table: a global is a value, a
// callable (REDUCE), or a class instantiated empty (NEWOBJ with no
// arguments) and given its state by its own __setstate__ (kNewSetState) or
// into __dict__, keeping only the keys in `fields` (kNew). Each node is
// built once (shared nodes give one shared object, as pickle's memo);
// cycles and nesting deeper than kMaxDepth are refused. Python errors raised
// by the table's callables propagate as they are.
class GraphBuilder {
 public:
  GraphBuilder(const pk::Graph& g, nb::dict table, std::string where)
      : g_(g),
        table_(std::move(table)),
        where_(std::move(where)),
        built_(g.nodes.size()),
        state_(g.nodes.size(), kUnbuilt) {}

  nb::object Build(pk::NodeId id, int depth = 0) {
    if (id >= g_.nodes.size()) Fail("a reference to a missing object");
    if (state_[id] == kBuilt) return built_[id];
    if (state_[id] == kBuilding) Fail("an object contains itself");
    if (depth > kMaxDepth) Fail("objects nested more than " + std::to_string(kMaxDepth) + " deep");
    state_[id] = kBuilding;
    nb::object value = Make(id, depth + 1);
    built_[id] = value;
    state_[id] = kBuilt;
    return value;
  }

 private:
  // torch's metadata nests about ten levels deep; far more is a hostile file.
  static constexpr int kMaxDepth = 100;
  enum : uint8_t { kUnbuilt, kBuilding, kBuilt };

  [[noreturn]] void Fail(const std::string& problem) const {
    ThrowStatus(DataLossError(where_ + ": metadata: " + problem));
  }

  static nb::object Check(PyObject* o) {
    if (o == nullptr) throw nb::python_error();
    return nb::steal(o);
  }

  const Role& RoleOf(pk::NodeId id) {
    auto it = roles_.find(id);
    if (it != roles_.end()) return it->second;
    const pk::Node& n = g_.at(id);
    nb::object entry = table_.get(nb::make_tuple(n.s, n.s2), nb::none());
    // The parse admitted only the table's keys.
    if (entry.is_none()) Fail("the global " + n.s + "." + n.s2 + " is not allowed");
    Role r;
    const std::string kind = nb::cast<std::string>(entry[0]);
    r.kind = kind == "call"           ? Role::kCall
             : kind == "new"          ? Role::kNew
             : kind == "new_setstate" ? Role::kNewSetState
                                      : Role::kValue;
    r.obj = entry[1];
    r.fields = entry[2];
    return roles_.emplace(id, std::move(r)).first->second;
  }

  nb::object Make(pk::NodeId id, int depth) {
    const pk::Node& n = g_.at(id);
    switch (n.kind) {
      case pk::Kind::kNone:
        return nb::none();
      case pk::Kind::kBool:
        return nb::bool_(n.b);
      case pk::Kind::kInt:
        return Check(PyLong_FromLongLong(n.i));
      case pk::Kind::kBigInt:
        return nb::handle(reinterpret_cast<PyObject*>(&PyLong_Type))
            .attr("from_bytes")(nb::bytes(n.s.data(), n.s.size()), "little", "signed"_a = true);
      case pk::Kind::kFloat:
        return Check(PyFloat_FromDouble(n.f));
      case pk::Kind::kString: {
        // As Python's unpickler decodes BINUNICODE.
        PyObject* s = PyUnicode_DecodeUTF8(n.s.data(), static_cast<Py_ssize_t>(n.s.size()),
                                           "surrogatepass");
        if (s == nullptr) {
          PyErr_Clear();
          Fail("a string that is not UTF-8");
        }
        return nb::steal(s);
      }
      case pk::Kind::kBytes:
        return nb::bytes(n.s.data(), n.s.size());
      case pk::Kind::kTuple: {
        nb::object t = Check(PyTuple_New(static_cast<Py_ssize_t>(n.items.size())));
        for (size_t i = 0; i < n.items.size(); ++i)
          PyTuple_SET_ITEM(t.ptr(), static_cast<Py_ssize_t>(i),
                           Build(n.items[i], depth).release().ptr());
        return t;
      }
      case pk::Kind::kList: {
        nb::list l;
        for (pk::NodeId item : n.items) l.append(Build(item, depth));
        return l;
      }
      case pk::Kind::kDict: {
        nb::dict d;
        for (size_t i = 0; i + 1 < n.items.size(); i += 2)
          if (PyDict_SetItem(d.ptr(), Build(n.items[i], depth).ptr(),
                             Build(n.items[i + 1], depth).ptr()) != 0)
            throw nb::python_error();
        return d;
      }
      case pk::Kind::kSet:
      case pk::Kind::kFrozenSet: {
        nb::object s = Check(n.kind == pk::Kind::kSet ? PySet_New(nullptr)
                                                      : PyFrozenSet_New(nullptr));
        for (pk::NodeId item : n.items)
          if (PySet_Add(s.ptr(), Build(item, depth).ptr()) != 0) throw nb::python_error();
        return s;
      }
      case pk::Kind::kGlobal: {
        const Role& r = RoleOf(id);
        if (r.kind != Role::kValue) Fail(n.s + "." + n.s2 + " used as a value");
        return r.obj;
      }
      case pk::Kind::kReduce:
      case pk::Kind::kNewObj:
        return Object(n, depth);
      case pk::Kind::kPersistentId:
        break;  // refused by the parse options
    }
    Fail("an object of an unexpected kind");
  }

  nb::object Object(const pk::Node& n, int depth) {
    const bool is_new = n.kind == pk::Kind::kNewObj;
    if (n.items.size() < 2 || g_.at(n.items[0]).kind != pk::Kind::kGlobal)
      Fail(std::string(is_new ? "an instance" : "a call") + " of something that is not a class");
    const pk::Node& callee = g_.at(n.items[0]);
    const Role& r = RoleOf(n.items[0]);
    const std::string name = callee.s + "." + callee.s2;
    nb::object args = Build(n.items[1], depth);
    if (!PyTuple_Check(args.ptr())) Fail("the arguments of " + name + " are not a tuple");
    if (n.items.size() > 2) {
      nb::object kwargs = Build(n.items[2], depth);
      if (!PyDict_Check(kwargs.ptr()) || PyDict_Size(kwargs.ptr()) != 0)
        Fail(name + " with keyword arguments");
    }
    nb::object obj;
    if (is_new) {
      if (r.kind != Role::kNew && r.kind != Role::kNewSetState) Fail("cannot create " + name);
      if (PyTuple_Size(args.ptr()) != 0) Fail(name + " created with arguments");
      obj = r.obj.attr("__new__")(r.obj);
    } else {
      if (r.kind != Role::kCall) Fail("cannot call " + name);
      obj = Check(PyObject_Call(r.obj.ptr(), args.ptr(), nullptr));
    }
    // In the order pickle's save_reduce writes them: appends, items, state.
    if (!n.list_items.empty()) {
      if (!PyList_Check(obj.ptr())) Fail("items appended to " + name);
      for (pk::NodeId item : n.list_items)
        if (PyList_Append(obj.ptr(), Build(item, depth).ptr()) != 0) throw nb::python_error();
    }
    if (!n.dict_items.empty()) {
      if (!PyDict_Check(obj.ptr())) Fail("items set on " + name);
      for (size_t i = 0; i + 1 < n.dict_items.size(); i += 2)
        if (PyObject_SetItem(obj.ptr(), Build(n.dict_items[i], depth).ptr(),
                             Build(n.dict_items[i + 1], depth).ptr()) != 0)
          throw nb::python_error();
    }
    if (n.state != pk::kNoNode) {
      nb::object state = Build(n.state, depth);
      if (r.kind == Role::kNewSetState) {
        obj.attr("__setstate__")(state);
      } else if (r.kind == Role::kNew) {
        if (!PyDict_Check(state.ptr())) Fail("the state of " + name + " is not a dict");
        // As pickle: straight into __dict__ (MetadataIndex is frozen).
        nb::object dict = obj.attr("__dict__");
        PyObject *key, *value;
        Py_ssize_t pos = 0;
        while (PyDict_Next(state.ptr(), &pos, &key, &value)) {
          int keep = PySet_Contains(r.fields.ptr(), key);
          if (keep < 0) throw nb::python_error();
          if (keep && PyDict_SetItem(dict.ptr(), key, value) != 0) throw nb::python_error();
        }
      } else {
        Fail("state given to " + name);
      }
    }
    return obj;
  }

  const pk::Graph& g_;
  nb::dict table_;
  std::string where_;
  std::vector<nb::object> built_;
  std::vector<uint8_t> state_;
  std::map<pk::NodeId, Role> roles_;
};

// _torch_metadata(data, where, table) -> (root object, tilings)
//
// 1. Parses `data` (a .metadata file) with dcpp's pickle VM, accepting only
//    the globals that are keys of `table`; whatever it refuses (a foreign
//    global, an opcode torch never writes, garbage) raises
//    CorruptCheckpointError.
// 2. Decodes the same bytes as dcpp.read_metadata and dcpp.load do
//    (format::DecodeMetadata): its own allow-list, the same checks of every
//    entry (chunk rank, chunks inside the tensor, a storage record for every
//    chunk and value). Raises CorruptCheckpointError for a malformed or
//    foreign file, UnimplementedError for a dtype or layout dcpp lacks,
//    ResourceExhaustedError for a file that expands beyond its bounds.
// 3. Builds the Python objects of step 1's graph through `table`:
//    {(module, name): (role, object, fields)} with role "value" (the global
//    is `object`), "call" (REDUCE calls it), "new" (NEWOBJ creates an empty
//    instance of the class, BUILD sets the state keys in the frozenset
//    `fields`) or "new_setstate" (BUILD calls the instance's __setstate__).
//    Objects that break these rules raise CorruptCheckpointError; the
//    table's callables may raise their own Python errors.
// Returns the root object and `tilings`, which maps the FQN of every tensor
// whose chunks do not tile it (overlap, or leave elements uncovered:
// plan::ValidateChunkViews with full coverage) to a CorruptCheckpointError
// message naming it; dcpp.load refuses such a tensor when it loads it, and
// the caller does the same. `where` (the file's path) prefixes every message.
nb::tuple TorchMetadata(nb::bytes data, const std::string& where, nb::dict table) {
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(data.c_str()),
                                       data.size());
  std::map<std::pair<std::string, std::string>, bool, std::less<>> allowed;
  for (auto [key, value] : table)
    allowed[{nb::cast<std::string>(key[0]), nb::cast<std::string>(key[1])}] = true;
  std::optional<Result<Metadata>> md;
  std::optional<Result<pk::Graph>> graph;
  std::vector<std::pair<std::string, std::string>> tilings;
  {
    nb::gil_scoped_release release;
    pk::ParseOptions options;
    options.allow_global = [&allowed](std::string_view module, std::string_view name) {
      return allowed.count(std::pair<std::string, std::string>(module, name)) > 0;
    };
    // Caps in proportion to the input: every node and memo entry takes at
    // least one input byte; string bytes can repeat (a STACK_GLOBAL of
    // memoized names), as much as DecodeMetadata allows for.
    options.max_nodes = bytes.size() + 16;
    options.max_memo = bytes.size() + 16;
    options.max_string_bytes = bytes.size() * 64 + (size_t{1} << 20);
    graph = pk::Parse(bytes, options);
    if (graph->ok()) md = format::DecodeMetadata(bytes);
    if (md && md->ok()) {
      for (const EntryMeta& e : (*md)->entries) {
        if (!e.is_tensor()) continue;
        std::vector<plan::BoxView> boxes;
        boxes.reserve(e.chunks.size());
        for (const ChunkMeta& c : e.chunks) boxes.push_back({c.offsets, c.sizes});
        Status s = plan::ValidateChunkViews(e.fqn, e.size, boxes, /*require_full_coverage=*/true);
        if (!s.ok())
          tilings.emplace_back(e.fqn, DataLossError(std::string(s.message()))
                                          .WithContext(where + ": metadata")
                                          .message());
      }
    }
  }
  const std::string context = where + ": metadata";
  if (!graph->ok()) {
    const Status& s = graph->status();
    ThrowStatus(s.code() == StatusCode::kResourceExhausted
                    ? s.WithContext(context)
                    : DataLossError(std::string(s.message())).WithContext(context));
  }
  if (!md->ok()) {
    // The decoder refuses a foreign global with InvalidArgument: to a
    // reader, a corrupt (or hostile) file like every other failure.
    const Status& s = md->status();
    ThrowStatus(s.code() == StatusCode::kInvalidArgument
                    ? DataLossError(std::string(s.message())).WithContext(where)
                    : s.WithContext(where));
  }
  const pk::Graph& g = graph->value();
  nb::object root;
  {
    // Large metadata is hundreds of thousands of new objects, all kept:
    // the cyclic collector would walk the growing graph again and again
    // (half the time of a build). The builder makes no cycles.
    struct PauseCollector {
      nb::module_ gc = nb::module_::import_("gc");
      bool was_enabled = nb::cast<bool>(gc.attr("isenabled")());
      PauseCollector() { gc.attr("disable")(); }
      ~PauseCollector() {
        if (was_enabled) gc.attr("enable")();
      }
    } pause;
    root = GraphBuilder(g, table, where).Build(g.root);
  }
  nb::dict bad;
  for (auto& [fqn, message] : tilings) bad[nb::str(fqn.c_str(), fqn.size())] = message;
  return nb::make_tuple(root, bad);
}

}  // namespace

void BindTorchMetadata(nb::module_& m) {
  m.def("_torch_metadata", &TorchMetadata, "data"_a, "where"_a, "table"_a);
}

}  // namespace dcpp::python
