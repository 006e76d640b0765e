// Element types, named and sized as PyTorch names and sizes them.
#ifndef DCPP_DTYPE_H_
#define DCPP_DTYPE_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace dcpp {

// Every dtype a DCP checkpoint can hold. The numeric values are not persisted
// (checkpoints store torch's names), so they may change between releases.
enum class DType : uint8_t {
  kFloat64,
  kFloat32,
  kFloat16,
  kBFloat16,
  kComplex64,
  kComplex128,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt8,
  kUInt16,
  kUInt32,
  kUInt64,
  kBool,
  kFloat8E4M3FN,
  kFloat8E5M2,
  kFloat8E4M3FNUZ,
  kFloat8E5M2FNUZ,
  kFloat8E8M0FNU,
};

inline constexpr int kNumDTypes = 20;

// Bytes per element (1 for bool and the float8 types).
size_t ElementSize(DType dtype);

// torch's name without the "torch." prefix: "float32", "bfloat16", "uint8".
std::string_view TorchName(DType dtype);

// Inverse of TorchName; also accepts torch's aliases ("float", "double", "half",
// "long", "int", "short", "cfloat", "cdouble"). nullopt for unknown names.
std::optional<DType> DTypeFromTorchName(std::string_view name);

// Name of the legacy typed storage class torch.save uses for this dtype
// ("FloatStorage"), or empty for dtypes saved through UntypedStorage
// (_rebuild_tensor_v3: uint16/32/64 and the float8 types).
std::string_view LegacyStorageName(DType dtype);
std::optional<DType> DTypeFromLegacyStorageName(std::string_view name);

// Safetensors' dtype string ("F32", "BF16", "F8_E4M3"); empty if it has none.
std::string_view SafetensorsName(DType dtype);

}  // namespace dcpp

#endif  // DCPP_DTYPE_H_
