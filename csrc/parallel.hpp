// Thread pools for the bindings: a requested thread count clamped to what the work and the
// machine can use, and a parallel loop whose failed thread start is an exception (the threads
// already started finish and are joined first), never std::terminate.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace mk {

// At least 1; at most the number of work items and the machine's hardware threads.
inline int usable_threads(std::int64_t requested, std::int64_t work) {
  const std::int64_t hw = std::max<std::int64_t>(1, std::thread::hardware_concurrency());
  return static_cast<int>(std::max<std::int64_t>(1, std::min({requested, work, hw})));
}

// Runs job(i) for i in [0, n) on usable_threads(n_threads, n) threads; the first exception is
// rethrown after every thread has been joined.
template <class Job>
void parallel_for(std::int64_t n, std::int64_t n_threads, Job job) {
  std::atomic<std::int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto fail = [&](std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!error) error = e;
    next.store(n);
  };
  auto worker = [&]() {
    while (true) {
      const std::int64_t i = next.fetch_add(1);
      if (i >= n) return;
      try {
        job(i);
      } catch (...) {
        fail(std::current_exception());
      }
    }
  };
  const int k = usable_threads(n_threads, n);
  std::vector<std::thread> threads;
  threads.reserve(k);
  for (int t = 1; t < k; ++t) {
    try {
      threads.emplace_back(worker);
    } catch (const std::system_error& e) {
      fail(std::make_exception_ptr(std::runtime_error("could not start thread " + std::to_string(t + 1) + " of " +
                                                      std::to_string(k) + ": " + e.what())));
      break;
    }
  }
  worker();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace mk
