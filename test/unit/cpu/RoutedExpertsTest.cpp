// The CPU routed experts: a negative expert id skips its assignment (the
// GPU expert cache runs those experts and the CPU the rest).
#include "runtime/cpu/FeedForward.h"
#include "test/unit/cpu/TestModels.h"

#include <gtest/gtest.h>

#include <random>

namespace kt::cpu::test {
namespace {

TEST(RoutedExperts, NegativeIdsSkipTheirAssignments) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("routed-skip", tinyF32Config(), m));
  const gguf::TensorInfo *gate = m.model->findTensor("blk.1.ffn_gate_exps.weight"),
                         *up = m.model->findTensor("blk.1.ffn_up_exps.weight"),
                         *down = m.model->findTensor("blk.1.ffn_down_exps.weight");
  ASSERT_TRUE(gate && up && down);
  RoutedExperts experts(*gate, *up, *down, nullptr);
  const int64_t tokens = 5, topK = 3, hidden = experts.hidden();
  std::mt19937 random(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(tokens * hidden));
  for (float &v : x)
    v = normal(random);
  std::vector<int32_t> ids(size_t(tokens * topK));
  std::vector<float> weights(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = int32_t((i * 7 + i / topK) % size_t(experts.experts()));
    weights[i] = 0.25f + 0.1f * float(i % topK);
  }
  // Every other assignment skipped, against the same assignments with
  // weight 0 (which run but add nothing).
  std::vector<int32_t> skipped = ids;
  std::vector<float> zeroed = weights;
  for (size_t i = 0; i < ids.size(); i += 2) {
    skipped[i] = -1;
    zeroed[i] = 0.0f;
  }
  ThreadPool pool(2);
  Workspace workspace;
  std::vector<float> expected(x.size()), got(x.size()), all(x.size());
  experts.forward(pool, workspace, x.data(), tokens, ids.data(), zeroed.data(), topK,
                  expected.data());
  experts.forward(pool, workspace, x.data(), tokens, skipped.data(), weights.data(), topK,
                  got.data());
  experts.forward(pool, workspace, x.data(), tokens, ids.data(), weights.data(), topK, all.data());
  EXPECT_EQ(got, expected);
  EXPECT_GT(relativeL2(all, expected), 1e-3) << "the skipped assignments should matter";
  // All skipped: zeros.
  std::fill(skipped.begin(), skipped.end(), -1);
  experts.forward(pool, workspace, x.data(), tokens, skipped.data(), weights.data(), topK,
                  got.data());
  EXPECT_EQ(got, std::vector<float>(x.size(), 0.0f));
}

} // namespace
} // namespace kt::cpu::test
