// The MLA attention loop shared by mla_prefill.cu and mla_decode_split.cu:
// one warp holds the absorbed queries of one or more heads (latent and rope
// parts spread over the lanes) and walks a range of cached positions in
// stages of kStage rows, which the whole block loads into shared memory
// (16-byte aligned) once for all its heads (they read the same latent rows),
// keeping an online softmax per head: the running maximum score, the sum of
// exp(score - maximum) and the weighted latent sum.
// The including kernel defines KV_LORA, ROPE and SCALE.
#pragma once

#include "common.cuh"

namespace kt::mla {

constexpr int kStage = 16;
constexpr int kLatentPerLane = (KV_LORA + 31) / 32;
constexpr int kRopePerLane = (ROPE + 31) / 32;

// The state of kHeads heads one warp holds (decode gives a warp two heads,
// so that each latent value read from shared memory serves both).
template <int kHeads> struct WarpHeads {
  float q[kHeads][kLatentPerLane], qr[kHeads][kRopePerLane]; // the queries
  float sum[kHeads][kLatentPerLane];                         // sum of exp(score - maximum) * latent
  float maximum[kHeads], total[kHeads];                      // running maximum and sum of exp
};
using WarpState = WarpHeads<1>;

// Head `h` of the warp's heads: its query, and an empty softmax.
template <int kHeads>
__device__ __forceinline__ void loadQuery(WarpHeads<kHeads> &w, int h, const float *qLatentHead,
                                          const float *qRopeHead, int lane) {
#pragma unroll
  for (int k = 0; k < kLatentPerLane; ++k) {
    const int i = lane + 32 * k;
    w.q[h][k] = i < KV_LORA ? qLatentHead[i] : 0.0f;
    w.sum[h][k] = 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kRopePerLane; ++k) {
    const int i = lane + 32 * k;
    w.qr[h][k] = i < ROPE ? qRopeHead[i] : 0.0f;
  }
  w.maximum[h] = -__int_as_float(0x7f800000);
  w.total[h] = 0.0f;
}

// Positions [first, end) of the cache, by a block of kThreads threads whose
// warps each hold kHeads heads. Every thread of the block must call it.
template <int kThreads, int kHeads>
__device__ __forceinline__ void attend(WarpHeads<kHeads> &w, const float *__restrict__ latent,
                                       const float *__restrict__ ropeKey, int first, int end,
                                       float *latentStage, float *ropeStage, int lane) {
  for (int stage = first; stage < end; stage += kStage) {
    const int count = min(kStage, end - stage);
    __syncthreads(); // the previous stage is no longer read
    if (count == kStage && KV_LORA % 4 == 0 && ROPE % 4 == 0) {
      // A whole stage: 16-byte loads, a constant number a thread, all in
      // flight together.
      const float4 *latentFrom =
          reinterpret_cast<const float4 *>(latent + static_cast<long long>(stage) * KV_LORA);
      const float4 *ropeFrom =
          reinterpret_cast<const float4 *>(ropeKey + static_cast<long long>(stage) * ROPE);
#pragma unroll
      for (int i = threadIdx.x; i < kStage * KV_LORA / 4; i += kThreads)
        reinterpret_cast<float4 *>(latentStage)[i] = latentFrom[i];
#pragma unroll
      for (int i = threadIdx.x; i < kStage * ROPE / 4; i += kThreads)
        reinterpret_cast<float4 *>(ropeStage)[i] = ropeFrom[i];
    } else {
      for (int i = threadIdx.x; i < count * KV_LORA; i += kThreads)
        latentStage[i] = latent[static_cast<long long>(stage) * KV_LORA + i];
      for (int i = threadIdx.x; i < count * ROPE; i += kThreads)
        ropeStage[i] = ropeKey[static_cast<long long>(stage) * ROPE + i];
    }
    __syncthreads();
    // The stage's scores, every lane holding all of them.
    float scores[kHeads][kStage];
    float stageMaximum[kHeads];
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
      stageMaximum[h] = -__int_as_float(0x7f800000);
#pragma unroll
    for (int p = 0; p < kStage; ++p) {
      float dot[kHeads];
#pragma unroll
      for (int h = 0; h < kHeads; ++h)
        dot[h] = 0.0f;
      if (p < count) {
#pragma unroll
        for (int k = 0; k < kLatentPerLane; ++k)
          if (lane + 32 * k < KV_LORA) {
            const float value = latentStage[p * KV_LORA + lane + 32 * k];
#pragma unroll
            for (int h = 0; h < kHeads; ++h)
              dot[h] += w.q[h][k] * value;
          }
#pragma unroll
        for (int k = 0; k < kRopePerLane; ++k)
          if (lane + 32 * k < ROPE) {
            const float value = ropeStage[p * ROPE + lane + 32 * k];
#pragma unroll
            for (int h = 0; h < kHeads; ++h)
              dot[h] += w.qr[h][k] * value;
          }
      }
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        scores[h][p] = warpSum(dot[h]) * (SCALE);
        if (p < count)
          stageMaximum[h] = fmaxf(stageMaximum[h], scores[h][p]);
      }
    }
    // Rescale what came before to the new maximum, then add this stage.
    float newMaximum[kHeads];
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      newMaximum[h] = fmaxf(w.maximum[h], stageMaximum[h]);
      const float correction = expf(w.maximum[h] - newMaximum[h]);
      w.total[h] *= correction;
#pragma unroll
      for (int k = 0; k < kLatentPerLane; ++k)
        w.sum[h][k] *= correction;
    }
#pragma unroll
    for (int p = 0; p < kStage; ++p) {
      if (p >= count)
        break;
      float e[kHeads];
#pragma unroll
      for (int h = 0; h < kHeads; ++h) {
        e[h] = expf(scores[h][p] - newMaximum[h]);
        w.total[h] += e[h];
      }
#pragma unroll
      for (int k = 0; k < kLatentPerLane; ++k)
        if (lane + 32 * k < KV_LORA) {
          const float value = latentStage[p * KV_LORA + lane + 32 * k];
#pragma unroll
          for (int h = 0; h < kHeads; ++h)
            w.sum[h][k] += e[h] * value;
        }
    }
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
      w.maximum[h] = newMaximum[h];
  }
}

} // namespace kt::mla
