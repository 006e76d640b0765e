#include "dcpp/tools/progress_printer.h"

#include <unistd.h>

#include <string>

namespace dcpp::tools {
namespace {

std::string Mib(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

}  // namespace

ProgressCallback MakeProgressPrinter(std::FILE* out, std::chrono::milliseconds quiet_for) {
  struct State {
    std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
    std::chrono::steady_clock::time_point last{};
    bool tty = false;
  };
  auto state = std::make_shared<State>();
  state->tty = isatty(fileno(out));
  return [out, quiet_for, state](const Progress& p) {
    const auto now = std::chrono::steady_clock::now();
    const bool done = p.items_done == p.items_total;
    if (now - state->start < quiet_for) return;
    if (!done && now - state->last < std::chrono::milliseconds(state->tty ? 200 : 2000)) return;
    state->last = now;
    const double secs = std::chrono::duration<double>(now - state->start).count();
    const double pct = p.bytes_total ? 100.0 * static_cast<double>(p.bytes_done) /
                                           static_cast<double>(p.bytes_total)
                                     : 100.0;
    const double rate = static_cast<double>(p.bytes_done) / std::max(secs, 1e-9);
    char eta[32] = "";
    if (!done && rate > 0 && p.bytes_total > p.bytes_done) {
      const long left = static_cast<long>(static_cast<double>(p.bytes_total - p.bytes_done) / rate);
      std::snprintf(eta, sizeof eta, "  ETA %ld:%02ld", left / 60, left % 60);
    }
    std::fprintf(out, "%s%-5.*s %5.1f%%  %s / %s  %zu/%zu items  %.0f MiB/s%s%s",
                 state->tty ? "\r" : "", static_cast<int>(p.phase.size()), p.phase.data(), pct,
                 Mib(p.bytes_done).c_str(), Mib(p.bytes_total).c_str(), p.items_done,
                 p.items_total, rate / (1 << 20), eta,
                 state->tty && !done ? "\x1b[K" : "\n");
    std::fflush(out);
  };
}

}  // namespace dcpp::tools
