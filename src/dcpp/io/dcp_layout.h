// The DCP filesystem layout: where a checkpoint's files are and how the
// commit happens (FileSystemWriter/FileSystemReader in torch). One directory
// holds data files `__{rank}_{n}.distcp` and `.metadata`, written last through
// `.metadata.tmp` + rename; the directory is fsynced after the rename.
#ifndef DCPP_IO_DCP_LAYOUT_H_
#define DCPP_IO_DCP_LAYOUT_H_

#include <string>
#include <string_view>

#include "dcpp/metadata.h"
#include "dcpp/status.h"

namespace dcpp::io {

inline constexpr std::string_view kMetadataFileName = ".metadata";
inline constexpr std::string_view kDataFileSuffix = ".distcp";

// "__{rank}_{n}.distcp", or "__{rank}_{n}.{tag}.distcp" when `tag` is not
// empty (dcpp tags data files when replacing a checkpoint in place, so the
// old checkpoint's files stay intact until the new .metadata commits).
std::string DataFileName(int rank, int n, std::string_view tag = {});

// Reads and decodes `dir/.metadata`. NotFound names the missing directory or
// says the directory holds no committed checkpoint; decoding errors are
// prefixed with the file's path.
Result<Metadata> ReadCheckpointMetadata(const std::string& dir);

// The two halves of ReadCheckpointMetadata, for callers that pass the bytes
// on (a load shares rank 0's read with the other ranks): the file's bytes
// (the same NotFound errors), and their decoding (errors prefixed with the
// path of dir's .metadata).
Result<std::string> ReadCheckpointMetadataBytes(const std::string& dir);
Result<Metadata> DecodeCheckpointMetadata(const std::string& dir, std::string_view bytes);

// Whether `dir/.metadata` exists (a committed checkpoint is there).
Result<bool> HasCommittedCheckpoint(const std::string& dir);

// Encodes `md` and publishes it as `dir/.metadata` atomically (tmp file,
// fsync, rename, directory fsync when `sync`). This is the commit point.
Status CommitMetadata(const std::string& dir, const Metadata& md, bool sync);

// `dir/relative_path`, after checking that `relative_path` (read from
// untrusted metadata) names a file inside `dir`: not empty, not absolute, no
// ".." component. DataLoss otherwise.
Result<std::string> ResolveDataPath(const std::string& dir, std::string_view relative_path);

}  // namespace dcpp::io

#endif  // DCPP_IO_DCP_LAYOUT_H_
