// The 64 x 64 bf16 tile product of the prefill GEMMs for GPUs' mma.sync
// (gemm_fp8_bf16, gemm_q8_0_mma): 4 warps, each owning 32 tokens x 32
// outputs as 2 x 4 m16n8k16 accumulators, over 32 values of K staged in
// shared memory ([token][k] and [output][k] bf16 rows of kMmaPitch).
#pragma once

#include "common.cuh"

namespace kt {

constexpr int kMmaTile = 64, kMmaStep = 32;
constexpr int kMmaPitch =
    kMmaStep + 8; // bf16 per shared row: 80 bytes, so fragment loads hit 32 banks

// A warp's 2 x 4 accumulators of 4 values: values 0, 1 at (row, column,
// column + 1), 2, 3 eight rows down.
typedef float MmaFragments[2][4][4];

// The staged 32 values of the block's 64 tokens and 64 outputs.
struct MmaTiles {
  u16 a[kMmaTile][kMmaPitch]; // activations [token][k]
  u16 b[kMmaTile][kMmaPitch]; // weight [output][k]
};

// The block's rows and first output, and the row of each staged tile this
// thread copies (16 values of it, from `column`). Rows are 64 tokens from
// blockIdx.y * 64, up to `rows`; or, in the grouped form (routed experts in
// prefill, `groupTiles` not null), entry blockIdx.y of the tile table,
// {expert, first row, end row}: rows of one expert's assignments, against
// that expert's weight (`expert`: the kernel offsets the weight by that many
// of its matrices), whose x rows `rowIndex` names (null: the same rows) and
// whose results go to the rows of y `outRows` names (null: the same rows).
// Rows past the end repeat the last one (their results are not stored).
struct MmaBlock {
  int m0, rowEnd, n0, row, column, expert;
  const float *xRow;
  const int *outRows;
};
__device__ __forceinline__ MmaBlock mmaBlock(const float *x, int xStride, int rows,
                                             const int *groupTiles = nullptr,
                                             const int *rowIndex = nullptr,
                                             const int *outRows = nullptr) {
  MmaBlock b;
  if (groupTiles) {
    const int *tile = groupTiles + 3 * blockIdx.y;
    b.expert = tile[0];
    b.m0 = tile[1];
    b.rowEnd = tile[2];
  } else {
    b.expert = 0;
    b.m0 = blockIdx.y * kMmaTile;
    b.rowEnd = rows;
  }
  b.n0 = blockIdx.x * kMmaTile;
  b.row = static_cast<int>(threadIdx.x) / 2;
  b.column = static_cast<int>(threadIdx.x % 2) * 16;
  const int r = min(b.m0 + b.row, b.rowEnd - 1);
  b.xRow = x + static_cast<long long>(rowIndex ? rowIndex[r] : r) * xStride;
  b.outRows = outRows;
  return b;
}
// Where this thread stages its 16 weight values (bf16 pairs).
__device__ __forceinline__ u32 *weightSlot(MmaTiles &tiles, const MmaBlock &b) {
  return reinterpret_cast<u32 *>(&tiles.b[b.row][b.column]);
}

// 16 f32 activations to bf16 pairs at `destination`.
__device__ __forceinline__ void stageActivations(const float *values, u32 *destination) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const float4 v = *reinterpret_cast<const float4 *>(values + 4 * q);
    destination[2 * q] = toBf16(v.x) | toBf16(v.y) << 16;
    destination[2 * q + 1] = toBf16(v.z) | toBf16(v.w) << 16;
  }
}

// sums += the warp's part of a x b^T over the staged 32 values.
__device__ __forceinline__ void mmaTileProduct(const MmaTiles &tiles, MmaFragments &sums) {
#if __CUDA_ARCH__ >= 800
  const auto &aTile = tiles.a;
  const auto &bTile = tiles.b;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warpRow = (warp / 2) * 32, warpColumn = (warp % 2) * 32;
#pragma unroll
  for (int kk = 0; kk < kMmaStep; kk += 16) {
    const int k = kk + (lane % 4) * 2;
    u32 a[2][4], b[4][2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int r = warpRow + 16 * i + lane / 4;
      a[i][0] = *reinterpret_cast<const u32 *>(&aTile[r][k]);
      a[i][1] = *reinterpret_cast<const u32 *>(&aTile[r + 8][k]);
      a[i][2] = *reinterpret_cast<const u32 *>(&aTile[r][k + 8]);
      a[i][3] = *reinterpret_cast<const u32 *>(&aTile[r + 8][k + 8]);
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = warpColumn + 8 * j + lane / 4;
      b[j][0] = *reinterpret_cast<const u32 *>(&bTile[n][k]);
      b[j][1] = *reinterpret_cast<const u32 *>(&bTile[n][k + 8]);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j)
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
            : "+f"(sums[i][j][0]), "+f"(sums[i][j][1]), "+f"(sums[i][j][2]), "+f"(sums[i][j][3])
            : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]), "r"(b[j][1]));
  }
#endif
}

// After this thread staged its weight values for K from k0: stages the
// activations, and once every thread has, adds the product to `sums`.
__device__ __forceinline__ void mmaStep(MmaTiles &tiles, const MmaBlock &b, int k0,
                                        MmaFragments &sums) {
  stageActivations(b.xRow + k0 + b.column, reinterpret_cast<u32 *>(&tiles.a[b.row][b.column]));
  __syncthreads();
  mmaTileProduct(tiles, sums);
  __syncthreads();
}

// The warp's accumulators to y (the block's rows, from its first output);
// rows past the block's end are not stored.
__device__ __forceinline__ void storeMmaTile(const MmaFragments &result, float *y, int yStride,
                                             const MmaBlock &b) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warpRow = (warp / 2) * 32, warpColumn = (warp % 2) * 32;
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = b.m0 + warpRow + 16 * i + lane / 4 + 8 * half;
      if (row >= b.rowEnd)
        continue;
      const long long target = b.outRows ? b.outRows[row] : row;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int column = b.n0 + warpColumn + 8 * j + (lane % 4) * 2;
        *reinterpret_cast<float2 *>(y + target * yStride + column) =
            make_float2(result[i][j][2 * half], result[i][j][2 * half + 1]);
      }
    }
}

} // namespace kt
