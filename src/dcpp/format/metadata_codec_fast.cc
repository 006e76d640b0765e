// DecodeMetadataFast: the `.metadata` pickles DCP's writers produce, read in
// one streaming pass straight into the compact form (format/compact_metadata.h;
// DecodeMetadataFast expands that into a dcpp::Metadata). See
// metadata_codec_internal.h for the contract.
//
// Why. The general path (metadata_codec_decode.cc) parses any pickle into a
// graph of nodes and then walks it. A 256-rank x 2,000-tensor save has
// 512,000 chunks and ~15 pickle objects per chunk, so that graph took 44x
// the file in memory and as long as Python's own unpickler. This reader keeps
// no graph: each DCP object becomes its dcpp struct when its last opcode
// is read.
//
// What it accepts. Pickles of protocol <= 5 built from these opcodes only:
//   PROTO FRAME STOP MARK EMPTY_DICT EMPTY_LIST EMPTY_TUPLE TUPLE TUPLE1-3
//   SETITEM(S) APPEND(S) BININT BININT1 BININT2 LONG1 NONE NEWTRUE NEWFALSE
//   SHORT_BINUNICODE BINUNICODE BINUNICODE8 GLOBAL STACK_GLOBAL REDUCE NEWOBJ
//   BUILD BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET
// (what Python's pickler writes for DCP's Metadata at protocols 2-5, and
// what EncodeMetadata writes), with memo indices assigned in order 0, 1, 2,
// ... as every pickler does, and of these objects only:
//   Metadata, TensorStorageMetadata, BytesStorageMetadata,
//   ChunkStorageMetadata, MetadataIndex, StorageMeta, _StorageInfo: NEWOBJ
//     of the class with no arguments, then BUILD with a dict of fields (none
//     for BytesStorageMetadata);
//   TensorProperties (either module): BUILD with the 5-tuple (dtype global,
//     _get_layout('torch.strided'), bool, memory format enum(0..2), bool);
//   torch.Size(tuple of ints), pathlib paths (StorageMeta.checkpoint_id
//     only), str, int, bool, None, dicts, lists, small tuples.
// A memo reference (GET) may name a str, int, bool, None, global, layout,
// memory format, torch.Size or a tuple of those; the first pass over the
// opcodes finds which memo entries are ever referenced, so only those are
// kept (a bit per entry marks them).
//
// storage_data is joined onto the chunks as its records arrive. That needs
// state_dict_metadata complete first, as every writer orders Metadata's
// fields; a record finds its chunk by MetadataIndex.index (the position
// hint DCP writes), else by binary search over the tensor's chunk offsets.
//
// Anything else - another opcode or global, a reference to an object or a
// container, fields in another order, duplicate FQNs or chunk offsets, a
// value the general path would reject - makes it decline (return nullopt),
// and DecodeMetadata runs the general path, which decodes the file or
// reports the error. So every error a caller sees comes from the general
// path, and the fast path only has to be right about what it accepts. It
// counts what it decodes against the general path's expansion budget, so it
// accepts nothing the general walk would refuse as too large. Every read
// is bounds-checked, every allocation follows input bytes already read, and
// recursion depth is constant.
#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dcpp/format/metadata_codec_internal.h"

namespace dcpp::format::metadata_internal {
namespace {

// The opcodes read here (names as in Python's pickletools).
enum Op : uint8_t {
  kMark = '(',
  kStop = '.',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kReduce = 'R',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kEmptyDict = '}',
  kAppends = 'e',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kEmptyList = ']',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kEmptyTuple = ')',
  kSetItems = 'u',
  kProto = 0x80,
  kNewObj = 0x81,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
};

// The globals recognized.
enum class Cls : uint8_t {
  kMetadata,
  kTensorMeta,
  kBytesMeta,
  kChunk,
  kProperties,
  kMemFormat,
  kIndex,
  kStorageMeta,
  kStorageInfo,
  kSize,
  kGetLayout,
  kDType,  // Value::a = the DType
  kPath,   // Value::a = 1 for the Windows flavours
};

// What a stack slot holds. Values that own something (a pool slot or a
// region of the tuple arena) are either moved into what consumes them or
// released (Release) when consumed.
enum class Tag : uint8_t {
  kNone,
  kBool,     // i
  kInt,      // i
  kBigUInt,  // u: an int in [2^63, 2^64) (LONG1 of 9 bytes)
  kStr,      // p, a = size (a view of the input)
  kPathStr,  // p, a = size: a pathlib path joined (owned by paths_)
  kGlobal,   // cls, a
  kTuple,    // a = first item in arena_, i = item count
  kSize,     // a = shapes_ slot
  kLayout,   // torch.strided
  kMemFormat,  // a = 0..2
  kObject,     // cls: NEWOBJ'd, not yet built
  kProperties,  // a = dtype | requires_grad << 8 | pin_memory << 9 | memory format << 10
  kDict,        // a = dicts_ slot
  kList,        // a = lists_ slot
  kChunk,       // a = chunks_ slot
  kIndex,       // a = indices_ slot
  kInfo,        // a = infos_ slot
  kEntry,       // a = pending_ slot (a TensorStorageMetadata)
  kBytesEntry,  // a BytesStorageMetadata
  kStorageMeta,  // a = storage_metas_ slot
  kMetadata,     // the root, decoded into md_
};

struct Value {
  Tag tag = Tag::kNone;
  Cls cls = Cls::kMetadata;
  uint32_t a = 0;
  union {
    int64_t i = 0;
    uint64_t u;
    const char* p;
  };

  std::string_view str() const { return {p, a}; }
};
static_assert(sizeof(Value) == 16);

// The VM's value stack: a vector whose push stays inline in the opcode loop
// (std::vector's push_back, with its growth path, did not).
class ValueStack {
 public:
  size_t size() const { return size_; }
  Value& back() { return data_[size_ - 1]; }
  Value& operator[](size_t k) { return data_[k]; }
  Value* begin() { return data_.get(); }
  Value* end() { return data_.get() + size_; }
  [[gnu::always_inline]] void push_back(const Value& v) {
    if (size_ == capacity_) Grow();
    data_[size_++] = v;
  }
  void pop_back() { --size_; }
  void resize(size_t n) { size_ = n; }  // shrinks only

 private:
  [[gnu::noinline]] void Grow() {
    capacity_ = std::max<size_t>(4096, capacity_ * 2);
    auto bigger = std::make_unique<Value[]>(capacity_);
    std::copy(data_.get(), data_.get() + size_, bigger.get());
    data_ = std::move(bigger);
  }

  std::unique_ptr<Value[]> data_;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

// A vector of reusable slots.
template <typename T>
class Pool {
 public:
  uint32_t Take() {
    if (!free_.empty()) {
      const uint32_t k = free_.back();
      free_.pop_back();
      return k;
    }
    items_.emplace_back();
    return static_cast<uint32_t>(items_.size() - 1);
  }
  void Give(uint32_t k) { free_.push_back(k); }
  T& operator[](uint32_t k) { return items_[k]; }

 private:
  std::vector<T> items_;
  std::vector<uint32_t> free_;
};

// What a dict is: the fields of the object it follows (its BUILD state), or
// a data dict whose role its first items decide.
enum class Role : uint8_t { kFields, kUnknown, kEntries, kStorage, kPlanner, kChunks, kValues };

struct Dict {
  Role role = Role::kUnknown;
  std::vector<std::pair<std::string_view, Value>> fields;  // kFields only

  // A field's value, the last one set (as dict.update leaves it).
  Value* Get(std::string_view key) {
    for (auto it = fields.rbegin(); it != fields.rend(); ++it) {
      if (it->first == key) return &it->second;
    }
    return nullptr;
  }
};

struct List {
  Role role = Role::kUnknown;  // kChunks or kValues once items arrive
  // kChunks: each chunk's offsets then its sizes, `dims` of each (the
  // CompactEntry::coords layout), `count` chunks.
  std::vector<int64_t> coords;
  uint32_t count = 0;
  int32_t dims = -1;          // set by the first chunk
  std::vector<Value> values;  // strs and ints
};

// A MetadataIndex and a _StorageInfo, until their storage_data item joins them.
struct IndexRecord {
  std::string_view fqn;
  bool has_offsets = false;
  uint32_t offsets = 0;  // shapes_ slot
  int64_t hint = -1;     // MetadataIndex.index
  // The md_.entries index of `fqn` if it was known when the record was
  // built (entries are never removed, so it stays right).
  uint32_t entry = 0xFFFFFFFFu;
};
struct InfoRecord {
  std::string_view relative_path;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::vector<std::string_view> transforms;
};

struct PendingEntry {
  CompactEntry entry;
  std::vector<uint32_t> order;  // chunk positions by offsets, when not already sorted
};

// What the storage_data join needs per entry of md_.entries.
struct EntryAux {
  size_t first_flag = 0;  // in chunk_has_storage_
  bool sorted = true;     // chunks in strictly increasing offsets
  bool has_storage = false;  // bytes entries
  std::vector<uint32_t> order;
};

// A memo entry that is referenced (the only ones kept).
struct MemoValue {
  bool usable = false;  // false: set to something GET may not copy
  Value value;
  Shape dims;                // kSize
  std::vector<Value> items;  // kTuple
};

// A real dataclass has at most a handful of fields (the general path's limit).
constexpr size_t kMaxFields = 32;
// Stack and tuple arena bounds: real files stay far below (a batch is 1,000
// pairs); hostile ones decline rather than grow them.
constexpr size_t kMaxStack = size_t{1} << 22;
constexpr size_t kMaxMarks = size_t{1} << 16;
constexpr size_t kMaxArena = size_t{1} << 22;

uint64_t LoadLE(const uint8_t* p, int n) {
  uint64_t v = 0;
  for (int k = n - 1; k >= 0; --k) v = (v << 8) | p[k];
  return v;
}

// LONG1's little-endian two's complement bytes, as the general path reads
// them: an int64 when the value fits, a kBigUInt for [2^63, 2^64) in nine
// bytes, otherwise nothing.
bool LongValue(const uint8_t* p, size_t n, Value* out) {
  if (n == 0) {
    out->tag = Tag::kInt;
    out->i = 0;
    return true;
  }
  const bool negative = (p[n - 1] & 0x80) != 0;
  size_t used = n;
  if (n > 8) {
    const uint8_t fill = negative ? 0xFF : 0x00;
    bool fits = ((p[7] & 0x80) != 0) == negative;
    for (size_t k = 8; k < n; ++k) fits = fits && p[k] == fill;
    if (!fits) {
      if (n == 9 && p[8] == 0) {
        out->tag = Tag::kBigUInt;
        out->u = LoadLE(p, 8);
        return true;
      }
      return false;
    }
    used = 8;
  }
  uint64_t v = LoadLE(p, static_cast<int>(used));
  if (negative && used < 8) v |= ~uint64_t{0} << (8 * used);
  out->tag = Tag::kInt;
  out->i = static_cast<int64_t>(v);
  return true;
}

// Set bits of `w` (std::popcount is a library call without -mpopcnt).
inline uint32_t PopCount(uint64_t w) {
  w = w - ((w >> 1) & 0x5555555555555555ull);
  w = (w & 0x3333333333333333ull) + ((w >> 2) & 0x3333333333333333ull);
  w = (w + (w >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return static_cast<uint32_t>((w * 0x0101010101010101ull) >> 56);
}

bool IsLeaf(Tag t) {
  return t == Tag::kNone || t == Tag::kBool || t == Tag::kInt || t == Tag::kBigUInt ||
         t == Tag::kStr || t == Tag::kGlobal || t == Tag::kLayout || t == Tag::kMemFormat;
}

bool IsPathClassName(std::string_view name) {
  return name == "PosixPath" || name == "WindowsPath" || name == "PurePosixPath" ||
         name == "PureWindowsPath";
}

// The recognized globals; false for every other (module, name).
bool ResolveGlobal(std::string_view module, std::string_view name, Value* out) {
  out->tag = Tag::kGlobal;
  out->a = 0;
  if (module == kMetaModule) {
    if (name == "Metadata") {
      out->cls = Cls::kMetadata;
    } else if (name == "TensorStorageMetadata") {
      out->cls = Cls::kTensorMeta;
    } else if (name == "BytesStorageMetadata") {
      out->cls = Cls::kBytesMeta;
    } else if (name == "ChunkStorageMetadata") {
      out->cls = Cls::kChunk;
    } else if (name == "TensorProperties") {
      out->cls = Cls::kProperties;
    } else if (name == "_MEM_FORMAT_ENCODING") {
      out->cls = Cls::kMemFormat;
    } else if (name == "MetadataIndex") {
      out->cls = Cls::kIndex;
    } else if (name == "StorageMeta") {
      out->cls = Cls::kStorageMeta;
    } else {
      return false;
    }
    return true;
  }
  if (module == kFsModule && name == "_StorageInfo") {
    out->cls = Cls::kStorageInfo;
    return true;
  }
  if (module == kLegacyModule) {
    if (name == "TensorProperties") {
      out->cls = Cls::kProperties;
      return true;
    }
    if (name == "MEM_FORMAT_ENCODING") {
      out->cls = Cls::kMemFormat;
      return true;
    }
    return false;
  }
  if (module == "torch") {
    if (name == "Size") {
      out->cls = Cls::kSize;
      return true;
    }
    if (std::optional<DType> dt = DTypeFromTorchName(name)) {
      out->cls = Cls::kDType;
      out->a = static_cast<uint32_t>(*dt);
      return true;
    }
    return false;
  }
  if (module == "torch.serialization" && name == "_get_layout") {
    out->cls = Cls::kGetLayout;
    return true;
  }
  if ((module == "pathlib" || module == "pathlib._local") && IsPathClassName(name)) {
    out->cls = Cls::kPath;
    out->a = name.find("Windows") != std::string_view::npos ? 1 : 0;
    return true;
  }
  return false;
}

// Python's str(PurePath(*parts)) as the general path computes it.
std::string JoinPathParts(const std::vector<std::string_view>& parts, bool windows) {
  const char sep = windows ? '\\' : '/';
  std::string out;
  for (std::string_view part : parts) {
    if (part.empty()) continue;
    if (!windows && part[0] == '/') {
      out = std::string(part);
    } else if (out.empty() || out.back() == sep || (windows && out.back() == '/')) {
      out += part;
    } else {
      out.push_back(sep);
      out += part;
    }
  }
  if (out.empty()) out = ".";
  return out;
}

// 1 + the operand size of the opcodes whose operand has a fixed size (the
// others, and opcodes not read here, are 0).
constexpr std::array<uint8_t, 256> kFixedOperand = [] {
  std::array<uint8_t, 256> t{};
  for (uint8_t op : {kMark, kEmptyDict, kEmptyList, kEmptyTuple, kTuple, kTuple1, kTuple2, kTuple3,
                     kSetItem, kSetItems, kAppend, kAppends, kNone, kNewTrue, kNewFalse,
                     kStackGlobal, kReduce, kNewObj, kBuild})
    t[op] = 1;
  t[kProto] = t[kBinInt1] = 2;
  t[kBinInt2] = 3;
  t[kBinInt] = 5;
  return t;
}();

// a == b, inline (a library memcmp call for a few dims costs more).
bool SameShape(std::span<const int64_t> a, const Shape& b) {
  if (a.size() != b.size()) return false;
  for (size_t k = 0; k < a.size(); ++k) {
    if (a[k] != b[k]) return false;
  }
  return true;
}

bool LexLess(std::span<const int64_t> a, std::span<const int64_t> b) {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end());
}

class FastDecoder {
 public:
  explicit FastDecoder(std::span<const uint8_t> data)
      : data_(data), budget_(data.size() * 64 + (size_t{1} << 20)) {}

  std::optional<CompactMetadata> Run() {
    if (!FindReferencedMemo() || !Decode()) return std::nullopt;
    return std::move(md_);
  }

 private:
  // ---------------------------------------------------------------- pass 1

  // Walks the opcodes once: declines any opcode outside the accepted set,
  // truncated operands and out-of-order memo indices, and marks the memo
  // entries some GET refers to.
  bool FindReferencedMemo() {
    const uint8_t* d = data_.data();
    const size_t n = data_.size();
    size_t pos = 0;
    uint64_t memo = 0;
    auto reference = [&](uint64_t index) {
      if (index >= memo) return false;  // never set (or not yet)
      referenced_[index >> 6] |= uint64_t{1} << (index & 63);
      return true;
    };
    auto put = [&](uint64_t index) {
      if (index != memo) return false;
      ++memo;
      if (referenced_.size() * 64 < memo) referenced_.resize(referenced_.size() * 2 + 1024);
      return true;
    };
    while (true) {
      if (pos >= n) return false;
      const uint8_t op = d[pos++];
      size_t operand = kFixedOperand[op];
      if (operand != 0) {  // the common case: an operand of known size
        if (--operand > n - pos) return false;
        pos += operand;
        continue;
      }
      switch (op) {
        case kStop:
          referenced_.resize((memo + 63) / 64);
          memo_rank_.resize(referenced_.size());
          {
            uint32_t rank = 0;
            for (size_t w = 0; w < referenced_.size(); ++w) {
              memo_rank_[w] = rank;
              rank += PopCount(referenced_[w]);
            }
            memo_values_.resize(rank);
          }
          return true;
        case kFrame:
          if (n - pos < 8 || LoadLE(d + pos, 8) > n - pos - 8) return false;
          operand = 8;
          break;
        case kLong1:
        case kShortBinUnicode:
          if (pos >= n) return false;
          operand = 1 + size_t{d[pos]};
          break;
        case kBinUnicode:
          if (n - pos < 4) return false;
          operand = 4 + LoadLE(d + pos, 4);
          break;
        case kBinUnicode8: {
          if (n - pos < 8) return false;
          const uint64_t len = LoadLE(d + pos, 8);
          if (len > n - pos - 8) return false;
          operand = 8 + static_cast<size_t>(len);
          break;
        }
        case kGlobal:
          for (int line = 0; line < 2; ++line) {
            const void* nl = std::memchr(d + pos, '\n', n - pos);
            if (nl == nullptr) return false;
            pos = static_cast<size_t>(static_cast<const uint8_t*>(nl) - d) + 1;
          }
          break;
        case kBinPut:
          if (pos >= n || !put(d[pos])) return false;
          operand = 1;
          break;
        case kLongBinPut:
          if (n - pos < 4 || !put(LoadLE(d + pos, 4))) return false;
          operand = 4;
          break;
        case kMemoize:
          if (!put(memo)) return false;
          break;
        case kBinGet:
          if (pos >= n || !reference(d[pos])) return false;
          operand = 1;
          break;
        case kLongBinGet:
          if (n - pos < 4 || !reference(LoadLE(d + pos, 4))) return false;
          operand = 4;
          break;
        default:
          return false;
      }
      if (operand > n - pos) return false;
      pos += operand;
    }
  }

  // The slot in memo_values_ of a referenced memo index.
  MemoValue* Memo(uint64_t index) {
    const size_t w = index >> 6;
    const uint64_t bit = uint64_t{1} << (index & 63);
    if (w >= referenced_.size() || !(referenced_[w] & bit)) return nullptr;
    return &memo_values_[memo_rank_[w] + PopCount(referenced_[w] & (bit - 1))];
  }

  // ---------------------------------------------------------------- pass 2

  bool Charge(size_t n) {
    if (n > budget_ - used_) return false;
    used_ += n;
    return true;
  }

  size_t Fence() const { return marks_.empty() ? 0 : marks_.back(); }
  [[gnu::always_inline]] bool Push(const Value& v) {
    if (stack_.size() >= kMaxStack) return false;
    stack_.push_back(v);
    return true;
  }
  bool Pop(Value* v) {
    if (stack_.size() <= Fence()) return false;
    *v = stack_.back();
    stack_.pop_back();
    return true;
  }
  // Removes the innermost MARK: the items above it are stack_[*first, end).
  bool PopMark(size_t* first) {
    if (marks_.empty()) return false;
    *first = marks_.back();
    marks_.pop_back();
    return true;
  }

  // Gives back what `v` owns. Recursion is bounded: dict fields never hold
  // a fields dict, and data dicts hold nothing.
  void Release(const Value& v) {
    switch (v.tag) {
      case Tag::kTuple:
        // The arena is a stack. A tuple's items that are tuples themselves
        // (holding leaves only) lie below it, the last one highest.
        if (v.a + static_cast<size_t>(v.i) == arena_.size()) {
          size_t end = v.a;
          for (size_t k = static_cast<size_t>(v.i); k-- > 0;) {
            const Value& item = arena_[v.a + k];
            if (item.tag == Tag::kTuple && item.a + static_cast<size_t>(item.i) == end) {
              end = item.a;
            }
          }
          arena_.resize(end);
        }
        break;
      case Tag::kSize:
        shapes_.Give(v.a);
        break;
      case Tag::kDict: {
        Dict& d = dicts_[v.a];
        for (auto it = d.fields.rbegin(); it != d.fields.rend(); ++it) Release(it->second);
        d.fields.clear();
        d.role = Role::kUnknown;
        dicts_.Give(v.a);
        break;
      }
      case Tag::kList: {
        List& l = lists_[v.a];
        l.coords.clear();
        l.count = 0;
        l.dims = -1;
        l.values.clear();
        l.role = Role::kUnknown;
        lists_.Give(v.a);
        break;
      }
      case Tag::kChunk:
        chunks_.Give(v.a);
        break;
      case Tag::kIndex:
        if (indices_[v.a].has_offsets) shapes_.Give(indices_[v.a].offsets);
        indices_.Give(v.a);
        break;
      case Tag::kInfo:
        infos_.Give(v.a);
        break;
      case Tag::kEntry:
        pending_.Give(v.a);
        break;
      case Tag::kStorageMeta:
        storage_metas_.Give(v.a);
        break;
      default:
        break;
    }
  }
  void ReleaseRange(size_t first) {
    for (size_t k = stack_.size(); k > first; --k) Release(stack_[k - 1]);
    stack_.resize(first);
  }

  // A tuple of stack_[first, end): leaves, or tuples of leaves.
  bool MakeTuple(size_t first) {
    const size_t n = stack_.size() - first;
    for (size_t k = first; k < stack_.size(); ++k) {
      const Value& v = stack_[k];
      if (IsLeaf(v.tag)) continue;
      if (v.tag != Tag::kTuple) return false;
      for (int64_t j = 0; j < v.i; ++j) {
        if (!IsLeaf(arena_[v.a + static_cast<size_t>(j)].tag)) return false;
      }
    }
    if (arena_.size() + n > kMaxArena) return false;
    Value t;
    t.tag = Tag::kTuple;
    t.a = static_cast<uint32_t>(arena_.size());
    t.i = static_cast<int64_t>(n);
    arena_.insert(arena_.end(), stack_.begin() + first, stack_.end());
    stack_.resize(first);
    return Push(t);
  }
  const Value& Item(const Value& tuple, size_t k) const { return arena_[tuple.a + k]; }

  bool Put() {
    if (stack_.size() <= Fence()) return false;  // PUT of nothing
    MemoValue* m = Memo(memo_count_++);
    if (m == nullptr) return true;  // never referenced: nothing to keep
    const Value& v = stack_.back();
    m->value = v;
    m->usable = IsLeaf(v.tag) || v.tag == Tag::kSize || v.tag == Tag::kTuple;
    if (v.tag == Tag::kSize) m->dims = shapes_[v.a];
    if (v.tag == Tag::kTuple) {
      m->items.assign(arena_.begin() + v.a, arena_.begin() + v.a + v.i);
      for (const Value& item : m->items) m->usable = m->usable && IsLeaf(item.tag);
    }
    return true;
  }
  bool Get(uint64_t index) {
    MemoValue* m = index < memo_count_ ? Memo(index) : nullptr;
    if (m == nullptr || !m->usable) return false;
    Value v = m->value;
    if (v.tag == Tag::kSize) {
      if (!Charge(m->dims.size() * sizeof(int64_t))) return false;
      v.a = shapes_.Take();
      shapes_[v.a] = m->dims;
    } else if (v.tag == Tag::kTuple) {
      if (arena_.size() + m->items.size() > kMaxArena) return false;
      v.a = static_cast<uint32_t>(arena_.size());
      arena_.insert(arena_.end(), m->items.begin(), m->items.end());
    }
    return Push(v);
  }

  bool Decode();
  bool Reduce();
  bool Build();
  bool SetItems(size_t target, size_t first);
  bool Appends(size_t target, size_t first);
  bool AddEntry(const Value& key, const Value& value);
  bool AddRecord(const Value& key, const Value& value);
  bool AddPath(const Value& key, const Value& value);
  bool BuildChunk(Dict& f, Value* out);
  bool BuildIndex(Dict& f, Value* out);
  bool BuildInfo(Dict& f, Value* out);
  bool BuildTensorMeta(Dict& f, Value* out);
  bool BuildStorageMeta(Dict& f, Value* out);
  bool FinishMetadata(Dict& f);

  // Helpers for fields: strs, optional strs, lists or tuples of strs.
  bool FieldStr(const Value* v, std::string_view* out) {
    if (v == nullptr || v->tag != Tag::kStr) return false;
    *out = v->str();
    return Charge(out->size());
  }
  bool FieldOptStr(const Value* v, std::optional<std::string>* out) {
    if (v == nullptr || v->tag == Tag::kNone) return true;
    std::string_view s;
    if (!FieldStr(v, &s)) return false;
    *out = std::string(s);
    return true;
  }
  bool FieldUInt(const Value* v, uint64_t* out) {
    if (v == nullptr) return false;
    if (v->tag == Tag::kBigUInt) {
      *out = v->u;
      return true;
    }
    if (v->tag != Tag::kInt || v->i < 0) return false;
    *out = static_cast<uint64_t>(v->i);
    return true;
  }
  // None (or absent), or a list or tuple of strs.
  bool FieldStrs(const Value* v, std::vector<std::string_view>* out) {
    if (v == nullptr || v->tag == Tag::kNone) return true;
    const Value* items = nullptr;
    size_t n = 0;
    if (v->tag == Tag::kList) {
      const List& l = lists_[v->a];
      if (l.role == Role::kChunks) return false;
      items = l.values.data();
      n = l.values.size();
    } else if (v->tag == Tag::kTuple) {
      items = arena_.data() + v->a;
      n = static_cast<size_t>(v->i);
    } else {
      return false;
    }
    for (size_t k = 0; k < n; ++k) {
      if (items[k].tag != Tag::kStr || !Charge(items[k].a)) return false;
      out->push_back(items[k].str());
    }
    return true;
  }
  bool FieldSize(const Value* v, uint32_t* slot) {
    if (v == nullptr || v->tag != Tag::kSize) return false;
    *slot = v->a;
    return Charge(shapes_[v->a].size() * sizeof(int64_t));
  }

  std::span<const uint8_t> data_;
  size_t pos_ = 0;
  size_t budget_;
  size_t used_ = 0;

  ValueStack stack_;
  std::vector<size_t> marks_;
  std::vector<Value> arena_;  // tuple items, used as a stack

  std::vector<uint64_t> referenced_;  // a bit per memo index
  std::vector<uint32_t> memo_rank_;   // set bits in referenced_ before each word
  std::vector<MemoValue> memo_values_;
  uint64_t memo_count_ = 0;

  Pool<Shape> shapes_;
  Pool<Dict> dicts_;
  Pool<List> lists_;
  Pool<ChunkMeta> chunks_;
  Pool<IndexRecord> indices_;
  Pool<InfoRecord> infos_;
  Pool<PendingEntry> pending_;
  Pool<StorageMeta> storage_metas_;
  std::vector<std::unique_ptr<std::string>> paths_;  // kPathStr strings

  // The dicts that became state_dict_metadata, storage_data, planner_data
  // (at most one of each may exist), as dicts_ slots.
  static constexpr uint32_t kNoDict = 0xFFFFFFFFu;
  uint32_t entries_dict_ = kNoDict;
  uint32_t storage_dict_ = kNoDict;
  uint32_t planner_dict_ = kNoDict;

  // Interns a storage record's strings into md_.
  uint32_t InternFile(std::string_view path) {
    auto [it, fresh] = file_of_.try_emplace(path, static_cast<uint32_t>(md_.files.size()));
    if (fresh) md_.files.emplace_back(path);
    return it->second;
  }
  uint32_t InternTransforms(const std::vector<std::string_view>& t) {
    if (t.empty()) return 0;
    // Few distinct lists exist (usually one): a linear search is enough.
    size_t k = 1;
    for (; k < md_.transform_sets.size(); ++k) {
      const std::vector<std::string>& have = md_.transform_sets[k];
      if (have.size() == t.size() && std::equal(have.begin(), have.end(), t.begin())) break;
    }
    if (k == md_.transform_sets.size()) md_.transform_sets.emplace_back(t.begin(), t.end());
    return static_cast<uint32_t>(k);
  }

  CompactMetadata md_;
  bool done_ = false;
  const void* prefetched_ = nullptr;  // see BuildIndex
  std::unordered_map<std::string_view, uint32_t> entry_of_;  // fqn -> md_.entries index
  std::unordered_map<std::string_view, uint32_t> file_of_;   // relative_path -> md_.files
  std::vector<EntryAux> aux_;                                // per md_.entries
  std::vector<uint8_t> chunk_has_storage_;
};

bool FastDecoder::Decode() {
  const uint8_t* d = data_.data();
  const size_t n = data_.size();
  arena_.reserve(1024);
  while (true) {
    // Pass 1 checked every operand's bounds and the opcode set; the checks
    // here keep this pass safe on its own.
    if (pos_ >= n) return false;
    const uint8_t op = d[pos_++];
    const size_t left = n - pos_;
    Value v;
    switch (op) {
      case kProto:
        if (left < 1 || d[pos_] > 5) return false;
        pos_ += 1;
        break;
      case kFrame:
        if (left < 8 || LoadLE(d + pos_, 8) > left - 8) return false;
        pos_ += 8;
        break;
      case kStop:
        return Pop(&v) && v.tag == Tag::kMetadata;
      case kMark:
        if (marks_.size() >= kMaxMarks) return false;
        marks_.push_back(stack_.size());
        break;

      case kNone:
        if (!Push(v)) return false;
        break;
      case kNewTrue:
      case kNewFalse:
        v.tag = Tag::kBool;
        v.i = op == kNewTrue;
        if (!Push(v)) return false;
        break;
      case kBinInt1:
      case kBinInt2:
      case kBinInt: {
        const int width = op == kBinInt1 ? 1 : op == kBinInt2 ? 2 : 4;
        if (left < static_cast<size_t>(width)) return false;
        const uint64_t raw = LoadLE(d + pos_, width);
        pos_ += static_cast<size_t>(width);
        v.tag = Tag::kInt;
        v.i = op == kBinInt ? static_cast<int32_t>(static_cast<uint32_t>(raw))
                            : static_cast<int64_t>(raw);
        if (!Push(v)) return false;
        break;
      }
      case kLong1: {
        if (left < 1 || left - 1 < d[pos_]) return false;
        const size_t len = d[pos_];
        if (!LongValue(d + pos_ + 1, len, &v)) return false;
        pos_ += 1 + len;
        if (!Push(v)) return false;
        break;
      }
      case kShortBinUnicode:
      case kBinUnicode:
      case kBinUnicode8: {
        const int width = op == kShortBinUnicode ? 1 : op == kBinUnicode ? 4 : 8;
        if (left < static_cast<size_t>(width)) return false;
        const uint64_t len = LoadLE(d + pos_, width);
        if (len > left - static_cast<size_t>(width) || len > std::numeric_limits<uint32_t>::max())
          return false;
        v.tag = Tag::kStr;
        v.p = reinterpret_cast<const char*>(d + pos_ + width);
        v.a = static_cast<uint32_t>(len);
        pos_ += static_cast<size_t>(width) + static_cast<size_t>(len);
        if (!Push(v)) return false;
        break;
      }

      case kGlobal: {
        std::string_view lines[2];
        for (std::string_view& line : lines) {
          const void* nl = std::memchr(d + pos_, '\n', n - pos_);
          if (nl == nullptr) return false;
          const size_t len = static_cast<size_t>(static_cast<const uint8_t*>(nl) - (d + pos_));
          line = std::string_view(reinterpret_cast<const char*>(d + pos_), len);
          pos_ += len + 1;
        }
        if (!ResolveGlobal(lines[0], lines[1], &v) || !Push(v)) return false;
        break;
      }
      case kStackGlobal: {
        Value name, module;
        if (!Pop(&name) || !Pop(&module) || name.tag != Tag::kStr || module.tag != Tag::kStr)
          return false;
        if (!ResolveGlobal(module.str(), name.str(), &v) || !Push(v)) return false;
        break;
      }

      case kEmptyTuple:
        v.tag = Tag::kTuple;
        v.a = static_cast<uint32_t>(arena_.size());
        if (!Push(v)) return false;
        break;
      case kTuple: {
        size_t first;
        if (!PopMark(&first) || !MakeTuple(first)) return false;
        break;
      }
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        const size_t k = op - kTuple1 + 1;
        if (stack_.size() < Fence() + k || !MakeTuple(stack_.size() - k)) return false;
        break;
      }
      case kEmptyList:
        v.tag = Tag::kList;
        v.a = lists_.Take();
        if (!Push(v)) return false;
        break;
      case kEmptyDict:
        v.tag = Tag::kDict;
        v.a = dicts_.Take();
        // Right after a NEWOBJ (no MARK between), a dict is that object's
        // BUILD state: Python's pickler writes save(state) next.
        dicts_[v.a].role = stack_.size() > Fence() && stack_.back().tag == Tag::kObject
                               ? Role::kFields
                               : Role::kUnknown;
        if (!Push(v)) return false;
        break;

      case kSetItem:
        if (stack_.size() < Fence() + 3 || !SetItems(stack_.size() - 3, stack_.size() - 2))
          return false;
        break;
      case kSetItems: {
        size_t first;
        if (!PopMark(&first) || first <= Fence() || !SetItems(first - 1, first)) return false;
        break;
      }
      case kAppend:
        if (stack_.size() < Fence() + 2 || !Appends(stack_.size() - 2, stack_.size() - 1))
          return false;
        break;
      case kAppends: {
        size_t first;
        if (!PopMark(&first) || first <= Fence() || !Appends(first - 1, first)) return false;
        break;
      }

      case kReduce:
        if (!Reduce()) return false;
        break;
      case kNewObj: {
        Value args, cls;
        if (!Pop(&args) || !Pop(&cls)) return false;
        if (args.tag != Tag::kTuple || args.i != 0 || cls.tag != Tag::kGlobal) return false;
        switch (cls.cls) {
          case Cls::kMetadata:
          case Cls::kTensorMeta:
          case Cls::kBytesMeta:
          case Cls::kChunk:
          case Cls::kProperties:
          case Cls::kIndex:
          case Cls::kStorageMeta:
          case Cls::kStorageInfo:
            break;
          default:
            return false;
        }
        Release(args);
        v.tag = Tag::kObject;
        v.cls = cls.cls;
        if (!Push(v)) return false;
        break;
      }
      case kBuild:
        if (!Build()) return false;
        break;

      case kBinPut:
      case kLongBinPut: {
        const int width = op == kBinPut ? 1 : 4;
        if (left < static_cast<size_t>(width) || LoadLE(d + pos_, width) != memo_count_)
          return false;
        pos_ += static_cast<size_t>(width);
        if (!Put()) return false;
        break;
      }
      case kMemoize:
        if (!Put()) return false;
        break;
      case kBinGet:
      case kLongBinGet: {
        const int width = op == kBinGet ? 1 : 4;
        if (left < static_cast<size_t>(width)) return false;
        const uint64_t index = LoadLE(d + pos_, width);
        pos_ += static_cast<size_t>(width);
        if (!Get(index)) return false;
        break;
      }
      default:
        return false;
    }
  }
}

// REDUCE: torch.Size(dims), _get_layout('torch.strided'), a memory format
// enum member, or a pathlib path.
bool FastDecoder::Reduce() {
  Value args, fn;
  if (!Pop(&args) || !Pop(&fn) || fn.tag != Tag::kGlobal || args.tag != Tag::kTuple) return false;
  Value v;
  switch (fn.cls) {
    case Cls::kSize: {
      if (args.i != 1) return false;
      const Value& dims = Item(args, 0);
      if (dims.tag != Tag::kTuple) return false;
      v.tag = Tag::kSize;
      v.a = shapes_.Take();
      Shape& shape = shapes_[v.a];
      shape.resize(static_cast<size_t>(dims.i));
      for (size_t k = 0; k < shape.size(); ++k) {
        const Value& dim = Item(dims, k);
        if (dim.tag != Tag::kInt) {
          shapes_.Give(v.a);
          return false;
        }
        shape[k] = dim.i;
      }
      break;
    }
    case Cls::kGetLayout:
      if (args.i != 1 || Item(args, 0).tag != Tag::kStr ||
          Item(args, 0).str() != "torch.strided")
        return false;
      v.tag = Tag::kLayout;
      break;
    case Cls::kMemFormat:
      if (args.i != 1 || Item(args, 0).tag != Tag::kInt || Item(args, 0).i < 0 ||
          Item(args, 0).i > 2)
        return false;
      v.tag = Tag::kMemFormat;
      v.a = static_cast<uint32_t>(Item(args, 0).i);
      break;
    case Cls::kPath: {
      std::vector<std::string_view> parts;
      for (size_t k = 0; k < static_cast<size_t>(args.i); ++k) {
        const Value& part = Item(args, k);
        if (part.tag != Tag::kStr || !Charge(part.a)) return false;
        parts.push_back(part.str());
      }
      std::string joined = JoinPathParts(parts, fn.a == 1);
      if (joined.size() > std::numeric_limits<uint32_t>::max()) return false;
      paths_.push_back(std::make_unique<std::string>(std::move(joined)));
      v.tag = Tag::kPathStr;
      v.p = paths_.back()->data();
      v.a = static_cast<uint32_t>(paths_.back()->size());
      break;
    }
    default:
      return false;
  }
  Release(args);
  return Push(v);
}

// BUILD: the state of the object below it turns the object into its struct.
bool FastDecoder::Build() {
  Value state;
  if (!Pop(&state) || stack_.size() <= Fence()) return false;
  Value& target = stack_.back();
  if (target.tag != Tag::kObject) return false;
  Value built;
  if (target.cls == Cls::kProperties) {
    // TensorProperties.__setstate__'s 5-tuple.
    if (state.tag != Tag::kTuple || state.i != 5) return false;
    const Value& dtype = Item(state, 0);
    const Value& layout = Item(state, 1);
    const Value& requires_grad = Item(state, 2);
    const Value& memory_format = Item(state, 3);
    const Value& pin_memory = Item(state, 4);
    auto as_bool = [](const Value& b, uint32_t* out) {
      if ((b.tag != Tag::kBool && b.tag != Tag::kInt) || (b.i != 0 && b.i != 1)) return false;
      *out = static_cast<uint32_t>(b.i);
      return true;
    };
    uint32_t rg, pin;
    if (dtype.tag != Tag::kGlobal || dtype.cls != Cls::kDType || layout.tag != Tag::kLayout ||
        memory_format.tag != Tag::kMemFormat || !as_bool(requires_grad, &rg) ||
        !as_bool(pin_memory, &pin))
      return false;
    built.tag = Tag::kProperties;
    built.a = dtype.a | rg << 8 | pin << 9 | memory_format.a << 10;
  } else if (target.cls == Cls::kBytesMeta) {
    // No fields: no BUILD (Python >= 3.11) or an empty __dict__.
    const bool fields_dict = state.tag == Tag::kDict && dicts_[state.a].role == Role::kFields;
    if (state.tag != Tag::kNone && !fields_dict) return false;
    built.tag = Tag::kBytesEntry;
  } else {
    if (state.tag != Tag::kDict || dicts_[state.a].role != Role::kFields) return false;
    Dict& f = dicts_[state.a];
    bool ok = false;
    switch (target.cls) {
      case Cls::kChunk:
        ok = BuildChunk(f, &built);
        break;
      case Cls::kIndex:
        ok = BuildIndex(f, &built);
        break;
      case Cls::kStorageInfo:
        ok = BuildInfo(f, &built);
        break;
      case Cls::kTensorMeta:
        ok = BuildTensorMeta(f, &built);
        break;
      case Cls::kStorageMeta:
        ok = BuildStorageMeta(f, &built);
        break;
      case Cls::kMetadata:
        ok = FinishMetadata(f);
        built.tag = Tag::kMetadata;
        break;
      default:
        break;
    }
    if (!ok) return false;
  }
  Release(state);
  stack_.back() = built;
  return true;
}

bool FastDecoder::BuildChunk(Dict& f, Value* out) {
  uint32_t offsets, sizes;
  if (!FieldSize(f.Get("offsets"), &offsets) || !FieldSize(f.Get("sizes"), &sizes) ||
      !Charge(sizeof(ChunkMeta)))
    return false;
  out->tag = Tag::kChunk;
  out->a = chunks_.Take();
  ChunkMeta& c = chunks_[out->a];
  c.offsets = std::move(shapes_[offsets]);
  c.sizes = std::move(shapes_[sizes]);
  c.storage = StorageInfo();
  return true;
}

bool FastDecoder::BuildIndex(Dict& f, Value* out) {
  IndexRecord r;
  if (!FieldStr(f.Get("fqn"), &r.fqn)) return false;
  if (Value* offset = f.Get("offset"); offset != nullptr && offset->tag != Tag::kNone) {
    if (!FieldSize(offset, &r.offsets)) return false;
    r.has_offsets = true;
    offset->tag = Tag::kNone;  // the record owns the offsets now
  }
  // The general path never reads `index`; here it is only a hint.
  if (const Value* index = f.Get("index"); index != nullptr && index->tag == Tag::kInt) {
    r.hint = index->i;
  }
  out->tag = Tag::kIndex;
  out->a = indices_.Take();
  indices_[out->a] = r;
  // Records visit chunks in rank order, not in the entries' order, so the
  // join's reads of a chunk miss the cache. Start fetching the hinted chunk
  // now; BuildInfo fetches its offsets next, before AddRecord reads both.
  prefetched_ = nullptr;
  if (auto it = entry_of_.find(r.fqn); it != entry_of_.end()) {
    IndexRecord& rec = indices_[out->a];
    rec.entry = it->second;
    const CompactEntry& e = md_.entries[rec.entry];
    if (r.has_offsets && r.hint >= 0 && static_cast<uint64_t>(r.hint) < e.num_chunks()) {
      const size_t k = static_cast<size_t>(r.hint);
      if (e.dims() > 0) __builtin_prefetch(e.offsets(k).data());
      prefetched_ = &e.chunks[k];
    }
  }
  return true;
}

bool FastDecoder::BuildInfo(Dict& f, Value* out) {
  if (prefetched_ != nullptr) __builtin_prefetch(prefetched_, 1);
  out->a = infos_.Take();
  InfoRecord& r = infos_[out->a];
  r.transforms.clear();
  out->tag = Tag::kInfo;
  if (!FieldStr(f.Get("relative_path"), &r.relative_path) ||
      !FieldUInt(f.Get("offset"), &r.offset) || !FieldUInt(f.Get("length"), &r.length) ||
      !FieldStrs(f.Get("transform_descriptors"), &r.transforms)) {
    infos_.Give(out->a);
    return false;
  }
  return true;
}

bool FastDecoder::BuildTensorMeta(Dict& f, Value* out) {
  const Value* props = f.Get("properties");
  const Value* chunks = f.Get("chunks");
  uint32_t size_slot;
  if (props == nullptr || props->tag != Tag::kProperties || chunks == nullptr ||
      chunks->tag != Tag::kList || lists_[chunks->a].role == Role::kValues ||
      !FieldSize(f.Get("size"), &size_slot))
    return false;
  const Shape& size = shapes_[size_slot];
  for (int64_t dim : size) {
    if (dim < 0) return false;
  }
  List& l = lists_[chunks->a];
  const size_t d = size.size();
  if (l.count > 0 && static_cast<size_t>(l.dims) != d) return false;
  const size_t n = l.count;
  const int64_t* cs = l.coords.data();
  for (size_t c = 0; c < n; ++c) {
    const int64_t* offsets = cs + 2 * d * c;
    const int64_t* sizes = offsets + d;
    for (size_t k = 0; k < d; ++k) {
      int64_t end = 0;
      if (offsets[k] < 0 || sizes[k] < 0 || __builtin_add_overflow(offsets[k], sizes[k], &end) ||
          end > size[k])
        return false;
    }
  }
  auto offsets_of = [&](size_t c) { return std::span<const int64_t>(cs + 2 * d * c, d); };
  // Storage records find their chunk by offsets: they must be unique.
  std::vector<uint32_t> order;
  bool sorted = true;
  for (size_t k = 1; k < n && sorted; ++k) {
    sorted = LexLess(offsets_of(k - 1), offsets_of(k));
  }
  if (!sorted) {
    order.resize(n);
    for (uint32_t k = 0; k < order.size(); ++k) order[k] = k;
    std::sort(order.begin(), order.end(),
              [&](uint32_t x, uint32_t y) { return LexLess(offsets_of(x), offsets_of(y)); });
    for (size_t k = 1; k < order.size(); ++k) {
      if (!LexLess(offsets_of(order[k - 1]), offsets_of(order[k]))) return false;
    }
  }
  out->tag = Tag::kEntry;
  out->a = pending_.Take();
  PendingEntry& p = pending_[out->a];
  p.entry = CompactEntry();
  p.entry.kind = EntryMeta::Kind::kTensor;
  p.entry.properties.dtype = static_cast<DType>(props->a & 0xFF);
  p.entry.properties.requires_grad = (props->a >> 8) & 1;
  p.entry.properties.pin_memory = (props->a >> 9) & 1;
  p.entry.properties.memory_format = static_cast<MemoryFormat>(props->a >> 10);
  p.entry.size = std::move(shapes_[size_slot]);
  // The list grew by batches; what it kept beyond its chunks would stay
  // allocated for the life of the metadata.
  if (l.coords.capacity() > l.coords.size() + l.coords.size() / 8) l.coords.shrink_to_fit();
  p.entry.coords = std::move(l.coords);
  l.coords = {};
  p.entry.chunks.resize(n);
  l.count = 0;
  l.dims = -1;
  p.order = std::move(order);
  return true;
}

bool FastDecoder::BuildStorageMeta(Dict& f, Value* out) {
  StorageMeta sm;
  if (const Value* id = f.Get("checkpoint_id"); id != nullptr && id->tag != Tag::kNone) {
    if ((id->tag != Tag::kStr && id->tag != Tag::kPathStr) || !Charge(id->a)) return false;
    sm.checkpoint_id = std::string(id->str());
  }
  std::vector<std::string_view> modules;
  if (!FieldOptStr(f.Get("save_id"), &sm.save_id) ||
      !FieldOptStr(f.Get("load_id"), &sm.load_id) || !FieldStrs(f.Get("modules"), &modules))
    return false;
  sm.modules.assign(modules.begin(), modules.end());
  out->tag = Tag::kStorageMeta;
  out->a = storage_metas_.Take();
  storage_metas_[out->a] = std::move(sm);
  return true;
}

// SETITEM(S): stack_[first, end) are key, value pairs for the dict at
// stack_[target]; they are consumed.
bool FastDecoder::SetItems(size_t target, size_t first) {
  const size_t n = stack_.size() - first;
  if (n % 2 != 0) return false;
  if (n == 0) return true;  // Python does not look at the target then
  if (stack_[target].tag != Tag::kDict) return false;
  Dict& d = dicts_[stack_[target].a];
  if (d.role == Role::kFields) {
    if (d.fields.size() + n / 2 > kMaxFields) return false;
    for (size_t k = first; k < stack_.size(); k += 2) {
      const Value& value = stack_[k + 1];
      if (stack_[k].tag != Tag::kStr) return false;
      if (value.tag == Tag::kDict && dicts_[value.a].role == Role::kFields) return false;
      d.fields.emplace_back(stack_[k].str(), value);
    }
    stack_.resize(first);  // the fields own the values now
    return true;
  }
  const uint32_t self = stack_[target].a;
  for (size_t k = first; k < stack_.size(); k += 2) {
    const Value& key = stack_[k];
    const Value& value = stack_[k + 1];
    Role role;
    if (value.tag == Tag::kEntry || value.tag == Tag::kBytesEntry ||
        (value.tag == Tag::kObject && value.cls == Cls::kBytesMeta)) {
      role = Role::kEntries;
    } else if (key.tag == Tag::kIndex && value.tag == Tag::kInfo) {
      role = Role::kStorage;
    } else if (key.tag == Tag::kStr && (value.tag == Tag::kTuple || value.tag == Tag::kList)) {
      role = Role::kPlanner;
    } else {
      return false;
    }
    if (d.role == Role::kUnknown) {
      // One dict of each kind; storage_data and planner_data are joined
      // onto state_dict_metadata, which must be complete (see the top).
      uint32_t* dict = role == Role::kEntries   ? &entries_dict_
                       : role == Role::kStorage ? &storage_dict_
                                                : &planner_dict_;
      if (*dict != kNoDict || (role != Role::kEntries && entries_dict_ == kNoDict)) return false;
      *dict = self;
      d.role = role;
    } else if (d.role != role) {
      return false;
    }
    const bool ok = role == Role::kEntries   ? AddEntry(key, value)
                    : role == Role::kStorage ? AddRecord(key, value)
                                             : AddPath(key, value);
    if (!ok) return false;
  }
  ReleaseRange(first);
  return true;
}

bool FastDecoder::AddEntry(const Value& key, const Value& value) {
  if (key.tag != Tag::kStr) return false;
  const std::string_view fqn = key.str();
  if (!Charge(sizeof(EntryMeta) + fqn.size())) return false;
  // A repeated FQN (which no dict pickles) is left to the general path.
  if (!entry_of_.emplace(fqn, static_cast<uint32_t>(md_.entries.size())).second) return false;
  EntryAux aux;
  if (value.tag == Tag::kEntry) {
    PendingEntry& p = pending_[value.a];
    md_.entries.push_back(std::move(p.entry));
    aux.first_flag = chunk_has_storage_.size();
    aux.sorted = p.order.empty();
    aux.order = std::move(p.order);
    chunk_has_storage_.resize(chunk_has_storage_.size() + md_.entries.back().num_chunks(), 0);
  } else {
    md_.entries.emplace_back().kind = EntryMeta::Kind::kBytes;
  }
  md_.entries.back().fqn = std::string(fqn);
  aux_.push_back(std::move(aux));
  return true;
}

bool FastDecoder::AddRecord(const Value& key, const Value& value) {
  const IndexRecord& index = indices_[key.a];
  const InfoRecord& info = infos_[value.a];
  const size_t dims = index.has_offsets ? shapes_[index.offsets].size() : 0;
  // What the general path charges for the record (its lookup key and value).
  if (!Charge(sizeof(uint64_t) + index.fqn.size() + 1 + dims * sizeof(int64_t) +
              sizeof(StorageInfo) + 64))
    return false;
  uint32_t entry = index.entry;
  if (entry == 0xFFFFFFFFu) {
    auto it = entry_of_.find(index.fqn);
    if (it == entry_of_.end()) return true;  // a record no entry uses
    entry = it->second;
  }
  CompactEntry& e = md_.entries[entry];
  EntryAux& aux = aux_[entry];
  CompactStorage* dest = nullptr;
  if (!index.has_offsets) {
    if (e.is_tensor()) return true;
    dest = &e.storage;
    aux.has_storage = true;
  } else {
    if (!e.is_tensor()) return true;
    const Shape& offsets = shapes_[index.offsets];
    const size_t n = e.num_chunks();
    size_t c = n;
    if (offsets.size() != e.dims()) {
      // no chunk has offsets of this rank
    } else if (index.hint >= 0 && static_cast<uint64_t>(index.hint) < n &&
               SameShape(e.offsets(static_cast<size_t>(index.hint)), offsets)) {
      c = static_cast<size_t>(index.hint);
    } else if (aux.sorted) {
      size_t lo = 0, hi = n;
      while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if (LexLess(e.offsets(mid), offsets)) {
          lo = mid + 1;
        } else {
          hi = mid;
        }
      }
      if (lo < n && SameShape(e.offsets(lo), offsets)) c = lo;
    } else {
      auto at = std::lower_bound(aux.order.begin(), aux.order.end(), offsets,
                                 [&](uint32_t k, const Shape& o) {
                                   return LexLess(e.offsets(k), o);
                                 });
      if (at != aux.order.end() && SameShape(e.offsets(*at), offsets)) c = *at;
    }
    if (c == n) return true;  // no chunk at these offsets
    dest = &e.chunks[c];
    chunk_has_storage_[aux.first_flag + c] = 1;
  }
  if (!Charge(sizeof(StorageInfo) + info.relative_path.size())) return false;
  dest->file = InternFile(info.relative_path);
  dest->offset = info.offset;
  dest->length = info.length;
  dest->transforms = InternTransforms(info.transforms);
  return true;
}

bool FastDecoder::AddPath(const Value& key, const Value& value) {
  auto it = entry_of_.find(key.str());
  if (it == entry_of_.end()) return true;  // a path no entry uses
  const Value* items;
  size_t n;
  if (value.tag == Tag::kTuple) {
    items = arena_.data() + value.a;
    n = static_cast<size_t>(value.i);
  } else {
    const List& l = lists_[value.a];
    if (l.role == Role::kChunks) return false;
    items = l.values.data();
    n = l.values.size();
  }
  if (!Charge(n * sizeof(PathElement))) return false;
  ObjectPath path;
  path.reserve(n);
  for (size_t k = 0; k < n; ++k) {
    if (items[k].tag == Tag::kStr) {
      if (!Charge(items[k].a)) return false;
      path.emplace_back(std::string(items[k].str()));
    } else if (items[k].tag == Tag::kInt) {
      path.emplace_back(items[k].i);
    } else {
      return false;
    }
  }
  md_.entries[it->second].path = std::move(path);
  return true;
}

// APPEND(S): stack_[first, end) are items for the list at stack_[target].
bool FastDecoder::Appends(size_t target, size_t first) {
  if (stack_.size() == first) return true;  // Python does not look at the target then
  if (stack_[target].tag != Tag::kList) return false;
  List& l = lists_[stack_[target].a];
  if (stack_[first].tag == Tag::kChunk) {
    // A chunk list comes in batches of up to 1,000: grow once per batch.
    const size_t per_chunk = 2 * chunks_[stack_[first].a].offsets.size();
    const size_t want = l.coords.size() + (stack_.size() - first) * per_chunk;
    if (want > l.coords.capacity()) l.coords.reserve(std::max(want, 2 * l.coords.capacity()));
  }
  for (size_t k = first; k < stack_.size(); ++k) {
    const Value& v = stack_[k];
    const Role role = v.tag == Tag::kChunk                              ? Role::kChunks
                      : (v.tag == Tag::kStr || v.tag == Tag::kInt)      ? Role::kValues
                                                                        : Role::kUnknown;
    if (role == Role::kUnknown || (l.role != Role::kUnknown && l.role != role)) return false;
    l.role = role;
    if (role == Role::kChunks) {
      const ChunkMeta& c = chunks_[v.a];
      if (l.dims < 0) l.dims = static_cast<int32_t>(c.offsets.size());
      // Chunks of mixed ranks are an error the general path reports.
      if (c.offsets.size() != static_cast<size_t>(l.dims) ||
          c.sizes.size() != static_cast<size_t>(l.dims) || l.count == UINT32_MAX)
        return false;
      l.coords.insert(l.coords.end(), c.offsets.begin(), c.offsets.end());
      l.coords.insert(l.coords.end(), c.sizes.begin(), c.sizes.end());
      ++l.count;
      chunks_.Give(v.a);
    } else {
      l.values.push_back(v);
    }
  }
  stack_.resize(first);
  return true;
}

bool FastDecoder::FinishMetadata(Dict& f) {
  if (done_) return false;
  done_ = true;
  // Each of the three dicts must be the one the field holds (a data dict
  // that became none of them is an empty one).
  auto is = [&](const Value* v, uint32_t dict, bool required) {
    if (v == nullptr || v->tag == Tag::kNone) return !required && dict == kNoDict;
    if (v->tag != Tag::kDict) return false;
    if (dict != kNoDict) return v->a == dict;
    return dicts_[v->a].role == Role::kUnknown;
  };
  if (!is(f.Get("state_dict_metadata"), entries_dict_, /*required=*/true) ||
      !is(f.Get("storage_data"), storage_dict_, false) ||
      !is(f.Get("planner_data"), planner_dict_, false))
    return false;
  // Every chunk and bytes entry found its storage record.
  if (std::find(chunk_has_storage_.begin(), chunk_has_storage_.end(), 0) !=
      chunk_has_storage_.end())
    return false;
  for (size_t k = 0; k < md_.entries.size(); ++k) {
    if (!md_.entries[k].is_tensor() && !aux_[k].has_storage) return false;
  }
  if (!FieldOptStr(f.Get("version"), &md_.version)) return false;
  if (const Value* sm = f.Get("storage_meta"); sm != nullptr && sm->tag != Tag::kNone) {
    if (sm->tag != Tag::kStorageMeta) return false;
    md_.storage_meta = std::move(storage_metas_[sm->a]);
  }
  return true;
}

}  // namespace

std::optional<CompactMetadata> DecodeCompactMetadataFast(std::span<const uint8_t> bytes) {
  return FastDecoder(bytes).Run();
}

std::optional<Metadata> DecodeMetadataFast(std::span<const uint8_t> bytes) {
  std::optional<CompactMetadata> md = FastDecoder(bytes).Run();
  if (!md) return std::nullopt;
  return Expand(std::move(*md));
}

}  // namespace dcpp::format::metadata_internal
