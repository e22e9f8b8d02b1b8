#include "runtime/cpu/MoeRouting.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace kt::cpu {

namespace {

// Index of the largest value among those `eligible`, the lower index on ties;
// -1 if none is.
template <typename Eligible>
int64_t argmax(const float *values, int64_t count, Eligible eligible) {
  int64_t best = -1;
  for (int64_t i = 0; i < count; ++i)
    if (eligible(i) && (best < 0 || values[i] > values[best]))
      best = i;
  return best;
}

} // namespace

void routeToken(const RoutingParams &p, const float *logits, const float *bias, int32_t *ids,
                float *weights, float *scratch) {
  const int64_t n = p.experts;
  float *scores = scratch;
  float *selection = scratch + n;
  float *groupScores = scratch + 2 * n;

  if (p.scoring == GateScoring::Sigmoid) {
    for (int64_t e = 0; e < n; ++e)
      scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  } else {
    float maxLogit = logits[0];
    for (int64_t e = 1; e < n; ++e)
      maxLogit = std::max(maxLogit, logits[e]);
    double sum = 0;
    for (int64_t e = 0; e < n; ++e) {
      scores[e] = std::exp(logits[e] - maxLogit);
      sum += scores[e];
    }
    const float inverse = static_cast<float>(1.0 / sum);
    for (int64_t e = 0; e < n; ++e)
      scores[e] *= inverse;
  }
  for (int64_t e = 0; e < n; ++e)
    selection[e] = bias ? scores[e] + bias[e] : scores[e];

  // Experts of groups that lost are marked -inf, so they are never chosen.
  if (p.groups > 1 && p.groupsUsed < p.groups) {
    const int64_t perGroup = n / p.groups;
    for (int64_t g = 0; g < p.groups; ++g) {
      const float *member = selection + g * perGroup;
      int64_t first = argmax(member, perGroup, [](int64_t) { return true; });
      float score = member[first];
      if (p.scoring == GateScoring::Sigmoid && perGroup > 1) {
        int64_t second = argmax(member, perGroup, [&](int64_t i) { return i != first; });
        score += member[second];
      }
      groupScores[g] = score;
    }
    // Keep the best groupsUsed groups: drop the worst ones one by one (the
    // higher index loses a tie, as the lower index wins it when picking).
    for (int64_t dropped = 0; dropped < p.groups - p.groupsUsed; ++dropped) {
      int64_t worst = -1;
      for (int64_t g = 0; g < p.groups; ++g)
        if (groupScores[g] != -std::numeric_limits<float>::infinity() &&
            (worst < 0 || groupScores[g] <= groupScores[worst]))
          worst = g;
      groupScores[worst] = -std::numeric_limits<float>::infinity();
      std::fill(selection + worst * perGroup, selection + (worst + 1) * perGroup,
                -std::numeric_limits<float>::infinity());
    }
  }

  float sum = 0;
  for (int64_t k = 0; k < p.topK; ++k) {
    int64_t best = argmax(selection, n, [&](int64_t e) {
      for (int64_t j = 0; j < k; ++j)
        if (ids[j] == e)
          return false;
      return true;
    });
    ids[k] = static_cast<int32_t>(best);
    weights[k] = scores[best];
    sum += weights[k];
  }
  if (p.normalize) {
    const float denominator = sum + 1e-20f;
    for (int64_t k = 0; k < p.topK; ++k)
      weights[k] /= denominator;
  }
  for (int64_t k = 0; k < p.topK; ++k)
    weights[k] *= p.scale;
}

} // namespace kt::cpu
