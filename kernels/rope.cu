// Rotary position embedding as DeepSeek-V3 applies it (runtime/cpu/Rope.h,
// its reference): for every token and head, the DIMS values at ROPE_OFFSET
// of the head are rotated in pairs (x[2i], x[2i+1]) by angle position x
// inverse_frequency[i] and stored de-interleaved (x'[i], x'[i + DIMS/2]).
// The angle is rounded to float as the reference computes it; its cosine and
// sine are taken in double and rounded, then scaled by COS_SIN_SCALE.
// One thread per pair; blocks of BLOCK_THREADS threads over tokens x heads x
// pairs. The inverse frequencies (YaRN-blended on the host) come as an array.
// Specialization defines:
//   DIMS          rotated values per head (qk_rope_head_dim, even)
//   HEADS         heads per token
//   HEAD_STRIDE   floats from one head to the next
//   ROPE_OFFSET   first rotated value within a head
//   COS_SIN_SCALE a float literal
//   BLOCK_THREADS threads per block
#include "common.cuh"

#if !defined(DIMS) || !defined(HEADS) || !defined(HEAD_STRIDE) || !defined(ROPE_OFFSET) || \
    !defined(COS_SIN_SCALE) || !defined(BLOCK_THREADS)
#error "rope needs DIMS, HEADS, HEAD_STRIDE, ROPE_OFFSET, COS_SIN_SCALE and BLOCK_THREADS"
#endif
static_assert(DIMS % 2 == 0 && ROPE_OFFSET + DIMS <= HEAD_STRIDE, "rope layout");
constexpr int kHalf = DIMS / 2;
// Whole heads per block: a head's pairs are read before any is written.
static_assert(BLOCK_THREADS % kHalf == 0, "whole heads per block");

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
rope(float *__restrict__ x, const int *__restrict__ positions,
     const float *__restrict__ inverseFrequencies, int tokens) {
  KT_WAIT_FOR_PRIOR_GRID();
  const long long item = static_cast<long long>(blockIdx.x) * BLOCK_THREADS + threadIdx.x;
  const int pair = static_cast<int>(item % kHalf);
  const long long headIndex = item / kHalf; // token * HEADS + head
  const bool active = headIndex < static_cast<long long>(tokens) * HEADS;
  float *values = x + headIndex * HEAD_STRIDE + ROPE_OFFSET;
  float even = 0, odd = 0, c = 0, s = 0;
  if (active) {
    const int token = static_cast<int>(headIndex / HEADS);
    const float angle = inverseFrequencies[pair] * static_cast<float>(positions[token]);
    c = static_cast<float>(cos(static_cast<double>(angle))) * (COS_SIN_SCALE);
    s = static_cast<float>(sin(static_cast<double>(angle))) * (COS_SIN_SCALE);
    even = values[2 * pair];
    odd = values[2 * pair + 1];
  }
  // Every pair of the head is read before any is written (the output order
  // differs from the input order).
  __syncthreads();
  if (active) {
    values[pair] = even * c - odd * s;
    values[pair + kHalf] = odd * c + even * s;
  }
}
