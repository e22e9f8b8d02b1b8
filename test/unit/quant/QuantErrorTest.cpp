// Error reporting, type support flags and hand-built blocks.
#include "runtime/quant/Quant.h"
#include "test/unit/quant/TestUtil.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace kt::quant {
namespace {

using gguf::GgmlType;

TEST(QuantErrorTest, SupportMatchesTheTypeTable) {
  for (uint32_t id = 0; id < 64; ++id) {
    const std::optional<gguf::GgmlTypeTraits> traits = gguf::ggmlTypeTraits(id);
    if (!traits)
      continue;
    const int64_t elements = traits->blockSize * 2;
    std::vector<uint8_t> encoded(size_t(traits->blockBytes * 2), 0);
    std::vector<float> values(size_t(elements), 0.25f);
    EXPECT_EQ(dequantize(traits->type, encoded.data(), values.data(), elements).ok(),
              traits->dequantizable)
        << traits->name;
    EXPECT_EQ(quantize(traits->type, values.data(), encoded.data(), elements).ok(),
              traits->quantizable)
        << traits->name;
  }
  // The types this library promises.
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0,
                        GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1,
                        GgmlType::Q2_K, GgmlType::Q3_K, GgmlType::Q4_K, GgmlType::Q5_K,
                        GgmlType::Q6_K})
    EXPECT_TRUE(gguf::ggmlTypeTraits(type).dequantizable) << gguf::ggmlTypeName(type);
  for (GgmlType type : {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0,
                        GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K})
    EXPECT_TRUE(gguf::ggmlTypeTraits(type).quantizable) << gguf::ggmlTypeName(type);
}

TEST(QuantErrorTest, UnsupportedTypesAreRejectedWithAMessage) {
  std::vector<uint8_t> bytes(1024, 0);
  std::vector<float> values(256, 1.0f);
  Status status = dequantize(GgmlType::IQ2_XXS, bytes.data(), values.data(), 256);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("iq2_xxs"), std::string::npos) << status.message();
  EXPECT_FALSE(dequantize(GgmlType::Q8_1, bytes.data(), values.data(), 256).ok());
  status = quantize(GgmlType::Q4_0, values.data(), bytes.data(), 256);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("q4_0"), std::string::npos) << status.message();
  EXPECT_FALSE(quantize(GgmlType::Q2_K, values.data(), bytes.data(), 256).ok());
}

TEST(QuantErrorTest, PartialBlocksAreRejected) {
  std::vector<uint8_t> bytes(4096, 0);
  std::vector<float> values(1024, 1.0f);
  Status status = dequantize(GgmlType::Q4_K, bytes.data(), values.data(), 300);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("multiple of the 256"), std::string::npos) << status.message();
  EXPECT_FALSE(dequantize(GgmlType::Q8_0, bytes.data(), values.data(), 33).ok());
  status = quantize(GgmlType::Q8_0, values.data(), bytes.data(), 48);
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("multiple of the 32"), std::string::npos) << status.message();
  EXPECT_FALSE(quantize(GgmlType::Q6_K, values.data(), bytes.data(), 255).ok());
  EXPECT_FALSE(dequantize(GgmlType::F16, bytes.data(), values.data(), -2).ok());
  EXPECT_FALSE(quantize(GgmlType::F32, values.data(), bytes.data(), -1).ok());
}

TEST(QuantErrorTest, NullBuffersAreRejectedUnlessEmpty) {
  std::vector<float> values(32, 1.0f);
  EXPECT_FALSE(dequantize(GgmlType::Q8_0, nullptr, values.data(), 32).ok());
  EXPECT_FALSE(quantize(GgmlType::Q8_0, values.data(), nullptr, 32).ok());
  EXPECT_TRUE(dequantize(GgmlType::Q8_0, nullptr, nullptr, 0).ok());
  EXPECT_TRUE(quantize(GgmlType::Q4_K, nullptr, nullptr, 0).ok());
}

TEST(QuantErrorTest, NonFiniteInputIsRejectedForBlockFormatsOnly) {
  std::vector<float> values(256, 0.5f);
  values[200] = std::numeric_limits<float>::quiet_NaN();
  std::vector<uint8_t> bytes(512, 0);
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    Status status = quantize(type, values.data(), bytes.data(), 256);
    ASSERT_FALSE(status.ok()) << gguf::ggmlTypeName(type);
    EXPECT_NE(status.message().find("value 200"), std::string::npos) << status.message();
  }
  values[200] = -std::numeric_limits<float>::infinity();
  EXPECT_FALSE(quantize(GgmlType::Q4_K, values.data(), bytes.data(), 256).ok());
  // f16 and bf16 have encodings for them.
  EXPECT_TRUE(quantize(GgmlType::F16, values.data(), bytes.data(), 256).ok());
  EXPECT_EQ(bytes[400] | (bytes[401] << 8), 0xfc00);
  EXPECT_TRUE(quantize(GgmlType::BF16, values.data(), bytes.data(), 256).ok());
  EXPECT_EQ(bytes[400] | (bytes[401] << 8), 0xff80);
}

// Hand-built blocks spell out the layouts independently of the fixtures.
TEST(QuantLayoutTest, Q4_0NibbleOrder) {
  uint8_t block[18] = {0x00, 0x38}; // d = 0.5
  for (int j = 0; j < 16; ++j)
    block[2 + j] = uint8_t(j | ((15 - j) << 4));
  float out[32];
  ASSERT_TRUE(dequantize(GgmlType::Q4_0, block, out, 32).ok());
  for (int j = 0; j < 16; ++j) {
    EXPECT_EQ(out[j], (j - 8) * 0.5f) << j;
    EXPECT_EQ(out[16 + j], (7 - j) * 0.5f) << j;
  }
}

TEST(QuantLayoutTest, Q4_KHighScalePairsUseTheSpareBits) {
  uint8_t block[144] = {};
  block[0] = 0x00; block[1] = 0x3c; // d = 1
  block[2] = 0x00; block[3] = 0x38; // dmin = 0.5
  uint8_t *scales = block + 4;
  // Sub-block 5: scale 0b110011 = 51, min 0b100110 = 38. Low nibbles in byte
  // 9, top bits in the spare bits of bytes 1 (scale) and 5 (min).
  scales[9] = 0x3 | (0x6 << 4);
  scales[1] = 0x3 << 6;
  scales[5] = 0x2 << 6;
  // Sub-block 5 is the high nibbles of the third 32-byte group.
  for (int l = 0; l < 32; ++l)
    block[16 + 64 + l] = uint8_t((l % 16) << 4);
  float out[256];
  ASSERT_TRUE(dequantize(GgmlType::Q4_K, block, out, 256).ok());
  for (int l = 0; l < 32; ++l)
    EXPECT_EQ(out[160 + l], 51.0f * float(l % 16) - 0.5f * 38.0f) << l;
  // Sub-block 1 reads the low 6 bits of bytes 1 and 5, which are zero here.
  for (int l = 0; l < 32; ++l)
    EXPECT_EQ(out[32 + l], 0.0f) << l;
}

TEST(QuantLayoutTest, Q6_KQuarterOrder) {
  uint8_t block[210] = {};
  block[208] = 0x00; block[209] = 0x3c; // d = 1
  for (int s = 0; s < 16; ++s)
    block[192 + s] = uint8_t(s + 1);
  // Element 64 + 3 (third quarter of the first half) = high nibble of ql[3],
  // bits 4-5 of qh[3]; choose q = 0b10_0111 = 39, value 39 - 32 = 7.
  block[3] = 0x70;
  block[128 + 3] = 0x2 << 4;
  float out[256];
  ASSERT_TRUE(dequantize(GgmlType::Q6_K, block, out, 256).ok());
  EXPECT_EQ(out[67], 5.0f * 7.0f); // scale index 4 holds 5
  EXPECT_EQ(out[3], 1.0f * (0 - 32));
}

} // namespace
} // namespace kt::quant
