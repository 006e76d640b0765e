// Writing a DCP checkpoint from the entries of another one, streaming:
// what `dcpp convert` does when its output is DCP. Unlike LoadAll + Save,
// nothing is held whole: the source's metadata is read once by the caller,
// each saved item goes to the output through bounded buffers, and the
// output is committed once.
#ifndef DCPP_ENGINE_COPY_CHECKPOINT_H_
#define DCPP_ENGINE_COPY_CHECKPOINT_H_

#include <cstdint>
#include <optional>
#include <span>

#include "dcpp/checkpoint.h"
#include "dcpp/metadata.h"
#include "dcpp/storage/storage.h"

namespace dcpp::engine {

struct CopyOptions {
  // How to write, as for Save: transforms, compression_level, checksums,
  // sync_files, overwrite, lock_timeout_ms, io_threads, files_per_rank,
  // single_file_per_rank. format must be kDcp and process_group null (one
  // process writes the copy); plan_cache and progress are not used.
  SaveOptions save;
  // Cast floating tensors (float16, bfloat16, float32, float64) of another
  // dtype to this floating dtype (round to nearest even); others are kept.
  std::optional<DType> cast;
  // Called as bytes are copied: phase "convert", bytes counted on the
  // source side (a copied item's stored bytes, a re-encoded chunk's
  // elements), items = saved items (chunks and values). Called from the
  // writer threads, one call at a time.
  ProgressCallback progress;
  // Bytes of a chunk decoded at once when it must be re-encoded.
  uint64_t band_bytes = uint64_t{16} << 20;
};

// Writes `entries` (borrowed, from the metadata of `src`, in the order the
// output records them; at most one per FQN) as a DCP checkpoint into `dst`
// and returns the metadata committed. Every entry keeps what it is: its
// FQN, its planner path, its tensor properties (dtype changed by a cast)
// and its chunks' offsets and sizes. Each saved item (tensor chunk or
// pickled value):
//  - is copied as its stored bytes when they need no change: a torch.save
//    item (not a safetensors tensor) whose recorded transforms are what
//    save.transforms records, and no cast applies to it. Runs of items
//    lying back to back in a source file are copied with large positional
//    reads and writes. A copied archive keeps the CRC-32s its source
//    recorded (0 = none); a copied value's stored bytes are checksummed
//    as they pass, for the sidecar checksum file.
//  - otherwise is decoded and re-encoded: a tensor chunk in bands of at
//    most band_bytes along its leading dimensions (read with ReadChunk,
//    cast, checksummed and written as they pass, the archive's headers
//    laid out around them); a chunk whose stored bytes are transformed is
//    decoded whole (ReadChunk would decode it again for every band); a
//    value's archive is decoded and written again.
// Output files: `__0_{n}.{tag}.distcp`, max(files_per_rank, threads) of
// them (each a contiguous run of the items in source-file order, of about
// equal size, written by one thread: no two threads share an output
// file), or one per item when !single_file_per_rank. Threads: io_threads,
// or (0) max(files_per_rank, DefaultThreadCount()).
// Commit: the protocol of engine::Save (engine/engine.h): lock, data files
// under a fresh tag, the sidecar, .metadata renamed into place, then the
// files the new .metadata does not reference removed. A failure before the
// commit removes every file this copy wrote and leaves an existing
// checkpoint at `dst` untouched; `dst` may be the location of `src`
// (everything is read before the commit).
// Memory: per thread, one copy buffer (8 MiB) and, when re-encoding, two
// bands (read, cast) plus the stream transform's buffers; a transformed
// chunk that must be re-encoded is held whole.
// Errors: InvalidArgument for options Save refuses, a non-floating cast or
// a format other than DCP; source errors as ReadChunk/ReadItem report them
// (DataLoss naming the FQN, chunk and file); output errors name the file;
// AlreadyExists/Aborted as for Save. No exception escapes.
Result<Metadata> CopyCheckpoint(storage::Storage& src, std::span<const EntryMeta* const> entries,
                                storage::Storage& dst, const CopyOptions& options);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_COPY_CHECKPOINT_H_
