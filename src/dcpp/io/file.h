// POSIX files: positional reads and writes, fsync, atomic publication.
//
// Every error names the path it concerns; OS errors are translated by
// ErrnoToStatus (base/os_error.h). Nothing here buffers: each call is one or
// more system calls.
#ifndef DCPP_IO_FILE_H_
#define DCPP_IO_FILE_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/status.h"

namespace dcpp::io {

// An open file descriptor, closed when the File is destroyed. Move-only.
//
// Thread safety: ReadAt/WriteAt/WriteVAt use positional I/O (pread/pwrite)
// and never move a shared file offset, so concurrent calls on distinct byte
// ranges are safe. Sync() may run concurrently with them. Close() and moves
// must not race with anything else on the same File.
class File {
 public:
  File() = default;  // not open
  File(File&& other) noexcept;
  File& operator=(File&& other) noexcept;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  // Closes silently if still open; call Close() to see close errors.
  ~File();

  // Opens an existing file read-only (O_CLOEXEC). NotFound if it is missing;
  // InvalidArgument naming the path and its kind if it is not a regular file
  // (a FIFO, device, socket or directory), found without blocking
  // (O_NONBLOCK, then fstat). Follows symlinks.
  static Result<File> OpenForRead(const std::string& path);
  // Creates or truncates `path` for writing (O_WRONLY|O_CREAT|O_TRUNC|
  // O_CLOEXEC, mode 0644 before umask). Never follows a symlink at `path`
  // (O_NOFOLLOW: an OS error) and never blocks on a FIFO there
  // (InvalidArgument or the OS error).
  static Result<File> CreateForWrite(const std::string& path);

  bool is_open() const { return fd_ >= 0; }
  const std::string& path() const { return path_; }

  // Current size in bytes (fstat).
  Result<uint64_t> Size() const;

  // Fills all of `out` from `offset`. Retries short reads and EINTR. Reading
  // past the end of the file is DataLoss ("<path>: unexpected end of file:
  // wanted N bytes at offset O, file has S bytes"); `out` is then partially
  // written. Empty `out` is OK without touching the file.
  Status ReadAt(uint64_t offset, std::span<uint8_t> out) const;

  // Writes all of `data` at `offset`, retrying short writes and EINTR.
  Status WriteAt(uint64_t offset, std::span<const uint8_t> data);

  // Writes `pieces` back to back starting at `offset` with pwritev, retrying
  // partial writes and splitting batches larger than IOV_MAX. Lets an archive
  // made of owned headers and borrowed tensor bytes go out without a copy.
  Status WriteVAt(uint64_t offset, std::span<const std::span<const uint8_t>> pieces);

  // Flushes the file's data (and the metadata needed to read it) to stable
  // storage (fdatasync).
  Status Sync();

  // Copies up to `length` bytes at `src_offset` of `src` to `offset` of this
  // file inside the kernel (copy_file_range: one copy through the page
  // cache, none through user memory), retrying short copies and EINTR.
  // Returns the bytes copied: fewer than `length` (possibly 0) when the
  // kernel cannot copy between these files (no copy_file_range, different
  // file systems, a special file), which the caller then copies itself from
  // there on. DataLoss if `src` ends before `src_offset + length`.
  Result<uint64_t> CopyFrom(const File& src, uint64_t src_offset, uint64_t offset,
                            uint64_t length);

  // Starts write-back of [offset, offset + length) without waiting for it
  // (Linux: sync_file_range(SYNC_FILE_RANGE_WRITE)), so that a later Sync()
  // has less left to wait for. A hint: durability still needs Sync(), and
  // where the OS has no such call, or the call fails, nothing happens.
  void StartWriteback(uint64_t offset, uint64_t length);

  // Closes the descriptor and reports a failing close (on some file systems
  // the first sign of a lost write). The File is closed afterwards even on
  // error. Closing a closed File is OK.
  Status Close();

 private:
  File(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

  int fd_ = -1;
  std::string path_;
};

// mkdir -p: creates `path` and any missing parents (mode 0755 before umask).
// OK if it already exists as a directory; AlreadyExists if it, or a parent,
// exists as something else.
Status CreateDirectories(const std::string& path);

// fsyncs the directory itself, so that entries created or renamed in it
// survive a crash.
Status SyncDirectory(const std::string& dir);

// Whether something exists at `path` (follows symlinks). Errors other than
// "does not exist" (e.g. permission denied on a parent) are returned.
Result<bool> Exists(const std::string& path);

// Whether `path` exists and is a directory (follows symlinks). A missing path
// is false, not an error.
Result<bool> IsDirectory(const std::string& path);

// The whole content of `path`. ResourceExhausted if it is larger than
// `max_bytes` (a cap against reading huge or hostile files into memory).
Result<std::string> ReadWholeFile(const std::string& path, uint64_t max_bytes);

// Publishes `data` at `path` atomically: writes `path`+".tmp", fsyncs it if
// `sync`, renames it over `path`, then fsyncs the parent directory if `sync`.
// Readers see either the old file or the new one, never a mix. On failure the
// temporary file is removed (best effort) and an existing `path` is left
// untouched. Not safe against a concurrent writer of the same `path`.
Status WriteFileAtomically(const std::string& path, std::span<const uint8_t> data, bool sync);

// rename(2): atomically replaces `to` if it exists. Both must be on one file
// system (otherwise the OS error, EXDEV, becomes Internal).
Status RenameFile(const std::string& from, const std::string& to);

// unlink(2). A missing file is NotFound; callers that do not care ignore it.
Status RemoveFile(const std::string& path);

// The entry names in `dir` (not full paths), sorted bytewise, without "." and
// "..".
Result<std::vector<std::string>> ListDirectory(const std::string& dir);

// "dir/name", with exactly one '/' between them. An empty `dir` gives `name`;
// an absolute `name` is still appended (it is never treated as a root).
std::string JoinPath(std::string_view dir, std::string_view name);

// The directory part of `path`: "a/b" for "a/b/c", "." for "c", "/" for "/c"
// and "/". Trailing slashes of `path` are ignored ("a/b/" -> "a").
std::string ParentDirectory(std::string_view path);

}  // namespace dcpp::io

#endif  // DCPP_IO_FILE_H_
