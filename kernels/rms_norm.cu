// RMSNorm over rows of HIDDEN floats: y = x / sqrt(mean(x^2) + EPS) * weight.
// One block per row; rows are xStride / yStride floats apart (MLA normalizes
// the latent part of each kv_a row straight into the cache). Specialization defines:
//   HIDDEN         row length (constant: loops unroll, no bounds arguments)
//   EPS            epsilon, a float literal such as 1e-06f
//   BLOCK_THREADS  threads per block (a multiple of 32, at most 1024)
//   FP8_OUT        (optional) also the entry rms_norm_fp8 below
//   ADDENDS        (optional, 2 or 3) also the entry add_rms_norm below
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

// 1 / sqrt(mean(in^2) + EPS) over a row, the block's threads together
// (`scratch`: a float per warp).
__device__ __forceinline__ float inverseRms(const float *__restrict__ in, float *scratch) {
  float sumSquares = 0.0f;
  for (int i = threadIdx.x; i < HIDDEN; i += BLOCK_THREADS)
    sumSquares += in[i] * in[i];
  const float total = kt::blockSum<BLOCK_THREADS>(sumSquares, scratch);
  // rsqrtf is approximate (2 ulp); 1/sqrtf keeps the f32 reference tolerance.
  return 1.0f / sqrtf(total / static_cast<float>(HIDDEN) + EPS);
}

// A thread's values of a row: HIDDEN / BLOCK_THREADS, rounded up.
constexpr int kPerThread = (HIDDEN + BLOCK_THREADS - 1) / BLOCK_THREADS;

// out = the row of this block's thread values (a thread's values at
// threadIdx.x + k * BLOCK_THREADS, zeros past HIDDEN), normalized, times the
// weights: the squares added up in inverseRms' order, which mla_cache.cu
// repeats.
__device__ __forceinline__ void writeNormalized(const float (&values)[kPerThread],
                                                const float (&weights)[kPerThread],
                                                float *__restrict__ out, float *scratch) {
  float sumSquares = 0.0f;
#pragma unroll
  for (int k = 0; k < kPerThread; ++k)
    sumSquares += values[k] * values[k];
  const float total = kt::blockSum<BLOCK_THREADS>(sumSquares, scratch);
  const float scale = 1.0f / sqrtf(total / static_cast<float>(HIDDEN) + EPS);
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int i = threadIdx.x + k * BLOCK_THREADS;
    if (i < HIDDEN)
      out[i] = values[k] * scale * weights[k];
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
rms_norm(const float *__restrict__ x, const float *__restrict__ weight,
         float *__restrict__ y, int rows, int xStride, int yStride) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ float scratch[BLOCK_THREADS / 32];
  const int row = blockIdx.x;
  if (row >= rows)
    return;
  const float *in = x + static_cast<long long>(row) * xStride;
  float *out = y + static_cast<long long>(row) * yStride;
  // The row and the weights are read once, into registers, before the sum
  // (decode normalizes one row with one block: its time is the latency of
  // these loads, so both are in flight together). The squares add up in
  // inverseRms' order, which mla_cache.cu repeats.
  float values[kPerThread], weights[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int i = threadIdx.x + k * BLOCK_THREADS;
    values[k] = i < HIDDEN ? in[i] : 0.0f;
    weights[k] = i < HIDDEN ? weight[i] : 0.0f;
  }
  writeNormalized(values, weights, out, scratch);
}

#if defined(ADDENDS)
static_assert(ADDENDS == 2 || ADDENDS == 3, "two or three addends");
// sum = a + b (with three addends a + (b + c), the order of the adds it
// replaces) and y = rms_norm(sum), rows HIDDEN apart: a residual add and the
// norm that reads it (kt-fuse-residual-norm) in one kernel, the same bits as
// the add kernels and rms_norm one after the other. `c` is unused with two.
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    add_rms_norm(const float *__restrict__ a, const float *__restrict__ b,
                 const float *__restrict__ c, const float *__restrict__ weight,
                 float *__restrict__ sum, float *__restrict__ y, int rows) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ float scratch[BLOCK_THREADS / 32];
  const int row = blockIdx.x;
  if (row >= rows)
    return;
  const long long offset = static_cast<long long>(row) * HIDDEN;
  // Every load before the first store, as in rms_norm (a store between
  // them kept the loads of each element apart: 9.5 us a decode row, not 3).
  float values[kPerThread], weights[kPerThread];
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int i = threadIdx.x + k * BLOCK_THREADS;
    const float rest =
        i < HIDDEN ? (ADDENDS == 3 ? b[offset + i] + c[offset + i] : b[offset + i]) : 0.0f;
    values[k] = i < HIDDEN ? a[offset + i] + rest : 0.0f;
    weights[k] = i < HIDDEN ? weight[i] : 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kPerThread; ++k) {
    const int i = threadIdx.x + k * BLOCK_THREADS;
    if (i < HIDDEN)
      sum[offset + i] = values[k];
  }
  writeNormalized(values, weights, y + offset, scratch);
}
#endif

#if defined(FP8_OUT)
// rms_norm, and the result quantized for the FP8 GEMM as fp8_quantize.cu
// does it (the same bytes and scales), in the same pass: q e4m3
// [rows][HIDDEN], scales f32 [HIDDEN / 128][scaleStride]. The norm is the
// producer of the layers' GEMM inputs, so prefill skips a kernel and a read
// of its result. One warp per 128-column slice; rows 16-byte aligned.
static_assert(HIDDEN % 128 == 0, "whole 128-column slices");
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    rms_norm_fp8(const float *__restrict__ x, const float *__restrict__ weight,
                 float *__restrict__ y, int rows, int xStride, int yStride, kt::u8 *__restrict__ q,
                 float *__restrict__ scales, int scaleStride) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ float scratch[BLOCK_THREADS / 32];
  const int row = blockIdx.x;
  if (row >= rows)
    return;
  const float *in = x + static_cast<long long>(row) * xStride;
  float *out = y + static_cast<long long>(row) * yStride;
  const float scale = inverseRms(in, scratch); // as rms_norm's: the same bits
  const int lane = threadIdx.x % 32;
  for (int slice = threadIdx.x / 32; slice < HIDDEN / 128; slice += BLOCK_THREADS / 32) {
    const int i = slice * 128 + 4 * lane;
    const float4 a = *reinterpret_cast<const float4 *>(in + i),
                 w = *reinterpret_cast<const float4 *>(weight + i);
    const float4 v =
        make_float4(a.x * scale * w.x, a.y * scale * w.y, a.z * scale * w.z, a.w * scale * w.w);
    *reinterpret_cast<float4 *>(out + i) = v;
    float sliceScale;
    const kt::u32 packed = kt::quantizeE4m3Slice(v, sliceScale);
    *reinterpret_cast<kt::u32 *>(q + static_cast<long long>(row) * HIDDEN + i) = packed;
    if (lane == 0)
      scales[static_cast<long long>(slice) * scaleStride + row] = sliceScale;
  }
}
#endif
