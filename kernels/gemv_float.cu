// y = W x for an f32, f16 or bf16 matrix W of OUT_FEATURES rows of
// IN_FEATURES values (row-major): the router of the MoE gate (f32 in GGUF
// files) and the unquantized projections some models carry.
// One warp per row, or K_SPLIT warps per row in decode (a row's columns
// split between them, partial sums added in shared memory) so that a matrix
// of few rows, such as the router's 256, still keeps many loads in flight.
// Lanes stride over the columns 16 bytes at a time where rows and
// activations are 16-byte aligned (else one value at a time), so a warp
// reads consecutive weights and activations. Tokens and heads as in
// GemvLayout.
// Specialization defines:
//   WEIGHT_TYPE     0 (f32), 1 (f16) or 2 (bf16)
//   IN_FEATURES     columns
//   OUT_FEATURES    rows
//   ROWS_PER_BLOCK  rows per thread block
//   K_SPLIT         warps per row (one token per block only; block:
//                   ROWS_PER_BLOCK x K_SPLIT warps)
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
#ifndef K_SPLIT
#define K_SPLIT 1
#endif
static_assert(TOKEN_TILE == 1 || K_SPLIT == 1, "token tiles take whole rows");

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

// Values per 16-byte load of weights (4 f32, 8 f16/bf16).
constexpr int kVector = 16 / static_cast<int>(sizeof(Weight));

// The kVector weights of one 16-byte load as floats.
__device__ __forceinline__ void vectorValues(uint4 raw, float (&w)[kVector]) {
#if WEIGHT_TYPE == 0
  w[0] = __uint_as_float(raw.x);
  w[1] = __uint_as_float(raw.y);
  w[2] = __uint_as_float(raw.z);
  w[3] = __uint_as_float(raw.w);
#else
  const kt::u32 words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    w[2 * i] = weightValue(static_cast<kt::u16>(words[i] & 0xffffu));
    w[2 * i + 1] = weightValue(static_cast<kt::u16>(words[i] >> 16));
  }
#endif
}

__device__ __forceinline__ bool aligned16(const void *p) {
  return (reinterpret_cast<unsigned long long>(p) & 15) == 0;
}

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK *K_SPLIT * 32)
    gemv_float(const void *__restrict__ weight, const float *__restrict__ x, float *__restrict__ y,
               kt::GemvLayout layout) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int lane = threadIdx.x % 32;
  const int rowInBlock = threadIdx.x / 32 / K_SPLIT, split = threadIdx.x / 32 % K_SPLIT;
  const int row = blockIdx.x * ROWS_PER_BLOCK + rowInBlock;
#if K_SPLIT > 1
  // Every warp reaches the block's barrier; a warp past the last row reads row 0.
  const bool rowExists = row < OUT_FEATURES;
  const long long readRow = rowExists ? row : 0;
#else
  if (row >= OUT_FEATURES)
    return;
  const long long readRow = row;
#endif
  long long headRow;
  KT_GEMV_TOKENS(TOKEN_TILE, OUT_FEATURES, headRow);
  if (tokens <= 0) // the whole block: a slot without a matrix
    return;
  const Weight *w = static_cast<const Weight *>(weight) + (headRow + readRow) * IN_FEATURES;
#if GATE_UP
  const Weight *up =
      reinterpret_cast<const Weight *>(layout.upWeight) + (headRow + readRow) * IN_FEATURES;
#endif
  float sums[TOKEN_TILE];
  [[maybe_unused]] float upSum = 0.0f; // GATE_UP kernels
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t)
    sums[t] = 0.0f;
  // 16-byte loads where every row and activation vector of the block allows.
  bool vectors = IN_FEATURES % kVector == 0 && aligned16(w);
#if GATE_UP
  vectors = vectors && aligned16(up);
#endif
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t)
    if (t < tokens)
      vectors = vectors && aligned16(KT_GEMV_X(t));
  if (vectors) {
    constexpr int kVectors = IN_FEATURES / kVector;
#pragma unroll 4
    for (int v = lane + 32 * split; v < kVectors; v += 32 * K_SPLIT) {
      float values[kVector];
      vectorValues(reinterpret_cast<const uint4 *>(w)[v], values);
#if GATE_UP
      float upValues[kVector];
      vectorValues(reinterpret_cast<const uint4 *>(up)[v], upValues);
#endif
#pragma unroll
      for (int t = 0; t < TOKEN_TILE; ++t) {
        if (t >= tokens)
          break;
        const float4 *xs = reinterpret_cast<const float4 *>(KT_GEMV_X(t) + v * kVector);
#pragma unroll
        for (int q = 0; q < kVector / 4; ++q) {
          const float4 x4 = xs[q];
          sums[t] += values[4 * q] * x4.x + values[4 * q + 1] * x4.y + values[4 * q + 2] * x4.z +
                     values[4 * q + 3] * x4.w;
#if GATE_UP
          upSum += upValues[4 * q] * x4.x + upValues[4 * q + 1] * x4.y +
                   upValues[4 * q + 2] * x4.z + upValues[4 * q + 3] * x4.w;
#endif
        }
      }
    }
  } else {
#pragma unroll 4
    for (int col = lane + 32 * split; col < IN_FEATURES; col += 32 * K_SPLIT) {
      const float value = weightValue(w[col]);
#pragma unroll
      for (int t = 0; t < TOKEN_TILE; ++t)
        if (t < tokens)
          sums[t] += value * KT_GEMV_X(t)[col];
#if GATE_UP
      upSum += weightValue(up[col]) * KT_GEMV_X(0)[col];
#endif
    }
  }
#if K_SPLIT > 1
  // One token per block: the row's partial sums, added in split order.
  kt::storeSplitRow<ROWS_PER_BLOCK, K_SPLIT>(sums[0], upSum, rowInBlock, split,
                                             lane == 0 && rowExists, KT_GEMV_Y(0), row);
#else
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t) {
    float sum = kt::warpSum(sums[t]);
#if GATE_UP
    sum = kt::siluMul(sum, kt::warpSum(upSum));
#endif
    if (lane == 0 && t < tokens)
      KT_GEMV_Y(t)[row] = sum;
  }
#endif
}
