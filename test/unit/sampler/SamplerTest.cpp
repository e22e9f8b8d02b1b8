#include "tools/ktrun/Sampler.h"

#include "runtime/exec/TokenSampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>

namespace kt::ktrun {
namespace {

const std::vector<float> kLogits = {0.5f, 3.0f, 2.9f, -1.0f, 1.0f};

TEST(SamplerTest, TemperatureZeroIsGreedy) {
  Sampler sampler({0.0, 0, 1.0, 7});
  for (int i = 0; i < 10; ++i)
    EXPECT_EQ(sampler.sample(kLogits), 1);
}

TEST(SamplerTest, TopKOneIsGreedyAtAnyTemperature) {
  Sampler sampler({5.0, 1, 1.0, 7});
  for (int i = 0; i < 50; ++i)
    EXPECT_EQ(sampler.sample(kLogits), 1);
}

TEST(SamplerTest, TopKLimitsTheCandidates) {
  Sampler sampler({10.0, 2, 1.0, 3});
  std::map<int, int> seen;
  for (int i = 0; i < 400; ++i)
    ++seen[sampler.sample(kLogits)];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_GT(seen[1], 100);
  EXPECT_GT(seen[2], 100);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // At temperature 1, tokens 1 and 2 hold about 0.83 of the probability.
  Sampler sampler({1.0, 0, 0.8, 11});
  std::map<int, int> seen;
  for (int i = 0; i < 400; ++i)
    ++seen[sampler.sample(kLogits)];
  EXPECT_EQ(seen.size(), 2u) << "tokens outside the nucleus were sampled";
  EXPECT_TRUE(seen.count(1) && seen.count(2));
}

TEST(SamplerTest, SameSeedSameTokens) {
  Sampler a({1.5, 0, 1.0, 42}), b({1.5, 0, 1.0, 42}), c({1.5, 0, 1.0, 43});
  std::vector<int> fromA, fromB, fromC;
  for (int i = 0; i < 64; ++i) {
    fromA.push_back(a.sample(kLogits));
    fromB.push_back(b.sample(kLogits));
    fromC.push_back(c.sample(kLogits));
  }
  EXPECT_EQ(fromA, fromB);
  EXPECT_NE(fromA, fromC);
}

TEST(SamplerTest, HighTemperatureReachesEveryToken) {
  Sampler sampler({100.0, 0, 1.0, 5});
  std::map<int, int> seen;
  for (int i = 0; i < 1000; ++i)
    ++seen[sampler.sample(kLogits)];
  EXPECT_EQ(seen.size(), kLogits.size());
}

// The top-p nucleus by brute force: every token sorted by logit, the
// smallest prefix whose softmax probability reaches p, every token tied
// with its last one, and one more (rounding may put the boundary one token
// later).
std::set<int32_t> nucleusOf(const std::vector<float> &logits, double temperature, double p) {
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const double top = logits[order.front()];
  double total = 0;
  for (float logit : logits)
    total += std::exp((logit - top) / temperature);
  std::set<int32_t> nucleus;
  double cumulative = 0;
  size_t i = 0;
  for (; i < order.size() && cumulative < p; ++i) {
    nucleus.insert(order[i]);
    cumulative += std::exp((logits[order[i]] - top) / temperature) / total;
  }
  const float boundary = logits[order[i - 1]];
  for (; i < order.size() && logits[order[i]] == boundary; ++i)
    nucleus.insert(order[i]);
  if (i < order.size())
    nucleus.insert(order[i]);
  return nucleus;
}

// A vocabulary the size of DeepSeek-V3's: every sample lies in the nucleus
// of a full sort.
TEST(SamplerTest, TopPOverALargeVocabularySamplesOnlyTheNucleus) {
  std::vector<float> logits(129280);
  std::mt19937 random(3);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (float &logit : logits)
    logit = normal(random);
  const std::set<int32_t> nucleus = nucleusOf(logits, 0.6, 0.9);
  Sampler sampler({0.6, 0, 0.9, 21});
  std::set<int32_t> seen;
  for (int i = 0; i < 300; ++i) {
    const int32_t token = sampler.sample(logits);
    ASSERT_TRUE(nucleus.count(token)) << "token " << token << " is outside the nucleus";
    seen.insert(token);
  }
  EXPECT_GT(seen.size(), 1u);
}

// One token far ahead and 100000 tied ones 3 temperatures below it: the
// best token alone holds too little probability, and the tokens tied at the
// boundary all stay in the nucleus (no order among equals is preferred).
TEST(SamplerTest, TopPKeepsEveryTokenTiedAtTheBoundary) {
  std::vector<float> logits(100001, 7.0f);
  logits[500] = 10.0f;
  Sampler sampler({1.0, 0, 0.5, 5});
  std::set<int32_t> seen;
  for (int i = 0; i < 300; ++i)
    seen.insert(sampler.sample(logits));
  EXPECT_GT(seen.size(), 280u); // 100001 nearly equally likely tokens
  EXPECT_GT(*seen.rbegin(), 90000);
  EXPECT_LT(*seen.begin(), 10000);
}

// Frequencies over many draws against the exact distribution: softmax at
// the temperature, renormalized over the top-k tokens, then over the
// nucleus of those.
TEST(SamplerTest, DrawsFollowTheRenormalizedSoftmax) {
  const std::vector<float> logits = {1.0f, 2.5f, 0.2f, 2.0f, -3.0f, 1.9f, 0.9f};
  struct Case {
    double temperature;
    int topK;
    double topP;
  };
  for (const Case &c : {Case{0.7, 0, 1.0}, Case{0.7, 4, 1.0}, Case{1.3, 0, 0.8},
                        Case{0.9, 5, 0.75}}) {
    // The expected probabilities, by the definition.
    std::vector<int> order(logits.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    const size_t k = c.topK > 0 ? size_t(c.topK) : logits.size();
    double total = 0;
    for (size_t i = 0; i < k; ++i)
      total += std::exp((logits[order[i]] - logits[order[0]]) / c.temperature);
    std::vector<double> expected(logits.size(), 0.0);
    double mass = 0, kept = 0;
    for (size_t i = 0; i < k && mass < c.topP * total; ++i) {
      const double w = std::exp((logits[order[i]] - logits[order[0]]) / c.temperature);
      expected[size_t(order[i])] = w;
      mass += w;
      kept += w;
    }
    for (double &p : expected)
      p /= kept;
    Sampler sampler({c.temperature, c.topK, c.topP, 99});
    const int draws = 40000;
    std::vector<int> counts(logits.size(), 0);
    for (int i = 0; i < draws; ++i)
      ++counts[size_t(sampler.sample(logits))];
    for (size_t t = 0; t < logits.size(); ++t) {
      if (expected[t] == 0.0)
        EXPECT_EQ(counts[t], 0) << "token " << t << " is outside the candidates";
      else // 4 standard deviations at most
        EXPECT_NEAR(double(counts[t]) / draws, expected[t], 0.01)
            << "token " << t << ", temperature " << c.temperature << ", top-k " << c.topK
            << ", top-p " << c.topP;
    }
  }
}

// exec::sampleToken's rule written out plainly (full sorts, every token
// weighed and drawn): the radix selections and the skipped far tokens of the
// real one must give the same token.
int32_t plainRule(const std::vector<float> &logits, const exec::TokenSampling &s) {
  const float top = *std::max_element(logits.begin(), logits.end());
  if (s.greedy())
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  const float inverse = 1.0f / s.temperature;
  std::vector<uint32_t> keys;
  for (float logit : logits)
    keys.push_back(exec::logitKey(logit));
  uint32_t threshold = 0;
  if (s.topK > 0 && size_t(s.topK) < logits.size()) {
    std::vector<uint32_t> sorted = keys;
    std::sort(sorted.rbegin(), sorted.rend());
    threshold = sorted[size_t(s.topK - 1)];
  }
  if (s.topP < 1.0f) {
    std::vector<std::pair<uint32_t, uint64_t>> candidates;
    uint64_t total = 0;
    for (size_t i = 0; i < logits.size(); ++i)
      if (keys[i] >= threshold) {
        const uint64_t w =
            uint64_t(double(std::exp((logits[i] - top) * inverse)) * 1099511627776.0);
        candidates.push_back({keys[i], w});
        total += w;
      }
    const uint64_t target = std::max<uint64_t>(1, uint64_t(double(s.topP) * double(total)));
    std::sort(candidates.rbegin(), candidates.rend());
    uint64_t mass = 0;
    for (size_t i = 0; i < candidates.size(); ++i) {
      mass += candidates[i].second;
      const bool lastOfKey =
          i + 1 == candidates.size() || candidates[i + 1].first != candidates[i].first;
      if (lastOfKey && mass >= target) {
        threshold = candidates[i].first;
        break;
      }
    }
  }
  int32_t best = 0;
  float bestScore = -INFINITY;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (keys[i] < threshold)
      continue;
    const float u = exec::samplingUniform(s.seed, s.draw, int64_t(i));
    const float score = (logits[i] - top) * inverse - std::log(-std::log(u));
    if (score > bestScore) {
      bestScore = score;
      best = int32_t(i);
    }
  }
  return best;
}

TEST(SamplerTest, TheRuleDrawsAsItsPlainDefinition) {
  std::mt19937 random(17);
  int compared = 0;
  for (float spread : {0.5f, 4.0f, 40.0f}) {
    std::normal_distribution<float> normal(0.0f, spread);
    std::vector<float> logits(5000);
    for (float &logit : logits)
      logit = std::round(normal(random) * 8) / 8; // some ties
    for (const exec::TokenSampling &setting :
         {exec::TokenSampling{0.7f, 0, 1.0f}, exec::TokenSampling{1.0f, 0, 0.9f},
          exec::TokenSampling{0.3f, 50, 0.8f}, exec::TokenSampling{2.0f, 7, 1.0f},
          exec::TokenSampling{1.0f, 0, 0.05f}})
      for (uint64_t draw = 0; draw < 40; ++draw) {
        exec::TokenSampling s = setting;
        s.seed = 5;
        s.draw = draw;
        ASSERT_EQ(exec::sampleToken(logits.data(), int64_t(logits.size()), s),
                  plainRule(logits, s))
            << "spread " << spread << ", T " << s.temperature << ", top-k " << s.topK
            << ", top-p " << s.topP << ", draw " << draw;
        ++compared;
      }
  }
  EXPECT_EQ(compared, 600);
}

// The uniform numbers stay strictly inside (0, 1): a 1 would give its token
// infinite noise.
TEST(SamplerTest, UniformsStayInsideTheOpenInterval) {
  float lowest = 1, highest = 0;
  for (int64_t token = 0; token < (int64_t(1) << 22); ++token) {
    const float u = exec::samplingUniform(3, 9, token);
    lowest = std::min(lowest, u);
    highest = std::max(highest, u);
  }
  EXPECT_GT(lowest, 0.0f);
  EXPECT_LT(highest, 1.0f);
  EXPECT_EQ((float(8388607) + 0.5f) * (1.0f / 8388608.0f) < 1.0f, true);
}

} // namespace
} // namespace kt::ktrun
