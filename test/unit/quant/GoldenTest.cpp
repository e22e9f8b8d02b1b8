// Bit-for-bit comparison with outputs of GGML's reference functions, stored in
// golden/ (README.md there says how they were made).
#include "runtime/quant/Quant.h"
#include "test/unit/quant/TestUtil.h"

#include <gtest/gtest.h>

namespace kt::quant {
namespace {

using gguf::GgmlType;
using test::bytesToFloats;
using test::readGolden;

struct GoldenType {
  GgmlType type;
  const char *name;
};

std::string goldenName(const testing::TestParamInfo<GoldenType> &info) {
  return info.param.name;
}

class DequantizeGoldenTest : public testing::TestWithParam<GoldenType> {};

TEST_P(DequantizeGoldenTest, MatchesGgmlBitForBit) {
  const GoldenType &golden = GetParam();
  const std::vector<uint8_t> blocks = readGolden(std::string("dequant_") + golden.name + ".bin");
  const std::vector<uint8_t> expectedBytes =
      readGolden(std::string("dequant_") + golden.name + ".f32");
  ASSERT_FALSE(blocks.empty());
  const int64_t elements = int64_t(expectedBytes.size() / sizeof(float));
  ASSERT_EQ(gguf::ggmlRowBytes(golden.type, elements), blocks.size());

  std::vector<float> actual(size_t(elements), -12345.0f);
  ASSERT_TRUE(dequantize(golden.type, blocks.data(), actual.data(), elements).ok());

  const std::vector<float> expected = bytesToFloats(expectedBytes);
  const int64_t blockSize = gguf::ggmlTypeTraits(golden.type).blockSize;
  int mismatches = 0;
  for (int64_t i = 0; i < elements && mismatches < 10; ++i) {
    if (test::bitsOf(actual[size_t(i)]) != test::bitsOf(expected[size_t(i)])) {
      ++mismatches;
      ADD_FAILURE() << golden.name << " element " << i << " (block " << i / blockSize
                    << ", offset " << i % blockSize << "): got " << actual[size_t(i)]
                    << ", GGML gives " << expected[size_t(i)];
    }
  }
  EXPECT_EQ(0, std::memcmp(actual.data(), expected.data(), expectedBytes.size()));
}

INSTANTIATE_TEST_SUITE_P(
    AllDequantizableTypes, DequantizeGoldenTest,
    testing::Values(GoldenType{GgmlType::F32, "f32"}, GoldenType{GgmlType::F16, "f16"},
                    GoldenType{GgmlType::BF16, "bf16"}, GoldenType{GgmlType::Q8_0, "q8_0"},
                    GoldenType{GgmlType::Q4_0, "q4_0"}, GoldenType{GgmlType::Q4_1, "q4_1"},
                    GoldenType{GgmlType::Q5_0, "q5_0"}, GoldenType{GgmlType::Q5_1, "q5_1"},
                    GoldenType{GgmlType::Q2_K, "q2_K"}, GoldenType{GgmlType::Q3_K, "q3_K"},
                    GoldenType{GgmlType::Q4_K, "q4_K"}, GoldenType{GgmlType::Q5_K, "q5_K"},
                    GoldenType{GgmlType::Q6_K, "q6_K"}),
    goldenName);

class QuantizeGoldenTest : public testing::TestWithParam<GoldenType> {};

// The input rows cover Gaussian and uniform data, zeros, constants, outliers,
// tiny and subnormal values, one-signed rows, sparse rows, sub-blocks of very
// different scales, huge values (f16 scale overflow) and exact rounding ties.
TEST_P(QuantizeGoldenTest, MatchesGgmlReferenceQuantizerBitForBit) {
  const GoldenType &golden = GetParam();
  const std::vector<float> input = bytesToFloats(readGolden("quant_input.f32"));
  const std::vector<uint8_t> expected = readGolden(std::string("quant_") + golden.name + ".bin");
  const int64_t elements = int64_t(input.size());
  ASSERT_EQ(elements, 24 * 256);
  ASSERT_EQ(gguf::ggmlRowBytes(golden.type, elements), expected.size());

  std::vector<uint8_t> actual(expected.size(), 0xA5);
  ASSERT_TRUE(quantize(golden.type, input.data(), actual.data(), elements).ok());

  const auto &traits = gguf::ggmlTypeTraits(golden.type);
  int mismatches = 0;
  for (size_t i = 0; i < actual.size() && mismatches < 10; ++i) {
    if (actual[i] != expected[i]) {
      ++mismatches;
      const size_t block = i / size_t(traits.blockBytes);
      ADD_FAILURE() << golden.name << " byte " << i % size_t(traits.blockBytes) << " of block "
                    << block << " (input row " << block * size_t(traits.blockSize) / 256
                    << "): got " << int(actual[i]) << ", GGML gives " << int(expected[i]);
    }
  }
  EXPECT_EQ(actual, expected);
}

INSTANTIATE_TEST_SUITE_P(BlockQuantizers, QuantizeGoldenTest,
                         testing::Values(GoldenType{GgmlType::Q8_0, "q8_0"},
                                         GoldenType{GgmlType::Q4_K, "q4_K"},
                                         GoldenType{GgmlType::Q5_K, "q5_K"},
                                         GoldenType{GgmlType::Q6_K, "q6_K"}),
                         goldenName);

// convert_input.f32 holds arbitrary bit patterns (NaNs, infinities,
// subnormals), values in f16 range, exact f16 rounding ties and bf16 ties.
TEST(ConvertGoldenTest, FloatToHalfAndBf16MatchGgml) {
  const std::vector<float> input = bytesToFloats(readGolden("convert_input.f32"));
  const std::vector<uint8_t> expectedHalf = readGolden("convert_f16.bin");
  const std::vector<uint8_t> expectedBf16 = readGolden("convert_bf16.bin");
  ASSERT_EQ(input.size(), 1024u);
  ASSERT_EQ(expectedHalf.size(), 2 * input.size());
  ASSERT_EQ(expectedBf16.size(), 2 * input.size());

  for (size_t i = 0; i < input.size(); ++i) {
    const uint16_t wantHalf = uint16_t(expectedHalf[2 * i] | (expectedHalf[2 * i + 1] << 8));
    const uint16_t wantBf16 = uint16_t(expectedBf16[2 * i] | (expectedBf16[2 * i + 1] << 8));
    EXPECT_EQ(floatToHalf(input[i]), wantHalf)
        << "input bits 0x" << std::hex << test::bitsOf(input[i]);
    EXPECT_EQ(floatToBf16(input[i]), wantBf16)
        << "input bits 0x" << std::hex << test::bitsOf(input[i]);
  }

  // The row encoders must agree with the scalar conversions.
  std::vector<uint8_t> halfRow(expectedHalf.size()), bf16Row(expectedBf16.size());
  ASSERT_TRUE(quantize(GgmlType::F16, input.data(), halfRow.data(), int64_t(input.size())).ok());
  ASSERT_TRUE(quantize(GgmlType::BF16, input.data(), bf16Row.data(), int64_t(input.size())).ok());
  EXPECT_EQ(halfRow, expectedHalf);
  EXPECT_EQ(bf16Row, expectedBf16);
}

} // namespace
} // namespace kt::quant
