// Helpers shared by the quantization sources; not part of the public API.
#pragma once

#include "runtime/quant/Quant.h"

#include <cstdint>
#include <cstring>
#include <string>

namespace kt::quant::detail {

// Block fields are little-endian on disk; reading bytewise keeps the code
// independent of the host's byte order.
inline uint16_t loadU16(const uint8_t *p) { return uint16_t(p[0] | (p[1] << 8)); }
inline uint32_t loadU32(const uint8_t *p) {
  return uint32_t(p[0]) | (uint32_t(p[1]) << 8) | (uint32_t(p[2]) << 16) |
         (uint32_t(p[3]) << 24);
}
inline void storeU16(uint8_t *p, uint16_t v) {
  p[0] = uint8_t(v);
  p[1] = uint8_t(v >> 8);
}
// IEEE half to float with normal numbers inline (so loops over halves
// vectorize) and the rest by halfToFloat; the same result for every input.
inline float halfToFloatInline(uint16_t h) {
  const uint32_t exponent = (h >> 10) & 0x1f;
  if (exponent == 0 || exponent == 0x1f)
    return halfToFloat(h);
  const uint32_t bits = (uint32_t(h & 0x8000) << 16) | ((exponent + (127 - 15)) << 23) |
                        (uint32_t(h & 0x3ff) << 13);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float loadHalf(const uint8_t *p) { return halfToFloatInline(loadU16(p)); }
inline void storeHalf(uint8_t *p, float v) { storeU16(p, floatToHalf(v)); }

// Q4_K and Q5_K keep eight 6-bit (scale, min) pairs in 12 bytes: pairs 0-3 in
// the low 6 bits of bytes 0-3 (scales) and 4-7 (mins); pairs 4-7 have their
// low 4 bits in the nibbles of bytes 8-11 and their top 2 bits in the spare
// top bits of bytes 0-7.
inline void unpackScaleMinK4(int index, const uint8_t *packed, uint8_t &scale,
                             uint8_t &min) {
  if (index < 4) {
    scale = packed[index] & 63;
    min = packed[index + 4] & 63;
  } else {
    scale = uint8_t((packed[index + 4] & 0xF) | ((packed[index - 4] >> 6) << 4));
    min = uint8_t((packed[index + 4] >> 4) | ((packed[index] >> 6) << 4));
  }
}

// Size checks shared by quantize() and dequantize(); `verb` is "quantize" or
// "dequantize".
Status checkElementCount(const gguf::GgmlTypeTraits &traits, int64_t elements,
                         const char *verb);

} // namespace kt::quant::detail
