// libFuzzer target for the .metadata codec: DecodeMetadata must return a
// Status, never crash, on any input; whatever the fast path accepts, the
// general path (the pickle VM it falls back to) must decode to the same
// Metadata; and whatever DecodeMetadata accepts must survive
// EncodeMetadata -> DecodeMetadata unchanged (the encoder writes everything
// the decoder reads). The compact form a load plans over decodes the same
// inputs to the same Metadata, and load planning over it makes the same
// decisions as over the Metadata.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "dcpp/format/compact_metadata.h"
#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/metadata_codec_internal.h"
#include "dcpp/plan/compact_load_planner.h"
#include "dcpp/plan/load_planner.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace mi = dcpp::format::metadata_internal;
  const std::span<const uint8_t> bytes(data, size);
  auto fast = mi::DecodeMetadataFast(bytes);
  auto md = mi::DecodeMetadataGeneral(bytes);
  if (fast && (!md.ok() || !(*fast == *md))) __builtin_trap();
  auto compact = dcpp::format::DecodeCompactMetadata(bytes);
  if (compact.ok() != md.ok()) __builtin_trap();
  if (!md.ok()) return 0;
  // Every tensor read whole: the same plan size, or the same error.
  std::vector<dcpp::plan::TensorRequest> requests;
  std::vector<dcpp::plan::CompactRequest> compact_requests;
  for (size_t k = 0; k < md->entries.size(); ++k) {
    const dcpp::EntryMeta& e = md->entries[k];
    if (!e.is_tensor()) continue;
    dcpp::plan::Box whole{dcpp::Shape(e.size.size(), 0), e.size};
    requests.push_back({&e, whole});
    compact_requests.push_back({k, whole});
  }
  auto plan = dcpp::plan::PlanTensorReads(requests);
  auto compact_plan = dcpp::plan::PlanCompactReads(*compact, compact_requests);
  if (plan.ok() != compact_plan.ok()) __builtin_trap();
  if (plan.ok() && plan->reads.size() != compact_plan->reads.size()) __builtin_trap();
  if (!plan.ok() && plan.status().ToString() != compact_plan.status().ToString()) __builtin_trap();
  if (!(dcpp::format::Expand(std::move(*compact)) == *md)) __builtin_trap();
  auto again = dcpp::format::DecodeMetadata(dcpp::format::EncodeMetadata(*md));
  if (!again.ok() || !(*again == *md)) __builtin_trap();
  return 0;
}
