// `dcpp demo`: dcpp's main job end to end. Saves a synthetic transformer-like
// training state (bf16 weights, fp32 Adam moments, counters) split into
// `save_shards` row shards, loads it back into `load_shards` shards of a
// different layout (column shards for matrices: every loaded piece overlaps
// several saved ones), verifies every byte, and reports sizes, times and
// throughput.
#ifndef DCPP_TOOLS_DEMO_H_
#define DCPP_TOOLS_DEMO_H_

#include <string>

#include "dcpp/checkpoint.h"

namespace dcpp::tools {

struct DemoOptions {
  std::string dir;          // empty: a fresh directory under $TMPDIR (or /tmp)
  uint64_t size_mib = 256;  // approximate state size
  int save_shards = 4;
  int load_shards = 3;
  int thread_count = 4;
  bool sync_files = true;
  bool keep = false;  // keep the checkpoint (removed otherwise)
  ProgressCallback progress;
};

struct DemoReport {
  std::string dir;
  uint64_t state_bytes = 0;
  size_t tensors = 0;
  size_t values = 0;
  size_t files = 0;
  uint64_t stored_bytes = 0;
  double save_seconds = 0;
  double load_seconds = 0;
  size_t verified_pieces = 0;
};

// Runs the demo. Fails (with the first difference found) if any loaded byte
// differs from what was saved.
Result<DemoReport> RunDemo(const DemoOptions& options);

// A readable multi-line report.
std::string FormatDemoReport(const DemoOptions& options, const DemoReport& report);

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_DEMO_H_
