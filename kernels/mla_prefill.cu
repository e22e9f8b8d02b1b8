// MLA attention of several tokens of one sequence over the latent cache,
// flash-style (the absorbed core; runtime/cpu/Attention's absorbed path is
// its reference): token t sees the firstPositions + t cached positions
// before and at it. For each head h,
//   score[p] = (<qLatent[t][h], latent[p]> + <qRope[t][h], ropeKey[p]>) * SCALE
//   context[t][h] = softmax(score) . latent.
// All heads read the same latent rows, so a block takes one token and
// HEADS_PER_BLOCK heads (a warp each) and walks the cache in chunks of
// CHUNK positions staged once in shared memory for all of them, keeping a
// running maximum and sum (online softmax) and the weighted latent sum in
// registers. The queries live in registers too, spread over the lanes.
// Grid: (heads / HEADS_PER_BLOCK, tokens). Specialization defines:
//   KV_LORA          latent width (kv_lora_rank)
//   ROPE             rope key width (qk_rope_head_dim)
//   SCALE            softmax scale (a float literal)
//   HEADS_PER_BLOCK  heads (warps) per block, dividing the head count
//   CHUNK            positions per shared-memory stage
#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(HEADS_PER_BLOCK) || \
    !defined(CHUNK)
#error "mla_prefill needs KV_LORA, ROPE, SCALE, HEADS_PER_BLOCK and CHUNK"
#endif
#include "mla_attend.cuh"

constexpr int kThreads = HEADS_PER_BLOCK * 32;
static_assert(CHUNK == kt::mla::kStage, "positions are staged kStage at a time");

extern "C" __global__ void __launch_bounds__(kThreads)
mla_prefill(const float *__restrict__ qLatent, const float *__restrict__ qRope,
            int qRopeHeadStride, int qRopeTokenStride, const float *__restrict__ latent,
            const float *__restrict__ ropeKey, int firstPositions,
            float *__restrict__ context) {
  __shared__ __align__(16) float latentStage[kt::mla::kStage * KV_LORA];
  __shared__ __align__(16) float ropeStage[kt::mla::kStage * ROPE];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int token = blockIdx.y;
  const int heads = gridDim.x * HEADS_PER_BLOCK;
  const int head = blockIdx.x * HEADS_PER_BLOCK + warp;
  const long long slot = static_cast<long long>(token) * heads + head;

  kt::mla::WarpState w;
  kt::mla::loadQuery(w, 0, qLatent + slot * KV_LORA,
                     qRope + static_cast<long long>(token) * qRopeTokenStride +
                         static_cast<long long>(head) * qRopeHeadStride,
                     lane);
  kt::mla::attend<kThreads, 1>(w, latent, ropeKey, 0, firstPositions + token, latentStage,
                               ropeStage, lane);
  const float inverse = 1.0f / w.total[0];
#pragma unroll
  for (int k = 0; k < kt::mla::kLatentPerLane; ++k)
    if (lane + 32 * k < KV_LORA)
      context[slot * KV_LORA + lane + 32 * k] = w.sum[0][k] * inverse;
}
