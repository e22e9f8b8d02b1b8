#include "runtime/cpu/Math.h"

#include <algorithm>
#include <cmath>

namespace kt::cpu {

void rmsNorm(const float *x, const float *weight, int64_t n, float eps, float *out) {
  double sumSquares = 0;
  for (int64_t i = 0; i < n; ++i)
    sumSquares += static_cast<double>(x[i]) * x[i];
  const float variance = static_cast<float>(sumSquares / static_cast<double>(n));
  const float inverseRms = 1.0f / std::sqrt(variance + eps);
  for (int64_t i = 0; i < n; ++i)
    out[i] = weight[i] * (x[i] * inverseRms);
}

void softmax(float *x, int64_t n) {
  float maxValue = x[0];
  for (int64_t i = 1; i < n; ++i)
    maxValue = std::max(maxValue, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - maxValue);
    sum += x[i];
  }
  const float inverse = static_cast<float>(1.0 / sum);
  for (int64_t i = 0; i < n; ++i)
    x[i] *= inverse;
}

} // namespace kt::cpu
