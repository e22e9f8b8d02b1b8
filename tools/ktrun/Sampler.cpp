#include "tools/ktrun/Sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace kt::ktrun {

int32_t Sampler::sample(const float *logits, size_t count) {
  if (options_.temperature <= 0.0)
    return static_cast<int32_t>(std::max_element(logits, logits + count) - logits);
  // Candidates by logit, best first; top-k keeps the first k.
  std::vector<int32_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  size_t keep = options_.topK > 0 ? std::min<size_t>(options_.topK, order.size()) : order.size();
  std::partial_sort(order.begin(), order.begin() + keep, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  order.resize(keep);
  // Softmax at the temperature, in double for stability.
  std::vector<double> probabilities(order.size());
  double top = logits[order.front()], sum = 0;
  for (size_t i = 0; i < order.size(); ++i)
    sum += probabilities[i] = std::exp((logits[order[i]] - top) / options_.temperature);
  // Top-p: the smallest prefix whose probability reaches p.
  double cumulative = 0;
  size_t nucleus = order.size();
  for (size_t i = 0; i < order.size(); ++i) {
    cumulative += probabilities[i] / sum;
    if (cumulative >= options_.topP) {
      nucleus = i + 1;
      break;
    }
  }
  std::discrete_distribution<size_t> choose(probabilities.begin(),
                                            probabilities.begin() + nucleus);
  return order[choose(random_)];
}

} // namespace kt::ktrun
