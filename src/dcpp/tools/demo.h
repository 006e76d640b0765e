// `dcpp demo`: dcpp's main job end to end. Saves a synthetic
// transformer-like training state (bf16 weights, fp32 Adam moments, step and
// hyper-parameters) from `save_ranks` ranks, each holding a row shard of
// every tensor, then loads it on `load_ranks` ranks that each ask for a
// column shard (vectors: a row shard), so every loaded piece overlaps several
// saved ones. Every loaded byte is checked against the generator, and sizes,
// times and throughput are reported.
//
// Ranks are threads of this process by default; with `group` set (e.g. MPI
// under mpirun) the group's ranks save and then load with the other layout.
#ifndef DCPP_TOOLS_DEMO_H_
#define DCPP_TOOLS_DEMO_H_

#include <string>

#include "dcpp/checkpoint.h"

namespace dcpp::tools {

struct DemoOptions {
  std::string dir;          // empty: a fresh directory under $TMPDIR (or /tmp)
  uint64_t size_mib = 256;  // approximate state size
  int save_ranks = 4;       // thread ranks (ignored with `group`)
  int load_ranks = 3;
  int thread_count = 2;     // I/O threads (and data files) per rank
  bool sync_files = true;
  bool keep = false;        // keep the checkpoint (removed otherwise)
  ProcessGroup* group = nullptr;  // borrowed; null = thread ranks
  ProgressCallback progress;      // rank 0's progress
};

struct DemoReport {
  std::string dir;
  std::string ranks_kind;  // "threads" or the group's kind
  int save_ranks = 0;
  int load_ranks = 0;
  uint64_t state_bytes = 0;
  size_t tensors = 0;
  size_t values = 0;
  size_t files = 0;
  uint64_t stored_bytes = 0;
  double save_seconds = 0;
  double load_seconds = 0;
  uint64_t verified_bytes = 0;
  size_t verified_pieces = 0;
};

// Runs the demo. Fails (naming the tensor and piece) if any loaded byte
// differs from what was saved. With a group, every rank must call it; the
// report is complete on rank 0.
Result<DemoReport> RunDemo(const DemoOptions& options);

// A readable multi-line report.
std::string FormatDemoReport(const DemoOptions& options, const DemoReport& report);

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_DEMO_H_
