// The pool's workers after idle time: within the idle spin (spinning) and
// past it (asleep), every worker still takes part in the next loop and
// every task runs once.
#include "runtime/cpu/ThreadPool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace kt::cpu {
namespace {

// A loop of `threads` tasks that each wait (up to 10 s) until all have
// started, so it ends only when every thread took one; returns whether they met.
bool everyThreadTakesATask(ThreadPool &pool) {
  const int threads = pool.threadCount();
  std::atomic<int> started{0};
  std::atomic<bool> met{true};
  std::vector<std::atomic<int>> runs(static_cast<size_t>(threads));
  pool.parallelFor(threads, [&](int64_t task, int) {
    runs[static_cast<size_t>(task)].fetch_add(1);
    started.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (started.load() < threads)
      if (std::chrono::steady_clock::now() > deadline) {
        met = false;
        return;
      }
  });
  for (const std::atomic<int> &r : runs)
    if (r.load() != 1)
      return false;
  return met.load();
}

TEST(ThreadPool, WorkersTakePartAfterSpinningAndAfterSleeping) {
  ThreadPool pool(4);
  ASSERT_EQ(pool.threadCount(), 4);
  for (int64_t spinMicros : {int64_t(0), int64_t(30000)}) {
    SCOPED_TRACE(spinMicros);
    pool.setIdleSpin(spinMicros);
    // Idle for no time, for less than the spin, and for longer (asleep).
    for (int idleMillis : {0, 5, 80}) {
      std::this_thread::sleep_for(std::chrono::milliseconds(idleMillis));
      EXPECT_TRUE(everyThreadTakesATask(pool)) << "after " << idleMillis << " ms idle";
    }
  }
  // Many short loops back to back: every task of each runs once.
  pool.setIdleSpin(1000);
  for (int round = 0; round < 200; ++round) {
    std::vector<std::atomic<int>> runs(97);
    pool.parallelFor(97, [&](int64_t task, int) { runs[static_cast<size_t>(task)].fetch_add(1); });
    for (const std::atomic<int> &r : runs)
      ASSERT_EQ(r.load(), 1) << "round " << round;
  }
}

} // namespace
} // namespace kt::cpu
