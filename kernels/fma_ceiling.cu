// The device's f32 FMA ceiling for benchmarks (bench/GpuKernelBench.cpp):
// every thread runs ITERATIONS steps of 8 independent FMA chains, and the
// result is stored only so the work is not optimized away.
// Specialization defines:
//   ITERATIONS     steps per thread
//   BLOCK_THREADS  threads per block
#include "common.cuh"

#if !defined(ITERATIONS) || !defined(BLOCK_THREADS)
#error "fma_ceiling needs ITERATIONS and BLOCK_THREADS"
#endif

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
fma_ceiling(float *__restrict__ out, float seed) {
  float a[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    a[i] = seed + static_cast<float>(threadIdx.x + i);
  const float m = 0.999999f, c = 1e-7f;
#pragma unroll 16
  for (int step = 0; step < ITERATIONS; ++step)
#pragma unroll
    for (int i = 0; i < 8; ++i)
      a[i] = fmaf(a[i], m, c);
  float sum = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i)
    sum += a[i];
  out[blockIdx.x * BLOCK_THREADS + threadIdx.x] = sum;
}
