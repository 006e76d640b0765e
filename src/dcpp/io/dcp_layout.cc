#include "dcpp/io/dcp_layout.h"

namespace dcpp::io {

std::string DataFileName(int rank, int n, std::string_view tag) {
  std::string name = "__" + std::to_string(rank) + "_" + std::to_string(n);
  if (!tag.empty()) {
    name += '.';
    name += tag;
  }
  name += kDataFileSuffix;
  return name;
}

std::string TempMetadataName(std::string_view tag) {
  return std::string(kMetadataFileName) + "." + std::string(tag) + ".tmp";
}

bool IsDataFileName(std::string_view name) {
  return name.size() > 2 + kDataFileSuffix.size() && name.substr(0, 2) == "__" &&
         name.ends_with(kDataFileSuffix) && name.find('/') == std::string_view::npos;
}

bool IsTempMetadataName(std::string_view name) {
  return name.size() >= kMetadataFileName.size() + 4 && name.starts_with(kMetadataFileName) &&
         name.ends_with(".tmp") && name.find('/') == std::string_view::npos;
}

}  // namespace dcpp::io
