// Built with -ffp-contract=off: every product and difference rounds on its
// own, as in the reference decoders, so results stay bit-identical.
#include "runtime/cpu/RowDecode.h"

#include "runtime/quant/Quant.h"

#include <cassert>
#include <cstring>

namespace kt::cpu {

// Not under ASan/TSan: their runtimes are not set up yet when the loader runs
// the clones' resolvers.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define KT_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KT_VECTOR_CLONES
#endif

namespace {

inline uint16_t loadU16(const uint8_t *p) { return uint16_t(p[0] | (p[1] << 8)); }

inline float fromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// IEEE half to float; normal numbers inline, the rest by the reference.
inline float halfToFloat(uint16_t h) {
  const uint32_t exponent = (h >> 10) & 0x1f;
  if (exponent == 0 || exponent == 0x1f)
    return quant::halfToFloat(h);
  return fromBits((uint32_t(h & 0x8000) << 16) | ((exponent + (127 - 15)) << 23) |
                  (uint32_t(h & 0x3ff) << 13));
}

// Q4_K's 6-bit (scale, min) pair `index` of 8 packed in 12 bytes.
inline void scaleMinK4(int index, const uint8_t *packed, uint8_t &scale, uint8_t &min) {
  if (index < 4) {
    scale = packed[index] & 63;
    min = packed[index + 4] & 63;
  } else {
    scale = uint8_t((packed[index + 4] & 0xF) | ((packed[index - 4] >> 6) << 4));
    min = uint8_t((packed[index + 4] >> 4) | ((packed[index] >> 6) << 4));
  }
}

KT_VECTOR_CLONES void decodeQ8_0(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, dst += 32) {
    const float d = halfToFloat(loadU16(src));
    const int8_t *qs = reinterpret_cast<const int8_t *>(src + 2);
    for (int j = 0; j < 32; ++j)
      dst[j] = float(qs[j]) * d;
  }
}

KT_VECTOR_CLONES void decodeQ4_K(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 144) {
    const float d = halfToFloat(loadU16(src));
    const float dmin = halfToFloat(loadU16(src + 2));
    const uint8_t *scales = src + 4;
    const uint8_t *q = src + 16;
    for (int pair = 0; pair < 4; ++pair, q += 32, dst += 64) {
      uint8_t sc, m;
      scaleMinK4(2 * pair, scales, sc, m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      scaleMinK4(2 * pair + 1, scales, sc, m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      for (int l = 0; l < 32; ++l)
        dst[l] = d1 * float(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l)
        dst[32 + l] = d2 * float(q[l] >> 4) - m2;
    }
  }
}

KT_VECTOR_CLONES void decodeQ6_K(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 210) {
    const uint8_t *ql = src;
    const uint8_t *qh = src + 128;
    const int8_t *scales = reinterpret_cast<const int8_t *>(src + 192);
    const float d = halfToFloat(loadU16(src + 208));
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, scales += 8, dst += 128) {
      for (int quarter = 0; quarter < 4; ++quarter) {
        const uint8_t *qlPart = ql + 32 * (quarter % 2);
        const int nibbleShift = 4 * (quarter / 2);
        const int highShift = 2 * quarter;
        for (int group = 0; group < 2; ++group) {
          const float dl = d * float(scales[2 * quarter + group]);
          float *out = dst + 32 * quarter + 16 * group;
          const uint8_t *low = qlPart + 16 * group, *high = qh + 16 * group;
          for (int l = 0; l < 16; ++l) {
            const int value =
                (((low[l] >> nibbleShift) & 0xF) | (((high[l] >> highShift) & 3) << 4)) - 32;
            out[l] = dl * float(value);
          }
        }
      }
    }
  }
}

KT_VECTOR_CLONES void decodeF16(const uint8_t *src, float *dst, int64_t elements) {
  for (int64_t i = 0; i < elements; ++i)
    dst[i] = halfToFloat(loadU16(src + 2 * i));
}

KT_VECTOR_CLONES void decodeBF16(const uint8_t *src, float *dst, int64_t elements) {
  for (int64_t i = 0; i < elements; ++i)
    dst[i] = fromBits(uint32_t(loadU16(src + 2 * i)) << 16);
}

} // namespace

void decodeValues(gguf::GgmlType type, const uint8_t *src, float *dst, int64_t elements) {
  switch (type) {
  case gguf::GgmlType::F32: std::memcpy(dst, src, size_t(elements) * sizeof(float)); return;
  case gguf::GgmlType::F16: decodeF16(src, dst, elements); return;
  case gguf::GgmlType::BF16: decodeBF16(src, dst, elements); return;
  case gguf::GgmlType::Q8_0: decodeQ8_0(src, dst, elements / 32); return;
  case gguf::GgmlType::Q4_K: decodeQ4_K(src, dst, elements / 256); return;
  case gguf::GgmlType::Q6_K: decodeQ6_K(src, dst, elements / 256); return;
  default: {
    Status status = quant::dequantize(type, src, dst, elements);
    assert(status.ok());
    (void)status;
  }
  }
}

} // namespace kt::cpu
