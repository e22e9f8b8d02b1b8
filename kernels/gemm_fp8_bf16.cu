// y = x W^T for an FP8 weight on GPUs without FP8 tensor cores (sm_80 to
// sm_89): the prefill GEMM of the fp8 family there. The weight's e4m3 values
// (exact in bf16) and the f32 activations (rounded to nearest even) go to
// bf16 in shared memory, mma.sync m16n8k16 multiplies them with f32
// accumulation, and each 128-column block's sum is added times the weight's
// block scale (weight_scale_inv [ceil(N / 128)][K / 128]).
//   x  f32 [rows][K_FEATURES], rows `xStride` floats apart
//   W  e4m3 [N_FEATURES][K_FEATURES]
//   y  f32 [rows][N_FEATURES], rows `yStride` floats apart
// A block of 4 warps owns 64 tokens x 64 outputs (mma_tile64.cuh) and steps
// along K by 32. Grid: (N_FEATURES / 64, ceil(rows / 64)).
// Specialization defines:
//   N_FEATURES  output columns (weight rows), a multiple of 64
//   K_FEATURES  reduction length, a multiple of 128
#include "mma_tile64.cuh"

#if !defined(N_FEATURES) || !defined(K_FEATURES)
#error "gemm_fp8_bf16 needs N_FEATURES and K_FEATURES"
#endif
static_assert(N_FEATURES % kt::kMmaTile == 0, "whole 64-row tiles of the weight");
static_assert(K_FEATURES % 128 == 0, "whole 128-column scale blocks");
constexpr int kScaleColumns = K_FEATURES / 128;

// f += add * scale over a warp's accumulators.
__device__ __forceinline__ void addScaled(kt::MmaFragments &f, const kt::MmaFragments &add,
                                          float scale) {
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
  __shared__ __align__(16) kt::MmaTiles tiles;
  const kt::MmaBlock b = kt::mmaBlock(x, xStride, rows);
  const kt::u8 *wRow = weight + static_cast<long long>(b.n0 + b.row) * K_FEATURES;
  const float *scaleRow = scales + (b.n0 / 128) * kScaleColumns;

  kt::MmaFragments result = {};
  for (int block = 0; block < kScaleColumns; ++block) {
    kt::MmaFragments sums = {};
    for (int k0 = block * 128; k0 < block * 128 + 128; k0 += kt::kMmaStep) {
      // The weights to bf16 pairs.
      kt::u32 *destination = kt::weightSlot(tiles, b);
      const uint4 packed = *reinterpret_cast<const uint4 *>(wRow + k0 + b.column);
      const kt::u32 words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
      for (int q = 0; q < 4; ++q)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // e4m3 has 3 mantissa bits: its float's low 16 bits are zero.
          const kt::u32 low = __float_as_uint(kt::e4m3ToFloat((words[q] >> (16 * h)) & 0xff)),
                        high = __float_as_uint(kt::e4m3ToFloat((words[q] >> (16 * h + 8)) & 0xff));
          destination[2 * q + h] = (low >> 16) | (high & 0xffff0000u);
        }
      kt::mmaStep(tiles, b, k0, sums);
    }
    addScaled(result, sums, scaleRow[block]);
  }
  kt::storeMmaTile(result, y, yStride, b);
#endif
}
