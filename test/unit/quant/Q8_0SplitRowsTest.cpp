// The GPU's split Q8_0 rows: each row's quants in order, then its scales.
#include "runtime/quant/Quant.h"

#include <gtest/gtest.h>

#include <vector>

namespace kt::quant {
namespace {

TEST(SplitQ8_0Rows, QuantsInOrderThenScalesPerRow) {
  const int64_t rows = 3, cols = 512, blocks = cols / 32, rowBytes = blocks * 34;
  std::vector<float> values(size_t(rows * cols));
  for (size_t i = 0; i < values.size(); ++i)
    values[i] = float(int64_t(i * 37 % 255) - 127) * (1.0f + float(i / 32 % 5));
  std::vector<uint8_t> gguf(size_t(rows * rowBytes)), split(gguf.size(), 0xaa);
  ASSERT_TRUE(quantize(GgmlType::Q8_0, values.data(), gguf.data(), rows * cols).ok());
  ASSERT_TRUE(splitQ8_0Rows(gguf.data(), split.data(), rows, cols).ok());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < blocks; ++b) {
      const uint8_t *block = &gguf[size_t(r * rowBytes + b * 34)];
      const uint8_t *row = &split[size_t(r * rowBytes)];
      for (int j = 0; j < 32; ++j)
        ASSERT_EQ(row[b * 32 + j], block[2 + j]) << "row " << r << " block " << b << " quant " << j;
      ASSERT_EQ(row[cols + 2 * b], block[0]) << "row " << r << " block " << b;
      ASSERT_EQ(row[cols + 2 * b + 1], block[1]) << "row " << r << " block " << b;
    }
}

TEST(SplitQ8_0Rows, OnlyRowsOfWholeRunsOfEightBlocks) {
  EXPECT_TRUE(q8_0RowsSplit(GgmlType::Q8_0, 7168));
  EXPECT_FALSE(q8_0RowsSplit(GgmlType::Q8_0, 160)) << "five blocks";
  EXPECT_FALSE(q8_0RowsSplit(GgmlType::Q4_K, 7168)) << "only q8_0";
  std::vector<uint8_t> bytes(34 * 5);
  Status refused = splitQ8_0Rows(bytes.data(), bytes.data(), 1, 160);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("multiple of 256"), std::string::npos) << refused.message();
}

} // namespace
} // namespace kt::quant
