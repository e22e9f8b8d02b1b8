// MLA prefill attention on tensor cores (sm_80+): mla_prefill.cu's
// absorbed core, flash-style, with bf16 mma.sync and f32 sums. The rows are
// the (token, head) pairs of the step, token-major; all heads attend over
// the same latent rows, so a block takes 64 rows and walks the cache in
// tiles of 32 positions, staged once in shared memory as bf16 for all of
// them:
//   score[p] = (<qLatent, latent[p]> + <qRope, ropeKey[p]>) * SCALE, masked
//   past the row's token (firstPositions + token positions are visible);
//   context = softmax(score) . latent  (online: running maximum and sum).
// 8 warps: warp w owns rows 16 (w % 4) .. +16 and latent dimensions
// (w / 4) * KV_LORA / 2 .. +KV_LORA / 2 of the context; both warps of a row
// group compute its scores (the price of keeping each warp's softmax and
// products in registers, with no exchange through shared memory).
// bf16 rounds q, the cache and the probabilities to 8 mantissa bits: about
// 1e-3 relative error, against 1e-6 for mla_prefill.
// Grid: ceil(tokens * HEADS / 64) blocks of 256 threads; dynamic shared
// memory mlaPrefillMmaSharedBytes(). Specialization defines:
//   KV_LORA   latent width, a multiple of 16
//   ROPE      rope key width; KV_LORA + ROPE a multiple of 16
//   SCALE     softmax scale (a float literal)
//   HEADS     heads per token
#include "common.cuh"

#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(HEADS)
#error "mla_prefill_mma needs KV_LORA, ROPE, SCALE and HEADS"
#endif
constexpr int kDims = KV_LORA + ROPE;
constexpr int kRows = 64, kPositions = 32, kThreads = 256;
constexpr int kPitch = kDims + 8; // bf16 per shared row: fragment loads hit 32 banks
constexpr int kHalf = KV_LORA / 2, kDimTiles = kHalf / 8;
static_assert(kDims % 16 == 0 && KV_LORA % 16 == 0, "whole k16 steps and n8 tiles");
static_assert(ROPE % 4 == 0 && kPitch % 4 == 0, "loads and stores of 4 values");

namespace {

#define KT_INFINITY __int_as_float(0x7f800000)

__device__ __forceinline__ kt::u32 pack(float low, float high) {
  return kt::toBf16(low) | kt::toBf16(high) << 16;
}
__device__ __forceinline__ kt::u32 pair(const kt::u16 *p) {
  return *reinterpret_cast<const kt::u32 *>(p);
}
__device__ __forceinline__ void mma(float (&c)[4], const kt::u32 (&a)[4], kt::u32 b0,
                                    kt::u32 b1) {
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

} // namespace

extern "C" __global__ void __launch_bounds__(kThreads)
mla_prefill_mma(const float *__restrict__ qLatent, const float *__restrict__ qRope,
                int qRopeHeadStride, int qRopeTokenStride, const float *__restrict__ latent,
                const float *__restrict__ ropeKey, int firstPositions, int tokens,
                float *__restrict__ context) {
#if __CUDA_ARCH__ >= 800
  extern __shared__ __align__(16) kt::u16 shared[];
  kt::u16 *qTile = shared;                   // [kRows][kPitch]
  kt::u16 *kTile = shared + kRows * kPitch;  // [kPositions][kPitch]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rowGroup = warp % 4, dimBase = (warp / 4) * kHalf;
  const int rows = tokens * HEADS, r0 = blockIdx.x * kRows;

  // The block's queries to bf16, 4 values per load (rows past the end
  // repeat the last one).
  for (int i = threadIdx.x; i < kRows * kDims / 4; i += kThreads) {
    const int r = i / (kDims / 4), d = 4 * (i % (kDims / 4)), row = min(r0 + r, rows - 1);
    const int token = row / HEADS, head = row % HEADS;
    const float4 v =
        d < KV_LORA ? *reinterpret_cast<const float4 *>(
                          qLatent + static_cast<long long>(row) * KV_LORA + d)
                    : *reinterpret_cast<const float4 *>(
                          qRope + static_cast<long long>(token) * qRopeTokenStride +
                          static_cast<long long>(head) * qRopeHeadStride + d - KV_LORA);
    *reinterpret_cast<uint2 *>(&qTile[r * kPitch + d]) = make_uint2(pack(v.x, v.y), pack(v.z, v.w));
  }
  // This thread's two rows (fragment rows lane / 4 and + 8) and how many
  // positions each sees.
  const int rowA = r0 + rowGroup * 16 + lane / 4, rowB = rowA + 8;
  const int visibleA = rowA < rows ? firstPositions + rowA / HEADS : 1;
  const int visibleB = rowB < rows ? firstPositions + rowB / HEADS : 1;
  const int visible = firstPositions + (min(r0 + kRows, rows) - 1) / HEADS; // the block's most

  float out[kDimTiles][4];
#pragma unroll
  for (int t = 0; t < kDimTiles; ++t)
    out[t][0] = out[t][1] = out[t][2] = out[t][3] = 0.0f;
  float maxA = -KT_INFINITY, maxB = -KT_INFINITY, sumA = 0.0f, sumB = 0.0f;
  const int qRow = rowGroup * 16 + lane / 4, kColumn = (lane % 4) * 2;

  for (int p0 = 0; p0 < visible; p0 += kPositions) {
    __syncthreads(); // the previous tile is consumed (and the queries are in)
    for (int i = threadIdx.x; i < kPositions * kDims / 4; i += kThreads) {
      const int p = i / (kDims / 4), d = 4 * (i % (kDims / 4)), position = p0 + p;
      float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (position < visible)
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
    // Scale and causal mask, then the online softmax of each row.
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
    const float newMaxA = fmaxf(maxA, quadMax(tileMaxA));
    const float newMaxB = fmaxf(maxB, quadMax(tileMaxB));
    // A row that sees nothing of this tile keeps its state (-inf - -inf).
    const float factorA = newMaxA == -KT_INFINITY ? 1.0f : __expf(maxA - newMaxA);
    const float factorB = newMaxB == -KT_INFINITY ? 1.0f : __expf(maxB - newMaxB);
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
    sumA = sumA * factorA + quadSum(rowSumA);
    sumB = sumB * factorB + quadSum(rowSumB);
    maxA = newMaxA;
    maxB = newMaxB;
#pragma unroll
    for (int t = 0; t < kDimTiles; ++t) {
      out[t][0] *= factorA;
      out[t][1] *= factorA;
      out[t][2] *= factorB;
      out[t][3] *= factorB;
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
        const kt::u32 b1 =
            kTile[(k + 8) * kPitch + n] | kt::u32(kTile[(k + 9) * kPitch + n]) << 16;
        mma(out[t], a, b0, b1);
      }
    }
  }

  // Normalize and store: values 0, 1 of a tile at row A, 2, 3 at row B.
  const float inverseA = 1.0f / sumA, inverseB = 1.0f / sumB;
#pragma unroll
  for (int t = 0; t < kDimTiles; ++t) {
    const int d = dimBase + 8 * t + kColumn;
    if (rowA < rows)
      *reinterpret_cast<float2 *>(context + static_cast<long long>(rowA) * KV_LORA + d) =
          make_float2(out[t][0] * inverseA, out[t][1] * inverseA);
    if (rowB < rows)
      *reinterpret_cast<float2 *>(context + static_cast<long long>(rowB) * KV_LORA + d) =
          make_float2(out[t][2] * inverseB, out[t][3] * inverseB);
  }
#endif
}
