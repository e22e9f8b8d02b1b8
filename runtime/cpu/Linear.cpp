#include "runtime/cpu/Linear.h"

#include "runtime/cpu/Math.h"
#include "runtime/cpu/RowDecode.h"

#include <algorithm>
#include <array>
#include <cassert>
#include <vector>

namespace kt::cpu {

WeightMatrix WeightMatrix::rowRange(int64_t first, int64_t count) const {
  WeightMatrix slice = *this;
  slice.data = data + static_cast<uint64_t>(first) * rowBytes;
  slice.rows = count;
  return slice;
}

WeightMatrix weightMatrix(const gguf::TensorInfo &tensor) {
  WeightMatrix w;
  w.type = tensor.type;
  w.cols = tensor.ne[0];
  w.rows = tensor.rows();
  w.rowBytes = gguf::ggmlRowBytes(tensor.type, w.cols).value_or(0);
  w.data = tensor.data;
  return w;
}

WeightMatrix sliceMatrix(const gguf::TensorInfo &tensor, int64_t index) {
  WeightMatrix all = weightMatrix(tensor);
  const int64_t rows = tensor.ne.size() > 1 ? tensor.ne[1] : 1;
  return all.rowRange(index * rows, rows);
}

float *threadScratch(int slot, size_t floats) {
  constexpr int kSlots = 8;
  thread_local std::array<std::vector<float>, kSlots> buffers;
  assert(slot >= 0 && slot < kSlots);
  return Workspace::grown(buffers[static_cast<size_t>(slot)], floats);
}

const float *decodeRows(const WeightMatrix &w, int64_t first, int64_t count, float *scratch) {
  const uint8_t *rows = w.data + static_cast<uint64_t>(first) * w.rowBytes;
  if (w.type == gguf::GgmlType::F32)
    return reinterpret_cast<const float *>(rows);
  // The executor checked at load that every weight type decodes and that
  // rows are whole blocks.
  decodeValues(w.type, rows, scratch, count * w.cols);
  return scratch;
}

// The hot loops are compiled for three x86-64 levels and picked at load time
// by the CPU they run on (GCC/Clang function multiversioning): the same code,
// vectorized for SSE2, AVX2+FMA or AVX-512.
// Not under ASan/TSan: their runtimes are not set up yet when the loader runs
// the clones' resolvers.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define KT_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KT_VECTOR_CLONES
#endif

namespace {

// Rows decoded at a time: about 256 KiB of f32 values, so that the decoded
// rows stay in the L2 cache while every token of the call passes over them.
constexpr int64_t kDecodedFloats = 64 * 1024;
constexpr int64_t kMicroRows = 4;

int64_t decodeChunkRows(int64_t cols) {
  int64_t rows = kDecodedFloats / std::max<int64_t>(cols, 1);
  rows = std::clamp<int64_t>(rows, kMicroRows, 64);
  return rows - rows % kMicroRows;
}

// Eight floats as one GCC/Clang vector value: one AVX register, two SSE
// registers; loads and stores need no alignment.
typedef float Vec8 __attribute__((vector_size(32), aligned(4)));

__attribute__((always_inline)) inline Vec8 load8(const float *p) { return *reinterpret_cast<const Vec8 *>(p); }
__attribute__((always_inline)) inline void store8(float *p, Vec8 v) { *reinterpret_cast<Vec8 *>(p) = v; }
__attribute__((always_inline)) inline float sum8(Vec8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

// Four dot products against one x, so that x is loaded once for four rows.
__attribute__((always_inline)) inline void dot4(const float *x, const float *w0, const float *w1,
                                                const float *w2, const float *w3, int64_t n,
                                                float *out) {
  Vec8 a0 = {}, a1 = {}, a2 = {}, a3 = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const Vec8 xv = load8(x + k);
    a0 += xv * load8(w0 + k);
    a1 += xv * load8(w1 + k);
    a2 += xv * load8(w2 + k);
    a3 += xv * load8(w3 + k);
  }
  float s0 = sum8(a0), s1 = sum8(a1), s2 = sum8(a2), s3 = sum8(a3);
  for (; k < n; ++k) {
    s0 += x[k] * w0[k];
    s1 += x[k] * w1[k];
    s2 += x[k] * w2[k];
    s3 += x[k] * w3[k];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

} // namespace

KT_VECTOR_CLONES float dot(const float *a, const float *b, int64_t n) {
  Vec8 acc0 = {}, acc1 = {};
  int64_t k = 0;
  for (; k + 16 <= n; k += 16) {
    acc0 += load8(a + k) * load8(b + k);
    acc1 += load8(a + k + 8) * load8(b + k + 8);
  }
  for (; k + 8 <= n; k += 8)
    acc0 += load8(a + k) * load8(b + k);
  float sum = sum8(acc0 + acc1);
  for (; k < n; ++k)
    sum += a[k] * b[k];
  return sum;
}

KT_VECTOR_CLONES void axpy(float alpha, const float *x, float *y, int64_t n) {
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    store8(y + k, load8(y + k) + alpha * load8(x + k));
  for (; k < n; ++k)
    y[k] += alpha * x[k];
}

size_t matmulScratchFloats(const WeightMatrix &w) {
  return static_cast<size_t>(decodeChunkRows(w.cols) * w.cols);
}

KT_VECTOR_CLONES void matmulRows(const WeightMatrix &w, int64_t rowBegin, int64_t rowEnd, const float *x,
                int64_t ldx, int64_t tokens, float *y, int64_t ldy, float *scratch) {
  const int64_t cols = w.cols;
  const int64_t chunk = decodeChunkRows(cols);
  for (int64_t first = rowBegin; first < rowEnd; first += chunk) {
    const int64_t count = std::min(chunk, rowEnd - first);
    const float *rows = decodeRows(w, first, count, scratch);
    for (int64_t t = 0; t < tokens; ++t) {
      const float *xt = x + t * ldx;
      float *yt = y + t * ldy + (first - rowBegin);
      int64_t r = 0;
      for (; r + kMicroRows <= count; r += kMicroRows) {
        const float *w0 = rows + r * cols;
        dot4(xt, w0, w0 + cols, w0 + 2 * cols, w0 + 3 * cols, cols, yt + r);
      }
      for (; r < count; ++r)
        yt[r] = dot(xt, rows + r * cols, cols);
    }
  }
}

KT_VECTOR_CLONES void matmulTransposedRows(const WeightMatrix &w, int64_t rowBegin, int64_t rowEnd,
                          const float *x, int64_t ldx, int64_t tokens, float *y, int64_t ldy,
                          float *scratch) {
  const int64_t cols = w.cols;
  const int64_t chunk = decodeChunkRows(cols);
  for (int64_t first = rowBegin; first < rowEnd; first += chunk) {
    const int64_t count = std::min(chunk, rowEnd - first);
    const float *rows = decodeRows(w, first, count, scratch);
    for (int64_t t = 0; t < tokens; ++t) {
      const float *xt = x + t * ldx + (first - rowBegin);
      float *yt = y + t * ldy;
      for (int64_t r = 0; r < count; ++r)
        axpy(xt[r], rows + r * cols, yt, cols);
    }
  }
}

void matmul(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens, float *y) {
  // Tasks of whole row groups, about four per thread so that uneven
  // progress balances, shorter at the end (GuidedSplit).
  // The driving thread's, kept (no allocation per token); the workers reach
  // it through this reference (a lambda naming a thread_local itself would
  // read each worker's own).
  thread_local std::vector<int64_t> startsScratch;
  std::vector<int64_t> &starts = startsScratch;
  GuidedSplit::taskStarts(w.rows, pool.threadCount(), kRowGroup, 4, kRowTailGroup, starts);
  const size_t scratchFloats = matmulScratchFloats(w);
  pool.parallelFor(static_cast<int64_t>(starts.size()) - 1, [&](int64_t task, int) {
    const int64_t begin = starts[static_cast<size_t>(task)];
    const int64_t end = starts[static_cast<size_t>(task) + 1];
    matmulRows(w, begin, end, x, w.cols, tokens, y + begin, w.rows,
               threadScratch(0, scratchFloats));
  });
}

} // namespace kt::cpu
