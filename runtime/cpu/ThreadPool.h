// A fixed pool of worker threads for the CPU executor. The calling thread
// takes part in every parallel loop, so a pool of N threads starts N - 1
// workers. On several NUMA nodes the pool starts N workers, each pinned to
// one node's CPUs, and the caller only waits: it stays unpinned, so the
// threads it starts later (OpenMP's, the GPU driver's) are not confined to
// one node.
#pragma once

#include "runtime/cpu/Numa.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace kt::cpu {

// The row counts of a parallel loop's tasks over `rows` rows of weights, in
// the order the pool hands them out: `tasksPerThread` equal tasks per
// thread, in whole `granule`-row groups, until the rows not yet given out
// are few; then each takes 1 / (2 threads) of those (at least a group), so
// that the threads finish within a short task of each other, where equal
// tasks to the end leave them idle for half a task on average. (Larger
// first tasks, guided self-scheduling proper, were slower end to end on the
// GPU machine's shared host: a thread slowed down holds a long task.)
// With a `tailGranule` below `granule`, the last tasks, those under a
// group, shrink further, in steps of tailGranule rows: a 16-row group of an
// expert's gate and up rows takes a thread 18 us at its share of the host's
// bandwidth, so the others would wait about 9 us at the end of each loop.
class GuidedSplit {
public:
  GuidedSplit(int64_t rows, int threads, int64_t granule, int64_t tasksPerThread,
              int64_t tailGranule = 0)
      : left_(rows), threads_(threads > 0 ? threads : 1), granule_(granule > 0 ? granule : 1),
        tailGranule_(tailGranule > 0 ? std::min(tailGranule, granule_) : granule_) {
    const int64_t tasks = threads_ * std::max<int64_t>(tasksPerThread, 1);
    most_ = roundUp((rows + tasks - 1) / tasks, granule_);
  }
  // The next task's rows, at most `limit` (what is left of its batch).
  int64_t next(int64_t limit) {
    const int64_t half = (left_ + 2 * threads_ - 1) / (2 * threads_);
    const int64_t share = roundUp(half, half > granule_ - tailGranule_ ? granule_ : tailGranule_);
    const int64_t rows = std::min({limit, most_, share});
    left_ -= rows;
    return rows;
  }
  // One matrix's tasks into `starts`: each task's first row, then `rows`.
  static void taskStarts(int64_t rows, int threads, int64_t granule, int64_t tasksPerThread,
                         int64_t tailGranule, std::vector<int64_t> &starts) {
    GuidedSplit split(rows, threads, granule, tasksPerThread, tailGranule);
    starts.assign(1, 0);
    while (starts.back() < rows)
      starts.push_back(starts.back() + split.next(rows - starts.back()));
  }
  static std::vector<int64_t> taskStarts(int64_t rows, int threads, int64_t granule,
                                         int64_t tasksPerThread, int64_t tailGranule = 0) {
    std::vector<int64_t> starts;
    taskStarts(rows, threads, granule, tasksPerThread, tailGranule, starts);
    return starts;
  }

private:
  static int64_t roundUp(int64_t rows, int64_t granule) {
    return std::max(granule, (rows + granule - 1) / granule * granule);
  }
  int64_t left_;
  int64_t threads_, granule_, tailGranule_, most_ = 0;
};

// The row kernels' loops: tasks of 16-row groups (a 64-byte line of output
// per token, so threads do not share lines), the last ones of 4 rows (the
// few lines two threads then share cost far less than the wait for a
// longer last task).
constexpr int64_t kRowGroup = 16, kRowTailGroup = 4;

// A non-owning reference to a callable, for a loop's body: a loop holds its
// body only while it runs, and std::function would allocate for a lambda
// of more than two captures (a decode step runs a few loops per layer; see
// Workspace: nothing is allocated per token once warm).
template <typename Signature> class FunctionRef;
template <typename Result, typename... Args> class FunctionRef<Result(Args...)> {
public:
  template <typename Callable,
            typename = std::enable_if_t<!std::is_same_v<std::decay_t<Callable>, FunctionRef>>>
  FunctionRef(Callable &&callable) // NOLINT: converts from any callable, as std::function does
      : object_(const_cast<void *>(static_cast<const void *>(std::addressof(callable)))),
        call_([](void *object, Args... args) -> Result {
          return (*static_cast<std::remove_reference_t<Callable> *>(object))(
              std::forward<Args>(args)...);
        }) {}
  Result operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

private:
  void *object_;
  Result (*call_)(void *, Args...);
};

class ThreadPool {
public:
  // `threads` <= 0: one per hardware thread. With a multi-node `topology`
  // (and at least a thread per node), the threads are spread over the nodes
  // in proportion to their CPUs.
  explicit ThreadPool(int threads, const NumaTopology &topology = {});
  ~ThreadPool();
  ThreadPool(const ThreadPool &) = delete;
  ThreadPool &operator=(const ThreadPool &) = delete;

  int threadCount() const { return static_cast<int>(nodeOfThread_.size()); }
  // NUMA nodes the threads are pinned to (1: none).
  int nodeCount() const {
    return static_cast<int>(nodes_.nodes.size()) > 1 ? static_cast<int>(nodes_.nodes.size()) : 1;
  }
  const NumaTopology &topology() const { return nodes_; }
  // Threads pinned to node `node` (all of them on a single node).
  int threadsOnNode(int node) const;
  int nodeOfThread(int thread) const { return nodeOfThread_[static_cast<size_t>(thread)]; }

  // Runs body(task, thread) for every task in [0, tasks) and returns when all
  // are done. When no worker sleeps, each worker starts with one of the
  // first tasks (in the workers' order); the others are handed out one at a
  // time in increasing order, so uneven tasks balance. `thread` in
  // [0, threadCount()) identifies the thread (0 is the caller, except on
  // several NUMA nodes) for per-thread buffers. Not reentrant: `body` must
  // not call parallelFor, and one thread drives the pool at a time.
  // `callerFirst`, if given, runs once on the calling thread after the
  // workers have started and before it takes tasks (also when there are
  // none): host work that would otherwise delay the loop's start, such as
  // queueing another device's share of a step.
  void parallelFor(int64_t tasks, FunctionRef<void(int64_t task, int thread)> body,
                   const std::function<void()> *callerFirst = nullptr);
  // The same for tasks grouped by the node whose memory they read: tasks
  // [nodeStarts[n], nodeStarts[n + 1]) go to node n's threads (nodeStarts
  // has nodeCount() + 1 entries). With `steal`, a thread whose node has no
  // tasks left takes other nodes' (balance over locality); without, node
  // n's tasks run on node n only (first touch of node-local memory).
  // How long idle workers keep spinning (on top of the brief spin they
  // always make) before they sleep; 0 by default. The GPU executor's decode
  // leaves the pool idle for a few hundred microseconds between MoE layers
  // (the GPU's attention), where waking sleeping workers costs system calls
  // and a staggered start.
  void setIdleSpin(int64_t microseconds) { idleSpinNanos_.store(microseconds * 1000); }
  void parallelForNodes(const std::vector<int64_t> &nodeStarts,
                        FunctionRef<void(int64_t task, int thread)> body, bool steal = true,
                        const std::function<void()> *callerFirst = nullptr);

private:
  void workerLoop(int thread);
  void runTasks(int thread);
  using Body = FunctionRef<void(int64_t, int)>;
  void run(const Body &body, const std::function<void()> *callerFirst);

  // One node's tasks; a cache line each, so nodes do not contend.
  struct alignas(64) TaskRange {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };

  NumaTopology nodes_;            // empty unless the threads are pinned
  std::vector<int> nodeOfThread_; // per thread (0 is the caller unless pinned)
  bool callerRuns_ = true;        // whether the calling thread runs tasks

  std::vector<std::thread> workers_;
  // A decode step runs dozens of short loops; workers spin briefly between
  // them before they sleep, so that waking them costs no system call.
  // The loop's start and each worker's end on cache lines of their own
  // (the start and a count of workers left on one line made a loop of a
  // task per thread take 4.5 us instead of 2.9 on 16 Sapphire Rapids
  // cores).
  alignas(64) std::atomic<uint64_t> generation_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stopping_{false};
  // Each worker's last loop finished (its generation), a cache line each:
  // the caller reads them all, where a count of workers still in the loop
  // had them queue for one line at the end of every loop.
  struct alignas(64) WorkerDone {
    std::atomic<uint64_t> generation{0};
  };
  std::unique_ptr<WorkerDone[]> workerDone_;
  std::atomic<bool> callerSleeps_{false}; // the caller waits on done_
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const Body *body_ = nullptr;
  std::unique_ptr<TaskRange[]> ranges_; // one per node
  // A loop's first tasks, one per worker in the workers' order, taken
  // without the shared counter: all threads start at once, and 16 of them
  // fetching from one counter serialize their first tasks' start.
  int64_t staticTasks_ = 0;
  bool steal_ = true;
  std::atomic<int64_t> idleSpinNanos_{0};
};

} // namespace kt::cpu
