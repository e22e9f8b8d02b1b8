// A fixed pool of worker threads for the CPU executor. The calling thread
// takes part in every parallel loop, so a pool of N threads starts N - 1
// workers.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kt::cpu {

class ThreadPool {
public:
  // `threads` <= 0: one per hardware thread.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

  int threadCount() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs body(task, thread) for every task in [0, tasks) and returns when all
  // are done. Tasks are handed out one at a time in increasing order, so
  // uneven tasks balance; `thread` in [0, threadCount()) identifies the
  // thread (0 is the caller) for per-thread buffers. Not reentrant: `body`
  // must not call parallelFor, and one thread drives the pool at a time.
  void parallelFor(int64_t tasks, const std::function<void(int64_t task, int thread)> &body);

private:
  void workerLoop(int thread);
  void runTasks(int thread);

  std::vector<std::thread> workers_;
  // A decode step runs dozens of short loops; workers spin briefly between
  // them before they sleep, so that waking them costs no system call.
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<int> pending_{0}; // workers still in the current loop
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(int64_t, int)> *body_ = nullptr;
  int64_t taskCount_ = 0;
  std::atomic<int64_t> nextTask_{0};
};

} // namespace kt::cpu
