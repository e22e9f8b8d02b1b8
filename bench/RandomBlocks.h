// Random quantized weights for the benchmarks: random bytes whose f16 block
// scales are set to small finite values, so every block decodes to finite
// numbers (never zeros, which would hide work or run faster than real data).
#pragma once

#include "runtime/gguf/GgmlType.h"

#include <cstdint>
#include <cstring>
#include <vector>

namespace kt::bench {

// Offsets of the f16 scales within a block of `type` (q8_0, q4_K, q5_K, q6_K).
inline std::vector<int> halfScaleOffsets(gguf::GgmlType type) {
  switch (type) {
  case gguf::GgmlType::Q8_0: return {0};
  case gguf::GgmlType::Q4_K:
  case gguf::GgmlType::Q5_K: return {0, 2};
  case gguf::GgmlType::Q6_K: return {208};
  default: return {};
  }
}

// Sets every block's f16 scales in `bytes` bytes of `type` blocks to `value`
// (an f16 bit pattern; `vary` adds a slowly changing offset per block).
inline void makeScalesFinite(gguf::GgmlType type, uint8_t *data, size_t bytes, uint16_t value,
                             bool vary = false) {
  const size_t blockBytes = static_cast<size_t>(gguf::ggmlTypeTraits(type).blockBytes);
  const std::vector<int> offsets = halfScaleOffsets(type);
  for (size_t block = 0; block + blockBytes <= bytes; block += blockBytes)
    for (int offset : offsets) {
      const uint16_t scale = vary ? static_cast<uint16_t>(value + (block / 64) % 0x400) : value;
      std::memcpy(data + block + offset, &scale, 2);
    }
}

} // namespace kt::bench
