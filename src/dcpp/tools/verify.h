// `dcpp verify`: reads every byte of every item of a checkpoint and checks
// it, without loading anything into a state dict.
#ifndef DCPP_TOOLS_VERIFY_H_
#define DCPP_TOOLS_VERIFY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "dcpp/checkpoint.h"
#include "dcpp/status.h"

namespace dcpp::tools {

struct VerifyOptions {
  int io_threads = 0;  // readers; 0 picks min(8, hardware threads)
  ProgressCallback progress;  // phase "verify"
};

// One damaged thing: an item (fqn set), `.metadata` or the sidecar (fqn
// empty).
struct VerifyProblem {
  std::string fqn;
  std::string file;  // relative to the checkpoint directory
  std::string message;
};

struct VerifyReport {
  std::string checkpoint;
  std::string checksum_file;  // the sidecar used, "" when there is none
  size_t entries = 0;
  size_t items = 0;          // stored items checked (tensor chunks + values)
  uint64_t bytes_read = 0;   // item bytes read
  double seconds = 0;
  std::vector<VerifyProblem> problems;
  // Files no `.metadata` references: data files (*.distcp) and sidecars of
  // other saves, `.metadata.tmp`; left by killed or replaced saves. Not
  // damage (the checkpoint is fine), but space to reclaim.
  std::vector<std::string> unreferenced_files;
  bool ok() const { return problems.empty(); }
};

// Checks the checkpoint at `dir`:
//  - `.metadata` decodes, and matches the sidecar `.checksums.<save_id>`
//    when there is one (which itself must be intact);
//  - each tensor's chunks lie inside its shape and tile it exactly (no gap,
//    no overlap), and every chunk and value has a storage record;
//  - every item lies inside its data file, and every byte of it is read:
//    torch.save archive structure, the dtype and shape it holds against the
//    metadata, every zip record's CRC-32 (0 = none recorded: accepted),
//    zstd frame checksums, pickled values decode (without running anything),
//    and their stored bytes' CRC-32 from the sidecar.
// Items are checked in parallel; a large uncompressed tensor's bytes are
// split across threads (positional reads, CRC-32s combined).
// Returns the report (damage is in report.problems, not an error); an error
// only when there is nothing to verify: NotFound if `dir` holds no
// `.metadata`, or an I/O error reading it.
Result<VerifyReport> Verify(const std::string& dir, const VerifyOptions& options = {});

// Human-readable: one line per problem ("DAMAGED 'fqn' in FILE: ..."), the
// unreferenced files, a summary line with bytes and throughput.
std::string VerifyReportText(const VerifyReport& report);
// {"checkpoint", "ok", "checksum_file", "entries", "items", "bytes_read",
//  "seconds", "problems": [{"fqn", "file", "message"}], "unreferenced_files"}
std::string VerifyReportJson(const VerifyReport& report);

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_VERIFY_H_
