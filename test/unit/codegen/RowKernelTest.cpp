// The generated CPU row kernels: compiled for several x86-64 targets, loaded
// as the runtime loads them, and run (on the targets this host supports)
// against double-precision dot products of the dequantized rows.
#include "compiler/CpuCodegen/RowKernelGenerator.h"
#include "runtime/cpu/GeneratedKernels.h"
#include "runtime/cpu/IsaVariants.h"
#include "runtime/quant/Quant.h"
#include "test/unit/common/TempDir.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

namespace kt::codegen {
namespace {

using gguf::GgmlType;

const std::vector<RowKernelRequest> kRequests = {
    {GgmlType::Q8_0, 256}, {GgmlType::Q8_0, 7168}, {GgmlType::Q8_0, 96},
    {GgmlType::Q4_K, 512}, {GgmlType::Q4_K, 2048}, {GgmlType::Q4_K, 768},
    {GgmlType::Q5_K, 768}, {GgmlType::Q5_K, 1024}, {GgmlType::Q6_K, 512},
};

bool hostRuns(const plan::CpuCode &code) {
  std::vector<std::string> host = cpu::hostCpuFeatures();
  return std::all_of(code.features.begin(), code.features.end(), [&](const std::string &f) {
    return std::find(host.begin(), host.end(), f) != host.end();
  });
}

// Gaussian weights quantized to `type`, `rows` rows of `cols`.
std::vector<uint8_t> randomRows(GgmlType type, int64_t rows, int64_t cols, std::mt19937 &random) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(static_cast<size_t>(cols));
  const uint64_t rowBytes = *gguf::ggmlRowBytes(type, cols);
  std::vector<uint8_t> data(rowBytes * static_cast<uint64_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (float &v : values)
      v = normal(random) * 0.05f;
    EXPECT_TRUE(quant::quantize(type, values.data(), data.data() + r * rowBytes, cols).ok());
  }
  return data;
}

void checkKernel(const cpu::GeneratedKernels &kernels, const RowKernelRequest &request,
                 const std::string &cpuName) {
  SCOPED_TRACE(cpuName + " " + std::string(gguf::ggmlTypeName(request.type)) + ":" +
               std::to_string(request.cols));
  cpu::LoadedKernel kernel = kernels.find(request.type, request.cols);
  ASSERT_NE(kernel.function, nullptr);
  std::mt19937 random(static_cast<uint32_t>(request.cols) * 31u + static_cast<uint32_t>(request.type));
  const int64_t rows = 37, cols = request.cols;
  const uint64_t rowBytes = *gguf::ggmlRowBytes(request.type, cols);
  std::vector<uint8_t> weights = randomRows(request.type, rows, cols, random);
  std::vector<float> decoded(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    ASSERT_TRUE(quant::dequantize(request.type, weights.data() + r * rowBytes,
                                  decoded.data() + r * cols, cols)
                    .ok());
  // Token counts around the token blocks (1, 2, 4) and across token tiles
  // (16 tokens of 7168 f32 values, 72 of 7168 int8 values).
  for (int64_t tokens : {1, 2, 3, 4, 5, 9, 37, 80}) {
    const int64_t ldx = cols + 8, ldy = rows + 3;
    std::uniform_real_distribution<float> uniform(-0.5f, 1.5f); // a mean, for the minimums
    std::vector<float> x(static_cast<size_t>(tokens * ldx));
    for (float &v : x)
      v = uniform(random);
    std::vector<float> sums(static_cast<size_t>(tokens * cols / 32));
    cpu::sumRunsOf32(x.data(), ldx, cols, tokens, sums.data());
    // int8 kernels read x quantized per 256 values (in nibble order where
    // the kernel says so; the reference below reads it in order).
    std::vector<int8_t> xq, xqNibbleOrder;
    std::vector<float> xqScale;
    std::vector<int16_t> xqSum16;
    if (kernel.quantizedInput) {
      xq.resize(static_cast<size_t>(tokens * cols));
      xqNibbleOrder.resize(xq.size());
      xqScale.resize(static_cast<size_t>(tokens * cols / 256));
      xqSum16.resize(static_cast<size_t>(tokens * cols / 16));
      cpu::quantizeActivations(x.data(), ldx, cols, tokens, xq.data(), xqScale.data(),
                               xqSum16.data(), xqNibbleOrder.data());
    }
    std::vector<float> y(static_cast<size_t>(tokens * ldy), -7.0f);
    kernel.function(weights.data(), rowBytes, rows, x.data(), ldx, sums.data(),
                    kernel.nibbleOrderInput ? xqNibbleOrder.data() : xq.data(), xqScale.data(),
                    xqSum16.data(), tokens, y.data(), ldy);
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t r = 0; r < rows; ++r) {
        // The kernel's own input (x, or x as its int8 values times their
        // scales) gives a near-exact reference; for int8 kernels the
        // distance to the f32 dot is bounded by half a quantization step
        // per activation.
        double dot = 0, magnitude = 0, exact = 0, quantizationBound = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const double wv = decoded[r * cols + c], xv = x[t * ldx + c];
          const double seen = kernel.quantizedInput
                                  ? double(xq[t * cols + c]) * xqScale[t * (cols / 256) + c / 256]
                                  : xv;
          dot += wv * seen;
          magnitude += std::fabs(wv * seen);
          exact += wv * xv;
          if (kernel.quantizedInput)
            quantizationBound += std::fabs(wv) * xqScale[t * (cols / 256) + c / 256] * 0.5;
        }
        EXPECT_NEAR(y[t * ldy + r], dot, 2e-6 * magnitude + 1e-7)
            << "token " << t << " of " << tokens << ", row " << r;
        if (kernel.quantizedInput)
          EXPECT_NEAR(y[t * ldy + r], exact, quantizationBound * 1.001 + 2e-6 * magnitude)
              << "token " << t << ", row " << r;
      }
      for (int64_t pad = rows; pad < ldy; ++pad)
        EXPECT_EQ(y[t * ldy + pad], -7.0f) << "wrote outside its rows";
    }
  }
}

// Nibble order holds each 128 values' groups of 32 in the order 0, 2, 1, 3
// (what a 64-byte piece of q4_K's qs holds in its low nibbles, then its high
// ones); the scales and sums of 16 are the in-order ones, and either xq may
// be left out.
TEST(QuantizeActivations, NibbleOrderSwapsTheMiddleGroupsOf128) {
  const int64_t cols = 512, tokens = 2;
  std::vector<float> x(static_cast<size_t>(tokens * cols));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = std::sin(0.37f * float(i));
  std::vector<int8_t> xq(x.size()), nibbles(x.size()), alone(x.size());
  std::vector<float> scales(tokens * cols / 256), scalesAlone(scales.size());
  std::vector<int16_t> sums(tokens * cols / 16), sumsAlone(sums.size());
  cpu::quantizeActivations(x.data(), cols, cols, tokens, xq.data(), scales.data(), sums.data(),
                           nibbles.data());
  for (int64_t i = 0; i < tokens * cols; ++i) {
    const int64_t group = i % 128 / 32, slot = group == 1 ? 2 : group == 2 ? 1 : group;
    ASSERT_EQ(nibbles[size_t(i - 32 * group + 32 * slot)], xq[size_t(i)]) << "value " << i;
  }
  cpu::quantizeActivations(x.data(), cols, cols, tokens, nullptr, scalesAlone.data(),
                           sumsAlone.data(), alone.data());
  EXPECT_EQ(alone, nibbles);
  EXPECT_EQ(scalesAlone, scales);
  EXPECT_EQ(sumsAlone, sums);
}

// The quantized activations are x / (max|x| / 127) rounded to nearest,
// ties to even, as std::nearbyint rounds: random runs, a run of ties (its
// largest value 127, so that the values scale exactly), a run of zeros.
TEST(QuantizeActivations, RoundToNearestEvenWithinEachRun) {
  const int64_t cols = 768, tokens = 3, ldx = cols + 8;
  std::vector<float> x(static_cast<size_t>(tokens * ldx), 0.0f);
  std::mt19937 random(11);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  for (int64_t t = 0; t < 2; ++t)
    for (int64_t c = 0; c < cols; ++c)
      x[size_t(t * ldx + c)] = normal(random) * (c < 256 ? 1e-3f : c < 512 ? 1.0f : 40.0f);
  for (int64_t c = 0; c < 256; ++c) // token 2, run 0: halves; run 1 stays zeros
    x[size_t(2 * ldx + c)] = c == 0 ? 127.0f : float(c % 64 - 32) + 0.5f;
  std::vector<int8_t> xq(size_t(tokens * cols));
  std::vector<float> scales(size_t(tokens * cols / 256));
  std::vector<int16_t> sums(size_t(tokens * cols / 16));
  cpu::quantizeActivations(x.data(), ldx, cols, tokens, xq.data(), scales.data(), sums.data());
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < cols / 256; ++r) {
      const float *v = x.data() + t * ldx + r * 256;
      float amax = 0;
      for (int i = 0; i < 256; ++i)
        amax = std::max(amax, std::fabs(v[i]));
      ASSERT_EQ(scales[size_t(t * (cols / 256) + r)], amax / 127.0f) << t << " " << r;
      const float inverse = amax > 0 ? 127.0f / amax : 0.0f;
      for (int i = 0; i < 256; ++i) {
        const float expected = std::clamp(std::nearbyint(v[i] * inverse), -127.0f, 127.0f);
        ASSERT_EQ(xq[size_t(t * cols + r * 256 + i)], int8_t(expected))
            << "token " << t << " value " << r * 256 + i << " (" << v[i] << ")";
      }
    }
  // Ties went to even: 0.5 -> 0, 1.5 -> 2, -0.5 -> -0, -1.5 -> -2.
  EXPECT_EQ(xq[size_t(2 * cols + 32)], 0);  // 0.5
  EXPECT_EQ(xq[size_t(2 * cols + 33)], 2);  // 1.5
  EXPECT_EQ(xq[size_t(2 * cols + 31)], 0);  // -0.5
  EXPECT_EQ(xq[size_t(2 * cols + 30)], -2); // -1.5
  EXPECT_EQ(scales[size_t(2 * (cols / 256) + 1)], 0.0f);
  for (int j = 0; j < 16; ++j) {
    int32_t sum = 0;
    for (int i = 0; i < 16; ++i)
      sum += xq[size_t(16 * j + i)];
    EXPECT_EQ(sums[size_t(j)], sum);
  }
}

// A plan whose record of what a kernel reads differs from the code
// object's own is refused, naming both.
TEST(RowKernelInput, APlanRecordingAnotherInputIsRefused) {
  test::TempDir dir("row-kernel-input");
  StatusOr<CpuCodeTarget> target = namedCpuTarget("skylake-avx512");
  ASSERT_TRUE(target.ok()) << target.message();
  StatusOr<plan::CpuCode> code = buildCpuCode({{GgmlType::Q4_K, 512}}, *target,
                                              (dir.path() / "k.so").string(), dir.path().string());
  ASSERT_TRUE(code.ok()) << code.message();
  ASSERT_EQ(code->kernels[0].input, "q8-nibble-order");
  if (!hostRuns(*code))
    GTEST_SKIP() << "this host cannot run code for skylake-avx512";
  code->kernels[0].input = "q8";
  StatusOr<std::unique_ptr<cpu::GeneratedKernels>> kernels =
      cpu::GeneratedKernels::load(*code, (dir.path() / "m.plan").string(), cpu::hostCpuFeatures());
  ASSERT_FALSE(kernels.ok());
  EXPECT_NE(kernels.message().find("reads 'q8-nibble-order' activations, not 'q8'"),
            std::string::npos)
      << kernels.message();
}

class RowKernels : public ::testing::TestWithParam<const char *> {};

TEST_P(RowKernels, MatchDequantizedDotProducts) {
  test::TempDir dir("row-kernels");
  StatusOr<CpuCodeTarget> target = namedCpuTarget(GetParam());
  ASSERT_TRUE(target.ok()) << target.message();
  const std::string shared = (dir.path() / "kernels.so").string();
  StatusOr<plan::CpuCode> code = buildCpuCode(kRequests, *target, shared, dir.path().string());
  ASSERT_TRUE(code.ok()) << code.message();
  EXPECT_EQ(code->file, "kernels.so");
  // AMX-BF16 targets also get a tile kernel per request (TileKernelTest).
  EXPECT_EQ(code->kernels.size(), kRequests.size() * (emitsTileKernels(*target) ? 2 : 1));
  EXPECT_EQ(code->vectorBits, vectorBitsFor(*target));
  for (const std::string &feature : code->features)
    EXPECT_NE(std::find(cpu::checkedIsaFeatures().begin(), cpu::checkedIsaFeatures().end(), feature),
              cpu::checkedIsaFeatures().end())
        << feature << " is not a feature the runtime checks";
  if (!hostRuns(*code))
    GTEST_SKIP() << "this host cannot run code for " << GetParam();
  StatusOr<std::unique_ptr<cpu::GeneratedKernels>> kernels =
      cpu::GeneratedKernels::load(*code, (dir.path() / "m.plan").string(), cpu::hostCpuFeatures());
  ASSERT_TRUE(kernels.ok()) << kernels.message();
  // Integer kernels on AVX2 and newer, for rows of whole 256-value runs.
  auto has = [&](const char *feature) {
    return std::find(target->features.begin(), target->features.end(), feature) !=
           target->features.end();
  };
  // q4_K and q5_K on 512-bit vectors read them in nibble order.
  for (const plan::CpuCodeKernel &kernel : code->kernels) {
    if (kernel.input == "bf16-tiles")
      continue;
    const bool nibbleType = kernel.type == "q4_K" || kernel.type == "q5_K";
    EXPECT_EQ(kernel.input, !has("avx2") || kernel.cols % 256 != 0 ? "f32"
                            : has("avx512bw") && nibbleType        ? "q8-nibble-order"
                                                                   : "q8")
        << kernel.symbol;
  }
  for (const RowKernelRequest &request : kRequests)
    checkKernel(**kernels, request, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Targets, RowKernels,
                         ::testing::Values("x86-64", "haswell", "skylake-avx512",
                                           "cascadelake", "sapphirerapids"),
                         [](const auto &info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(RowKernels, VectorWidthFollowsTheTarget) {
  EXPECT_EQ(vectorBitsFor(*namedCpuTarget("x86-64")), 128);
  EXPECT_EQ(vectorBitsFor(*namedCpuTarget("haswell")), 256);
  EXPECT_EQ(vectorBitsFor(*namedCpuTarget("skylake-avx512")), 512);
  EXPECT_FALSE(namedCpuTarget("pentium-pro-9000").ok());
}

TEST(RowKernels, RefusesUnsupportedRequests) {
  EXPECT_NE(unsupportedReason({GgmlType::Q4_0, 256}).find("no generated CPU kernel"), std::string::npos);
  EXPECT_NE(unsupportedReason({GgmlType::Q4_K, 300}).find("256-value blocks"), std::string::npos);
  EXPECT_EQ(unsupportedReason({GgmlType::Q6_K, 7168}), "");
  test::TempDir dir("row-kernels-bad");
  StatusOr<plan::CpuCode> code = buildCpuCode({{GgmlType::Q4_K, 100}}, *namedCpuTarget("haswell"),
                                              (dir.path() / "k.so").string(), dir.path().string());
  EXPECT_FALSE(code.ok());
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "k.so")) << "a failed build left a file";
}

// The runtime refuses code for an ISA the host lacks, a file that is not
// the one the plan recorded, and a missing file.
TEST(RowKernels, LoaderRefusesWrongHostsAndFiles) {
  test::TempDir dir("row-kernels-load");
  const std::string shared = (dir.path() / "k.so").string();
  StatusOr<plan::CpuCode> code = buildCpuCode({{GgmlType::Q8_0, 256}}, *namedCpuTarget("skylake-avx512"),
                                              shared, dir.path().string());
  ASSERT_TRUE(code.ok()) << code.message();
  const std::string planPath = (dir.path() / "m.plan").string();

  std::vector<std::string> oldHost = {"sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "fma"};
  StatusOr<std::unique_ptr<cpu::GeneratedKernels>> refused = cpu::GeneratedKernels::load(*code, planPath, oldHost);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("skylake-avx512"), std::string::npos) << refused.message();
  EXPECT_NE(refused.message().find("which this host lacks"), std::string::npos) << refused.message();
  EXPECT_NE(refused.message().find("--target-cpu"), std::string::npos) << refused.message();

  std::vector<std::string> everything = code->features;
  plan::CpuCode tampered = *code;
  tampered.hash = "0123456789abcdef";
  StatusOr<std::unique_ptr<cpu::GeneratedKernels>> wrongFile = cpu::GeneratedKernels::load(tampered, planPath, everything);
  ASSERT_FALSE(wrongFile.ok());
  EXPECT_NE(wrongFile.message().find("not the file the plan was compiled with"), std::string::npos);

  plan::CpuCode unknown = *code;
  unknown.kernels.push_back({"q8_0", 512, "kt_rows_q8_0_512"});
  StatusOr<std::unique_ptr<cpu::GeneratedKernels>> lacking = cpu::GeneratedKernels::load(unknown, planPath, everything);
  ASSERT_FALSE(lacking.ok());
  EXPECT_NE(lacking.message().find("lacks the kernel kt_rows_q8_0_512"), std::string::npos) << lacking.message();

  std::filesystem::remove(shared);
  StatusOr<std::unique_ptr<cpu::GeneratedKernels>> missing = cpu::GeneratedKernels::load(*code, planPath, everything);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("is missing"), std::string::npos) << missing.message();
}

} // namespace
} // namespace kt::codegen
