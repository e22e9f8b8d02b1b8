// x (IN_FEATURES floats, one token) as three int8 planes for the split-row
// Q8_0 decode GEMV (gemv_q8_0_planes.cu): per 32-value block, d = max |x| /
// 127 and x = d (q1 + q2 / 254 + q3 / 254^2), each q in [-127, 127] (common.cuh).
//   planes  int8 [3][IN_FEATURES]: q1, q2 and q3 of every value
//   scales  f32 [IN_FEATURES / 32]: d of every block (0 for a block of zeros)
// A warp per block, 8 blocks a thread block.
#include "common.cuh"

#ifndef IN_FEATURES
#error "quantize_planes needs IN_FEATURES"
#endif
static_assert(IN_FEATURES % kt::kQ8_0BlockElements == 0, "whole 32-value blocks");
constexpr int kBlocks = IN_FEATURES / kt::kQ8_0BlockElements;

__device__ __forceinline__ float clampQuant(float q) { return fminf(fmaxf(q, -127.0f), 127.0f); }

extern "C" __global__ void __launch_bounds__(256)
    quantize_planes(const float *__restrict__ x, kt::i8 *__restrict__ planes,
                    float *__restrict__ scales) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int block = (blockIdx.x * 256 + threadIdx.x) / 32, lane = threadIdx.x % 32;
  if (block >= kBlocks) // whole warps leave together
    return;
  const int index = block * kt::kQ8_0BlockElements + lane;
  const float value = x[index];
  float largest = fabsf(value);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
  const float d = largest / 127.0f;
  // Each step's remainder is in [-1/2, 1/2] (clamped: u may round past 127).
  const float u = d > 0.0f ? value / d : 0.0f;
  const float q1 = clampQuant(rintf(u)), r1 = (u - q1) * kt::kPlaneStep;
  const float q2 = clampQuant(rintf(r1)), r2 = (r1 - q2) * kt::kPlaneStep;
  const float q3 = clampQuant(rintf(r2));
  planes[index] = static_cast<kt::i8>(q1);
  planes[IN_FEATURES + index] = static_cast<kt::i8>(q2);
  planes[2 * IN_FEATURES + index] = static_cast<kt::i8>(q3);
  if (lane == 0)
    scales[block] = d;
}
