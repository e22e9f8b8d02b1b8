// y = W x for a GGUF k-quant matrix W (q4_K, q5_K or q6_K) of OUT_FEATURES
// rows of IN_FEATURES values (each row IN_FEATURES/256 super-blocks). Weights
// are dequantized in registers, never expanded in memory.
// One warp per output row. Eight lanes share a super-block, each taking 32 of
// its 256 values, so eight consecutive lanes read one super-block's quants as
// contiguous 16-byte pieces; the warp walks four super-blocks per step.
// Specialization defines:
//   QTYPE           4 (q4_K), 5 (q5_K) or 6 (q6_K)
//   IN_FEATURES     columns (a multiple of 256)
//   OUT_FEATURES    rows
//   ROWS_PER_BLOCK  warps (rows) per thread block
#include "common.cuh"

#ifndef QTYPE
#error "gemv_kquant needs QTYPE"
#endif
#ifndef IN_FEATURES
#error "gemv_kquant needs IN_FEATURES"
#endif
#ifndef OUT_FEATURES
#error "gemv_kquant needs OUT_FEATURES"
#endif
#ifndef ROWS_PER_BLOCK
#define ROWS_PER_BLOCK 4
#endif

static_assert(QTYPE == 4 || QTYPE == 5 || QTYPE == 6, "q4_K, q5_K or q6_K");
static_assert(IN_FEATURES % 256 == 0, "k-quant rows are whole super-blocks");
constexpr int kSuperBlocks = IN_FEATURES / 256;
constexpr int kBlockBytes = QTYPE == 4 ? 144 : QTYPE == 5 ? 176 : 210;
constexpr long long kRowBytes = static_cast<long long>(kSuperBlocks) * kBlockBytes;

// GGML's get_scale_min_k4: the 6-bit scale and minimum of group j.
__device__ __forceinline__ void scaleMin(const kt::u8 *scales, int j, float &scale, float &minimum) {
  if (j < 4) {
    scale = static_cast<float>(scales[j] & 63);
    minimum = static_cast<float>(scales[j + 4] & 63);
  } else {
    scale = static_cast<float>((scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4));
    minimum = static_cast<float>((scales[j + 4] >> 4) | ((scales[j] >> 6) << 4));
  }
}

// The dot product of this lane's 32 values of super-block `block` with x.
__device__ __forceinline__ float pieceDot(const kt::u8 *block, const float *x, int part) {
#if QTYPE == 4 || QTYPE == 5
  // part = 2 * pair + half: bytes [16 * half, +16) of the pair's 32 bytes;
  // low nibbles are group 2 * pair, high nibbles group 2 * pair + 1.
  const int pair = part / 2, half = part % 2;
  const float d = kt::halfToFloat(*reinterpret_cast<const kt::u16 *>(block));
  const float dmin = kt::halfToFloat(*reinterpret_cast<const kt::u16 *>(block + 2));
  float scaleLow, minLow, scaleHigh, minHigh;
  scaleMin(block + 4, 2 * pair, scaleLow, minLow);
  scaleMin(block + 4, 2 * pair + 1, scaleHigh, minHigh);
#if QTYPE == 4
  const kt::u8 *qs = block + 16 + 32 * pair + 16 * half;
#else
  const kt::u8 *qs = block + 48 + 32 * pair + 16 * half;
  const kt::u8 *qh = block + 16 + 16 * half;
#endif
  const float *xLow = x + 64 * pair + 16 * half, *xHigh = xLow + 32;
  float dotLow = 0, dotHigh = 0, sumLow = 0, sumHigh = 0;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    int low = qs[i] & 0xF, high = qs[i] >> 4;
#if QTYPE == 5
    low |= ((qh[i] >> (2 * pair)) & 1) << 4;
    high |= ((qh[i] >> (2 * pair + 1)) & 1) << 4;
#endif
    dotLow += static_cast<float>(low) * xLow[i];
    dotHigh += static_cast<float>(high) * xHigh[i];
    sumLow += xLow[i];
    sumHigh += xHigh[i];
  }
  return d * (scaleLow * dotLow + scaleHigh * dotHigh) - dmin * (minLow * sumLow + minHigh * sumHigh);
#else
  // q6_K: part = 4 * n + quarter: l in [8 * quarter, +8) of the n-th 128
  // values; each l gives 4 values (l, l + 32, l + 64, l + 96).
  const int n = part / 4, quarter = part % 4;
  const kt::u8 *ql = block + 64 * n, *qh = block + 128 + 32 * n;
  const kt::i8 *sc = reinterpret_cast<const kt::i8 *>(block + 192) + 8 * n;
  const float d = kt::halfToFloat(*reinterpret_cast<const kt::u16 *>(block + 208));
  const int is = (8 * quarter) / 16;
  const float *xs = x + 128 * n;
  float dots[4] = {0, 0, 0, 0};
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int l = 8 * quarter + k;
    const int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
    const int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
    const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
    const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
    dots[0] += static_cast<float>(q1) * xs[l];
    dots[1] += static_cast<float>(q2) * xs[l + 32];
    dots[2] += static_cast<float>(q3) * xs[l + 64];
    dots[3] += static_cast<float>(q4) * xs[l + 96];
  }
  return d * (sc[is] * dots[0] + sc[is + 2] * dots[1] + sc[is + 4] * dots[2] + sc[is + 6] * dots[3]);
#endif
}

extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK * 32)
gemv_kquant(const void *__restrict__ weight, const float *__restrict__ x,
            float *__restrict__ y) {
  const int lane = threadIdx.x % 32;
  const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / 32;
  if (row >= OUT_FEATURES)
    return;
  const kt::u8 *rowBytes = static_cast<const kt::u8 *>(weight) + row * kRowBytes;
  float sum = 0.0f;
  for (int b = lane / 8; b < kSuperBlocks; b += 4)
    sum += pieceDot(rowBytes + b * kBlockBytes, x + b * 256, lane % 8);
  sum = kt::warpSum(sum);
  if (lane == 0)
    y[row] = sum;
}
