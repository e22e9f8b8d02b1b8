// RoPE / YaRN against values computed by hand from Hugging Face's formulas
// (modeling_rope_utils._compute_yarn_parameters, DeepseekV3Attention).
#include "runtime/cpu/Rope.h"

#include <gtest/gtest.h>

#include <cmath>

namespace kt::cpu {
namespace {

RopeConfig yarnConfig(int64_t dims) {
  RopeConfig c;
  c.dims = dims;
  c.theta = 10000.0;
  c.factor = 40.0;
  c.originalContext = 4096;
  c.yarnLogMultiplier = 0.1; // mscale_all_dim = 1, as DeepSeek-V3's config.json
  return c;
}

TEST(Rope, PlainFrequenciesAreThetaPowers) {
  RopeConfig c;
  c.dims = 16;
  c.theta = 10000.0;
  std::vector<float> inv = ropeInverseFrequencies(c);
  ASSERT_EQ(inv.size(), 8u);
  for (int i = 0; i < 8; ++i)
    EXPECT_NEAR(inv[i], std::pow(10000.0, -2.0 * i / 16.0), 1e-7 * std::pow(10000.0, -2.0 * i / 16.0))
        << i;
  EXPECT_EQ(ropeCosSinScale(c), 1.0);
  EXPECT_DOUBLE_EQ(attentionSoftmaxScale(48, c), 1.0 / std::sqrt(48.0));
}

TEST(Rope, YarnCorrectionRangeOfSmallAndV3Dims) {
  // dims 16: find_correction_dim(32) = 16 ln(4096 / 64pi) / (2 ln 1e4) = 2.618,
  // find_correction_dim(1) = 16 ln(4096 / 2pi) / (2 ln 1e4) = 5.628.
  YarnRange small = yarnCorrectionRange(yarnConfig(16));
  EXPECT_EQ(small.low, 2.0);
  EXPECT_EQ(small.high, 6.0);
  // DeepSeek-V3's 64 rope dims: 10.47 and 22.51.
  YarnRange v3 = yarnCorrectionRange(yarnConfig(64));
  EXPECT_EQ(v3.low, 10.0);
  EXPECT_EQ(v3.high, 23.0);
}

TEST(Rope, YarnFrequenciesBlendAlongTheRamp) {
  std::vector<float> inv = ropeInverseFrequencies(yarnConfig(16));
  ASSERT_EQ(inv.size(), 8u);
  // ramp = clamp((i - 2) / (6 - 2), 0, 1): the first dims keep their
  // frequency (extrapolation), the last are divided by the factor.
  const double ramp[8] = {0, 0, 0, 0.25, 0.5, 0.75, 1, 1};
  for (int i = 0; i < 8; ++i) {
    const double base = std::pow(10000.0, -2.0 * i / 16.0);
    const double expected = base * (1 - ramp[i]) + base / 40.0 * ramp[i];
    EXPECT_NEAR(inv[i], expected, 2e-7 * expected) << i;
  }
}

TEST(Rope, MscaleGoesToTheSoftmaxScaleWhenTheModelHasMscaleAllDim) {
  const double m = 0.1 * 1.0 * std::log(40.0) + 1.0; // yarn_get_mscale(40, 1)
  EXPECT_NEAR(m, 1.3688879454113936, 1e-15);
  EXPECT_NEAR(attentionSoftmaxScale(192, yarnConfig(64)), m * m / std::sqrt(192.0), 1e-15);
  // mscale / mscale_all_dim = 1: cos and sin are not scaled.
  EXPECT_EQ(ropeCosSinScale(yarnConfig(64)), 1.0);

  // DeepSeek-V2's mscale_all_dim 0.707 (yarn_log_multiplier 0.0707).
  RopeConfig v2 = yarnConfig(64);
  v2.yarnLogMultiplier = 0.0707;
  const double m2 = 0.1 * 0.707 * std::log(40.0) + 1.0;
  EXPECT_NEAR(attentionSoftmaxScale(192, v2), m2 * m2 / std::sqrt(192.0), 1e-12);
}

TEST(Rope, WithoutMscaleAllDimNothingIsScaled) {
  // llama.cpp's reading of GGUF: with yarn_log_multiplier 0 it cancels YaRN's
  // rotary factor 0.1 * ln(factor) + 1, and the softmax scale keeps 1 / sqrt(d).
  RopeConfig c = yarnConfig(64);
  c.yarnLogMultiplier = 0.0;
  EXPECT_EQ(ropeCosSinScale(c), 1.0);
  EXPECT_DOUBLE_EQ(attentionSoftmaxScale(192, c), 1.0 / std::sqrt(192.0));
  Rope rope(c);
  float cos[32], sin[32];
  rope.angles(0, cos, sin);
  EXPECT_EQ(cos[0], 1.0f);
  EXPECT_EQ(sin[0], 0.0f);
  // The frequencies are YaRN's all the same.
  EXPECT_EQ(rope.inverseFrequencies(), ropeInverseFrequencies(yarnConfig(64)));
}

TEST(Rope, RotationPairsNeighboursAndStoresTheHalvesLikeHf) {
  RopeConfig c;
  c.dims = 4;
  c.theta = 10000.0; // inv_freq = [1, 0.01]
  Rope rope(c);
  float cos[2], sin[2];
  rope.angles(3, cos, sin);
  EXPECT_NEAR(cos[0], std::cos(3.0), 1e-7);
  EXPECT_NEAR(sin[1], std::sin(0.03), 1e-7);
  float x[4] = {1, 2, 3, 4};
  rope.rotate(x, cos, sin);
  // HF: q.view(d/2, 2).transpose -> (1, 3, 2, 4); q * cos + rotate_half(q) * sin.
  const double c0 = std::cos(3.0), s0 = std::sin(3.0), c1 = std::cos(0.03), s1 = std::sin(0.03);
  EXPECT_NEAR(x[0], 1 * c0 - 2 * s0, 1e-6);
  EXPECT_NEAR(x[1], 3 * c1 - 4 * s1, 1e-6);
  EXPECT_NEAR(x[2], 2 * c0 + 1 * s0, 1e-6);
  EXPECT_NEAR(x[3], 4 * c1 + 3 * s1, 1e-6);
}

TEST(Rope, RotatedDotProductsDependOnlyOnTheDistance) {
  RopeConfig c = yarnConfig(16);
  Rope rope(c);
  std::vector<float> q(16), k(16);
  for (int i = 0; i < 16; ++i) {
    q[i] = std::sin(1.0f + i);
    k[i] = std::cos(0.5f * i);
  }
  auto score = [&](int64_t qPos, int64_t kPos) {
    std::vector<float> a = q, b = k, cos(8), sin(8);
    rope.angles(qPos, cos.data(), sin.data());
    rope.rotate(a.data(), cos.data(), sin.data());
    rope.angles(kPos, cos.data(), sin.data());
    rope.rotate(b.data(), cos.data(), sin.data());
    double s = 0;
    for (int i = 0; i < 16; ++i)
      s += double(a[i]) * b[i];
    return s;
  };
  EXPECT_NEAR(score(7, 3), score(14, 10), 1e-5);
  EXPECT_GT(std::abs(score(7, 3) - score(7, 6)), 1e-3);
}

} // namespace
} // namespace kt::cpu
