#include "dcpp/io/file.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <limits>
#include <string>
#include <utility>

#include "dcpp/base/os_error.h"

namespace dcpp::io {
namespace {

// Linux transfers at most 0x7ffff000 bytes per read/write call; asking for
// less keeps every request well inside ssize_t on all platforms.
constexpr size_t kMaxIoChunk = size_t{1} << 30;

#ifdef IOV_MAX
constexpr int kMaxIov = IOV_MAX;
#else
constexpr int kMaxIov = 1024;
#endif

Status OsError(std::string_view op, const std::string& path) {
  int err = errno;
  std::string context(op);
  context += " ";
  context += path;
  return ErrnoToStatus(err, context);
}

// pread/pwrite take off_t; offsets beyond it cannot be addressed.
bool OffsetFits(uint64_t offset, uint64_t len) {
  constexpr uint64_t kMaxOff = static_cast<uint64_t>(std::numeric_limits<off_t>::max());
  return offset <= kMaxOff && len <= kMaxOff - offset;
}

Status OffsetError(const std::string& path, uint64_t offset, uint64_t len) {
  return InvalidArgumentError(path + ": byte range [" + std::to_string(offset) + ", +" +
                              std::to_string(len) + ") is beyond the largest file offset");
}

void CloseQuietly(int fd) {
  if (fd >= 0) ::close(fd);  // errors cannot be reported from here
}

}  // namespace

File::File(File&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), path_(std::move(other.path_)) {}

File& File::operator=(File&& other) noexcept {
  if (this != &other) {
    CloseQuietly(fd_);
    fd_ = std::exchange(other.fd_, -1);
    path_ = std::move(other.path_);
  }
  return *this;
}

File::~File() { CloseQuietly(fd_); }

const char* FileKind(mode_t mode) {
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// Refuses what is not a regular file: reading a FIFO blocks until a writer
// appears (forever, for a hostile checkpoint), a device can be endless.
Status CheckRegular(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return OsError("stat", path);
  if (S_ISREG(st.st_mode)) return Status::Ok();
  return InvalidArgumentError(path + " is " + FileKind(st.st_mode) +
                              ", not a regular file: refused");
}

Result<File> File::OpenForRead(const std::string& path) {
  int fd;
  // O_NONBLOCK: opening a FIFO then returns at once instead of waiting for
  // a writer; it has no effect on regular files.
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return OsError("open", path);
  File file(fd, path);
  DCPP_RETURN_IF_ERROR(CheckRegular(fd, path));
  return file;
}

Result<File> File::CreateForWrite(const std::string& path) {
  int fd;
  // O_NONBLOCK: a FIFO in the way fails (ENXIO) instead of blocking;
  // O_NOFOLLOW: never write through a symlink to somewhere else.
  do {
    fd = ::open(path.c_str(),
                O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NONBLOCK | O_NOCTTY | O_NOFOLLOW,
                0644);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return OsError("create", path);
  File file(fd, path);
  DCPP_RETURN_IF_ERROR(CheckRegular(fd, path));
  return file;
}

Result<uint64_t> File::Size() const {
  if (fd_ < 0) return InternalError(path_ + ": Size() on a closed file");
  struct stat st;
  if (::fstat(fd_, &st) != 0) return OsError("stat", path_);
  return static_cast<uint64_t>(st.st_size);
}

Status File::ReadAt(uint64_t offset, std::span<uint8_t> out) const {
  if (out.empty()) return Status::Ok();
  if (fd_ < 0) return InternalError(path_ + ": ReadAt() on a closed file");
  if (!OffsetFits(offset, out.size())) return OffsetError(path_, offset, out.size());
  size_t done = 0;
  while (done < out.size()) {
    size_t want = std::min(out.size() - done, kMaxIoChunk);
    ssize_t n = ::pread(fd_, out.data() + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return OsError("read", path_);
    }
    if (n == 0) {
      std::string size_text = "unknown";
      if (auto size = Size(); size.ok()) size_text = std::to_string(*size);
      return DataLossError(path_ + ": unexpected end of file: wanted " +
                           std::to_string(out.size()) + " bytes at offset " +
                           std::to_string(offset) + ", file has " + size_text + " bytes");
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status File::WriteAt(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return Status::Ok();
  if (fd_ < 0) return InternalError(path_ + ": WriteAt() on a closed file");
  if (!OffsetFits(offset, data.size())) return OffsetError(path_, offset, data.size());
  size_t done = 0;
  while (done < data.size()) {
    size_t want = std::min(data.size() - done, kMaxIoChunk);
    ssize_t n = ::pwrite(fd_, data.data() + done, want, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return OsError("write", path_);
    }
    // pwrite returning 0 for a non-empty request would loop forever.
    if (n == 0) return InternalError("write " + path_ + ": wrote 0 bytes");
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Status File::WriteVAt(uint64_t offset, std::span<const std::span<const uint8_t>> pieces) {
  if (fd_ < 0) return InternalError(path_ + ": WriteVAt() on a closed file");
  uint64_t total = 0;
  for (const auto& p : pieces) {
    if (p.size() > UINT64_MAX - total) return OffsetError(path_, offset, UINT64_MAX);
    total += p.size();
  }
  if (!OffsetFits(offset, total)) return OffsetError(path_, offset, total);

  std::vector<struct iovec> iov;
  iov.reserve(std::min<size_t>(pieces.size(), kMaxIov));
  size_t index = 0;  // first piece not fully written
  size_t skip = 0;   // bytes of pieces[index] already written
  uint64_t written = 0;
  while (index < pieces.size()) {
    if (pieces[index].size() == skip) {  // also skips empty pieces
      ++index;
      skip = 0;
      continue;
    }
    // Gather up to IOV_MAX pieces and kMaxIoChunk bytes.
    iov.clear();
    size_t batch_bytes = 0;
    for (size_t i = index; i < pieces.size() && iov.size() < static_cast<size_t>(kMaxIov) &&
                           batch_bytes < kMaxIoChunk;
         ++i) {
      const uint8_t* base = pieces[i].data();
      size_t len = pieces[i].size();
      if (i == index) {
        base += skip;
        len -= skip;
      }
      if (len == 0) continue;
      len = std::min(len, kMaxIoChunk - batch_bytes);
      iov.push_back({const_cast<uint8_t*>(base), len});
      batch_bytes += len;
    }
    ssize_t n = ::pwritev(fd_, iov.data(), static_cast<int>(iov.size()),
                          static_cast<off_t>(offset + written));
    if (n < 0) {
      if (errno == EINTR) continue;
      return OsError("write", path_);
    }
    if (n == 0) return InternalError("write " + path_ + ": wrote 0 bytes");
    written += static_cast<uint64_t>(n);
    // Advance (index, skip) past the n bytes just written.
    size_t left = static_cast<size_t>(n);
    while (left > 0) {
      size_t room = pieces[index].size() - skip;
      if (left < room) {
        skip += left;
        left = 0;
      } else {
        left -= room;
        ++index;
        skip = 0;
      }
    }
  }
  return Status::Ok();
}

void File::StartWriteback(uint64_t offset, uint64_t length) {
#if defined(__linux__)
  if (fd_ < 0 || length == 0 || !OffsetFits(offset, length)) return;
  // Errors are ignored on purpose: the Sync() that follows reports any
  // failure to write these pages.
  (void)::sync_file_range(fd_, static_cast<off64_t>(offset), static_cast<off64_t>(length),
                          SYNC_FILE_RANGE_WRITE);
#else
  (void)offset;
  (void)length;
#endif
}

Status File::Sync() {
  if (fd_ < 0) return InternalError(path_ + ": Sync() on a closed file");
#if defined(__APPLE__)
  int rc = ::fsync(fd_);
#else
  int rc = ::fdatasync(fd_);
#endif
  if (rc != 0) return OsError("sync", path_);
  return Status::Ok();
}

Result<uint64_t> File::CopyFrom(const File& src, uint64_t src_offset, uint64_t offset,
                                uint64_t length) {
  if (fd_ < 0 || src.fd_ < 0) return InternalError(path_ + ": CopyFrom() on a closed file");
  if (!OffsetFits(offset, length)) return OffsetError(path_, offset, length);
  if (!OffsetFits(src_offset, length)) return OffsetError(src.path_, src_offset, length);
  uint64_t done = 0;
#if defined(__linux__)
  while (done < length) {
    loff_t in = static_cast<loff_t>(src_offset + done), out = static_cast<loff_t>(offset + done);
    const size_t want = static_cast<size_t>(std::min<uint64_t>(length - done, kMaxIoChunk));
    const ssize_t n = ::copy_file_range(src.fd_, &in, fd_, &out, want, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      // The kernel cannot copy between these two: the caller copies the rest.
      if (errno == ENOSYS || errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP ||
          errno == EBADF || errno == ETXTBSY || errno == EPERM)
        return done;
      return OsError("copy " + src.path_ + " to", path_);
    }
    if (n == 0)
      return DataLossError(src.path_ + ": unexpected end of file: wanted " +
                           std::to_string(length) + " bytes at offset " +
                           std::to_string(src_offset));
    done += static_cast<uint64_t>(n);
  }
#endif
  return done;
}

Status File::Close() {
  if (fd_ < 0) return Status::Ok();
  int fd = std::exchange(fd_, -1);
  // POSIX leaves the descriptor state unspecified after EINTR; on Linux it is
  // always released, so retrying could close an unrelated, reused descriptor.
  if (::close(fd) != 0 && errno != EINTR) return OsError("close", path_);
  return Status::Ok();
}

Status CreateDirectories(const std::string& path) {
  if (path.empty()) return InvalidArgumentError("CreateDirectories: empty path");
  // Walk the prefixes ending before each '/', then the whole path.
  size_t pos = 0;
  while (true) {
    size_t slash = path.find('/', pos);
    std::string prefix = slash == std::string::npos ? path : path.substr(0, slash);
    pos = slash == std::string::npos ? path.size() : slash + 1;
    if (!prefix.empty() && prefix.back() != '/') {
      if (::mkdir(prefix.c_str(), 0755) != 0) {
        int err = errno;
        if (err != EEXIST) {
          errno = err;
          return OsError("mkdir", prefix);
        }
        struct stat st;
        if (::stat(prefix.c_str(), &st) != 0) return OsError("stat", prefix);
        if (!S_ISDIR(st.st_mode)) {
          return AlreadyExistsError("mkdir " + prefix + ": exists and is not a directory" +
                                    (prefix == path ? "" : " (creating " + path + ")"));
        }
      }
    }
    if (slash == std::string::npos) break;
  }
  return Status::Ok();
}

Status SyncDirectory(const std::string& dir) {
  int fd;
  do {
    fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return OsError("open directory", dir);
  Status status;
  if (::fsync(fd) != 0) status = OsError("sync directory", dir);
  CloseQuietly(fd);
  return status;
}

Result<bool> Exists(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT || errno == ENOTDIR) return false;
  return OsError("stat", path);
}

Result<bool> IsDirectory(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return S_ISDIR(st.st_mode);
  if (errno == ENOENT || errno == ENOTDIR) return false;
  return OsError("stat", path);
}

Result<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes) {
  DCPP_ASSIGN_OR_RETURN(File file, File::OpenForRead(path));
  DCPP_ASSIGN_OR_RETURN(uint64_t size, file.Size());
  if (size > max_bytes) {
    return ResourceExhaustedError(path + ": file has " + std::to_string(size) +
                                  " bytes, more than the limit of " + std::to_string(max_bytes));
  }
  std::string out;
  out.resize(static_cast<size_t>(size));
  DCPP_RETURN_IF_ERROR(
      file.ReadAt(0, std::span<uint8_t>(reinterpret_cast<uint8_t*>(out.data()), out.size())));
  DCPP_RETURN_IF_ERROR(file.Close());
  return out;
}

Status WriteFileAtomically(const std::string& path, std::span<const uint8_t> data, bool sync) {
  const std::string tmp = path + ".tmp";
  Status status = [&]() -> Status {
    DCPP_ASSIGN_OR_RETURN(File file, File::CreateForWrite(tmp));
    DCPP_RETURN_IF_ERROR(file.WriteAt(0, data));
    if (sync) DCPP_RETURN_IF_ERROR(file.Sync());
    DCPP_RETURN_IF_ERROR(file.Close());
    return RenameFile(tmp, path);
  }();
  if (!status.ok()) {
    // The temporary may not exist (create failed) or may be something we do
    // not own (a directory named like it): unlink fails harmlessly then.
    ::unlink(tmp.c_str());
    return status;
  }
  if (sync) DCPP_RETURN_IF_ERROR(SyncDirectory(ParentDirectory(path)));
  return Status::Ok();
}

Status RenameFile(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return OsError("rename " + from + " to", to);
  return Status::Ok();
}

Status RemoveFile(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return OsError("remove", path);
  return Status::Ok();
}

Result<std::vector<std::string>> ListDirectory(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return OsError("list directory", dir);
  std::vector<std::string> names;
  while (true) {
    errno = 0;
    struct dirent* e = ::readdir(d);
    if (e == nullptr) {
      if (errno != 0) {
        Status status = OsError("list directory", dir);
        ::closedir(d);
        return status;
      }
      break;
    }
    std::string_view name(e->d_name);
    if (name == "." || name == "..") continue;
    names.emplace_back(name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());
  return names;
}

std::string JoinPath(std::string_view dir, std::string_view name) {
  while (!name.empty() && name.front() == '/') name.remove_prefix(1);
  if (dir.empty()) return std::string(name);
  std::string out(dir);
  if (out.back() != '/') out += '/';
  out += name;
  return out;
}

std::string ParentDirectory(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);
  size_t slash = path.rfind('/');
  if (slash == std::string_view::npos) return ".";
  std::string_view parent = path.substr(0, slash);
  while (!parent.empty() && parent.back() == '/') parent.remove_suffix(1);
  if (parent.empty()) return "/";
  return std::string(parent);
}

}  // namespace dcpp::io
