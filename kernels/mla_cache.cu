// Appends the new tokens' compressed KV rows to the MLA latent cache: row t
// of `kvA` ([tokens][KV_LORA + ROPE], latent normalized and rope key rotated
// already) goes to cache position positions[t]. The positions come from
// device memory, so a captured decode graph replays at every position.
// One block per token. Specialization defines:
//   KV_LORA        latent width (kv_lora_rank)
//   ROPE           rope key width (qk_rope_head_dim)
//   BLOCK_THREADS  threads per block
#include "common.cuh"

#if !defined(KV_LORA) || !defined(ROPE) || !defined(BLOCK_THREADS)
#error "mla_cache_append needs KV_LORA, ROPE and BLOCK_THREADS"
#endif

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
mla_cache_append(const float *__restrict__ kvA, const int *__restrict__ positions,
                 float *__restrict__ latent, float *__restrict__ ropeKey) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int token = blockIdx.x;
  const long long position = positions[token];
  const float *row = kvA + static_cast<long long>(token) * (KV_LORA + ROPE);
  for (int i = threadIdx.x; i < KV_LORA; i += BLOCK_THREADS)
    latent[position * KV_LORA + i] = row[i];
  for (int i = threadIdx.x; i < ROPE; i += BLOCK_THREADS)
    ropeKey[position * ROPE + i] = row[KV_LORA + i];
}
