// y = W x for one token, W a dense Q8_0 matrix with split rows (common.cuh:
// each row's IN_FEATURES int8 quants, then its IN_FEATURES / 32 f16 scales)
// and x as quantize_planes.cu's three int8 planes, so that a lane reads 16
// quants and each plane's 16 values as aligned 16-byte loads and multiplies
// them with dp4a. The f32 activations of gemv_q8_0.cu need 4 bytes through
// L1 per weight byte and left its loads of weights too few in flight; here
// the result agrees with the f32 product to about f32's rounding.
// One warp per row, or K_SPLIT warps of a block per row (partial sums added
// in shared memory in split order); lanes take 16-value chunks in turn.
// Specialization defines:
//   IN_FEATURES     columns (a multiple of 256)
//   OUT_FEATURES    rows
//   ROWS_PER_BLOCK  rows per thread block
//   K_SPLIT         warps per row
#include "common.cuh"

#if !defined(IN_FEATURES) || !defined(OUT_FEATURES) || !defined(ROWS_PER_BLOCK)
#error "gemv_q8_0_planes needs IN_FEATURES, OUT_FEATURES and ROWS_PER_BLOCK"
#endif
#ifndef K_SPLIT
#define K_SPLIT 1
#endif
static_assert(IN_FEATURES % kt::kQ8_0SplitRowValues == 0, "split rows are whole runs of 8 blocks");
constexpr int kChunks = IN_FEATURES / 16;
constexpr long long kRowBytes =
    static_cast<long long>(IN_FEATURES / kt::kQ8_0BlockElements) * kt::kQ8_0BlockBytes;
constexpr int kChunksPerWarp = (kChunks + 32 * K_SPLIT - 1) / (32 * K_SPLIT);

// 16 bytes that nothing else in this kernel reads again: not kept in L1.
__device__ __forceinline__ int4 loadStreaming(const int4 *p) {
  int4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

__device__ __forceinline__ int dot16(int4 w, int4 x) {
  return kt::dot4Bytes(
      w.w, x.w, kt::dot4Bytes(w.z, x.z, kt::dot4Bytes(w.y, x.y, kt::dot4Bytes(w.x, x.x, 0))));
}

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK *K_SPLIT * 32)
    gemv_q8_0_planes(const void *__restrict__ weight, const kt::i8 *__restrict__ planes,
                     const float *__restrict__ xScales, float *__restrict__ y) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int lane = threadIdx.x % 32, rowInBlock = threadIdx.x / 32 / K_SPLIT,
            split = threadIdx.x / 32 % K_SPLIT;
  const int row = blockIdx.x * ROWS_PER_BLOCK + rowInBlock;
  // Every warp reaches the split's barrier; a warp past the last row reads row 0.
  const bool rowExists = row < OUT_FEATURES;
  const kt::u8 *rowBytes = static_cast<const kt::u8 *>(weight) + (rowExists ? row : 0) * kRowBytes;
  const int4 *quants = reinterpret_cast<const int4 *>(rowBytes);
  const kt::u16 *scales = reinterpret_cast<const kt::u16 *>(rowBytes + IN_FEATURES);
  const int4 *plane = reinterpret_cast<const int4 *>(planes);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kChunksPerWarp; ++i) {
    const int chunk = (i * K_SPLIT + split) * 32 + lane;
    if (chunk < kChunks) {
      const int4 w = loadStreaming(quants + chunk);
      const int high = dot16(w, plane[chunk]), middle = dot16(w, plane[kChunks + chunk]),
                low = dot16(w, plane[2 * kChunks + chunk]);
      const float value = static_cast<float>(high) +
                          static_cast<float>(middle) * (1.0f / kt::kPlaneStep) +
                          static_cast<float>(low) * (1.0f / (kt::kPlaneStep * kt::kPlaneStep));
      sum += kt::halfToFloat(scales[chunk / 2]) * xScales[chunk / 2] * value;
    }
  }
#if K_SPLIT > 1
  kt::storeSplitRow<ROWS_PER_BLOCK, K_SPLIT>(sum, 0.0f, rowInBlock, split, lane == 0 && rowExists,
                                             y, row);
#else
  sum = kt::warpSum(sum);
  if (lane == 0 && rowExists)
    y[row] = sum;
#endif
}
