// Tensors: a non-owning view (TensorView) and a view that may own its bytes
// (Tensor). Shapes and strides are in elements, as in torch.
#ifndef DCPP_TENSOR_H_
#define DCPP_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dcpp/dtype.h"
#include "dcpp/status.h"

namespace dcpp {

using Shape = std::vector<int64_t>;

// Number of elements of a shape (1 for a 0-d shape). REQUIRES: dims >= 0.
int64_t NumElements(const Shape& shape);

// Row-major strides for `shape` ({} for 0-d).
Shape ContiguousStrides(const Shape& shape);

// "[4, 16]"
std::string ShapeToString(const Shape& shape);

// Describes memory someone else owns. Copying a view never copies data.
// `strides` has one entry per dimension and may be any non-negative layout
// (permuted, sliced); `data` points at element [0, 0, ...]. For a zero-size
// tensor `data` may be null.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  Shape shape;
  Shape strides;

  int64_t numel() const { return NumElements(shape); }
  // numel() * ElementSize(dtype): the bytes of the logical tensor.
  size_t nbytes() const;
  bool is_contiguous() const;
  // True if the elements occupy exactly nbytes() bytes starting at `data`
  // (contiguous, or a permutation of a contiguous layout, like a transpose).
  bool is_dense() const;
};

// A contiguous view over `data`.
TensorView MakeView(void* data, DType dtype, Shape shape);

// A tensor: a view plus, optionally, the ownership of the memory behind it.
// Tensors returned by dcpp own their bytes; Tensor::Borrow wraps caller memory
// (which must outlive the Tensor and every copy of it). Copies share the same
// bytes (like torch tensors); use Clone() for a deep copy. Not thread-safe for
// concurrent writes to the same bytes, like any memory.
class Tensor {
 public:
  Tensor() = default;

  // Allocates a contiguous, zero-filled tensor. Fails with ResourceExhausted
  // when the allocation fails and InvalidArgument for negative dims.
  static Result<Tensor> Zeros(DType dtype, Shape shape);
  // Like Zeros, but the bytes are left uninitialized (torch.empty): for
  // memory that is about to be overwritten in full, so it is written once,
  // not zero-filled first. Same errors as Zeros.
  static Result<Tensor> Empty(DType dtype, Shape shape);
  // Wraps caller memory without taking ownership.
  static Tensor Borrow(TensorView view);
  // Takes shared ownership of `owner`, which keeps `view.data` alive.
  static Tensor Adopt(TensorView view, std::shared_ptr<void> owner);

  const TensorView& view() const { return view_; }
  void* data() const { return view_.data; }
  DType dtype() const { return view_.dtype; }
  const Shape& shape() const { return view_.shape; }
  const Shape& strides() const { return view_.strides; }
  int64_t numel() const { return view_.numel(); }
  size_t nbytes() const { return view_.nbytes(); }
  bool owns_data() const { return owner_ != nullptr; }

  // A contiguous, owning deep copy.
  Result<Tensor> Clone() const;

  // True when dtype, shape and every element's bytes are equal (bitwise: a NaN
  // equals the same NaN; -0.0 differs from 0.0).
  bool BitwiseEquals(const Tensor& other) const;

 private:
  TensorView view_;
  std::shared_ptr<void> owner_;
};

// Copies the elements of `src` into `dst`, honouring both layouts.
// REQUIRES: same dtype and shape (checked: InvalidArgument otherwise).
Status CopyTensor(const TensorView& src, const TensorView& dst);

}  // namespace dcpp

#endif  // DCPP_TENSOR_H_
