// y = x W^T for an FP8 weight on GPUs without FP8 tensor cores (sm_80 to
// sm_89): the prefill GEMM of the fp8 family there. The weight's e4m3 values
// (exact in bf16) and the f32 activations (rounded to nearest even) go to
// bf16 in shared memory, mma.sync m16n8k16 multiplies them with f32
// accumulation, and each 128-column block's sum is added times the weight's
// block scale (weight_scale_inv [ceil(N / 128)][K / 128]).
//   x  f32 [rows][K_FEATURES], rows `xStride` floats apart
//   W  e4m3 [N_FEATURES][K_FEATURES]
//   y  f32 [rows][N_FEATURES], rows `yStride` floats apart
// A block of 4 warps owns 64 tokens x 64 outputs (a warp 32 x 32: 2 x 4
// mma tiles) and steps along K by 32. Grid: (N_FEATURES / 64, ceil(rows / 64)).
// Specialization defines:
//   N_FEATURES  output columns (weight rows), a multiple of 64
//   K_FEATURES  reduction length, a multiple of 128
#include "common.cuh"

#if !defined(N_FEATURES) || !defined(K_FEATURES)
#error "gemm_fp8_bf16 needs N_FEATURES and K_FEATURES"
#endif
static_assert(N_FEATURES % 64 == 0, "whole 64-row tiles of the weight");
static_assert(K_FEATURES % 128 == 0, "whole 128-column scale blocks");
constexpr int kTile = 64, kStep = 32;
constexpr int kPitch = kStep + 8; // bf16 per shared row: 80 bytes, so fragment loads hit 32 banks
constexpr int kScaleColumns = K_FEATURES / 128;

// f32 to bf16, round to nearest even (activations hold no NaN).
__device__ __forceinline__ kt::u32 toBf16(float value) {
  const kt::u32 bits = __float_as_uint(value);
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}

// A warp's 2 x 4 accumulators of 4 values; f += add * scale.
typedef float Fragments[2][4][4];
__device__ __forceinline__ void addScaled(Fragments &f, const Fragments &add, float scale) {
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int v = 0; v < 4; ++v)
        f[i][j][v] += add[i][j][v] * scale;
}

extern "C" __global__ void __launch_bounds__(128)
gemm_fp8_bf16(const kt::u8 *__restrict__ weight, const float *__restrict__ scales,
              const float *__restrict__ x, int xStride, float *__restrict__ y, int yStride,
              int rows) {
#if __CUDA_ARCH__ >= 800
  __shared__ __align__(16) kt::u16 aTile[kTile][kPitch]; // activations [token][k]
  __shared__ __align__(16) kt::u16 bTile[kTile][kPitch]; // weight [output][k]
  const int m0 = blockIdx.y * kTile, n0 = blockIdx.x * kTile;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warpRow = (warp / 2) * 32, warpColumn = (warp % 2) * 32;
  // Each thread copies 16 values of one row of each tile per step.
  const int copyRow = threadIdx.x / 2, copyColumn = (threadIdx.x % 2) * 16;
  const float *xRow = x + static_cast<long long>(min(m0 + copyRow, rows - 1)) * xStride;
  const kt::u8 *wRow = weight + static_cast<long long>(n0 + copyRow) * K_FEATURES;
  const float *scaleRow = scales + (n0 / 128) * kScaleColumns;

  Fragments result = {};
  for (int block = 0; block < kScaleColumns; ++block) {
    Fragments sums = {};
    for (int k0 = block * 128; k0 < block * 128 + 128; k0 += kStep) {
      // Activations (rows past the end repeat the last row; their results
      // are not stored) and weights to bf16 pairs.
      kt::u32 *aDestination = reinterpret_cast<kt::u32 *>(&aTile[copyRow][copyColumn]);
      kt::u32 *bDestination = reinterpret_cast<kt::u32 *>(&bTile[copyRow][copyColumn]);
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float4 v = *reinterpret_cast<const float4 *>(xRow + k0 + copyColumn + 4 * q);
        aDestination[2 * q] = toBf16(v.x) | toBf16(v.y) << 16;
        aDestination[2 * q + 1] = toBf16(v.z) | toBf16(v.w) << 16;
      }
      const uint4 packed = *reinterpret_cast<const uint4 *>(wRow + k0 + copyColumn);
      const kt::u32 words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // e4m3 has 3 mantissa bits: its float's low 16 bits are zero.
          const kt::u32 low = __float_as_uint(kt::e4m3ToFloat((words[q] >> (16 * h)) & 0xff)),
                        high = __float_as_uint(kt::e4m3ToFloat((words[q] >> (16 * h + 8)) & 0xff));
          bDestination[2 * q + h] = (low >> 16) | (high & 0xffff0000u);
        }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kStep; kk += 16) {
        const int k = kk + (lane % 4) * 2;
        kt::u32 a[2][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int r = warpRow + 16 * i + lane / 4;
          a[i][0] = *reinterpret_cast<const kt::u32 *>(&aTile[r][k]);
          a[i][1] = *reinterpret_cast<const kt::u32 *>(&aTile[r + 8][k]);
          a[i][2] = *reinterpret_cast<const kt::u32 *>(&aTile[r][k + 8]);
          a[i][3] = *reinterpret_cast<const kt::u32 *>(&aTile[r + 8][k + 8]);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int n = warpColumn + 8 * j + lane / 4;
          b[j][0] = *reinterpret_cast<const kt::u32 *>(&bTile[n][k]);
          b[j][1] = *reinterpret_cast<const kt::u32 *>(&bTile[n][k + 8]);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j)
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                         "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                         : "+f"(sums[i][j][0]), "+f"(sums[i][j][1]), "+f"(sums[i][j][2]),
                           "+f"(sums[i][j][3])
                         : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]),
                           "r"(b[j][1]));
      }
      __syncthreads();
    }
    addScaled(result, sums, scaleRow[block]);
  }
  // Accumulator layout: values 0, 1 at (row, column, column + 1), 2, 3 at row + 8.
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = m0 + warpRow + 16 * i + lane / 4 + 8 * half;
      if (row >= rows)
        continue;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int column = n0 + warpColumn + 8 * j + (lane % 4) * 2;
        *reinterpret_cast<float2 *>(y + static_cast<long long>(row) * yStride + column) =
            make_float2(result[i][j][2 * half], result[i][j][2 * half + 1]);
      }
    }
#endif
}
