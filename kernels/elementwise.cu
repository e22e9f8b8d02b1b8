// Element-wise steps between the matrix products, over COUNT floats per
// token (a grid-stride loop over tokens x COUNT):
//   silu_mul:  out[i] = silu(gate[i]) * up[i]   (the SiLU-gated MLP)
//   add:       out[i] = a[i] + b[i]              (residual adds)
//   silu_mul_fp8: silu_mul's values quantized for the FP8 GEMM (the down
//              projection's) as fp8_quantize.cu does it, bit for bit, and
//              not written as floats: q e4m3 [tokens][COUNT], scales f32
//              [COUNT / 128][scaleStride]; one warp per token and 128-column
//              slice (COUNT a multiple of 128)
// silu(x) = x / (1 + e^-x), as runtime/cpu/Math computes it.
// Specialization defines:
//   COUNT          floats per token
//   BLOCK_THREADS  threads per block
#include "common.cuh"

#if !defined(COUNT) || !defined(BLOCK_THREADS)
#error "elementwise needs COUNT and BLOCK_THREADS"
#endif

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
silu_mul(const float *__restrict__ gate, const float *__restrict__ up, float *__restrict__ out,
         int tokens) {
  KT_WAIT_FOR_PRIOR_GRID();
  const long long total = static_cast<long long>(tokens) * COUNT;
  for (long long i = static_cast<long long>(blockIdx.x) * BLOCK_THREADS + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * BLOCK_THREADS) {
    out[i] = kt::siluMul(gate[i], up[i]);
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
add(const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ out, int tokens) {
  KT_WAIT_FOR_PRIOR_GRID();
  const long long total = static_cast<long long>(tokens) * COUNT;
  for (long long i = static_cast<long long>(blockIdx.x) * BLOCK_THREADS + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * BLOCK_THREADS)
    out[i] = a[i] + b[i];
}

#if COUNT % 128 == 0
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    silu_mul_fp8(const float *__restrict__ gate, const float *__restrict__ up,
                 kt::u8 *__restrict__ q, float *__restrict__ scales, int scaleStride, int tokens) {
  KT_WAIT_FOR_PRIOR_GRID();
  constexpr int kSlices = COUNT / 128;
  const int lane = threadIdx.x % 32;
  const long long item = (static_cast<long long>(blockIdx.x) * BLOCK_THREADS + threadIdx.x) / 32;
  if (item >= static_cast<long long>(tokens) * kSlices)
    return;
  const int token = static_cast<int>(item / kSlices), slice = static_cast<int>(item % kSlices);
  const long long at = static_cast<long long>(token) * COUNT + slice * 128 + 4 * lane;
  const float4 g = *reinterpret_cast<const float4 *>(gate + at),
               u = *reinterpret_cast<const float4 *>(up + at);
  const float4 v = make_float4(kt::siluMul(g.x, u.x), kt::siluMul(g.y, u.y), kt::siluMul(g.z, u.z),
                               kt::siluMul(g.w, u.w));
  float scale;
  *reinterpret_cast<kt::u32 *>(q + at) = kt::quantizeE4m3Slice(v, scale);
  if (lane == 0)
    scales[static_cast<long long>(slice) * scaleStride + token] = scale;
}
#endif
