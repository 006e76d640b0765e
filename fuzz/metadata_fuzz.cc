// libFuzzer target for the .metadata codec: DecodeMetadata must return a
// Status, never crash, on any input; whatever the fast path accepts, the
// general path (the pickle VM it falls back to) must decode to the same
// Metadata; and whatever DecodeMetadata accepts must survive
// EncodeMetadata -> DecodeMetadata unchanged (the encoder writes everything
// the decoder reads).
#include <cstddef>
#include <cstdint>
#include <span>

#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/metadata_codec_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace mi = dcpp::format::metadata_internal;
  const std::span<const uint8_t> bytes(data, size);
  auto fast = mi::DecodeMetadataFast(bytes);
  auto md = mi::DecodeMetadataGeneral(bytes);
  if (fast && (!md.ok() || !(*fast == *md))) __builtin_trap();
  if (!md.ok()) return 0;
  auto again = dcpp::format::DecodeMetadata(dcpp::format::EncodeMetadata(*md));
  if (!again.ok() || !(*again == *md)) __builtin_trap();
  return 0;
}
