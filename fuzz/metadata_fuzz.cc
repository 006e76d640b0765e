// libFuzzer target for the .metadata codec: DecodeMetadata must return a
// Status, never crash, on any input; and whatever it accepts must survive
// EncodeMetadata -> DecodeMetadata unchanged (the encoder writes everything
// the decoder reads).
#include <cstddef>
#include <cstdint>
#include <span>

#include "dcpp/format/metadata_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto md = dcpp::format::DecodeMetadata(std::span<const uint8_t>(data, size));
  if (!md.ok()) return 0;
  auto again = dcpp::format::DecodeMetadata(dcpp::format::EncodeMetadata(*md));
  if (!again.ok() || !(*again == *md)) __builtin_trap();
  return 0;
}
