// The DCP checkpoint layout's names (FileSystemWriter/FileSystemReader in
// torch): data files `__{rank}_{n}[.{tag}].distcp` and `.metadata`, which is
// written last through a temporary name and a rename (the commit). Names
// only; reading and committing go through storage/dcp_layout.h.
#ifndef DCPP_IO_DCP_LAYOUT_H_
#define DCPP_IO_DCP_LAYOUT_H_

#include <string>
#include <string_view>

namespace dcpp::io {

inline constexpr std::string_view kMetadataFileName = ".metadata";
inline constexpr std::string_view kDataFileSuffix = ".distcp";
// The lock file a saving coordinator flocks (see storage/dcp_layout.h).
// Never removed: removing it would break the exclusion.
inline constexpr std::string_view kLockFileName = ".dcpp.lock";

// "__{rank}_{n}.distcp", or "__{rank}_{n}.{tag}.distcp" when `tag` is not
// empty (dcpp tags every save's data files, so two saves never write the
// same file and a committed checkpoint's files stay intact until the new
// .metadata replaces it).
std::string DataFileName(int rank, int n, std::string_view tag = {});

// ".metadata.{tag}.tmp": the name a save writes its metadata under before
// renaming it to .metadata.
std::string TempMetadataName(std::string_view tag);

// Whether `name` matches the data-file pattern of dcpp and DCP
// (`__*.distcp`) / the temporary metadata pattern (`.metadata*.tmp`, torch's
// `.metadata.tmp` among them): what a save may reclaim when its committed
// .metadata does not reference it.
bool IsDataFileName(std::string_view name);
bool IsTempMetadataName(std::string_view name);

}  // namespace dcpp::io

#endif  // DCPP_IO_DCP_LAYOUT_H_
