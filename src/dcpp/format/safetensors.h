// The safetensors file format (Hugging Face), as the safetensors 0.8 package
// reads and writes it. Pure: bytes in, structs out, and back; no I/O.
//
// A file is
//   8 bytes   N, the header's length, little-endian unsigned
//   N bytes   the header: a JSON object. Each member but "__metadata__" is a
//             tensor: {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]}
//             with [b, e) its bytes relative to the end of the header;
//             "__metadata__" (optional) maps strings to strings. The package
//             pads the header with spaces so that 8 + N is a multiple of 8.
//   the data  every tensor's elements, row-major, little-endian, back to back
//             with no gap and nothing after the last one.
//
// Reading is strict where the package is (it refuses the same files) and
// stricter where that costs nothing: a repeated key is an error here (the
// package keeps the last). Every error names the tensor and says what is
// wrong. Writing reproduces the package's bytes: tensors ordered by dtype
// (the package's enum order, largest first, which keeps every tensor aligned
// to its element size), then by name; compact JSON; space padding.
//
// Thread safety: free functions over values; safe to call concurrently.
#ifndef DCPP_FORMAT_SAFETENSORS_H_
#define DCPP_FORMAT_SAFETENSORS_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dcpp/dtype.h"
#include "dcpp/status.h"
#include "dcpp/tensor.h"

namespace dcpp::format::safetensors {

// The package's cap on N (its MAX_HEADER_SIZE); a longer header is refused
// before anything is allocated for it.
inline constexpr uint64_t kMaxHeaderSize = 100'000'000;
// Bytes of the length prefix.
inline constexpr uint64_t kPrefixSize = 8;
// The "__metadata__" key.
inline constexpr std::string_view kMetadataKey = "__metadata__";

// A dtype the format knows, by its safetensors name ("F32", "F8_E4M3"), with
// its size in bits (4 for F4, 6 for the F6 types) and the DType dcpp holds
// it as (none for the sub-byte types F4, F6_E2M3 and F6_E3M2).
struct DTypeInfo {
  std::string_view name;
  int bits = 0;
  std::optional<DType> dtype;
  int rank = 0;  // position in the package's dtype enum: the write order
};

// The entry for a safetensors dtype name, or nullopt if the format has no
// such dtype.
std::optional<DTypeInfo> LookupDType(std::string_view name);
// The entry for a dcpp DType, or nullopt if safetensors cannot store it
// (complex128 only).
std::optional<DTypeInfo> LookupDType(DType dtype);

// One tensor of a header: its bytes are [begin, end) of the data section.
struct TensorInfo {
  std::string name;
  DTypeInfo dtype;
  Shape shape;
  uint64_t begin = 0;
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
};

struct Header {
  // In the order of their data (by begin): the order the package writes.
  std::vector<TensorInfo> tensors;
  // "__metadata__", in the header's order; empty if absent (or null).
  std::vector<std::pair<std::string, std::string>> metadata;
  // Where the data section starts in the file: 8 + N.
  uint64_t data_offset = 0;
  // Bytes of the data section (the file's size - data_offset).
  uint64_t data_size = 0;

  // The tensor named `name`, or nullptr (linear).
  const TensorInfo* Find(std::string_view name) const;
  // The value of metadata key `key`, or nullptr (linear).
  const std::string* FindMetadata(std::string_view key) const;
};

// N from the first 8 bytes of a file of `file_size` bytes. DataLoss if the
// file is shorter than 8 bytes or than 8 + N; ResourceExhausted if N exceeds
// `max_header_size` (at most kMaxHeaderSize is what the package accepts).
Result<uint64_t> ParseHeaderLength(std::span<const uint8_t> prefix, uint64_t file_size,
                                   uint64_t max_header_size = kMaxHeaderSize);

// Parses and checks the header text (the N bytes after the prefix) of a file
// of `file_size` bytes: valid JSON object; every dtype known; shapes of
// non-negative integers whose element count times the dtype's bits is a
// whole number of bytes equal to e - b; data_offsets in bounds, each tensor
// starting where the one before ended, the first at 0 and the last ending at
// the end of the file; "__metadata__" a map of strings (or null). DataLoss
// naming the tensor otherwise; ResourceExhausted past kMaxHeaderSize.
Result<Header> ParseHeader(std::string_view header_text, uint64_t file_size);

// Both: `file_prefix` is the start of the file, at least 8 + N bytes of it
// (the whole file will do). InvalidArgument if `file_prefix` is too short
// to hold the header (the caller should read more: see ParseHeaderLength).
Result<Header> Parse(std::span<const uint8_t> file_prefix, uint64_t file_size);

// A tensor to write: name, dtype and shape (its bytes are the caller's).
struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  Shape shape;
};

// The start of a file the package would write for these tensors: the 8-byte
// prefix and the padded header, and where each tensor's bytes go.
struct Encoded {
  std::string prefix_and_header;  // write at offset 0
  // Parallel to the input specs: each tensor's [begin, end) in the data
  // section, which starts at prefix_and_header.size().
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  uint64_t data_size = 0;  // total bytes of the data section
  uint64_t file_size() const { return prefix_and_header.size() + data_size; }
};

// Lays out a file for `tensors` with `metadata` ("__metadata__"; written
// only when not empty, its pairs in the given order; the package writes its
// map in an unspecified order, so files with two or more metadata pairs
// match it only up to that order). InvalidArgument for a repeated or empty
// name, the name "__metadata__", a repeated metadata key, a dtype
// safetensors cannot store (complex128), a negative dimension, or a header
// larger than kMaxHeaderSize.
Result<Encoded> Encode(std::span<const TensorSpec> tensors,
                       std::span<const std::pair<std::string, std::string>> metadata = {});

}  // namespace dcpp::format::safetensors

#endif  // DCPP_FORMAT_SAFETENSORS_H_
