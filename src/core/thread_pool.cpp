#include "core/thread_pool.h"

#include <algorithm>

namespace ds4 {
namespace {

// Polls `done` until it holds or ThreadPool::kSpin has passed. Each poll yields the core:
// on an idle machine sched_yield returns at once, and on an oversubscribed one (more
// runnable threads than cores) the thread being waited for gets to run. Pure spinning
// (pause) made a 2-thread round trip 20x slower on a 2-vCPU VM at load 10 (docs/perf.md).
template <typename Done>
bool spin_until(Done done) {
  const auto deadline = std::chrono::steady_clock::now() + ThreadPool::kSpin;
  for (unsigned i = 1;; ++i) {
    if (done()) return true;
    if (i % 16 == 0 && std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  n_threads_ = n_threads;
  for (int i = 1; i < n_threads_; ++i) threads_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_.store(true);
  }
  cv_start_.notify_all();
  for (auto& t : threads_) t.join();
}

void ThreadPool::run_chunks(int thread_index) {
  for (;;) {
    const int64_t begin = next_.fetch_add(chunk_);
    if (begin >= n_) break;
    const int64_t end = std::min(n_, begin + chunk_);
    try {
      (*fn_)(begin, end, thread_index);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
      next_.store(n_);  // stop handing out work
    }
  }
}

bool ThreadPool::wait_for_job(uint64_t seen) {
  const auto ready = [&] { return stop_.load(std::memory_order_acquire) ||
                                  generation_.load(std::memory_order_acquire) != seen; };
  if (!spin_until(ready)) {
    std::unique_lock<std::mutex> lk(mu_);
    cv_start_.wait(lk, ready);
  }
  return !stop_.load(std::memory_order_acquire);
}

void ThreadPool::worker(int index) {
  uint64_t seen = 0;
  while (wait_for_job(seen)) {
    seen = generation_.load(std::memory_order_acquire);
    run_chunks(index);
    if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lk(mu_);  // a caller that went to sleep cannot miss this
      cv_done_.notify_one();
    }
  }
}

void ThreadPool::wait_for_workers() {
  const auto done = [&] { return active_.load(std::memory_order_acquire) == 0; };
  if (spin_until(done)) return;
  std::unique_lock<std::mutex> lk(mu_);
  cv_done_.wait(lk, done);
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t, int)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  // About 4 chunks per thread balances uneven rows without much scheduling overhead.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(n / grain, int64_t(n_threads_) * 4));
  {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = &fn;
    n_ = n;
    chunk_ = (n + chunks - 1) / chunks;
    next_.store(0);
    error_ = nullptr;
    active_.store(static_cast<int>(threads_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);  // publishes the job to spinners
  }
  cv_start_.notify_all();
  run_chunks(0);
  wait_for_workers();
  std::exception_ptr err;
  {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = nullptr;
    err = error_;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace ds4
