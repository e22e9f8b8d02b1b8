#include "tools/ktrun/Sampler.h"

#include <gtest/gtest.h>

#include <map>

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

} // namespace
} // namespace kt::ktrun
