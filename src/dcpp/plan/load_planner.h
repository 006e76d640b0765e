// Load planning: which saved chunks a load reads and where each piece goes,
// and the checks that let the engine trust the plan before it allocates.
// Pure: no I/O, no collectives; the engine (engine/load.cc) runs the plan.
//
// The steps of a load, in order:
//   1. PlanTensorReads: the requested destinations (a box of an entry's
//      global tensor each) against the entries' saved chunks. Every entry
//      read is checked first: its chunks must tile its declared size
//      exactly (inside it, no two overlapping, every element covered), as
//      DCP's save planner guarantees. So a success proves that every element
//      of every requested box is written by exactly one piece of the plan,
//      and the engine may allocate destinations uninitialized.
//   2. DataFilesRead / CheckStoredSizes: the sizes .metadata declares against
//      the bytes actually stored (the sizes of the data files, which the
//      engine asks storage for once per load), so that a few edited bytes in
//      .metadata cannot make a load allocate gigabytes for a small archive.
//   3. The engine allocates and reads.
#ifndef DCPP_PLAN_LOAD_PLANNER_H_
#define DCPP_PLAN_LOAD_PLANNER_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/plan/reshard.h"
#include "dcpp/status.h"

namespace dcpp::plan {

// One destination of a load: the part `box` of the global tensor of `entry`
// (a tensor entry, borrowed: it must outlive the plan).
struct TensorRequest {
  const EntryMeta* entry = nullptr;
  Box box;
};

// One saved chunk to read (each at most once per plan), and the pieces of
// it that requests need.
struct ChunkRead {
  struct Piece {
    size_t request = 0;  // index into the requests given to PlanTensorReads
    Box box;             // global coordinates, inside the chunk and the request's box
  };
  const EntryMeta* entry = nullptr;
  size_t chunk = 0;  // index into entry->chunks
  std::vector<Piece> pieces;
};

struct TensorReadPlan {
  // In the order requests first need them (request order, then chunk order
  // within an entry): the order the engine starts the reads in.
  std::vector<ChunkRead> reads;
};

// Plans reading `requests`. Errors (the first request in order that fails):
//   InvalidArgument: a request that is no tensor entry, or whose box rank
//     differs from its entry's (a caller error);
//   DataLoss naming the FQN: the entry's chunks do not tile its declared
//     size (a chunk of another rank, with negative or overflowing extents,
//     outside the tensor, overlapping another, or a gap), or the saved
//     chunks cover only part of a requested box (it leaves the tensor).
// Cost: O(c log c) per distinct entry with c chunks, plus O(c) per request.
// Thread-safe (reads only its arguments).
Result<TensorReadPlan> PlanTensorReads(std::span<const TensorRequest> requests);

// The data files (relative_path) holding the plan's chunks and `values`
// (BYTE_IO entries), each once, sorted.
std::vector<std::string> DataFilesRead(const TensorReadPlan& plan,
                                       std::span<const EntryMeta* const> values);

// Sizes of data files by relative_path, as storage reports them.
using FileSizes = std::unordered_map<std::string, uint64_t>;

// An upper bound on the decoded size of an item stored through transforms
// (the item's StorageInfo), e.g. transform::MaxDecodedSize; an error is
// returned by CheckStoredSizes with the item's name.
using DecodedBound = std::function<Result<uint64_t>(const StorageInfo&)>;

// Checks what .metadata declares against the bytes stored, before anything
// is allocated: for every chunk read and every value,
//   - [offset, offset + length) lies inside its data file;
//   - a chunk's tensor bytes (elements x element size) fit in what it
//     stores: its length when untransformed (the bytes sit in its archive),
//     else in `max_decoded(storage)`.
// DataLoss naming the FQN and the file. A file missing from `sizes` is
// Internal (the caller must size every file DataFilesRead names).
Status CheckStoredSizes(const TensorReadPlan& plan, std::span<const EntryMeta* const> values,
                        const FileSizes& sizes, const DecodedBound& max_decoded);

}  // namespace dcpp::plan

#endif  // DCPP_PLAN_LOAD_PLANNER_H_
