#include "runtime/cpu/Rope.h"

#include <algorithm>
#include <cmath>

namespace kt::cpu {

double yarnMscale(double scale, double mscale) {
  if (scale <= 1.0)
    return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

namespace {

// GGUF stores 0.1 * mscale_all_dim.
double mscaleAllDim(const RopeConfig &config) { return config.yarnLogMultiplier / 0.1; }

// HF's find_correction_dim: the dimension whose wavelength makes
// `rotations` turns over the original context.
double correctionDim(double rotations, const RopeConfig &config) {
  return static_cast<double>(config.dims) *
         std::log(static_cast<double>(config.originalContext) / (rotations * 2.0 * M_PI)) /
         (2.0 * std::log(config.theta));
}

} // namespace

YarnRange yarnCorrectionRange(const RopeConfig &config) {
  double low = std::floor(correctionDim(config.betaFast, config));
  double high = std::ceil(correctionDim(config.betaSlow, config));
  YarnRange range;
  range.low = std::max(low, 0.0);
  range.high = std::min(high, static_cast<double>(config.dims - 1));
  return range;
}

std::vector<float> ropeInverseFrequencies(const RopeConfig &config) {
  const int64_t half = config.dims / 2;
  std::vector<float> inverse(static_cast<size_t>(half));
  // Each step in float32, as torch computes it: base ** (arange(0, dim, 2) / dim).
  auto baseFrequency = [&](int64_t i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(config.dims);
    return static_cast<float>(std::pow(config.theta, static_cast<double>(exponent)));
  };
  if (!config.yarn()) {
    for (int64_t i = 0; i < half; ++i)
      inverse[static_cast<size_t>(i)] = 1.0f / baseFrequency(i);
    return inverse;
  }
  YarnRange range = yarnCorrectionRange(config);
  float low = static_cast<float>(range.low);
  float high = static_cast<float>(range.high);
  if (low == high)
    high += 0.001f; // HF's guard against a zero-width ramp
  const float factor = static_cast<float>(config.factor);
  for (int64_t i = 0; i < half; ++i) {
    const float frequency = baseFrequency(i);
    const float extrapolation = 1.0f / frequency;
    const float interpolation = 1.0f / (factor * frequency);
    const float ramp = std::clamp((static_cast<float>(i) - low) / (high - low), 0.0f, 1.0f);
    const float extrapolationWeight = 1.0f - ramp;
    inverse[static_cast<size_t>(i)] =
        interpolation * (1.0f - extrapolationWeight) + extrapolation * extrapolationWeight;
  }
  return inverse;
}

double ropeCosSinScale(const RopeConfig &config) {
  if (!config.yarn())
    return 1.0;
  const double allDim = mscaleAllDim(config);
  if (allDim != 0.0) // HF: mscale(factor, mscale) / mscale(factor, mscale_all_dim), equal terms
    return yarnMscale(config.factor, allDim) / yarnMscale(config.factor, allDim);
  // No mscale_all_dim: llama.cpp, whose reading of GGUF we follow, cancels
  // YaRN's rotary factor (HF gets attention_factor = 1 from kt-export-hf).
  return 1.0;
}

double attentionSoftmaxScale(int64_t qkHeadDim, const RopeConfig &config) {
  double scale = 1.0 / std::sqrt(static_cast<double>(qkHeadDim));
  const double allDim = mscaleAllDim(config);
  if (config.yarn() && allDim != 0.0) {
    const double mscale = yarnMscale(config.factor, allDim);
    scale *= mscale * mscale;
  }
  return scale;
}

Rope::Rope(const RopeConfig &config)
    : dims_(config.dims), cosSinScale_(static_cast<float>(ropeCosSinScale(config))),
      inverseFrequencies_(ropeInverseFrequencies(config)) {}

void Rope::angles(int64_t position, float *cos, float *sin) const {
  const float p = static_cast<float>(position);
  for (size_t i = 0; i < inverseFrequencies_.size(); ++i) {
    // The angle rounded to float32 as HF's float32 product rounds it; its
    // cosine and sine then correctly rounded.
    const float angle = inverseFrequencies_[i] * p;
    cos[i] = static_cast<float>(std::cos(static_cast<double>(angle))) * cosSinScale_;
    sin[i] = static_cast<float>(std::sin(static_cast<double>(angle))) * cosSinScale_;
  }
}

void Rope::rotate(float *x, const float *cos, const float *sin) const {
  const int64_t half = dims_ / 2;
  float rotated[512];
  float *out = dims_ <= 512 ? rotated : new float[static_cast<size_t>(dims_)];
  for (int64_t i = 0; i < half; ++i) {
    const float even = x[2 * i], odd = x[2 * i + 1];
    out[i] = even * cos[i] - odd * sin[i];
    out[i + half] = odd * cos[i] + even * sin[i];
  }
  std::copy(out, out + dims_, x);
  if (out != rotated)
    delete[] out;
}

} // namespace kt::cpu
