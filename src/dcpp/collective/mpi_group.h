// Internal knobs of the MPI ProcessGroup (mpi_group.cc). The public entry
// point is MakeMpiProcessGroup in include/dcpp/process_group.h; this header
// exists so the MPI test programs can shrink the data-round size and drive
// the multi-round path with payloads of a few MiB. Like the public header it
// never exposes MPI types. Only built when dcpp is built with MPI.
#ifndef DCPP_COLLECTIVE_MPI_GROUP_H_
#define DCPP_COLLECTIVE_MPI_GROUP_H_

#include <chrono>
#include <cstdint>
#include <memory>

#include "dcpp/process_group.h"
#include "dcpp/status.h"

namespace dcpp::collective {

struct MpiGroupOptions {
  // Each collective (all of its steps together) must finish within this.
  std::chrono::milliseconds timeout = kDefaultCollectiveTimeout;
  // Most payload bytes one MPI call moves, summed over the ranks it moves
  // them for. Larger payloads go in several rounds. Keeps every MPI count
  // and displacement (C int) in range and bounds the staging buffer on the
  // root of Gather and Scatter. Clamped to [1, INT_MAX].
  uint64_t max_round_bytes = uint64_t{1} << 30;
};

// MakeMpiProcessGroup with every knob exposed. Same contract.
Result<std::unique_ptr<ProcessGroup>> MakeMpiGroupWithOptions(const MpiGroupOptions& options);

}  // namespace dcpp::collective

#endif  // DCPP_COLLECTIVE_MPI_GROUP_H_
