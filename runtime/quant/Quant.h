// Conversion between f32 and GGML's storage types, bit-exact with GGML's
// reference (scalar) definitions.
#pragma once

#include "runtime/gguf/GgmlType.h"
#include "runtime/support/Status.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace kt::quant {

using gguf::GgmlType;

// Decodes `elements` values (a multiple of the type's block size) from `src`
// into `dst`. Fails for types whose traits say dequantizable == false.
// Output is bit-identical to GGML's dequantize_row_* (f16/bf16/f32: GGML's
// row conversions). `src` holds ggmlRowBytes(type, elements) bytes; it needs
// no alignment. Null buffers are an error unless `elements` is 0.
Status dequantize(GgmlType type, const void *src, float *dst, int64_t elements);

// Encodes `elements` values (a multiple of the block size) into `dst`, which
// holds ggmlRowBytes(type, elements) bytes. Fails for types whose traits say
// quantizable == false. Same output as GGML's reference quantizer
// (quantize_row_*_ref) for the same input. Block formats (q8_0, q4_K, ...)
// reject NaN and infinite inputs, which they cannot encode; f32, f16 and bf16
// accept every value.
Status quantize(GgmlType type, const float *src, void *dst, int64_t elements);

// IEEE half and bfloat16 conversions as GGML does them (round to nearest even;
// bf16 keeps NaNs quiet).
float halfToFloat(uint16_t h);
uint16_t floatToHalf(float f);
float bf16ToFloat(uint16_t h);
// Inline: packing activations for the CPU's tile kernels calls it per value.
inline uint16_t floatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u)
    return uint16_t((bits >> 16) | 0x40); // keep sign and payload, force quiet
  // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even;
  // finite values past the largest bf16 carry into infinity.
  return uint16_t((bits + 0x7fffu + ((bits >> 16) & 1)) >> 16);
}

// FP8 e4m3 as DeepSeek's checkpoints and PyTorch's float8_e4m3fn store it:
// 1 sign, 4 exponent (bias 7) and 3 mantissa bits, subnormals, no
// infinities, NaN = 0x7f/0xff, largest finite 448. Encoding rounds to
// nearest even and saturates to +-448 (NaN stays NaN).
float fp8E4m3ToFloat(uint8_t bits);
uint8_t floatToFp8E4m3(float f);

// Dense Q8_0 matrices whose rows are whole runs of 8 blocks (a multiple of
// kQ8_0SplitRowValues values) go to the GPU with split rows
// (kernels/common.cuh): each row's int8 quants in order, then its f16
// scales, the same bytes as the GGUF row rearranged, so that the GPU reads
// 16 quants as one aligned 16-byte load.
constexpr int64_t kQ8_0SplitRowValues = 256;
inline bool q8_0RowsSplit(GgmlType type, int64_t cols) {
  return type == GgmlType::Q8_0 && cols > 0 && cols % kQ8_0SplitRowValues == 0;
}
// `rows` GGUF Q8_0 rows of `cols` values from `gguf` into `split` (as many
// bytes; the buffers do not overlap). Fails where q8_0RowsSplit does not hold.
Status splitQ8_0Rows(const void *gguf, void *split, int64_t rows, int64_t cols);

} // namespace kt::quant
