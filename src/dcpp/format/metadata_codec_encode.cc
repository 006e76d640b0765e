// EncodeMetadata: dcpp::Metadata as the protocol-2 pickle torch's DCP
// writes, byte for byte (see metadata_codec.h for the contract).
#include "dcpp/format/metadata_codec.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "dcpp/format/metadata_codec_internal.h"
#include "dcpp/format/pickle.h"

namespace dcpp::format {
namespace {

using metadata_internal::kFsModule;
using metadata_internal::kMetaModule;

#define DCPP_ALWAYS_INLINE inline __attribute__((always_inline))

constexpr uint32_t kUnset = 0xFFFFFFFFu;

// Raw opcode writers for the per-chunk fast paths: each writes at `p` and
// returns the new end. The caller has ensured room for them.
DCPP_ALWAYS_INLINE char* Le32At(char* p, uint32_t v) {
  for (int k = 0; k < 4; ++k) p[k] = static_cast<char>(v >> (8 * k));
  return p + 4;
}
DCPP_ALWAYS_INLINE char* MemoAt(char* p, char short_op, char long_op, uint32_t index) {
  if (index < 256) {
    p[0] = short_op;
    p[1] = static_cast<char>(index);
    return p + 2;
  }
  *p = long_op;
  return Le32At(p + 1, index);
}
DCPP_ALWAYS_INLINE char* PutAt(char* p, uint32_t index) { return MemoAt(p, 'q', 'r', index); }
DCPP_ALWAYS_INLINE char* GetAt(char* p, uint32_t index) { return MemoAt(p, 'h', 'j', index); }

// LONG1: minimal little-endian two's complement of the 64 bits `v`
// (is_signed) or of the unsigned value `v` (one more byte when bit 63 is
// set). At most 11 bytes.
char* Long1At(char* p, uint64_t v, bool is_signed) {
  char bytes[9];
  int n = 8;
  for (int k = 0; k < 8; ++k) bytes[k] = static_cast<char>(v >> (8 * k));
  if (!is_signed) bytes[n++] = 0;
  while (n > 1) {
    const auto last = static_cast<uint8_t>(bytes[n - 1]);
    const auto prev = static_cast<uint8_t>(bytes[n - 2]);
    if ((last == 0x00 && !(prev & 0x80)) || (last == 0xFF && (prev & 0x80))) {
      --n;
    } else {
      break;
    }
  }
  p[0] = static_cast<char>(0x8a);
  p[1] = static_cast<char>(n);
  std::memcpy(p + 2, bytes, static_cast<size_t>(n));
  return p + 2 + n;
}

// BININT1 / BININT2 / BININT / LONG1, as Python picks them. At most 11 bytes.
DCPP_ALWAYS_INLINE char* IntAt(char* p, int64_t v) {
  if (static_cast<uint64_t>(v) <= 0xFF) {
    p[0] = 'K';
    p[1] = static_cast<char>(v);
    return p + 2;
  }
  if (static_cast<uint64_t>(v) <= 0xFFFF) {
    p[0] = 'M';
    p[1] = static_cast<char>(v);
    p[2] = static_cast<char>(v >> 8);
    return p + 3;
  }
  if (v >= -0x80000000LL && v <= 0x7FFFFFFF) {
    *p = 'J';
    return Le32At(p + 1, static_cast<uint32_t>(v));
  }
  return Long1At(p, static_cast<uint64_t>(v), /*is_signed=*/true);
}
DCPP_ALWAYS_INLINE char* UIntAt(char* p, uint64_t v) {
  if (v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return IntAt(p, static_cast<int64_t>(v));
  return Long1At(p, v, /*is_signed=*/false);
}
// Bytes a torch.Size of `n` dimensions takes at most.
constexpr size_t SizeBound(size_t n) { return 32 + 11 * n; }

// String contents -> memo index, open addressing. Keys are copied into an
// arena of the table's own, so a lookup touches only the table and the
// arena (both small), not wherever the string first appeared. Every chunk
// looks up its file name here, so slots are kept small and short keys are
// compared inline.
class StringMemo {
 public:
  StringMemo() : slots_(64) {}

  // The memo index of `s`, or kUnset after recording `fresh` for it.
  uint32_t FindOrAdd(std::string_view s, uint32_t fresh) {
    const uint64_t h = Hash(s);
    Slot& slot = Probe(s, h);
    if (slot.memo != kUnset) return slot.memo;
    slot = {arena_.size(), static_cast<uint32_t>(s.size()), static_cast<uint32_t>(h), fresh};
    arena_.append(s);
    if (++used_ * 2 > slots_.size()) Rehash();
    return kUnset;
  }
  // The memo index of `s`, or kUnset.
  uint32_t Find(std::string_view s) { return Probe(s, Hash(s)).memo; }

 private:
  struct Slot {
    uint64_t offset = 0;     // in arena_
    uint32_t size = 0;       // strings are shorter than 2^32 (BINUNICODE)
    uint32_t hash = 0;       // low bits of Hash()
    uint32_t memo = kUnset;  // kUnset: empty slot
  };

  static uint64_t Load8(const char* p) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    return w;
  }
  // A value determined by the n < 8 bytes at p (equal bytes, equal value),
  // read with fixed-size loads that may overlap.
  static uint64_t Tail(const char* p, size_t n) {
    if (n >= 4) {
      uint32_t lo, hi;
      std::memcpy(&lo, p, 4);
      std::memcpy(&hi, p + n - 4, 4);
      return lo | uint64_t{hi} << 32;
    }
    if (n >= 2) {
      uint16_t lo, hi;
      std::memcpy(&lo, p, 2);
      std::memcpy(&hi, p + n - 2, 2);
      return lo | uint64_t{hi} << 16;
    }
    return n == 1 ? static_cast<uint8_t>(*p) : 0;
  }
  static uint64_t Hash(std::string_view s) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ s.size();
    size_t i = 0;
    for (; i + 8 <= s.size(); i += 8) {
      h = (h ^ Load8(s.data() + i)) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 31;
    }
    h = (h ^ Tail(s.data() + i, s.size() - i)) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
  }
  static bool Equal(const char* a, const char* b, size_t n) {
    if (n < 8) return Tail(a, n) == Tail(b, n);
    if (n <= 16) return Load8(a) == Load8(b) && Load8(a + n - 8) == Load8(b + n - 8);
    return std::memcmp(a, b, n) == 0;
  }
  // The slot holding `s`, or the empty slot where it belongs.
  Slot& Probe(std::string_view s, uint64_t h) {
    const auto h32 = static_cast<uint32_t>(h);
    for (size_t i = h & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      Slot& slot = slots_[i];
      if (slot.memo == kUnset || (slot.hash == h32 && slot.size == s.size() &&
                                  Equal(arena_.data() + slot.offset, s.data(), s.size())))
        return slot;
    }
  }
  void Rehash() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    for (const Slot& s : old) {
      if (s.memo == kUnset) continue;
      // Rehash the key: the slot keeps only the low bits of its hash.
      const uint64_t h = Hash(std::string_view(arena_.data() + s.offset, s.size));
      size_t i = h & (slots_.size() - 1);
      while (slots_[i].memo != kUnset) i = (i + 1) & (slots_.size() - 1);
      slots_[i] = s;
    }
  }

  std::vector<Slot> slots_;
  std::string arena_;
  size_t used_ = 0;
};

// Emits the pickle program Python's pickler (protocol 2) runs for DCP's
// Metadata object graph, with the same memo entries. Metadata of a large job
// holds millions of chunks, so this writes opcodes straight into one buffer
// (rather than through pickle::Writer), keeps the memo indices of the
// strings and globals every chunk repeats at hand, and writes each chunk's
// records with one bounds check once those are known.
class Encoder {
 public:
  std::string Run(const Metadata& md, const std::string& hint);

 private:
  // Largest opcode with its argument, other than strings and GLOBAL.
  static constexpr size_t kMaxOp = 16;
  // The buffer's size grows in steps this large within its capacity, so
  // each piece is zeroed (by resize) just before it is written, while in
  // cache, and reserved capacity never written costs no memory.
  static constexpr size_t kStep = size_t{256} << 10;

  // Ensures `n` writable bytes at p_.
  void Ensure(size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) Extend(n);
  }
  void Extend(size_t n) {
    const size_t used = static_cast<size_t>(p_ - out_.data());
    const size_t want = used + std::max(n, kStep);
    if (want > out_.capacity()) out_.reserve(std::max(want, out_.capacity() / 2 * 3));
    out_.resize(want);
    p_ = out_.data() + used;
    end_ = out_.data() + out_.size();
  }
  void Op(uint8_t op) {
    Ensure(kMaxOp);
    *p_++ = static_cast<char>(op);
  }
  uint32_t Put() {
    Ensure(kMaxOp);
    p_ = PutAt(p_, next_memo_);
    return next_memo_++;
  }
  void Get(uint32_t index) {
    Ensure(kMaxOp);
    p_ = GetAt(p_, index);
  }
  void None() { Op('N'); }
  void Bool(bool v) { Op(v ? 0x88 : 0x89); }  // NEWTRUE / NEWFALSE
  void Mark() { Op('('); }
  void EmptyTuple() { Op(')'); }
  void EmptyList() { Op(']'); }
  void EmptyDict() { Op('}'); }
  void SetItems() { Op('u'); }
  void Build() { Op('b'); }
  void Reduce() { Op('R'); }
  void Tuple(size_t n) { Op(n == 0 ? ')' : n <= 3 ? static_cast<uint8_t>(0x84 + n) : 't'); }
  void Int(int64_t v) {
    Ensure(kMaxOp);
    p_ = IntAt(p_, v);
  }
  void UInt(uint64_t v) {
    Ensure(kMaxOp);
    p_ = UIntAt(p_, v);
  }

  // A str object of its own: BINUNICODE, memoized. Returns its memo index.
  uint32_t FreshStr(std::string_view s) {
    Ensure(s.size() + kMaxOp);
    *p_++ = 'X';  // BINUNICODE
    p_ = Le32At(p_, static_cast<uint32_t>(s.size()));
    std::memcpy(p_, s.data(), s.size());
    p_ += s.size();
    return Put();
  }
  // Data strings (FQNs, path parts, file names, ...) are memoized by value:
  // Python memoizes str objects by identity, and after unpickling equal
  // strings written once are one object. Returns the string's memo index.
  uint32_t Str(std::string_view s) {
    const uint32_t known = strings_.FindOrAdd(s, next_memo_);
    if (known != kUnset) {
      Get(known);
      return known;
    }
    return FreshStr(s);
  }
  // An attribute name (a key of a dataclass's state dict), whose memo index
  // `*memo` caches. Unpickling interns these keys, so they are objects of
  // their own, one per name and never the same as an equal data string.
  void Key(uint32_t* memo, std::string_view name) {
    if (*memo != kUnset) {
      Get(*memo);
    } else {
      *memo = FreshStr(name);
    }
  }
  void OptStr(const std::optional<std::string>& s) {
    if (s) {
      Str(*s);
    } else {
      None();
    }
  }
  // GLOBAL 'module\nname\n', memoized on first use as Python does.
  void Global(uint32_t* memo, std::string_view module, std::string_view name) {
    if (*memo != kUnset) {
      Get(*memo);
      return;
    }
    Ensure(module.size() + name.size() + kMaxOp);
    *p_++ = 'c';
    std::memcpy(p_, module.data(), module.size());
    p_ += module.size();
    *p_++ = '\n';
    std::memcpy(p_, name.data(), name.size());
    p_ += name.size();
    *p_++ = '\n';
    *memo = Put();
  }
  // `cls.__new__(cls)` as copyreg.__newobj__ pickles it.
  void NewObject(uint32_t* memo, std::string_view module, std::string_view cls) {
    Global(memo, module, cls);
    EmptyTuple();
    Op(0x81);  // NEWOBJ
    Put();
  }
  // The items of a list or dict as CPython's C pickler writes them for an
  // exact list or dict (batch_list_exact / batch_dict_exact, which differ
  // from the pure-Python pickler's): a lone item without MARK (APPEND /
  // SETITEM); otherwise batches of up to 1000 items, each MARK ... APPENDS /
  // SETITEMS, a last batch of one item included; a dict whose size is a
  // multiple of 1000 ends with an empty batch.
  template <typename F>
  void Batched(size_t n, bool dict, F&& item) {
    if (n == 0) return;
    if (n == 1) {
      item(0);
      Op(dict ? 's' : 'a');
      return;
    }
    constexpr size_t kBatch = 1000;
    for (size_t done = 0;;) {
      Mark();
      const size_t m = std::min(kBatch, n - done);
      for (size_t k = 0; k < m; ++k) item(done + k);
      done += m;
      Op(dict ? 'u' : 'e');
      if (dict ? m < kBatch : done == n) break;
    }
  }
  void Size(const Shape& shape) {
    Global(&g_size_, "torch", "Size");
    Ensure(SizeBound(shape.size()));
    p_ = SizeBodyAt(p_, shape, &next_memo_);
  }
  // A torch.Size after its GLOBAL.
  static DCPP_ALWAYS_INLINE char* SizeBodyAt(char* p, const Shape& shape, uint32_t* memo) {
    if (shape.empty()) {
      *p++ = ')';  // the empty tuple is never memoized
    } else {
      if (shape.size() > 3) *p++ = '(';
      for (int64_t d : shape) p = IntAt(p, d);
      *p++ = shape.size() <= 3 ? static_cast<char>(0x84 + shape.size()) : 't';
      p = PutAt(p, (*memo)++);
    }
    *p++ = static_cast<char>(0x85);  // TUPLE1
    p = PutAt(p, (*memo)++);
    *p++ = 'R';
    return PutAt(p, (*memo)++);
  }
  void Properties(const TensorProperties& p);
  void ChunkObject(const ChunkMeta& c);
  void StorageRecord(uint32_t fqn_memo, const Shape* offsets, int64_t index, const StorageInfo& s);
  void StorageInfoObject(const StorageInfo& s);
  void MetadataIndexObject(uint32_t fqn_memo, const Shape* offsets, int64_t index);
  void StorageMetaObject(const StorageMeta& sm);

  std::string out_;
  char* p_ = nullptr;
  char* end_ = nullptr;  // out_.data() + out_.size()
  uint32_t next_memo_ = 0;
  StringMemo strings_;
  // Memo indices of the globals and dict keys every entry or chunk repeats.
  uint32_t g_metadata_ = kUnset, g_tensor_md_ = kUnset, g_bytes_md_ = kUnset, g_chunk_md_ = kUnset,
           g_properties_ = kUnset, g_size_ = kUnset, g_index_ = kUnset, g_storage_info_ = kUnset,
           g_storage_meta_ = kUnset, g_layout_ = kUnset, g_mem_format_ = kUnset;
  uint32_t g_dtype_[kNumDTypes];
  uint32_t k_properties_ = kUnset, k_size_ = kUnset, k_chunks_ = kUnset, k_offsets_ = kUnset,
           k_sizes_ = kUnset, k_fqn_ = kUnset, k_index_ = kUnset, k_offset_ = kUnset,
           k_relative_path_ = kUnset, k_length_ = kUnset, k_transforms_ = kUnset,
           k_checkpoint_id_ = kUnset, k_save_id_ = kUnset, k_load_id_ = kUnset, k_modules_ = kUnset,
           k_state_dict_metadata_ = kUnset, k_planner_data_ = kUnset, k_storage_data_ = kUnset,
           k_storage_meta_ = kUnset, k_version_ = kUnset;
  uint32_t strided_ = kUnset;                           // torch.strided, a singleton in Python
  uint32_t mem_formats_[3] = {kUnset, kUnset, kUnset};  // _MEM_FORMAT_ENCODING members
};

void Encoder::Properties(const TensorProperties& p) {
  NewObject(&g_properties_, kMetaModule, "TensorProperties");
  Mark();
  Global(&g_dtype_[static_cast<size_t>(p.dtype)], "torch", TorchName(p.dtype));
  if (strided_ != kUnset) {
    Get(strided_);
  } else {
    Global(&g_layout_, "torch.serialization", "_get_layout");
    // str(torch.strided), a fresh str: never shared with an equal data string.
    FreshStr("torch.strided");
    Tuple(1);
    Put();
    Reduce();
    strided_ = Put();
  }
  Bool(p.requires_grad);
  const auto code = static_cast<size_t>(p.memory_format);
  if (code < 3 && mem_formats_[code] != kUnset) {
    Get(mem_formats_[code]);
  } else {
    Global(&g_mem_format_, kMetaModule, "_MEM_FORMAT_ENCODING");
    Int(static_cast<int64_t>(code));
    Tuple(1);
    Put();
    Reduce();
    const uint32_t memo = Put();
    if (code < 3) mem_formats_[code] = memo;
  }
  Bool(p.pin_memory);
  Tuple(5);
  Put();
  Build();
}

void Encoder::ChunkObject(const ChunkMeta& c) {
  if (g_chunk_md_ != kUnset && g_size_ != kUnset && k_offsets_ != kUnset && k_sizes_ != kUnset) {
    // Everything it refers to is memoized: one bounds check for it all.
    Ensure(64 + SizeBound(c.offsets.size()) + SizeBound(c.sizes.size()));
    char* p = p_;
    uint32_t memo = next_memo_;
    p = GetAt(p, g_chunk_md_);
    p[0] = ')';
    p[1] = static_cast<char>(0x81);  // NEWOBJ
    p = PutAt(p + 2, memo++);
    *p++ = '}';
    p = PutAt(p, memo++);
    *p++ = '(';
    p = GetAt(p, k_offsets_);
    p = GetAt(p, g_size_);
    p = SizeBodyAt(p, c.offsets, &memo);
    p = GetAt(p, k_sizes_);
    p = GetAt(p, g_size_);
    p = SizeBodyAt(p, c.sizes, &memo);
    p[0] = 'u';  // SETITEMS
    p[1] = 'b';  // BUILD
    p_ = p + 2;
    next_memo_ = memo;
    return;
  }
  NewObject(&g_chunk_md_, kMetaModule, "ChunkStorageMetadata");
  EmptyDict();
  Put();
  Mark();
  Key(&k_offsets_, "offsets");
  Size(c.offsets);
  Key(&k_sizes_, "sizes");
  Size(c.sizes);
  SetItems();
  Build();
}

void Encoder::StorageRecord(uint32_t fqn_memo, const Shape* offsets, int64_t index,
                            const StorageInfo& s) {
  if (offsets != nullptr && s.transform_descriptors.empty() && g_index_ != kUnset &&
      g_size_ != kUnset && g_storage_info_ != kUnset && k_fqn_ != kUnset && k_index_ != kUnset &&
      k_offset_ != kUnset && k_relative_path_ != kUnset && k_length_ != kUnset) {
    const uint32_t path_memo = strings_.Find(s.relative_path);
    if (path_memo != kUnset) {
      // Everything it refers to is memoized: one bounds check for it all.
      Ensure(128 + SizeBound(offsets->size()));
      char* p = p_;
      uint32_t memo = next_memo_;
      // MetadataIndex(fqn=..., index=..., offset=torch.Size(...))
      p = GetAt(p, g_index_);
      p[0] = ')';
      p[1] = static_cast<char>(0x81);  // NEWOBJ
      p = PutAt(p + 2, memo++);
      *p++ = '}';
      p = PutAt(p, memo++);
      *p++ = '(';
      p = GetAt(p, k_fqn_);
      p = GetAt(p, fqn_memo);
      p = GetAt(p, k_index_);
      p = IntAt(p, index);
      p = GetAt(p, k_offset_);
      p = GetAt(p, g_size_);
      p = SizeBodyAt(p, *offsets, &memo);
      p[0] = 'u';  // SETITEMS
      p[1] = 'b';  // BUILD
      // _StorageInfo(relative_path=..., offset=..., length=...)
      p = GetAt(p + 2, g_storage_info_);
      p[0] = ')';
      p[1] = static_cast<char>(0x81);
      p = PutAt(p + 2, memo++);
      *p++ = '}';
      p = PutAt(p, memo++);
      *p++ = '(';
      p = GetAt(p, k_relative_path_);
      p = GetAt(p, path_memo);
      p = GetAt(p, k_offset_);
      p = UIntAt(p, s.offset);
      p = GetAt(p, k_length_);
      p = UIntAt(p, s.length);
      p[0] = 'u';
      p[1] = 'b';
      p_ = p + 2;
      next_memo_ = memo;
      return;
    }
  }
  MetadataIndexObject(fqn_memo, offsets, index);
  StorageInfoObject(s);
}

void Encoder::StorageInfoObject(const StorageInfo& s) {
  NewObject(&g_storage_info_, kFsModule, "_StorageInfo");
  EmptyDict();
  Put();
  Mark();
  Key(&k_relative_path_, "relative_path");
  Str(s.relative_path);
  Key(&k_offset_, "offset");
  UInt(s.offset);
  Key(&k_length_, "length");
  UInt(s.length);
  if (!s.transform_descriptors.empty()) {
    Key(&k_transforms_, "transform_descriptors");
    EmptyList();
    Put();
    Batched(s.transform_descriptors.size(), /*dict=*/false,
            [&](size_t k) { Str(s.transform_descriptors[k]); });
  }
  SetItems();
  Build();
}

void Encoder::MetadataIndexObject(uint32_t fqn_memo, const Shape* offsets, int64_t index) {
  NewObject(&g_index_, kMetaModule, "MetadataIndex");
  EmptyDict();
  Put();
  Mark();
  Key(&k_fqn_, "fqn");
  Get(fqn_memo);
  Key(&k_index_, "index");
  if (offsets != nullptr) {
    Int(index);
    Key(&k_offset_, "offset");
    Size(*offsets);
  } else {
    None();
  }
  SetItems();
  Build();
}

void Encoder::StorageMetaObject(const StorageMeta& sm) {
  NewObject(&g_storage_meta_, kMetaModule, "StorageMeta");
  EmptyDict();
  Put();
  Mark();
  Key(&k_checkpoint_id_, "checkpoint_id");
  OptStr(sm.checkpoint_id);
  Key(&k_save_id_, "save_id");
  OptStr(sm.save_id);
  Key(&k_load_id_, "load_id");
  OptStr(sm.load_id);
  Key(&k_modules_, "modules");
  EmptyList();
  Put();
  Batched(sm.modules.size(), /*dict=*/false, [&](size_t k) { Str(sm.modules[k]); });
  SetItems();
  Build();
}

std::string Encoder::Run(const Metadata& md, const std::string& hint) {
  std::fill(std::begin(g_dtype_), std::end(g_dtype_), kUnset);
  // Capacity for a generous estimate of the output (chunks dominate). Only
  // what is written is ever touched, so the estimate costs address space,
  // not memory.
  size_t estimate = 4096;
  for (const EntryMeta& e : md.entries) {
    estimate += 512 + 2 * e.fqn.size() + 32 * e.path.size();
    for (const ChunkMeta& c : e.chunks) estimate += 176 + 24 * (c.offsets.size() + c.sizes.size());
  }
  out_.reserve(estimate);
  p_ = end_ = out_.data();
  Ensure(kMaxOp);
  *p_++ = static_cast<char>(0x80);  // PROTO 2
  *p_++ = 2;

  // Python memoizes each FQN string once: its later uses are GETs.
  std::vector<uint32_t> fqn_memo(md.entries.size());
  std::optional<StorageMeta> storage_meta = md.storage_meta;
  if (storage_meta && !storage_meta->checkpoint_id && !hint.empty()) {
    storage_meta->checkpoint_id = hint;
  } else if (!storage_meta && !hint.empty()) {
    storage_meta.emplace().checkpoint_id = hint;
  }

  NewObject(&g_metadata_, kMetaModule, "Metadata");
  EmptyDict();
  Put();
  Mark();

  Key(&k_state_dict_metadata_, "state_dict_metadata");
  EmptyDict();
  Put();
  Batched(md.entries.size(), /*dict=*/true, [&](size_t k) {
    const EntryMeta& e = md.entries[k];
    fqn_memo[k] = Str(e.fqn);
    if (!e.is_tensor()) {
      NewObject(&g_bytes_md_, kMetaModule, "BytesStorageMetadata");  // empty __dict__: no BUILD
      return;
    }
    NewObject(&g_tensor_md_, kMetaModule, "TensorStorageMetadata");
    EmptyDict();
    Put();
    Mark();
    Key(&k_properties_, "properties");
    Properties(e.properties);
    Key(&k_size_, "size");
    Size(e.size);
    Key(&k_chunks_, "chunks");
    EmptyList();
    Put();
    Batched(e.chunks.size(), /*dict=*/false, [&](size_t c) { ChunkObject(e.chunks[c]); });
    SetItems();
    Build();
  });

  Key(&k_planner_data_, "planner_data");
  std::vector<size_t> with_path;
  for (size_t k = 0; k < md.entries.size(); ++k) {
    if (!md.entries[k].path.empty()) with_path.push_back(k);
  }
  if (with_path.empty()) {
    None();
  } else {
    EmptyDict();
    Put();
    Batched(with_path.size(), /*dict=*/true, [&](size_t k) {
      const EntryMeta& e = md.entries[with_path[k]];
      Get(fqn_memo[with_path[k]]);
      if (e.path.size() > 3) Mark();
      for (const PathElement& p : e.path) {
        if (const auto* s = std::get_if<std::string>(&p)) {
          Str(*s);
        } else {
          Int(std::get<int64_t>(p));
        }
      }
      Tuple(e.path.size());
      Put();
    });
  }

  Key(&k_storage_data_, "storage_data");
  EmptyDict();
  Put();
  // Records in entry order, chunks in order, batched across entries.
  size_t records = 0;
  for (const EntryMeta& e : md.entries) records += e.is_tensor() ? e.chunks.size() : 1;
  size_t entry = 0, chunk = 0;
  Batched(records, /*dict=*/true, [&](size_t) {
    while (md.entries[entry].is_tensor() && chunk == md.entries[entry].chunks.size()) {
      ++entry;
      chunk = 0;
    }
    const EntryMeta& e = md.entries[entry];
    if (!e.is_tensor()) {
      StorageRecord(fqn_memo[entry], nullptr, 0, e.storage);
      ++entry;
      return;
    }
    const ChunkMeta& c = e.chunks[chunk];
    StorageRecord(fqn_memo[entry], &c.offsets, static_cast<int64_t>(chunk), c.storage);
    ++chunk;
  });

  Key(&k_storage_meta_, "storage_meta");
  if (storage_meta) {
    StorageMetaObject(*storage_meta);
  } else {
    None();
  }

  Key(&k_version_, "version");
  OptStr(md.version);

  SetItems();
  Build();
  Op('.');  // STOP
  out_.resize(static_cast<size_t>(p_ - out_.data()));
  return std::move(out_);
}

}  // namespace

std::string EncodeMetadata(const Metadata& md, const std::string& checkpoint_id_hint) {
  return Encoder().Run(md, checkpoint_id_hint);
}

}  // namespace dcpp::format
