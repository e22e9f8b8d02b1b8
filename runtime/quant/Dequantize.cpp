// Dequantization to f32, bit-exact with GGML's dequantize_row_* reference
// functions: every product and sum below is evaluated in the same order and
// precision as there (the target is built with -ffp-contract=off so that no
// multiply-add gets fused).
#include "runtime/quant/Quant.h"
#include "runtime/quant/QuantInternal.h"

#include <cstring>
#include <string>

namespace kt::quant {
namespace detail {

Status checkElementCount(const gguf::GgmlTypeTraits &traits, int64_t elements,
                         const char *verb) {
  const std::string typeName(traits.name);
  if (elements < 0)
    return Status::error("Cannot " + std::string(verb) + " " +
                         std::to_string(elements) + " values of type " + typeName +
                         ": the element count is negative; pass the tensor's "
                         "element count.");
  if (elements % traits.blockSize != 0)
    return Status::error(
        "Cannot " + std::string(verb) + " " + std::to_string(elements) +
        " values of type " + typeName + ": the count is not a multiple of the " +
        std::to_string(traits.blockSize) +
        "-element block size; pass whole blocks (a row length that is a "
        "multiple of " +
        std::to_string(traits.blockSize) + ").");
  return Status::success();
}

} // namespace detail

namespace {

// The decoders are compiled for AVX-512 and AVX2 as well as the baseline and
// the best the host runs is picked at load: they decode weights inside the
// CPU executor's matrix products. Not under ASan/TSan, whose runtimes are not
// set up when the loader runs the clones' resolvers.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define KT_VECTOR_CLONES                                                                       \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KT_VECTOR_CLONES
#endif

using detail::halfToFloatInline;
using detail::loadHalf;
using detail::loadU16;
using detail::loadU32;
using detail::unpackScaleMinK4;

constexpr int64_t kQK = 32; // elements per legacy block (Q4_0 ... Q8_0)

void dequantizeF32(const uint8_t *src, float *dst, int64_t elements) {
  static_assert(sizeof(float) == 4, "f32 tensors hold 4-byte floats");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF stores f32 little-endian; a big-endian host needs a byte swap here."
#endif
  std::memcpy(dst, src, size_t(elements) * sizeof(float));
}

KT_VECTOR_CLONES void dequantizeF16(const uint8_t *src, float *dst, int64_t elements) {
  for (int64_t i = 0; i < elements; ++i)
    dst[i] = halfToFloatInline(loadU16(src + 2 * i));
}

KT_VECTOR_CLONES void dequantizeBF16(const uint8_t *src, float *dst, int64_t elements) {
  for (int64_t i = 0; i < elements; ++i)
    dst[i] = bf16ToFloat(loadU16(src + 2 * i));
}

// Q4_0 (18 bytes): f16 d, 16 bytes of nibbles. Element j is the low nibble of
// byte j, element j+16 the high nibble; value (q - 8) * d.
KT_VECTOR_CLONES void dequantizeQ4_0(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 18, dst += kQK) {
    const float d = loadHalf(src);
    const uint8_t *qs = src + 2;
    for (int j = 0; j < 16; ++j) {
      dst[j] = float((qs[j] & 0xF) - 8) * d;
      dst[j + 16] = float((qs[j] >> 4) - 8) * d;
    }
  }
}

// Q4_1 (20 bytes): f16 d, f16 m, 16 bytes of nibbles; value q * d + m.
KT_VECTOR_CLONES void dequantizeQ4_1(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 20, dst += kQK) {
    const float d = loadHalf(src);
    const float m = loadHalf(src + 2);
    const uint8_t *qs = src + 4;
    for (int j = 0; j < 16; ++j) {
      dst[j] = float(qs[j] & 0xF) * d + m;
      dst[j + 16] = float(qs[j] >> 4) * d + m;
    }
  }
}

// Q5_0 (22 bytes): f16 d, 32-bit fifth bits (bit j for element j), nibbles as
// Q4_0; value (q - 16) * d.
KT_VECTOR_CLONES void dequantizeQ5_0(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 22, dst += kQK) {
    const float d = loadHalf(src);
    const uint32_t highBits = loadU32(src + 2);
    const uint8_t *qs = src + 6;
    for (int j = 0; j < 16; ++j) {
      const int low = (qs[j] & 0xF) | int(((highBits >> j) & 1) << 4);
      const int high = (qs[j] >> 4) | int(((highBits >> (j + 16)) & 1) << 4);
      dst[j] = float(low - 16) * d;
      dst[j + 16] = float(high - 16) * d;
    }
  }
}

// Q5_1 (24 bytes): f16 d, f16 m, fifth bits, nibbles; value q * d + m.
KT_VECTOR_CLONES void dequantizeQ5_1(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 24, dst += kQK) {
    const float d = loadHalf(src);
    const float m = loadHalf(src + 2);
    const uint32_t highBits = loadU32(src + 4);
    const uint8_t *qs = src + 8;
    for (int j = 0; j < 16; ++j) {
      const int low = (qs[j] & 0xF) | int(((highBits >> j) & 1) << 4);
      const int high = (qs[j] >> 4) | int(((highBits >> (j + 16)) & 1) << 4);
      dst[j] = float(low) * d + m;
      dst[j + 16] = float(high) * d + m;
    }
  }
}

// Q8_0 (34 bytes): f16 d, 32 signed bytes; value q * d.
KT_VECTOR_CLONES void dequantizeQ8_0(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 34, dst += kQK) {
    const float d = loadHalf(src);
    const int8_t *qs = reinterpret_cast<const int8_t *>(src + 2);
    for (int j = 0; j < 32; ++j)
      dst[j] = float(qs[j]) * d;
  }
}

// Q2_K (84 bytes): 16 scale bytes (low nibble scale, high nibble min, one per
// 16 elements), 64 bytes of 2-bit quants, f16 d, f16 dmin. Each 128-element
// half uses 32 quant bytes; shift 2k selects elements 32k..32k+31 of it.
KT_VECTOR_CLONES void dequantizeQ2_K(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 84) {
    const uint8_t *scales = src;
    const uint8_t *q = src + 16;
    const float d = loadHalf(src + 80);
    const float dmin = loadHalf(src + 82);
    int scaleIndex = 0;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int part = 0; part < 2; ++part) {
          const uint8_t sc = scales[scaleIndex++];
          const float dl = d * float(sc & 0xF);
          const float ml = dmin * float(sc >> 4);
          const uint8_t *qp = q + 16 * part;
          for (int l = 0; l < 16; ++l)
            dst[l] = dl * float((qp[l] >> shift) & 3) - ml;
          dst += 16;
        }
      }
    }
  }
}

// Q3_K's 16 signed 6-bit scales: the low 4 bits are nibbles of bytes 0-7
// (scales 0-7 low nibbles, 8-15 high nibbles) and the top 2 bits are bit
// pairs of bytes 8-11 (scale k uses byte 8 + k % 4, pair k / 4). Biased by 32.
void unpackQ3_KScales(const uint8_t *packed, int scales[16]) {
  for (int k = 0; k < 16; ++k) {
    const int low = k < 8 ? (packed[k] & 0xF) : (packed[k - 8] >> 4);
    const int high = (packed[8 + k % 4] >> (2 * (k / 4))) & 3;
    scales[k] = (low | (high << 4)) - 32;
  }
}

// Q3_K (110 bytes): 32 bytes hmask (high bit, set means +0 and clear means
// -4), 64 bytes 2-bit quants, 12 bytes scales, f16 d. Layout of the low bits
// as Q2_K; hmask bit k of byte l belongs to quant byte l with shift 2k.
KT_VECTOR_CLONES void dequantizeQ3_K(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 110) {
    const uint8_t *hmask = src;
    const uint8_t *q = src + 32;
    int scales[16];
    unpackQ3_KScales(src + 96, scales);
    const float dAll = loadHalf(src + 108);
    int scaleIndex = 0;
    uint8_t maskBit = 1;
    for (int half = 0; half < 2; ++half, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, maskBit <<= 1) {
        for (int part = 0; part < 2; ++part) {
          const float dl = dAll * float(scales[scaleIndex++]);
          const uint8_t *qp = q + 16 * part;
          const uint8_t *hp = hmask + 16 * part;
          for (int l = 0; l < 16; ++l) {
            const int value = ((qp[l] >> shift) & 3) - ((hp[l] & maskBit) ? 0 : 4);
            dst[l] = dl * float(value);
          }
          dst += 16;
        }
      }
    }
  }
}

// Q4_K (144 bytes): f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes
// of nibbles. Each 64 elements use 32 bytes: low nibbles first, then high.
KT_VECTOR_CLONES void dequantizeQ4_K(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 144) {
    const float d = loadHalf(src);
    const float dmin = loadHalf(src + 2);
    const uint8_t *scales = src + 4;
    const uint8_t *q = src + 16;
    for (int pair = 0; pair < 4; ++pair, q += 32) {
      uint8_t sc, m;
      unpackScaleMinK4(2 * pair, scales, sc, m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      unpackScaleMinK4(2 * pair + 1, scales, sc, m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      for (int l = 0; l < 32; ++l)
        dst[l] = d1 * float(q[l] & 0xF) - m1;
      for (int l = 0; l < 32; ++l)
        dst[32 + l] = d2 * float(q[l] >> 4) - m2;
      dst += 64;
    }
  }
}

// Q5_K (176 bytes): as Q4_K plus 32 bytes of fifth bits after the scales;
// pair p of 64 elements uses bits 2p (low nibbles) and 2p+1 (high nibbles).
KT_VECTOR_CLONES void dequantizeQ5_K(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 176) {
    const float d = loadHalf(src);
    const float dmin = loadHalf(src + 2);
    const uint8_t *scales = src + 4;
    const uint8_t *qh = src + 16;
    const uint8_t *ql = src + 48;
    for (int pair = 0; pair < 4; ++pair, ql += 32) {
      uint8_t sc, m;
      unpackScaleMinK4(2 * pair, scales, sc, m);
      const float d1 = d * float(sc), m1 = dmin * float(m);
      unpackScaleMinK4(2 * pair + 1, scales, sc, m);
      const float d2 = d * float(sc), m2 = dmin * float(m);
      const int lowShift = 2 * pair, highShift = 2 * pair + 1;
      for (int l = 0; l < 32; ++l)
        dst[l] = d1 * float((ql[l] & 0xF) + (((qh[l] >> lowShift) & 1) << 4)) - m1;
      for (int l = 0; l < 32; ++l)
        dst[32 + l] = d2 * float((ql[l] >> 4) + (((qh[l] >> highShift) & 1) << 4)) - m2;
      dst += 64;
    }
  }
}

// Q6_K (210 bytes): 128 bytes low nibbles, 64 bytes of 2-bit high parts, 16
// signed 8-bit scales (one per 16 elements), f16 d. Per 128 elements: 64 ql
// bytes and 32 qh bytes; quarter k of it takes nibble (k / 2) of ql byte
// l + 32 * (k % 2) and bit pair k of qh byte l. Value d * scale * (q - 32).
KT_VECTOR_CLONES void dequantizeQ6_K(const uint8_t *src, float *dst, int64_t blocks) {
  for (int64_t b = 0; b < blocks; ++b, src += 210) {
    const uint8_t *ql = src;
    const uint8_t *qh = src + 128;
    const int8_t *scales = reinterpret_cast<const int8_t *>(src + 192);
    const float d = loadHalf(src + 208);
    for (int half = 0; half < 2; ++half, ql += 64, qh += 32, scales += 8, dst += 128) {
      for (int quarter = 0; quarter < 4; ++quarter) {
        const uint8_t *qlPart = ql + 32 * (quarter % 2);
        const int nibbleShift = 4 * (quarter / 2);
        const int highShift = 2 * quarter;
        for (int group = 0; group < 2; ++group) {
          const float dl = d * float(scales[2 * quarter + group]);
          float *out = dst + 32 * quarter + 16 * group;
          for (int l = 0; l < 16; ++l) {
            const int index = 16 * group + l;
            const int value = (((qlPart[index] >> nibbleShift) & 0xF) |
                               (((qh[index] >> highShift) & 3) << 4)) -
                              32;
            out[l] = dl * float(value);
          }
        }
      }
    }
  }
}

} // namespace

Status dequantize(GgmlType type, const void *src, float *dst, int64_t elements) {
  const gguf::GgmlTypeTraits &traits = gguf::ggmlTypeTraits(type);
  if (!traits.dequantizable)
    return Status::error("Cannot dequantize tensor data of type " +
                         std::string(traits.name) +
                         ": this project does not support that type yet; "
                         "requantize the model to a supported type (f32, f16, "
                         "bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K ... q6_K).");
  if (Status status = detail::checkElementCount(traits, elements, "dequantize");
      !status.ok())
    return status;
  if (elements == 0)
    return Status::success();
  if (src == nullptr || dst == nullptr)
    return Status::error("Cannot dequantize " + std::to_string(elements) +
                         " values of type " + std::string(traits.name) +
                         ": the source or destination buffer is null.");

  const auto *bytes = static_cast<const uint8_t *>(src);
  const int64_t blocks = elements / traits.blockSize;
  switch (type) {
  case GgmlType::F32: dequantizeF32(bytes, dst, elements); break;
  case GgmlType::F16: dequantizeF16(bytes, dst, elements); break;
  case GgmlType::BF16: dequantizeBF16(bytes, dst, elements); break;
  case GgmlType::Q4_0: dequantizeQ4_0(bytes, dst, blocks); break;
  case GgmlType::Q4_1: dequantizeQ4_1(bytes, dst, blocks); break;
  case GgmlType::Q5_0: dequantizeQ5_0(bytes, dst, blocks); break;
  case GgmlType::Q5_1: dequantizeQ5_1(bytes, dst, blocks); break;
  case GgmlType::Q8_0: dequantizeQ8_0(bytes, dst, blocks); break;
  case GgmlType::Q2_K: dequantizeQ2_K(bytes, dst, blocks); break;
  case GgmlType::Q3_K: dequantizeQ3_K(bytes, dst, blocks); break;
  case GgmlType::Q4_K: dequantizeQ4_K(bytes, dst, blocks); break;
  case GgmlType::Q5_K: dequantizeQ5_K(bytes, dst, blocks); break;
  case GgmlType::Q6_K: dequantizeQ6_K(bytes, dst, blocks); break;
  default:
    return Status::error("Cannot dequantize tensor data of type " +
                         std::string(traits.name) +
                         ": the type table marks it dequantizable but no decoder "
                         "exists; this is a bug in runtime/gguf/GgmlType.cpp.");
  }
  return Status::success();
}

} // namespace kt::quant
