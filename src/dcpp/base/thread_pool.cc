#include "dcpp/base/thread_pool.h"

#include <system_error>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "dcpp/base/exception_barrier.h"

namespace dcpp {

Status ParallelFor(size_t n, int threads, const std::function<Status(size_t)>& fn) {
  if (n == 0) return Status();
  const size_t workers = std::clamp<size_t>(threads < 1 ? 1 : static_cast<size_t>(threads), 1, n);
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex mu;
  size_t error_index = n;
  Status error;
  auto work = [&] {
    while (!failed.load(std::memory_order_relaxed)) {
      const size_t i = next.fetch_add(1);
      if (i >= n) return;
      // An exception must not leave a worker thread (std::terminate): it
      // becomes this index's failure.
      Status s = CatchExceptions("", [&] { return fn(i); });
      if (!s.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        if (i < error_index) {
          error_index = i;
          error = std::move(s);
        }
        failed.store(true);
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  for (size_t t = 1; t < workers; ++t) {
    try {
      pool.emplace_back(work);
    } catch (const std::exception&) {
      break;  // no thread (or no memory for one): fewer threads do the work
    }
  }
  work();
  for (auto& t : pool) t.join();
  return error;
}

int DefaultThreadCount(int cap) {
  const unsigned hw = std::thread::hardware_concurrency();
  return std::max(1, std::min(cap, hw == 0 ? 1 : static_cast<int>(hw)));
}

}  // namespace dcpp
