// MLA prefill attention on tensor cores (sm_80+): mla_prefill.cu's
// absorbed core, flash-style (mla_mma.cuh). The rows are the (token, head)
// pairs of the step, token-major; all heads attend over the same latent
// rows, so a block takes 64 rows and walks the cache in tiles of 32
// positions, masked past each row's token (firstPositions + token positions
// are visible).
// bf16 rounds q, the cache and the probabilities to 8 mantissa bits: about
// 1e-3 relative error, against 1e-6 for mla_prefill.
// Grid: ceil(tokens * HEADS / 64) blocks of 256 threads; dynamic shared
// memory mlaPrefillMmaSharedBytes(). Specialization defines:
//   KV_LORA   latent width, a multiple of 16
//   ROPE      rope key width; KV_LORA + ROPE a multiple of 16
//   SCALE     softmax scale (a float literal)
//   HEADS     heads per token
#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(HEADS)
#error "mla_prefill_mma needs KV_LORA, ROPE, SCALE and HEADS"
#endif
#include "mla_mma.cuh"

using namespace kt::mla_mma;

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
  const int rowGroup = warp % ROW_GROUPS, dimBase = (warp / ROW_GROUPS) * kHalf;
  const int rows = tokens * HEADS, r0 = blockIdx.x * kRows;
  loadQueries(qTile, qLatent, qRope, qRopeHeadStride, qRopeTokenStride, r0, rows);
  // This thread's two rows and how many positions each sees.
  const int rowA = r0 + rowGroup * 16 + lane / 4, rowB = rowA + 8;
  const int visibleA = rowA < rows ? firstPositions + rowA / HEADS : 1;
  const int visibleB = rowB < rows ? firstPositions + rowB / HEADS : 1;
  const int visible = firstPositions + (min(r0 + kRows, rows) - 1) / HEADS; // the block's most
  RowState s;
  s.clear();
  attend(s, qTile, kTile, latent, ropeKey, 0, visible, visibleA, visibleB);

  // Normalize and store: values 0, 1 of a tile at row A, 2, 3 at row B.
  const int kColumn = (lane % 4) * 2;
  const float inverseA = 1.0f / s.sumA, inverseB = 1.0f / s.sumB;
#pragma unroll
  for (int t = 0; t < kDimTiles; ++t) {
    const int d = dimBase + 8 * t + kColumn;
    if (rowA < rows)
      *reinterpret_cast<float2 *>(context + static_cast<long long>(rowA) * KV_LORA + d) =
          make_float2(s.out[t][0] * inverseA, s.out[t][1] * inverseA);
    if (rowB < rows)
      *reinterpret_cast<float2 *>(context + static_cast<long long>(rowB) * KV_LORA + d) =
          make_float2(s.out[t][2] * inverseB, s.out[t][3] * inverseB);
  }
#endif
}
