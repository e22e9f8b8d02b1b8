// Appends the new tokens' compressed KV rows to the MLA latent cache: row t
// of `kvA` ([tokens][KV_LORA + ROPE], as kv_a_proj_with_mqa wrote it) goes
// to cache position positions[t], its latent normalized (kv_a_norm, as
// rms_norm.cu computes it) and its rope key rotated (as rope.cu rotates
// it), in one kernel instead of three. The positions come from device
// memory, so a captured decode graph replays at every position. One block
// per token. Specialization defines:
//   KV_LORA        latent width (kv_lora_rank)
//   ROPE           rope key width (qk_rope_head_dim, even)
//   EPS            the norm's epsilon, a float literal
//   COS_SIN_SCALE  the rotation's scale, a float literal
//   BLOCK_THREADS  threads per block (a multiple of 32; rms_norm's count
//                  for KV_LORA, so that the norm adds up in the same order)
#include "common.cuh"

#if !defined(KV_LORA) || !defined(ROPE) || !defined(EPS) || !defined(COS_SIN_SCALE) ||             \
    !defined(BLOCK_THREADS)
#error "mla_cache_append needs KV_LORA, ROPE, EPS, COS_SIN_SCALE and BLOCK_THREADS"
#endif
static_assert(ROPE % 2 == 0, "rope pairs");

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    mla_cache_append(const float *__restrict__ kvA, const int *__restrict__ positions,
                     const float *__restrict__ normWeight,
                     const float *__restrict__ inverseFrequencies, float *__restrict__ latent,
                     float *__restrict__ ropeKey) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ float scratch[BLOCK_THREADS / 32];
  const int token = blockIdx.x;
  const int position = positions[token];
  const float *row = kvA + static_cast<long long>(token) * (KV_LORA + ROPE);
  float sumSquares = 0.0f;
  for (int i = threadIdx.x; i < KV_LORA; i += BLOCK_THREADS)
    sumSquares += row[i] * row[i];
  const float total = kt::blockSum<BLOCK_THREADS>(sumSquares, scratch);
  const float scale = 1.0f / sqrtf(total / static_cast<float>(KV_LORA) + EPS);
  float *latentRow = latent + static_cast<long long>(position) * KV_LORA;
  for (int i = threadIdx.x; i < KV_LORA; i += BLOCK_THREADS)
    latentRow[i] = row[i] * scale * normWeight[i];
  // Pairs (x[2i], x[2i+1]) rotated by position x inverse_frequency[i],
  // stored de-interleaved (x'[i], x'[i + ROPE/2]).
  constexpr int kHalf = ROPE / 2;
  float *ropeRow = ropeKey + static_cast<long long>(position) * ROPE;
  for (int pair = threadIdx.x; pair < kHalf; pair += BLOCK_THREADS) {
    const float angle = inverseFrequencies[pair] * static_cast<float>(position);
    const float c = static_cast<float>(cos(static_cast<double>(angle))) * (COS_SIN_SCALE);
    const float s = static_cast<float>(sin(static_cast<double>(angle))) * (COS_SIN_SCALE);
    const float even = row[KV_LORA + 2 * pair], odd = row[KV_LORA + 2 * pair + 1];
    ropeRow[pair] = even * c - odd * s;
    ropeRow[pair + kHalf] = odd * c + even * s;
  }
}
