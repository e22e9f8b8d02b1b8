// RMSNorm over rows of HIDDEN floats: y = x / sqrt(mean(x^2) + EPS) * weight.
// One block per row; rows are xStride / yStride floats apart (MLA normalizes
// the latent part of each kv_a row straight into the cache). Specialization defines:
//   HIDDEN         row length (constant: loops unroll, no bounds arguments)
//   EPS            epsilon, a float literal such as 1e-06f
//   BLOCK_THREADS  threads per block (a multiple of 32, at most 1024)
#include "common.cuh"

#ifndef HIDDEN
#error "rms_norm needs HIDDEN"
#endif
#ifndef EPS
#error "rms_norm needs EPS"
#endif
#ifndef BLOCK_THREADS
#define BLOCK_THREADS 256
#endif

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
rms_norm(const float *__restrict__ x, const float *__restrict__ weight,
         float *__restrict__ y, int rows, int xStride, int yStride) {
  __shared__ float scratch[BLOCK_THREADS / 32];
  const int row = blockIdx.x;
  if (row >= rows)
    return;
  const float *in = x + static_cast<long long>(row) * xStride;
  float *out = y + static_cast<long long>(row) * yStride;

  float sumSquares = 0.0f;
  for (int i = threadIdx.x; i < HIDDEN; i += BLOCK_THREADS)
    sumSquares += in[i] * in[i];
  const float total = kt::blockSum<BLOCK_THREADS>(sumSquares, scratch);
  // rsqrtf is approximate (2 ulp); 1/sqrtf keeps the f32 reference tolerance.
  const float scale = 1.0f / sqrtf(total / static_cast<float>(HIDDEN) + EPS);
  for (int i = threadIdx.x; i < HIDDEN; i += BLOCK_THREADS)
    out[i] = in[i] * scale * weight[i];
}
