// Decode attention of MLA over the latent cache, split over positions
// (flash-decoding): the absorbed core of mla_decode.cu for one token, with
// the cached positions cut into chunks of CHUNK that separate blocks score
// in parallel; mla_combine then merges the chunks' softmax pieces. The
// token's position comes from device memory and the grid covers the whole
// cache (blocks past the last position exit), so the launch is the same at
// every step and a decode graph replays it.
//
// mla_decode_split: grid (heads, chunks of the cache). Block (h, c) writes
//   partial[(h * chunks + c)] = {max score m, sum of exp(score - m),
//   sum of exp(score - m) * latent[p]  (KV_LORA values)}.
// mla_combine: grid (heads). context[h] = sum_c e^(m_c - M) ctx_c /
//   sum_c e^(m_c - M) l_c over the chunks that hold positions.
// Specialization defines:
//   KV_LORA        latent width (kv_lora_rank)
//   ROPE           rope key width (qk_rope_head_dim)
//   SCALE          softmax scale (a float literal)
//   CHUNK          positions per block
//   BLOCK_THREADS  threads per block, a multiple of 32
#include "common.cuh"

#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(CHUNK) || \
    !defined(BLOCK_THREADS)
#error "mla_decode_split needs KV_LORA, ROPE, SCALE, CHUNK and BLOCK_THREADS"
#endif
static_assert(BLOCK_THREADS % 32 == 0, "whole warps");
constexpr int kWarps = BLOCK_THREADS / 32;
constexpr int kPartial = KV_LORA + 2; // m, l, then the weighted latent sum

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
mla_decode_split(const float *__restrict__ qLatent, const float *__restrict__ qRope,
                 int qRopeHeadStride, const float *__restrict__ latent,
                 const float *__restrict__ ropeKey, const int *__restrict__ position,
                 float *__restrict__ partial) {
  __shared__ float scores[CHUNK];
  __shared__ float reduction[kWarps];
  const int head = blockIdx.x, chunk = blockIdx.y;
  const int positions = position[0] + 1; // the token sees itself and everything before
  const int first = chunk * CHUNK;
  if (first >= positions)
    return;
  const int count = min(CHUNK, positions - first);
  const float *q = qLatent + static_cast<long long>(head) * KV_LORA;
  const float *qr = qRope + static_cast<long long>(head) * qRopeHeadStride;

  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int p = warp; p < count; p += kWarps) {
    const float *l = latent + static_cast<long long>(first + p) * KV_LORA;
    const float *r = ropeKey + static_cast<long long>(first + p) * ROPE;
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

  float maximum = -__int_as_float(0x7f800000);
  for (int p = threadIdx.x; p < count; p += BLOCK_THREADS)
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
  for (int p = threadIdx.x; p < count; p += BLOCK_THREADS) {
    const float e = expf(scores[p] - maximum);
    scores[p] = e;
    sum += e;
  }
  sum = kt::blockSum<BLOCK_THREADS>(sum, reduction);

  float *out = partial + (static_cast<long long>(head) * gridDim.y + chunk) * kPartial;
  if (threadIdx.x == 0) {
    out[0] = maximum;
    out[1] = sum;
  }
  for (int i = threadIdx.x; i < KV_LORA; i += BLOCK_THREADS) {
    float value = 0.0f;
    for (int p = 0; p < count; ++p)
      value += scores[p] * latent[static_cast<long long>(first + p) * KV_LORA + i];
    out[2 + i] = value;
  }
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
mla_combine(const float *__restrict__ partial, const int *__restrict__ position, int chunks,
            float *__restrict__ context) {
  const int head = blockIdx.x;
  const int used = (position[0] + 1 + CHUNK - 1) / CHUNK;
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
