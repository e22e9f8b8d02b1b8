// The pool's workers after idle time: within the idle spin (spinning) and
// past it (asleep), every worker still takes part in the next loop and
// every task runs once; spinning workers start with the first tasks in
// their order. A loop's callerFirst job runs once on the caller while the
// workers already take tasks. GuidedSplit's tasks shrink to one
// granule at the end of a loop.
#include "runtime/cpu/ThreadPool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <numeric>
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

// With every worker spinning, worker w (thread w + 1) starts with task w
// without the shared counter; the caller and the workers after their first
// task take the rest; every task runs once.
TEST(ThreadPool, SpinningWorkersStartWithTheFirstTasksInTheirOrder) {
  ThreadPool pool(4);
  pool.setIdleSpin(2000000); // 2 s: no worker sleeps between the loops below
  pool.parallelFor(4, [](int64_t, int) {});
  for (int round = 0; round < 20; ++round) {
    std::vector<int> threadOf(40, -1);
    std::vector<std::atomic<int>> runs(40);
    pool.parallelFor(40, [&](int64_t task, int thread) {
      threadOf[static_cast<size_t>(task)] = thread;
      runs[static_cast<size_t>(task)].fetch_add(1);
    });
    for (int task = 0; task < 3; ++task)
      EXPECT_EQ(threadOf[static_cast<size_t>(task)], task + 1) << "round " << round;
    for (const std::atomic<int> &r : runs)
      ASSERT_EQ(r.load(), 1) << "round " << round;
  }
  pool.setIdleSpin(0);
}

// callerFirst runs once, on the calling thread, while the workers take
// tasks (it waits, up to 10 s, until one finished a task), and before the
// caller takes any; also in loops of no task, one task and one thread.
TEST(ThreadPool, CallerFirstRunsOnceOnTheCallerWhileWorkersStart) {
  ThreadPool pool(4);
  const std::thread::id caller = std::this_thread::get_id();
  for (int64_t tasks : {int64_t(0), int64_t(1), int64_t(64)}) {
    SCOPED_TRACE(tasks);
    std::atomic<int> runs{0}, done{0};
    std::atomic<bool> onCaller{true}, callerTaskBefore{false}, sawWorkerTask{false};
    const std::function<void()> first = [&] {
      runs.fetch_add(1);
      onCaller = std::this_thread::get_id() == caller;
      if (tasks < 2)
        return;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (done.load() == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::yield();
      sawWorkerTask = done.load() > 0;
    };
    pool.parallelFor(
        tasks,
        [&](int64_t, int) {
          if (std::this_thread::get_id() == caller && runs.load() == 0)
            callerTaskBefore = true;
          // Long enough that the workers cannot drain all tasks at once.
          std::this_thread::sleep_for(std::chrono::microseconds(200));
          done.fetch_add(1);
        },
        &first);
    EXPECT_EQ(runs.load(), 1);
    EXPECT_TRUE(onCaller.load());
    EXPECT_FALSE(callerTaskBefore.load());
    EXPECT_EQ(done.load(), tasks);
    if (tasks >= 2)
      EXPECT_TRUE(sawWorkerTask.load()) << "the workers should not wait for callerFirst";
  }
  ThreadPool single(1);
  int runs = 0, order = 0, firstAt = -1, taskAt = -1;
  const std::function<void()> first = [&] { ++runs, firstAt = order++; };
  single.parallelFor(
      3, [&](int64_t, int) { taskAt = order++; }, &first);
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(firstAt, 0);
  EXPECT_EQ(taskAt, 3);
}

// The rows of each task of one matrix (GuidedSplit::taskStarts).
std::vector<int64_t> taskRows(int64_t rows, int threads, int64_t granule, int64_t tasksPerThread,
                              int64_t tailGranule = 0) {
  const std::vector<int64_t> starts =
      GuidedSplit::taskStarts(rows, threads, granule, tasksPerThread, tailGranule);
  std::vector<int64_t> sizes;
  for (size_t i = 1; i < starts.size(); ++i)
    sizes.push_back(starts[i] - starts[i - 1]);
  return sizes;
}

// A decode step's gate/up rows (8 experts of 2048) on 16 threads: 16 tasks
// a thread of whole 16-row groups, never growing, the last ones a group
// each, all rows given out once; a small split shrinks as it goes; a
// batch's limit cuts a task short.
TEST(GuidedSplit, TasksShrinkToOneGranuleAtTheEnd) {
  const int64_t rows = 8 * 2048, granule = 16;
  const std::vector<int64_t> sizes = taskRows(rows, 16, granule, 16);
  EXPECT_EQ(sizes.front(), rows / 256);
  EXPECT_EQ(sizes.back(), granule);
  int64_t total = 0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(sizes[i] % granule, 0) << i;
    if (i > 0)
      EXPECT_LE(sizes[i], sizes[i - 1]) << i;
    total += sizes[i];
  }
  EXPECT_EQ(total, rows);
  EXPECT_GT(sizes.size(), size_t(256)); // the equal tasks, then shorter ones
  EXPECT_LT(sizes.size(), size_t(320));

  // 160 rows, 2 threads, one task each at most 80: a quarter of what is
  // left each time, in whole groups.
  EXPECT_EQ(taskRows(160, 2, granule, 1), (std::vector<int64_t>{48, 32, 32, 16, 16, 16}));
  GuidedSplit limited(rows, 16, granule, 16);
  EXPECT_EQ(limited.next(40), 40); // the rest of a batch
  EXPECT_EQ(limited.next(rows), 64);
  GuidedSplit one(5, 4, granule, 4);
  EXPECT_EQ(one.next(5), 5); // fewer rows than a granule
}

// With a tail granule of 4 rows, the same decode step's tasks are whole
// groups while a thread's half-share is above 12 rows, so every one of them
// starts on a group; then 12, 8 and 4 rows, never growing; all rows given
// out once. A tail granule of the group changes nothing.
TEST(GuidedSplit, LastTasksShrinkToTheTailGranule) {
  const int64_t rows = 8 * 2048, granule = 16, tail = 4;
  const std::vector<int64_t> sizes = taskRows(rows, 16, granule, 16, tail);
  EXPECT_EQ(sizes.front(), rows / 256);
  EXPECT_EQ(sizes.back(), tail);
  int64_t total = 0, firstUnderAGroup = -1;
  for (size_t i = 0; i < sizes.size(); ++i) {
    EXPECT_EQ(sizes[i] % tail, 0) << i;
    if (i > 0)
      EXPECT_LE(sizes[i], sizes[i - 1]) << i;
    if (sizes[i] < granule && firstUnderAGroup < 0)
      firstUnderAGroup = int64_t(i);
    if (firstUnderAGroup < 0)
      EXPECT_EQ(total % granule, 0) << "task " << i << " starts inside a group";
    total += sizes[i];
  }
  EXPECT_EQ(total, rows);
  ASSERT_GT(firstUnderAGroup, 0);
  EXPECT_EQ(sizes[size_t(firstUnderAGroup)], 12);
  // What is left when the tasks drop under a group: a half-share of 12 rows
  // or less, so at most 2 x 16 threads x 12 rows.
  const int64_t leftThen =
      rows - std::accumulate(sizes.begin(), sizes.begin() + firstUnderAGroup, int64_t(0));
  EXPECT_LE(leftThen, 2 * 16 * 12);
  // The 4-row tasks: those taken once a half-share is 4 rows or less, so
  // at most 2 x 16 x 4 rows, and more than that less one 8-row task.
  const int64_t tailRows = tail * std::count(sizes.begin(), sizes.end(), tail);
  EXPECT_LE(tailRows, 2 * 16 * tail);
  EXPECT_GT(tailRows, 2 * 16 * tail - 8);
  // Without a smaller tail granule, the split is the one above.
  EXPECT_EQ(taskRows(rows, 16, granule, 16, granule), taskRows(rows, 16, granule, 16));
  // 160 rows, 2 threads: as above until a half-share is 12 rows or less.
  EXPECT_EQ(taskRows(160, 2, granule, 1, tail),
            (std::vector<int64_t>{48, 32, 32, 12, 12, 8, 4, 4, 4, 4}));
}

} // namespace
} // namespace kt::cpu
