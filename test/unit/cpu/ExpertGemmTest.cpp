// Prefill expert GEMMs through oneDNN's bf16 matmul against the reference
// products, alone and inside the executor.
#include "runtime/cpu/ExpertGemm.h"
#include "runtime/quant/Quant.h"
#include "test/unit/cpu/TestModels.h"

#include <gtest/gtest.h>

#include <random>

namespace kt::cpu::test {
namespace {

TEST(ExpertGemm, MatchesTheReferenceProductToBf16Precision) {
  if (!haveExpertGemm())
    GTEST_SKIP() << "no oneDNN bf16 matmul (built without libdnnl-dev, or a host without AVX-512)";
  const int64_t rows = 48, cols = 512, tokens = 70, ldy = rows + 5;
  std::mt19937 random(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(rows * cols));
  for (float &v : values)
    v = normal(random) * 0.05f;
  const uint64_t rowBytes = *gguf::ggmlRowBytes(gguf::GgmlType::Q4_K, cols);
  std::vector<uint8_t> data(rowBytes * rows);
  for (int64_t r = 0; r < rows; ++r)
    ASSERT_TRUE(quant::quantize(gguf::GgmlType::Q4_K, values.data() + r * cols,
                                data.data() + r * rowBytes, cols)
                    .ok());
  WeightMatrix w{gguf::GgmlType::Q4_K, data.data(), rows, cols, rowBytes};
  std::vector<float> x(static_cast<size_t>(tokens * cols));
  for (float &v : x)
    v = normal(random);

  ThreadPool pool(2);
  std::vector<float> expected(static_cast<size_t>(tokens * rows));
  matmul(pool, w, x.data(), tokens, expected.data());
  std::vector<float> y(static_cast<size_t>(tokens * ldy), -7.0f);
  ExpertGemm gemm;
  for (int repeat = 0; repeat < 2; ++repeat) { // the second call reuses the scratch
    gemm.multiply(pool, w, x.data(), tokens, y.data(), ldy);
    std::vector<float> got;
    for (int64_t t = 0; t < tokens; ++t) {
      got.insert(got.end(), y.begin() + t * ldy, y.begin() + t * ldy + rows);
      for (int64_t pad = rows; pad < ldy; ++pad)
        EXPECT_EQ(y[t * ldy + pad], -7.0f) << "wrote outside the rows";
    }
    EXPECT_LE(relativeL2(got, expected), 1e-2);
    EXPECT_GT(relativeL2(got, expected), 0.0) << "bf16 rounding should show";
  }
}

// Every expert through the GEMM path (threshold 1) against the row kernels.
TEST(ExpertGemm, ExecutorPrefillMatchesTheRowKernels) {
  KT_REQUIRE_COMPILER();
  if (!haveExpertGemm())
    GTEST_SKIP() << "no oneDNN bf16 matmul (built without libdnnl-dev, or a host without AVX-512)";
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("expert-gemm", tinyF32Config(), m));
  ExecutorOptions rowKernels, gemm;
  rowKernels.expertGemmTokens = 0;
  gemm.expertGemmTokens = 1;
  const std::vector<int32_t> tokens = sampleTokens(24, 5);
  std::vector<float> a = *makeExecutor(m, rowKernels)->forward(tokens, true);
  std::vector<float> b = *makeExecutor(m, gemm)->forward(tokens, true);
  EXPECT_LE(relativeL2(b, a), 1e-2);
  EXPECT_GT(relativeL2(b, a), 0.0) << "the GEMM path did not run";
}

} // namespace
} // namespace kt::cpu::test
