#include "runtime/cpu/FeedForward.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sys/mman.h>
#include <tuple>
#include <unistd.h>
#include <utility>

namespace kt::cpu {

namespace {

struct RowTask {
  size_t batch;
  int64_t begin, end;
  int node = -1; // the NUMA band the rows are read from; -1: the whole matrix
};

// A row range of a batch's matrix: (first row, rows).
using RowRange = std::pair<int64_t, int64_t>;

// Appends tasks over `range(batch)` of every batch, of whole `granule`-row
// groups, about kTasksPerThread per thread over all batches, shorter at the
// end (GuidedSplit, down to `tailGranule` rows): a decode step's 8 experts
// on 16 threads take 64 gate/up rows a task, the last eighth of them 48
// down to 4. (Equal tasks to the end left the threads idle for half a task
// at the end of each loop; 4 tasks per thread read 5-10% fewer bytes/s end
// to end on the 16-core host.)
constexpr int64_t kTasksPerThread = 16;
template <typename Batch, typename RangeOf>
void appendRowTasks(const std::vector<Batch> &batches, RangeOf range, int threads, int64_t granule,
                    int64_t tailGranule, int node, std::vector<RowTask> &tasks) {
  int64_t total = 0;
  for (const Batch &b : batches)
    total += range(b).second;
  GuidedSplit split(total, threads, granule, kTasksPerThread, tailGranule);
  for (size_t i = 0; i < batches.size(); ++i) {
    const auto [first, rows] = range(batches[i]);
    for (int64_t begin = first; begin < first + rows;) {
      const int64_t end = begin + split.next(first + rows - begin);
      tasks.push_back({i, begin, end, node});
      begin = end;
    }
  }
}

// Tasks for parallelForNodes, and each node's first task.
struct NodeTasks {
  std::vector<RowTask> tasks;
  std::vector<int64_t> nodeStarts;
};

// The first row of `which` a batch computes: its gate and up rows start
// after the gated rows it is given.
int64_t firstComputedRow(const FfnBatch &b, WeightMatrix FfnMatrices::*which) {
  return which == &FfnMatrices::down ? 0 : b.givenGatedRows;
}
int64_t firstComputedRow(const TileFfnBatch &, WeightMatrix FfnMatrices::*) { return 0; }

// The rows [first, first + rows) with those before `from` left out.
RowRange rowsFrom(int64_t first, int64_t rows, int64_t from) {
  const int64_t begin = std::max(first, from);
  return {begin, std::max<int64_t>(0, first + rows - begin)};
}

// The rows of `which` of every batch as tasks (from firstComputedRow on):
// with NUMA bands (every batch has them and the pool spans several nodes),
// node n's tasks cover band n of each batch, split by `append` for node n's
// threads; else all tasks are node 0's and every thread takes them.
template <typename Batch, typename Append>
void splitOnNodes(const std::vector<Batch> &batches, const ThreadPool &pool,
                  WeightMatrix FfnMatrices::*which, Append append, NodeTasks &out) {
  out.tasks.clear();
  out.nodeStarts.clear();
  const int nodes = pool.nodeCount();
  const bool banded = nodes > 1 && !batches.empty() &&
                      std::all_of(batches.begin(), batches.end(),
                                  [](const Batch &b) { return b.bands != nullptr; });
  out.nodeStarts.push_back(0);
  if (!banded) {
    append(
        [&](const Batch &b) { return rowsFrom(0, (b.w.*which).rows, firstComputedRow(b, which)); },
        pool.threadCount(), -1, out.tasks);
    out.nodeStarts.resize(static_cast<size_t>(nodes) + 1, static_cast<int64_t>(out.tasks.size()));
    return;
  }
  const bool down = which == &FfnMatrices::down;
  for (int n = 0; n < nodes; ++n) {
    append(
        [&](const Batch &b) {
          const FfnBand &band = b.bands[n];
          return rowsFrom(down ? band.downFirst : band.gateUpFirst, (band.w.*which).rows,
                          firstComputedRow(b, which));
        },
        pool.threadsOnNode(n), n, out.tasks);
    out.nodeStarts.push_back(static_cast<int64_t>(out.tasks.size()));
  }
}

// The matrix holding a task's rows of `which` and the row it starts at:
// the task's NUMA band, or the whole matrix.
template <typename Batch>
std::pair<const WeightMatrix *, int64_t> taskMatrix(const Batch &b, const RowTask &task,
                                                    WeightMatrix FfnMatrices::*which) {
  if (task.node < 0)
    return {&(b.w.*which), 0};
  const FfnBand &band = b.bands[task.node];
  return {&(band.w.*which), which == &FfnMatrices::down ? band.downFirst : band.gateUpFirst};
}

// y = W x for rows [rowBegin, rowEnd): the generated kernel when the matrix
// has one (and its inputs were prepared), else the reference.
void rowsProduct(const WeightMatrix &w, int64_t rowBegin, int64_t rowEnd, const float *x,
                 const KernelInput &in, int64_t tokens, float *y, int64_t ldy, float *scratch) {
  const LoadedKernel &kernel = w.kernel;
  const int8_t *xq = kernel.nibbleOrderInput ? in.quantizedNibbleOrder : in.quantized;
  if (kernel.function && in.sums && (!kernel.quantizedInput || xq)) {
    kernel.function(w.data + static_cast<uint64_t>(rowBegin) * w.rowBytes, w.rowBytes,
                    rowEnd - rowBegin, x, w.cols, in.sums, xq, in.scales, in.sums16, tokens, y,
                    ldy);
    return;
  }
  matmulRows(w, rowBegin, rowEnd, x, w.cols, tokens, y, ldy, scratch);
}

// What the generated kernels among `kernels` read: any inputs at all, the
// int8 activations in order, in nibble order.
struct InputsRead {
  bool any = false, inOrder = false, nibbleOrder = false;
};
template <typename Kernels> InputsRead inputsRead(const Kernels &kernels) {
  InputsRead read;
  for (const LoadedKernel *kernel : kernels) {
    if (!kernel || !kernel->function)
      continue;
    read.any = true;
    read.inOrder = read.inOrder || (kernel->quantizedInput && !kernel->nibbleOrderInput);
    read.nibbleOrder = read.nibbleOrder || kernel->nibbleOrderInput;
  }
  return read;
}

// The inputs generated kernels read, for every batch that has such a
// kernel (in parallel over batches).
template <typename Select>
void prepareKernelInputs(ThreadPool &pool, const std::vector<FfnBatch> &batches, Select select) {
  pool.parallelFor(static_cast<int64_t>(batches.size()), [&](int64_t index, int) {
    const FfnBatch &b = batches[static_cast<size_t>(index)];
    auto [kernels, x, cols, in] = select(b);
    const auto [any, inOrder, nibbleOrder] = inputsRead(kernels);
    if (any && in.sums)
      sumRunsOf32(x, cols, cols, b.tokens, in.sums);
    if ((inOrder || nibbleOrder) && in.scales)
      quantizeActivations(x, cols, cols, b.tokens, inOrder ? in.quantized : nullptr, in.scales,
                          in.sums16, nibbleOrder ? in.quantizedNibbleOrder : nullptr);
  });
}

// gate = silu(gate) * up for rows [begin, end) of every token (rows `ld` apart).
void gateRows(float *gate, const float *up, int64_t ld, int64_t tokens, int64_t begin,
              int64_t end) {
  for (int64_t t = 0; t < tokens; ++t) {
    float *g = gate + t * ld;
    const float *u = up + t * ld;
    for (int64_t r = begin; r < end; ++r)
      g[r] = silu(g[r]) * u[r];
  }
}

// Splits the rows of every tile batch into tasks of whole panels with about
// equal work, four per thread, heaviest first (the pool hands tasks out in
// order): an expert many tokens chose is spread over many threads instead
// of keeping one busy after the others finish. A panel's work is its
// decoding, about as long as multiplying 48 tokens, plus its token blocks.
template <typename RangeOf>
void appendTileTasks(const std::vector<TileFfnBatch> &batches, RangeOf range, int threads, int node,
                     std::vector<RowTask> &tasks) {
  constexpr int64_t kDecodeTokens = 48;
  auto cost = [](const TileFfnBatch &b) { return paddedTileTokens(b.tokens) + kDecodeTokens; };
  int64_t total = 0;
  for (const TileFfnBatch &b : batches)
    total += range(b).second * cost(b);
  const int64_t target = std::max<int64_t>(1, total / (threads * 4));
  const size_t firstTask = tasks.size();
  for (size_t i = 0; i < batches.size(); ++i) {
    const auto [first, rows] = range(batches[i]);
    int64_t perTask = (target / cost(batches[i]) + kTileRows / 2) / kTileRows * kTileRows;
    perTask = std::clamp<int64_t>(perTask, kTileRows, std::max<int64_t>(rows, kTileRows));
    for (int64_t begin = first; begin < first + rows; begin += perTask)
      tasks.push_back({i, begin, std::min(first + rows, begin + perTask), node});
  }
  std::stable_sort(tasks.begin() + static_cast<std::ptrdiff_t>(firstTask), tasks.end(),
                   [&](const RowTask &a, const RowTask &b) {
                     return (a.end - a.begin) * cost(batches[a.batch]) >
                            (b.end - b.begin) * cost(batches[b.batch]);
                   });
}

// This thread's scratch for tile kernels of `cols`-wide rows, 64-byte aligned.
uint8_t *tileScratch(int64_t cols) {
  float *raw = threadScratch(4, (tileKernelScratchBytes(cols) + 128) / sizeof(float));
  return reinterpret_cast<uint8_t *>((reinterpret_cast<uintptr_t>(raw) + 63) & ~uintptr_t{63});
}

// Token rows packed as bf16 B tiles: `rows(i)` gives batch i's (f32
// source, destination, cols, tokens); kTileTokens per task, so only the last
// task of a batch pads.
template <typename RowsOf> void packTokenTiles(ThreadPool &pool, size_t batches, RowsOf rows) {
  std::vector<std::pair<size_t, int64_t>> tasks;
  for (size_t i = 0; i < batches; ++i)
    for (int64_t first = 0; first < std::get<3>(rows(i)); first += kTileTokens)
      tasks.push_back({i, first});
  pool.parallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t index, int) {
    auto [batch, first] = tasks[static_cast<size_t>(index)];
    auto [x, out, cols, tokens] = rows(batch);
    packTileActivations(x + first * cols, cols, cols, std::min(kTileTokens, tokens - first),
                        out + first * cols);
  });
}

} // namespace

int64_t paddedTileTokens(int64_t tokens) {
  return (tokens + kTileTokens - 1) / kTileTokens * kTileTokens;
}

bool runsOnTiles(const FfnMatrices &w) {
  return w.gate.kernel.tiles && w.up.kernel.tiles && w.down.kernel.tiles &&
         w.gate.rows % kTileRows == 0 && w.down.rows % kTileRows == 0;
}

void runTileFeedForward(ThreadPool &pool, const std::vector<TileFfnBatch> &batches) {
  if (batches.empty())
    return;
  auto tileTasks = [&](auto range, int threads, int node, std::vector<RowTask> &tasks) {
    appendTileTasks(batches, range, threads, node, tasks);
  };
  packTokenTiles(pool, batches.size(), [&](size_t i) {
    const TileFfnBatch &b = batches[i];
    return std::make_tuple(b.x, b.xBf16, b.w.gate.cols, b.tokens);
  });
  NodeTasks split;
  splitOnNodes(batches, pool, &FfnMatrices::gate, tileTasks, split);
  pool.parallelForNodes(split.nodeStarts, [&](int64_t index, int) {
    const RowTask &task = split.tasks[static_cast<size_t>(index)];
    const TileFfnBatch &b = batches[task.batch];
    const int64_t ffn = b.w.gate.rows, rows = task.end - task.begin;
    uint8_t *scratch = tileScratch(b.w.gate.cols);
    for (auto [which, y] :
         {std::pair{&FfnMatrices::gate, b.gate}, std::pair{&FfnMatrices::up, b.up}}) {
      const auto [w, first] = taskMatrix(b, task, which);
      w->kernel.tiles(w->data + static_cast<uint64_t>(task.begin - first) * w->rowBytes,
                      w->rowBytes, rows, b.xBf16, b.tokens, y + task.begin, ffn, scratch);
    }
    gateRows(b.gate, b.up, ffn, b.tokens, task.begin, task.end);
  });
  packTokenTiles(pool, batches.size(), [&](size_t i) {
    const TileFfnBatch &b = batches[i];
    return std::make_tuple(static_cast<const float *>(b.gate), b.gateBf16, b.w.down.cols, b.tokens);
  });
  splitOnNodes(batches, pool, &FfnMatrices::down, tileTasks, split);
  pool.parallelForNodes(split.nodeStarts, [&](int64_t index, int) {
    const RowTask &task = split.tasks[static_cast<size_t>(index)];
    const TileFfnBatch &b = batches[task.batch];
    const auto [w, first] = taskMatrix(b, task, &FfnMatrices::down);
    w->kernel.tiles(w->data + static_cast<uint64_t>(task.begin - first) * w->rowBytes, w->rowBytes,
                    task.end - task.begin, b.gateBf16, b.tokens, b.out + task.begin, b.w.down.rows,
                    tileScratch(w->cols));
  });
}

void tileMatmul(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens,
                uint16_t *xBf16, float *y, int64_t ldy) {
  packTokenTiles(pool, 1, [&](size_t) { return std::make_tuple(x, xBf16, w.cols, tokens); });
  struct One {
    int64_t rows;
  };
  std::vector<RowTask> tasks;
  appendRowTasks(
      std::vector<One>{{w.rows}},
      [](const One &b) {
        return RowRange{0, b.rows};
      },
      pool.threadCount(), kTileRows, kTileRows, -1, tasks);
  pool.parallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t index, int) {
    const RowTask &task = tasks[static_cast<size_t>(index)];
    w.kernel.tiles(w.data + static_cast<uint64_t>(task.begin) * w.rowBytes, w.rowBytes,
                   task.end - task.begin, xBf16, tokens, y + task.begin, ldy, tileScratch(w.cols));
  });
}

void runFeedForward(ThreadPool &pool, const std::vector<FfnBatch> &batches,
                    FunctionRef<void()> beforeDown, const std::function<void()> *callerFirst) {
  if (batches.empty()) {
    if (callerFirst)
      (*callerFirst)();
    return;
  }
  size_t scratchFloats = 0;
  for (const FfnBatch &b : batches)
    scratchFloats = std::max({scratchFloats, matmulScratchFloats(b.w.gate),
                              matmulScratchFloats(b.w.up), matmulScratchFloats(b.w.down)});

  // The driving thread's scratch, kept from call to call (Workspace: a
  // warm decode step allocates nothing).
  thread_local struct {
    std::vector<FfnBatch> gateUp; // the batches whose gated rows are not all given
    NodeTasks split;
  } scratch;
  std::vector<FfnBatch> &gateUp = scratch.gateUp;
  gateUp.clear();
  for (const FfnBatch &b : batches)
    if (b.givenGatedRows < b.w.gate.rows)
      gateUp.push_back(b);
  prepareKernelInputs(pool, gateUp, [](const FfnBatch &b) {
    return std::make_tuple(std::array<const LoadedKernel *, 2>{&b.w.gate.kernel, &b.w.up.kernel},
                           b.x, b.w.gate.cols, b.xInput);
  });
  auto gateUpTasks = [&](auto range, int threads, int node, std::vector<RowTask> &tasks) {
    appendRowTasks(gateUp, range, threads, kRowGroup, kRowTailGroup, node, tasks);
  };
  NodeTasks &split = scratch.split;
  splitOnNodes(gateUp, pool, &FfnMatrices::gate, gateUpTasks, split);
  pool.parallelForNodes(
      split.nodeStarts,
      [&](int64_t index, int) {
        const RowTask &task = split.tasks[static_cast<size_t>(index)];
        const FfnBatch &b = gateUp[task.batch];
        const int64_t ffn = b.w.gate.rows;
        float *scratch = threadScratch(0, scratchFloats);
        for (auto [which, y] :
             {std::pair{&FfnMatrices::gate, b.gate}, std::pair{&FfnMatrices::up, b.up}}) {
          const auto [w, first] = taskMatrix(b, task, which);
          rowsProduct(*w, task.begin - first, task.end - first, b.x, b.xInput, b.tokens,
                      y + task.begin, ffn, scratch);
        }
        gateRows(b.gate, b.up, ffn, b.tokens, task.begin, task.end);
      },
      true, callerFirst);
  beforeDown();

  auto rowTasks = [&](auto range, int threads, int node, std::vector<RowTask> &tasks) {
    appendRowTasks(batches, range, threads, kRowGroup, kRowTailGroup, node, tasks);
  };
  prepareKernelInputs(pool, batches, [](const FfnBatch &b) {
    return std::make_tuple(std::array<const LoadedKernel *, 2>{&b.w.down.kernel, nullptr},
                           static_cast<const float *>(b.gate), b.w.down.cols, b.gateInput);
  });
  splitOnNodes(batches, pool, &FfnMatrices::down, rowTasks, split);
  pool.parallelForNodes(split.nodeStarts, [&](int64_t index, int) {
    const RowTask &task = split.tasks[static_cast<size_t>(index)];
    const FfnBatch &b = batches[task.batch];
    const auto [w, first] = taskMatrix(b, task, &FfnMatrices::down);
    rowsProduct(*w, task.begin - first, task.end - first, b.gate, b.gateInput, b.tokens,
                b.out + task.begin, b.w.down.rows, threadScratch(0, scratchFloats));
  });
}

RoutedExperts::RoutedExperts(const gguf::TensorInfo &gate, const gguf::TensorInfo &up,
                             const gguf::TensorInfo &down, const GeneratedKernels *kernels)
    : gate_(weightMatrix(gate)), up_(weightMatrix(up)), down_(weightMatrix(down)),
      experts_(gate.ne[2]), hidden_(gate.ne[0]), ffn_(gate.ne[1]) {
  if (kernels)
    for (WeightMatrix *w : {&gate_, &up_, &down_})
      w->kernel = kernels->find(w->type, w->cols);
}

bool RoutedExperts::usesGeneratedKernels() const {
  return gate_.kernel.function && up_.kernel.function && down_.kernel.function;
}

bool RoutedExperts::hasTileKernels() const { return runsOnTiles({gate_, up_, down_}); }

struct RoutedExperts::NodeCopies {
  std::vector<FfnBand> bands; // [expert * nodes + node]
  // One mapping per node (null where its bands are empty), in huge pages:
  // fewer TLB misses while streaming; a hint only.
  std::vector<std::unique_ptr<AnonymousMemory>> memory;
};

namespace {

// The pages of the model file's mapping under `w`, which the kernels no
// longer read once its rows are copied: handed back (clean file pages; a
// later read, such as the GPU expert cache's, faults them in again).
void releaseMappedPages(const WeightMatrix &w) {
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(w.data) + page - 1) / page * page;
  const uintptr_t end =
      (reinterpret_cast<uintptr_t>(w.data) + uint64_t(w.rows) * w.rowBytes) / page * page;
  if (end > begin)
    madvise(reinterpret_cast<void *>(begin), end - begin, MADV_DONTNEED);
}

} // namespace

StatusOr<uint64_t> RoutedExperts::placeOnNodes(ThreadPool &pool) {
  const int nodes = pool.nodeCount();
  if (nodes < 2)
    return uint64_t{0};
  // Band boundaries in proportion to each node's threads, in whole tile
  // panels where the rows allow (so tile kernels run on every band), else in
  // 16-row groups.
  auto bounds = [&](int64_t rows) {
    const int64_t granule = rows % kTileRows == 0 ? kTileRows : 16;
    std::vector<int64_t> b{0};
    int64_t threadsBefore = 0;
    for (int n = 0; n < nodes; ++n) {
      threadsBefore += pool.threadsOnNode(n);
      int64_t end = (rows * threadsBefore / pool.threadCount() + granule / 2) / granule * granule;
      if (n + 1 == nodes)
        end = rows;
      b.push_back(std::clamp(end, b.back(), rows));
    }
    return b;
  };
  const std::vector<int64_t> gateUp = bounds(ffn_), down = bounds(hidden_);
  auto copies = std::make_shared<NodeCopies>();
  copies->bands.resize(static_cast<size_t>(experts_ * nodes));
  std::vector<uint64_t> perExpert(static_cast<size_t>(nodes));
  uint64_t total = 0;
  for (int n = 0; n < nodes; ++n) {
    const int64_t g = gateUp[n + 1] - gateUp[n], d = down[n + 1] - down[n];
    const uint64_t bytes =
        uint64_t(g) * (gate_.rowBytes + up_.rowBytes) + uint64_t(d) * down_.rowBytes;
    perExpert[size_t(n)] = (bytes + 63) / 64 * 64; // each expert's band on a cache line
    const size_t size = perExpert[size_t(n)] * size_t(experts_);
    auto memory = size ? std::make_unique<AnonymousMemory>(size, PageKind::Huge) : nullptr;
    if (memory && !memory->data())
      return Status::error("Cannot allocate " + std::to_string(size) + " bytes for node " +
                           std::to_string(pool.topology().nodes[size_t(n)].id) +
                           "'s copy of the routed experts: " + std::strerror(errno) +
                           ". Run with --numa off to keep them in the model file's mapping.");
    uint8_t *first = memory ? memory->data() : nullptr;
    copies->memory.push_back(std::move(memory));
    total += size;
    for (int64_t e = 0; e < experts_; ++e) {
      uint8_t *base = first + uint64_t(e) * perExpert[size_t(n)];
      FfnBand &band = copies->bands[size_t(e * nodes + n)];
      band.gateUpFirst = gateUp[n];
      band.downFirst = down[n];
      band.w.gate = {gate_.type, base, g, gate_.cols, gate_.rowBytes, gate_.kernel};
      band.w.up = {up_.type,  base + uint64_t(g) * gate_.rowBytes, g, up_.cols, up_.rowBytes,
                   up_.kernel};
      band.w.down = {down_.type,
                     base + uint64_t(g) * (gate_.rowBytes + up_.rowBytes),
                     d,
                     down_.cols,
                     down_.rowBytes,
                     down_.kernel};
    }
  }
  // Node n's threads copy node n's bands: its pages are first written, so
  // placed, there.
  std::vector<int64_t> nodeStarts;
  for (int n = 0; n <= nodes; ++n)
    nodeStarts.push_back(int64_t(n) * experts_);
  pool.parallelForNodes(
      nodeStarts,
      [&](int64_t task, int) {
        const int64_t n = task / experts_, e = task % experts_;
        const FfnBand &band = copies->bands[size_t(e * nodes + n)];
        const FfnMatrices w = expert(e);
        for (auto [which, first] : {std::pair{&FfnMatrices::gate, band.gateUpFirst},
                                    std::pair{&FfnMatrices::up, band.gateUpFirst},
                                    std::pair{&FfnMatrices::down, band.downFirst}}) {
          const WeightMatrix &to = band.w.*which, &from = w.*which;
          std::memcpy(const_cast<uint8_t *>(to.data), from.data + uint64_t(first) * from.rowBytes,
                      size_t(to.rows) * to.rowBytes);
        }
      },
      /*steal=*/false);
  for (const WeightMatrix *w : {&gate_, &up_, &down_})
    releaseMappedPages(*w);
  nodeCopies_ = std::move(copies);
  return total;
}

StatusOr<uint64_t> RoutedExperts::copyIntoHugePages(ThreadPool &pool) {
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  std::getline(thp, modes);
  if (!thp || modes.find("[never]") != std::string::npos)
    return Status::error("Cannot keep the routed experts in huge pages: this host's transparent "
                         "huge pages are off (/sys/kernel/mm/transparent_hugepage/enabled: " +
                         (modes.empty() ? std::string("not readable") : modes) +
                         "). Run with --expert-pages file.");
  constexpr uint64_t kHugePage = 2 << 20;
  WeightMatrix *matrices[] = {&gate_, &up_, &down_};
  uint64_t offsets[4] = {0, 0, 0, 0}; // each tensor from a huge page's start
  uint64_t copied = 0;
  for (int m = 0; m < 3; ++m) {
    const uint64_t bytes = uint64_t(matrices[m]->rows) * matrices[m]->rowBytes;
    copied += bytes;
    offsets[m + 1] = (offsets[m] + bytes + kHugePage - 1) / kHugePage * kHugePage;
  }
  const uint64_t total = offsets[3];
  // MemAvailable counts the page cache the copy reads from as reclaimable.
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t availableKiB = 0;
  while (meminfo >> key) {
    if (key == "MemAvailable:") {
      meminfo >> availableKiB;
      break;
    }
    meminfo.ignore(1 << 12, '\n');
  }
  if (availableKiB > 0 && total > availableKiB * 1024)
    return Status::error("Cannot copy the routed experts into huge pages: they take " +
                         std::to_string(total >> 20) + " MiB and the host has " +
                         std::to_string(availableKiB >> 10) +
                         " MiB available. Run with --expert-pages file.");
  auto mapping = std::make_shared<AnonymousMemory>(total, PageKind::Huge, kHugePage);
  if (!mapping->data())
    return Status::error("Cannot allocate " + std::to_string(total) +
                         " bytes for the routed experts' copy in huge pages: " +
                         std::strerror(errno) + ". Run with --expert-pages file.");
  uint8_t *base = mapping->data();
  // 8 MiB pieces over the pool, in order.
  constexpr uint64_t kPiece = 8 << 20;
  std::vector<std::pair<int, uint64_t>> pieces; // matrix, offset in it
  for (int m = 0; m < 3; ++m)
    for (uint64_t at = 0; at < uint64_t(matrices[m]->rows) * matrices[m]->rowBytes; at += kPiece)
      pieces.push_back({m, at});
  pool.parallelFor(static_cast<int64_t>(pieces.size()), [&](int64_t task, int) {
    const auto [m, at] = pieces[size_t(task)];
    const uint64_t bytes = uint64_t(matrices[m]->rows) * matrices[m]->rowBytes;
    std::memcpy(base + offsets[m] + at, matrices[m]->data + at,
                size_t(std::min(kPiece, bytes - at)));
  });
  for (int m = 0; m < 3; ++m) {
    releaseMappedPages(*matrices[m]);
    matrices[m]->data = base + offsets[m];
  }
  hugePageCopy_ = std::move(mapping);
  return copied;
}

Status placeExperts(RoutedExperts &experts, ThreadPool &pool, exec::NumaPlacement &placement,
                    bool hugePages) {
  const bool nodes = pool.nodeCount() >= 2;
  if (!nodes && !hugePages)
    return Status::success();
  if (nodes && placement.nodes.empty()) {
    placement.nodes = pool.topology().describe();
    for (int n = 0; n < pool.nodeCount(); ++n)
      placement.threadsPerNode.push_back(pool.threadsOnNode(n));
  }
  const auto start = std::chrono::steady_clock::now();
  StatusOr<uint64_t> bytes = nodes ? experts.placeOnNodes(pool) : experts.copyIntoHugePages(pool);
  if (!bytes)
    return bytes.status();
  placement.hugePages = placement.hugePages || !nodes;
  placement.expertBytes += *bytes;
  placement.seconds +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Status::success();
}

std::vector<exec::HostBytes> RoutedExperts::bytes() const {
  if (nodeCopies_)
    return {};
  std::vector<exec::HostBytes> ranges;
  for (const WeightMatrix *w : {&gate_, &up_, &down_})
    ranges.push_back({w->data, uint64_t(w->rows) * w->rowBytes});
  return ranges;
}

const FfnBand *RoutedExperts::bandsOf(int64_t e) const {
  return nodeCopies_
             ? nodeCopies_->bands.data() + e * static_cast<int64_t>(nodeCopies_->memory.size())
             : nullptr;
}

FfnMatrices RoutedExperts::expert(int64_t e) const {
  return {gate_.rowRange(e * ffn_, ffn_), up_.rowRange(e * ffn_, ffn_),
          down_.rowRange(e * hidden_, hidden_)};
}

namespace {

// A run of an expert's rows in forward(): on the tile kernels or not.
struct ExpertRows {
  int64_t expert, row, count;
  bool tiles;
};

// forward()'s bookkeeping, kept by the driving thread from call to call
// (Workspace: a warm decode step allocates nothing).
struct ForwardScratch {
  std::vector<int64_t> givenRows, counts, firstRow, rowOf, filled, tokenOfRow, segmentOfRow;
  std::vector<ExpertRows> groups;
  std::vector<TileFfnBatch> tileBatches;
  std::vector<FfnBatch> batches;
};
ForwardScratch &forwardScratch() {
  thread_local ForwardScratch scratch;
  return scratch;
}

// Top-k values the weighted sums order on the stack.
constexpr int64_t kMaxTopK = 64;

} // namespace

void RoutedExperts::forward(ThreadPool &pool, Workspace &workspace, const float *x, int64_t tokens,
                            const int32_t *ids, const float *weights, int64_t topK, float *out,
                            const std::vector<int64_t> *segmentStarts,
                            exec::ExpertPhaseSeconds *phases, const GivenGatedRows *given,
                            const std::function<void()> *callerFirst) const {
  using Clock = std::chrono::steady_clock;
  Clock::time_point mark = Clock::now();
  // Adds the time since the last mark to `part` (when profiling).
  auto lap = [&](double exec::ExpertPhaseSeconds::*part) {
    if (!phases)
      return;
    const Clock::time_point now = Clock::now();
    phases->*part += std::chrono::duration<double>(now - mark).count();
    mark = now;
  };
  const int64_t assignments = tokens * topK;
  ForwardScratch &scratch = forwardScratch();
  // Each expert's leading gated rows that `given` supplies (all of them:
  // down products only).
  std::vector<int64_t> &givenRows = scratch.givenRows;
  givenRows.assign(static_cast<size_t>(experts_), 0);
  if (given && given->rows)
    for (int64_t i = 0; i < assignments; ++i)
      if (ids[i] >= 0 && given->rows[i] > 0)
        givenRows[static_cast<size_t>(ids[i])] = std::min<int64_t>(given->rows[i], ffn_);
  // Row of each (token, k) assignment in the expert-grouped order.
  std::vector<int64_t> &counts = scratch.counts;
  counts.assign(static_cast<size_t>(experts_), 0);
  for (int64_t i = 0; i < assignments; ++i)
    if (ids[i] >= 0)
      ++counts[static_cast<size_t>(ids[i])];
  std::vector<int64_t> &firstRow = scratch.firstRow;
  firstRow.assign(static_cast<size_t>(experts_), 0);
  for (int64_t e = 1; e < experts_; ++e)
    firstRow[static_cast<size_t>(e)] = firstRow[static_cast<size_t>(e - 1)] + counts[static_cast<size_t>(e - 1)];
  std::vector<int64_t> &rowOf = scratch.rowOf;
  rowOf.resize(static_cast<size_t>(assignments));
  std::vector<int64_t> &filled = scratch.filled;
  filled.assign(firstRow.begin(), firstRow.end());
  float *gathered =
      workspace.floats(Workspace::ExpertInput, static_cast<size_t>(assignments * hidden_));
  float *results =
      workspace.floats(Workspace::ExpertOutput, static_cast<size_t>(assignments * hidden_));
  float *gate = workspace.floats(Workspace::FfnGate, static_cast<size_t>(assignments * ffn_));
  float *up = workspace.floats(Workspace::FfnUp, static_cast<size_t>(assignments * ffn_));
  // Inputs of the generated kernels, for all assignment rows.
  auto kernelInput = [&](std::initializer_list<const LoadedKernel *> kernels, int64_t cols,
                         Workspace::Slot sums, Workspace::Slot quantized,
                         Workspace::Slot quantizedNibbleOrder, Workspace::Slot scales,
                         Workspace::Slot sums16) {
    KernelInput in;
    const auto [any, inOrder, nibbleOrder] = inputsRead(kernels);
    if (!any)
      return in;
    in.sums = workspace.floats(sums, static_cast<size_t>(assignments * cols / 32));
    const size_t quantizedFloats = static_cast<size_t>(assignments * cols / 4 + 1);
    if (inOrder)
      in.quantized = reinterpret_cast<int8_t *>(workspace.floats(quantized, quantizedFloats));
    if (nibbleOrder)
      in.quantizedNibbleOrder =
          reinterpret_cast<int8_t *>(workspace.floats(quantizedNibbleOrder, quantizedFloats));
    if (inOrder || nibbleOrder) {
      in.scales = workspace.floats(scales, static_cast<size_t>(assignments * cols / 256 + 1));
      in.sums16 = reinterpret_cast<int16_t *>(
          workspace.floats(sums16, static_cast<size_t>(assignments * cols / 32 + 1)));
    }
    return in;
  };
  const KernelInput xInput =
      kernelInput({&gate_.kernel, &up_.kernel}, hidden_, Workspace::ExpertInputSums,
                  Workspace::ExpertInputQuantized, Workspace::ExpertInputQuantizedNibbleOrder,
                  Workspace::ExpertInputScales, Workspace::ExpertInputSums16);
  const KernelInput gateInput = kernelInput(
      {&down_.kernel}, ffn_, Workspace::FfnGateSums, Workspace::FfnGateQuantized,
      Workspace::FfnGateQuantizedNibbleOrder, Workspace::FfnGateScales, Workspace::FfnGateSums16);
  // The slice of `in` for the rows from `row` on.
  auto offsetInput = [](const KernelInput &in, int64_t row, int64_t cols) {
    KernelInput out;
    if (in.sums)
      out.sums = in.sums + row * (cols / 32);
    if (in.quantized)
      out.quantized = in.quantized + row * cols;
    if (in.quantizedNibbleOrder)
      out.quantizedNibbleOrder = in.quantizedNibbleOrder + row * cols;
    if (in.scales) {
      out.scales = in.scales + row * (cols / 256);
      out.sums16 = in.sums16 + row * (cols / 16);
    }
    return out;
  };
  // Each row's token and segment (an expert's rows are in token order, so
  // its segments' rows are runs of them).
  std::vector<int64_t> &tokenOfRow = scratch.tokenOfRow, &segmentOfRow = scratch.segmentOfRow;
  tokenOfRow.assign(static_cast<size_t>(assignments), -1);
  segmentOfRow.assign(static_cast<size_t>(assignments), 0);
  int64_t segment = 0;
  for (int64_t i = 0; i < assignments; ++i) {
    if (ids[i] < 0) {
      rowOf[static_cast<size_t>(i)] = -1;
      continue;
    }
    const int64_t token = i / topK;
    while (segmentStarts && static_cast<size_t>(segment) + 1 < segmentStarts->size() &&
           (*segmentStarts)[static_cast<size_t>(segment) + 1] <= token)
      ++segment;
    const int64_t row = filled[static_cast<size_t>(ids[i])]++;
    rowOf[static_cast<size_t>(i)] = row;
    tokenOfRow[static_cast<size_t>(row)] = token;
    segmentOfRow[static_cast<size_t>(row)] = segment;
  }
  // An expert of one row reads its token's row of x in place (decode: every
  // expert), unless the tile kernels or oneDNN could take one row.
  const bool singleRowsInPlace = tileTokens_ != 1 && gemmTokens_ != 1;
  auto inPlace = [&](int64_t expert) {
    return singleRowsInPlace && counts[static_cast<size_t>(expert)] == 1;
  };
  // The other rows copied in parallel (a 2048-token prefill of V3 copies
  // 470 MB).
  constexpr int64_t kRowsPerCopy = 64;
  pool.parallelFor((assignments + kRowsPerCopy - 1) / kRowsPerCopy, [&](int64_t task, int) {
    const int64_t end = std::min(assignments, (task + 1) * kRowsPerCopy);
    for (int64_t i = task * kRowsPerCopy; i < end; ++i)
      if (const int64_t row = rowOf[static_cast<size_t>(i)]; row >= 0 && !inPlace(ids[i]))
        std::memcpy(gathered + row * hidden_, x + (i / topK) * hidden_,
                    static_cast<size_t>(hidden_) * sizeof(float));
  });

  lap(&exec::ExpertPhaseSeconds::gather);
  // A segment's rows of an expert run on the tile kernels when at least
  // tileTokens_ of them chose it: the choice never depends on the other
  // sequences of the step, so an answer is the same alone or batched (a
  // token's result does not depend on the tokens that share its kernel).
  // Neighbouring rows with the same choice run together.
  const bool tiles = tileTokens_ > 0 && hasTileKernels();
  std::vector<ExpertRows> &groups = scratch.groups;
  groups.clear();
  for (int64_t e = 0; e < experts_; ++e) {
    const int64_t end = firstRow[static_cast<size_t>(e)] + counts[static_cast<size_t>(e)];
    for (int64_t row = firstRow[static_cast<size_t>(e)]; row < end;) {
      // The run of rows of one segment from `row`.
      int64_t count = 1;
      while (row + count < end && segmentOfRow[static_cast<size_t>(row + count)] ==
                                      segmentOfRow[static_cast<size_t>(row)])
        ++count;
      const bool onTiles = tiles && count >= tileTokens_ && givenRows[static_cast<size_t>(e)] == 0;
      if (!groups.empty() && groups.back().expert == e && groups.back().tiles == onTiles)
        groups.back().count += count;
      else
        groups.push_back({e, row, count, onTiles});
      row += count;
    }
  }

  // Tile groups, with bf16 copies of their rows (each padded to whole tile
  // blocks).
  std::vector<TileFfnBatch> &tileBatches = scratch.tileBatches;
  tileBatches.clear();
  if (tiles) {
    int64_t paddedRows = 0;
    for (const ExpertRows &g : groups)
      if (g.tiles)
        paddedRows += paddedTileTokens(g.count);
    auto *xBf16 = reinterpret_cast<uint16_t *>(workspace.floats(
        Workspace::ExpertInputBf16, static_cast<size_t>(paddedRows * hidden_ / 2 + 1)));
    auto *gateBf16 = reinterpret_cast<uint16_t *>(
        workspace.floats(Workspace::FfnGateBf16, static_cast<size_t>(paddedRows * ffn_ / 2 + 1)));
    int64_t paddedRow = 0;
    for (const ExpertRows &g : groups) {
      if (!g.tiles)
        continue;
      tileBatches.push_back({expert(g.expert), gathered + g.row * hidden_, g.count,
                             results + g.row * hidden_, gate + g.row * ffn_, up + g.row * ffn_,
                             xBf16 + paddedRow * hidden_, gateBf16 + paddedRow * ffn_,
                             bandsOf(g.expert)});
      paddedRow += paddedTileTokens(g.count);
    }
  }
  runTileFeedForward(pool, tileBatches);
  lap(&exec::ExpertPhaseSeconds::tiles);

  std::vector<FfnBatch> &batches = scratch.batches;
  batches.clear();
  for (const ExpertRows &g : groups) {
    if (g.tiles)
      continue;
    const int64_t e = g.expert, row = g.row, count = g.count;
    const int64_t rowsGiven = givenRows[static_cast<size_t>(e)];
    if (gemmTokens_ > 0 && count >= gemmTokens_ && haveExpertGemm() && rowsGiven == 0) {
      // Many tokens share this expert: three bf16 GEMMs.
      FfnMatrices w = expert(e);
      float *g = gate + row * ffn_, *u = up + row * ffn_;
      gemm_.multiply(pool, w.gate, gathered + row * hidden_, count, g, ffn_);
      gemm_.multiply(pool, w.up, gathered + row * hidden_, count, u, ffn_);
      pool.parallelFor(
          count, [&](int64_t t, int) { gateRows(g + t * ffn_, u + t * ffn_, ffn_, 1, 0, ffn_); });
      gemm_.multiply(pool, w.down, g, count, results + row * hidden_, hidden_);
      continue;
    }
    const float *input =
        inPlace(e) ? x + tokenOfRow[static_cast<size_t>(row)] * hidden_ : gathered + row * hidden_;
    batches.push_back({expert(e), input, count, results + row * hidden_, gate + row * ffn_,
                       up + row * ffn_, offsetInput(xInput, row, hidden_),
                       offsetInput(gateInput, row, ffn_), bandsOf(e)});
    batches.back().givenGatedRows = rowsGiven;
  }
  runFeedForward(
      pool, batches,
      [&] {
        if (!given)
          return;
        for (int64_t i = 0; i < assignments; ++i)
          if (ids[i] >= 0)
            if (const int64_t rows = givenRows[static_cast<size_t>(ids[i])]; rows > 0)
              given->fill(i, gate + rowOf[static_cast<size_t>(i)] * ffn_, rows);
      },
      callerFirst);
  lap(&exec::ExpertPhaseSeconds::rows);

  // Each token's sum in increasing expert order, as HF adds them up; a few
  // tokens' sums (decode) split into slices of their values over the pool.
  const int64_t slices =
      tokens >= pool.threadCount()
          ? 1
          : std::max<int64_t>(1, std::min<int64_t>(pool.threadCount() / tokens, hidden_ / 256));
  const int64_t sliceWidth = (hidden_ + slices - 1) / slices;
  pool.parallelFor(tokens * slices, [&](int64_t task, int) {
    const int64_t t = task / slices, begin = task % slices * sliceWidth,
                  width = std::min(hidden_, begin + sliceWidth) - begin;
    float *o = out + t * hidden_ + begin;
    std::fill(o, o + width, 0.0f);
    // The token's assignments in expert order (on the stack: the model's
    // top-k is a few; a vector only past kMaxTopK).
    std::array<int64_t, kMaxTopK> onStack;
    std::vector<int64_t> onHeap(topK > kMaxTopK ? static_cast<size_t>(topK) : 0);
    int64_t *order = topK > kMaxTopK ? onHeap.data() : onStack.data();
    for (int64_t k = 0; k < topK; ++k)
      order[k] = t * topK + k;
    std::sort(order, order + topK, [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    for (const int64_t *i = order; i < order + topK; ++i)
      if (rowOf[static_cast<size_t>(*i)] >= 0)
        axpy(weights[*i], results + rowOf[static_cast<size_t>(*i)] * hidden_ + begin, o, width);
  });
  lap(&exec::ExpertPhaseSeconds::combine);
}

} // namespace kt::cpu
