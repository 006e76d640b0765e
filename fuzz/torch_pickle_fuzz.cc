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
