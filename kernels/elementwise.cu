// Element-wise steps between the matrix products, over COUNT floats per
// token (a grid-stride loop over tokens x COUNT):
//   silu_mul:  out[i] = silu(gate[i]) * up[i]   (the SiLU-gated MLP)
//   add:       out[i] = a[i] + b[i]              (residual adds)
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
  const long long total = static_cast<long long>(tokens) * COUNT;
  for (long long i = static_cast<long long>(blockIdx.x) * BLOCK_THREADS + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * BLOCK_THREADS) {
    out[i] = kt::siluMul(gate[i], up[i]);
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
add(const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ out, int tokens) {
  const long long total = static_cast<long long>(tokens) * COUNT;
  for (long long i = static_cast<long long>(blockIdx.x) * BLOCK_THREADS + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * BLOCK_THREADS)
    out[i] = a[i] + b[i];
}
