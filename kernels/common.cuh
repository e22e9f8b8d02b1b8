// Helpers shared by the kernels. Compiled by NVRTC only (no CUDA headers are
// available there, so the few conversions needed are written out here).
#pragma once

// Programmatic dependent launch (sm_90 and newer): the executor may start a
// kernel that calls this first thing before the kernel queued ahead of it has
// finished (its blocks then wait here, already resident, until that kernel's
// results are visible), so that consecutive small kernels of a decode graph
// do not each pay the whole launch latency. Past the wait, the kernel lets
// the next one launch (once all its blocks are running): at most one kernel
// waits ahead. A no-op elsewhere. Every entry of a kernel file calls it, or
// none does (the executor checks the source).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KT_WAIT_FOR_PRIOR_GRID()                                                                   \
  asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else
#define KT_WAIT_FOR_PRIOR_GRID()
#endif

namespace kt {

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

// IEEE half to float through the hardware conversion (exact for every half).
__device__ __forceinline__ float halfToFloat(u16 bits) {
  float value;
  asm("cvt.f32.f16 %0, %1;" : "=f"(value) : "h"(bits));
  return value;
}

// e4m3 (float8_e4m3fn, DeepSeek's FP8 weights) to float: (8 + m) * 2^(e - 10)
// for e > 0, m * 2^-9 for subnormals; the weights hold no NaN.
__device__ __forceinline__ float e4m3ToFloat(u32 b) {
  const u32 exponent = (b >> 3) & 15, mantissa = b & 7;
  const float magnitude = exponent ? __uint_as_float(((exponent + 120) << 23) | (mantissa << 20))
                                   : static_cast<float>(mantissa) * 0.001953125f;
  return (b & 0x80) ? -magnitude : magnitude;
}

// bfloat16 is the upper half of an f32.
__device__ __forceinline__ float bf16ToFloat(u16 bits) {
  return __uint_as_float(static_cast<u32>(bits) << 16);
}

// f32 to bf16 bits, round to nearest even (the values converted hold no NaN).
__device__ __forceinline__ u32 toBf16(float value) {
  const u32 bits = __float_as_uint(value);
  return (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
}

// Four floats of a lane, one warp holding a 128-column slice, to e4m3 as
// DeepSeek's recipe quantizes activations: scale = max |x| / 448 over the
// slice (448 is e4m3's largest value; 1 where the slice is all zeros), q =
// x / scale rounded to nearest even, saturating. Returns the four bytes
// (x in the lowest) and sets `scale`. Needs sm_89's conversion (zeros before).
__device__ __forceinline__ u32 quantizeE4m3Slice(float4 v, float &scale) {
  float largest = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    largest = fmaxf(largest, __shfl_xor_sync(0xffffffffu, largest, offset));
  scale = largest > 0.0f ? largest / 448.0f : 1.0f;
  u16 low = 0, high = 0;
#if __CUDA_ARCH__ >= 890
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(low) : "f"(v.y / scale), "f"(v.x / scale));
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(high) : "f"(v.w / scale), "f"(v.z / scale));
#endif
  return static_cast<u32>(low) | static_cast<u32>(high) << 16;
}

__device__ __forceinline__ float warpSum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Decode GEMVs whose rows are split between SPLIT warps (K_SPLIT): each warp
// passes its lanes' N partial sums of the row; the row's N totals, added in
// split order (the same result every run), come back in every thread of the
// block. `partials` is the block's shared [rows][SPLIT][N]; every thread of
// the block calls this (it waits for the whole block).
template <int SPLIT, int N>
__device__ __forceinline__ void addSplitSums(float (*partials)[SPLIT][N], int rowInBlock, int split,
                                             const float (&sums)[N], float (&totals)[N]) {
  float warpTotals[N];
#pragma unroll
  for (int i = 0; i < N; ++i)
    warpTotals[i] = warpSum(sums[i]);
  if (threadIdx.x % 32 == 0)
#pragma unroll
    for (int i = 0; i < N; ++i)
      partials[rowInBlock][split][i] = warpTotals[i];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) {
    totals[i] = 0.0f;
#pragma unroll
    for (int part = 0; part < SPLIT; ++part)
      totals[i] += partials[rowInBlock][part][i];
  }
}

// The (value, index) of the warp's largest value, the lower index on ties;
// every lane gets the result.
__device__ __forceinline__ void warpArgmax(float &value, int &index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float otherValue = __shfl_xor_sync(0xffffffffu, value, offset);
    const int otherIndex = __shfl_xor_sync(0xffffffffu, index, offset);
    if (otherValue > value || (otherValue == value && otherIndex < index)) {
      value = otherValue;
      index = otherIndex;
    }
  }
}

// The (value, index) of the block's largest value, the lower index on ties,
// in thread 0 (the other threads hold partial results). `values` and
// `indices` hold one entry per warp; kThreads must be a multiple of 32.
template <int kThreads>
__device__ __forceinline__ void blockArgmax(float &value, int &index, float *values,
                                            int *indices) {
  warpArgmax(value, index);
  if (threadIdx.x % 32 == 0) {
    values[threadIdx.x / 32] = value;
    indices[threadIdx.x / 32] = index;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int w = 1; w < kThreads / 32; ++w)
      if (values[w] > value || (values[w] == value && indices[w] < index)) {
        value = values[w];
        index = indices[w];
      }
}

// Sum over the block; every thread gets the result. `scratch` holds one float
// per warp. kThreads must be a multiple of 32.
template <int kThreads>
__device__ __forceinline__ float blockSum(float value, float *scratch) {
  static_assert(kThreads % 32 == 0, "blocks are whole warps");
  constexpr int kWarps = kThreads / 32;
  value = warpSum(value);
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  if (lane == 0)
    scratch[warp] = value;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kWarps; ++i)
    total += scratch[i];
  __syncthreads(); // scratch may be reused by the caller
  return total;
}

// Maximum over the block, as blockSum.
template <int kThreads> __device__ __forceinline__ float blockMax(float value, float *scratch) {
  static_assert(kThreads % 32 == 0, "blocks are whole warps");
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  if (threadIdx.x % 32 == 0)
    scratch[threadIdx.x / 32] = value;
  __syncthreads();
  float maximum = scratch[0];
#pragma unroll
  for (int i = 1; i < kThreads / 32; ++i)
    maximum = fmaxf(maximum, scratch[i]);
  __syncthreads(); // scratch may be reused by the caller
  return maximum;
}

// Where the GEMV kernels find their vectors: blockIdx.y is a tile of
// `tileTokens` consecutive tokens (of `tokens`), blockIdx.z a slot of a
// batch of matrices stacked in the weight: slot s uses matrix s (MLA's k_b
// and v_b, one per head) or, with `matrixIds`, matrix matrixIds[token *
// gridDim.z + s] (routed experts: the ids the gate chose, read on the device,
// with tiles of one token; a negative id leaves the slot's y unwritten).
// GROUPED kernels (routed experts in prefill, their assignments grouped by
// expert) read tile blockIdx.y from `groups` instead: groups[blockIdx.y *
// (1 + TILE) ...] is its matrix (-1: none), then up to TILE assignments a
// (-1: none, at the end), each reading x row a / assignmentsPerX and writing
// y row a (grid z is 1). GATE_UP kernels (routed experts in decode, one
// token per block) multiply x with the gate rows in `weight` and the up rows
// at the same place in `upWeight`, and write silu(gate) * up. Strides count
// floats. Each weight read serves every token of the tile.
// runtime/cuda/KernelCatalog.h's GemvLayout mirrors it.
struct GemvLayout {
  int xTokenStride, yTokenStride, xHeadStride, yHeadStride, tokens;
  unsigned long long matrixIds; // const int *, or 0
  unsigned long long groups;    // const int *, or 0 (GROUPED kernels)
  int assignmentsPerX;
  unsigned long long upWeight; // GATE_UP kernels: the up matrices, stacked as the gate's
};

// The SiLU-gated product of the MLPs: silu(gate) * up, silu(x) = x / (1 + e^-x)
// as runtime/cpu/Math computes it.
__device__ __forceinline__ float siluMul(float gate, float up) {
  return gate / (1.0f + expf(-gate)) * up;
}

// Moves x and y to this block's first token and head; returns how many
// tokens the tile holds (0: nothing to do) and sets headRow to the index of
// the matrix's first row in the stacked weight rows.
__device__ __forceinline__ int gemvSelect(const float *__restrict__ &x, float *__restrict__ &y,
                                          const GemvLayout &layout, int rows, int tileTokens,
                                          long long &headRow) {
  const int firstToken = blockIdx.y * tileTokens;
  x += static_cast<long long>(firstToken) * layout.xTokenStride +
       static_cast<long long>(blockIdx.z) * layout.xHeadStride;
  y += static_cast<long long>(firstToken) * layout.yTokenStride +
       static_cast<long long>(blockIdx.z) * layout.yHeadStride;
  // Signed: an id of -1 must stay negative (int against unsigned would not).
  const long long matrix =
      layout.matrixIds
          ? static_cast<long long>(reinterpret_cast<const int *>(
                layout.matrixIds)[static_cast<long long>(firstToken) * gridDim.z + blockIdx.z])
          : static_cast<long long>(blockIdx.z);
  headRow = matrix * rows;
  if (matrix < 0) // a slot without a matrix (the expert cache's misses): nothing to do
    return 0;
  return min(tileTokens, layout.tokens - firstToken);
}

// A GROUPED block's tile: each assignment's x and y offsets (floats);
// returns how many assignments it holds.
template <int TILE>
__device__ __forceinline__ int gemvGroup(const GemvLayout &layout, int rows, long long &headRow,
                                         long long (&xOffset)[TILE], long long (&yOffset)[TILE]) {
  const int *group = reinterpret_cast<const int *>(layout.groups) + blockIdx.y * (1 + TILE);
  const long long matrix = group[0];
  headRow = matrix * rows;
  int count = 0;
#pragma unroll
  for (int t = 0; t < TILE; ++t) {
    const int assignment = group[1 + t];
    count += assignment >= 0;
    xOffset[t] = assignment >= 0 ? static_cast<long long>(assignment / layout.assignmentsPerX) *
                                       layout.xTokenStride
                                 : 0;
    yOffset[t] = assignment >= 0 ? static_cast<long long>(assignment) * layout.yTokenStride : 0;
  }
  return matrix < 0 ? 0 : count;
}

// In a GEMV kernel (x, y and layout in scope): declares `tokens`, the
// block's token count, and KT_GEMV_X(t) / KT_GEMV_Y(t), token t's vectors.
#if defined(GROUPED) && GROUPED
#define KT_GEMV_TOKENS(TILE, rows, headRow)                                                        \
  long long gemvXOffset[TILE], gemvYOffset[TILE];                                                  \
  const int tokens = kt::gemvGroup<TILE>(layout, rows, headRow, gemvXOffset, gemvYOffset)
#define KT_GEMV_X(t) (x + gemvXOffset[t])
#define KT_GEMV_Y(t) (y + gemvYOffset[t])
#else
#define KT_GEMV_TOKENS(TILE, rows, headRow)                                                        \
  const int tokens = kt::gemvSelect(x, y, layout, rows, TILE, headRow)
#define KT_GEMV_X(t) (x + static_cast<long long>(t) * layout.xTokenStride)
#define KT_GEMV_Y(t) (y + static_cast<long long>(t) * layout.yTokenStride)
#endif
#if defined(GATE_UP) && GATE_UP && defined(TOKEN_TILE) && TOKEN_TILE != 1
#error "GATE_UP kernels take one token per block"
#endif
// The sums a GEMV warp carries per row: gate and up in GATE_UP kernels.
#if defined(GATE_UP) && GATE_UP
constexpr int kGemvSumsPerRow = 2;
#else
constexpr int kGemvSumsPerRow = 1;
#endif

// The end of a GEMV row whose columns SPLIT warps of a block share (one
// token per block, ROWS rows per block): adds the warps' sums of the row
// (`sum`, and `upSum` in GATE_UP kernels) in split order, and the first
// split's warp stores y[index], the product or silu(gate) * up, from the
// lanes where `store` (lane 0 of a row that exists). Every thread of the
// block calls it.
template <int ROWS, int SPLIT>
__device__ __forceinline__ void storeSplitRow(float sum, [[maybe_unused]] float upSum,
                                              int rowInBlock, int split, bool store, float *y,
                                              int index) {
  __shared__ float partials[ROWS][SPLIT][kGemvSumsPerRow];
#if defined(GATE_UP) && GATE_UP
  const float mine[kGemvSumsPerRow] = {sum, upSum};
#else
  const float mine[kGemvSumsPerRow] = {sum};
#endif
  float totals[kGemvSumsPerRow];
  addSplitSums<SPLIT, kGemvSumsPerRow>(partials, rowInBlock, split, mine, totals);
  if (split == 0 && store)
#if defined(GATE_UP) && GATE_UP
    y[index] = siluMul(totals[0], totals[1]);
#else
    y[index] = totals[0];
#endif
}

// 16 bytes from a 2-byte aligned address as 4 little-endian words: four
// 4-byte loads where the address allows, else two 2-byte and three 4-byte
// loads (Q8_0's 34- and q6_K's 210-byte blocks keep only 2-byte alignment).
__device__ __forceinline__ void load16Bytes(const u8 *p, u32 (&words)[4]) {
  if ((reinterpret_cast<unsigned long long>(p) & 3) == 0) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      words[i] = reinterpret_cast<const u32 *>(p)[i];
  } else {
    const u32 first = *reinterpret_cast<const u16 *>(p),
              last = *reinterpret_cast<const u16 *>(p + 14);
    const u32 *middle = reinterpret_cast<const u32 *>(p + 2);
    const u32 m0 = middle[0], m1 = middle[1], m2 = middle[2];
    words[0] = first | m0 << 16;
    words[1] = m0 >> 16 | m1 << 16;
    words[2] = m1 >> 16 | m2 << 16;
    words[3] = m2 >> 16 | last << 16;
  }
}

// Byte i of 16 held as 4 little-endian words (i known when unrolled).
__device__ __forceinline__ u32 wordByte(const u32 (&words)[4], int i) {
  return (words[i / 4] >> (8 * (i % 4))) & 0xff;
}

// GGUF Q8_0 block: f16 scale d, then 32 signed bytes; value = d * q.
constexpr int kQ8_0BlockElements = 32;
constexpr int kQ8_0BlockBytes = 34;

// Dense Q8_0 matrices whose rows are whole runs of 8 blocks are kept on the
// GPU with split rows (runtime/quant's splitQ8_0Rows, at upload): a row's
// quants, then its f16 scales, the same bytes as the GGUF row, so that a lane
// reads 16 quants as one aligned load. Routed experts keep the GGUF layout.
constexpr int kQ8_0SplitRowValues = 256;

// Block b of a Q8_0 row of In values as u16 pairs, in either layout: GGUF
// blocks hold the scale, then the quants (q8_0QuantPairs in); split rows the
// quants alone, the row's scales after its quants.
template <bool Split> constexpr int q8_0QuantPairs = Split ? 0 : 1;
template <bool Split> __device__ __forceinline__ const u16 *q8_0BlockPairs(const u8 *row, int b) {
  return reinterpret_cast<const u16 *>(row + (Split ? kQ8_0BlockElements : kQ8_0BlockBytes) * b);
}
template <bool Split, int In>
__device__ __forceinline__ u16 q8_0ScaleBits(const u8 *row, int b, const u16 *pairs) {
  return Split ? reinterpret_cast<const u16 *>(row + In)[b] : pairs[0];
}

// Activations as three int8 planes (quantize_planes.cu): per 32 values d =
// max |x| / 127 and x = d (q1 + q2 / 254 + q3 / 254^2) to within 2e-7 of
// max |x|, about f32's own rounding, so that GEMVs take int8 dot products
// (dp4a) and still agree with f32 arithmetic.
constexpr float kPlaneStep = 254.0f;

// a . b of four signed bytes each, plus c.
__device__ __forceinline__ int dot4Bytes(int a, int b, int c) {
  int result;
  asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(result) : "r"(a), "r"(b), "r"(c));
  return result;
}

// GGML's get_scale_min_k4 (q4_K, q5_K): the 6-bit scale and minimum of group
// j from a super-block's 12 scale bytes, `byteAt(k)` giving byte k.
template <typename ByteAt>
__device__ __forceinline__ void kquantScaleMinOf(ByteAt byteAt, int j, float &scale,
                                                 float &minimum) {
  if (j < 4) {
    scale = static_cast<float>(byteAt(j) & 63);
    minimum = static_cast<float>(byteAt(j + 4) & 63);
  } else {
    scale = static_cast<float>((byteAt(j + 4) & 0xF) | ((byteAt(j - 4) >> 6) << 4));
    minimum = static_cast<float>((byteAt(j + 4) >> 4) | ((byteAt(j) >> 6) << 4));
  }
}
// The same from the scale bytes in memory.
__device__ __forceinline__ void kquantScaleMin(const u8 *scales, int j, float &scale,
                                               float &minimum) {
  kquantScaleMinOf([scales](int k) { return static_cast<u32>(scales[k]); }, j, scale, minimum);
}

} // namespace kt
