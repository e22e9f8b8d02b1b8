#include "runtime/cpu/FeedForward.h"

#include <algorithm>
#include <cstring>
#include <tuple>

namespace kt::cpu {

namespace {

struct RowTask {
  size_t batch;
  int64_t begin, end;
};

// Splits `rows(batch)` rows of every batch into tasks of whole 16-row groups
// (64-byte output lines, so threads never share one), aiming at about four
// tasks per thread over all batches.
template <typename RowsOf>
std::vector<RowTask> splitRows(const std::vector<FfnBatch> &batches, RowsOf rows,
                               int threads) {
  int64_t total = 0;
  for (const FfnBatch &b : batches)
    total += rows(b);
  int64_t perTask = (total + threads * 4 - 1) / (threads * 4);
  perTask = std::max<int64_t>(16, (perTask + 15) / 16 * 16);
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

} // namespace

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
    for (int64_t t = 0; t < b.tokens; ++t) {
      float *g = b.gate + t * ffn, *u = b.up + t * ffn;
      for (int64_t r = task.begin; r < task.end; ++r)
        g[r] = silu(g[r]) * u[r];
    }
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

FfnMatrices RoutedExperts::expert(int64_t e) const {
  return {gate_.rowRange(e * ffn_, ffn_), up_.rowRange(e * ffn_, ffn_),
          down_.rowRange(e * hidden_, hidden_)};
}

void RoutedExperts::forward(ThreadPool &pool, Workspace &workspace, const float *x,
                            int64_t tokens, const int32_t *ids, const float *weights,
                            int64_t topK, float *out) const {
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
  for (int64_t i = 0; i < assignments; ++i) {
    if (ids[i] < 0) {
      rowOf[static_cast<size_t>(i)] = -1;
      continue;
    }
    const int64_t row = filled[static_cast<size_t>(ids[i])]++;
    rowOf[static_cast<size_t>(i)] = row;
    std::memcpy(gathered + row * hidden_, x + (i / topK) * hidden_,
                static_cast<size_t>(hidden_) * sizeof(float));
  }

  std::vector<FfnBatch> batches;
  for (int64_t e = 0; e < experts_; ++e) {
    const int64_t count = counts[static_cast<size_t>(e)];
    if (count == 0)
      continue;
    const int64_t row = firstRow[static_cast<size_t>(e)];
    if (gemmTokens_ > 0 && count >= gemmTokens_ && haveExpertGemm()) {
      // Many tokens share this expert: three bf16 GEMMs.
      FfnMatrices w = expert(e);
      float *g = gate + row * ffn_, *u = up + row * ffn_;
      gemm_.multiply(pool, w.gate, gathered + row * hidden_, count, g, ffn_);
      gemm_.multiply(pool, w.up, gathered + row * hidden_, count, u, ffn_);
      pool.parallelFor(count, [&](int64_t t, int) {
        for (int64_t i = 0; i < ffn_; ++i)
          g[t * ffn_ + i] = silu(g[t * ffn_ + i]) * u[t * ffn_ + i];
      });
      gemm_.multiply(pool, w.down, g, count, results + row * hidden_, hidden_);
      continue;
    }
    batches.push_back({expert(e), gathered + row * hidden_, count, results + row * hidden_,
                       gate + row * ffn_, up + row * ffn_, offsetInput(xInput, row, hidden_),
                       offsetInput(gateInput, row, ffn_)});
  }
  runFeedForward(pool, batches);

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
}

} // namespace kt::cpu
