#include "metadata_bindings.h"

#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <set>
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

// The decoder refuses a foreign global with InvalidArgument; to a reader that
// is a corrupt (or hostile) file, like every other decoding failure.
Status AsReadError(const Status& s, const std::string& where) {
  Status out = s.code() == StatusCode::kInvalidArgument ? DataLossError(std::string(s.message()))
                                                         : s;
  return out.WithContext(where);
}

nb::list Ids(const std::vector<pk::NodeId>& ids) {
  nb::list out;
  for (pk::NodeId id : ids) out.append(id);
  return out;
}

// One node as a Python tuple (kind, a, b); see TorchMetadataGraph.
nb::tuple NodeToPython(const pk::Node& n, pk::NodeId id, const std::string& where) {
  switch (n.kind) {
    case pk::Kind::kNone:
      return nb::make_tuple("none", nb::none(), nb::none());
    case pk::Kind::kBool:
      return nb::make_tuple("bool", n.b, nb::none());
    case pk::Kind::kInt:
      return nb::make_tuple("int", n.i, nb::none());
    case pk::Kind::kBigInt:
      return nb::make_tuple("bigint", nb::bytes(n.s.data(), n.s.size()), nb::none());
    case pk::Kind::kFloat:
      return nb::make_tuple("float", n.f, nb::none());
    case pk::Kind::kString: {
      // As Python's unpickler decodes BINUNICODE.
      nb::object s = nb::steal(PyUnicode_DecodeUTF8(
          n.s.data(), static_cast<Py_ssize_t>(n.s.size()), "surrogatepass"));
      if (!s.is_valid()) {
        PyErr_Clear();
        ThrowStatus(DataLossError(where + ": metadata: a string that is not UTF-8 (node " +
                                  std::to_string(id) + ")"));
      }
      return nb::make_tuple("str", s, nb::none());
    }
    case pk::Kind::kBytes:
      return nb::make_tuple("bytes", nb::bytes(n.s.data(), n.s.size()), nb::none());
    case pk::Kind::kTuple:
      return nb::make_tuple("tuple", Ids(n.items), nb::none());
    case pk::Kind::kList:
      return nb::make_tuple("list", Ids(n.items), nb::none());
    case pk::Kind::kDict:
      return nb::make_tuple("dict", Ids(n.items), nb::none());
    case pk::Kind::kSet:
      return nb::make_tuple("set", Ids(n.items), nb::none());
    case pk::Kind::kFrozenSet:
      return nb::make_tuple("frozenset", Ids(n.items), nb::none());
    case pk::Kind::kGlobal:
      return nb::make_tuple("global", n.s, n.s2);
    case pk::Kind::kReduce:
    case pk::Kind::kNewObj: {
      nb::object state = n.state == pk::kNoNode ? nb::none() : nb::cast(n.state);
      return nb::make_tuple(n.kind == pk::Kind::kReduce ? "reduce" : "newobj", Ids(n.items),
                            nb::make_tuple(state, Ids(n.dict_items), Ids(n.list_items)));
    }
    case pk::Kind::kPersistentId:
      break;  // refused by the parse options; never reached
  }
  ThrowStatus(DataLossError(where + ": metadata: unexpected pickle node"));
}

// _torch_metadata_graph(data, where, allowed_globals) -> (nodes, root, tilings)
//
// 1. Parses `data` with dcpp's pickle VM, accepting only the (module, name)
//    pairs in `allowed_globals`; anything it refuses (a foreign global, an
//    opcode torch never writes, garbage) raises CorruptCheckpointError.
// 2. Decodes the same bytes as dcpp.read_metadata and dcpp.load do
//    (format::DecodeMetadata): its own allow-list, the same checks of every
//    entry (chunk rank, chunks inside the tensor, a storage record for every
//    chunk and value). Raises CorruptCheckpointError for a malformed or
//    foreign file, UnimplementedError for a dtype or layout dcpp lacks,
//    ResourceExhaustedError for a file that expands beyond its bounds.
// 3. Returns the inert graph of step 1: `nodes[i]` is a tuple (kind, a, b):
//      ("none", None, None), ("bool"|"int"|"float"|"str", value, None),
//      ("bigint"|"bytes", bytes, None) (a big int little-endian two's
//      complement), ("tuple"|"list"|"set"|"frozenset", [ids], None),
//      ("dict", [k0, v0, k1, v1, ...], None), ("global", module, name),
//      ("reduce"|"newobj", [callable, args(, kwargs)], (state or None,
//      [setitem k0, v0, ...], [appended ids])).
//    The graph may share nodes and, in hostile files, contain cycles.
//    `tilings` maps the FQN of every tensor whose chunks do not tile it
//    (overlap, or leave elements uncovered: plan::ValidateChunkViews with
//    full coverage) to a CorruptCheckpointError message naming it. dcpp.load
//    refuses such a tensor when it loads it; the caller does the same.
// `where` (the file's path) prefixes every message.
nb::tuple TorchMetadataGraph(nb::bytes data, const std::string& where,
                             std::vector<std::pair<std::string, std::string>> allowed_globals) {
  const std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(data.c_str()),
                                       data.size());
  const std::set<std::pair<std::string, std::string>, std::less<>> allowed(
      allowed_globals.begin(), allowed_globals.end());
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
          tilings.emplace_back(e.fqn,
                               std::string(DataLossError(std::string(s.message()))
                                               .WithContext(where + ": metadata")
                                               .message()));
      }
    }
  }
  // Whatever the pickle VM refuses (a foreign global, an opcode torch never
  // writes, garbage) is a corrupt file to a reader.
  if (!graph->ok()) {
    const Status& s = graph->status();
    ThrowStatus(s.code() == StatusCode::kResourceExhausted
                    ? s.WithContext(where + ": metadata")
                    : DataLossError(std::string(s.message())).WithContext(where + ": metadata"));
  }
  if (!md->ok()) ThrowStatus(AsReadError(md->status(), where));

  nb::list nodes;
  const pk::Graph& g = graph->value();
  for (size_t i = 0; i < g.nodes.size(); ++i)
    nodes.append(NodeToPython(g.nodes[i], static_cast<pk::NodeId>(i), where));
  nb::dict bad;
  for (auto& [fqn, message] : tilings) bad[nb::str(fqn.c_str(), fqn.size())] = message;
  return nb::make_tuple(nodes, g.root, bad);
}

}  // namespace

void BindTorchMetadata(nb::module_& m) {
  m.def("_torch_metadata_graph", &TorchMetadataGraph, "data"_a, "where"_a, "allowed_globals"_a);
}

}  // namespace dcpp::python
