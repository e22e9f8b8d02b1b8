// y = W x for a GGUF k-quant matrix W (q4_K, q5_K or q6_K) of OUT_FEATURES
// rows of IN_FEATURES values (each row IN_FEATURES/256 super-blocks). Weights
// are dequantized in registers, never expanded in memory.
// A warp computes ROWS_PER_WARP rows. Eight lanes share a super-block, each
// taking 32 of its 256 values, so eight consecutive lanes read one
// super-block's quants as contiguous 16-byte pieces; the warp walks four
// super-blocks per step, loading their activations once for all its rows.
// Decode GEMVs of few rows split each row's super-blocks between K_SPLIT
// warps of a block (partial sums added in shared memory).
// Specialization defines:
//   QTYPE           4 (q4_K), 5 (q5_K) or 6 (q6_K)
//   IN_FEATURES     columns (a multiple of 256)
//   OUT_FEATURES    rows
//   ROWS_PER_BLOCK  warps per thread block
//   ROWS_PER_WARP   rows per warp
//   K_SPLIT         warps per row (decode only; block: ROWS_PER_BLOCK x K_SPLIT warps)
//   TOKEN_TILE      tokens per block (the weights come from DRAM once for all)
//   GROUPED, GATE_UP  optional: tiles of grouped assignments, or the fused
//                   gate and up products of routed experts (common.cuh)
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
#ifndef ROWS_PER_WARP
#define ROWS_PER_WARP 1
#endif
#ifndef TOKEN_TILE
#define TOKEN_TILE 1
#endif
#ifndef K_SPLIT
#define K_SPLIT 1
#endif
static_assert(TOKEN_TILE == 1 || K_SPLIT == 1, "token tiles take whole rows");

static_assert(QTYPE == 4 || QTYPE == 5 || QTYPE == 6, "q4_K, q5_K or q6_K");
static_assert(IN_FEATURES % 256 == 0, "k-quant rows are whole super-blocks");
constexpr int kSuperBlocks = IN_FEATURES / 256;
constexpr int kBlockBytes = QTYPE == 4 ? 144 : QTYPE == 5 ? 176 : 210;
constexpr long long kRowBytes = static_cast<long long>(kSuperBlocks) * kBlockBytes;

// This lane's 32 activations of a super-block (and, for q4_K/q5_K, their
// sums per group), loaded once and reused for every row of the warp.
struct Piece {
  float values[32];
  float sumLow, sumHigh;
};

__device__ __forceinline__ float4 load4(const float *p) { return *reinterpret_cast<const float4 *>(p); }

__device__ __forceinline__ void loadPiece(const float *x, int part, Piece &piece) {
#if QTYPE == 4 || QTYPE == 5
  // part = 2 * pair + half: values [16 * half, +16) of groups 2 * pair (low
  // nibbles) and 2 * pair + 1 (high nibbles).
  const int pair = part / 2, half = part % 2;
  const float *xLow = x + 64 * pair + 16 * half, *xHigh = xLow + 32;
  piece.sumLow = piece.sumHigh = 0;
#pragma unroll
  for (int v = 0; v < 4; ++v) {
    const float4 lo = load4(xLow + 4 * v), hi = load4(xHigh + 4 * v);
    piece.values[4 * v] = lo.x, piece.values[4 * v + 1] = lo.y;
    piece.values[4 * v + 2] = lo.z, piece.values[4 * v + 3] = lo.w;
    piece.values[16 + 4 * v] = hi.x, piece.values[16 + 4 * v + 1] = hi.y;
    piece.values[16 + 4 * v + 2] = hi.z, piece.values[16 + 4 * v + 3] = hi.w;
    piece.sumLow += lo.x + lo.y + lo.z + lo.w;
    piece.sumHigh += hi.x + hi.y + hi.z + hi.w;
  }
#else
  // q6_K: part = 4 * n + quarter: l in [8 * quarter, +8) of the n-th 128
  // values, at l, l + 32, l + 64 and l + 96.
  const int n = part / 4, quarter = part % 4;
  const float *xs = x + 128 * n + 8 * quarter;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const float4 a = load4(xs + 32 * r), b = load4(xs + 32 * r + 4);
    piece.values[8 * r] = a.x, piece.values[8 * r + 1] = a.y, piece.values[8 * r + 2] = a.z;
    piece.values[8 * r + 3] = a.w, piece.values[8 * r + 4] = b.x, piece.values[8 * r + 5] = b.y;
    piece.values[8 * r + 6] = b.z, piece.values[8 * r + 7] = b.w;
  }
  piece.sumLow = piece.sumHigh = 0;
#endif
}

// A row's super-block header and this lane's quants (q4_K/q5_K: the scales
// and minimums of its two groups, already multiplied by the super-block's d
// and dmin; q6_K: d and the four groups' scales).
struct RowQuants {
#if QTYPE == 4 || QTYPE == 5
  float lowScale, lowMin, highScale, highMin;
  uint4 packed;
#if QTYPE == 5
  uint4 packedHigh;
#endif
#else
  float d, scale[4];
  kt::u16 lowA[4], lowB[4], high[4];
#endif
};

__device__ __forceinline__ void loadRowQuants(const kt::u8 *block, int part, RowQuants &q) {
#if QTYPE == 4 || QTYPE == 5
  const int pair = part / 2, half = part % 2;
  const kt::u32 dm = *reinterpret_cast<const kt::u32 *>(block);
  const float d = kt::halfToFloat(static_cast<kt::u16>(dm & 0xffff));
  const float dmin = kt::halfToFloat(static_cast<kt::u16>(dm >> 16));
  kt::u32 scaleWords[3];
#pragma unroll
  for (int i = 0; i < 3; ++i)
    scaleWords[i] = reinterpret_cast<const kt::u32 *>(block + 4)[i];
  const kt::u8 *scales = reinterpret_cast<const kt::u8 *>(scaleWords);
  float scaleLow, minLow, scaleHigh, minHigh;
  kt::kquantScaleMin(scales, 2 * pair, scaleLow, minLow);
  kt::kquantScaleMin(scales, 2 * pair + 1, scaleHigh, minHigh);
  q.lowScale = d * scaleLow;
  q.lowMin = dmin * minLow;
  q.highScale = d * scaleHigh;
  q.highMin = dmin * minHigh;
#if QTYPE == 4
  q.packed = *reinterpret_cast<const uint4 *>(block + 16 + 32 * pair + 16 * half);
#else
  q.packed = *reinterpret_cast<const uint4 *>(block + 48 + 32 * pair + 16 * half);
  q.packedHigh = *reinterpret_cast<const uint4 *>(block + 16 + 16 * half);
#endif
#else
  const int n = part / 4, quarter = part % 4;
  const kt::u8 *ql = block + 64 * n, *qh = block + 128 + 32 * n;
  const kt::i8 *sc = reinterpret_cast<const kt::i8 *>(block + 192) + 8 * n;
  q.d = kt::halfToFloat(*reinterpret_cast<const kt::u16 *>(block + 208));
  const int is = (8 * quarter) / 16;
#pragma unroll
  for (int c = 0; c < 4; ++c)
    q.scale[c] = static_cast<float>(sc[is + 2 * c]);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    q.lowA[i] = reinterpret_cast<const kt::u16 *>(ql + 8 * quarter)[i];
    q.lowB[i] = reinterpret_cast<const kt::u16 *>(ql + 32 + 8 * quarter)[i];
    q.high[i] = reinterpret_cast<const kt::u16 *>(qh + 8 * quarter)[i];
  }
#endif
}

// The dot product of this lane's 32 weights of super-block `block` with the
// piece. Quants and scales are read as 16-byte (q4_K, q5_K) or 2-byte
// (q6_K: 210-byte super-blocks) units.
__device__ __forceinline__ float pieceDot(const kt::u8 *block, const Piece &piece, int part) {
  RowQuants q;
  loadRowQuants(block, part, q);
#if QTYPE == 4 || QTYPE == 5
  const kt::u8 *qs = reinterpret_cast<const kt::u8 *>(&q.packed);
#if QTYPE == 5
  const int pair = part / 2;
  const kt::u8 *qh = reinterpret_cast<const kt::u8 *>(&q.packedHigh);
#endif
  float dotLow = 0, dotHigh = 0;
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    int low = qs[i] & 0xF, high = qs[i] >> 4;
#if QTYPE == 5
    low |= ((qh[i] >> (2 * pair)) & 1) << 4;
    high |= ((qh[i] >> (2 * pair + 1)) & 1) << 4;
#endif
    dotLow += static_cast<float>(low) * piece.values[i];
    dotHigh += static_cast<float>(high) * piece.values[16 + i];
  }
  return q.lowScale * dotLow + q.highScale * dotHigh -
         (q.lowMin * piece.sumLow + q.highMin * piece.sumHigh);
#else
  const kt::u8 *a = reinterpret_cast<const kt::u8 *>(q.lowA),
               *b = reinterpret_cast<const kt::u8 *>(q.lowB),
               *h = reinterpret_cast<const kt::u8 *>(q.high);
  float dots[4] = {0, 0, 0, 0};
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    dots[0] += static_cast<float>(((a[k] & 0xF) | (((h[k] >> 0) & 3) << 4)) - 32) * piece.values[k];
    dots[1] += static_cast<float>(((b[k] & 0xF) | (((h[k] >> 2) & 3) << 4)) - 32) * piece.values[8 + k];
    dots[2] += static_cast<float>(((a[k] >> 4) | (((h[k] >> 4) & 3) << 4)) - 32) * piece.values[16 + k];
    dots[3] += static_cast<float>(((b[k] >> 4) | (((h[k] >> 6) & 3) << 4)) - 32) * piece.values[24 + k];
  }
  return q.d * (q.scale[0] * dots[0] + q.scale[1] * dots[1] + q.scale[2] * dots[2] +
                q.scale[3] * dots[3]);
#endif
}

#if TOKEN_TILE > 1
// Prefill (a tile of tokens): a row's super-block header and this lane's
// quants, read once; then, in four chunks of 8 of the lane's 32 values, the
// chunk's weights are decoded once per row and its activations loaded once
// per token, and every (row, token) pair of the tile uses them.

// Chunk c's 8 weights of the row, in the order of chunkActivations' values.
__device__ __forceinline__ void chunkWeights(const RowQuants &q, int part, int c, float (&w)[8]) {
#if QTYPE == 4 || QTYPE == 5
  const kt::u8 *qs = reinterpret_cast<const kt::u8 *>(&q.packed) + 4 * c;
#if QTYPE == 5
  const int pair = part / 2;
  const kt::u8 *qh = reinterpret_cast<const kt::u8 *>(&q.packedHigh) + 4 * c;
#endif
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    int low = qs[j] & 0xF, high = qs[j] >> 4;
#if QTYPE == 5
    low |= ((qh[j] >> (2 * pair)) & 1) << 4;
    high |= ((qh[j] >> (2 * pair + 1)) & 1) << 4;
#endif
    w[j] = q.lowScale * static_cast<float>(low) - q.lowMin;
    w[4 + j] = q.highScale * static_cast<float>(high) - q.highMin;
  }
#else
  (void)part;
  const kt::u8 *a = reinterpret_cast<const kt::u8 *>(q.lowA),
               *b = reinterpret_cast<const kt::u8 *>(q.lowB),
               *h = reinterpret_cast<const kt::u8 *>(q.high);
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    const int low = c == 0 ? a[k] & 0xF : c == 1 ? b[k] & 0xF : c == 2 ? a[k] >> 4 : b[k] >> 4;
    w[k] = q.d * q.scale[c] * static_cast<float>((low | (((h[k] >> (2 * c)) & 3) << 4)) - 32);
  }
#endif
}

// Chunk c's 8 activations of a super-block (x at its start).
__device__ __forceinline__ void chunkActivations(const float *x, int part, int c, float4 &a,
                                                 float4 &b) {
#if QTYPE == 4 || QTYPE == 5
  const int pair = part / 2, half = part % 2;
  const float *xLow = x + 64 * pair + 16 * half;
  a = load4(xLow + 4 * c);
  b = load4(xLow + 32 + 4 * c);
#else
  const int n = part / 4, quarter = part % 4;
  const float *xs = x + 128 * n + 8 * quarter + 32 * c;
  a = load4(xs);
  b = load4(xs + 4);
#endif
}
#endif

// Each warp computes ROWS_PER_WARP consecutive rows, loading each piece of x
// once for all of them.
extern "C" __global__ void __launch_bounds__(ROWS_PER_BLOCK *K_SPLIT * 32)
    gemv_kquant(const void *__restrict__ weight, const float *__restrict__ x, float *__restrict__ y,
                kt::GemvLayout layout) {
  KT_WAIT_FOR_PRIOR_GRID();
  const int lane = threadIdx.x % 32;
  const int rowInBlock = threadIdx.x / 32 / K_SPLIT;
  [[maybe_unused]] const int split = threadIdx.x / 32 % K_SPLIT; // decode only
  const int firstRow = (blockIdx.x * ROWS_PER_BLOCK + rowInBlock) * ROWS_PER_WARP;
#if K_SPLIT == 1
  if (firstRow >= OUT_FEATURES)
    return;
#endif // else every warp reaches the block's barrier (rows past the end read nothing)
  long long headRow;
  KT_GEMV_TOKENS(TOKEN_TILE, OUT_FEATURES, headRow);
  if (tokens <= 0) // the whole block: a slot without a matrix
    return;
  const kt::u8 *rows = static_cast<const kt::u8 *>(weight) + (headRow + firstRow) * kRowBytes;
#if GATE_UP
  const kt::u8 *upRows =
      reinterpret_cast<const kt::u8 *>(layout.upWeight) + (headRow + firstRow) * kRowBytes;
  float upSums[ROWS_PER_WARP];
#pragma unroll
  for (int r = 0; r < ROWS_PER_WARP; ++r)
    upSums[r] = 0.0f;
#endif
  float sums[TOKEN_TILE][ROWS_PER_WARP];
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t)
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r)
      sums[t][r] = 0.0f;
#if TOKEN_TILE > 1
  // Prefill: per super-block, each row's quants read once; per chunk, each
  // weight decoded once and each activation loaded once for the whole tile.
  const int part = lane % 8;
  for (int b = lane / 8; b < kSuperBlocks; b += 4) {
    RowQuants quants[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r)
      if (firstRow + r < OUT_FEATURES)
        loadRowQuants(rows + r * kRowBytes + b * kBlockBytes, part, quants[r]);
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      float4 xa[TOKEN_TILE], xb[TOKEN_TILE];
#pragma unroll
      for (int t = 0; t < TOKEN_TILE; ++t)
        if (t < tokens)
          chunkActivations(KT_GEMV_X(t) + b * 256, part, c, xa[t], xb[t]);
#pragma unroll
      for (int r = 0; r < ROWS_PER_WARP; ++r) {
        if (firstRow + r >= OUT_FEATURES)
          break;
        float w[8];
        chunkWeights(quants[r], part, c, w);
#pragma unroll
        for (int t = 0; t < TOKEN_TILE; ++t)
          if (t < tokens)
            sums[t][r] += w[0] * xa[t].x + w[1] * xa[t].y + w[2] * xa[t].z + w[3] * xa[t].w +
                          w[4] * xb[t].x + w[5] * xb[t].y + w[6] * xb[t].z + w[7] * xb[t].w;
      }
    }
  }
#else
  // This warp's part of the row: every K_SPLIT-th run of 4 super-blocks.
  for (int b = lane / 8 + 4 * split; b < kSuperBlocks; b += 4 * K_SPLIT) {
    // Decode: the piece of x loaded once for all the warp's rows.
    Piece piece;
    loadPiece(KT_GEMV_X(0) + b * 256, lane % 8, piece);
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r)
      if (firstRow + r < OUT_FEATURES) {
        sums[0][r] += pieceDot(rows + r * kRowBytes + b * kBlockBytes, piece, lane % 8);
#if GATE_UP
        upSums[r] += pieceDot(upRows + r * kRowBytes + b * kBlockBytes, piece, lane % 8);
#endif
      }
  }
#endif
#if K_SPLIT > 1
  // Decode has one token per block: each row's partial sums in split order.
  __shared__ float partials[ROWS_PER_BLOCK][K_SPLIT][ROWS_PER_WARP * kt::kGemvSumsPerRow];
  float mine[ROWS_PER_WARP * kt::kGemvSumsPerRow], totals[ROWS_PER_WARP * kt::kGemvSumsPerRow];
#pragma unroll
  for (int r = 0; r < ROWS_PER_WARP; ++r) {
    mine[r * kt::kGemvSumsPerRow] = sums[0][r];
#if GATE_UP
    mine[r * kt::kGemvSumsPerRow + 1] = upSums[r];
#endif
  }
  kt::addSplitSums<K_SPLIT, ROWS_PER_WARP * kt::kGemvSumsPerRow>(partials, rowInBlock, split, mine,
                                                                 totals);
  if (split == 0 && lane == 0)
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r)
      if (firstRow + r < OUT_FEATURES)
#if GATE_UP
        KT_GEMV_Y(0)
  [firstRow + r] =
      kt::siluMul(totals[r * kt::kGemvSumsPerRow], totals[r * kt::kGemvSumsPerRow + 1]);
#else
        KT_GEMV_Y(0)[firstRow + r] = totals[r * kt::kGemvSumsPerRow];
#endif
#else
#pragma unroll
  for (int t = 0; t < TOKEN_TILE; ++t)
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
      float sum = kt::warpSum(sums[t][r]);
#if GATE_UP
      sum = kt::siluMul(sum, kt::warpSum(upSums[r]));
#endif
      if (lane == 0 && t < tokens && firstRow + r < OUT_FEATURES)
        KT_GEMV_Y(t)[firstRow + r] = sum;
    }
#endif
}
