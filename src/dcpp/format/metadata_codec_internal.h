// Declarations shared by the .metadata decoder (metadata_codec_decode.cc)
// and encoder (metadata_codec_encode.cc). Internal to the format layer.
#ifndef DCPP_FORMAT_METADATA_CODEC_INTERNAL_H_
#define DCPP_FORMAT_METADATA_CODEC_INTERNAL_H_

#include <string_view>

namespace dcpp::format::metadata_internal {

// The Python modules of the classes a DCP .metadata pickles.
constexpr std::string_view kMetaModule = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kFsModule = "torch.distributed.checkpoint.filesystem";
constexpr std::string_view kLegacyModule = "torch.distributed._shard.sharded_tensor.metadata";

}  // namespace dcpp::format::metadata_internal

#endif  // DCPP_FORMAT_METADATA_CODEC_INTERNAL_H_
