#include "runtime/cpu/FeedForward.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>

namespace kt::cpu {

namespace {

struct RowTask {
  size_t batch;
  int64_t begin, end;
};

// Splits `rows(batch)` rows of every batch into tasks of whole `granule`-row
// groups (16: 64-byte output lines, so threads never share one), aiming at
// about kTasksPerThread tasks per thread over all batches: threads finish
// within one task of each other, so smaller tasks waste less at the end of a
// loop (a decode step's 8 experts: 64-row tasks on 16 threads; 4 tasks per
// thread read 5-10% fewer bytes/s end to end on the 16-core host).
constexpr int64_t kTasksPerThread = 16;
template <typename Batch, typename RowsOf>
std::vector<RowTask> splitRows(const std::vector<Batch> &batches, RowsOf rows, int threads,
                               int64_t granule = 16) {
  int64_t total = 0;
  for (const Batch &b : batches)
    total += rows(b);
  int64_t perTask = (total + threads * kTasksPerThread - 1) / (threads * kTasksPerThread);
  perTask = std::max<int64_t>(granule, (perTask + granule - 1) / granule * granule);
  std::vector<RowTask> tasks;
  for (size_t i = 0; i < batches.size(); ++i)
    for (int64_t begin = 0; begin < rows(batches[i]); begin += perTask)
      tasks.push_back({i, begin, std::min(rows(batches[i]), begin + perTask)});
  return tasks;
}

// y = W x for rows [rowBegin, rowEnd): the generated kernel when the matrix
// has one (and its inputs were prepared), else the reference.
void rowsProduct(const WeightMatrix &w, int64_t rowBegin, int64_t rowEnd, const float *x,
                 const KernelInput &in, int64_t tokens, float *y, int64_t ldy, float *scratch) {
  const LoadedKernel &kernel = w.kernel;
  if (kernel.function && in.sums && (!kernel.quantizedInput || in.quantized)) {
    kernel.function(w.data + static_cast<uint64_t>(rowBegin) * w.rowBytes, w.rowBytes,
                    rowEnd - rowBegin, x, w.cols, in.sums, in.quantized, in.scales, in.sums16,
                    tokens, y, ldy);
    return;
  }
  matmulRows(w, rowBegin, rowEnd, x, w.cols, tokens, y, ldy, scratch);
}

// The inputs generated kernels read, for every batch that has such a
// kernel (in parallel over batches).
template <typename Select>
void prepareKernelInputs(ThreadPool &pool, const std::vector<FfnBatch> &batches, Select select) {
  pool.parallelFor(static_cast<int64_t>(batches.size()), [&](int64_t index, int) {
    const FfnBatch &b = batches[static_cast<size_t>(index)];
    auto [kernels, x, cols, in] = select(b);
    bool any = false, quantized = false;
    for (const LoadedKernel *kernel : kernels) {
      any = any || kernel->function;
      quantized = quantized || (kernel->function && kernel->quantizedInput);
    }
    if (any && in.sums)
      sumRunsOf32(x, cols, cols, b.tokens, in.sums);
    if (quantized && in.quantized)
      quantizeActivations(x, cols, cols, b.tokens, in.quantized, in.scales, in.sums16);
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
template <typename RowsOf>
std::vector<RowTask> splitTileRows(const std::vector<TileFfnBatch> &batches, RowsOf rows,
                                   int threads) {
  constexpr int64_t kDecodeTokens = 48;
  auto cost = [](const TileFfnBatch &b) { return paddedTileTokens(b.tokens) + kDecodeTokens; };
  int64_t total = 0;
  for (const TileFfnBatch &b : batches)
    total += rows(b) * cost(b);
  const int64_t target = std::max<int64_t>(1, total / (threads * 4));
  std::vector<RowTask> tasks;
  for (size_t i = 0; i < batches.size(); ++i) {
    int64_t perTask = (target / cost(batches[i]) + kTileRows / 2) / kTileRows * kTileRows;
    perTask = std::clamp<int64_t>(perTask, kTileRows, rows(batches[i]));
    for (int64_t begin = 0; begin < rows(batches[i]); begin += perTask)
      tasks.push_back({i, begin, std::min(rows(batches[i]), begin + perTask)});
  }
  std::stable_sort(tasks.begin(), tasks.end(), [&](const RowTask &a, const RowTask &b) {
    return (a.end - a.begin) * cost(batches[a.batch]) > (b.end - b.begin) * cost(batches[b.batch]);
  });
  return tasks;
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
  packTokenTiles(pool, batches.size(), [&](size_t i) {
    const TileFfnBatch &b = batches[i];
    return std::make_tuple(b.x, b.xBf16, b.w.gate.cols, b.tokens);
  });
  std::vector<RowTask> tasks = splitTileRows(
      batches, [](const TileFfnBatch &b) { return b.w.gate.rows; }, pool.threadCount());
  pool.parallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t index, int) {
    const RowTask &task = tasks[static_cast<size_t>(index)];
    const TileFfnBatch &b = batches[task.batch];
    const int64_t ffn = b.w.gate.rows, rows = task.end - task.begin;
    uint8_t *scratch = tileScratch(b.w.gate.cols);
    for (auto [w, y] : {std::pair{&b.w.gate, b.gate}, std::pair{&b.w.up, b.up}})
      w->kernel.tiles(w->data + static_cast<uint64_t>(task.begin) * w->rowBytes, w->rowBytes, rows,
                      b.xBf16, b.tokens, y + task.begin, ffn, scratch);
    gateRows(b.gate, b.up, ffn, b.tokens, task.begin, task.end);
  });
  packTokenTiles(pool, batches.size(), [&](size_t i) {
    const TileFfnBatch &b = batches[i];
    return std::make_tuple(static_cast<const float *>(b.gate), b.gateBf16, b.w.down.cols, b.tokens);
  });
  tasks = splitTileRows(
      batches, [](const TileFfnBatch &b) { return b.w.down.rows; }, pool.threadCount());
  pool.parallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t index, int) {
    const RowTask &task = tasks[static_cast<size_t>(index)];
    const TileFfnBatch &b = batches[task.batch];
    const WeightMatrix &w = b.w.down;
    w.kernel.tiles(w.data + static_cast<uint64_t>(task.begin) * w.rowBytes, w.rowBytes,
                   task.end - task.begin, b.gateBf16, b.tokens, b.out + task.begin, w.rows,
                   tileScratch(w.cols));
  });
}

void tileMatmul(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens,
                uint16_t *xBf16, float *y, int64_t ldy) {
  packTokenTiles(pool, 1, [&](size_t) { return std::make_tuple(x, xBf16, w.cols, tokens); });
  struct One {
    int64_t rows;
  };
  std::vector<RowTask> tasks = splitRows(
      std::vector<One>{{w.rows}}, [](const One &b) { return b.rows; }, pool.threadCount(),
      kTileRows);
  pool.parallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t index, int) {
    const RowTask &task = tasks[static_cast<size_t>(index)];
    w.kernel.tiles(w.data + static_cast<uint64_t>(task.begin) * w.rowBytes, w.rowBytes,
                   task.end - task.begin, xBf16, tokens, y + task.begin, ldy, tileScratch(w.cols));
  });
}

void runFeedForward(ThreadPool &pool, const std::vector<FfnBatch> &batches) {
  if (batches.empty())
    return;
  size_t scratchFloats = 0;
  for (const FfnBatch &b : batches)
    scratchFloats = std::max({scratchFloats, matmulScratchFloats(b.w.gate),
                              matmulScratchFloats(b.w.up), matmulScratchFloats(b.w.down)});

  prepareKernelInputs(pool, batches, [](const FfnBatch &b) {
    return std::make_tuple(std::vector<const LoadedKernel *>{&b.w.gate.kernel, &b.w.up.kernel},
                           b.x, b.w.gate.cols, b.xInput);
  });
  std::vector<RowTask> tasks =
      splitRows(batches, [](const FfnBatch &b) { return b.w.gate.rows; }, pool.threadCount());
  pool.parallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t index, int) {
    const RowTask &task = tasks[static_cast<size_t>(index)];
    const FfnBatch &b = batches[task.batch];
    const int64_t ffn = b.w.gate.rows;
    float *scratch = threadScratch(0, scratchFloats);
    rowsProduct(b.w.gate, task.begin, task.end, b.x, b.xInput, b.tokens, b.gate + task.begin, ffn,
                scratch);
    rowsProduct(b.w.up, task.begin, task.end, b.x, b.xInput, b.tokens, b.up + task.begin, ffn,
                scratch);
    gateRows(b.gate, b.up, ffn, b.tokens, task.begin, task.end);
  });

  prepareKernelInputs(pool, batches, [](const FfnBatch &b) {
    return std::make_tuple(std::vector<const LoadedKernel *>{&b.w.down.kernel},
                           static_cast<const float *>(b.gate), b.w.down.cols, b.gateInput);
  });
  tasks = splitRows(batches, [](const FfnBatch &b) { return b.w.down.rows; }, pool.threadCount());
  pool.parallelFor(static_cast<int64_t>(tasks.size()), [&](int64_t index, int) {
    const RowTask &task = tasks[static_cast<size_t>(index)];
    const FfnBatch &b = batches[task.batch];
    const int64_t hidden = b.w.down.rows;
    rowsProduct(b.w.down, task.begin, task.end, b.gate, b.gateInput, b.tokens, b.out + task.begin,
                hidden, threadScratch(0, scratchFloats));
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

FfnMatrices RoutedExperts::expert(int64_t e) const {
  return {gate_.rowRange(e * ffn_, ffn_), up_.rowRange(e * ffn_, ffn_),
          down_.rowRange(e * hidden_, hidden_)};
}

void RoutedExperts::forward(ThreadPool &pool, Workspace &workspace, const float *x, int64_t tokens,
                            const int32_t *ids, const float *weights, int64_t topK, float *out,
                            const std::vector<int64_t> *segmentStarts,
                            exec::ExpertPhaseSeconds *phases) const {
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
  // Row of each (token, k) assignment in the expert-grouped order.
  std::vector<int64_t> counts(static_cast<size_t>(experts_), 0);
  for (int64_t i = 0; i < assignments; ++i)
    if (ids[i] >= 0)
      ++counts[static_cast<size_t>(ids[i])];
  std::vector<int64_t> firstRow(static_cast<size_t>(experts_), 0);
  for (int64_t e = 1; e < experts_; ++e)
    firstRow[static_cast<size_t>(e)] = firstRow[static_cast<size_t>(e - 1)] + counts[static_cast<size_t>(e - 1)];
  std::vector<int64_t> rowOf(static_cast<size_t>(assignments));
  std::vector<int64_t> filled = firstRow;
  float *gathered =
      workspace.floats(Workspace::ExpertInput, static_cast<size_t>(assignments * hidden_));
  float *results =
      workspace.floats(Workspace::ExpertOutput, static_cast<size_t>(assignments * hidden_));
  float *gate = workspace.floats(Workspace::FfnGate, static_cast<size_t>(assignments * ffn_));
  float *up = workspace.floats(Workspace::FfnUp, static_cast<size_t>(assignments * ffn_));
  // Inputs of the generated kernels, for all assignment rows.
  auto kernelInput = [&](std::initializer_list<const LoadedKernel *> kernels, int64_t cols,
                         Workspace::Slot sums, Workspace::Slot quantized, Workspace::Slot scales,
                         Workspace::Slot sums16) {
    KernelInput in;
    bool any = false, needsQuantized = false;
    for (const LoadedKernel *kernel : kernels) {
      any = any || kernel->function;
      needsQuantized = needsQuantized || (kernel->function && kernel->quantizedInput);
    }
    if (!any)
      return in;
    in.sums = workspace.floats(sums, static_cast<size_t>(assignments * cols / 32));
    if (needsQuantized) {
      in.quantized = reinterpret_cast<int8_t *>(
          workspace.floats(quantized, static_cast<size_t>(assignments * cols / 4 + 1)));
      in.scales = workspace.floats(scales, static_cast<size_t>(assignments * cols / 256 + 1));
      in.sums16 = reinterpret_cast<int32_t *>(
          workspace.floats(sums16, static_cast<size_t>(assignments * cols / 16)));
    }
    return in;
  };
  const KernelInput xInput =
      kernelInput({&gate_.kernel, &up_.kernel}, hidden_, Workspace::ExpertInputSums,
                  Workspace::ExpertInputQuantized, Workspace::ExpertInputScales,
                  Workspace::ExpertInputSums16);
  const KernelInput gateInput =
      kernelInput({&down_.kernel}, ffn_, Workspace::FfnGateSums, Workspace::FfnGateQuantized,
                  Workspace::FfnGateScales, Workspace::FfnGateSums16);
  // The slice of `in` for the rows from `row` on.
  auto offsetInput = [](const KernelInput &in, int64_t row, int64_t cols) {
    KernelInput out;
    if (in.sums)
      out.sums = in.sums + row * (cols / 32);
    if (in.quantized) {
      out.quantized = in.quantized + row * cols;
      out.scales = in.scales + row * (cols / 256);
      out.sums16 = in.sums16 + row * (cols / 16);
    }
    return out;
  };
  // Each expert's rows by segment, in row order: (segment, rows) runs.
  std::vector<std::vector<std::pair<size_t, int64_t>>> segmentRuns(static_cast<size_t>(experts_));
  size_t segment = 0;
  for (int64_t i = 0; i < assignments; ++i) {
    if (ids[i] < 0) {
      rowOf[static_cast<size_t>(i)] = -1;
      continue;
    }
    const int64_t token = i / topK;
    while (segmentStarts && segment + 1 < segmentStarts->size() &&
           (*segmentStarts)[segment + 1] <= token)
      ++segment;
    auto &runs = segmentRuns[static_cast<size_t>(ids[i])];
    if (runs.empty() || runs.back().first != segment)
      runs.push_back({segment, 0});
    ++runs.back().second;
    rowOf[static_cast<size_t>(i)] = filled[static_cast<size_t>(ids[i])]++;
  }
  // The rows copied in parallel (a 2048-token prefill of V3 copies 470 MB).
  constexpr int64_t kRowsPerCopy = 64;
  pool.parallelFor((assignments + kRowsPerCopy - 1) / kRowsPerCopy, [&](int64_t task, int) {
    const int64_t end = std::min(assignments, (task + 1) * kRowsPerCopy);
    for (int64_t i = task * kRowsPerCopy; i < end; ++i)
      if (const int64_t row = rowOf[static_cast<size_t>(i)]; row >= 0)
        std::memcpy(gathered + row * hidden_, x + (i / topK) * hidden_,
                    static_cast<size_t>(hidden_) * sizeof(float));
  });

  lap(&exec::ExpertPhaseSeconds::gather);
  // A segment's rows of an expert run on the tile kernels when at least
  // tileTokens_ of them chose it: the choice never depends on the other
  // sequences of the step, so an answer is the same alone or batched (a
  // token's result does not depend on the tokens that share its kernel).
  // Neighbouring rows with the same choice run together.
  struct ExpertRows {
    int64_t expert, row, count;
    bool tiles;
  };
  const bool tiles = tileTokens_ > 0 && hasTileKernels();
  std::vector<ExpertRows> groups;
  for (int64_t e = 0; e < experts_; ++e) {
    int64_t row = firstRow[static_cast<size_t>(e)];
    for (const auto &[runSegment, count] : segmentRuns[static_cast<size_t>(e)]) {
      const bool onTiles = tiles && count >= tileTokens_;
      if (!groups.empty() && groups.back().expert == e && groups.back().tiles == onTiles)
        groups.back().count += count;
      else
        groups.push_back({e, row, count, onTiles});
      row += count;
    }
  }

  // Tile groups, with bf16 copies of their rows (each padded to whole tile
  // blocks).
  std::vector<TileFfnBatch> tileBatches;
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
                             xBf16 + paddedRow * hidden_, gateBf16 + paddedRow * ffn_});
      paddedRow += paddedTileTokens(g.count);
    }
  }
  runTileFeedForward(pool, tileBatches);
  lap(&exec::ExpertPhaseSeconds::tiles);

  std::vector<FfnBatch> batches;
  for (const ExpertRows &g : groups) {
    if (g.tiles)
      continue;
    const int64_t e = g.expert, row = g.row, count = g.count;
    if (gemmTokens_ > 0 && count >= gemmTokens_ && haveExpertGemm()) {
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
    batches.push_back({expert(e), gathered + row * hidden_, count, results + row * hidden_,
                       gate + row * ffn_, up + row * ffn_, offsetInput(xInput, row, hidden_),
                       offsetInput(gateInput, row, ffn_)});
  }
  runFeedForward(pool, batches);
  lap(&exec::ExpertPhaseSeconds::rows);

  // Each token's sum in increasing expert order, as HF adds them up.
  pool.parallelFor(tokens, [&](int64_t t, int) {
    float *o = out + t * hidden_;
    std::fill(o, o + hidden_, 0.0f);
    std::vector<int64_t> order(static_cast<size_t>(topK));
    for (int64_t k = 0; k < topK; ++k)
      order[static_cast<size_t>(k)] = t * topK + k;
    std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
    for (int64_t i : order)
      if (rowOf[static_cast<size_t>(i)] >= 0)
        axpy(weights[i], results + rowOf[static_cast<size_t>(i)] * hidden_, o, hidden_);
  });
  lap(&exec::ExpertPhaseSeconds::combine);
}

} // namespace kt::cpu
