// Quantize -> dequantize round trips: error bounds per type, and exactness
// where the format can represent the input.
#include "runtime/quant/Quant.h"
#include "test/unit/quant/TestUtil.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

namespace kt::quant {
namespace {

using gguf::GgmlType;

std::vector<float> gaussianRow(int64_t elements, uint64_t seed, double sigma) {
  test::GaussianSource source(seed);
  std::vector<float> row(static_cast<size_t>(elements));
  for (float &value : row)
    value = float(sigma * source.next());
  return row;
}

std::vector<float> roundTrip(GgmlType type, const std::vector<float> &input) {
  const int64_t elements = int64_t(input.size());
  std::vector<uint8_t> encoded(size_t(*gguf::ggmlRowBytes(type, elements)));
  std::vector<float> decoded(input.size(), std::nanf(""));
  EXPECT_TRUE(quantize(type, input.data(), encoded.data(), elements).ok());
  EXPECT_TRUE(dequantize(type, encoded.data(), decoded.data(), elements).ok());
  return decoded;
}

double relativeRmsError(const std::vector<float> &expected, const std::vector<float> &actual) {
  double errorSquares = 0, signalSquares = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double diff = double(actual[i]) - double(expected[i]);
    errorSquares += diff * diff;
    signalSquares += double(expected[i]) * double(expected[i]);
  }
  return std::sqrt(errorSquares / signalSquares);
}

struct ErrorBound {
  GgmlType type;
  const char *name;
  double maxRelativeRms; // measured value plus margin
};

class RoundTripTest : public testing::TestWithParam<ErrorBound> {};

TEST_P(RoundTripTest, GaussianDataStaysWithinErrorBound) {
  const ErrorBound &bound = GetParam();
  // Two scales: unit variance and the magnitude of typical model weights.
  for (double sigma : {1.0, 0.02}) {
    const std::vector<float> input = gaussianRow(64 * 256, 0x5eed + uint64_t(sigma * 1000), sigma);
    const std::vector<float> output = roundTrip(bound.type, input);
    const double error = relativeRmsError(input, output);
    std::printf("[ measured ] %s sigma=%g relative RMS error %.5f%%\n", bound.name, sigma,
                100 * error);
    EXPECT_LT(error, bound.maxRelativeRms) << bound.name << " sigma " << sigma;
    for (size_t i = 0; i < input.size(); ++i)
      ASSERT_TRUE(std::isfinite(output[i])) << i;
  }
}

TEST_P(RoundTripTest, ZerosStayExactlyZero) {
  const std::vector<float> zeros(512, 0.0f);
  const std::vector<float> output = roundTrip(GetParam().type, zeros);
  for (size_t i = 0; i < output.size(); ++i)
    ASSERT_EQ(output[i], 0.0f) << i;
}

TEST_P(RoundTripTest, ValuesLandInTheRightPlaces) {
  // A ramp makes element order visible: a permuted layout would still have a
  // plausible RMS error on Gaussian data but not on a ramp, where elements 16
  // apart differ by 0.125. (Q4_K's worst error here is 0.024.)
  std::vector<float> ramp(512);
  for (size_t i = 0; i < ramp.size(); ++i)
    ramp[i] = float(int(i % 256) - 128) / 128.0f;
  const std::vector<float> output = roundTrip(GetParam().type, ramp);
  for (size_t i = 0; i < ramp.size(); ++i)
    ASSERT_NEAR(output[i], ramp[i], 0.05) << GetParam().name << " element " << i;
}

INSTANTIATE_TEST_SUITE_P(
    QuantizableTypes, RoundTripTest,
    // Measured on these inputs (sigma 1 / 0.02): f16 0.021%, bf16 0.167%,
    // q8_0 0.534% / 0.537%, q6_K 1.76% / 1.78%, q5_K 3.60% / 3.59%,
    // q4_K 7.11% / 7.06%. Q8_0's floor is the uniform rounding noise of its
    // step max|x|/127, about 0.52% of sigma for 32 Gaussian values.
    testing::Values(ErrorBound{GgmlType::F32, "f32", 1e-30}, ErrorBound{GgmlType::F16, "f16", 3e-4},
                    ErrorBound{GgmlType::BF16, "bf16", 2e-3}, ErrorBound{GgmlType::Q8_0, "q8_0", 6e-3},
                    ErrorBound{GgmlType::Q6_K, "q6_K", 2e-2}, ErrorBound{GgmlType::Q5_K, "q5_K", 4e-2},
                    ErrorBound{GgmlType::Q4_K, "q4_K", 8e-2}),
    [](const testing::TestParamInfo<ErrorBound> &info) { return std::string(info.param.name); });

TEST(RoundTripTest, FinerFormatsAreMoreAccurate) {
  const std::vector<float> input = gaussianRow(32 * 256, 77, 1.0);
  const double q8 = relativeRmsError(input, roundTrip(GgmlType::Q8_0, input));
  const double q6 = relativeRmsError(input, roundTrip(GgmlType::Q6_K, input));
  const double q5 = relativeRmsError(input, roundTrip(GgmlType::Q5_K, input));
  const double q4 = relativeRmsError(input, roundTrip(GgmlType::Q4_K, input));
  EXPECT_LT(q8, q6);
  EXPECT_LT(q6, q5);
  EXPECT_LT(q5, q4);
}

TEST(RoundTripTest, Q8_0RepresentsScaledIntegersExactly) {
  // With max |x| = 127 the block scale is exactly 1, so integers survive.
  std::vector<float> input(64);
  for (size_t i = 0; i < input.size(); ++i)
    input[i] = float(int(i * 37 % 255) - 127);
  input[0] = 127.0f;
  input[32] = -127.0f;
  EXPECT_EQ(roundTrip(GgmlType::Q8_0, input), input);
}

TEST(RoundTripTest, F16AndBf16KeepRepresentableValues) {
  const std::vector<float> values = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 0.099975586f,
                                     std::ldexp(1.0f, -24), std::ldexp(1.0f, -14)};
  EXPECT_EQ(roundTrip(GgmlType::F16, values), values);
  const std::vector<float> bf16Values = {0.0f, 1.0f, -2.5f, 3.3895314e38f, 1.1754944e-38f};
  EXPECT_EQ(roundTrip(GgmlType::BF16, bf16Values), bf16Values);
}

} // namespace
} // namespace kt::quant
