// A small persistent thread pool for data-parallel loops (rows of a matvec, tokens of a
// prefill). The calling thread takes part in the work, so a pool of n threads runs n-way.
// Between jobs the workers poll for a short while (kSpin) before they sleep on a condition
// variable, and so does the caller waiting for them: a decode step is a chain of ~100 us
// matvecs, and two futex wake-ups per call (start, finish) cost a noticeable share of each
// (docs/perf.md).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ds4 {

class ThreadPool {
 public:
  // n_threads <= 0 means std::thread::hardware_concurrency().
  explicit ThreadPool(int n_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // How long an idle worker (or the caller waiting for the workers) polls before it blocks.
  static constexpr std::chrono::microseconds kSpin{100};

  // Calls fn(begin, end, thread_index) over [0, n) split into chunks of at least `grain`
  // items; returns when all chunks are done. Exceptions thrown by fn are rethrown here.
  // Not reentrant: fn must not call parallel_for on the same pool.
  void parallel_for(int64_t n, int64_t grain,
                    const std::function<void(int64_t, int64_t, int)>& fn);

 private:
  void worker(int index);
  void run_chunks(int thread_index);
  // Waits until generation_ differs from `seen` (a new job) or stop_; false on stop.
  bool wait_for_job(uint64_t seen);
  void wait_for_workers();

  int n_threads_;
  std::vector<std::thread> threads_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  // Written under mu_ (so that sleepers cannot miss a change), read without it by spinners.
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> active_{0};  // workers that have not finished the current job

  // current job
  const std::function<void(int64_t, int64_t, int)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  std::exception_ptr error_;
};

// Runs fn over [0, n) on `pool` when given, otherwise inline on the calling thread.
inline void parallel_for(ThreadPool* pool, int64_t n, int64_t grain,
                         const std::function<void(int64_t, int64_t, int)>& fn) {
  if (pool && pool->size() > 1 && n > grain)
    pool->parallel_for(n, grain, fn);
  else if (n > 0)
    fn(0, n, 0);
}

}  // namespace ds4
