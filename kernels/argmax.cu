// Greedy sampling: the index of each row's largest logit (the lower index
// on ties, as the CPU sampler's std::max_element), one block per row.
// Specialization defines:
//   VOCAB          logits per row
//   BLOCK_THREADS  threads per block, a multiple of 32
#include "common.cuh"

#if !defined(VOCAB) || !defined(BLOCK_THREADS)
#error "argmax needs VOCAB and BLOCK_THREADS"
#endif
static_assert(BLOCK_THREADS % 32 == 0, "whole warps");

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
argmax(const float *__restrict__ logits, int *__restrict__ ids) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ float values[BLOCK_THREADS / 32];
  __shared__ int indices[BLOCK_THREADS / 32];
  const float *row = logits + static_cast<long long>(blockIdx.x) * VOCAB;
  float best = -__int_as_float(0x7f800000);
  int bestIndex = VOCAB;
  for (int i = threadIdx.x; i < VOCAB; i += BLOCK_THREADS)
    if (row[i] > best) { // increasing i: the first maximum stays
      best = row[i];
      bestIndex = i;
    }
  kt::blockArgmax<BLOCK_THREADS>(best, bestIndex, values, indices);
  if (threadIdx.x == 0)
    ids[blockIdx.x] = bestIndex;
}
