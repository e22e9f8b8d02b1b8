// y = x W^T for a GGUF Q8_0 weight on tensor cores (sm_80 and newer): the
// prefill GEMM of q8_0 matrices. Per 32 values (one Q8_0 block) the weight's
// int8 values (exact in bf16) and the f32 activations (rounded to nearest
// even) go to bf16 in shared memory, mma.sync m16n8k16 multiplies them with
// f32 accumulation, and each block's sums are added times the weight row's
// block scale, so only the activations are rounded.
//   x  f32 [rows][K_FEATURES], rows `xStride` floats apart
//   W  Q8_0 [N_FEATURES][K_FEATURES / 32 blocks of 34 bytes: f16 scale, 32 int8],
//      or with SPLIT_ROWS each row's quants, then its scales (common.cuh)
//   y  f32 [rows][N_FEATURES], rows `yStride` floats apart
// A block of 4 warps owns 64 tokens x 64 outputs (mma_tile64.cuh). Grid:
// (N_FEATURES / 64, ceil(rows / 64)); or, with `groupTiles` (routed experts
// in prefill: W every expert's matrix stacked, x rows picked by `rowIndex`,
// results to y rows `outRows`, either null for the same rows), one block row
// per tile entry {expert, first row, end row} (mma_tile64.cuh's mmaBlock).
// Specialization defines:
//   N_FEATURES  output columns (weight rows), a multiple of 64
//   K_FEATURES  reduction length, a multiple of 32
#include "mma_tile64.cuh"

#if !defined(N_FEATURES) || !defined(K_FEATURES)
#error "gemm_q8_0_mma needs N_FEATURES and K_FEATURES"
#endif
static_assert(N_FEATURES % kt::kMmaTile == 0, "whole 64-row tiles of the weight");
static_assert(K_FEATURES % 32 == 0, "whole Q8_0 blocks");
#ifndef SPLIT_ROWS
#define SPLIT_ROWS 0
#endif
static_assert(!SPLIT_ROWS || K_FEATURES % kt::kQ8_0SplitRowValues == 0, "split rows");
static_assert(kt::kMmaStep == 32, "one Q8_0 block per step");
constexpr long long kRowBytes = static_cast<long long>(K_FEATURES / 32) * kt::kQ8_0BlockBytes;

// An int8 weight as bf16 (exact: at most 8 significant bits).
__device__ __forceinline__ kt::u32 int8ToBf16(kt::u32 byte) {
  return __float_as_uint(static_cast<float>(static_cast<kt::i8>(byte))) >> 16;
}

extern "C" __global__ void __launch_bounds__(128)
    gemm_q8_0_mma(const kt::u8 *__restrict__ weight, const float *__restrict__ x, int xStride,
                  float *__restrict__ y, int yStride, int rows, const int *__restrict__ groupTiles,
                  const int *__restrict__ rowIndex, const int *__restrict__ outRows) {
#if __CUDA_ARCH__ >= 800
  __shared__ __align__(16) kt::MmaTiles tiles;
  // The weight rows' block scales, by step parity: a thread may write the
  // next step's while others still read this step's.
  __shared__ float blockScale[2][kt::kMmaTile];
  const kt::MmaBlock b = kt::mmaBlock(x, xStride, rows, groupTiles, rowIndex, outRows);
  const int lane = threadIdx.x % 32, warpColumn = (threadIdx.x / 32 % 2) * 32;
  const kt::u8 *wRow =
      weight + (static_cast<long long>(b.expert) * N_FEATURES + b.n0 + b.row) * kRowBytes;

  kt::MmaFragments result = {};
  for (int k0 = 0; k0 < K_FEATURES; k0 += kt::kMmaStep) {
    // The weights to bf16 pairs (blocks are 2-byte aligned) and their scale.
    kt::u32 *destination = kt::weightSlot(tiles, b);
    const kt::u16 *pairs = kt::q8_0BlockPairs<SPLIT_ROWS>(wRow, k0 / 32);
    kt::u32 words[4];
    kt::load16Bytes(
        reinterpret_cast<const kt::u8 *>(pairs + kt::q8_0QuantPairs<SPLIT_ROWS>) + b.column, words);
#pragma unroll
    for (int q = 0; q < 8; ++q) {
      const kt::u32 pair = (words[q / 2] >> (16 * (q % 2))) & 0xffff;
      destination[q] = int8ToBf16(pair & 0xff) | int8ToBf16(pair >> 8) << 16;
    }
    float *scales = blockScale[(k0 / kt::kMmaStep) % 2];
    if (b.column == 0)
      scales[b.row] =
          kt::halfToFloat(kt::q8_0ScaleBits<SPLIT_ROWS, K_FEATURES>(wRow, k0 / 32, pairs));
    kt::MmaFragments sums = {};
    kt::mmaStep(tiles, b, k0, sums);
    // Each accumulator value takes its weight row's (column's) scale.
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int column = warpColumn + 8 * j + (lane % 4) * 2;
      const float s0 = scales[column], s1 = scales[column + 1];
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        result[i][j][0] += sums[i][j][0] * s0;
        result[i][j][1] += sums[i][j][1] * s1;
        result[i][j][2] += sums[i][j][2] * s0;
        result[i][j][3] += sums[i][j][3] * s1;
      }
    }
  }
  kt::storeMmaTile(result, y, yStride, b);
#endif
}
