#include "runtime/cpu/ThreadPool.h"

#include <algorithm>
#include <chrono>
#include <pthread.h>
#include <sched.h>

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

// Spins (pausing) until `ready()` holds or `nanoseconds` have passed.
template <typename Ready> bool spinFor(int64_t nanoseconds, Ready ready) {
  if (nanoseconds <= 0)
    return ready();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::nanoseconds(nanoseconds);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready())
        return true;
      cpuRelax();
    }
    if (std::chrono::steady_clock::now() >= deadline)
      return ready();
  }
}

} // namespace

ThreadPool::ThreadPool(int threads, const NumaTopology &topology) {
  if (threads <= 0)
    threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const size_t nodes = topology.nodes.size();
  if (nodes > 1 && static_cast<size_t>(threads) >= nodes) {
    nodes_ = topology;
    callerRuns_ = false;
    // Threads per node in proportion to the node's CPUs, at least one each.
    size_t cpus = 0;
    for (const NumaNode &node : nodes_.nodes)
      cpus += node.cpus.size();
    std::vector<int> perNode(nodes, 1);
    int given = static_cast<int>(nodes);
    for (size_t n = 0; n < nodes; ++n) {
      const int share =
          static_cast<int>(static_cast<size_t>(threads) * nodes_.nodes[n].cpus.size() / cpus);
      const int extra = std::min(threads - given, std::max(0, share - 1));
      perNode[n] += extra;
      given += extra;
    }
    for (size_t n = 0; given < threads; n = (n + 1) % nodes, ++given)
      ++perNode[n]; // rounding leftovers
    for (size_t n = 0; n < nodes; ++n)
      nodeOfThread_.insert(nodeOfThread_.end(), static_cast<size_t>(perNode[n]),
                           static_cast<int>(n));
  } else {
    nodeOfThread_.assign(static_cast<size_t>(threads), 0);
  }
  ranges_.reset(new TaskRange[std::max<size_t>(nodes_.nodes.size(), 1)]);
  const int firstWorker = callerRuns_ ? 1 : 0;
  workerDone_.reset(new WorkerDone[static_cast<size_t>(std::max(threads - firstWorker, 1))]);
  workers_.reserve(static_cast<size_t>(threads - firstWorker));
  for (int thread = firstWorker; thread < threads; ++thread)
    workers_.emplace_back([this, thread] { workerLoop(thread); });
}

int ThreadPool::threadsOnNode(int node) const {
  return static_cast<int>(std::count(nodeOfThread_.begin(), nodeOfThread_.end(), node));
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
  const int64_t worker = thread - (callerRuns_ ? 1 : 0);
  if (worker >= 0 && worker < staticTasks_)
    (*body_)(worker, thread);
  // The thread's own node first, then (when stealing) the others in turn.
  const int nodes = nodeCount(), home = nodeOfThread_[static_cast<size_t>(thread)];
  for (int i = 0; i < (steal_ ? nodes : 1); ++i) {
    TaskRange &range = ranges_[static_cast<size_t>((home + i) % nodes)];
    for (;;) {
      const int64_t task = range.next.fetch_add(1, std::memory_order_relaxed);
      if (task >= range.end)
        break;
      (*body_)(task, thread);
    }
  }
}

void ThreadPool::parallelFor(int64_t tasks, FunctionRef<void(int64_t task, int thread)> body,
                             const std::function<void()> *callerFirst) {
  if (tasks <= 0 || threadCount() == 1 || tasks == 1) {
    if (callerFirst)
      (*callerFirst)();
    for (int64_t task = 0; task < tasks; ++task)
      body(task, 0);
    return;
  }
  // Every thread starts at its node's range; all tasks sit in node 0's, and
  // the others are empty, so they all end up there.
  // First tasks by worker only when none sleeps: a sleeping worker's task
  // would wait for its wake-up instead of going to a thread already running.
  staticTasks_ = sleepers_.load() == 0 ? std::min(tasks, static_cast<int64_t>(workers_.size())) : 0;
  for (int n = 0; n < nodeCount(); ++n) {
    ranges_[static_cast<size_t>(n)].next.store(n == 0 ? staticTasks_ : 0,
                                               std::memory_order_relaxed);
    ranges_[static_cast<size_t>(n)].end = n == 0 ? tasks : 0;
  }
  steal_ = true;
  run(body, callerFirst);
}

void ThreadPool::parallelForNodes(const std::vector<int64_t> &nodeStarts,
                                  FunctionRef<void(int64_t task, int thread)> body, bool steal,
                                  const std::function<void()> *callerFirst) {
  const int nodes = nodeCount();
  if (nodes == 1 || nodeStarts.size() != static_cast<size_t>(nodes) + 1) {
    parallelFor(nodeStarts.empty() ? 0 : nodeStarts.back(), body, callerFirst);
    return;
  }
  for (int n = 0; n < nodes; ++n) {
    ranges_[static_cast<size_t>(n)].next.store(nodeStarts[static_cast<size_t>(n)],
                                               std::memory_order_relaxed);
    ranges_[static_cast<size_t>(n)].end = nodeStarts[static_cast<size_t>(n) + 1];
  }
  staticTasks_ = 0;
  steal_ = steal;
  run(body, callerFirst);
}

void ThreadPool::run(const Body &body, const std::function<void()> *callerFirst) {
  body_ = &body;
  // Publishes the loop; a worker that went to sleep before it is woken (the
  // seq_cst pair generation_/sleepers_ guarantees one side sees the other).
  const uint64_t loop = generation_.fetch_add(1) + 1;
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    wake_.notify_all();
  }
  if (callerFirst)
    (*callerFirst)();
  if (callerRuns_)
    runTasks(0);
  size_t finished = 0; // workers [0, finished) seen done
  auto allDone = [&] {
    while (finished < workers_.size() && workerDone_[finished].generation.load() == loop)
      ++finished;
    return finished == workers_.size();
  };
  if (!spinUntil(allDone)) {
    // A worker that finishes after callerSleeps_ is set notifies under the
    // mutex (the seq_cst pair callerSleeps_/its generation, as above).
    std::unique_lock<std::mutex> lock(mutex_);
    callerSleeps_.store(true);
    done_.wait(lock, allDone);
    callerSleeps_.store(false);
  }
  body_ = nullptr;
}

void ThreadPool::workerLoop(int thread) {
  if (!callerRuns_) {
    // Pinned to its node's CPUs (they were checked against this process's
    // affinity, so this does not fail).
    cpu_set_t mask;
    CPU_ZERO(&mask);
    for (int cpu : nodes_.nodes[static_cast<size_t>(nodeOfThread(thread))].cpus)
      CPU_SET(cpu, &mask);
    pthread_setaffinity_np(pthread_self(), sizeof(mask), &mask);
  }
  uint64_t seen = 0;
  for (;;) {
    if (!spinUntil([&] { return generation_.load() != seen; }) &&
        !spinFor(idleSpinNanos_.load(), [&] { return generation_.load() != seen; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
    }
    if (stopping_.load())
      return;
    seen = generation_.load();
    runTasks(thread);
    workerDone_[static_cast<size_t>(thread - (callerRuns_ ? 1 : 0))].generation.store(seen);
    if (callerSleeps_.load()) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_.notify_one();
    }
  }
}

} // namespace kt::cpu
