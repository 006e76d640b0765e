#include "dcpp/dtype.h"

#include <array>

namespace dcpp {
namespace {

struct DTypeInfo {
  DType dtype;
  size_t size;
  std::string_view torch_name;
  std::string_view legacy_storage;  // empty: saved through UntypedStorage
  std::string_view safetensors;
};

// One row per DType, in enum order. Names verified against torch 2.13
// (torch.float8_e4m3fn etc.) and the safetensors dtype table.
constexpr std::array<DTypeInfo, kNumDTypes> kInfo = {{
    {DType::kFloat64, 8, "float64", "DoubleStorage", "F64"},
    {DType::kFloat32, 4, "float32", "FloatStorage", "F32"},
    {DType::kFloat16, 2, "float16", "HalfStorage", "F16"},
    {DType::kBFloat16, 2, "bfloat16", "BFloat16Storage", "BF16"},
    {DType::kComplex64, 8, "complex64", "ComplexFloatStorage", "C64"},
    {DType::kComplex128, 16, "complex128", "ComplexDoubleStorage", ""},
    {DType::kInt8, 1, "int8", "CharStorage", "I8"},
    {DType::kInt16, 2, "int16", "ShortStorage", "I16"},
    {DType::kInt32, 4, "int32", "IntStorage", "I32"},
    {DType::kInt64, 8, "int64", "LongStorage", "I64"},
    {DType::kUInt8, 1, "uint8", "ByteStorage", "U8"},
    {DType::kUInt16, 2, "uint16", "", "U16"},
    {DType::kUInt32, 4, "uint32", "", "U32"},
    {DType::kUInt64, 8, "uint64", "", "U64"},
    {DType::kBool, 1, "bool", "BoolStorage", "BOOL"},
    {DType::kFloat8E4M3FN, 1, "float8_e4m3fn", "", "F8_E4M3"},
    {DType::kFloat8E5M2, 1, "float8_e5m2", "", "F8_E5M2"},
    {DType::kFloat8E4M3FNUZ, 1, "float8_e4m3fnuz", "", "F8_E4M3FNUZ"},
    {DType::kFloat8E5M2FNUZ, 1, "float8_e5m2fnuz", "", "F8_E5M2FNUZ"},
    {DType::kFloat8E8M0FNU, 1, "float8_e8m0fnu", "", "F8_E8M0"},
}};

const DTypeInfo& Info(DType d) { return kInfo[static_cast<size_t>(d)]; }

static_assert([] {
  for (size_t i = 0; i < kInfo.size(); ++i)
    if (static_cast<size_t>(kInfo[i].dtype) != i) return false;
  return true;
}(), "kInfo must follow the DType enum order");

}  // namespace

size_t ElementSize(DType dtype) { return Info(dtype).size; }
std::string_view TorchName(DType dtype) { return Info(dtype).torch_name; }
std::string_view LegacyStorageName(DType dtype) { return Info(dtype).legacy_storage; }
std::string_view SafetensorsName(DType dtype) { return Info(dtype).safetensors; }

std::optional<DType> DTypeFromTorchName(std::string_view name) {
  for (const auto& i : kInfo)
    if (i.torch_name == name) return i.dtype;
  struct Alias { std::string_view name; DType dtype; };
  static constexpr Alias kAliases[] = {
      {"double", DType::kFloat64}, {"float", DType::kFloat32},  {"half", DType::kFloat16},
      {"cfloat", DType::kComplex64}, {"cdouble", DType::kComplex128}, {"short", DType::kInt16},
      {"int", DType::kInt32},      {"long", DType::kInt64},
  };
  for (const auto& a : kAliases)
    if (a.name == name) return a.dtype;
  return std::nullopt;
}

std::optional<DType> DTypeFromLegacyStorageName(std::string_view name) {
  for (const auto& i : kInfo)
    if (!i.legacy_storage.empty() && i.legacy_storage == name) return i.dtype;
  return std::nullopt;
}

}  // namespace dcpp
