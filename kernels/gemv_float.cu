// y = W x for an f32, f16 or bf16 matrix W of OUT_FEATURES rows of
// IN_FEATURES values (row-major): the router of the MoE gate (f32 in GGUF
// files) and the unquantized projections some models carry.
// One warp per row; lanes stride over the columns, so a warp reads
// consecutive weights and activations. Tokens and heads as in GemvLayout.
// Specialization defines:
//   WEIGHT_TYPE     0 (f32), 1 (f16) or 2 (bf16)
//   IN_FEATURES     columns
//   OUT_FEATURES    rows
//   ROWS_PER_BLOCK  warps (rows) per thread block
//   TOKEN_TILE      tokens per block
//   GROUPED, GATE_UP  optional: tiles of grouped assignments, or the fused
//                   gate and up products of routed experts (common.cuh)
#include "common.cuh"

#if !defined(WEIGHT_TYPE) || !defined(IN_FEATURES) || !defined(OUT_FEATURES)
#error "gemv_float needs WEIGHT_TYPE, IN_FEATURES and OUT_FEATURES"
#endif
#ifndef ROWS_PER_BLOCK
#define ROWS_PER_BLOCK 4
#endif
#ifndef TOKEN_TILE
#define TOKEN_TILE 1
#endif

#if WEIGHT_TYPE == 0
typedef float Weight;
__device__ __forceinline__ float weightValue(float w) { return w; }
#elif WEIGHT_TYPE == 1
typedef kt::u16 Weight;
__device__ __forceinline__ float weightValue(kt::u16 w) { return kt::halfToFloat(w); }
#elif WEIGHT_TYPE == 2
typedef kt::u16 Weight;
__device__ __forceinline__ float weightValue(kt::u16 w) { return kt::bf16ToFloat(w); }
#else
#error "WEIGHT_TYPE must be 0, 1 or 2"
#endif

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK * 32)
gemv_float(const void *__restrict__ weight, const float *__restrict__ x,
           float *__restrict__ y, kt::GemvLayout layout) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row >= OUT_FEATURES)
    return;
  long long headRow;
  KT_GEMV_TOKENS(TOKEN_TILE, OUT_FEATURES, headRow);
  if (tokens <= 0) // the whole block: a slot without a matrix
    return;
  const Weight *w = static_cast<const Weight *>(weight) + (headRow + row) * IN_FEATURES;
#if GATE_UP
  const Weight *up = reinterpret_cast<const Weight *>(layout.upWeight) + (headRow + row) * IN_FEATURES;
  float upSum = 0.0f;
#endif
  float sums[TOKEN_TILE];
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t)
    sums[t] = 0.0f;
#pragma unroll 4
  for (int col = lane; col < IN_FEATURES; col += 32) {
    const float value = weightValue(w[col]);
#pragma unroll
    for (int t = 0; t < TOKEN_TILE; ++t)
      if (t < tokens)
        sums[t] += value * KT_GEMV_X(t)[col];
#if GATE_UP
    upSum += weightValue(up[col]) * KT_GEMV_X(0)[col];
#endif
  }
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t) {
    float sum = kt::warpSum(sums[t]);
#if GATE_UP
    sum = kt::siluMul(sum, kt::warpSum(upSum));
#endif
    if (lane == 0 && t < tokens)
      KT_GEMV_Y(t)[row] = sum;
  }
}
