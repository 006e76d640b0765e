// Stand-ins for the MPI entry points when dcpp is built without MPI (the
// build compiles either this file or mpi_group.cc, never both).
#include "dcpp/process_group.h"

namespace dcpp {

bool HasMpi() { return false; }

Result<std::unique_ptr<ProcessGroup>> MakeMpiProcessGroup(std::chrono::milliseconds timeout) {
  return UnimplementedError(
      "this dcpp was built without MPI: install OpenMPI (libopenmpi-dev) and rebuild");
}

}  // namespace dcpp
