#include "runtime/cpu/ThreadPool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kt::cpu {

namespace {

inline void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Waits until `ready()` holds: a short busy spin, then yields (which let
// other processes run on a busy machine); false if it still does not hold.
template <typename Ready> bool spinUntil(Ready ready) {
  for (int i = 0; i < 512; ++i) {
    if (ready())
      return true;
    cpuRelax();
  }
  for (int i = 0; i < 64; ++i) {
    if (ready())
      return true;
    std::this_thread::yield();
  }
  return ready();
}

} // namespace

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0)
    threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  workers_.reserve(static_cast<size_t>(threads - 1));
  for (int thread = 1; thread < threads; ++thread)
    workers_.emplace_back([this, thread] { workerLoop(thread); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (std::thread &worker : workers_)
    worker.join();
}

void ThreadPool::runTasks(int thread) {
  for (;;) {
    const int64_t task = nextTask_.fetch_add(1, std::memory_order_relaxed);
    if (task >= taskCount_)
      return;
    (*body_)(task, thread);
  }
}

void ThreadPool::parallelFor(int64_t tasks,
                             const std::function<void(int64_t task, int thread)> &body) {
  if (tasks <= 0)
    return;
  if (workers_.empty() || tasks == 1) {
    for (int64_t task = 0; task < tasks; ++task)
      body(task, 0);
    return;
  }
  body_ = &body;
  taskCount_ = tasks;
  nextTask_.store(0, std::memory_order_relaxed);
  pending_.store(static_cast<int>(workers_.size()));
  // Publishes the loop; a worker that went to sleep before it is woken (the
  // seq_cst pair generation_/sleepers_ guarantees one side sees the other).
  generation_.fetch_add(1);
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  runTasks(0);
  if (!spinUntil([this] { return pending_.load() == 0; })) {
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_.load() == 0; });
  }
  body_ = nullptr;
}

void ThreadPool::workerLoop(int thread) {
  uint64_t seen = 0;
  for (;;) {
    if (!spinUntil([&] { return generation_.load() != seen; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
    }
    if (stopping_.load())
      return;
    seen = generation_.load();
    runTasks(thread);
    if (pending_.fetch_sub(1) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
}

} // namespace kt::cpu
