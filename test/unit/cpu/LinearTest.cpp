// Matrix products on quantized weights against plain loops over the fully
// dequantized matrix, and the thread pool.
#include "runtime/cpu/Linear.h"
#include "runtime/cpu/RowDecode.h"
#include "runtime/cpu/ThreadPool.h"
#include "runtime/quant/Quant.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace kt::cpu {
namespace {

using gguf::GgmlType;

struct QuantizedMatrix {
  std::vector<uint8_t> bytes;
  std::vector<float> values; // the dequantized matrix, row-major
  WeightMatrix w;
};

QuantizedMatrix makeMatrix(GgmlType type, int64_t rows, int64_t cols, uint32_t seed) {
  QuantizedMatrix m;
  std::vector<float> source(static_cast<size_t>(rows * cols));
  uint32_t state = seed;
  for (float &v : source) {
    state = state * 1664525u + 1013904223u;
    v = (static_cast<float>(state >> 8) / 16777216.0f - 0.5f) * 0.2f;
  }
  const uint64_t rowBytes = *gguf::ggmlRowBytes(type, cols);
  m.bytes.resize(static_cast<size_t>(rowBytes * rows));
  for (int64_t r = 0; r < rows; ++r)
    EXPECT_TRUE(quant::quantize(type, source.data() + r * cols, m.bytes.data() + r * rowBytes, cols).ok());
  m.values.resize(source.size());
  EXPECT_TRUE(quant::dequantize(type, m.bytes.data(), m.values.data(), rows * cols).ok());
  m.w.type = type;
  m.w.data = m.bytes.data();
  m.w.rows = rows;
  m.w.cols = cols;
  m.w.rowBytes = rowBytes;
  return m;
}

std::vector<float> makeInput(int64_t count, uint32_t seed) {
  std::vector<float> x(static_cast<size_t>(count));
  uint32_t state = seed;
  for (float &v : x) {
    state = state * 22695477u + 1u;
    v = static_cast<float>(state >> 8) / 16777216.0f - 0.5f;
  }
  return x;
}

class LinearTypes : public ::testing::TestWithParam<GgmlType> {};

TEST_P(LinearTypes, RowProductsMatchTheDequantizedMatrix) {
  const int64_t rows = 37, cols = 512, tokens = 3;
  QuantizedMatrix m = makeMatrix(GetParam(), rows, cols, 7);
  std::vector<float> x = makeInput(tokens * cols, 3);
  // Rows 5..29 written with a row stride of 40 per token.
  const int64_t begin = 5, end = 29, ldy = 40;
  std::vector<float> y(static_cast<size_t>(tokens * ldy), -1.0f);
  std::vector<float> scratch(matmulScratchFloats(m.w));
  matmulRows(m.w, begin, end, x.data(), cols, tokens, y.data(), ldy, scratch.data());
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t r = begin; r < end; ++r) {
      double expected = 0;
      for (int64_t c = 0; c < cols; ++c)
        expected += double(m.values[r * cols + c]) * x[t * cols + c];
      EXPECT_NEAR(y[t * ldy + r - begin], expected, 1e-5) << "token " << t << " row " << r;
    }
    for (int64_t i = end - begin; i < ldy; ++i)
      EXPECT_EQ(y[t * ldy + i], -1.0f) << "wrote past the rows";
  }
}

TEST_P(LinearTypes, TransposedProductsMatchTheDequantizedMatrix) {
  const int64_t rows = 20, cols = 256, tokens = 2;
  QuantizedMatrix m = makeMatrix(GetParam(), rows, cols, 11);
  const int64_t begin = 4, end = 17;
  std::vector<float> x = makeInput(tokens * (end - begin), 5);
  std::vector<float> y(static_cast<size_t>(tokens * cols), 0.5f);
  std::vector<float> scratch(matmulScratchFloats(m.w));
  matmulTransposedRows(m.w, begin, end, x.data(), end - begin, tokens, y.data(), cols,
                       scratch.data());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < cols; ++c) {
      double expected = 0.5;
      for (int64_t r = begin; r < end; ++r)
        expected += double(x[t * (end - begin) + r - begin]) * m.values[r * cols + c];
      EXPECT_NEAR(y[t * cols + c], expected, 1e-5) << "token " << t << " column " << c;
    }
}

TEST_P(LinearTypes, DecodingEqualsTheReferenceBitForBit) {
  QuantizedMatrix m = makeMatrix(GetParam(), 6, 512, 21);
  std::vector<float> decoded(m.values.size(), -7.0f);
  decodeValues(GetParam(), m.bytes.data(), decoded.data(), static_cast<int64_t>(decoded.size()));
  for (size_t i = 0; i < decoded.size(); ++i)
    ASSERT_EQ(std::memcmp(&decoded[i], &m.values[i], sizeof(float)), 0) << "value " << i;
}

INSTANTIATE_TEST_SUITE_P(Types, LinearTypes,
                         ::testing::Values(GgmlType::F32, GgmlType::F16, GgmlType::BF16,
                                           GgmlType::Q8_0, GgmlType::Q4_K,
                                           GgmlType::Q5_K, GgmlType::Q6_K),
                         [](const ::testing::TestParamInfo<GgmlType> &info) {
                           return std::string(gguf::ggmlTypeName(info.param));
                         });

TEST(Linear, HalfDecodingKeepsSubnormalsInfinitiesAndNaNs) {
  const std::vector<uint16_t> halves = {0x0000, 0x8000, 0x0001, 0x03ff, 0x8200, 0x0400, 0x3c00,
                                        0xc000, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x7c01, 0x5555};
  std::vector<uint8_t> bytes;
  for (uint16_t h : halves) {
    bytes.push_back(static_cast<uint8_t>(h & 0xff));
    bytes.push_back(static_cast<uint8_t>(h >> 8));
  }
  std::vector<float> decoded(halves.size()), expected(halves.size());
  decodeValues(GgmlType::F16, bytes.data(), decoded.data(), static_cast<int64_t>(halves.size()));
  ASSERT_TRUE(quant::dequantize(GgmlType::F16, bytes.data(), expected.data(),
                                static_cast<int64_t>(halves.size()))
                  .ok());
  for (size_t i = 0; i < halves.size(); ++i)
    EXPECT_EQ(std::memcmp(&decoded[i], &expected[i], sizeof(float)), 0) << std::hex << halves[i];
}

TEST(Linear, ParallelProductEqualsTheSerialOneBitForBit) {
  const int64_t rows = 300, cols = 256, tokens = 5;
  QuantizedMatrix m = makeMatrix(GgmlType::Q8_0, rows, cols, 3);
  std::vector<float> x = makeInput(tokens * cols, 9);
  std::vector<float> serial(static_cast<size_t>(tokens * rows));
  std::vector<float> scratch(matmulScratchFloats(m.w));
  matmulRows(m.w, 0, rows, x.data(), cols, tokens, serial.data(), rows, scratch.data());
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    std::vector<float> parallel(serial.size(), 0.0f);
    matmul(pool, m.w, x.data(), tokens, parallel.data());
    EXPECT_EQ(parallel, serial) << threads << " threads";
  }
}

TEST(ThreadPool, RunsEveryTaskOnceOnEveryThreadCount) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.threadCount(), threads);
    for (int64_t tasks : {0, 1, 3, 100}) {
      std::vector<std::atomic<int>> runs(static_cast<size_t>(tasks));
      std::atomic<int> badThread{0};
      pool.parallelFor(tasks, [&](int64_t task, int thread) {
        runs[static_cast<size_t>(task)].fetch_add(1);
        if (thread < 0 || thread >= threads)
          badThread.fetch_add(1);
      });
      for (int64_t t = 0; t < tasks; ++t)
        EXPECT_EQ(runs[static_cast<size_t>(t)].load(), 1) << threads << " threads, task " << t;
      EXPECT_EQ(badThread.load(), 0);
    }
  }
}

} // namespace
} // namespace kt::cpu
