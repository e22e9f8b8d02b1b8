// The attention core of MLA decode with weight absorption, over the
// compressed cache (runtime/cpu/Attention's absorbed path is its reference):
// for each head h and cached position p,
//   score[p] = (<qLatent[h], latent[p]> + <qRope[h], ropeKey[p]>) * SCALE
// softmax over p < positions, then context[h] = sum_p softmax[p] latent[p].
// The caller maps the query's nope part into latent space before (k_b) and
// the context out through the value up-projection after (v_b).
// Several tokens of one sequence attend at once (prefill through the
// absorbed path): blockIdx.y is the token, which sees firstPositions +
// blockIdx.y cached positions (causal). One block per (head, token); threads stride over positions for the scores and own
// KV_LORA / BLOCK_THREADS latent dimensions each for the context. Scores
// live in dynamic shared memory (as many floats as the last token's positions).
// qRope is read in place from the rotated queries: head h of token t at
// qRope + t * qRopeTokenStride + h * qRopeHeadStride.
// Specialization defines:
//   KV_LORA        latent width (kv_lora_rank)
//   ROPE           rope key width (qk_rope_head_dim)
//   SCALE          softmax scale (a float literal)
//   BLOCK_THREADS  threads per block, a multiple of 32
#include "common.cuh"

#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(BLOCK_THREADS)
#error "mla_decode needs KV_LORA, ROPE, SCALE and BLOCK_THREADS"
#endif
static_assert(BLOCK_THREADS % 32 == 0, "whole warps");

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
mla_decode(const float *__restrict__ qLatent, const float *__restrict__ qRope,
           int qRopeHeadStride, int qRopeTokenStride, const float *__restrict__ latent,
           const float *__restrict__ ropeKey, int firstPositions, float *__restrict__ context) {
  extern __shared__ float scores[];
  __shared__ float reduction[BLOCK_THREADS / 32];
  const int head = blockIdx.x, token = blockIdx.y;
  const int positions = firstPositions + token;
  const long long slot = static_cast<long long>(token) * gridDim.x + head;
  const float *q = qLatent + slot * KV_LORA;
  const float *qr = qRope + static_cast<long long>(token) * qRopeTokenStride +
                    static_cast<long long>(head) * qRopeHeadStride;

  // Scores: one warp per position at a time, lanes over the dimensions.
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  constexpr int kWarps = BLOCK_THREADS / 32;
  for (int p = warp; p < positions; p += kWarps) {
    const float *l = latent + static_cast<long long>(p) * KV_LORA;
    const float *r = ropeKey + static_cast<long long>(p) * ROPE;
    float dot = 0.0f;
    for (int i = lane; i < KV_LORA; i += 32)
      dot += q[i] * l[i];
    for (int i = lane; i < ROPE; i += 32)
      dot += qr[i] * r[i];
    dot = kt::warpSum(dot);
    if (lane == 0)
      scores[p] = dot * (SCALE);
  }
  __syncthreads();

  // Softmax over the positions.
  float maximum = -__int_as_float(0x7f800000);
  for (int p = threadIdx.x; p < positions; p += BLOCK_THREADS)
    maximum = fmaxf(maximum, scores[p]);
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    maximum = fmaxf(maximum, __shfl_xor_sync(0xffffffffu, maximum, offset));
  if (lane == 0)
    reduction[warp] = maximum;
  __syncthreads();
  maximum = reduction[0];
  for (int w = 1; w < kWarps; ++w)
    maximum = fmaxf(maximum, reduction[w]);
  __syncthreads();
  float sum = 0.0f;
  for (int p = threadIdx.x; p < positions; p += BLOCK_THREADS) {
    const float e = expf(scores[p] - maximum);
    scores[p] = e;
    sum += e;
  }
  sum = kt::blockSum<BLOCK_THREADS>(sum, reduction);
  const float inverse = 1.0f / sum;

  // Context: each thread owns latent dimensions i, i + BLOCK_THREADS, ...
  for (int i = threadIdx.x; i < KV_LORA; i += BLOCK_THREADS) {
    float value = 0.0f;
    for (int p = 0; p < positions; ++p)
      value += scores[p] * latent[static_cast<long long>(p) * KV_LORA + i];
    context[slot * KV_LORA + i] = value * inverse;
  }
}
