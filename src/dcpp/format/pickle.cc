#include "dcpp/format/pickle.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <utility>

#include "dcpp/base/utf8.h"

namespace dcpp::format::pickle {
namespace {

// Opcode bytes, named as in CPython's pickle.py.
enum Op : uint8_t {
  kOpMark = '(',
  kOpStop = '.',
  kOpPop = '0',
  kOpPopMark = '1',
  kOpDup = '2',
  kOpFloat = 'F',
  kOpInt = 'I',
  kOpBinInt = 'J',
  kOpBinInt1 = 'K',
  kOpLong = 'L',
  kOpBinInt2 = 'M',
  kOpNone = 'N',
  kOpPersId = 'P',
  kOpBinPersId = 'Q',
  kOpReduce = 'R',
  kOpString = 'S',
  kOpBinString = 'T',
  kOpShortBinString = 'U',
  kOpUnicode = 'V',
  kOpBinUnicode = 'X',
  kOpAppend = 'a',
  kOpBuild = 'b',
  kOpGlobal = 'c',
  kOpDict = 'd',
  kOpEmptyDict = '}',
  kOpAppends = 'e',
  kOpGet = 'g',
  kOpBinGet = 'h',
  kOpInst = 'i',
  kOpLongBinGet = 'j',
  kOpList = 'l',
  kOpEmptyList = ']',
  kOpObj = 'o',
  kOpPut = 'p',
  kOpBinPut = 'q',
  kOpLongBinPut = 'r',
  kOpSetItem = 's',
  kOpTuple = 't',
  kOpEmptyTuple = ')',
  kOpSetItems = 'u',
  kOpBinFloat = 'G',
  kOpProto = 0x80,
  kOpNewObj = 0x81,
  kOpExt1 = 0x82,
  kOpExt2 = 0x83,
  kOpExt4 = 0x84,
  kOpTuple1 = 0x85,
  kOpTuple2 = 0x86,
  kOpTuple3 = 0x87,
  kOpNewTrue = 0x88,
  kOpNewFalse = 0x89,
  kOpLong1 = 0x8a,
  kOpLong4 = 0x8b,
  kOpBinBytes = 'B',
  kOpShortBinBytes = 'C',
  kOpShortBinUnicode = 0x8c,
  kOpBinUnicode8 = 0x8d,
  kOpBinBytes8 = 0x8e,
  kOpEmptySet = 0x8f,
  kOpAddItems = 0x90,
  kOpFrozenSet = 0x91,
  kOpNewObjEx = 0x92,
  kOpStackGlobal = 0x93,
  kOpMemoize = 0x94,
  kOpFrame = 0x95,
  kOpByteArray8 = 0x96,
  kOpNextBuffer = 0x97,
  kOpReadOnlyBuffer = 0x98,
};

// The name of an opcode byte for messages; empty for bytes that are no opcode.
std::string_view OpName(uint8_t op) {
  switch (op) {
    case kOpMark:
      return "MARK";
    case kOpStop:
      return "STOP";
    case kOpPop:
      return "POP";
    case kOpPopMark:
      return "POP_MARK";
    case kOpDup:
      return "DUP";
    case kOpFloat:
      return "FLOAT";
    case kOpInt:
      return "INT";
    case kOpBinInt:
      return "BININT";
    case kOpBinInt1:
      return "BININT1";
    case kOpLong:
      return "LONG";
    case kOpBinInt2:
      return "BININT2";
    case kOpNone:
      return "NONE";
    case kOpPersId:
      return "PERSID";
    case kOpBinPersId:
      return "BINPERSID";
    case kOpReduce:
      return "REDUCE";
    case kOpString:
      return "STRING";
    case kOpBinString:
      return "BINSTRING";
    case kOpShortBinString:
      return "SHORT_BINSTRING";
    case kOpUnicode:
      return "UNICODE";
    case kOpBinUnicode:
      return "BINUNICODE";
    case kOpAppend:
      return "APPEND";
    case kOpBuild:
      return "BUILD";
    case kOpGlobal:
      return "GLOBAL";
    case kOpDict:
      return "DICT";
    case kOpEmptyDict:
      return "EMPTY_DICT";
    case kOpAppends:
      return "APPENDS";
    case kOpGet:
      return "GET";
    case kOpBinGet:
      return "BINGET";
    case kOpInst:
      return "INST";
    case kOpLongBinGet:
      return "LONG_BINGET";
    case kOpList:
      return "LIST";
    case kOpEmptyList:
      return "EMPTY_LIST";
    case kOpObj:
      return "OBJ";
    case kOpPut:
      return "PUT";
    case kOpBinPut:
      return "BINPUT";
    case kOpLongBinPut:
      return "LONG_BINPUT";
    case kOpSetItem:
      return "SETITEM";
    case kOpTuple:
      return "TUPLE";
    case kOpEmptyTuple:
      return "EMPTY_TUPLE";
    case kOpSetItems:
      return "SETITEMS";
    case kOpBinFloat:
      return "BINFLOAT";
    case kOpProto:
      return "PROTO";
    case kOpNewObj:
      return "NEWOBJ";
    case kOpExt1:
      return "EXT1";
    case kOpExt2:
      return "EXT2";
    case kOpExt4:
      return "EXT4";
    case kOpTuple1:
      return "TUPLE1";
    case kOpTuple2:
      return "TUPLE2";
    case kOpTuple3:
      return "TUPLE3";
    case kOpNewTrue:
      return "NEWTRUE";
    case kOpNewFalse:
      return "NEWFALSE";
    case kOpLong1:
      return "LONG1";
    case kOpLong4:
      return "LONG4";
    case kOpBinBytes:
      return "BINBYTES";
    case kOpShortBinBytes:
      return "SHORT_BINBYTES";
    case kOpShortBinUnicode:
      return "SHORT_BINUNICODE";
    case kOpBinUnicode8:
      return "BINUNICODE8";
    case kOpBinBytes8:
      return "BINBYTES8";
    case kOpEmptySet:
      return "EMPTY_SET";
    case kOpAddItems:
      return "ADDITEMS";
    case kOpFrozenSet:
      return "FROZENSET";
    case kOpNewObjEx:
      return "NEWOBJ_EX";
    case kOpStackGlobal:
      return "STACK_GLOBAL";
    case kOpMemoize:
      return "MEMOIZE";
    case kOpFrame:
      return "FRAME";
    case kOpByteArray8:
      return "BYTEARRAY8";
    case kOpNextBuffer:
      return "NEXT_BUFFER";
    case kOpReadOnlyBuffer:
      return "READONLY_BUFFER";
  }
  return {};
}

std::string HexByte(uint8_t b) {
  static constexpr char kDigits[] = "0123456789abcdef";
  return std::string("0x") + kDigits[b >> 4] + kDigits[b & 15];
}

uint64_t LoadLE(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int k = n - 1; k >= 0; --k) v = (v << 8) | p[k];
  return v;
}

// Python's int(str) refuses more digits than this by default (3.11+), so a
// valid text pickle never holds a longer literal; it also bounds the
// quadratic decimal conversion below.
constexpr size_t kMaxDecimalDigits = 4300;

// Converts an optionally signed decimal literal to little-endian two's
// complement bytes in the minimal form of Python's pickle.encode_long ("" for
// 0). nullopt if `text` is not such a literal.
std::optional<std::string> DecimalToTwosComplement(std::string_view text) {
  bool negative = false;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    negative = text[0] == '-';
    text.remove_prefix(1);
  }
  if (text.empty() || text.size() > kMaxDecimalDigits) return std::nullopt;
  std::vector<uint32_t> limbs;  // magnitude, little-endian base 2^32
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    uint64_t carry = static_cast<uint64_t>(c - '0');
    for (uint32_t& limb : limbs) {
      uint64_t v = uint64_t{limb} * 10 + carry;
      limb = static_cast<uint32_t>(v);
      carry = v >> 32;
    }
    if (carry != 0) limbs.push_back(static_cast<uint32_t>(carry));
  }
  std::string bytes;
  for (uint32_t limb : limbs) {
    for (int k = 0; k < 4; ++k) bytes.push_back(static_cast<char>((limb >> (8 * k)) & 0xFF));
  }
  while (!bytes.empty() && bytes.back() == 0) bytes.pop_back();
  if (bytes.empty()) return std::string();  // zero, also "-0"
  // A sign byte, then negate in place (two's complement) for negative values.
  bytes.push_back(0);
  if (negative) {
    unsigned carry = 1;
    for (char& c : bytes) {
      unsigned v = static_cast<uint8_t>(~static_cast<uint8_t>(c)) + carry;
      c = static_cast<char>(v & 0xFF);
      carry = v >> 8;
    }
  }
  // Drop redundant sign-extension bytes.
  while (bytes.size() > 1) {
    uint8_t last = static_cast<uint8_t>(bytes[bytes.size() - 1]);
    uint8_t prev = static_cast<uint8_t>(bytes[bytes.size() - 2]);
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) {
      bytes.pop_back();
    } else {
      break;
    }
  }
  return bytes;
}

// The int64 value of little-endian two's complement bytes, if it fits.
std::optional<int64_t> TwosComplementToInt64(std::string_view bytes) {
  if (bytes.empty()) return 0;
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  size_t n = bytes.size();
  bool negative = (p[n - 1] & 0x80) != 0;
  if (n > 8) {
    uint8_t fill = negative ? 0xFF : 0x00;
    for (size_t k = 8; k < n; ++k) {
      if (p[k] != fill) return std::nullopt;
    }
    if (((p[7] & 0x80) != 0) != negative) return std::nullopt;
    n = 8;
  }
  uint64_t v = LoadLE(p, static_cast<int>(n));
  if (negative && n < 8) v |= ~uint64_t{0} << (8 * n);
  return static_cast<int64_t>(v);
}

// Python 2 names that Python 3's Unpickler maps for protocol < 3
// (_compat_pickle.NAME_MAPPING / IMPORT_MAPPING, the builtins-related part).
void MapPython2Global(std::string* module, std::string* name) {
  if (*module == "__builtin__") {
    static constexpr std::pair<std::string_view, std::pair<std::string_view, std::string_view>>
        kNames[] = {
            {"xrange", {"builtins", "range"}},   {"reduce", {"functools", "reduce"}},
            {"intern", {"sys", "intern"}},       {"unichr", {"builtins", "chr"}},
            {"unicode", {"builtins", "str"}},    {"long", {"builtins", "int"}},
            {"basestring", {"builtins", "str"}},
        };
    for (const auto& [from, to] : kNames) {
      if (*name == from) {
        *module = to.first;
        *name = to.second;
        return;
      }
    }
    *module = "builtins";
  } else if (*module == "copy_reg") {
    *module = "copyreg";
  }
}

// Python's memo: a dict from index to object. Indices written by picklers
// are dense, so they live in a vector; a hostile far-away index goes to a map
// instead of forcing a huge allocation.
class Memo {
 public:
  explicit Memo(size_t cap) : cap_(cap) {}

  size_t size() const { return count_; }

  // False when storing a new key would exceed the cap.
  bool Put(uint64_t index, NodeId node) {
    if (index < dense_.size()) {
      if (dense_[index] == kNoNode) {
        if (count_ >= cap_) return false;
        ++count_;
      }
      dense_[index] = node;
      return true;
    }
    auto it = sparse_.find(index);
    if (it != sparse_.end()) {
      it->second = node;
      return true;
    }
    if (count_ >= cap_) return false;
    ++count_;
    if (index <= dense_.size() + 1024) {
      dense_.resize(index + 1, kNoNode);
      dense_[index] = node;
    } else {
      sparse_.emplace(index, node);
    }
    return true;
  }

  // The bytes the memo's tables hold (an estimate for the hash map: a node
  // of key, value and link plus its bucket, as libstdc++ lays them out).
  size_t bytes() const {
    return dense_.capacity() * sizeof(NodeId) +
           sparse_.size() * (sizeof(uint64_t) + sizeof(NodeId) + 2 * sizeof(void*)) +
           sparse_.bucket_count() * sizeof(void*);
  }

  NodeId Get(uint64_t index) const {
    if (index < dense_.size()) return dense_[index];
    auto it = sparse_.find(index);
    return it == sparse_.end() ? kNoNode : it->second;
  }

 private:
  size_t cap_;
  size_t count_ = 0;
  std::vector<NodeId> dense_;
  std::unordered_map<uint64_t, NodeId> sparse_;
};

class Parser {
 public:
  Parser(std::span<const uint8_t> data, const ParseOptions& options)
      : data_(data), options_(options), memory_cap_(options.MemoryCap(data.size())),
        memo_(options.max_memo) {}

  Result<Graph> Run();

 private:
  // One opcode at data_[op_offset_] (pos_ is just past the opcode byte).
  Status Step(bool* stopped);

  std::string Where() const { return " at offset " + std::to_string(op_offset_); }
  std::string OpLabel() const {
    std::string_view name = OpName(op_);
    return name.empty() ? HexByte(op_) : std::string(name);
  }
  Status Corrupt(std::string_view what) const {
    return DataLossError("pickle: " + std::string(what) + " in " + OpLabel() + Where());
  }
  Status Truncated() const { return DataLossError("pickle: truncated " + OpLabel() + Where()); }

  // Reading operands.
  Result<const uint8_t*> Read(uint64_t n) {
    if (n > data_.size() - pos_) return Truncated();
    const uint8_t* p = data_.data() + pos_;
    pos_ += static_cast<size_t>(n);
    return p;
  }
  Result<uint64_t> ReadUInt(int n) {
    DCPP_ASSIGN_OR_RETURN(const uint8_t* p, Read(n));
    return LoadLE(p, n);
  }
  // A text operand up to (not including) the next '\n'.
  Result<std::string_view> ReadLine() {
    const uint8_t* begin = data_.data() + pos_;
    const void* nl = std::memchr(begin, '\n', data_.size() - pos_);
    if (nl == nullptr) return Truncated();
    size_t n = static_cast<size_t>(static_cast<const uint8_t*>(nl) - begin);
    pos_ += n + 1;
    return std::string_view(reinterpret_cast<const char*>(begin), n);
  }
  // A length-prefixed string/bytes payload; counts against max_string_bytes.
  Result<std::string_view> ReadPayload(uint64_t n) {
    DCPP_ASSIGN_OR_RETURN(const uint8_t* p, Read(n));
    DCPP_RETURN_IF_ERROR(ChargeString(n));
    return std::string_view(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
  // Counts `n` more bytes of memory the parse holds against the cap.
  Status ChargeMemory(size_t n) {
    if (n > memory_cap_ - memory_) {
      return ResourceExhaustedError(
          "pickle: decoding would take more than " + std::to_string(memory_cap_) +
          " bytes of memory (" + std::to_string(data_.size()) +
          " bytes of input; a hostile pickle builds large structures from few bytes) in " +
          OpLabel() + Where());
    }
    memory_ += n;
    return Status::Ok();
  }
  // Charges the growth of a vector from `old_capacity` to its capacity now.
  template <typename V>
  Status ChargeGrowth(const V& v, size_t old_capacity) {
    if (v.capacity() <= old_capacity) return Status::Ok();
    return ChargeMemory((v.capacity() - old_capacity) * sizeof(typename V::value_type));
  }
  // A string's heap bytes (none when it fits the inline buffer).
  static size_t StringHeapBytes(size_t n) {
    return n < sizeof(std::string) ? 0 : n + 1 + kHeapBlockOverhead;
  }
  // What malloc adds to each block (glibc: a 16-byte header and alignment).
  static constexpr size_t kHeapBlockOverhead = 16;

  Status ChargeString(uint64_t n) {
    if (n > options_.max_string_bytes - string_bytes_) {
      return ResourceExhaustedError("pickle: strings exceed the cap of " +
                                    std::to_string(options_.max_string_bytes) + " bytes in " +
                                    OpLabel() + Where());
    }
    string_bytes_ += static_cast<size_t>(n);
    return Status::Ok();
  }

  // Nodes and the stacks.
  Result<NodeId> NewNode(Kind kind) {
    // Ids are 32-bit with kNoNode reserved, whatever the cap says.
    if (graph_.nodes.size() >= std::min<size_t>(options_.max_nodes, kNoNode)) {
      return ResourceExhaustedError("pickle: more than " + std::to_string(options_.max_nodes) +
                                    " objects in " + OpLabel() + Where());
    }
    // A new block is charged before it is allocated.
    NodeArena& nodes = graph_.nodes;
    if (nodes.size() == nodes.capacity())
      DCPP_RETURN_IF_ERROR(
          ChargeMemory(nodes.next_block_nodes() * sizeof(Node) + sizeof(std::unique_ptr<Node[]>)));
    nodes.emplace_back().kind = kind;
    return static_cast<NodeId>(nodes.size() - 1);
  }
  Node& node(NodeId id) { return graph_.nodes[id]; }
  size_t Fence() const { return marks_.empty() ? 0 : marks_.back(); }
  Status Push(NodeId id) {
    if (stack_.size() >= options_.max_stack_depth) {
      return ResourceExhaustedError("pickle: stack deeper than " +
                                    std::to_string(options_.max_stack_depth) + " in " + OpLabel() +
                                    Where());
    }
    const size_t old_capacity = stack_.capacity();
    stack_.push_back(id);
    return ChargeGrowth(stack_, old_capacity);
  }
  Status PushNew(Kind kind, NodeId* id = nullptr) {
    DCPP_ASSIGN_OR_RETURN(NodeId n, NewNode(kind));
    if (id != nullptr) *id = n;
    return Push(n);
  }
  // Python refuses to pop below the innermost MARK ("stack underflow").
  Result<NodeId> Pop() {
    if (stack_.size() <= Fence()) return Corrupt("stack underflow");
    NodeId id = stack_.back();
    stack_.pop_back();
    return id;
  }
  Result<NodeId> Top() const {
    if (stack_.size() <= Fence()) return Corrupt("stack underflow");
    return stack_.back();
  }
  // Removes the innermost MARK and everything above it; returns those items.
  Result<std::vector<NodeId>> PopMark() {
    if (marks_.empty()) return Corrupt("no MARK");
    size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<NodeId> items(stack_.begin() + static_cast<ptrdiff_t>(mark), stack_.end());
    stack_.resize(mark);
    return items;
  }

  Status PushInt(int64_t v) {
    NodeId id;
    DCPP_RETURN_IF_ERROR(PushNew(Kind::kInt, &id));
    node(id).i = v;
    return Status::Ok();
  }
  // Two's complement bytes: kInt when the value fits, else kBigInt.
  Status PushLong(std::string_view bytes) {
    if (std::optional<int64_t> v = TwosComplementToInt64(bytes)) return PushInt(*v);
    NodeId id;
    DCPP_RETURN_IF_ERROR(PushNew(Kind::kBigInt, &id));
    DCPP_RETURN_IF_ERROR(ChargeMemory(StringHeapBytes(bytes.size())));
    node(id).s.assign(bytes);
    return Status::Ok();
  }
  Status PushString(Kind kind, std::string_view s) {
    NodeId id;
    DCPP_RETURN_IF_ERROR(PushNew(kind, &id));
    DCPP_RETURN_IF_ERROR(ChargeMemory(StringHeapBytes(s.size())));
    node(id).s.assign(s);
    return Status::Ok();
  }
  Status PushContainer(Kind kind, std::vector<NodeId> items) {
    NodeId id;
    DCPP_RETURN_IF_ERROR(PushNew(kind, &id));
    if (items.capacity() > 0)
      DCPP_RETURN_IF_ERROR(ChargeMemory(items.capacity() * sizeof(NodeId) + kHeapBlockOverhead));
    node(id).items = std::move(items);
    return Status::Ok();
  }
  Status PushTupleN(int n) {
    std::vector<NodeId> items(static_cast<size_t>(n));
    for (int k = n - 1; k >= 0; --k) {
      DCPP_ASSIGN_OR_RETURN(items[static_cast<size_t>(k)], Pop());
    }
    return PushContainer(Kind::kTuple, std::move(items));
  }

  Status DoGlobal(std::string module, std::string name);
  Status DoSetItems(NodeId target, const NodeId* kv, size_t n);
  Status DoAppends(NodeId target, const NodeId* items, size_t n);
  Status DoPut(uint64_t index);
  Status DoGet(uint64_t index);
  Status DoPersistentId(NodeId pid);
  Status DoTextInt(std::string_view line, bool is_long);
  Status DoTextFloat(std::string_view line);
  Status DoRawUnicodeEscape(std::string_view line);

  std::span<const uint8_t> data_;
  const ParseOptions& options_;
  size_t pos_ = 0;
  size_t op_offset_ = 0;
  uint8_t op_ = 0;
  int proto_ = 0;
  size_t string_bytes_ = 0;
  // Bytes of memory held for the result and the VM's stacks and memo,
  // against ParseOptions' memory cap (MemoryCap).
  size_t memory_cap_ = 0;
  size_t memory_ = 0;
  std::vector<NodeId> stack_;
  std::vector<size_t> marks_;
  Memo memo_;
  Graph graph_;
};

Result<Graph> Parser::Run() {
  bool stopped = false;
  while (!stopped) {
    if (pos_ >= data_.size()) {
      return DataLossError("pickle: truncated: input ends at offset " +
                           std::to_string(data_.size()) + " without STOP");
    }
    op_offset_ = pos_;
    op_ = data_[pos_++];
    DCPP_RETURN_IF_ERROR(Step(&stopped));
  }
  graph_.memory_bytes = memory_;
  return std::move(graph_);
}

Status Parser::DoGlobal(std::string module, std::string name) {
  if (proto_ < 3) MapPython2Global(&module, &name);
  if (!options_.allow_global || !options_.allow_global(module, name)) {
    return InvalidArgumentError("pickle: global '" + module + "." + name + "' is not allowed");
  }
  DCPP_RETURN_IF_ERROR(ChargeString(module.size() + name.size()));
  NodeId id;
  DCPP_RETURN_IF_ERROR(PushNew(Kind::kGlobal, &id));
  DCPP_RETURN_IF_ERROR(ChargeMemory(StringHeapBytes(module.size()) + StringHeapBytes(name.size())));
  node(id).s = std::move(module);
  node(id).s2 = std::move(name);
  return Status::Ok();
}

// With nothing to add Python does not look at the target, so neither do we.
Status Parser::DoSetItems(NodeId target, const NodeId* kv, size_t n) {
  if (n % 2 != 0) return Corrupt("odd number of items");
  if (n == 0) return Status::Ok();
  Node& t = node(target);
  std::vector<NodeId>* dest = nullptr;
  if (t.kind == Kind::kDict) {
    dest = &t.items;
  } else if (t.kind == Kind::kReduce || t.kind == Kind::kNewObj) {
    dest = &t.dict_items;
  } else {
    return Corrupt("setting items on a " + std::string(KindName(t.kind)));
  }
  const size_t old_capacity = dest->capacity();
  dest->insert(dest->end(), kv, kv + n);
  return ChargeGrowth(*dest, old_capacity);
}

Status Parser::DoAppends(NodeId target, const NodeId* items, size_t n) {
  if (n == 0) return Status::Ok();
  Node& t = node(target);
  std::vector<NodeId>* dest = nullptr;
  if (t.kind == Kind::kList) {
    dest = &t.items;
  } else if (t.kind == Kind::kReduce || t.kind == Kind::kNewObj) {
    dest = &t.list_items;
  } else {
    return Corrupt("appending to a " + std::string(KindName(t.kind)));
  }
  const size_t old_capacity = dest->capacity();
  dest->insert(dest->end(), items, items + n);
  return ChargeGrowth(*dest, old_capacity);
}

Status Parser::DoPut(uint64_t index) {
  DCPP_ASSIGN_OR_RETURN(NodeId top, Top());
  const size_t before = memo_.bytes();
  if (!memo_.Put(index, top)) {
    return ResourceExhaustedError("pickle: more than " + std::to_string(options_.max_memo) +
                                  " memo entries in " + OpLabel() + Where());
  }
  const size_t after = memo_.bytes();
  return after > before ? ChargeMemory(after - before) : Status::Ok();
}

Status Parser::DoGet(uint64_t index) {
  NodeId id = memo_.Get(index);
  if (id == kNoNode) return Corrupt("memo key " + std::to_string(index) + " not found");
  return Push(id);
}

Status Parser::DoPersistentId(NodeId pid) {
  NodeId id;
  DCPP_RETURN_IF_ERROR(PushNew(Kind::kPersistentId, &id));
  node(id).items = {pid};
  return ChargeMemory(sizeof(NodeId) + kHeapBlockOverhead);
}

Status Parser::DoTextInt(std::string_view line, bool is_long) {
  // Python accepts surrounding whitespace and, for LONG, a trailing 'L'.
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.remove_suffix(1);
  while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  if (is_long && !line.empty() && line.back() == 'L') line.remove_suffix(1);
  if (!is_long && (line == "00" || line == "01")) {
    // Protocol 0/1 spelling of False/True.
    NodeId id;
    DCPP_RETURN_IF_ERROR(PushNew(Kind::kBool, &id));
    node(id).b = line == "01";
    return Status::Ok();
  }
  std::optional<std::string> bytes = DecimalToTwosComplement(line);
  if (!bytes) return Corrupt("bad integer literal");
  return PushLong(*bytes);
}

Status Parser::DoTextFloat(std::string_view line) {
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r')) line.remove_suffix(1);
  while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  if (!line.empty() && line.front() == '+') line.remove_prefix(1);
  double v = 0;
  auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), v);
  // from_chars reports out-of-range for values Python rounds to inf/0; those
  // are not written by Python's repr, so they are treated as corrupt.
  if (line.empty() || ec != std::errc() || end != line.data() + line.size()) {
    return Corrupt("bad float literal");
  }
  NodeId id;
  DCPP_RETURN_IF_ERROR(PushNew(Kind::kFloat, &id));
  node(id).f = v;
  return Status::Ok();
}

// Decodes Python's 'raw-unicode-escape' (bytes are Latin-1 code points; an
// odd run of backslashes before 'u'/'U' starts a \uXXXX / \UXXXXXXXX escape)
// into UTF-8.
Status Parser::DoRawUnicodeEscape(std::string_view line) {
  std::string out;
  out.reserve(line.size());
  size_t k = 0;
  while (k < line.size()) {
    auto c = static_cast<uint8_t>(line[k]);
    if (c != '\\') {
      AppendUtf8(c, &out);
      ++k;
      continue;
    }
    size_t run = 0;
    while (k < line.size() && line[k] == '\\') {
      out.push_back('\\');
      ++run;
      ++k;
    }
    if (run % 2 == 0 || k >= line.size() || (line[k] != 'u' && line[k] != 'U')) continue;
    out.pop_back();  // the backslash that starts the escape
    int digits = line[k] == 'u' ? 4 : 8;
    ++k;
    if (line.size() - k < static_cast<size_t>(digits)) return Corrupt("truncated \\u escape");
    uint32_t cp = 0;
    for (int d = 0; d < digits; ++d, ++k) {
      char h = line[k];
      uint32_t v;
      if (h >= '0' && h <= '9') {
        v = static_cast<uint32_t>(h - '0');
      } else if (h >= 'a' && h <= 'f') {
        v = static_cast<uint32_t>(h - 'a' + 10);
      } else if (h >= 'A' && h <= 'F') {
        v = static_cast<uint32_t>(h - 'A' + 10);
      } else {
        return Corrupt("bad \\u escape");
      }
      cp = (cp << 4) | v;
    }
    if (cp > 0x10FFFF) return Corrupt("\\U escape beyond U+10FFFF");
    AppendUtf8(cp, &out);
  }
  DCPP_RETURN_IF_ERROR(ChargeString(out.size()));
  return PushString(Kind::kString, out);
}

Status Parser::Step(bool* stopped) {
  switch (op_) {
    case kOpProto: {
      DCPP_ASSIGN_OR_RETURN(uint64_t v, ReadUInt(1));
      if (v > 5) {
        return UnimplementedError("pickle: unsupported protocol " + std::to_string(v) + Where());
      }
      proto_ = static_cast<int>(v);
      return Status::Ok();
    }
    case kOpFrame: {
      // Frames only group opcodes for buffered reading; like CPython's C
      // unpickler, just check that the announced bytes exist.
      DCPP_ASSIGN_OR_RETURN(uint64_t n, ReadUInt(8));
      if (n > data_.size() - pos_) return Truncated();
      return Status::Ok();
    }
    case kOpStop: {
      DCPP_ASSIGN_OR_RETURN(graph_.root, Pop());
      *stopped = true;
      return Status::Ok();
    }
    case kOpMark:
      if (marks_.size() >= options_.max_stack_depth) {
        return ResourceExhaustedError("pickle: more than " +
                                      std::to_string(options_.max_stack_depth) + " open MARKs" +
                                      Where());
      }
      {
        const size_t old_capacity = marks_.capacity();
        marks_.push_back(stack_.size());
        return ChargeGrowth(marks_, old_capacity);
      }
    case kOpPop:
      // POP removes a MARK when one sits on top of the stack (as Python does).
      if (!marks_.empty() && marks_.back() == stack_.size()) {
        marks_.pop_back();
        return Status::Ok();
      }
      return Pop().status();
    case kOpPopMark:
      return PopMark().status();
    case kOpDup: {
      DCPP_ASSIGN_OR_RETURN(NodeId top, Top());
      return Push(top);
    }

    case kOpEmptyDict:
      return PushNew(Kind::kDict);
    case kOpEmptyList:
      return PushNew(Kind::kList);
    case kOpEmptyTuple:
      return PushNew(Kind::kTuple);
    case kOpEmptySet:
      return PushNew(Kind::kSet);
    case kOpTuple: {
      DCPP_ASSIGN_OR_RETURN(std::vector<NodeId> items, PopMark());
      return PushContainer(Kind::kTuple, std::move(items));
    }
    case kOpTuple1:
      return PushTupleN(1);
    case kOpTuple2:
      return PushTupleN(2);
    case kOpTuple3:
      return PushTupleN(3);
    case kOpList: {
      DCPP_ASSIGN_OR_RETURN(std::vector<NodeId> items, PopMark());
      return PushContainer(Kind::kList, std::move(items));
    }
    case kOpDict: {
      DCPP_ASSIGN_OR_RETURN(std::vector<NodeId> items, PopMark());
      if (items.size() % 2 != 0) return Corrupt("odd number of items");
      return PushContainer(Kind::kDict, std::move(items));
    }
    case kOpFrozenSet: {
      DCPP_ASSIGN_OR_RETURN(std::vector<NodeId> items, PopMark());
      return PushContainer(Kind::kFrozenSet, std::move(items));
    }
    case kOpSetItem: {
      DCPP_ASSIGN_OR_RETURN(NodeId value, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId key, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId target, Top());
      const NodeId kv[2] = {key, value};
      return DoSetItems(target, kv, 2);
    }
    case kOpSetItems: {
      DCPP_ASSIGN_OR_RETURN(std::vector<NodeId> items, PopMark());
      DCPP_ASSIGN_OR_RETURN(NodeId target, Top());
      return DoSetItems(target, items.data(), items.size());
    }
    case kOpAppend: {
      DCPP_ASSIGN_OR_RETURN(NodeId value, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId target, Top());
      return DoAppends(target, &value, 1);
    }
    case kOpAppends: {
      DCPP_ASSIGN_OR_RETURN(std::vector<NodeId> items, PopMark());
      DCPP_ASSIGN_OR_RETURN(NodeId target, Top());
      return DoAppends(target, items.data(), items.size());
    }
    case kOpAddItems: {
      DCPP_ASSIGN_OR_RETURN(std::vector<NodeId> items, PopMark());
      DCPP_ASSIGN_OR_RETURN(NodeId target, Top());
      Node& t = node(target);
      if (items.empty()) return Status::Ok();
      if (t.kind != Kind::kSet) {
        return Corrupt("adding items to a " + std::string(KindName(t.kind)));
      }
      const size_t old_capacity = t.items.capacity();
      t.items.insert(t.items.end(), items.begin(), items.end());
      return ChargeGrowth(t.items, old_capacity);
    }

    case kOpBinInt: {
      DCPP_ASSIGN_OR_RETURN(uint64_t v, ReadUInt(4));
      return PushInt(static_cast<int32_t>(static_cast<uint32_t>(v)));
    }
    case kOpBinInt1: {
      DCPP_ASSIGN_OR_RETURN(uint64_t v, ReadUInt(1));
      return PushInt(static_cast<int64_t>(v));
    }
    case kOpBinInt2: {
      DCPP_ASSIGN_OR_RETURN(uint64_t v, ReadUInt(2));
      return PushInt(static_cast<int64_t>(v));
    }
    case kOpInt: {
      DCPP_ASSIGN_OR_RETURN(std::string_view line, ReadLine());
      return DoTextInt(line, /*is_long=*/false);
    }
    case kOpLong: {
      DCPP_ASSIGN_OR_RETURN(std::string_view line, ReadLine());
      return DoTextInt(line, /*is_long=*/true);
    }
    case kOpLong1: {
      DCPP_ASSIGN_OR_RETURN(uint64_t n, ReadUInt(1));
      DCPP_ASSIGN_OR_RETURN(std::string_view bytes, ReadPayload(n));
      return PushLong(bytes);
    }
    case kOpLong4: {
      DCPP_ASSIGN_OR_RETURN(uint64_t n, ReadUInt(4));
      if (n > 0x7FFFFFFF) return Corrupt("negative byte count");
      DCPP_ASSIGN_OR_RETURN(std::string_view bytes, ReadPayload(n));
      return PushLong(bytes);
    }
    case kOpNone:
      return PushNew(Kind::kNone);
    case kOpNewTrue:
    case kOpNewFalse: {
      NodeId id;
      DCPP_RETURN_IF_ERROR(PushNew(Kind::kBool, &id));
      node(id).b = op_ == kOpNewTrue;
      return Status::Ok();
    }
    case kOpBinFloat: {
      DCPP_ASSIGN_OR_RETURN(const uint8_t* p, Read(8));
      uint64_t bits = 0;
      for (int k = 0; k < 8; ++k) bits = (bits << 8) | p[k];  // big-endian
      double v;
      std::memcpy(&v, &bits, sizeof v);
      NodeId id;
      DCPP_RETURN_IF_ERROR(PushNew(Kind::kFloat, &id));
      node(id).f = v;
      return Status::Ok();
    }
    case kOpFloat: {
      DCPP_ASSIGN_OR_RETURN(std::string_view line, ReadLine());
      return DoTextFloat(line);
    }

    case kOpShortBinUnicode:
    case kOpBinUnicode:
    case kOpBinUnicode8:
    case kOpShortBinString:
    case kOpShortBinBytes:
    case kOpBinBytes:
    case kOpBinBytes8:
    case kOpByteArray8: {
      int width = 1;
      Kind kind = Kind::kBytes;
      switch (op_) {
        case kOpShortBinUnicode:
          kind = Kind::kString;
          break;
        case kOpBinUnicode:
          kind = Kind::kString;
          width = 4;
          break;
        case kOpBinUnicode8:
          kind = Kind::kString;
          width = 8;
          break;
        case kOpBinBytes:
          width = 4;
          break;
        case kOpBinBytes8:
        case kOpByteArray8:
          width = 8;
          break;
        default:
          break;
      }
      DCPP_ASSIGN_OR_RETURN(uint64_t n, ReadUInt(width));
      DCPP_ASSIGN_OR_RETURN(std::string_view s, ReadPayload(n));
      return PushString(kind, s);
    }
    case kOpBinString: {
      DCPP_ASSIGN_OR_RETURN(uint64_t n, ReadUInt(4));
      if (n > 0x7FFFFFFF) return Corrupt("negative byte count");
      DCPP_ASSIGN_OR_RETURN(std::string_view s, ReadPayload(n));
      return PushString(Kind::kBytes, s);
    }
    case kOpUnicode: {
      DCPP_ASSIGN_OR_RETURN(std::string_view line, ReadLine());
      return DoRawUnicodeEscape(line);
    }

    case kOpGlobal: {
      DCPP_ASSIGN_OR_RETURN(std::string_view module, ReadLine());
      DCPP_ASSIGN_OR_RETURN(std::string_view name, ReadLine());
      return DoGlobal(std::string(module), std::string(name));
    }
    case kOpStackGlobal: {
      DCPP_ASSIGN_OR_RETURN(NodeId name, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId module, Pop());
      if (node(name).kind != Kind::kString || node(module).kind != Kind::kString) {
        return Corrupt("module or name is not a str");
      }
      return DoGlobal(node(module).s, node(name).s);
    }
    case kOpReduce: {
      DCPP_ASSIGN_OR_RETURN(NodeId args, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId callable, Pop());
      return PushContainer(Kind::kReduce, {callable, args});
    }
    case kOpNewObj: {
      DCPP_ASSIGN_OR_RETURN(NodeId args, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId cls, Pop());
      if (node(args).kind != Kind::kTuple) return Corrupt("arguments are not a tuple");
      return PushContainer(Kind::kNewObj, {cls, args});
    }
    case kOpNewObjEx: {
      DCPP_ASSIGN_OR_RETURN(NodeId kwargs, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId args, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId cls, Pop());
      if (node(args).kind != Kind::kTuple) return Corrupt("arguments are not a tuple");
      if (node(kwargs).kind != Kind::kDict) return Corrupt("keyword arguments are not a dict");
      return PushContainer(Kind::kNewObj, {cls, args, kwargs});
    }
    case kOpBuild: {
      DCPP_ASSIGN_OR_RETURN(NodeId state, Pop());
      DCPP_ASSIGN_OR_RETURN(NodeId target, Top());
      Node& t = node(target);
      if (t.kind != Kind::kReduce && t.kind != Kind::kNewObj) {
        return Corrupt("state for a " + std::string(KindName(t.kind)));
      }
      // Python's pickler never builds an object twice; a second state would
      // make the node's meaning ambiguous.
      if (t.state != kNoNode) return Corrupt("second state for one object");
      t.state = state;
      return Status::Ok();
    }

    case kOpBinPut: {
      DCPP_ASSIGN_OR_RETURN(uint64_t index, ReadUInt(1));
      return DoPut(index);
    }
    case kOpLongBinPut: {
      DCPP_ASSIGN_OR_RETURN(uint64_t index, ReadUInt(4));
      return DoPut(index);
    }
    case kOpPut: {
      DCPP_ASSIGN_OR_RETURN(std::string_view line, ReadLine());
      uint64_t index = 0;
      auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), index);
      if (line.empty() || ec != std::errc() || end != line.data() + line.size()) {
        return Corrupt("bad memo index");
      }
      return DoPut(index);
    }
    case kOpMemoize:
      return DoPut(memo_.size());
    case kOpBinGet: {
      DCPP_ASSIGN_OR_RETURN(uint64_t index, ReadUInt(1));
      return DoGet(index);
    }
    case kOpLongBinGet: {
      DCPP_ASSIGN_OR_RETURN(uint64_t index, ReadUInt(4));
      return DoGet(index);
    }
    case kOpGet: {
      DCPP_ASSIGN_OR_RETURN(std::string_view line, ReadLine());
      uint64_t index = 0;
      auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), index);
      if (line.empty() || ec != std::errc() || end != line.data() + line.size()) {
        return Corrupt("bad memo index");
      }
      return DoGet(index);
    }

    case kOpBinPersId:
    case kOpPersId: {
      if (!options_.allow_persistent_id) {
        return InvalidArgumentError("pickle: persistent id (" + OpLabel() + ") is not allowed" +
                                    Where());
      }
      if (op_ == kOpBinPersId) {
        DCPP_ASSIGN_OR_RETURN(NodeId pid, Pop());
        return DoPersistentId(pid);
      }
      DCPP_ASSIGN_OR_RETURN(std::string_view line, ReadLine());
      DCPP_RETURN_IF_ERROR(ChargeString(line.size()));
      DCPP_ASSIGN_OR_RETURN(NodeId pid, NewNode(Kind::kString));
      node(pid).s.assign(line);
      return DoPersistentId(pid);
    }

    default:
      break;
  }
  std::string_view name = OpName(op_);
  if (name.empty()) {
    return UnimplementedError("pickle: unknown opcode " + HexByte(op_) + Where());
  }
  return UnimplementedError("pickle: unsupported opcode " + HexByte(op_) + " (" +
                            std::string(name) + ")" + Where());
}

}  // namespace

std::string_view KindName(Kind kind) {
  switch (kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return "bool";
    case Kind::kInt:
      return "int";
    case Kind::kBigInt:
      return "big int";
    case Kind::kFloat:
      return "float";
    case Kind::kString:
      return "str";
    case Kind::kBytes:
      return "bytes";
    case Kind::kTuple:
      return "tuple";
    case Kind::kList:
      return "list";
    case Kind::kDict:
      return "dict";
    case Kind::kSet:
      return "set";
    case Kind::kFrozenSet:
      return "frozenset";
    case Kind::kGlobal:
      return "global";
    case Kind::kReduce:
      return "reduce";
    case Kind::kNewObj:
      return "object";
    case Kind::kPersistentId:
      return "persistent id";
  }
  return "unknown";
}

Result<Graph> Parse(std::span<const uint8_t> data, const ParseOptions& options) {
  return Parser(data, options).Run();
}

// ---------------------------------------------------------------- Writer

namespace {

void AppendLE(std::string* out, uint64_t v, int n) {
  for (int k = 0; k < n; ++k) out->push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
}

// Python's pickle.encode_long: minimal little-endian two's complement.
std::string EncodeLong(uint64_t magnitude_or_bits, bool is_signed) {
  std::string bytes;
  AppendLE(&bytes, magnitude_or_bits, 8);
  if (!is_signed) bytes.push_back(0);  // an unsigned value needs a clear sign bit
  while (bytes.size() > 1) {
    auto last = static_cast<uint8_t>(bytes[bytes.size() - 1]);
    auto prev = static_cast<uint8_t>(bytes[bytes.size() - 2]);
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) {
      bytes.pop_back();
    } else {
      break;
    }
  }
  if (bytes.size() == 1 && bytes[0] == 0) bytes.clear();
  return bytes;
}

}  // namespace

Writer::Writer() { out_ = "\x80\x02"; }

void Writer::None() { out_.push_back(kOpNone); }

void Writer::Bool(bool v) { out_.push_back(static_cast<char>(v ? kOpNewTrue : kOpNewFalse)); }

void Writer::Int(int64_t v) {
  if (v >= 0 && v <= 0xFF) {
    out_.push_back(kOpBinInt1);
    AppendLE(&out_, static_cast<uint64_t>(v), 1);
  } else if (v >= 0 && v <= 0xFFFF) {
    out_.push_back(kOpBinInt2);
    AppendLE(&out_, static_cast<uint64_t>(v), 2);
  } else if (v >= -0x80000000LL && v <= 0x7FFFFFFF) {
    out_.push_back(kOpBinInt);
    AppendLE(&out_, static_cast<uint64_t>(v), 4);
  } else {
    std::string bytes = EncodeLong(static_cast<uint64_t>(v), /*is_signed=*/true);
    out_.push_back(static_cast<char>(kOpLong1));
    out_.push_back(static_cast<char>(bytes.size()));
    out_ += bytes;
  }
}

void Writer::UInt(uint64_t v) {
  if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    Int(static_cast<int64_t>(v));
    return;
  }
  std::string bytes = EncodeLong(v, /*is_signed=*/false);
  out_.push_back(static_cast<char>(kOpLong1));
  out_.push_back(static_cast<char>(bytes.size()));
  out_ += bytes;
}

void Writer::Float(double v) {
  uint64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  out_.push_back(kOpBinFloat);
  for (int k = 7; k >= 0; --k) out_.push_back(static_cast<char>((bits >> (8 * k)) & 0xFF));
}

void Writer::String(std::string_view utf8) {
  out_.push_back(kOpBinUnicode);
  AppendLE(&out_, utf8.size(), 4);
  out_ += utf8;
}

void Writer::Bytes(std::string_view bytes) {
  if (bytes.empty()) {
    Global("__builtin__", "bytes");
    EmptyTuple();
    Reduce();
    return;
  }
  Global("_codecs", "encode");
  std::string text;
  text.reserve(bytes.size());
  for (char c : bytes) AppendUtf8(static_cast<uint8_t>(c), &text);
  String(text);
  Memoize();
  if (latin1_memo_) {
    Get(*latin1_memo_);
  } else {
    String("latin1");
    latin1_memo_ = Memoize();
  }
  Tuple(2);
  Memoize();
  Reduce();
}

void Writer::Global(std::string_view module, std::string_view name) {
  std::string key;
  key.reserve(module.size() + name.size() + 1);
  key.append(module).push_back('\n');
  key.append(name);
  auto it = global_memo_.find(key);
  if (it != global_memo_.end()) {
    Get(it->second);
    return;
  }
  out_.push_back(kOpGlobal);
  out_ += key;
  out_.push_back('\n');
  global_memo_.emplace(std::move(key), Memoize());
}

void Writer::Mark() { out_.push_back(kOpMark); }
void Writer::EmptyTuple() { out_.push_back(kOpEmptyTuple); }

void Writer::Tuple(size_t n) {
  switch (n) {
    case 0:
      out_.push_back(kOpEmptyTuple);
      break;
    case 1:
      out_.push_back(static_cast<char>(kOpTuple1));
      break;
    case 2:
      out_.push_back(static_cast<char>(kOpTuple2));
      break;
    case 3:
      out_.push_back(static_cast<char>(kOpTuple3));
      break;
    default:
      out_.push_back(kOpTuple);
      break;
  }
}

void Writer::EmptyList() { out_.push_back(kOpEmptyList); }
void Writer::EmptyDict() { out_.push_back(kOpEmptyDict); }
void Writer::Append() { out_.push_back(kOpAppend); }
void Writer::Appends() { out_.push_back(kOpAppends); }
void Writer::SetItem() { out_.push_back(kOpSetItem); }
void Writer::SetItems() { out_.push_back(kOpSetItems); }
void Writer::Reduce() { out_.push_back(kOpReduce); }
void Writer::NewObj() { out_.push_back(static_cast<char>(kOpNewObj)); }
void Writer::Build() { out_.push_back(kOpBuild); }
void Writer::BinPersId() { out_.push_back(kOpBinPersId); }

uint32_t Writer::Memoize() {
  uint32_t index = next_memo_++;
  if (index < 256) {
    out_.push_back(kOpBinPut);
    out_.push_back(static_cast<char>(index));
  } else {
    out_.push_back(kOpLongBinPut);
    AppendLE(&out_, index, 4);
  }
  return index;
}

void Writer::Get(uint32_t memo_index) {
  if (memo_index < 256) {
    out_.push_back(kOpBinGet);
    out_.push_back(static_cast<char>(memo_index));
  } else {
    out_.push_back(kOpLongBinGet);
    AppendLE(&out_, memo_index, 4);
  }
}

std::string Writer::Finish() {
  out_.push_back(kOpStop);
  return std::move(out_);
}

}  // namespace dcpp::format::pickle
