// ThreadPool: every item runs exactly once, whether the workers are still polling for the
// next job (back-to-back calls) or have gone to sleep (a pause longer than kSpin), and an
// exception thrown by a chunk reaches the caller.
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "core/thread_pool.h"

namespace ds4 {
namespace {

// Runs one parallel_for over n items and checks that each was visited exactly once.
void expect_each_item_once(ThreadPool& pool, int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  for (auto& h : hits) h.store(0);
  pool.parallel_for(n, grain, [&](int64_t b, int64_t e, int ti) {
    ASSERT_GE(ti, 0);
    ASSERT_LT(ti, pool.size());
    for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "item " << i;
}

TEST(ThreadPool, BackToBackCallsRunEveryItemOnce) {
  ThreadPool pool(3);
  for (int call = 0; call < 2000; ++call) expect_each_item_once(pool, 1 + call % 97, 1 + call % 5);
}

TEST(ThreadPool, CallsAfterWorkersSleptRunEveryItemOnce) {
  ThreadPool pool(2);
  for (int call = 0; call < 5; ++call) {
    expect_each_item_once(pool, 1000, 7);
    std::this_thread::sleep_for(ThreadPool::kSpin * 5);  // the workers block on the condvar
  }
}

TEST(ThreadPool, UsesTheWorkerThreads) {
  ThreadPool pool(2);
  std::atomic<int> worker_chunks{0};
  // Chunks that wait for each other can only finish if two threads run them at once.
  std::atomic<int> arrived{0};
  pool.parallel_for(2, 1, [&](int64_t, int64_t, int ti) {
    arrived.fetch_add(1);
    while (arrived.load() < 2) std::this_thread::yield();
    if (ti != 0) worker_chunks.fetch_add(1);
  });
  EXPECT_EQ(worker_chunks.load(), 1);
}

TEST(ThreadPool, ChunkExceptionReachesTheCaller) {
  ThreadPool pool(2);
  EXPECT_THROW(pool.parallel_for(100, 1,
                                 [](int64_t b, int64_t e, int) {
                                   if (b <= 50 && 50 < e) throw std::runtime_error("chunk failed");
                                 }),
               std::runtime_error);
  expect_each_item_once(pool, 100, 1);  // the pool still works afterwards
}

}  // namespace
}  // namespace ds4
