// Decoding GGUF rows to f32 inside the matrix products (kt_quant's
// dequantize, whose decoders are vectorized for the host).
#pragma once

#include "runtime/gguf/GgmlType.h"

#include <cstdint>

namespace kt::cpu {

// Decodes `elements` values (whole blocks) of `type` at `src` into `dst`.
// The type must be dequantizable (the executor checks it at load).
void decodeValues(gguf::GgmlType type, const uint8_t *src, float *dst, int64_t elements);

} // namespace kt::cpu
