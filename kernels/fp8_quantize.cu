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
  float scale;
  const kt::u32 packed = kt::quantizeE4m3Slice(v, scale);
  *reinterpret_cast<kt::u32 *>(q + static_cast<long long>(token) * IN_FEATURES + slice * 128 +
                               4 * lane) = packed;
  if (lane == 0)
    scales[static_cast<long long>(slice) * scaleStride + token] = scale;
}
