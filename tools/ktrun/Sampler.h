// Choosing the next token from logits: greedy at temperature 0, else
// temperature, top-k and top-p (nucleus) sampling with a seeded sequence of
// draws. The rule is exec::sampleToken's (runtime/exec/TokenSampling.h),
// which GPU executors run where the logits are (Executor::forwardSampled).
#pragma once

#include "runtime/exec/TokenSampling.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kt::ktrun {

struct SamplingOptions {
  double temperature = 0.0; // 0: greedy
  int topK = 0;             // 0: no limit
  double topP = 1.0;        // 1: no limit
  uint64_t seed = 0;
};

class Sampler {
public:
  explicit Sampler(SamplingOptions options) : options_(options) {}
  // The chosen token id; `logits` has one entry per vocabulary token.
  int32_t sample(const std::vector<float> &logits) { return sample(logits.data(), logits.size()); }
  int32_t sample(const float *logits, size_t count);
  // The next draw's parameters, for an executor to sample where the logits
  // are; advances the sequence as sample() does.
  exec::TokenSampling nextDraw();
  // Temperature 0: the most likely token, which the executor can pick where
  // the logits are (Executor::forwardGreedy).
  bool greedy() const { return options_.temperature <= 0.0; }

private:
  SamplingOptions options_;
  uint64_t draws_ = 0;
};

} // namespace kt::ktrun
