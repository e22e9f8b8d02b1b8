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
#include "common.cuh"

#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(HEADS_PER_BLOCK) || \
    !defined(CHUNK)
#error "mla_prefill needs KV_LORA, ROPE, SCALE, HEADS_PER_BLOCK and CHUNK"
#endif
constexpr int kThreads = HEADS_PER_BLOCK * 32;
constexpr int kLatentPerLane = (KV_LORA + 31) / 32;
constexpr int kRopePerLane = (ROPE + 31) / 32;

extern "C" __global__ void __launch_bounds__(kThreads)
mla_prefill(const float *__restrict__ qLatent, const float *__restrict__ qRope,
            int qRopeHeadStride, int qRopeTokenStride, const float *__restrict__ latent,
            const float *__restrict__ ropeKey, int firstPositions,
            float *__restrict__ context) {
  __shared__ float latentChunk[CHUNK * KV_LORA];
  __shared__ float ropeChunk[CHUNK * ROPE];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int token = blockIdx.y;
  const int heads = gridDim.x * HEADS_PER_BLOCK;
  const int head = blockIdx.x * HEADS_PER_BLOCK + warp;
  const int positions = firstPositions + token;

  const long long slot = static_cast<long long>(token) * heads + head;
  float q[kLatentPerLane], qr[kRopePerLane], sum[kLatentPerLane];
#pragma unroll
  for (int k = 0; k < kLatentPerLane; ++k) {
    const int i = lane + 32 * k;
    q[k] = i < KV_LORA ? qLatent[slot * KV_LORA + i] : 0.0f;
    sum[k] = 0.0f;
  }
  const float *qRopeHead = qRope + static_cast<long long>(token) * qRopeTokenStride +
                           static_cast<long long>(head) * qRopeHeadStride;
#pragma unroll
  for (int k = 0; k < kRopePerLane; ++k) {
    const int i = lane + 32 * k;
    qr[k] = i < ROPE ? qRopeHead[i] : 0.0f;
  }
  float maximum = -__int_as_float(0x7f800000), total = 0.0f;

  for (int first = 0; first < positions; first += CHUNK) {
    const int count = min(CHUNK, positions - first);
    __syncthreads(); // the previous chunk is no longer read
    for (int i = threadIdx.x; i < count * KV_LORA; i += kThreads)
      latentChunk[i] = latent[static_cast<long long>(first) * KV_LORA + i];
    for (int i = threadIdx.x; i < count * ROPE; i += kThreads)
      ropeChunk[i] = ropeKey[static_cast<long long>(first) * ROPE + i];
    __syncthreads();

    // Scores of the chunk, every lane holding all of them.
    float scores[CHUNK];
    float chunkMaximum = -__int_as_float(0x7f800000);
#pragma unroll
    for (int p = 0; p < CHUNK; ++p) {
      float dot = 0.0f;
      if (p < count) {
#pragma unroll
        for (int k = 0; k < kLatentPerLane; ++k)
          if (lane + 32 * k < KV_LORA)
            dot += q[k] * latentChunk[p * KV_LORA + lane + 32 * k];
#pragma unroll
        for (int k = 0; k < kRopePerLane; ++k)
          if (lane + 32 * k < ROPE)
            dot += qr[k] * ropeChunk[p * ROPE + lane + 32 * k];
      }
      dot = kt::warpSum(dot) * (SCALE);
      scores[p] = dot;
      if (p < count)
        chunkMaximum = fmaxf(chunkMaximum, dot);
    }
    // Rescale what came before to the new maximum, then add this chunk.
    const float newMaximum = fmaxf(maximum, chunkMaximum);
    const float correction = expf(maximum - newMaximum);
    total *= correction;
#pragma unroll
    for (int k = 0; k < kLatentPerLane; ++k)
      sum[k] *= correction;
#pragma unroll
    for (int p = 0; p < CHUNK; ++p) {
      if (p >= count)
        break;
      const float e = expf(scores[p] - newMaximum);
      total += e;
#pragma unroll
      for (int k = 0; k < kLatentPerLane; ++k)
        if (lane + 32 * k < KV_LORA)
          sum[k] += e * latentChunk[p * KV_LORA + lane + 32 * k];
    }
    maximum = newMaximum;
  }
  const float inverse = 1.0f / total;
#pragma unroll
  for (int k = 0; k < kLatentPerLane; ++k)
    if (lane + 32 * k < KV_LORA)
      context[slot * KV_LORA + lane + 32 * k] = sum[k] * inverse;
}
