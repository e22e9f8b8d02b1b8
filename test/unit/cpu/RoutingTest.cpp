// Expert selection on crafted router logits.
#include "runtime/cpu/MoeRouting.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace kt::cpu {
namespace {

float logit(double probability) { return static_cast<float>(std::log(probability / (1 - probability))); }

struct Routed {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

Routed route(const RoutingParams &p, const std::vector<float> &logits,
             const std::vector<float> &bias = {}) {
  Routed r;
  r.ids.assign(static_cast<size_t>(p.topK), -1);
  r.weights.assign(static_cast<size_t>(p.topK), 0);
  std::vector<float> scratch(static_cast<size_t>(2 * p.experts + p.groups));
  routeToken(p, logits.data(), bias.empty() ? nullptr : bias.data(), r.ids.data(),
             r.weights.data(), scratch.data());
  return r;
}

TEST(MoeRouting, SigmoidGroupsRankByTheirTwoBestBiasedScores) {
  // Eight experts in four groups of two. Selection scores (score + bias):
  //   group 0: 0.95 0.05 (max 0.95, top-2 sum 1.0)
  //   group 1: 0.8  0.77 (max 0.8,  sum 1.57)
  //   group 2: 0.75 0.74 (max 0.75, sum 1.49)
  //   group 3: 0.1  0.1
  // V3 keeps groups 1 and 2 (by sum; by max it would keep 0 and 1), then
  // experts 2 and 3, which the bias lifts above expert 4.
  const std::vector<double> scores = {0.95, 0.05, 0.7, 0.65, 0.75, 0.74, 0.1, 0.1};
  const std::vector<float> bias = {0, 0, 0.1f, 0.12f, 0, 0, 0, 0};
  std::vector<float> logits;
  for (double s : scores)
    logits.push_back(logit(s));
  RoutingParams p;
  p.experts = 8;
  p.topK = 2;
  p.groups = 4;
  p.groupsUsed = 2;
  p.scoring = GateScoring::Sigmoid;
  p.normalize = true;
  p.scale = 2.5f;
  Routed r = route(p, logits, bias);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{2, 3}));
  // Weights are the unbiased scores 0.7 and 0.65, normalized, times 2.5.
  EXPECT_NEAR(r.weights[0], 0.7 / 1.35 * 2.5, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.65 / 1.35 * 2.5, 1e-6);

  // Without normalization the scores are only scaled.
  p.normalize = false;
  r = route(p, logits, bias);
  EXPECT_NEAR(r.weights[0], 0.7 * 2.5, 1e-6);
  EXPECT_NEAR(r.weights[1], 0.65 * 2.5, 1e-6);

  // Without the bias, group 1 sums to 1.35 only: groups 2 and 1 win, and
  // group 2's experts 4 and 5 score best.
  r = route(p, logits);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{4, 5}));
}

TEST(MoeRouting, SoftmaxGroupsRankByTheirBestScore) {
  // V2's group_limited_greedy: group 0 (max 2.0) and 2 (1.8) win over
  // group 1 (1.5, 1.5), which a top-2 sum would pick.
  const std::vector<float> logits = {2.0f, -5.0f, 1.5f, 1.5f, 1.8f, -5.0f, 0.0f, 0.0f};
  RoutingParams p;
  p.experts = 8;
  p.topK = 3;
  p.groups = 4;
  p.groupsUsed = 2;
  p.scoring = GateScoring::Softmax;
  p.normalize = false;
  p.scale = 1.0f;
  Routed r = route(p, logits);
  // Experts 1 and 5 tie at -5: the lower index wins.
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 4, 1}));
  double sum = 0;
  for (float l : logits)
    sum += std::exp(double(l));
  EXPECT_NEAR(r.weights[0], std::exp(2.0) / sum, 1e-6);
  EXPECT_NEAR(r.weights[1], std::exp(1.8) / sum, 1e-6);
  EXPECT_NEAR(r.weights[2], std::exp(-5.0) / sum, 1e-7);
}

TEST(MoeRouting, WithoutGroupsTheTopScoresWinAndNormalizedWeightsSumToTheScale) {
  const std::vector<float> logits = {0.1f, 3.0f, -1.0f, 2.0f, 2.5f, 0.0f};
  RoutingParams p;
  p.experts = 6;
  p.topK = 4;
  p.scoring = GateScoring::Sigmoid;
  p.normalize = true;
  p.scale = 1.5f;
  Routed r = route(p, logits);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 4, 3, 0}));
  EXPECT_NEAR(r.weights[0] + r.weights[1] + r.weights[2] + r.weights[3], 1.5, 1e-6);
  EXPECT_GT(r.weights[0], r.weights[1]);
}

TEST(MoeRouting, ExpertsOfDroppedGroupsAreNeverChosen) {
  // A negative bias pushes the kept group's experts below zero; the experts
  // of the dropped group still stay out.
  const std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f};
  const std::vector<float> bias = {-0.9f, -0.8f, -0.95f, -0.99f};
  RoutingParams p;
  p.experts = 4;
  p.topK = 2;
  p.groups = 2;
  p.groupsUsed = 1;
  p.scoring = GateScoring::Sigmoid;
  p.normalize = true;
  p.scale = 1.0f;
  Routed r = route(p, logits, bias);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{1, 0}));
  EXPECT_NEAR(r.weights[0], 0.5, 1e-6);
}

TEST(MoeRouting, TiesGoToTheLowerIndex) {
  const std::vector<float> logits(8, 0.25f);
  RoutingParams p;
  p.experts = 8;
  p.topK = 3;
  p.groups = 4;
  p.groupsUsed = 2;
  p.scoring = GateScoring::Sigmoid;
  p.normalize = true;
  p.scale = 1.0f;
  Routed r = route(p, logits);
  EXPECT_EQ(r.ids, (std::vector<int32_t>{0, 1, 2}));
  for (float w : r.weights)
    EXPECT_NEAR(w, 1.0 / 3.0, 1e-6);
}

} // namespace
} // namespace kt::cpu
