// Embedding lookup: out[t] = table[tokens[t]] as f32, for a table of VOCAB rows
// of HIDDEN values stored as f32, f16, bf16 or Q8_0. One block per token.
// Specialization defines:
//   HIDDEN         row length (a multiple of 32 for Q8_0)
//   VOCAB          rows in the table
//   TABLE_TYPE     0 = f32, 1 = f16, 2 = bf16, 3 = q8_0
//   BLOCK_THREADS  threads per block
// A token id outside [0, VOCAB) yields a row of NaNs (the host validates ids;
// NaNs make a missed check visible instead of reading out of bounds).
#include "common.cuh"

#ifndef HIDDEN
#error "embedding needs HIDDEN"
#endif
#ifndef VOCAB
#error "embedding needs VOCAB"
#endif
#ifndef TABLE_TYPE
#error "embedding needs TABLE_TYPE"
#endif
#ifndef BLOCK_THREADS
#define BLOCK_THREADS 256
#endif

#if TABLE_TYPE == 0
constexpr long long kRowBytes = HIDDEN * 4LL;
#elif TABLE_TYPE == 1 || TABLE_TYPE == 2
constexpr long long kRowBytes = HIDDEN * 2LL;
#elif TABLE_TYPE == 3
static_assert(HIDDEN % kt::kQ8_0BlockElements == 0, "Q8_0 rows are whole blocks");
constexpr long long kRowBytes = HIDDEN / kt::kQ8_0BlockElements * kt::kQ8_0BlockBytes;
#else
#error "TABLE_TYPE must be 0 (f32), 1 (f16), 2 (bf16) or 3 (q8_0)"
#endif

__device__ __forceinline__ float loadElement(const kt::u8 *row, int i) {
#if TABLE_TYPE == 0
  return reinterpret_cast<const float *>(row)[i];
#elif TABLE_TYPE == 1
  return kt::halfToFloat(reinterpret_cast<const kt::u16 *>(row)[i]);
#elif TABLE_TYPE == 2
  return kt::bf16ToFloat(reinterpret_cast<const kt::u16 *>(row)[i]);
#else
  const kt::u8 *block = row + (i / kt::kQ8_0BlockElements) * kt::kQ8_0BlockBytes;
  // Blocks are 34 bytes, so the scale is 2-byte aligned.
  const float scale = kt::halfToFloat(*reinterpret_cast<const kt::u16 *>(block));
  const kt::i8 quant = static_cast<kt::i8>(block[2 + i % kt::kQ8_0BlockElements]);
  return scale * static_cast<float>(quant);
#endif
}

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
embedding(const void *__restrict__ table, const int *__restrict__ tokens,
          float *__restrict__ out, int count) {
  const int t = blockIdx.x;
  if (t >= count)
    return;
  const int token = tokens[t];
  float *dst = out + static_cast<long long>(t) * HIDDEN;
  if (token < 0 || token >= VOCAB) {
    for (int i = threadIdx.x; i < HIDDEN; i += BLOCK_THREADS)
      dst[i] = __int_as_float(0x7fc00000);
    return;
  }
  const kt::u8 *row = static_cast<const kt::u8 *>(table) + token * kRowBytes;
  for (int i = threadIdx.x; i < HIDDEN; i += BLOCK_THREADS)
    dst[i] = loadElement(row, i);
}
