// The MLA attention loop shared by mla_prefill.cu and mla_decode_split.cu:
// one warp holds one head's absorbed query (latent and rope parts spread over
// the lanes) and walks a range of cached positions in stages of kMlaStage
// rows, which the whole block loads into shared memory once for all its heads
// (they read the same latent rows), keeping an online softmax: the running
// maximum score, the sum of exp(score - maximum) and the weighted latent sum.
// The including kernel defines KV_LORA, ROPE and SCALE.
#pragma once

#include "common.cuh"

namespace kt::mla {

constexpr int kStage = 16;
constexpr int kLatentPerLane = (KV_LORA + 31) / 32;
constexpr int kRopePerLane = (ROPE + 31) / 32;

struct WarpState {
  float q[kLatentPerLane], qr[kRopePerLane]; // the head's query
  float sum[kLatentPerLane];                 // sum of exp(score - maximum) * latent
  float maximum, total;                      // running maximum and sum of exp
};

__device__ __forceinline__ void loadQuery(WarpState &w, const float *qLatentHead,
                                          const float *qRopeHead, int lane) {
#pragma unroll
  for (int k = 0; k < kLatentPerLane; ++k) {
    const int i = lane + 32 * k;
    w.q[k] = i < KV_LORA ? qLatentHead[i] : 0.0f;
    w.sum[k] = 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kRopePerLane; ++k) {
    const int i = lane + 32 * k;
    w.qr[k] = i < ROPE ? qRopeHead[i] : 0.0f;
  }
  w.maximum = -__int_as_float(0x7f800000);
  w.total = 0.0f;
}

// Positions [first, end) of the cache, by a block of kThreads threads whose
// warps each hold a head. Every thread of the block must call it.
template <int kThreads>
__device__ __forceinline__ void attend(WarpState &w, const float *__restrict__ latent,
                                       const float *__restrict__ ropeKey, int first, int end,
                                       float *latentStage, float *ropeStage, int lane) {
  for (int stage = first; stage < end; stage += kStage) {
    const int count = min(kStage, end - stage);
    __syncthreads(); // the previous stage is no longer read
    for (int i = threadIdx.x; i < count * KV_LORA; i += kThreads)
      latentStage[i] = latent[static_cast<long long>(stage) * KV_LORA + i];
    for (int i = threadIdx.x; i < count * ROPE; i += kThreads)
      ropeStage[i] = ropeKey[static_cast<long long>(stage) * ROPE + i];
    __syncthreads();
    // The stage's scores, every lane holding all of them.
    float scores[kStage];
    float stageMaximum = -__int_as_float(0x7f800000);
#pragma unroll
    for (int p = 0; p < kStage; ++p) {
      float dot = 0.0f;
      if (p < count) {
#pragma unroll
        for (int k = 0; k < kLatentPerLane; ++k)
          if (lane + 32 * k < KV_LORA)
            dot += w.q[k] * latentStage[p * KV_LORA + lane + 32 * k];
#pragma unroll
        for (int k = 0; k < kRopePerLane; ++k)
          if (lane + 32 * k < ROPE)
            dot += w.qr[k] * ropeStage[p * ROPE + lane + 32 * k];
      }
      dot = warpSum(dot) * (SCALE);
      scores[p] = dot;
      if (p < count)
        stageMaximum = fmaxf(stageMaximum, dot);
    }
    // Rescale what came before to the new maximum, then add this stage.
    const float newMaximum = fmaxf(w.maximum, stageMaximum);
    const float correction = expf(w.maximum - newMaximum);
    w.total *= correction;
#pragma unroll
    for (int k = 0; k < kLatentPerLane; ++k)
      w.sum[k] *= correction;
#pragma unroll
    for (int p = 0; p < kStage; ++p) {
      if (p >= count)
        break;
      const float e = expf(scores[p] - newMaximum);
      w.total += e;
#pragma unroll
      for (int k = 0; k < kLatentPerLane; ++k)
        if (lane + 32 * k < KV_LORA)
          w.sum[k] += e * latentStage[p * KV_LORA + lane + 32 * k];
    }
    w.maximum = newMaximum;
  }
}

} // namespace kt::mla
