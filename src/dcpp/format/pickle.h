// Python pickle, read safely and written exactly.
//
// Reading: a pickle VM (protocols 2-5) that never executes anything. It builds
// a graph of inert nodes in an arena: GLOBAL / STACK_GLOBAL produce a kGlobal
// node only if the (module, name) pair is allow-listed; REDUCE and NEWOBJ
// record "call `callable` with `args`" without calling; BUILD records the
// state on the object it applies to. Interpreting the graph (what a
// torch.Size or a Metadata is) is the job of the codecs built on top
// (metadata_codec, torch_pickle). Every length, memo index and stack access is
// checked; size caps bound memory. Any violation is a DataLoss status (or
// InvalidArgument/Unimplemented for a disallowed global or opcode) and never a
// crash. Cycles (a list appended to itself through the memo) are possible in
// hostile input: consumers must bound their recursion depth.
//
// Protocols 0 and 1 (text opcodes) are read too. As Python's Unpickler does
// for protocol < 3 (fix_imports), the Python 2 names `__builtin__` and
// `copy_reg` (and __builtin__'s renamed members such as `unicode`) are mapped
// to their Python 3 names before the allow-list policy sees them, so a
// protocol-2 `c__builtin__\nset\n` is the global builtins.set.
//
// Writing: a low-level opcode emitter (protocol 2, the form torch.save uses
// and torch.load(weights_only=True) accepts).
#ifndef DCPP_FORMAT_PICKLE_H_
#define DCPP_FORMAT_PICKLE_H_

#include <bit>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dcpp/status.h"

namespace dcpp::format::pickle {

using NodeId = uint32_t;
inline constexpr NodeId kNoNode = 0xFFFFFFFFu;

enum class Kind : uint8_t {
  kNone,
  kBool,      // `b`
  kInt,       // `i` (fits in int64)
  kBigInt,    // `s` = little-endian two's complement bytes (LONG1/LONG4 beyond int64)
  kFloat,     // `f`
  kString,    // `s` (UTF-8 as stored; not validated)
  kBytes,     // `s` (SHORT_BINBYTES/BINBYTES/BINBYTES8/BYTEARRAY8/SHORT_BINSTRING/BINSTRING)
  kTuple,     // `items`
  kList,      // `items`
  kDict,      // `items` = k0, v0, k1, v1, ... in insertion order (duplicates kept)
  kSet,       // `items` (EMPTY_SET + ADDITEMS)
  kFrozenSet, // `items`
  kGlobal,    // `s` = module, `s2` = qualified name
  kReduce,    // `items` = {callable, args}; `state` = BUILD state or kNoNode
  kNewObj,    // `items` = {cls, args} (NEWOBJ; NEWOBJ_EX adds kwargs as 3rd); `state`
  kPersistentId,  // `items` = {pid} (BINPERSID)
};

std::string_view KindName(Kind kind);

struct Node {
  Kind kind = Kind::kNone;
  bool b = false;
  NodeId state = kNoNode;  // kReduce / kNewObj: see below
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::string s2;
  std::vector<NodeId> items;
  // (`state`, above next to `kind` to keep nodes small: the BUILD state or
  // kNoNode.)
  // kReduce / kNewObj only: what SETITEM(S) and APPEND(S) added to the object
  // after it was built (Python calls obj[k] = v / obj.append(x) on it), e.g.
  // an OrderedDict is REDUCE(collections.OrderedDict, ()) followed by
  // SETITEMS. dict_items = k0, v0, k1, v1, ... in order.
  std::vector<NodeId> dict_items;
  std::vector<NodeId> list_items;
};

// The nodes of a graph, indexed by NodeId: a vector-like arena that grows
// in blocks and never moves a node, so growing neither copies nodes nor
// holds twice their memory (as a doubling std::vector does, which made a
// large graph take up to twice what its nodes need). Blocks double from 16
// nodes up to kBlockNodes, then stay at that size: a small pickle takes
// little memory, a large one at most one block more than it needs.
class NodeArena {
 public:
  static constexpr size_t kFirstBlockNodes = 16;
  static constexpr size_t kBlockNodes = 4096;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Nodes the allocated blocks hold (>= size()).
  size_t capacity() const { return capacity_; }
  // The size of the block the next emplace_back allocates when full.
  size_t next_block_nodes() const {
    return capacity_ < kSmallNodes ? kFirstBlockNodes << blocks_.size() : kBlockNodes;
  }
  Node& operator[](size_t i) {
    auto [block, offset] = Locate(i);
    return blocks_[block][offset];
  }
  const Node& operator[](size_t i) const {
    auto [block, offset] = Locate(i);
    return blocks_[block][offset];
  }
  Node& emplace_back() {
    if (size_ == capacity_) {
      const size_t n = next_block_nodes();
      blocks_.push_back(std::make_unique<Node[]>(n));
      capacity_ += n;
    }
    return (*this)[size_++];
  }

 private:
  // Nodes in the doubling blocks: 16 + 32 + ... + 2048.
  static constexpr size_t kSmallNodes = kBlockNodes - kFirstBlockNodes;
  static constexpr int kFirstBlockLog2 = 4;
  static_assert(kFirstBlockNodes == size_t{1} << kFirstBlockLog2);
  static constexpr size_t kSmallBlocks = 8;  // log2(kBlockNodes) - kFirstBlockLog2

  static std::pair<size_t, size_t> Locate(size_t i) {
    if (i < kSmallNodes) {
      const size_t shifted = i + kFirstBlockNodes;
      const int log2 = static_cast<int>(std::bit_width(shifted)) - 1;
      return {static_cast<size_t>(log2 - kFirstBlockLog2), shifted - (size_t{1} << log2)};
    }
    const size_t j = i - kSmallNodes;
    return {kSmallBlocks + j / kBlockNodes, j % kBlockNodes};
  }

  std::vector<std::unique_ptr<Node[]>> blocks_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

// The result of parsing: an arena of nodes and the root (the object STOP
// returned). Node ids are indices into `nodes`.
struct Graph {
  NodeArena nodes;
  NodeId root = kNoNode;
  // The bytes the parse counted against ParseOptions' memory cap.
  size_t memory_bytes = 0;

  const Node& at(NodeId id) const { return nodes[id]; }
};

struct ParseOptions {
  // Decides whether GLOBAL/STACK_GLOBAL (module, name) may appear. Required:
  // a null policy rejects every global.
  std::function<bool(std::string_view module, std::string_view name)> allow_global;
  // Whether BINPERSID / PERSID are accepted (torch.save data.pkl uses them).
  bool allow_persistent_id = false;
  // Caps against hostile input. max_string_bytes bounds the total payload of
  // all str/bytes/int literals together; max_memo the number of memo keys.
  size_t max_nodes = size_t{1} << 24;
  size_t max_string_bytes = size_t{1} << 30;
  size_t max_memo = size_t{1} << 24;
  // Entries on the value stack, and separately on the MARK stack (GET and DUP
  // push without creating nodes, so max_nodes alone does not bound them).
  size_t max_stack_depth = size_t{1} << 24;
  // The memory cap, in bytes, proportional to the input: the parse counts
  // what it allocates (node blocks, string heap bytes, containers' items,
  // the value and MARK stacks and the memo; vectors by capacity, heap blocks
  // with malloc's overhead) and fails with ResourceExhausted beyond
  //   memory_base_bytes + memory_per_input_byte * input size.
  // Why 64 x: a node is 160 bytes and every opcode that makes one takes at
  // least one byte, so without a cap a 17 MB file of EMPTY_LISTs reached
  // 2.8 GB (max_nodes alone allows 2^24 nodes); real pickles spend several
  // bytes per object. DCP's .metadata is the densest dcpp reads: torch-
  // written ones with 512,000 chunks (72 MB, 2-d tensors) count 34.7 x and
  // with 4-d chunks 38.0 x (peak RSS within 7% of the count; see
  // pickle_test.cc), so 64 x leaves them 1.7 times their need. The base
  // covers small pickles (a tensor's data.pkl is a few hundred bytes).
  size_t memory_per_input_byte = 64;
  size_t memory_base_bytes = size_t{16} << 20;

  // memory_base_bytes + memory_per_input_byte * input_bytes, saturating.
  size_t MemoryCap(size_t input_bytes) const {
    size_t cap = 0;
    if (__builtin_mul_overflow(memory_per_input_byte, input_bytes, &cap) ||
        __builtin_add_overflow(cap, memory_base_bytes, &cap))
      return SIZE_MAX;
    return cap;
  }
};

// Parses one pickle from `data`. Trailing bytes after STOP are ignored (as
// Python does). Errors name the opcode and byte offset, e.g.
// "DATA_LOSS: pickle: truncated BINUNICODE at offset 17":
//   DataLoss: truncated or malformed input (stack underflow, missing MARK,
//     unknown memo key, BUILD on something that is not an object, ...);
//   InvalidArgument: a global the policy rejects ("pickle: global
//     'mod.name' is not allowed") or a persistent id when not allowed;
//   Unimplemented: opcodes outside the supported set (EXT1/2/4,
//     NEXT_BUFFER, READONLY_BUFFER, INST, OBJ, STRING, unknown bytes) and
//     protocols above 5;
//   ResourceExhausted: a cap in `options` was exceeded.
// Thread-safe (no shared state); `options.allow_global` is called on this
// thread only.
Result<Graph> Parse(std::span<const uint8_t> data, const ParseOptions& options);
inline Result<Graph> Parse(std::string_view data, const ParseOptions& options) {
  return Parse(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
               options);
}

// Emits protocol-2 opcodes into a byte string. Methods append; nothing is
// validated beyond what the signature enforces: the caller builds a well-formed
// stack program. Not thread-safe.
class Writer {
 public:
  // Emits PROTO 2.
  Writer();

  void None();
  void Bool(bool v);                  // NEWTRUE / NEWFALSE
  void Int(int64_t v);                // BININT1 / BININT2 / BININT / LONG1
  void UInt(uint64_t v);              // as Int, for values up to 2^64 - 1
  void Float(double v);               // BINFLOAT (big-endian double)
  // BINUNICODE. REQUIRES: utf8.size() < 2^32 (Python cannot pickle longer
  // strings in protocol 2 either).
  void String(std::string_view utf8);
  // Python `bytes` in protocol 2, as Python 3.11 writes it:
  // _codecs.encode(<latin-1 str>, 'latin1'), memoizing the text, the 'latin1'
  // string (once per writer; later calls BINGET it) and the argument tuple;
  // the empty bytes are __builtin__.bytes(). As with String(), the caller
  // Memoize()s the result where Python would (Python always does).
  // REQUIRES: bytes.size() < 2^31.
  void Bytes(std::string_view bytes);
  // GLOBAL 'module\nname\n'; the first use of a pair is memoized and later uses
  // emit BINGET, as Python's pickler does.
  void Global(std::string_view module, std::string_view name);
  void Mark();
  void EmptyTuple();
  // Builds a tuple of the last `n` stack items: TUPLE1/2/3 for n <= 3,
  // otherwise REQUIRES a Mark() before the items and emits TUPLE.
  void Tuple(size_t n);
  void EmptyList();
  void EmptyDict();
  void Append();    // APPEND
  void Appends();   // APPENDS (after Mark + items)
  void SetItem();   // SETITEM
  void SetItems();  // SETITEMS (after Mark + key/value pairs)
  void Reduce();
  void NewObj();
  void Build();
  void BinPersId();
  // Emits BINPUT/LONG_BINPUT for the top of stack; returns its memo index.
  uint32_t Memoize();
  void Get(uint32_t memo_index);  // BINGET / LONG_BINGET

  // Emits STOP and returns the pickle. The writer is spent afterwards.
  std::string Finish();

  size_t size() const { return out_.size(); }

 private:
  std::string out_;
  uint32_t next_memo_ = 0;
  std::unordered_map<std::string, uint32_t> global_memo_;
  std::optional<uint32_t> latin1_memo_;
};

}  // namespace dcpp::format::pickle

#endif  // DCPP_FORMAT_PICKLE_H_
