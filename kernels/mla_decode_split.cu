// Decode attention of MLA over the latent cache, split over positions
// (flash-decoding): the absorbed core of mla_prefill.cu for one token, with
// the positions it sees cut into as many chunks as the grid has pieces
// (mla_pieces.cuh), which separate blocks score in parallel; mla_combine
// then merges the chunks' softmax pieces. The token's position comes from
// device memory and the chunks follow it (blocks past the last position
// exit), so the launch is the same at every step and a decode graph replays
// it. Tokens that see `mmaFrom` positions or more are left to
// mla_decode_mma.cu (tensor cores).
//
// mla_decode_split: grid (heads / HEADS_PER_BLOCK, pieces).
//   All heads read the same latent rows, so a block takes HEADS_PER_BLOCK
//   heads (a warp each, queries in registers) and stages its chunk's rows in
//   shared memory kStage positions at a time for all of them (as
//   mla_prefill.cu does), keeping an online softmax. Block (g, c) writes, for
//   each of its heads h, partial[(h * chunks + c)] = {max score m, sum of
//   exp(score - m), sum of exp(score - m) * latent[p] (KV_LORA values)}.
// mla_combine: grid (heads), `chunks` the pieces. context[h] = sum_c
//   e^(m_c - M) ctx_c / sum_c e^(m_c - M) l_c over the chunks that hold
//   positions.
// Specialization defines:
//   KV_LORA          latent width (kv_lora_rank)
//   ROPE             rope key width (qk_rope_head_dim)
//   SCALE            softmax scale (a float literal)
//   HEADS_PER_BLOCK  heads (warps) per block of mla_decode_split
//   BLOCK_THREADS    threads per block of mla_combine, a multiple of 32
#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(HEADS_PER_BLOCK) ||         \
    !defined(BLOCK_THREADS)
#error "mla_decode_split needs KV_LORA, ROPE, SCALE, HEADS_PER_BLOCK and BLOCK_THREADS"
#endif
#include "mla_attend.cuh"
#include "mla_pieces.cuh"

static_assert(BLOCK_THREADS % 32 == 0, "whole warps");
constexpr int kPartial = KV_LORA + 2; // m, l, then the weighted latent sum
constexpr int kSplitThreads = HEADS_PER_BLOCK * 32;

extern "C" __global__ void __launch_bounds__(kSplitThreads)
    mla_decode_split(const float *__restrict__ qLatent, const float *__restrict__ qRope,
                     int qRopeHeadStride, const float *__restrict__ latent,
                     const float *__restrict__ ropeKey, const int *__restrict__ position,
                     int mmaFrom, float *__restrict__ partial) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ float latentStage[kt::mla::kStage * KV_LORA];
  __shared__ float ropeStage[kt::mla::kStage * ROPE];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int head = blockIdx.x * HEADS_PER_BLOCK + warp, chunk = blockIdx.y;
  const int positions = position[0] + 1; // the token sees itself and everything before
  const int size = kt::mla::decodeChunk(positions, gridDim.y), first = chunk * size;
  if (positions >= mmaFrom || first >= positions)
    return; // the whole block: no thread of it reaches a barrier (from
            // mmaFrom positions on, mla_decode_mma.cu scores the chunks)

  kt::mla::WarpState w;
  kt::mla::loadQuery(w, qLatent + static_cast<long long>(head) * KV_LORA,
                     qRope + static_cast<long long>(head) * qRopeHeadStride, lane);
  kt::mla::attend<kSplitThreads>(w, latent, ropeKey, first, min(positions, first + size),
                                 latentStage, ropeStage, lane);

  float *out = partial + (static_cast<long long>(head) * gridDim.y + chunk) * kPartial;
  if (lane == 0) {
    out[0] = w.maximum;
    out[1] = w.total;
  }
#pragma unroll
  for (int k = 0; k < kt::mla::kLatentPerLane; ++k)
    if (lane + 32 * k < KV_LORA)
      out[2 + lane + 32 * k] = w.sum[k];
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
mla_combine(const float *__restrict__ partial, const int *__restrict__ position, int chunks,
            float *__restrict__ context) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int head = blockIdx.x;
  const int positions = position[0] + 1, size = kt::mla::decodeChunk(positions, chunks);
  const int used = (positions + size - 1) / size;
  const float *parts = partial + static_cast<long long>(head) * chunks * kPartial;
  float maximum = -__int_as_float(0x7f800000);
  for (int c = 0; c < used; ++c)
    maximum = fmaxf(maximum, parts[c * kPartial]);
  float total = 0.0f;
  for (int c = 0; c < used; ++c)
    total += expf(parts[c * kPartial] - maximum) * parts[c * kPartial + 1];
  const float inverse = 1.0f / total;
  for (int i = threadIdx.x; i < KV_LORA; i += BLOCK_THREADS) {
    float value = 0.0f;
    for (int c = 0; c < used; ++c)
      value += expf(parts[c * kPartial] - maximum) * parts[c * kPartial + 2 + i];
    context[static_cast<long long>(head) * KV_LORA + i] = value * inverse;
  }
}
