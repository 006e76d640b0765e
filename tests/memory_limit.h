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
#include <cstdlib>
#include <cstring>
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
  int exit_code = -1;  // fn()'s return value, or -1 when killed
  int signal = 0;      // the signal that killed the child (SIGABRT for an uncaught exception)
  // How far the child's resident set grew above what it inherited, at its
  // peak (VmHWM after resetting it at the start); -1 if unknown.
  long rss_growth_kb = -1;
};

namespace internal {
// A field of /proc/self/status in kB ("VmRSS", "VmHWM"), or -1.
inline long StatusKb(const char* field) {
  FILE* f = std::fopen("/proc/self/status", "r");
  if (f == nullptr) return -1;
  char line[256];
  long value = -1;
  const size_t n = std::strlen(field);
  while (std::fgets(line, sizeof line, f) != nullptr)
    if (std::strncmp(line, field, n) == 0 && line[n] == ':') value = std::atol(line + n + 1);
  std::fclose(f);
  return value;
}
}  // namespace internal

// Forks; the child limits its address space to what it has mapped now plus
// `extra_bytes`, runs fn() and exits with its return value (0..255).
inline ChildResult RunWithAddressSpaceLimit(uint64_t extra_bytes, const std::function<int()>& fn) {
  std::fflush(nullptr);
  int fds[2];
  if (pipe(fds) != 0) return {};
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    long pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      if (std::fscanf(f, "%ld", &pages) != 1) pages = 0;
      std::fclose(f);
    }
    const uint64_t limit =
        static_cast<uint64_t>(pages) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)) + extra_bytes;
    // Reset the peak resident set (VmHWM) to the current one.
    if (FILE* f = std::fopen("/proc/self/clear_refs", "w")) {
      std::fputs("5", f);
      std::fclose(f);
    }
    const long start = internal::StatusKb("VmRSS");
    rlimit rl{limit, limit};
    if (setrlimit(RLIMIT_AS, &rl) != 0) _exit(250);
    const int code = fn();
    const long peak = internal::StatusKb("VmHWM");
    const long growth = start < 0 || peak < 0 ? -1 : peak - start;
    if (write(fds[1], &growth, sizeof growth) != sizeof growth) _exit(251);
    _exit(code);
  }
  close(fds[1]);
  ChildResult r;
  if (pid < 0) {
    close(fds[0]);
    return r;
  }
  long growth = -1;
  if (read(fds[0], &growth, sizeof growth) == sizeof growth) r.rss_growth_kb = growth;
  close(fds[0]);
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return r;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

}  // namespace dcpp::testing

#endif  // DCPP_TESTS_MEMORY_LIMIT_H_
