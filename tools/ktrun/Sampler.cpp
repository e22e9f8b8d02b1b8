#include "tools/ktrun/Sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace kt::ktrun {

int32_t Sampler::sample(const float *logits, size_t count) {
  if (options_.temperature <= 0.0)
    return static_cast<int32_t>(std::max_element(logits, logits + count) - logits);
  // Best first; equal logits by id, so the order is the same however many
  // tokens are sorted.
  auto better = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  const float top = *std::max_element(logits, logits + count);
  const float inverseTemperature = float(1.0 / options_.temperature);
  // exp in float (a third of double's time over a vocabulary), sums in double.
  auto weight = [&](int32_t token) { return std::exp((logits[token] - top) * inverseTemperature); };
  std::vector<int32_t> order;
  double total = 0; // the softmax's denominator over all candidates
  if (options_.topK > 0 && size_t(options_.topK) < count) {
    // Top-k: the k best, sorted.
    order.resize(count);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + options_.topK, order.end(), better);
    order.resize(size_t(options_.topK));
    for (int32_t token : order)
      total += weight(token);
  } else if (options_.topP >= 1.0) {
    // Every token, in id order (no order matters without top-p).
    order.resize(count);
    std::iota(order.begin(), order.end(), 0);
    for (int32_t token : order)
      total += weight(token);
  } else {
    // Top-p over the whole vocabulary. The nucleus is a prefix of the
    // tokens by logit, so only the tokens within a margin of the best need
    // sorting: those whose weight already reaches p of the total (the margin
    // widens until it does). Sorting all 129280 logits took 14 ms per token.
    for (size_t token = 0; token < count; ++token)
      total += weight(int32_t(token));
    float margin = 2.0f / inverseTemperature; // logits this far below the best
    for (;;) {
      order.clear();
      double mass = 0;
      for (size_t token = 0; token < count; ++token)
        if (logits[token] >= top - margin) {
          order.push_back(int32_t(token));
          mass += weight(int32_t(token));
        }
      if (mass >= options_.topP * total || order.size() == count)
        break;
      margin *= 2;
    }
    std::sort(order.begin(), order.end(), better);
  }
  // Top-p: the smallest prefix whose probability reaches p.
  std::vector<double> probabilities(order.size());
  double cumulative = 0;
  size_t nucleus = order.size();
  for (size_t i = 0; i < order.size(); ++i) {
    probabilities[i] = weight(order[i]);
    cumulative += probabilities[i] / total;
    if (options_.topP < 1.0 && cumulative >= options_.topP) {
      nucleus = i + 1;
      break;
    }
  }
  std::discrete_distribution<size_t> choose(probabilities.begin(),
                                            probabilities.begin() + nucleus);
  return order[choose(random_)];
}

} // namespace kt::ktrun
