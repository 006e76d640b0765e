// A ProgressCallback that draws a one-line progress report on a stream
// (stderr in the CLI), at most a few times a second.
#ifndef DCPP_TOOLS_PROGRESS_PRINTER_H_
#define DCPP_TOOLS_PROGRESS_PRINTER_H_

#include <chrono>
#include <cstdio>
#include <memory>

#include "dcpp/checkpoint.h"

namespace dcpp::tools {

// Returns a callback printing "write  42% 1.2 GiB / 2.9 GiB  350 MiB/s  ETA 0:05" lines
// to `out`, redrawn in place when `out` is a terminal. Nothing is printed for
// operations that finish within `quiet_for` (short runs stay silent). The
// callback is safe to call from several threads one at a time, as dcpp does.
ProgressCallback MakeProgressPrinter(std::FILE* out,
                                     std::chrono::milliseconds quiet_for = std::chrono::milliseconds(1000));

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_PROGRESS_PRINTER_H_
