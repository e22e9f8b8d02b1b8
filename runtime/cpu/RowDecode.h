// Decoding GGUF rows to f32 inside the matrix products: vectorizable versions
// of the common types' decoders, with the same results as kt_quant's
// reference dequantize() bit for bit; other types go to dequantize().
#pragma once

#include "runtime/gguf/GgmlType.h"

#include <cstdint>

namespace kt::cpu {

// Decodes `elements` values (whole blocks) of `type` at `src` into `dst`.
// The type must be dequantizable (the executor checks it at load).
void decodeValues(gguf::GgmlType type, const uint8_t *src, float *dst, int64_t elements);

} // namespace kt::cpu
