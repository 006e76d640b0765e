#include "dcpp/storage/storage.h"

#include "dcpp/storage/s3_storage.h"

namespace dcpp::storage {

Status CheckEntryName(std::string_view name) {
  auto bad = [&](const char* why) {
    return DataLossError("entry name '" + std::string(name) + "' " + why);
  };
  if (name.empty()) return bad("is empty");
  if (name.front() == '/') return bad("is an absolute path");
  if (name.find('\0') != std::string_view::npos) return bad("contains a NUL byte");
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    const std::string_view part = name.substr(start, end - start);
    if (part == "..") return bad("leaves the checkpoint directory");
    if (part.empty() || part == ".") return bad("has an empty or '.' component");
    start = end + 1;
  }
  return Status();
}

Result<std::unique_ptr<Storage>> OpenStorage(const std::string& location) {
  if (location.empty()) return InvalidArgumentError("checkpoint path is empty");
  // A URL scheme ("s3://bucket/prefix") selects another implementation;
  // none is built in yet. A plain path never contains "://".
  const size_t scheme = location.find("://");
  if (scheme != std::string::npos) {
    if (location.compare(0, scheme, "file") == 0)
      return NewPosixStorage(location.substr(scheme + 3));
    if (location.compare(0, scheme, "s3") == 0) return OpenS3Storage(location);
    return UnimplementedError("checkpoint location " + location + ": scheme '" +
                              location.substr(0, scheme) +
                              "' is not supported (directories, file:// and s3:// are)");
  }
  return NewPosixStorage(location);
}

}  // namespace dcpp::storage
