// The generated AMX tile kernels (prefill): compiled for AMX targets only,
// loaded as the runtime loads them, and run where the host has AMX against
// double-precision products of the bf16-rounded dequantized weights and
// activations.
#include "compiler/CpuCodegen/RowKernelGenerator.h"
#include "runtime/cpu/GeneratedKernels.h"
#include "runtime/cpu/IsaVariants.h"
#include "runtime/quant/Quant.h"
#include "test/unit/common/TempDir.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>

namespace kt::codegen {
namespace {

using gguf::GgmlType;

float bf16Rounded(float value) { return quant::bf16ToFloat(quant::floatToBf16(value)); }

bool hostRuns(const plan::CpuCode &code) {
  std::vector<std::string> host = cpu::hostCpuFeatures();
  return std::all_of(code.features.begin(), code.features.end(), [&](const std::string &f) {
    return std::find(host.begin(), host.end(), f) != host.end();
  });
}

TEST(TileKernelCode, OnlyAmxTargetsGetThem) {
  EXPECT_TRUE(emitsTileKernels(*namedCpuTarget("sapphirerapids")));
  EXPECT_FALSE(emitsTileKernels(*namedCpuTarget("icelake-server")));
  EXPECT_FALSE(emitsTileKernels(*namedCpuTarget("haswell")));
  CpuCodeTarget off = *namedCpuTarget("sapphirerapids");
  off.amxTiles = false;
  EXPECT_FALSE(emitsTileKernels(off));
  // The weights are rounded to bf16 with AVX-512 BF16.
  CpuCodeTarget noBf16 = *namedCpuTarget("sapphirerapids");
  noBf16.features.erase(
      std::remove(noBf16.features.begin(), noBf16.features.end(), std::string("avx512bf16")),
      noBf16.features.end());
  EXPECT_FALSE(emitsTileKernels(noBf16));

  test::TempDir dir("tile-kernels-list");
  StatusOr<plan::CpuCode> code =
      buildCpuCode({{GgmlType::Q4_K, 512}}, *namedCpuTarget("sapphirerapids"),
                   (dir.path() / "k.so").string(), dir.path().string());
  ASSERT_TRUE(code.ok()) << code.message();
  ASSERT_EQ(code->kernels.size(), 2u);
  EXPECT_EQ(code->kernels[1].symbol, "kt_tiles_q4_K_512");
  EXPECT_EQ(code->kernels[1].input, "bf16-tiles");
}

class TileKernels : public ::testing::TestWithParam<RowKernelRequest> {};

TEST_P(TileKernels, MatchBf16Products) {
  const RowKernelRequest request = GetParam();
  test::TempDir dir("tile-kernels");
  StatusOr<plan::CpuCode> code = buildCpuCode({request}, *namedCpuTarget("sapphirerapids"),
                                              (dir.path() / "k.so").string(), dir.path().string());
  ASSERT_TRUE(code.ok()) << code.message();
  if (!hostRuns(*code))
    GTEST_SKIP() << "this host has no AMX";
  StatusOr<std::unique_ptr<cpu::GeneratedKernels>> kernels =
      cpu::GeneratedKernels::load(*code, (dir.path() / "m.plan").string(), cpu::hostCpuFeatures());
  ASSERT_TRUE(kernels.ok()) << kernels.message();
  if (!(*kernels)->tilesUnavailable().empty())
    GTEST_SKIP() << (*kernels)->tilesUnavailable();
  cpu::TileKernel kernel = (*kernels)->find(request.type, request.cols).tiles;
  ASSERT_NE(kernel, nullptr);

  std::mt19937 random(static_cast<uint32_t>(request.cols) * 7u +
                      static_cast<uint32_t>(request.type));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t rows = 64, cols = request.cols;
  // Rows farther apart than their bytes: the kernel must follow rowBytes.
  const uint64_t rowBytes = *gguf::ggmlRowBytes(request.type, cols) + 64;
  std::vector<uint8_t> weights(rowBytes * rows);
  std::vector<float> decoded(static_cast<size_t>(rows * cols)), values(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (float &v : values)
      v = normal(random) * 0.05f;
    ASSERT_TRUE(
        quant::quantize(request.type, values.data(), weights.data() + r * rowBytes, cols).ok());
    ASSERT_TRUE(quant::dequantize(request.type, weights.data() + r * rowBytes,
                                  decoded.data() + r * cols, cols)
                    .ok());
  }
  std::vector<uint8_t> scratchBytes(cpu::tileKernelScratchBytes(cols) + 64);
  uint8_t *scratch =
      scratchBytes.data() + (64 - reinterpret_cast<uintptr_t>(scratchBytes.data()) % 64) % 64;

  // Token counts below, at and across the token blocks (kTileTokens).
  for (int64_t tokens : {1, 5, 32, 33, 70}) {
    SCOPED_TRACE(std::to_string(tokens) + " tokens");
    std::uniform_real_distribution<float> uniform(-0.5f, 1.5f);
    std::vector<float> x(static_cast<size_t>(tokens * cols));
    for (float &v : x)
      v = uniform(random);
    const int64_t padded = (tokens + 31) / 32 * 32;
    std::vector<uint16_t> xb(static_cast<size_t>(padded * cols), 0xffff);
    cpu::packTileActivations(x.data(), cols, cols, tokens, xb.data());
    const int64_t ldy = rows + 16;
    std::vector<float> y(static_cast<size_t>(tokens * ldy), -7.0f);
    kernel(weights.data(), rowBytes, rows, xb.data(), tokens, y.data(), ldy, scratch);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        double rounded = 0, exact = 0, magnitude = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const float wv = decoded[r * cols + c], xv = x[t * cols + c];
          rounded += double(bf16Rounded(wv)) * bf16Rounded(xv);
          exact += double(wv) * xv;
          magnitude += std::fabs(double(wv) * xv);
        }
        // f32 sums of the bf16 products (a weight decoded one f32 ulp off
        // may round to the neighbouring bf16: 2^-8 of one product).
        EXPECT_NEAR(y[t * ldy + r], rounded, 2e-5 * magnitude) << "token " << t << ", row " << r;
        // Both roundings bound the distance to the exact product.
        EXPECT_NEAR(y[t * ldy + r], exact, 0.0079 * magnitude) << "token " << t << ", row " << r;
      }
      for (int64_t pad = rows; pad < ldy; ++pad)
        ASSERT_EQ(y[t * ldy + pad], -7.0f) << "wrote outside its rows";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Types, TileKernels,
                         ::testing::Values(RowKernelRequest{GgmlType::Q8_0, 96},
                                           RowKernelRequest{GgmlType::Q8_0, 512},
                                           RowKernelRequest{GgmlType::Q4_K, 512},
                                           RowKernelRequest{GgmlType::Q5_K, 768},
                                           RowKernelRequest{GgmlType::Q6_K, 512}),
                         [](const auto &info) {
                           return std::string(gguf::ggmlTypeName(info.param.type)) + "_" +
                                  std::to_string(info.param.cols);
                         });

} // namespace
} // namespace kt::codegen
