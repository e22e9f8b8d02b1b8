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
//   heads (HEADS_PER_WARP a warp, queries in registers: each latent value a
//   warp reads from shared memory serves them all; with one head a warp,
//   reading the stages twice per head bounded the kernel) and stages its chunk's rows in
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
//   HEADS_PER_BLOCK  heads per block of mla_decode_split
//   HEADS_PER_WARP   heads per warp of mla_decode_split (dividing HEADS_PER_BLOCK)
//   BLOCK_THREADS    threads per block of mla_combine, a multiple of 32
#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(HEADS_PER_BLOCK) ||         \
    !defined(HEADS_PER_WARP) || !defined(BLOCK_THREADS)
#error                                                                                             \
    "mla_decode_split needs KV_LORA, ROPE, SCALE, HEADS_PER_BLOCK, HEADS_PER_WARP and BLOCK_THREADS"
#endif
#include "mla_attend.cuh"
#include "mla_pieces.cuh"

static_assert(BLOCK_THREADS % 32 == 0, "whole warps");
static_assert(HEADS_PER_BLOCK % HEADS_PER_WARP == 0, "whole warps of heads");
constexpr int kPartial = KV_LORA + 2; // m, l, then the weighted latent sum
constexpr int kSplitThreads = HEADS_PER_BLOCK / HEADS_PER_WARP * 32;
// Two blocks an SM: at a few hundred positions a token has about as many
// blocks as the GPU has SMs (8 groups of 16 heads x 18 pieces of 32
// positions at 576).
constexpr int kSplitBlocksPerSm = 2;

extern "C" __global__ void __launch_bounds__(kSplitThreads, kSplitBlocksPerSm)
    mla_decode_split(const float *__restrict__ qLatent, const float *__restrict__ qRope,
                     int qRopeHeadStride, const float *__restrict__ latent,
                     const float *__restrict__ ropeKey, const int *__restrict__ position,
                     int mmaFrom, float *__restrict__ partial) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ __align__(16) float latentStage[kt::mla::kStage * KV_LORA];
  __shared__ __align__(16) float ropeStage[kt::mla::kStage * ROPE];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int firstHead = blockIdx.x * HEADS_PER_BLOCK + warp * HEADS_PER_WARP, chunk = blockIdx.y;
  const int positions = position[0] + 1; // the token sees itself and everything before
  const int size = kt::mla::decodeChunk(positions, gridDim.y), first = chunk * size;
  if (positions >= mmaFrom || first >= positions)
    return; // the whole block: no thread of it reaches a barrier (from
            // mmaFrom positions on, mla_decode_mma.cu scores the chunks)

  kt::mla::WarpHeads<HEADS_PER_WARP> w;
#pragma unroll
  for (int h = 0; h < HEADS_PER_WARP; ++h)
    kt::mla::loadQuery(w, h, qLatent + static_cast<long long>(firstHead + h) * KV_LORA,
                       qRope + static_cast<long long>(firstHead + h) * qRopeHeadStride, lane);
  kt::mla::attend<kSplitThreads>(w, latent, ropeKey, first, min(positions, first + size),
                                 latentStage, ropeStage, lane);

#pragma unroll
  for (int h = 0; h < HEADS_PER_WARP; ++h) {
    float *out = partial + (static_cast<long long>(firstHead + h) * gridDim.y + chunk) * kPartial;
    if (lane == 0) {
      out[0] = w.maximum[h];
      out[1] = w.total[h];
    }
#pragma unroll
    for (int k = 0; k < kt::mla::kLatentPerLane; ++k)
      if (lane + 32 * k < KV_LORA)
        out[2 + lane + 32 * k] = w.sum[h][k];
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
mla_combine(const float *__restrict__ partial, const int *__restrict__ position, int chunks,
            float *__restrict__ context) {
  KT_WAIT_FOR_PRIOR_GRID();
  // Each piece's factor e^(m_c - M), computed once (a thread a piece) for
  // all the latent values: at most BLOCK_THREADS pieces (the executor's
  // kMlaDecodePieces).
  __shared__ float factor[BLOCK_THREADS];
  __shared__ float scratch[BLOCK_THREADS / 32];
  const int head = blockIdx.x;
  const int positions = position[0] + 1, size = kt::mla::decodeChunk(positions, chunks);
  const int used = min((positions + size - 1) / size, BLOCK_THREADS);
  const float *parts = partial + static_cast<long long>(head) * chunks * kPartial;
  const int c = threadIdx.x;
  const float pieceMaximum = c < used ? parts[c * kPartial] : -__int_as_float(0x7f800000);
  const float pieceTotal = c < used ? parts[c * kPartial + 1] : 0.0f;
  const float maximum = kt::blockMax<BLOCK_THREADS>(pieceMaximum, scratch);
  const float e = c < used ? expf(pieceMaximum - maximum) : 0.0f;
  factor[c] = e;
  const float inverse = 1.0f / kt::blockSum<BLOCK_THREADS>(e * pieceTotal, scratch);
  // A thread's latent values side by side in one walk over the pieces, so
  // that their loads are in flight together (each value's sum in piece
  // order, as before).
  constexpr int kValuesPerThread = (KV_LORA + BLOCK_THREADS - 1) / BLOCK_THREADS;
  float values[kValuesPerThread];
#pragma unroll
  for (int v = 0; v < kValuesPerThread; ++v)
    values[v] = 0.0f;
#pragma unroll 8
  for (int p = 0; p < used; ++p) {
    const float f = factor[p];
    const float *piece = parts + p * kPartial + 2;
#pragma unroll
    for (int v = 0; v < kValuesPerThread; ++v) {
      const int i = threadIdx.x + v * BLOCK_THREADS;
      if (i < KV_LORA)
        values[v] += f * piece[i];
    }
  }
#pragma unroll
  for (int v = 0; v < kValuesPerThread; ++v) {
    const int i = threadIdx.x + v * BLOCK_THREADS;
    if (i < KV_LORA)
      context[static_cast<long long>(head) * KV_LORA + i] = values[v] * inverse;
  }
}
