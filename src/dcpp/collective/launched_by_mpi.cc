// LaunchedByMpi is built with and without MPI support, so a program can tell
// "started by mpirun but dcpp lacks MPI" apart from "started on its own".
#include <cstdlib>

#include "dcpp/process_group.h"

namespace dcpp {

bool LaunchedByMpi() {
  // Open MPI's launcher sets OMPI_COMM_WORLD_SIZE; MPICH/Hydra and Slurm's
  // PMI set PMI_SIZE; PMIx-based launchers set PMIX_RANK.
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"}) {
    const char* value = std::getenv(name);
    if (value != nullptr && value[0] != '\0') return true;
  }
  return false;
}

}  // namespace dcpp
