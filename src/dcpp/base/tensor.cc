#include "dcpp/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <numeric>
#include <new>

namespace dcpp {

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape ContiguousStrides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

std::string ShapeToString(const Shape& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

size_t TensorView::nbytes() const { return static_cast<size_t>(numel()) * ElementSize(dtype); }

bool TensorView::is_contiguous() const {
  if (numel() <= 1) return true;
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] == 1) continue;  // stride of a size-1 dim is irrelevant
    if (strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

bool TensorView::is_dense() const {
  if (numel() <= 1) return true;
  // Sort dims by stride; the layout is dense iff it is contiguous in that order.
  std::vector<size_t> order;
  for (size_t i = 0; i < shape.size(); ++i)
    if (shape[i] != 1) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return strides[a] < strides[b]; });
  int64_t expected = 1;
  for (size_t i : order) {
    if (strides[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

TensorView MakeView(void* data, DType dtype, Shape shape) {
  TensorView v;
  v.data = data;
  v.dtype = dtype;
  v.strides = ContiguousStrides(shape);
  v.shape = std::move(shape);
  return v;
}

namespace {

// Tensors at least this large are mapped in 2 MiB transparent huge pages.
// Memory the kernel hands a process is zeroed on first touch whatever we
// do, but in 4 KiB pages each first touch is a fault with its own
// accounting (memory cgroup charge, page-table lock, LRU insertion), which
// perf showed costing more than the zeroing itself when a load or convert
// reads into freshly allocated tensors: 2 MiB pages take 512 times fewer.
constexpr size_t kHugeAllocationBytes = size_t{4} << 20;
constexpr size_t kHugePage = size_t{2} << 20;

// An anonymous mapping of at least `bytes`, 2 MiB aligned, advised for huge
// pages; its deleter unmaps it. Null if the mapping fails (the caller falls
// back to the allocator).
std::shared_ptr<void> MapHugePages(size_t bytes) {
#if defined(__linux__)
  const size_t length = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  if (length < bytes || length > SIZE_MAX - kHugePage) return nullptr;
  void* raw = ::mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  // Trim to a 2 MiB aligned start, so every page of it can be a huge page.
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) / kHugePage * kHugePage;
  if (aligned > start) ::munmap(raw, aligned - start);
  const size_t tail = (start + length + kHugePage) - (aligned + length);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + length), tail);
  void* p = reinterpret_cast<void*>(aligned);
  (void)::madvise(p, length, MADV_HUGEPAGE);  // a hint; 4 KiB pages otherwise
  try {
    return std::shared_ptr<void>(p, [length](void* q) { ::munmap(q, length); });
  } catch (const std::bad_alloc&) {  // the control block; the deleter unmapped p
    return nullptr;
  }
#else
  (void)bytes;
  return nullptr;
#endif
}

}  // namespace

Result<Tensor> Tensor::Empty(DType dtype, Shape shape) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0) return InvalidArgumentError("negative dimension in shape " + ShapeToString(shape));
    if (d != 0 && numel > INT64_MAX / d)
      return ResourceExhaustedError("tensor shape " + ShapeToString(shape) + " is too large");
    numel *= d;
  }
  const size_t elem = ElementSize(dtype);
  if (static_cast<uint64_t>(numel) > SIZE_MAX / elem)
    return ResourceExhaustedError("tensor shape " + ShapeToString(shape) + " is too large");
  const size_t bytes = static_cast<size_t>(numel) * elem;
  if (bytes >= kHugeAllocationBytes) {
    if (std::shared_ptr<void> owner = MapHugePages(bytes)) {
      void* data = owner.get();  // before owner is moved into the call
      return Adopt(MakeView(data, dtype, std::move(shape)), std::move(owner));
    }
    // No mapping (address space, or not Linux): the allocator below.
  }
  // 64-byte alignment: SIMD-friendly and what O_DIRECT-style I/O wants.
  void* p = bytes ? std::aligned_alloc(64, (bytes + 63) / 64 * 64) : nullptr;
  if (bytes && !p)
    return ResourceExhaustedError("cannot allocate " + std::to_string(bytes) + " bytes for a tensor");
  std::shared_ptr<void> owner;
  try {
    owner = std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  } catch (const std::bad_alloc&) {  // the control block; the deleter freed p
    return ResourceExhaustedError("cannot allocate " + std::to_string(bytes) +
                                  " bytes for a tensor");
  }
  return Adopt(MakeView(p, dtype, std::move(shape)), std::move(owner));
}

Result<Tensor> Tensor::Zeros(DType dtype, Shape shape) {
  DCPP_ASSIGN_OR_RETURN(Tensor t, Empty(dtype, std::move(shape)));
  if (t.data() != nullptr) std::memset(t.data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::Borrow(TensorView view) {
  Tensor t;
  t.view_ = std::move(view);
  return t;
}

Tensor Tensor::Adopt(TensorView view, std::shared_ptr<void> owner) {
  Tensor t;
  t.view_ = std::move(view);
  // A zero-size tensor may own nothing; keep it "owning" so callers know
  // dcpp allocated it.
  t.owner_ = owner ? std::move(owner) : std::make_shared<char>(0);
  return t;
}

Result<Tensor> Tensor::Clone() const {
  DCPP_ASSIGN_OR_RETURN(Tensor out, Empty(dtype(), shape()));  // CopyTensor fills it
  DCPP_RETURN_IF_ERROR(CopyTensor(view_, out.view()));
  return out;
}

namespace {

// Calls fn(src_byte_offset, dst_byte_offset, run_bytes) for every maximal run
// of elements contiguous in both layouts, in row-major order of the shape.
template <typename Fn>
void ForEachRun(const Shape& full_shape, const Shape& full_a, const Shape& full_b, size_t elem,
                Fn&& fn) {
  if (NumElements(full_shape) == 0) return;
  // Size-1 dims do not move through memory; drop them so runs merge across.
  Shape shape, a_strides, b_strides;
  for (size_t i = 0; i < full_shape.size(); ++i) {
    if (full_shape[i] == 1) continue;
    shape.push_back(full_shape[i]);
    a_strides.push_back(full_a[i]);
    b_strides.push_back(full_b[i]);
  }
  // Merge trailing dims while both layouts are contiguous across them.
  size_t inner = shape.size();
  int64_t run = 1;
  while (inner > 0 && a_strides[inner - 1] == run && b_strides[inner - 1] == run) {
    run *= shape[inner - 1];
    --inner;
  }
  const size_t run_bytes = static_cast<size_t>(run) * elem;
  std::vector<int64_t> idx(inner, 0);
  int64_t a_off = 0, b_off = 0;
  while (true) {
    fn(a_off * static_cast<int64_t>(elem), b_off * static_cast<int64_t>(elem), run_bytes);
    size_t d = inner;
    while (true) {
      if (d == 0) return;  // every index wrapped: done
      --d;
      if (++idx[d] < shape[d]) {
        a_off += a_strides[d];
        b_off += b_strides[d];
        break;
      }
      a_off -= a_strides[d] * (shape[d] - 1);
      b_off -= b_strides[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

}  // namespace

Status CopyTensor(const TensorView& src, const TensorView& dst) {
  if (src.dtype != dst.dtype)
    return InvalidArgumentError("cannot copy " + std::string(TorchName(src.dtype)) + " into " +
                                std::string(TorchName(dst.dtype)));
  if (src.shape != dst.shape)
    return InvalidArgumentError("cannot copy shape " + ShapeToString(src.shape) + " into " +
                                ShapeToString(dst.shape));
  if (src.strides.size() != src.shape.size() || dst.strides.size() != dst.shape.size())
    return InvalidArgumentError("tensor strides do not match its rank");
  const size_t elem = ElementSize(src.dtype);
  const auto* s = static_cast<const char*>(src.data);
  auto* d = static_cast<char*>(dst.data);
  ForEachRun(src.shape, src.strides, dst.strides, elem,
             [&](int64_t so, int64_t dof, size_t n) { std::memmove(d + dof, s + so, n); });
  return Status();
}

bool Tensor::BitwiseEquals(const Tensor& other) const {
  if (dtype() != other.dtype() || shape() != other.shape()) return false;
  bool equal = true;
  const auto* a = static_cast<const char*>(data());
  const auto* b = static_cast<const char*>(other.data());
  ForEachRun(shape(), strides(), other.strides(), ElementSize(dtype()),
             [&](int64_t ao, int64_t bo, size_t n) {
               if (equal && std::memcmp(a + ao, b + bo, n) != 0) equal = false;
             });
  return equal;
}

}  // namespace dcpp
