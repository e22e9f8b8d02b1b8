// y = W x for a GGUF Q8_0 matrix W of OUT_FEATURES rows of IN_FEATURES values
// (row-major, each row IN_FEATURES/32 blocks of 34 bytes: f16 scale, 32 int8).
// Weights are dequantized in registers, never expanded in memory.
// One warp per output row; four lanes share a block (8 values each), so a
// warp reads 8 consecutive blocks (272 contiguous bytes) per step, and the
// steps are unrolled so that all of a row's loads are in flight together.
// Specialization defines:
//   IN_FEATURES     columns (a multiple of 32)
//   OUT_FEATURES    rows
//   ROWS_PER_BLOCK  warps (rows) per thread block
#include "common.cuh"

#ifndef IN_FEATURES
#error "gemv_q8_0 needs IN_FEATURES"
#endif
#ifndef OUT_FEATURES
#error "gemv_q8_0 needs OUT_FEATURES"
#endif
#ifndef ROWS_PER_BLOCK
#define ROWS_PER_BLOCK 4
#endif

static_assert(IN_FEATURES % kt::kQ8_0BlockElements == 0, "Q8_0 rows are whole blocks");
constexpr int kBlocksPerRow = IN_FEATURES / kt::kQ8_0BlockElements;
constexpr long long kRowBytes = static_cast<long long>(kBlocksPerRow) * kt::kQ8_0BlockBytes;

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK * 32)
gemv_q8_0(const void *__restrict__ weight, const float *__restrict__ x,
          float *__restrict__ y, kt::GemvLayout layout) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row >= OUT_FEATURES)
    return;
  const long long headRow = kt::gemvSelect(x, y, layout, OUT_FEATURES);
  const kt::u8 *rowBytes = static_cast<const kt::u8 *>(weight) + (headRow + row) * kRowBytes;

  float sum = 0.0f;
  const int quarter = lane % 4;
#pragma unroll
  for (int b = lane / 4; b < kBlocksPerRow; b += 8) {
    const kt::u8 *block = rowBytes + b * kt::kQ8_0BlockBytes;
    // Blocks are 2-byte aligned: the scale and this lane's 8 quants as u16s.
    const kt::u16 *pairs = reinterpret_cast<const kt::u16 *>(block);
    const float scale = kt::halfToFloat(pairs[0]);
    kt::u16 quants[4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
      quants[j] = pairs[1 + 4 * quarter + j];
    const float *xs = x + b * kt::kQ8_0BlockElements + 8 * quarter;
    const float4 x0 = *reinterpret_cast<const float4 *>(xs), x1 = *reinterpret_cast<const float4 *>(xs + 4);
    const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      dot += static_cast<float>(static_cast<kt::i8>(quants[j] & 0xff)) * xv[2 * j];
      dot += static_cast<float>(static_cast<kt::i8>(quants[j] >> 8)) * xv[2 * j + 1];
    }
    sum += scale * dot;
  }
  sum = kt::warpSum(sum);
  if (lane == 0)
    y[row] = sum;
}
