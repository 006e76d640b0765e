// Fuzzes the JSON parser: any input must parse or fail with a Status, never
// crash. Whatever parses must serialize (compact and indented) to text that
// parses back to an equal value and serializes to the same text again.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "dcpp/format/json.h"

namespace json = dcpp::format::json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  json::ParseOptions options;
  options.max_depth = 64;
  options.max_values = 100000;
  // The first byte, when present, also picks the duplicate-key policy so
  // both paths are explored from one corpus.
  options.allow_duplicate_keys = size > 0 && (data[0] & 1);
  dcpp::Result<json::Json> value = json::Parse(text, options);
  if (!value.ok()) return 0;
  for (int indent : {-1, 2}) {
    const std::string out = json::Serialize(*value, indent);
    dcpp::Result<json::Json> again = json::Parse(out, options);
    if (!again.ok() || !(*again == *value)) std::abort();
    if (json::Serialize(*again, indent) != out) std::abort();
  }
  return 0;
}
