// `.metadata` decode and encode on one file, for bench/metadata_scale.py.
// Prints one JSON line.
//
//   metadata_bench decode FILE [--general]   DecodeMetadata of the file's bytes
//                                            (--general: the general pickle VM
//                                            only, the fast path's fallback;
//                                            --compact: DecodeCompactMetadata,
//                                            what a load plans over)
//   metadata_bench encode FILE [--repeat N]  EncodeMetadata of the decoded file
//                                            (best of N)
//   metadata_bench compare FILE              fast path == general path?
//   metadata_bench reencode FILE OUT         DecodeMetadata, then EncodeMetadata
//                                            into OUT (to compare in torch)
//
// decode reports time_s (the decode alone), read_s, and RSS: rss_before (before
// reading the file), rss_after_read, peak (VmHWM) and added = peak -
// rss_after_read, the memory the decode itself took.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "dcpp/format/compact_metadata.h"
#include "dcpp/format/metadata_codec.h"
#include "dcpp/format/metadata_codec_internal.h"

namespace {

using dcpp::Metadata;
using dcpp::Result;
namespace mi = dcpp::format::metadata_internal;

double CpuNow() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec * 1e-9;
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// VmRSS or VmHWM of this process, in bytes.
long long Status(const char* key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) == 0) return std::atoll(line.c_str() + std::strlen(key)) * 1024;
  }
  return 0;
}

// The whole file in one buffer of its size (as storage's metadata read does).
std::string ReadAll(const char* path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", path);
    std::exit(2);
  }
  std::string s(static_cast<size_t>(f.tellg()), '\0');
  f.seekg(0);
  f.read(s.data(), static_cast<std::streamsize>(s.size()));
  return s;
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

size_t Chunks(const Metadata& md) {
  size_t n = 0;
  for (const auto& e : md.entries) n += e.chunks.size();
  return n;
}

Result<Metadata> Decode(const std::string& bytes, bool general, bool* fast) {
  *fast = false;
  if (!general) {
    if (auto md = mi::DecodeMetadataFast(Bytes(bytes))) {
      *fast = true;
      return std::move(*md);
    }
  }
  return mi::DecodeMetadataGeneral(Bytes(bytes));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: metadata_bench decode|encode|compare FILE [--general] [--repeat N]\n"
                 "       metadata_bench reencode FILE OUT\n");
    return 2;
  }
  const std::string mode = argv[1];
  bool general = false, compact = false;
  int repeat = 3;
  for (int i = 3; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--general")) general = true;
    if (!std::strcmp(argv[i], "--compact")) compact = true;
    if (mode == "reencode") break;
    if (!std::strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = std::atoi(argv[++i]);
  }
  const long long rss_before = Status("VmRSS:");
  double t0 = Now();
  const std::string bytes = ReadAll(argv[2]);
  const double read_s = Now() - t0;
  const long long rss_after_read = Status("VmRSS:");

  bool fast = false;
  if (mode == "decode" && compact) {
    t0 = Now();
    const double c0 = CpuNow();
    auto md = dcpp::format::DecodeCompactMetadata(bytes);
    const double dt = Now() - t0;
    const double cpu = CpuNow() - c0;
    const long long peak = Status("VmHWM:");
    if (!md.ok()) {
      std::fprintf(stderr, "%s\n", md.status().ToString().c_str());
      return 1;
    }
    size_t chunks = 0;
    for (const auto& e : md->entries) chunks += e.num_chunks();
    std::printf(
        "{\"time_s\": %.6f, \"cpu_s\": %.6f, \"read_s\": %.6f, \"compact\": true, "
        "\"bytes\": %zu, \"entries\": %zu, \"chunks\": %zu, \"rss_before\": %lld, "
        "\"rss_after_read\": %lld, \"peak\": %lld, \"added\": %lld, \"held\": %zu}\n",
        dt, cpu, read_s, bytes.size(), md->entries.size(), chunks, rss_before, rss_after_read, peak,
        peak - rss_after_read, md->MemoryBytes());
    return 0;
  }
  if (mode == "decode") {
    t0 = Now();
    const double c0 = CpuNow();
    Result<Metadata> md = Decode(bytes, general, &fast);
    const double dt = Now() - t0;
    const double cpu = CpuNow() - c0;
    const long long peak = Status("VmHWM:");
    if (!md.ok()) {
      std::fprintf(stderr, "%s\n", md.status().ToString().c_str());
      return 1;
    }
    std::printf(
        "{\"time_s\": %.6f, \"cpu_s\": %.6f, \"read_s\": %.6f, \"fast_path\": %s, \"bytes\": %zu, "
        "\"entries\": %zu, "
        "\"chunks\": %zu, \"rss_before\": %lld, \"rss_after_read\": %lld, \"peak\": %lld, "
        "\"added\": %lld}\n",
        dt, cpu, read_s, fast ? "true" : "false", bytes.size(), md->entries.size(), Chunks(*md),
        rss_before, rss_after_read, peak, peak - rss_after_read);
    return 0;
  }
  if (mode == "encode") {
    Result<Metadata> md = Decode(bytes, false, &fast);
    if (!md.ok()) {
      std::fprintf(stderr, "%s\n", md.status().ToString().c_str());
      return 1;
    }
    double best = 1e9, best_cpu = 1e9;
    size_t size = 0;
    for (int r = 0; r < repeat; ++r) {
      t0 = Now();
      const double c0 = CpuNow();
      std::string out = dcpp::format::EncodeMetadata(*md);
      best = std::min(best, Now() - t0);
      best_cpu = std::min(best_cpu, CpuNow() - c0);
      size = out.size();
    }
    std::printf("{\"time_s\": %.6f, \"cpu_s\": %.6f, \"bytes\": %zu, \"chunks\": %zu}\n", best,
                best_cpu, size, Chunks(*md));
    return 0;
  }
  if (mode == "reencode" && argc > 3) {
    Result<Metadata> md = Decode(bytes, false, &fast);
    if (!md.ok()) {
      std::fprintf(stderr, "%s\n", md.status().ToString().c_str());
      return 1;
    }
    const std::string out = dcpp::format::EncodeMetadata(*md);
    std::ofstream(argv[3], std::ios::binary)
        .write(out.data(), static_cast<std::streamsize>(out.size()));
    std::printf("{\"fast_path\": %s, \"bytes\": %zu}\n", fast ? "true" : "false", out.size());
    return 0;
  }
  if (mode == "compare") {
    auto f = mi::DecodeMetadataFast(Bytes(bytes));
    auto g = mi::DecodeMetadataGeneral(Bytes(bytes));
    std::printf("{\"fast_accepted\": %s, \"general_ok\": %s, \"equal\": %s}\n",
                f ? "true" : "false", g.ok() ? "true" : "false",
                f && g.ok() && *f == *g ? "true" : "false");
    if (!g.ok()) std::fprintf(stderr, "general: %s\n", g.status().ToString().c_str());
    return 0;
  }
  std::fprintf(stderr, "unknown mode %s\n", mode.c_str());
  return 2;
}
