// y = W x for a GGUF Q8_0 matrix W of OUT_FEATURES rows of IN_FEATURES values
// (row-major, each row IN_FEATURES/32 blocks of 34 bytes: f16 scale, 32 int8).
// Weights are dequantized in registers, never expanded in memory.
// Decode: one warp per output row (ROWS_PER_WARP rows of short matrices);
// a warp reads 8 consecutive blocks (272 contiguous bytes) per step, eight
// lanes a block (4 values each, each lane in two blocks, so that the
// activations come in two contiguous 512-byte loads), and the steps are
// unrolled so that all of a row's loads are in flight together. Rows of 1,
// 2 or 4 blocks share a warp's step, four lanes a block (8 values each).
// Decode GEMVs of few rows split each row's columns between K_SPLIT warps of a
// block (partial sums added in shared memory), so that a small matrix still
// has warps enough to keep the GPU's memory busy.
// Prefill (a token tile): ROWS_PER_WARP rows per warp, so that each
// activation loaded serves all of them.
// Specialization defines:
//   IN_FEATURES     columns (a multiple of 32)
//   OUT_FEATURES    rows
//   ROWS_PER_BLOCK  warps per thread block
//   ROWS_PER_WARP   rows per warp (decode: only with K_SPLIT 1)
//   K_SPLIT         warps per row (decode only; block: ROWS_PER_BLOCK x K_SPLIT warps)
//   TOKEN_TILE      tokens per block (each weight block read once for all)
//   GROUPED, GATE_UP  optional: tiles of grouped assignments, or the fused
//                   gate and up products of routed experts (common.cuh)
//   SPLIT_ROWS      1: the rows as the GPU keeps dense matrices of whole runs
//                   of 8 blocks (a row's quants, then its f16 scales; common.cuh)
#include "common.cuh"

#ifndef IN_FEATURES
#error "gemv_q8_0 needs IN_FEATURES"
#endif
#ifndef OUT_FEATURES
#error "gemv_q8_0 needs OUT_FEATURES"
#endif
#ifndef ROWS_PER_BLOCK
#define ROWS_PER_BLOCK 4
#endif
#ifndef TOKEN_TILE
#define TOKEN_TILE 1
#endif
#ifndef ROWS_PER_WARP
#define ROWS_PER_WARP 1
#endif
#ifndef K_SPLIT
#define K_SPLIT 1
#endif
#ifndef SPLIT_ROWS
#define SPLIT_ROWS 0
#endif
#if TOKEN_TILE == 1 && ROWS_PER_WARP > 1 && K_SPLIT > 1
#error "decode splits the columns of one row per warp only"
#endif
static_assert(TOKEN_TILE == 1 || K_SPLIT == 1, "token tiles take whole rows");

static_assert(IN_FEATURES % kt::kQ8_0BlockElements == 0, "Q8_0 rows are whole blocks");
static_assert(!SPLIT_ROWS || IN_FEATURES % kt::kQ8_0SplitRowValues == 0,
              "split rows are whole runs of 8 blocks");
#if SPLIT_ROWS && (GROUPED || GATE_UP)
#error "routed experts keep the GGUF layout"
#endif
constexpr int kBlocksPerRow = IN_FEATURES / kt::kQ8_0BlockElements;
constexpr long long kRowBytes = static_cast<long long>(kBlocksPerRow) * kt::kQ8_0BlockBytes;
// Decode rows side by side in a warp's step: rows of 1, 2 or 4 blocks take
// 4 lanes a block, so 8 / kBlocksPerRow of them fill the warp.
// (At most ROWS_PER_WARP, and a power of two dividing it.)
constexpr int rowsPerStep() {
  if (TOKEN_TILE != 1 || kBlocksPerRow >= 8 || 8 % kBlocksPerRow != 0)
    return 1;
  int rows = 8 / kBlocksPerRow;
  while (rows > 1 && ROWS_PER_WARP % rows != 0)
    rows /= 2;
  return rows;
}
constexpr int kRowsPerStep = rowsPerStep();
static_assert(ROWS_PER_WARP % kRowsPerStep == 0, "whole steps of rows");
constexpr int kSteps = ROWS_PER_WARP / kRowsPerStep;
constexpr int kLanesPerRow = 32 / kRowsPerStep;

// The sum over the lanes of one row of a step (the whole warp with one row).
__device__ __forceinline__ float rowSum(float value) {
#pragma unroll
  for (int offset = kLanesPerRow / 2; offset > 0; offset >>= 1)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

constexpr int kQuantPairs = kt::q8_0QuantPairs<SPLIT_ROWS>;
__device__ __forceinline__ const kt::u16 *blockPairs(const kt::u8 *row, int b) {
  return kt::q8_0BlockPairs<SPLIT_ROWS>(row, b);
}
__device__ __forceinline__ float blockScale(const kt::u8 *row, int b, const kt::u16 *pairs) {
  return kt::halfToFloat(kt::q8_0ScaleBits<SPLIT_ROWS, IN_FEATURES>(row, b, pairs));
}

// This lane's 8 quants of block b of `row` as floats; returns the block's
// scale. Blocks are 2-byte aligned: the quants are read as u16s.
__device__ __forceinline__ float blockWeights(const kt::u8 *row, int b, int quarter,
                                              float (&w)[8]) {
  const kt::u16 *pairs = blockPairs(row, b);
  kt::u16 quants[4];
#pragma unroll
  for (int j = 0; j < 4; ++j)
    quants[j] = pairs[kQuantPairs + 4 * quarter + j];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    w[2 * j] = static_cast<float>(static_cast<kt::i8>(quants[j] & 0xff));
    w[2 * j + 1] = static_cast<float>(static_cast<kt::i8>(quants[j] >> 8));
  }
  return blockScale(row, b, pairs);
}

// This lane's 4 quants at `part` (0..7: quants 4 part .. 4 part + 3) of
// block b of `row` as floats; returns the block's scale.
__device__ __forceinline__ float blockQuad(const kt::u8 *row, int b, int part, float (&w)[4]) {
  const kt::u16 *pairs = blockPairs(row, b);
  const kt::u16 low = pairs[kQuantPairs + 2 * part], high = pairs[kQuantPairs + 1 + 2 * part];
  w[0] = static_cast<float>(static_cast<kt::i8>(low & 0xff));
  w[1] = static_cast<float>(static_cast<kt::i8>(low >> 8));
  w[2] = static_cast<float>(static_cast<kt::i8>(high & 0xff));
  w[3] = static_cast<float>(static_cast<kt::i8>(high >> 8));
  return blockScale(row, b, pairs);
}

__device__ __forceinline__ float dot4(const float (&w)[4], float4 x) {
  return w[0] * x.x + w[1] * x.y + w[2] * x.z + w[3] * x.w;
}

// The lane's 8 weights against its 8 activations.
__device__ __forceinline__ float dot8(const float (&w)[8], float4 x0, float4 x1) {
  return w[0] * x0.x + w[1] * x0.y + w[2] * x0.z + w[3] * x0.w + w[4] * x1.x + w[5] * x1.y +
         w[6] * x1.z + w[7] * x1.w;
}

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK *K_SPLIT * 32)
    gemv_q8_0(const void *__restrict__ weight, const float *__restrict__ x, float *__restrict__ y,
              kt::GemvLayout layout) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int lane = threadIdx.x % 32;
  // The warp's first row (its only one in decode) and its part of the row.
  const int rowInBlock = threadIdx.x / 32 / K_SPLIT;
  [[maybe_unused]] const int split = threadIdx.x / 32 % K_SPLIT; // decode only
  const int firstRow = (blockIdx.x * ROWS_PER_BLOCK + rowInBlock) * ROWS_PER_WARP;
#if K_SPLIT > 1
  // Every warp reaches the block's barrier; a warp past the last row reads row 0.
  const bool rowExists = firstRow < OUT_FEATURES;
  const long long readRow = rowExists ? firstRow : 0;
#else
  if (firstRow >= OUT_FEATURES)
    return;
  const long long readRow = firstRow;
#endif
  long long headRow;
  KT_GEMV_TOKENS(TOKEN_TILE, OUT_FEATURES, headRow);
  if (tokens <= 0) // the whole block: a slot without a matrix
    return;
  const kt::u8 *rowBytes = static_cast<const kt::u8 *>(weight) + (headRow + readRow) * kRowBytes;
#if TOKEN_TILE > 1
  float sums[TOKEN_TILE][ROWS_PER_WARP];
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t)
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r)
      sums[t][r] = 0.0f;
  const int quarter = lane % 4;
#pragma unroll 2
  for (int b = lane / 4; b < kBlocksPerRow; b += 8) {
    float w[ROWS_PER_WARP][8], scale[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r)
      scale[r] = firstRow + r < OUT_FEATURES
                     ? blockWeights(rowBytes + r * kRowBytes, b, quarter, w[r])
                     : 0.0f;
#pragma unroll
    for (int t = 0; t < TOKEN_TILE; ++t) {
      if (t >= tokens)
        break;
      const float *xs = KT_GEMV_X(t) + b * kt::kQ8_0BlockElements + 8 * quarter;
      const float4 x0 = *reinterpret_cast<const float4 *>(xs),
                   x1 = *reinterpret_cast<const float4 *>(xs + 4);
#pragma unroll
      for (int r = 0; r < ROWS_PER_WARP; ++r)
        if (firstRow + r < OUT_FEATURES)
          sums[t][r] += scale[r] * dot8(w[r], x0, x1);
    }
  }
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t)
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
      const float sum = kt::warpSum(sums[t][r]);
      if (lane == 0 && t < tokens && firstRow + r < OUT_FEATURES)
        KT_GEMV_Y(t)[firstRow + r] = sum;
    }
#else
#if GATE_UP
  const kt::u8 *upBytes =
      reinterpret_cast<const kt::u8 *>(layout.upWeight) + (headRow + readRow) * kRowBytes;
#endif
  // One token; ROWS_PER_WARP rows, kRowsPerStep side by side in a step of
  // the warp (rows of 1, 2 or 4 blocks: the lanes of a step take
  // 8 / blocks rows, where lanes past a row's blocks would idle) and the
  // steps one after the other; a warp's loads of all its rows are in flight
  // together, so the grid takes fewer waves of short-lived warps.
  float sums[kSteps];
  [[maybe_unused]] float upSums[kSteps]; // GATE_UP kernels
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
    sums[s] = upSums[s] = 0.0f;
  const int rowInStep = lane / kLanesPerRow, laneInRow = lane % kLanesPerRow;
  const int quarter = laneInRow % 4;
  // The warp's whole part of the row unrolled, so that all its loads are in
  // flight (a token tile, above, has work enough per step; unrolling it
  // would only make NVRTC slow). Its part: every K_SPLIT-th run of 8 blocks.
  if constexpr (kRowsPerStep == 1) {
    // Rows of a whole warp: lane L takes 4 values of two blocks of each run,
    // L / 8 and 4 + L / 8, at quants 4 (L % 8), so that the warp's
    // activations are two loads of 512 contiguous bytes (with 8 values of one
    // block a lane they were 16-byte halves of 32-byte pieces over 1 KiB:
    // twice the L1 wavefronts, and L1, not DRAM, bounded the GEMV).
    const int part = lane % 8;
#pragma unroll
    for (int run = split; run * 8 < kBlocksPerRow; run += K_SPLIT) {
      const int firstBlock = run * 8 + lane / 8, secondBlock = firstBlock + 4;
      const bool hasFirst = firstBlock < kBlocksPerRow, hasSecond = secondBlock < kBlocksPerRow;
      const float *xs = KT_GEMV_X(0) + run * 8 * kt::kQ8_0BlockElements + 4 * lane;
      const float4 x0 = hasFirst ? *reinterpret_cast<const float4 *>(xs) : float4{},
                   x1 = hasSecond ? *reinterpret_cast<const float4 *>(xs + 128) : float4{};
#pragma unroll
      for (int s = 0; s < kSteps; ++s) { // rows
        if (ROWS_PER_WARP == 1 || firstRow + s < OUT_FEATURES) {
          const kt::u8 *row = rowBytes + s * kRowBytes;
          float w[4];
          if (hasFirst)
            sums[s] += blockQuad(row, firstBlock, part, w) * dot4(w, x0);
          if (hasSecond)
            sums[s] += blockQuad(row, secondBlock, part, w) * dot4(w, x1);
#if GATE_UP
          const kt::u8 *upRow = upBytes + s * kRowBytes;
          if (hasFirst)
            upSums[s] += blockQuad(upRow, firstBlock, part, w) * dot4(w, x0);
          if (hasSecond)
            upSums[s] += blockQuad(upRow, secondBlock, part, w) * dot4(w, x1);
#endif
        }
      }
    }
  } else {
#pragma unroll
    for (int b = laneInRow / 4 + 8 * split; b < kBlocksPerRow; b += 8 * K_SPLIT) {
      float w[kSteps][8], scale[kSteps];
#if GATE_UP
      float wUp[kSteps][8], upScale[kSteps];
#endif
#pragma unroll
      for (int s = 0; s < kSteps; ++s) {
        const int r = rowInStep + kRowsPerStep * s;
        if (ROWS_PER_WARP == 1 || firstRow + r < OUT_FEATURES) {
          scale[s] = blockWeights(rowBytes + r * kRowBytes, b, quarter, w[s]);
#if GATE_UP
          upScale[s] = blockWeights(upBytes + r * kRowBytes, b, quarter, wUp[s]);
#endif
        }
      }
      const float *xs = KT_GEMV_X(0) + b * kt::kQ8_0BlockElements + 8 * quarter;
      const float4 x0 = *reinterpret_cast<const float4 *>(xs),
                   x1 = *reinterpret_cast<const float4 *>(xs + 4);
#pragma unroll
      for (int s = 0; s < kSteps; ++s)
        if (ROWS_PER_WARP == 1 || firstRow + rowInStep + kRowsPerStep * s < OUT_FEATURES) {
          sums[s] += scale[s] * dot8(w[s], x0, x1);
#if GATE_UP
          upSums[s] += upScale[s] * dot8(wUp[s], x0, x1);
#endif
        }
    }
  }
#if K_SPLIT > 1
  // Decode has one token per block: the row's partial sums in split order.
  kt::storeSplitRow<ROWS_PER_BLOCK, K_SPLIT>(sums[0], upSums[0], rowInBlock, split,
                                             lane == 0 && rowExists, KT_GEMV_Y(0), firstRow);
#else
#pragma unroll
  for (int s = 0; s < kSteps; ++s) {
    const int row = firstRow + rowInStep + kRowsPerStep * s;
    float sum = rowSum(sums[s]);
#if GATE_UP
    sum = kt::siluMul(sum, rowSum(upSums[s]));
#endif
    if (laneInRow == 0 && (ROWS_PER_WARP == 1 || row < OUT_FEATURES))
      KT_GEMV_Y(0)[row] = sum;
  }
#endif
#endif
}
