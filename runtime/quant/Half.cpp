// IEEE binary16 and bfloat16 conversions, bit-exact with GGML's scalar
// definitions (ggml-impl.h), including how NaNs come out.
#include "runtime/quant/Quant.h"

#include <cmath>
#include <limits>

#include <cstring>

namespace kt::quant {
namespace {

uint32_t floatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

float floatFromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Shifts `value` right by `shift` (1..31) rounding to nearest, ties to even.
uint32_t shiftRightRoundingToEven(uint32_t value, unsigned shift) {
  const uint32_t truncated = value >> shift;
  const uint32_t remainder = value & ((uint32_t(1) << shift) - 1);
  const uint32_t halfway = uint32_t(1) << (shift - 1);
  if (remainder > halfway || (remainder == halfway && (truncated & 1)))
    return truncated + 1;
  return truncated;
}

} // namespace

float halfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exponent = (h >> 10) & 0x1f;
  const uint32_t mantissa = h & 0x3ff;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24 is exact in f32.
    const float magnitude = float(mantissa) * (1.0f / 16777216.0f);
    return floatFromBits(sign | floatBits(magnitude));
  }
  if (exponent == 0x1f) {
    // GGML's conversion passes NaNs through an f32 multiply, which quiets them
    // and keeps the payload.
    const uint32_t quietBit = mantissa ? 0x00400000u : 0u;
    return floatFromBits(sign | 0x7f800000u | (mantissa << 13) | quietBit);
  }
  return floatFromBits(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
}

uint16_t floatToHalf(float f) {
  const uint32_t bits = floatBits(f);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u)
    return sign | 0x7e00; // GGML turns every NaN into this one quiet NaN.
  // 65520 is halfway between 65504 (largest half, odd mantissa) and 2^16, so it
  // and everything above round to infinity.
  if (magnitude >= 0x477ff000u)
    return sign | 0x7c00;
  if (magnitude >= 0x38800000u) {
    // Normal half: rebias the exponent and round away 13 mantissa bits. A
    // mantissa carry correctly bumps the exponent.
    const uint32_t rebiased = magnitude - (uint32_t(127 - 15) << 23);
    return sign | uint16_t(shiftRightRoundingToEven(rebiased, 13));
  }
  // Subnormal half (or zero): the result is round(value * 2^24).
  const uint32_t exponent = magnitude >> 23;
  if (exponent < 102) // value < 2^-25: rounds to zero
    return sign;
  const uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  return sign | uint16_t(shiftRightRoundingToEven(significand, 126 - exponent));
}

float bf16ToFloat(uint16_t h) { return floatFromBits(uint32_t(h) << 16); }

float fp8E4m3ToFloat(uint8_t bits) {
  const int exponent = (bits >> 3) & 15, mantissa = bits & 7;
  const float sign = (bits & 0x80) ? -1.0f : 1.0f;
  if (exponent == 15 && mantissa == 7)
    return std::numeric_limits<float>::quiet_NaN();
  if (exponent == 0)
    return sign * std::ldexp(static_cast<float>(mantissa), -9); // subnormal: m/8 * 2^-6
  return sign * std::ldexp(1.0f + static_cast<float>(mantissa) / 8.0f, exponent - 7);
}

uint8_t floatToFp8E4m3(float f) {
  if (std::isnan(f))
    return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float magnitude = std::fabs(f);
  // The 127 finite magnitudes, increasing with their code: nearest wins,
  // a tie goes to the even code (even mantissa).
  uint8_t low = 0, high = 0x7e;
  if (magnitude >= fp8E4m3ToFloat(high))
    return sign | high;
  while (high - low > 1) {
    const uint8_t mid = static_cast<uint8_t>((low + high) / 2);
    (fp8E4m3ToFloat(mid) <= magnitude ? low : high) = mid;
  }
  const float below = fp8E4m3ToFloat(low), above = fp8E4m3ToFloat(high);
  const float toBelow = magnitude - below, toAbove = above - magnitude;
  const uint8_t code = toBelow < toAbove ? low : toAbove < toBelow ? high : (low % 2 == 0 ? low : high);
  return sign | code;
}

} // namespace kt::quant
