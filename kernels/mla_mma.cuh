// The tensor-core core of MLA attention over the latent cache, shared by
// mla_prefill_mma.cu (a block's rows are (token, head) pairs) and
// mla_decode_mma.cu (one token's heads over a chunk of the cache): bf16
// mma.sync with f32 sums, positions staged 32 at a time in shared memory as
// bf16 for all the block's rows, an online softmax per row in registers.
//   score[p] = (<qLatent, latent[p]> + <qRope, ropeKey[p]>) * SCALE
//   context = softmax(score) . latent
// A block has ROW_GROUPS groups of 16 rows (4 unless the including kernel
// says otherwise) and two warps per group: warp w owns rows
// 16 (w % ROW_GROUPS) .. +16 and latent dimensions
// (w / ROW_GROUPS) * KV_LORA / 2 .. +KV_LORA / 2 of the context; both warps
// of a row group compute its scores (the price of keeping each warp's
// softmax and products in registers, with no exchange through shared
// memory).
// The including kernel defines KV_LORA, ROPE, SCALE and HEADS.
#pragma once

#include "common.cuh"

#ifndef ROW_GROUPS
#define ROW_GROUPS 4
#endif

namespace kt::mla_mma {

constexpr int kDims = KV_LORA + ROPE;
constexpr int kRows = 16 * ROW_GROUPS, kPositions = 32, kThreads = 64 * ROW_GROUPS;
constexpr int kPitch = kDims + 8; // bf16 per shared row: fragment loads hit 32 banks
constexpr int kHalf = KV_LORA / 2, kDimTiles = kHalf / 8;
static_assert(kDims % 16 == 0 && KV_LORA % 16 == 0, "whole k16 steps and n8 tiles");
static_assert(ROPE % 4 == 0 && kPitch % 4 == 0, "loads and stores of 4 values");

#define KT_INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ kt::u32 pack(float low, float high) {
  return kt::toBf16(low) | kt::toBf16(high) << 16;
}
__device__ __forceinline__ kt::u32 pair(const kt::u16 *p) {
  return *reinterpret_cast<const kt::u32 *>(p);
}
__device__ __forceinline__ void mma(float (&c)[4], const kt::u32 (&a)[4], kt::u32 b0, kt::u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
               : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Maximum and sum over the 4 lanes that hold one row of a fragment.
__device__ __forceinline__ float quadMax(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quadSum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Rows r0 .. r0 + kRows - 1 of the queries to bf16 in qTile, 4 values per load:
// row = token * HEADS + head (rows past `rows` repeat the last one).
__device__ __forceinline__ void loadQueries(kt::u16 *qTile, const float *qLatent,
                                            const float *qRope, int qRopeHeadStride,
                                            int qRopeTokenStride, int r0, int rows) {
  for (int i = threadIdx.x; i < kRows * kDims / 4; i += kThreads) {
    const int r = i / (kDims / 4), d = 4 * (i % (kDims / 4)), row = min(r0 + r, rows - 1);
    const int token = row / HEADS, head = row % HEADS;
    const float4 v =
        d < KV_LORA
            ? *reinterpret_cast<const float4 *>(qLatent + static_cast<long long>(row) * KV_LORA + d)
            : *reinterpret_cast<const float4 *>(
                  qRope + static_cast<long long>(token) * qRopeTokenStride +
                  static_cast<long long>(head) * qRopeHeadStride + d - KV_LORA);
    *reinterpret_cast<uint2 *>(&qTile[r * kPitch + d]) = make_uint2(pack(v.x, v.y), pack(v.z, v.w));
  }
}

// A thread's share of its two rows (fragment rows lane / 4 and + 8): the
// unnormalized context, running maxima and sums.
struct RowState {
  float out[kDimTiles][4];
  float maxA, maxB, sumA, sumB;
  __device__ __forceinline__ void clear() {
#pragma unroll
    for (int t = 0; t < kDimTiles; ++t)
      out[t][0] = out[t][1] = out[t][2] = out[t][3] = 0.0f;
    maxA = maxB = -KT_INFINITY;
    sumA = sumB = 0.0f;
  }
};

// Values (bf16) of dynamic shared memory: the query rows and 32 positions.
constexpr int kSharedValues = (kRows + kPositions) * kPitch;

// Adds positions [begin, end) of the cache to the state; row A sees those
// below visibleA, row B those below visibleB.
__device__ __forceinline__ void attend(RowState &s, const kt::u16 *qTile, kt::u16 *kTile,
                                       const float *latent, const float *ropeKey, int begin,
                                       int end, int visibleA, int visibleB) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rowGroup = warp % ROW_GROUPS, dimBase = (warp / ROW_GROUPS) * kHalf;
  const int qRow = rowGroup * 16 + lane / 4, kColumn = (lane % 4) * 2;
  for (int p0 = begin; p0 < end; p0 += kPositions) {
    __syncthreads(); // the previous tile is consumed (and the queries are in)
    for (int i = threadIdx.x; i < kPositions * kDims / 4; i += kThreads) {
      const int p = i / (kDims / 4), d = 4 * (i % (kDims / 4)), position = p0 + p;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (position < end)
        v = d < KV_LORA ? *reinterpret_cast<const float4 *>(
                              latent + static_cast<long long>(position) * KV_LORA + d)
                        : *reinterpret_cast<const float4 *>(
                              ropeKey + static_cast<long long>(position) * ROPE + d - KV_LORA);
      *reinterpret_cast<uint2 *>(&kTile[p * kPitch + d]) =
          make_uint2(pack(v.x, v.y), pack(v.z, v.w));
    }
    __syncthreads();
    // Scores of the warp's 16 rows against the tile's 32 positions.
    float score[4][4] = {};
#pragma unroll 4
    for (int k0 = 0; k0 < kDims; k0 += 16) {
      const int k = k0 + kColumn;
      const kt::u32 a[4] = {pair(&qTile[qRow * kPitch + k]), pair(&qTile[(qRow + 8) * kPitch + k]),
                            pair(&qTile[qRow * kPitch + k + 8]),
                            pair(&qTile[(qRow + 8) * kPitch + k + 8])};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int n = 8 * j + lane / 4;
        mma(score[j], a, pair(&kTile[n * kPitch + k]), pair(&kTile[n * kPitch + k + 8]));
      }
    }
    // Scale and mask, then the online softmax of each row.
    float tileMaxA = -KT_INFINITY, tileMaxB = -KT_INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const int position = p0 + 8 * j + kColumn + (v & 1);
        const bool seen = position < (v < 2 ? visibleA : visibleB);
        score[j][v] = seen ? score[j][v] * SCALE : -KT_INFINITY;
        if (v < 2)
          tileMaxA = fmaxf(tileMaxA, score[j][v]);
        else
          tileMaxB = fmaxf(tileMaxB, score[j][v]);
      }
    const float newMaxA = fmaxf(s.maxA, quadMax(tileMaxA));
    const float newMaxB = fmaxf(s.maxB, quadMax(tileMaxB));
    // A row that sees nothing of this tile keeps its state (-inf - -inf).
    const float factorA = newMaxA == -KT_INFINITY ? 1.0f : __expf(s.maxA - newMaxA);
    const float factorB = newMaxB == -KT_INFINITY ? 1.0f : __expf(s.maxB - newMaxB);
    float rowSumA = 0.0f, rowSumB = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        const float m = v < 2 ? newMaxA : newMaxB;
        score[j][v] = score[j][v] == -KT_INFINITY ? 0.0f : __expf(score[j][v] - m);
        if (v < 2)
          rowSumA += score[j][v];
        else
          rowSumB += score[j][v];
      }
    s.sumA = s.sumA * factorA + quadSum(rowSumA);
    s.sumB = s.sumB * factorB + quadSum(rowSumB);
    s.maxA = newMaxA;
    s.maxB = newMaxB;
#pragma unroll
    for (int t = 0; t < kDimTiles; ++t) {
      s.out[t][0] *= factorA;
      s.out[t][1] *= factorA;
      s.out[t][2] *= factorB;
      s.out[t][3] *= factorB;
    }
    // context += P . latent: the scores' fragments are the A operand.
#pragma unroll
    for (int step = 0; step < kPositions / 16; ++step) {
      const kt::u32 a[4] = {pack(score[2 * step][0], score[2 * step][1]),
                            pack(score[2 * step][2], score[2 * step][3]),
                            pack(score[2 * step + 1][0], score[2 * step + 1][1]),
                            pack(score[2 * step + 1][2], score[2 * step + 1][3])};
      const int k = 16 * step + kColumn;
#pragma unroll
      for (int t = 0; t < kDimTiles; ++t) {
        const int n = dimBase + 8 * t + lane / 4;
        const kt::u32 b0 = kTile[k * kPitch + n] | kt::u32(kTile[(k + 1) * kPitch + n]) << 16;
        const kt::u32 b1 = kTile[(k + 8) * kPitch + n] | kt::u32(kTile[(k + 9) * kPitch + n]) << 16;
        mma(s.out[t], a, b0, b1);
      }
    }
  }
}

} // namespace kt::mla_mma
