// Choosing the next token from logits: greedy at temperature 0, else
// temperature, top-k and top-p (nucleus) sampling with a seeded generator.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
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
  explicit Sampler(SamplingOptions options) : options_(options), random_(options.seed) {}
  // The chosen token id; `logits` has one entry per vocabulary token.
  int32_t sample(const std::vector<float> &logits) { return sample(logits.data(), logits.size()); }
  int32_t sample(const float *logits, size_t count);
  // Temperature 0: the most likely token, which the executor can pick where
  // the logits are (Executor::forwardGreedy).
  bool greedy() const { return options_.temperature <= 0.0; }

private:
  SamplingOptions options_;
  std::mt19937_64 random_;
};

} // namespace kt::ktrun
