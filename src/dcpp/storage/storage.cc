#include "dcpp/storage/storage.h"

#include "dcpp/io/file.h"
#include "dcpp/storage/s3_storage.h"
#include "dcpp/storage/safetensors_layout.h"
#include "dcpp/storage/torch_save_layout.h"

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

namespace {

// A directory, or a single existing `*.safetensors` file, which opens as a
// read-only view of its directory showing that file alone.
std::unique_ptr<Storage> OpenPosixLocation(const std::string& path) {
  constexpr std::string_view kSuffix = kSafetensorsSuffix;
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  if (p.size() > kSuffix.size() &&
      p.compare(p.size() - kSuffix.size(), kSuffix.size(), kSuffix) == 0) {
    auto dir = io::IsDirectory(p);
    auto exists = io::Exists(p);
    if (dir.ok() && !*dir && exists.ok() && *exists) {
      const size_t slash = p.rfind('/');
      std::string parent = slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
      return NewSingleFileStorage(NewPosixStorage(std::move(parent)),
                                  slash == std::string::npos ? p : p.substr(slash + 1));
    }
  }
  // Any other existing file that starts like a zip archive (or a pickle,
  // torch's legacy format, so that the error says so): a torch.save file.
  auto dir = io::IsDirectory(p);
  auto exists = io::Exists(p);
  if (dir.ok() && !*dir && exists.ok() && *exists) {
    auto file = io::File::OpenForRead(p);
    std::string head(4, '\0');
    if (file.ok()) {
      auto size = file->Size();
      if (size.ok() && *size >= 4 &&
          file->ReadAt(0, {reinterpret_cast<uint8_t*>(head.data()), head.size()}).ok() &&
          (LooksLikeZip(head) || static_cast<unsigned char>(head[0]) == 0x80)) {
        const size_t slash = p.rfind('/');
        std::string parent =
            slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
        return NewTorchSaveStorage(NewPosixStorage(std::move(parent)),
                                   slash == std::string::npos ? p : p.substr(slash + 1));
      }
    }
  }
  return NewPosixStorage(path);
}

}  // namespace

Result<std::unique_ptr<Storage>> OpenStorage(const std::string& location) {
  if (location.empty()) return InvalidArgumentError("checkpoint path is empty");
  // A URL scheme ("s3://bucket/prefix") selects another implementation;
  // none is built in yet. A plain path never contains "://".
  const size_t scheme = location.find("://");
  if (scheme != std::string::npos) {
    if (location.compare(0, scheme, "file") == 0)
      return OpenPosixLocation(location.substr(scheme + 3));
    if (location.compare(0, scheme, "s3") == 0) return OpenS3Storage(location);
    return UnimplementedError("checkpoint location " + location + ": scheme '" +
                              location.substr(0, scheme) +
                              "' is not supported (directories, file:// and s3:// are)");
  }
  return OpenPosixLocation(location);
}

}  // namespace dcpp::storage
