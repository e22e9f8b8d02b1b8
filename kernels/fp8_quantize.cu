// Activations to e4m3 for the FP8 GEMM (gemm_fp8.cu), per token and slice
// of 128 columns as DeepSeek's recipe does: scale = max |x| / 448 (448 is
// e4m3's largest value; 1 where the slice is all zeros), q = x / scale
// rounded to nearest even. x: f32 rows `xStride` floats apart; q: e4m3
// [rows][IN_FEATURES]; scales: f32 [IN_FEATURES / 128][scaleStride], a
// slice's scales contiguous over tokens as the GEMM reads them.
// With `rowIndex`, row r of q reads x row rowIndex[r] (routed experts gather
// their assignments' rows, grouped by expert, as they quantize them).
// One warp per (token, slice): four values per lane. Needs sm_89's
// conversion to e4m3 (the GEMM runs on sm_90a only).
// Specialization defines:
//   IN_FEATURES   columns, a multiple of 128
#include "common.cuh"

#ifndef IN_FEATURES
#error "fp8_quantize needs IN_FEATURES"
#endif
static_assert(IN_FEATURES % 128 == 0, "whole 128-column slices");
constexpr int kSlices = IN_FEATURES / 128;

// Two floats to two e4m3 bytes (`low` in the low byte), saturating.
__device__ __forceinline__ kt::u16 toE4m3Pair(float low, float high) {
  kt::u16 pair = 0;
#if __CUDA_ARCH__ >= 890
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(high), "f"(low));
#endif
  return pair;
}

extern "C" __global__ void __launch_bounds__(256)
fp8_quantize(const float *__restrict__ x, int xStride, int rows, kt::u8 *__restrict__ q,
             float *__restrict__ scales, int scaleStride, const int *__restrict__ rowIndex) {
  const int lane = threadIdx.x % 32;
  const long long item = (static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (item >= static_cast<long long>(rows) * kSlices)
    return;
  const int token = static_cast<int>(item / kSlices), slice = static_cast<int>(item % kSlices);
  const float4 v = *reinterpret_cast<const float4 *>(
      x + static_cast<long long>(rowIndex ? rowIndex[token] : token) * xStride + slice * 128 +
      4 * lane);
  float largest = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
  const float scale = largest > 0.0f ? largest / 448.0f : 1.0f;
  const kt::u32 packed = toE4m3Pair(v.x / scale, v.y / scale) |
                         static_cast<kt::u32>(toE4m3Pair(v.z / scale, v.w / scale)) << 16;
  *reinterpret_cast<kt::u32 *>(q + static_cast<long long>(token) * IN_FEATURES + slice * 128 +
                               4 * lane) = packed;
  if (lane == 0)
    scales[static_cast<long long>(slice) * scaleStride + token] = scale;
}
