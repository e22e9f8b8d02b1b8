// The routed experts on the GPU. moe_combine, their result: out[t] = sum over the TOP_K chosen
// experts k of weights[t][k] * y[t][k], where y holds each chosen expert's
// output ([tokens][TOP_K][HIDDEN]) and weights are the gate's (normalized and
// scaled). Threads stride over tokens x HIDDEN. expert_counts: how often
// each expert was chosen (the routing statistics), counted on the device so
// that decode graphs keep counting.
// Specialization defines:
//   HIDDEN         values per token
//   TOP_K          experts per token
//   BLOCK_THREADS  threads per block
#include "common.cuh"

#if !defined(HIDDEN) || !defined(TOP_K) || !defined(BLOCK_THREADS)
#error "moe_combine needs HIDDEN, TOP_K and BLOCK_THREADS"
#endif

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
moe_combine(const float *__restrict__ y, const float *__restrict__ weights,
            float *__restrict__ out, int tokens) {
  KT_WAIT_FOR_PRIOR_GRID();
  const long long total = static_cast<long long>(tokens) * HIDDEN;
  for (long long i = static_cast<long long>(blockIdx.x) * BLOCK_THREADS + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * BLOCK_THREADS) {
    const long long token = i / HIDDEN, column = i % HIDDEN;
    float sum = 0.0f;
#pragma unroll
    for (int k = 0; k < TOP_K; ++k) {
      // A zero weight marks a slot no expert filled (the expert cache's
      // misses, whose y was never written).
      const float weight = weights[token * TOP_K + k];
      if (weight != 0.0f)
        sum += weight * y[(token * TOP_K + k) * HIDDEN + column];
    }
    out[i] = sum;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
expert_counts(const int *__restrict__ ids, unsigned long long *__restrict__ counts, int tokens) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int total = tokens * TOP_K;
  for (int i = blockIdx.x * BLOCK_THREADS + threadIdx.x; i < total; i += gridDim.x * BLOCK_THREADS)
    atomicAdd(counts + ids[i], 1ull);
}
