// Fuzzes the safetensors header codec: any input, taken as a whole file,
// must parse or fail with a Status, never crash. Whatever parses (with only
// dtypes dcpp holds) must encode again to a header that parses back to the
// same tensors and metadata, with the same data section size.
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string>
#include <vector>

#include "dcpp/format/safetensors.h"

namespace st = dcpp::format::safetensors;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dcpp::Result<st::Header> h = st::Parse(std::span<const uint8_t>(data, size), size);
  if (!h.ok()) return 0;
  if (h->data_offset > size || h->data_offset + h->data_size != size) std::abort();
  std::vector<st::TensorSpec> specs;
  for (const st::TensorInfo& t : h->tensors) {
    if (t.end > h->data_size || t.begin > t.end) std::abort();
    if (!t.dtype.dtype) return 0;  // sub-byte types: dcpp cannot hold them
    specs.push_back({t.name, *t.dtype.dtype, t.shape});
  }
  dcpp::Result<st::Encoded> enc = st::Encode(specs, h->metadata);
  // Names the parser accepts that the writer refuses: "" only.
  if (!enc.ok()) return 0;
  if (enc->data_size != h->data_size) std::abort();
  const std::string file = enc->prefix_and_header + std::string(enc->data_size, '\0');
  dcpp::Result<st::Header> again = st::Parse(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(file.data()), file.size()),
      file.size());
  if (!again.ok() || again->tensors.size() != h->tensors.size() || again->metadata != h->metadata)
    std::abort();
  for (const st::TensorInfo& t : again->tensors) {
    const st::TensorInfo* before = h->Find(t.name);
    if (!before || before->shape != t.shape || before->dtype.name != t.dtype.name ||
        before->nbytes() != t.nbytes())
      std::abort();
  }
  return 0;
}
