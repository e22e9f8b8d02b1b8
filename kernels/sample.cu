// Sampling where the logits are: greedy at temperature 0, else temperature,
// top-k and top-p by the rule of runtime/exec/TokenSampling.h (which has the
// host's copy of it), one block per row:
// - the k-th largest logit and the top-p threshold are radix selections on
//   order-preserving integer keys, 8 bits per pass, with 256-bin histograms
//   in shared memory (counts, or weights exp((logit - max) / temperature) in
//   2^-40 fixed point: integer sums, so the result does not depend on the
//   order of the atomic adds);
// - the draw is Gumbel-max over the tokens at or above the threshold, with
//   u from a hash of (seed, draw, token): no sort, one pass.
// Specialization defines:
//   VOCAB          logits per row
//   BLOCK_THREADS  threads per block, a multiple of 32 (at least 256)
#include "common.cuh"

#if !defined(VOCAB) || !defined(BLOCK_THREADS)
#error "sample needs VOCAB and BLOCK_THREADS"
#endif
static_assert(BLOCK_THREADS % 32 == 0 && BLOCK_THREADS >= 256, "whole warps, a bin per thread");

namespace {

typedef unsigned long long u64;

// runtime/exec/TokenSampling.h's TokenSampling as the executor copies it.
struct SampleParams {
  float temperature; // <= 0: greedy
  int topK;          // 0: no limit
  float topP;        // >= 1: no limit
  int pad;
  u64 seed, draw;
};

__device__ __forceinline__ kt::u32 logitKey(float logit) {
  const kt::u32 bits = __float_as_uint(logit);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

__device__ __forceinline__ u64 mix(u64 x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ u64 weightOf(float logit, float top, float inverseTemperature) {
  return static_cast<u64>(static_cast<double>(expf((logit - top) * inverseTemperature)) *
                          1099511627776.0); // 2^40
}

// The largest key t whose tokens at or above it (among keys >= floor) hold
// `target` of the amount: counts (WEIGHTED false) or weights.
template <bool WEIGHTED>
__device__ kt::u32 radixThreshold(const float *row, kt::u32 floor, u64 target, float top,
                                  float inverseTemperature, u64 *bins, kt::u32 *chosen) {
  kt::u32 prefix = 0, mask = 0;
  u64 above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += BLOCK_THREADS)
      bins[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < VOCAB; i += BLOCK_THREADS) {
      const kt::u32 key = logitKey(row[i]);
      if (key >= floor && (key & mask) == prefix)
        atomicAdd(&bins[(key >> shift) & 255],
                  WEIGHTED ? weightOf(row[i], top, inverseTemperature) : 1ull);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int bin = 255;
      for (; bin > 0; --bin) {
        if (above + bins[bin] >= target)
          break;
        above += bins[bin];
      }
      *chosen = kt::u32(bin);
    }
    __syncthreads();
    prefix |= *chosen << shift;
    mask |= 255u << shift;
    __syncthreads();
  }
  return prefix;
}

} // namespace

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
sample_rows(const float *__restrict__ logits, const SampleParams *__restrict__ params,
            int *__restrict__ ids) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ float scratch[BLOCK_THREADS / 32];
  __shared__ int indices[BLOCK_THREADS / 32];
  __shared__ u64 bins[256];
  __shared__ kt::u32 chosen;
  __shared__ u64 total;
  const float *row = logits + static_cast<long long>(blockIdx.x) * VOCAB;
  const SampleParams p = params[blockIdx.x];
  const bool greedy = p.temperature <= 0.0f;

  float top = -__int_as_float(0x7f800000);
  for (int i = threadIdx.x; i < VOCAB; i += BLOCK_THREADS)
    top = fmaxf(top, row[i]);
  top = kt::blockMax<BLOCK_THREADS>(top, scratch);
  const float inverseTemperature = greedy ? 0.0f : 1.0f / p.temperature;

  kt::u32 threshold = 0;
  if (!greedy && p.topK > 0 && p.topK < VOCAB)
    threshold = radixThreshold<false>(row, 0, u64(p.topK), top, inverseTemperature, bins,
                                      &chosen);
  if (!greedy && p.topP < 1.0f) {
    if (threadIdx.x == 0)
      total = 0;
    __syncthreads();
    u64 mine = 0;
    for (int i = threadIdx.x; i < VOCAB; i += BLOCK_THREADS)
      if (logitKey(row[i]) >= threshold)
        mine += weightOf(row[i], top, inverseTemperature);
    atomicAdd(&total, mine);
    __syncthreads();
    u64 target = u64(double(p.topP) * double(total));
    target = target > 0 ? target : 1;
    threshold = radixThreshold<true>(row, threshold, target, top, inverseTemperature, bins,
                                     &chosen);
  }

  // The draw: the largest logit (greedy) or the largest Gumbel-perturbed
  // scaled logit among the tokens at or above the threshold; the lower
  // index on ties.
  float best = -__int_as_float(0x7f800000);
  int bestIndex = VOCAB;
  const u64 stream = mix(p.seed ^ mix(p.draw));
  for (int i = threadIdx.x; i < VOCAB; i += BLOCK_THREADS) {
    float score;
    if (greedy) {
      score = row[i];
    } else {
      if (logitKey(row[i]) < threshold)
        continue;
      const float u = (float(mix(stream + u64(i)) >> 41) + 0.5f) * (1.0f / 8388608.0f);
      score = (row[i] - top) * inverseTemperature - logf(-logf(u));
    }
    if (score > best) { // increasing i: the first maximum stays
      best = score;
      bestIndex = i;
    }
  }
  kt::blockArgmax<BLOCK_THREADS>(best, bestIndex, scratch, indices);
  if (threadIdx.x == 0)
    ids[blockIdx.x] = bestIndex;
}
