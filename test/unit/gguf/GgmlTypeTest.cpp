#include "runtime/gguf/GgmlType.h"

#include <gtest/gtest.h>

namespace kt::gguf {
namespace {

struct ExpectedLayout {
  uint32_t id;
  const char *name;
  int64_t blockSize;
  int64_t blockBytes;
};

// Ids from ggml.h's enum ggml_type; block sizes and bytes from the
// static_asserts on the block structs in ggml-common.h (QK_K = 256), written
// as GGML's formulas so that a wrong row in GgmlType.cpp cannot hide here.
constexpr int64_t QK_K = 256;
constexpr int64_t kHalf = 2;
const ExpectedLayout kGgmlLayouts[] = {
    {0, "f32", 1, 4},
    {1, "f16", 1, 2},
    {2, "q4_0", 32, kHalf + 32 / 2},
    {3, "q4_1", 32, 2 * kHalf + 32 / 2},
    {6, "q5_0", 32, kHalf + 4 + 32 / 2},
    {7, "q5_1", 32, 2 * kHalf + 4 + 32 / 2},
    {8, "q8_0", 32, kHalf + 32},
    {9, "q8_1", 32, 2 * kHalf + 32},
    {10, "q2_K", QK_K, 2 * kHalf + QK_K / 16 + QK_K / 4},
    {11, "q3_K", QK_K, kHalf + QK_K / 4 + QK_K / 8 + 12},
    {12, "q4_K", QK_K, 2 * kHalf + 12 + QK_K / 2},
    {13, "q5_K", QK_K, 2 * kHalf + 12 + QK_K / 2 + QK_K / 8},
    {14, "q6_K", QK_K, kHalf + QK_K / 16 + 3 * QK_K / 4},
    {15, "q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2},
    {16, "iq2_xxs", QK_K, kHalf + QK_K / 8 * 2},
    {17, "iq2_xs", QK_K, kHalf + QK_K / 8 * 2 + QK_K / 32},
    {18, "iq3_xxs", QK_K, kHalf + 3 * (QK_K / 8)},
    {19, "iq1_s", QK_K, kHalf + QK_K / 8 + QK_K / 16},
    {20, "iq4_nl", 32, kHalf + 32 / 2},
    {21, "iq3_s", QK_K, kHalf + 13 * (QK_K / 32) + QK_K / 64},
    {22, "iq2_s", QK_K, kHalf + QK_K / 4 + QK_K / 16},
    {23, "iq4_xs", QK_K, kHalf + 2 + QK_K / 64 + QK_K / 2},
    {24, "i8", 1, 1},
    {25, "i16", 1, 2},
    {26, "i32", 1, 4},
    {27, "i64", 1, 8},
    {28, "f64", 1, 8},
    {29, "iq1_m", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32},
    {30, "bf16", 1, 2},
    {34, "tq1_0", QK_K, kHalf + QK_K / 64 + (QK_K - 4 * QK_K / 64) / 5},
    {35, "tq2_0", QK_K, kHalf + QK_K / 4},
    {39, "mxfp4", 32, 1 + 32 / 2},
};

TEST(GgmlTypeTest, LayoutsMatchGgml) {
  for (const ExpectedLayout &expected : kGgmlLayouts) {
    SCOPED_TRACE(expected.name);
    std::optional<GgmlTypeTraits> traits = ggmlTypeTraits(expected.id);
    ASSERT_TRUE(traits.has_value());
    EXPECT_EQ(static_cast<uint32_t>(traits->type), expected.id);
    EXPECT_EQ(traits->name, expected.name);
    EXPECT_EQ(traits->blockSize, expected.blockSize);
    EXPECT_EQ(traits->blockBytes, expected.blockBytes);
    EXPECT_EQ(parseGgmlType(expected.name), traits->type);
  }
}

TEST(GgmlTypeTest, RetiredAndUndefinedIdsAreUnknown) {
  // 4 and 5 were Q4_2/Q4_3; 31-33 and 36-38 the repacked types GGUF dropped.
  for (uint32_t id : {4u, 5u, 31u, 32u, 33u, 36u, 37u, 38u, 1000u, 0xFFFFFFFFu})
    EXPECT_FALSE(ggmlTypeTraits(id).has_value()) << id;
}

// The checkpoints' block-scaled e4m3 type has a name and traits but is no
// GGUF type id: a GGUF file that claims it is refused like any unknown id.
TEST(GgmlTypeTest, BlockScaledFp8IsNotAGgufTypeId) {
  EXPECT_FALSE(ggmlTypeTraits(static_cast<uint32_t>(GgmlType::F8_E4M3_B128)).has_value());
  EXPECT_EQ(ggmlTypeName(GgmlType::F8_E4M3_B128), "f8_e4m3");
  EXPECT_EQ(parseGgmlType("f8_e4m3"), GgmlType::F8_E4M3_B128);
  EXPECT_FALSE(ggmlTypeTraits(GgmlType::F8_E4M3_B128).dequantizable);
  EXPECT_EQ(ggmlRowBytes(GgmlType::F8_E4M3_B128, 256), 256u);
}

TEST(GgmlTypeTest, RowBytesRequireWholeBlocks) {
  EXPECT_EQ(ggmlRowBytes(GgmlType::Q4_K, 512), 288u);
  EXPECT_EQ(ggmlRowBytes(GgmlType::Q8_0, 64), 68u);
  EXPECT_EQ(ggmlRowBytes(GgmlType::F32, 3), 12u);
  EXPECT_FALSE(ggmlRowBytes(GgmlType::Q4_K, 100).has_value());
  EXPECT_FALSE(ggmlRowBytes(GgmlType::Q8_0, -32).has_value());
  EXPECT_EQ(parseGgmlType("Q4_k"), GgmlType::Q4_K);
  EXPECT_FALSE(parseGgmlType("q4_2").has_value());
}

} // namespace
} // namespace kt::gguf
