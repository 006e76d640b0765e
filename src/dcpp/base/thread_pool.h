// Bounded parallel loops for I/O work.
#ifndef DCPP_BASE_THREAD_POOL_H_
#define DCPP_BASE_THREAD_POOL_H_

#include <cstddef>
#include <functional>

#include "dcpp/status.h"

namespace dcpp {

// Runs fn(i) for every i in [0, n) on at most `threads` threads (the calling
// thread is one of them) and waits for all of them. After the first failure
// no new index starts; the returned status is the failure with the lowest
// index among those that ran (OK if none failed). `fn` must be safe to call
// concurrently for different indices. An exception escaping fn(i) is that
// index's failure (CatchExceptions: ResourceExhausted for std::bad_alloc);
// when a thread cannot be started, fewer threads do the work.
Status ParallelFor(size_t n, int threads, const std::function<Status(size_t)>& fn);

// A sensible default thread count for I/O: min(cap, hardware threads), >= 1.
int DefaultThreadCount(int cap = 8);

}  // namespace dcpp

#endif  // DCPP_BASE_THREAD_POOL_H_
