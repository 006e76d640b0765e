// Fuzzes the torch.save data.pkl codec: DecodeTensorArchive and
// DecodeValueArchive must return a value or a Status on any input, never crash
// or read outside it. An input starting with "PK" is used as a whole archive
// (covering the zip and record checks); anything else becomes the data.pkl of
// a well-formed archive that also holds two storage records, so mutations
// reach the pickle interpretation instead of dying in the zip reader.
// Values that decode must encode again (unless they are Opaque), and the
// result must decode to an equal value.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/format/torch_pickle.h"
#include "dcpp/format/zip.h"

namespace {

namespace format = dcpp::format;
namespace zip = dcpp::format::zip;

// Elements of the tensors in `v` (saturating): re-encoding makes non-dense
// tensors contiguous, and an expanded tensor (zero strides) may be far
// larger than its storage, so huge ones are not re-encoded.
uint64_t TensorElements(const dcpp::Value& v, int depth) {
  if (depth > 300) return 0;
  auto add = [](uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; };
  uint64_t n = 0;
  switch (v.kind()) {
    case dcpp::Value::Kind::kTensor:
      return static_cast<uint64_t>(v.tensor().numel());
    case dcpp::Value::Kind::kList:
    case dcpp::Value::Kind::kTuple:
      for (const auto& item : v.items()) n = add(n, TensorElements(item, depth + 1));
      return n;
    case dcpp::Value::Kind::kDict:
      for (const auto& k : v.dict().keys()) n = add(n, TensorElements(k, depth + 1));
      for (const auto& x : v.dict().values()) n = add(n, TensorElements(x, depth + 1));
      return n;
    default:
      return 0;
  }
}

void Check(zip::Bytes archive) {
  auto tensor = format::DecodeTensorArchive(archive);
  if (tensor.ok()) {
    // The storage must lie inside the archive.
    if (tensor->storage.data() < archive.data() ||
        tensor->storage.data() + tensor->storage.size() > archive.data() + archive.size()) {
      std::abort();
    }
  }
  auto value = format::DecodeValueArchive(archive, "fuzz");
  if (!value.ok() || value->kind() == dcpp::Value::Kind::kOpaque) return;
  if (TensorElements(*value, 0) > (uint64_t{1} << 22)) return;
  auto encoded = format::EncodeValueArchive(*value);
  // Decoded values never hold what the encoder refuses, except dict keys
  // that only differ from an equal key in kind (e.g. 1 and True), which
  // encode fine too; so encoding must succeed.
  if (!encoded.ok()) std::abort();
  auto again = format::DecodeValueArchive(zip::AsBytes(*encoded), "fuzz");
  if (!again.ok() || !again->Equals(*value)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const zip::Bytes input(data, size);
  if (size >= 2 && data[0] == 'P' && data[1] == 'K') {
    Check(input);
    return 0;
  }
  static const std::string kStorage0(64, '\x3f');
  static const std::string kStorage1(6, '\x01');
  const std::vector<zip::RecordSpec> records = {
      {"data.pkl", input},
      {"byteorder", zip::AsBytes("little")},
      {"data/0", zip::AsBytes(kStorage0)},
      {"data/1", zip::AsBytes(kStorage1)},
      {"version", zip::AsBytes("3\n")},
  };
  const std::string archive = zip::LayOut(records).Flatten();
  Check(zip::AsBytes(archive));
  return 0;
}
