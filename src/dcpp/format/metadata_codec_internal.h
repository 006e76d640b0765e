// Declarations shared by the .metadata decoder (metadata_codec_decode.cc,
// metadata_codec_fast.cc) and encoder (metadata_codec_encode.cc). Internal
// to the format layer (and its tests, fuzz target and benchmarks).
#ifndef DCPP_FORMAT_METADATA_CODEC_INTERNAL_H_
#define DCPP_FORMAT_METADATA_CODEC_INTERNAL_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "dcpp/format/compact_metadata.h"
#include "dcpp/metadata.h"
#include "dcpp/status.h"

namespace dcpp::format::metadata_internal {

// The Python modules of the classes a DCP .metadata pickles.
constexpr std::string_view kMetaModule = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kFsModule = "torch.distributed.checkpoint.filesystem";
constexpr std::string_view kLegacyModule = "torch.distributed._shard.sharded_tensor.metadata";

// DecodeMetadata is DecodeMetadataFast, and DecodeMetadataGeneral wherever
// the fast path declines.

// The general path (metadata_codec_decode.cc): the safe pickle VM builds a
// graph of the whole pickle, which is then walked. Accepts and reports
// exactly what metadata_codec.h documents.
Result<Metadata> DecodeMetadataGeneral(std::span<const uint8_t> bytes);

// The fast path (metadata_codec_fast.cc; its header comment says what it
// accepts): a streaming reader for the pickles DCP's writers produce.
// Returns the Metadata DecodeMetadataGeneral returns for `bytes`, or nullopt
// (declines) for anything it does not recognize or would have to reject;
// it never reports errors itself. Where both succeed they are equal (the
// fuzz target checks this). It has no pickle-VM caps, so it also decodes
// files beyond the general path's node and memo caps (more than ~500,000
// chunks). Thread-safe; memory: the result plus a bit per memo entry and
// a few KiB.
std::optional<Metadata> DecodeMetadataFast(std::span<const uint8_t> bytes);

// The same decoder without the final expansion: the compact form
// (compact_metadata.h), and memory: that result plus the same small state.
// Expand(*DecodeCompactMetadataFast(b)) == *DecodeMetadataFast(b).
std::optional<CompactMetadata> DecodeCompactMetadataFast(std::span<const uint8_t> bytes);

}  // namespace dcpp::format::metadata_internal

#endif  // DCPP_FORMAT_METADATA_CODEC_INTERNAL_H_
