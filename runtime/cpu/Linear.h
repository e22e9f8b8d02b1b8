// Matrix products on GGUF weights in their storage type. Rows are decoded to
// f32 a few at a time, inside the product (never the whole tensor), and every
// row is decoded once per call whatever the number of tokens.
#pragma once

#include "runtime/cpu/GeneratedKernels.h"
#include "runtime/cpu/ThreadPool.h"
#include "runtime/gguf/GgufFile.h"

#include <cstddef>
#include <cstdint>

namespace kt::cpu {

// A 2-D weight as GGUF stores it: `rows` rows of `cols` values (GGML's ne[0]
// is `cols`), row r at data + r * rowBytes. That is PyTorch's nn.Linear
// layout: y = W x, row r gives output r.
struct WeightMatrix {
  gguf::GgmlType type = gguf::GgmlType::F32;
  const uint8_t *data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  uint64_t rowBytes = 0;
  // The plan's generated kernel for these rows (type and width), if any.
  LoadedKernel kernel;

  // Rows [first, first + count) as a matrix of their own.
  WeightMatrix rowRange(int64_t first, int64_t count) const;
};

// A tensor as one matrix of rows of ne[0] values: all its rows (ne1 * ne2
// for a 3-D tensor, whose slice h then starts at row h * ne1). The caller has
// checked that the type's blocks fit ne[0].
WeightMatrix weightMatrix(const gguf::TensorInfo &tensor);
// Slice `index` of a 3-D tensor [ne0, ne1, ne2]: the ne1 x ne0 matrix of
// expert `index` of ffn_*_exps.
WeightMatrix sliceMatrix(const gguf::TensorInfo &tensor, int64_t index);

// A per-thread buffer of at least `floats` floats; `slot` tells apart the
// buffers one task uses at the same time (slots 0-7). Valid until the same
// thread asks for the same slot again.
float *threadScratch(int slot, size_t floats);

// The f32 values of rows [first, first + count): a pointer into the weight
// data for f32 weights, else the rows decoded into `scratch`
// (count * cols floats).
const float *decodeRows(const WeightMatrix &w, int64_t first, int64_t count, float *scratch);

// Scratch floats matmulRows / matmulTransposedRows need for `w`.
size_t matmulScratchFloats(const WeightMatrix &w);

// y[t * ldy + (r - rowBegin)] = <x[t * ldx ...], row r> for r in
// [rowBegin, rowEnd) and t in [0, tokens): x has `w.cols` values per token.
void matmulRows(const WeightMatrix &w, int64_t rowBegin, int64_t rowEnd, const float *x,
                int64_t ldx, int64_t tokens, float *y, int64_t ldy, float *scratch);

// The transposed product: y[t * ldy + c] += sum_r x[t * ldx + (r - rowBegin)] * W[r][c]
// over r in [rowBegin, rowEnd), for every column c and token t.
void matmulTransposedRows(const WeightMatrix &w, int64_t rowBegin, int64_t rowEnd,
                          const float *x, int64_t ldx, int64_t tokens, float *y, int64_t ldy,
                          float *scratch);

// y[tokens][w.rows] = x[tokens][w.cols] * W^T, rows split over the pool.
void matmul(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens, float *y);

// <a, b> over n values.
float dot(const float *a, const float *b, int64_t n);
// y += alpha * x over n values.
void axpy(float alpha, const float *x, float *y, int64_t n);

} // namespace kt::cpu
