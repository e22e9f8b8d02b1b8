#include "runtime/exec/TokenSampling.h"

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace kt::exec {
namespace {

// splitmix64's finalizer (kernels/sample.cu has the same).
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

constexpr double kFixedPointOne = 1099511627776.0; // 2^40

} // namespace

float samplingUniform(uint64_t seed, uint64_t draw, int64_t token) {
  // 23 bits: bits + 0.5 is exact in float, so u stays below 1 (with 24,
  // the last value rounded to 1.0 and its token's noise to infinity).
  const uint64_t bits = mix(mix(seed ^ mix(draw)) + uint64_t(token)) >> 41;
  return (float(bits) + 0.5f) * (1.0f / 8388608.0f);
}

// The largest key t with sum(amount of the keys >= t, among those passing
// `candidate`) >= target, found 8 bits at a time as the GPU kernel does (no
// sort): at each step the bin of the next 8 bits where the running amount,
// from the top, reaches the target. `amount(i)` is 1 for top-k (the count)
// or the token's weight for top-p.
namespace {
template <typename Amount>
uint32_t radixThreshold(const std::vector<uint32_t> &keys, uint32_t floor, uint64_t target,
                        Amount amount) {
  uint32_t prefix = 0, mask = 0;
  uint64_t above = 0; // amount of the keys above the current prefix's range
  for (int shift = 24; shift >= 0; shift -= 8) {
    uint64_t bins[256] = {};
    for (size_t i = 0; i < keys.size(); ++i)
      if (keys[i] >= floor && (keys[i] & mask) == prefix)
        bins[(keys[i] >> shift) & 255] += amount(i);
    int chosen = 0;
    for (int bin = 255; bin >= 0; --bin) {
      if (above + bins[bin] >= target) {
        chosen = bin;
        break;
      }
      above += bins[bin];
    }
    prefix |= uint32_t(chosen) << shift;
    mask |= 255u << shift;
  }
  return prefix;
}
} // namespace

int32_t sampleToken(const float *logits, int64_t vocab, const TokenSampling &sampling) {
  if (sampling.greedy())
    return int32_t(std::max_element(logits, logits + vocab) - logits);
  const float top = *std::max_element(logits, logits + vocab);
  const float inverseTemperature = 1.0f / sampling.temperature;
  std::vector<uint32_t> keys(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i)
    keys[size_t(i)] = logitKey(logits[i]);
  // Top-k: the k-th largest key.
  uint32_t threshold = 0;
  if (sampling.topK > 0 && sampling.topK < vocab)
    threshold = radixThreshold(keys, 0, uint64_t(sampling.topK), [](size_t) { return 1; });
  // Top-p: the largest key whose candidates at or above it hold p of the
  // candidates' weight. Tokens more than 28 temperatures below the best
  // weigh 0 in 2^-40 fixed point (e^-28 < 2^-40): no exp for them.
  if (sampling.topP < 1.0f) {
    std::vector<uint64_t> weights(static_cast<size_t>(vocab), 0);
    uint64_t total = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const float scaled = (logits[i] - top) * inverseTemperature;
      if (keys[size_t(i)] < threshold || scaled < -28.0f)
        continue;
      weights[size_t(i)] = uint64_t(double(std::exp(scaled)) * kFixedPointOne);
      total += weights[size_t(i)];
    }
    const uint64_t target = std::max<uint64_t>(1, uint64_t(double(sampling.topP) * double(total)));
    threshold = radixThreshold(keys, threshold, target, [&](size_t i) { return weights[i]; });
  }
  // Gumbel-max over the tokens at or above the threshold. The best token's
  // score is at least -log(-log(2^-24)) > -2.82 and no token's noise exceeds
  // -log(-log(1 - 2^-24)) < 16.64, so tokens more than 21 temperatures below
  // the best can never win: they are skipped.
  int32_t best = 0;
  float bestScore = -INFINITY;
  for (int64_t i = 0; i < vocab; ++i) {
    if (keys[size_t(i)] < threshold)
      continue;
    const float scaled = (logits[i] - top) * inverseTemperature;
    if (scaled < -21.0f)
      continue;
    const float u = samplingUniform(sampling.seed, sampling.draw, i);
    const float score = scaled - std::log(-std::log(u));
    if (score > bestScore) {
      bestScore = score;
      best = int32_t(i);
    }
  }
  return best;
}

} // namespace kt::exec
