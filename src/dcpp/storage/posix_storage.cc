// Storage over a POSIX directory (io/file.h underneath).
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "dcpp/base/os_error.h"
#include "dcpp/io/file.h"
#include "dcpp/storage/storage.h"

namespace dcpp::storage {
namespace {

// The first line of the lock file open as `fd`.
std::string ReadHolderLine(int fd) {
  char buf[1024];
  const ssize_t n = ::pread(fd, buf, sizeof(buf), 0);
  std::string line = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  if (const size_t nl = line.find('\n'); nl != std::string::npos) line.resize(nl);
  return line;
}

// Whether a holder line ("pid=<pid> host=<host> ...") may name the current
// holder: not empty, and not a process of this host that no longer exists.
bool HolderLooksCurrent(const std::string& line) {
  if (line.empty()) return false;
  const size_t p = line.find("pid="), h = line.find(" host=");
  if (p != 0 || h == std::string::npos) return true;  // not ours to judge
  const size_t host_end = line.find(' ', h + 6);
  const std::string host = line.substr(h + 6, host_end == std::string::npos ? std::string::npos
                                                                            : host_end - h - 6);
  char self[256] = {};
  if (::gethostname(self, sizeof(self) - 1) != 0 || host != self) return true;
  const long pid = std::strtol(line.c_str() + 4, nullptr, 10);
  return pid <= 0 || ::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH;
}


class PosixReadable final : public ReadableFile {
 public:
  explicit PosixReadable(io::File file) : file_(std::move(file)) {}
  Result<uint64_t> Size() const override { return file_.Size(); }
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const override {
    return file_.ReadAt(offset, out);
  }
  const io::File& file() const { return file_; }

 private:
  io::File file_;
};

class PosixWritable final : public WritableFile {
 public:
  explicit PosixWritable(io::File file) : file_(std::move(file)) {}
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data) override {
    return file_.WriteAt(offset, data);
  }
  Status WriteVAt(uint64_t offset, std::span<const std::span<const uint8_t>> pieces) override {
    return file_.WriteVAt(offset, pieces);
  }
  Status Sync() override { return file_.Sync(); }
  void StartWriteback(uint64_t offset, uint64_t length) override {
    file_.StartWriteback(offset, length);
  }
  Status Close() override { return file_.Close(); }
  Result<uint64_t> CopyFrom(const ReadableFile& src, uint64_t src_offset, uint64_t offset,
                            uint64_t length) override {
    const auto* posix = dynamic_cast<const PosixReadable*>(&src);
    if (!posix) return uint64_t{0};
    return file_.CopyFrom(posix->file(), src_offset, offset, length);
  }

 private:
  io::File file_;
};

class PosixLock final : public StorageLock {
 public:
  explicit PosixLock(int fd) : fd_(fd) {}
  // Closing the descriptor releases the flock. The file stays: removing it
  // would let a second process lock a new file of the same name while a
  // third still holds the old one.
  ~PosixLock() override { ::close(fd_); }

 private:
  int fd_;
};

Result<std::string> RealPath(const std::string& path) {
  char buf[PATH_MAX];
  if (::realpath(path.c_str(), buf) == nullptr) return ErrnoToStatus(errno, "resolve " + path);
  return std::string(buf);
}

class PosixStorage final : public Storage {
 public:
  explicit PosixStorage(std::string dir) : dir_(std::move(dir)) {
    while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
  }

  std::string Describe(std::string_view name) const override {
    return name.empty() ? dir_ : io::JoinPath(dir_, name);
  }

  Status CreateLocation() override { return io::CreateDirectories(dir_); }

  Result<std::unique_ptr<ReadableFile>> OpenForRead(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(std::string path, Resolve(name));
    // A symlink (or a symlinked folder on the way) may point anywhere:
    // follow it only when it stays inside the directory.
    struct stat st;
    const bool has_folder = name.find('/') != std::string_view::npos;
    if (has_folder || (::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode)))
      DCPP_RETURN_IF_ERROR(CheckInside(path));
    auto file = io::File::OpenForRead(path);
    if (!file.ok()) {
      if (file.status().code() == StatusCode::kInvalidArgument)
        return DataLossError(file.status().message());  // a FIFO, device ... in a checkpoint
      return file.status();
    }
    return std::unique_ptr<ReadableFile>(new PosixReadable(std::move(*file)));
  }

  Result<std::unique_ptr<WritableFile>> CreateForWrite(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(std::string path, Resolve(name));
    if (name.find('/') != std::string_view::npos)
      DCPP_RETURN_IF_ERROR(CheckInside(io::ParentDirectory(path)));
    DCPP_ASSIGN_OR_RETURN(io::File file, io::File::CreateForWrite(path));
    return std::unique_ptr<WritableFile>(new PosixWritable(std::move(file)));
  }

  Result<uint64_t> Size(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(std::unique_ptr<ReadableFile> f, OpenForRead(name));
    return f->Size();
  }

  Result<std::vector<std::string>> List() override {
    DCPP_ASSIGN_OR_RETURN(bool is_dir, io::IsDirectory(dir_));
    if (!is_dir) {
      DCPP_ASSIGN_OR_RETURN(bool exists, io::Exists(dir_));
      if (!exists) return NotFoundError("checkpoint directory " + dir_ + " does not exist");
      return InvalidArgumentError(dir_ + " is not a directory: a checkpoint is a directory");
    }
    return io::ListDirectory(dir_);
  }

  Status Rename(std::string_view from, std::string_view to) override {
    DCPP_ASSIGN_OR_RETURN(std::string a, Resolve(from));
    DCPP_ASSIGN_OR_RETURN(std::string b, Resolve(to));
    return io::RenameFile(a, b);
  }

  Status Remove(std::string_view name) override {
    DCPP_ASSIGN_OR_RETURN(std::string path, Resolve(name));
    return io::RemoveFile(path);
  }

  Status SyncDirectory() override { return io::SyncDirectory(dir_); }

  Result<std::unique_ptr<StorageLock>> TryLock(std::string_view name,
                                               std::string_view holder) override {
    DCPP_ASSIGN_OR_RETURN(std::string path, Resolve(name));
    int fd;
    do {
      fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY,
                  0644);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0) return ErrnoToStatus(errno, "open lock file " + path);
    std::unique_ptr<PosixLock> lock(new PosixLock(fd));
    struct stat st;
    if (::fstat(fd, &st) != 0) return ErrnoToStatus(errno, "stat " + path);
    if (!S_ISREG(st.st_mode)) return DataLossError(path + " (the lock file) is not a regular file");
    int rc;
    do {
      rc = ::flock(fd, LOCK_EX | LOCK_NB);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0) {
      if (errno != EWOULDBLOCK) return ErrnoToStatus(errno, "lock " + path);
      // The holder records its line just after taking the lock: until then
      // the file is empty or still names the previous, finished holder.
      // Give it a moment before quoting what the file says.
      std::string line;
      for (int attempt = 0; attempt < 40; ++attempt) {
        line = ReadHolderLine(fd);
        if (HolderLooksCurrent(line)) break;
        ::usleep(5000);
      }
      if (line.empty()) line = "holder not recorded yet";
      return AbortedError(dir_ + " is locked by another save (" + path + ": " + line + ")");
    }
    // We hold it: record who we are for a competitor's error message. The
    // line is written over the old one first and the file cut to its length
    // afterwards, so a competitor never reads an empty file.
    std::string line(holder);
    line += '\n';
    size_t done = 0;
    while (done < line.size()) {
      const ssize_t n = ::pwrite(fd, line.data() + done, line.size() - done, done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return ErrnoToStatus(n < 0 ? errno : EIO, "write " + path);
      done += static_cast<size_t>(n);
    }
    if (::ftruncate(fd, static_cast<off_t>(line.size())) != 0)
      return ErrnoToStatus(errno, "truncate " + path);
    return std::unique_ptr<StorageLock>(std::move(lock));
  }

 private:
  Result<std::string> Resolve(std::string_view name) const {
    Status s = CheckEntryName(name);
    if (!s.ok()) return s.WithContext(dir_);
    return io::JoinPath(dir_, name);
  }

  // DataLoss unless `path`, all symlinks resolved, lies inside the
  // directory (also resolved: the directory itself may be a symlink).
  Status CheckInside(const std::string& path) const {
    DCPP_ASSIGN_OR_RETURN(std::string root, RealPath(dir_));
    auto real = RealPath(path);
    if (!real.ok()) return real.status();
    if (root != "/") root += '/';
    if (real->compare(0, root.size(), root) != 0)
      return DataLossError(path + " resolves to " + *real +
                           ", outside the checkpoint directory " + dir_ +
                           " (a symlink leaves it): refused");
    return Status();
  }

  std::string dir_;
};

}  // namespace

std::unique_ptr<Storage> NewPosixStorage(std::string dir) {
  return std::make_unique<PosixStorage>(std::move(dir));
}

}  // namespace dcpp::storage
