// Test helper: run code in a child process under an address-space limit
// (RLIMIT_AS), to show that hostile input fails cleanly with bounded memory
// instead of exhausting the machine or dying of std::bad_alloc.
#ifndef DCPP_TESTS_MEMORY_LIMIT_H_
#define DCPP_TESTS_MEMORY_LIMIT_H_

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <functional>

namespace dcpp::testing {

// Sanitizers reserve terabytes of address space, so RLIMIT_AS cannot be used.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
inline constexpr bool kCanLimitAddressSpace = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(memory_sanitizer)
inline constexpr bool kCanLimitAddressSpace = false;
#else
inline constexpr bool kCanLimitAddressSpace = true;
#endif
#else
inline constexpr bool kCanLimitAddressSpace = true;
#endif

struct ChildResult {
  int exit_code = -1;      // fn()'s return value, or -1 when killed
  int signal = 0;          // the signal that killed the child (SIGABRT for an uncaught exception)
  long peak_rss_kb = 0;    // the child's maximum resident set size
};

// Forks; the child limits its address space to what it has mapped now plus
// `extra_bytes`, runs fn() and exits with its return value (0..255).
inline ChildResult RunWithAddressSpaceLimit(uint64_t extra_bytes, const std::function<int()>& fn) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
      std::fclose(f);
    }
    const uint64_t limit = static_cast<uint64_t>(pages) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) + extra_bytes;
    rlimit rl{limit, limit};
    if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(250);
    _exit(fn());
  }
  ChildResult r;
  int status = 0;
  rusage usage{};
  if (pid < 0 || wait4(pid, &status, 0, &usage) != pid) return r;
  r.peak_rss_kb = usage.ru_maxrss;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

}  // namespace dcpp::testing

#endif  // DCPP_TESTS_MEMORY_LIMIT_H_
