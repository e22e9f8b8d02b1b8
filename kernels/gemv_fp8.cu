// y = W x for a native FP8 weight (DeepSeek's checkpoints): W holds
// OUT_FEATURES rows of IN_FEATURES e4m3 bytes, `scales` one f32 per 128x128
// block ([ceil(OUT/128)][ceil(IN/128)], the weight_scale_inv), so a value is
// e4m3 x its block's scale. The decode kernel for the fp8 family; e4m3 is
// decoded in registers by bit arithmetic, so it runs on every GPU.
// One warp per row; each lane reads 16 consecutive weights (one 16-byte
// load, within one scale block) and their 16 activations per step.
// Routed experts stack their matrices (OUT_FEATURES a multiple of 128, the
// scales stacked alike) and pick one per token and slot through the
// layout's matrix ids (kt::gemvSelect; grid z is the slots).
// Specialization defines:
//   IN_FEATURES     columns (a multiple of 16)
//   OUT_FEATURES    rows
//   ROWS_PER_BLOCK  warps (rows) per thread block
#include "common.cuh"

#if !defined(IN_FEATURES) || !defined(OUT_FEATURES)
#error "gemv_fp8 needs IN_FEATURES and OUT_FEATURES"
#endif
#ifndef ROWS_PER_BLOCK
#define ROWS_PER_BLOCK 4
#endif
static_assert(IN_FEATURES % 16 == 0, "rows of whole 16-byte pieces");
constexpr int kBlockCols = (IN_FEATURES + 127) / 128;

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK * 32)
gemv_fp8(const void *__restrict__ weight, const float *__restrict__ scales,
         const float *__restrict__ x, float *__restrict__ y, kt::GemvLayout layout) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row >= OUT_FEATURES)
    return;
  // One token per block (no tile).
  long long headRow = 0;
  if (kt::gemvSelect(x, y, layout, OUT_FEATURES, 1, headRow) == 0)
    return;
  const long long weightRow = headRow + row;
  const kt::u8 *rowBytes = static_cast<const kt::u8 *>(weight) + weightRow * IN_FEATURES;
  const float *rowScales = scales + (weightRow / 128) * kBlockCols;
  float sum = 0.0f;
#pragma unroll 4
  for (int col = 16 * lane; col < IN_FEATURES; col += 16 * 32) {
    const uint4 packed = *reinterpret_cast<const uint4 *>(rowBytes + col);
    const kt::u32 words[4] = {packed.x, packed.y, packed.z, packed.w};
    float dot = 0.0f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float4 xs = *reinterpret_cast<const float4 *>(x + col + 4 * w);
      dot += kt::e4m3ToFloat(words[w] & 0xff) * xs.x +
             kt::e4m3ToFloat((words[w] >> 8) & 0xff) * xs.y +
             kt::e4m3ToFloat((words[w] >> 16) & 0xff) * xs.z + kt::e4m3ToFloat(words[w] >> 24) * xs.w;
    }
    sum += rowScales[col / 128] * dot;
  }
  sum = kt::warpSum(sum);
  if (lane == 0)
    y[row] = sum;
}
