// f16 / bf16 conversions checked against exact arithmetic, independently of
// the GGML fixtures.
#include "runtime/quant/Quant.h"
#include "test/unit/quant/TestUtil.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace kt::quant {
namespace {

using test::bitsOf;
using test::fromBits;

TEST(HalfTest, EveryHalfDecodesToItsExactValue) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const uint32_t exponent = (h >> 10) & 0x1f;
    const uint32_t mantissa = h & 0x3ff;
    const bool negative = (h & 0x8000) != 0;
    const float value = halfToFloat(uint16_t(h));
    if (exponent == 0x1f && mantissa != 0) {
      // NaN: sign and payload kept, quiet bit set.
      ASSERT_TRUE(std::isnan(value)) << std::hex << h;
      ASSERT_EQ(bitsOf(value), (negative ? 0x80000000u : 0u) | 0x7fc00000u | (mantissa << 13))
          << std::hex << h;
      continue;
    }
    double expected;
    if (exponent == 0x1f)
      expected = std::numeric_limits<double>::infinity();
    else if (exponent == 0)
      expected = std::ldexp(double(mantissa), -24);
    else
      expected = std::ldexp(double(mantissa + 1024), int(exponent) - 25);
    if (negative)
      expected = -expected;
    ASSERT_EQ(double(value), expected) << std::hex << h;
    ASSERT_EQ(std::signbit(value), negative) << std::hex << h;
  }
}

TEST(HalfTest, EveryNonNanHalfRoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const bool isNan = ((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0;
    if (!isNan) {
      ASSERT_EQ(floatToHalf(halfToFloat(uint16_t(h))), h) << std::hex << h;
    }
  }
}

// For each pair of neighbouring positive halves (subnormals included, and the
// last pair being 65504 / infinity) the midpoint must round to the even one
// and the floats just beside it to the nearer one.
TEST(HalfTest, RoundsToNearestWithTiesToEven) {
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    const double low = halfToFloat(uint16_t(h));
    const double high =
        h + 1 == 0x7c00 ? 65536.0 : double(halfToFloat(uint16_t(h + 1))); // 2^16 stands in for inf
    const float midpoint = float((low + high) / 2); // exact: needs only 12 bits
    ASSERT_EQ(double(midpoint), (low + high) / 2);
    const uint32_t even = (h & 1) ? h + 1 : h;
    ASSERT_EQ(floatToHalf(midpoint), even) << std::hex << h;
    ASSERT_EQ(floatToHalf(std::nextafter(midpoint, 0.0f)), h) << std::hex << h;
    ASSERT_EQ(floatToHalf(std::nextafter(midpoint, 1e9f)), h + 1) << std::hex << h;
    ASSERT_EQ(floatToHalf(-midpoint), even | 0x8000) << std::hex << h;
  }
}

TEST(HalfTest, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(floatToHalf(inf), 0x7c00);
  EXPECT_EQ(floatToHalf(-inf), 0xfc00);
  EXPECT_EQ(floatToHalf(1e10f), 0x7c00);
  EXPECT_EQ(floatToHalf(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(floatToHalf(65519.996f), 0x7bff);
  EXPECT_EQ(floatToHalf(65520.0f), 0x7c00);
  // GGML maps every NaN to the canonical quiet NaN, keeping only the sign.
  EXPECT_EQ(floatToHalf(std::numeric_limits<float>::quiet_NaN()), 0x7e00);
  EXPECT_EQ(floatToHalf(fromBits(0x7f800001)), 0x7e00);
  EXPECT_EQ(floatToHalf(fromBits(0xffc12345)), 0xfe00);
  EXPECT_EQ(floatToHalf(0.0f), 0x0000);
  EXPECT_EQ(floatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(floatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(floatToHalf(-2.0f), 0xc000);
  // Subnormal halves and underflow.
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -25)), 0x0000);          // tie to even zero
  EXPECT_EQ(floatToHalf(std::ldexp(3.0f, -25)), 0x0002);          // tie to even 2
  EXPECT_EQ(floatToHalf(std::ldexp(1.0f, -14)), 0x0400);          // smallest normal
  EXPECT_EQ(floatToHalf(std::ldexp(1023.5f, -24)), 0x0400);       // rounds up into normals
  EXPECT_EQ(floatToHalf(1e-30f), 0x0000);
  EXPECT_EQ(floatToHalf(-1e-30f), 0x8000);
  EXPECT_EQ(floatToHalf(fromBits(0x00000001)), 0x0000);           // f32 subnormal
  // Ties between normal halves.
  EXPECT_EQ(floatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);   // 1 + half ulp -> 1
  EXPECT_EQ(floatToHalf(1.0f + std::ldexp(3.0f, -11)), 0x3c02);   // odd neighbour -> even
  EXPECT_TRUE(std::isinf(halfToFloat(0x7c00)) && halfToFloat(0x7c00) > 0);
  EXPECT_TRUE(std::isinf(halfToFloat(0xfc00)) && halfToFloat(0xfc00) < 0);
  EXPECT_EQ(halfToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(halfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(bitsOf(halfToFloat(0x7c01)), 0x7fc02000u); // signalling NaN comes out quiet
}

TEST(Bf16Test, DecodingShiftsBitsIntoTheHighHalf) {
  for (uint32_t h = 0; h <= 0xffff; ++h)
    ASSERT_EQ(bitsOf(bf16ToFloat(uint16_t(h))), h << 16) << std::hex << h;
}

TEST(Bf16Test, EveryNonNanBf16RoundTrips) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const bool isNan = (h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0;
    if (!isNan) {
      ASSERT_EQ(floatToBf16(bf16ToFloat(uint16_t(h))), h) << std::hex << h;
    }
  }
}

TEST(Bf16Test, RoundsToNearestWithTiesToEvenAndQuietsNans) {
  EXPECT_EQ(floatToBf16(fromBits(0x3f808000)), 0x3f80); // tie, even below
  EXPECT_EQ(floatToBf16(fromBits(0x3f818000)), 0x3f82); // tie, even above
  EXPECT_EQ(floatToBf16(fromBits(0x3f808001)), 0x3f81); // just above the tie
  EXPECT_EQ(floatToBf16(fromBits(0x3f807fff)), 0x3f80); // just below the tie
  EXPECT_EQ(floatToBf16(fromBits(0xbf818000)), 0xbf82); // negative tie
  EXPECT_EQ(floatToBf16(fromBits(0x00012345)), 0x0001); // subnormals are not flushed
  EXPECT_EQ(floatToBf16(fromBits(0x00008000)), 0x0000); // subnormal tie to even zero
  EXPECT_EQ(floatToBf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(floatToBf16(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(floatToBf16(std::numeric_limits<float>::max()), 0x7f80); // rounds up to inf
  EXPECT_EQ(floatToBf16(fromBits(0x7f7f7fff)), 0x7f7f);
  // NaNs keep sign and top payload bits and are forced quiet; a NaN whose
  // payload lies only in the dropped bits must not become infinity.
  EXPECT_EQ(floatToBf16(fromBits(0x7f800001)), 0x7fc0);
  EXPECT_EQ(floatToBf16(fromBits(0xff800001)), 0xffc0);
  EXPECT_EQ(floatToBf16(fromBits(0x7fc12345)), 0x7fc1);
  EXPECT_EQ(floatToBf16(fromBits(0x7f81ffff)), 0x7fc1);
}

} // namespace
} // namespace kt::quant
