// Where a checkpoint lives, behind one small interface (in the spirit of
// LevelDB's Env and TensorStore's kvstore): one location whose entries are
// named relative to it ("__0_0.1f2e3d4c.distcp", ".metadata"). Everything
// that reads or writes checkpoint bytes goes through a Storage, so the same
// save and load code runs over a POSIX directory, memory (tests), or a
// fault-injecting wrapper that fails or "crashes" at any call.
//
// Names: relative, '/'-separated, not empty, not absolute, no "." or ".."
// component, no NUL byte (CheckEntryName). They come from untrusted
// metadata, so every implementation checks them and answers a bad one with
// DataLoss naming it; none ever touches anything outside the location.
//
// Thread safety: every Storage method may be called from several threads at
// once. A ReadableFile's ReadAt/Size may be called concurrently; a
// WritableFile's positional writes on distinct byte ranges may run
// concurrently, and Sync may run concurrently with them; Close must not race
// with anything on the same file.
//
// Errors name Describe(name) (for a directory: the file's path) and follow
// base/os_error.h's codes: missing entry NotFound, no space
// ResourceExhausted, I/O errors Internal.
#ifndef DCPP_STORAGE_STORAGE_H_
#define DCPP_STORAGE_STORAGE_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/status.h"

namespace dcpp::storage {

// An entry opened for reading. Destroying it releases it.
class ReadableFile {
 public:
  virtual ~ReadableFile() = default;
  // The entry's size in bytes now.
  virtual Result<uint64_t> Size() const = 0;
  // Fills all of `out` from `offset`. Past the end: DataLoss ("unexpected
  // end of file", naming the entry, offset and size); `out` then holds
  // unspecified bytes. Empty `out` is OK.
  virtual Status ReadAt(uint64_t offset, std::span<uint8_t> out) const = 0;
};

// An entry created for writing. Bytes written become visible to readers of
// the same Storage at once, and durable only after Sync() (and, for the
// entry's name, after the location's SyncDirectory()). Destroying an open
// file closes it silently; call Close() to see the error. On a storage
// whose PublishesOnClose() is true the entry instead appears only when
// Close() succeeds, and destroying the file without Close() discards it.
class WritableFile {
 public:
  virtual ~WritableFile() = default;
  // Writes all of `data` at `offset` (a gap before it reads as zeros).
  virtual Status WriteAt(uint64_t offset, std::span<const uint8_t> data) = 0;
  // Writes `pieces` back to back from `offset`, as one WriteAt of their
  // concatenation would (without copying them together).
  virtual Status WriteVAt(uint64_t offset, std::span<const std::span<const uint8_t>> pieces) = 0;
  // Makes the bytes written so far durable.
  virtual Status Sync() = 0;
  // Optional: copies `length` bytes at `src_offset` of `src` to `offset`
  // without passing them through the caller's memory, where both files
  // allow it (a POSIX file from a POSIX file on a Linux file system with
  // copy_file_range). Returns the bytes copied; fewer than `length` (the
  // default: 0) means the caller copies the rest itself. Errors as WriteAt's
  // and src's ReadAt's.
  virtual Result<uint64_t> CopyFrom(const ReadableFile& src, uint64_t src_offset,
                                    uint64_t offset, uint64_t length) {
    (void)src, (void)src_offset, (void)offset, (void)length;
    return uint64_t{0};
  }
  // A hint that [offset, offset + length) is written and will be synced:
  // the storage may start sending it to the device now, so that the Sync()
  // at the end waits for less. Never makes anything durable by itself, and
  // a storage that cannot act on it ignores it (the default). Thread-safe
  // as WriteAt is.
  virtual void StartWriteback(uint64_t offset, uint64_t length) {
    (void)offset;
    (void)length;
  }
  // Ends writing; reports a failing close. Closing twice is OK.
  virtual Status Close() = 0;
};

// An exclusive lock held on a location until destroyed. A holder that dies
// releases it (the OS does, for PosixStorage).
class StorageLock {
 public:
  virtual ~StorageLock() = default;
};

class Storage {
 public:
  virtual ~Storage() = default;

  // How `name` is shown in messages: for a directory, its path
  // ("/ckpt/step_10/.metadata"); Describe("") names the location itself.
  virtual std::string Describe(std::string_view name) const = 0;

  // Whether entries appear only when their writer's Close() succeeds, whole,
  // atomically replacing an entry of that name (an object store's PUT), and
  // never before. Such a storage has no cheap atomic Rename, and needs none:
  // a commit writes its final name directly (storage/dcp_layout.h). False
  // for directories (rename(2) publishes there).
  virtual bool PublishesOnClose() const { return false; }

  // How many reads the storage serves well at once when each is a round
  // trip (an object store: its configured request concurrency); 0 for
  // local storage, whose readers are best one per core. A default reader
  // count takes the larger of this and the core count.
  virtual int IoParallelism() const { return 0; }

  // Creates the location if it does not exist (mkdir -p for a directory).
  // OK if it exists; AlreadyExists if something else is in the way.
  virtual Status CreateLocation() = 0;

  // Opens an existing entry for reading. NotFound if missing (or if the
  // location itself is missing); DataLoss for a bad name, for an entry that
  // is not a regular file (a FIFO, device or socket: refused without
  // blocking), or for a symlink, or an entry under a symlinked folder, whose
  // target lies outside the location.
  virtual Result<std::unique_ptr<ReadableFile>> OpenForRead(std::string_view name) = 0;

  // Creates `name` (truncating an existing entry) for writing. Missing
  // folders in `name` are not created: NotFound.
  virtual Result<std::unique_ptr<WritableFile>> CreateForWrite(std::string_view name) = 0;

  // The size of `name`; NotFound if it is missing.
  virtual Result<uint64_t> Size(std::string_view name) = 0;

  // The entry names at the top of the location (not in sub-folders), sorted
  // bytewise. NotFound if the location does not exist; InvalidArgument if it
  // is not a directory-like location (a plain file at a directory's path).
  virtual Result<std::vector<std::string>> List() = 0;

  // Publishes `from` as `to`, atomically replacing `to` if it exists:
  // readers see the old `to` or the new one, never a mix. NotFound if `from`
  // is missing.
  virtual Status Rename(std::string_view from, std::string_view to) = 0;

  // Removes `name`. NotFound if it is missing.
  virtual Status Remove(std::string_view name) = 0;

  // Makes the entry changes so far (creates, renames, removes) durable.
  virtual Status SyncDirectory() = 0;

  // Takes the exclusive lock named `name` (an entry the lock may keep, such
  // as ".dcpp.lock", which nobody may remove: removing it would let a second
  // holder in) without waiting, and records `holder` (one line saying who
  // holds it) where a competitor can read it. Held by someone else (another
  // process, or another StorageLock of this process): Aborted, whose message
  // names the location and quotes the holder's line. Locks taken through
  // different Storage objects for the same location exclude each other. A
  // lock must be destroyed before the Storage that gave it.
  virtual Result<std::unique_ptr<StorageLock>> TryLock(std::string_view name,
                                                       std::string_view holder) = 0;
};

// OK if `name` is a valid entry name (see the top of this file); DataLoss
// naming it and saying why otherwise.
Status CheckEntryName(std::string_view name);

// The Storage for a location given as a string: a POSIX directory path
// (absolute or relative, or file://path), or "s3://bucket/prefix" (an S3
// compatible object store configured from the environment as AWS's tools
// are: storage/s3_storage.h). The location need not exist yet (a save
// creates it; a load then fails with NotFound). A URL scheme this build does
// not handle is Unimplemented; an empty path InvalidArgument.
Result<std::unique_ptr<Storage>> OpenStorage(const std::string& location);

// A POSIX directory (io/file.h underneath). Refuses FIFOs, devices and
// sockets without blocking on them, and symlinks leaving the directory;
// never creates files through a symlink (O_NOFOLLOW). TryLock: flock(2) on
// the lock file, released when the StorageLock is destroyed or the process
// dies.
std::unique_ptr<Storage> NewPosixStorage(std::string dir);

// Entries in memory, for tests: sub-folders exist implicitly, SyncDirectory
// and Sync do nothing (everything is "durable"), TryLock excludes other
// locks taken on the same MemoryStorage (the lock is not an entry).
// Describe(name) is label + "/" + name.
std::unique_ptr<Storage> NewMemoryStorage(std::string label = "mem:");

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_STORAGE_H_
