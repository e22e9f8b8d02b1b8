// y = x W^T for a GGUF k-quant weight (q4_K, q5_K, q6_K) on tensor cores (sm_80
// and newer): the prefill GEMM of k-quant matrices. Per 32 values the
// weight's values are dequantized in registers and rounded to bf16 (to
// nearest even), as are the f32 activations, in shared memory; mma.sync
// m16n8k16 multiplies them with f32 accumulation.
//   x  f32 [rows][K_FEATURES], rows `xStride` floats apart
//   W  [N_FEATURES][K_FEATURES / 256 super-blocks of 144 (q4_K), 176 (q5_K)
//      or 210 (q6_K) bytes]
//   y  f32 [rows][N_FEATURES], rows `yStride` floats apart
// A block of 4 warps owns 64 tokens x 64 outputs (mma_tile64.cuh). Grid:
// (N_FEATURES / 64, ceil(rows / 64)); or, with `groupTiles` (routed experts
// in prefill: W every expert's matrix stacked, x rows picked by `rowIndex`,
// results to y rows `outRows`, either null for the same rows), one block row
// per tile entry {expert, first row, end row} (mma_tile64.cuh's mmaBlock).
// Specialization defines:
//   QTYPE       4 (q4_K), 5 (q5_K) or 6 (q6_K)
//   N_FEATURES  output columns (weight rows), a multiple of 64
//   K_FEATURES  reduction length, a multiple of 256
#include "mma_tile64.cuh"

#if !defined(QTYPE) || !defined(N_FEATURES) || !defined(K_FEATURES)
#error "gemm_kquant_mma needs QTYPE, N_FEATURES and K_FEATURES"
#endif
static_assert(QTYPE == 4 || QTYPE == 5 || QTYPE == 6, "q4_K, q5_K or q6_K");
static_assert(N_FEATURES % kt::kMmaTile == 0, "whole 64-row tiles of the weight");
static_assert(K_FEATURES % 256 == 0, "k-quant rows are whole super-blocks");
constexpr int kBlockBytes = QTYPE == 4 ? 144 : QTYPE == 5 ? 176 : 210;
constexpr long long kRowBytes = static_cast<long long>(K_FEATURES / 256) * kBlockBytes;

// Values [v0, v0 + 16) of a super-block (v0 a multiple of 16) as floats,
// as GGML's dequantize_row_q*_K computes them.
__device__ __forceinline__ void decode16(const kt::u8 *block, int v0, float (&w)[16]) {
#if QTYPE == 4 || QTYPE == 5
  // Per 64 values, 32 bytes: low nibbles the first 32 (group 2j), high
  // nibbles the next (group 2j + 1); q5_K adds bit g of qh[l].
  const int j = v0 / 64, high = (v0 % 64) / 32, l0 = v0 % 32, group = 2 * j + high;
  // d, dmin and the 12 scale bytes, then the 16 bytes of values, each in
  // one load: super-blocks of 144 and 176 bytes, rows of whole super-blocks
  // and buffers from the allocator keep them 16-byte aligned (byte loads
  // had taken a transaction each).
  const uint4 header = *reinterpret_cast<const uint4 *>(block);
  const float d = kt::halfToFloat(static_cast<kt::u16>(header.x & 0xffff));
  const float dmin = kt::halfToFloat(static_cast<kt::u16>(header.x >> 16));
  float scale, minimum;
  kt::kquantScaleMinOf(
      [scales = make_uint3(header.y, header.z, header.w)](int k) {
        const kt::u32 word = k < 4 ? scales.x : k < 8 ? scales.y : scales.z;
        return (word >> (8 * (k % 4))) & 0xff;
      },
      group, scale, minimum);
  const float dl = d * scale, ml = dmin * minimum;
  const uint4 qs = *reinterpret_cast<const uint4 *>(block + (QTYPE == 4 ? 16 : 48) + 32 * j + l0);
  const kt::u32 qsWords[4] = {qs.x, qs.y, qs.z, qs.w};
#if QTYPE == 5
  const uint4 qh = *reinterpret_cast<const uint4 *>(block + 16 + l0);
  const kt::u32 qhWords[4] = {qh.x, qh.y, qh.z, qh.w};
#endif
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const kt::u32 byte = kt::wordByte(qsWords, i);
    int q = high ? byte >> 4 : byte & 0xF;
#if QTYPE == 5
    q |= ((qhWords[i / 4] >> (8 * (i % 4) + group)) & 1) << 4;
#endif
    w[i] = dl * static_cast<float>(q) - ml;
  }
#else
  // Per 128 values (half n): run r of 32 from ql[l + 32 (r & 1)]'s low
  // (r < 2) or high nibble and bits 2r of qh[l], minus 32; a scale per 16.
  const int n = v0 / 128, r = (v0 % 128) / 32, l0 = v0 % 32;
  const kt::u8 *ql = block + 64 * n + 32 * (r & 1) + l0, *qh = block + 128 + 32 * n + l0;
  const float d = kt::halfToFloat(*reinterpret_cast<const kt::u16 *>(block + 208));
  const float scale =
      d *
      static_cast<float>(reinterpret_cast<const kt::i8 *>(block + 192)[8 * n + l0 / 16 + 2 * r]);
  // 210-byte super-blocks keep only 2-byte alignment (load16Bytes).
  kt::u32 lowWords[4], highWords[4];
  kt::load16Bytes(ql, lowWords);
  kt::load16Bytes(qh, highWords);
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const kt::u32 l = kt::wordByte(lowWords, i), b = kt::wordByte(highWords, i);
    const int q = static_cast<int>((r < 2 ? l & 0xF : l >> 4) | (((b >> (2 * r)) & 3) << 4)) - 32;
    w[i] = scale * static_cast<float>(q);
  }
#endif
}

// q4_K/q5_K ask for 8 blocks an SM: ptxas then fits their decoding in 64
// registers without the spill it chose for a bare 128-thread bound (which
// suits q6_K, spilling under the other).
#if QTYPE == 6
#define KT_KQUANT_MMA_BOUNDS __launch_bounds__(128)
#else
#define KT_KQUANT_MMA_BOUNDS __launch_bounds__(128, 8)
#endif
extern "C" __global__ void KT_KQUANT_MMA_BOUNDS
gemm_kquant_mma(const kt::u8 *__restrict__ weight, const float *__restrict__ x, int xStride,
                float *__restrict__ y, int yStride, int rows, const int *__restrict__ groupTiles,
                const int *__restrict__ rowIndex, const int *__restrict__ outRows) {
#if __CUDA_ARCH__ >= 800
  __shared__ __align__(16) kt::MmaTiles tiles;
  const kt::MmaBlock b = kt::mmaBlock(x, xStride, rows, groupTiles, rowIndex, outRows);
  const kt::u8 *wRow =
      weight + (static_cast<long long>(b.expert) * N_FEATURES + b.n0 + b.row) * kRowBytes;

  kt::MmaFragments result = {};
  for (int k0 = 0; k0 < K_FEATURES; k0 += kt::kMmaStep) {
    // The dequantized weights to bf16 pairs.
    float w[16];
    decode16(wRow + (k0 / 256) * kBlockBytes, k0 % 256 + b.column, w);
    kt::u32 *destination = kt::weightSlot(tiles, b);
#pragma unroll
    for (int q = 0; q < 8; ++q)
      destination[q] = kt::toBf16(w[2 * q]) | kt::toBf16(w[2 * q + 1]) << 16;
    kt::mmaStep(tiles, b, k0, result);
  }
  kt::storeMmaTile(result, y, yStride, b);
#endif
}
