#include "dcpp/io/dcp_layout.h"

#include "dcpp/format/metadata_codec.h"
#include "dcpp/io/file.h"

namespace dcpp::io {

namespace {
// .metadata of a 100k-tensor, 1000-rank checkpoint is far below this; a
// larger file is treated as corrupt rather than read into memory.
constexpr uint64_t kMaxMetadataBytes = uint64_t{4} << 30;
}  // namespace

std::string DataFileName(int rank, int n, std::string_view tag) {
  std::string name = "__" + std::to_string(rank) + "_" + std::to_string(n);
  if (!tag.empty()) {
    name += '.';
    name += tag;
  }
  name += kDataFileSuffix;
  return name;
}

Result<bool> HasCommittedCheckpoint(const std::string& dir) {
  return Exists(JoinPath(dir, kMetadataFileName));
}

Result<std::string> ReadCheckpointMetadataBytes(const std::string& dir) {
  DCPP_ASSIGN_OR_RETURN(bool dir_exists, Exists(dir));
  if (!dir_exists) return NotFoundError("checkpoint directory " + dir + " does not exist");
  DCPP_ASSIGN_OR_RETURN(bool is_dir, IsDirectory(dir));
  if (!is_dir) return InvalidArgumentError(dir + " is not a directory: a checkpoint is a directory");
  const std::string path = JoinPath(dir, kMetadataFileName);
  DCPP_ASSIGN_OR_RETURN(bool committed, Exists(path));
  if (!committed)
    return NotFoundError(dir + " holds no committed checkpoint: " + std::string(kMetadataFileName) +
                         " is missing (a save that did not finish leaves none)");
  return ReadWholeFile(path, kMaxMetadataBytes);
}

Result<Metadata> DecodeCheckpointMetadata(const std::string& dir, std::string_view bytes) {
  auto md = format::DecodeMetadata(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  if (!md.ok()) return md.status().WithContext(JoinPath(dir, kMetadataFileName));
  return md;
}

Result<Metadata> ReadCheckpointMetadata(const std::string& dir) {
  DCPP_ASSIGN_OR_RETURN(std::string bytes, ReadCheckpointMetadataBytes(dir));
  return DecodeCheckpointMetadata(dir, bytes);
}

Status CommitMetadata(const std::string& dir, const Metadata& md, bool sync) {
  const std::string bytes = format::EncodeMetadata(md);
  return WriteFileAtomically(
      JoinPath(dir, kMetadataFileName),
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), sync);
}

Result<std::string> ResolveDataPath(const std::string& dir, std::string_view rel) {
  auto bad = [&](const char* why) {
    return DataLossError("metadata names data file '" + std::string(rel) + "', which " + why);
  };
  if (rel.empty()) return bad("is empty");
  if (rel.front() == '/') return bad("is an absolute path");
  if (rel.find('\0') != std::string_view::npos) return bad("contains a NUL byte");
  size_t start = 0;
  while (start <= rel.size()) {
    size_t end = rel.find('/', start);
    if (end == std::string_view::npos) end = rel.size();
    if (rel.substr(start, end - start) == "..") return bad("leaves the checkpoint directory");
    start = end + 1;
  }
  return JoinPath(dir, rel);
}

}  // namespace dcpp::io
