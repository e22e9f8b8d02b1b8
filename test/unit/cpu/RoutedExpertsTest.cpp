// The CPU routed experts: a negative expert id skips its assignment (the
// GPU expert cache runs those experts and the CPU the rest), and given
// gated rows replace an expert's gate and up products (the GPU streamed
// them), and the caller's job (queueing the GPU's share) runs once before
// any given row is filled.
#include "runtime/cpu/FeedForward.h"
#include "test/unit/cpu/TestModels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <utility>

namespace kt::cpu::test {
namespace {

// Layer 1's routed experts of the model built as `name` (the tiny f32 one
// unless `config` says otherwise), and a step of `tokens` random tokens'
// `topK` choices and weights (choice i: expert (i * stride + i / topK) mod
// experts).
struct ExpertStep {
  TestModel model;
  const gguf::TensorInfo *gate = nullptr, *up = nullptr, *down = nullptr;
  std::vector<float> x, weights;
  std::vector<int32_t> ids;
};
void makeExpertStep(const std::string &name, int64_t tokens, int64_t topK, size_t stride,
                    unsigned seed, ExpertStep &out,
                    const gen::ModelConfig &config = tinyF32Config()) {
  ASSERT_NO_FATAL_FAILURE(buildModel(name, config, out.model));
  out.gate = out.model.model->findTensor("blk.1.ffn_gate_exps.weight");
  out.up = out.model.model->findTensor("blk.1.ffn_up_exps.weight");
  out.down = out.model.model->findTensor("blk.1.ffn_down_exps.weight");
  ASSERT_TRUE(out.gate && out.up && out.down);
  const int64_t hidden = out.gate->ne[0], experts = out.gate->ne[2];
  std::mt19937 random(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  out.x.resize(size_t(tokens * hidden));
  for (float &v : out.x)
    v = normal(random);
  out.ids.resize(size_t(tokens * topK));
  out.weights.resize(out.ids.size());
  for (size_t i = 0; i < out.ids.size(); ++i) {
    out.ids[i] = int32_t((i * stride + i / size_t(topK)) % size_t(experts));
    out.weights[i] = 0.25f + 0.1f * float(i % size_t(topK));
  }
}

TEST(RoutedExperts, NegativeIdsSkipTheirAssignments) {
  KT_REQUIRE_COMPILER();
  ExpertStep step;
  const int64_t tokens = 5, topK = 3;
  ASSERT_NO_FATAL_FAILURE(makeExpertStep("routed-skip", tokens, topK, 7, 3, step));
  RoutedExperts experts(*step.gate, *step.up, *step.down, nullptr);
  const std::vector<float> &x = step.x, &weights = step.weights;
  const std::vector<int32_t> &ids = step.ids;
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

// The gated rows of one expert given from outside (f32 weights, computed
// here), all of them or the first 48 (the CPU computing the rest): the
// result matches the CPU's own products; rows of zeros drop exactly those
// rows' share of the expert's contribution; `fill` is asked once per
// assignment, for the rows given.
TEST(RoutedExperts, GivenGatedRowsReplaceAnExpertsGateAndUp) {
  KT_REQUIRE_COMPILER();
  ExpertStep step;
  const int64_t tokens = 4, topK = 3;
  ASSERT_NO_FATAL_FAILURE(makeExpertStep("routed-given", tokens, topK, 5, 5, step));
  const gguf::TensorInfo *gate = step.gate, *up = step.up, *down = step.down;
  ASSERT_EQ(gate->type, gguf::GgmlType::F32);
  ASSERT_EQ(down->type, gguf::GgmlType::F32);
  RoutedExperts experts(*gate, *up, *down, nullptr);
  const int64_t hidden = experts.hidden(), ffn = gate->ne[1];
  const std::vector<float> &x = step.x, &weights = step.weights;
  std::vector<int32_t> &ids = step.ids;
  // Expert ids[0]'s assignments given; another token chooses it too.
  ids[size_t(topK)] = ids[0];
  auto gatedRow = [&](int64_t assignment, float *row) {
    const int64_t e = ids[size_t(assignment)];
    const float *xt = x.data() + (assignment / topK) * hidden;
    const auto *g = reinterpret_cast<const float *>(gate->data) + e * ffn * hidden;
    const auto *u = reinterpret_cast<const float *>(up->data) + e * ffn * hidden;
    for (int64_t j = 0; j < ffn; ++j) {
      double gx = 0, ux = 0;
      for (int64_t k = 0; k < hidden; ++k) {
        gx += double(g[j * hidden + k]) * xt[k];
        ux += double(u[j * hidden + k]) * xt[k];
      }
      row[j] = float(gx / (1 + std::exp(-gx)) * ux);
    }
  };
  ThreadPool pool(2);
  Workspace workspace;
  std::vector<float> own(x.size());
  experts.forward(pool, workspace, x.data(), tokens, ids.data(), weights.data(), topK, own.data());
  for (const int64_t givenCount : {ffn, int64_t(48)}) {
    SCOPED_TRACE(std::to_string(givenCount) + " of " + std::to_string(ffn) + " rows given");
    std::vector<int32_t> given(ids.size(), 0);
    int64_t expected = 0;
    for (size_t i = 0; i < ids.size(); ++i)
      if (ids[i] == ids[0]) {
        given[i] = int32_t(givenCount);
        ++expected;
      }
    std::vector<float> got(x.size());
    int64_t calls = 0;
    GivenGatedRows rows{given.data(), [&](int64_t assignment, float *row, int64_t count) {
                          ++calls;
                          EXPECT_EQ(count, givenCount);
                          std::vector<float> full(static_cast<size_t>(ffn));
                          gatedRow(assignment, full.data());
                          std::copy(full.begin(), full.begin() + count, row);
                        }};
    experts.forward(pool, workspace, x.data(), tokens, ids.data(), weights.data(), topK, got.data(),
                    nullptr, nullptr, &rows);
    EXPECT_EQ(calls, expected);
    EXPECT_LE(relativeL2(got, own), 1e-5);
    // Rows of zeros: the expert's output less those rows' share of its
    // down product, weighted, for each assignment given.
    GivenGatedRows zeros{given.data(), [&](int64_t, float *row, int64_t count) {
                           std::fill(row, row + count, 0.0f);
                         }};
    experts.forward(pool, workspace, x.data(), tokens, ids.data(), weights.data(), topK, got.data(),
                    nullptr, nullptr, &zeros);
    std::vector<double> without(own.begin(), own.end());
    for (size_t i = 0; i < ids.size(); ++i) {
      if (given[i] == 0)
        continue;
      std::vector<float> row(static_cast<size_t>(ffn));
      gatedRow(int64_t(i), row.data());
      const auto *d = reinterpret_cast<const float *>(down->data) + ids[i] * hidden * ffn;
      for (int64_t h = 0; h < hidden; ++h) {
        double dropped = 0;
        for (int64_t j = 0; j < givenCount; ++j)
          dropped += double(d[h * ffn + j]) * row[size_t(j)];
        without[size_t(int64_t(i) / topK * hidden + h)] -= weights[i] * dropped;
      }
    }
    EXPECT_LE(relativeL2(got, std::vector<float>(without.begin(), without.end())), 1e-5);
    EXPECT_GT(relativeL2(own, got), 1e-3) << "the given rows should matter";
  }
}

// forward()'s callerFirst runs once and before the first given row is
// filled: with experts left to the CPU, with every CPU choice given (no
// gate/up products), and with every choice skipped (no products at all).
TEST(RoutedExperts, CallerFirstRunsOnceBeforeGivenRows) {
  KT_REQUIRE_COMPILER();
  ExpertStep step;
  const int64_t tokens = 3, topK = 2;
  ASSERT_NO_FATAL_FAILURE(makeExpertStep("routed-caller-first", tokens, topK, 3, 7, step));
  RoutedExperts experts(*step.gate, *step.up, *step.down, nullptr);
  const int64_t ffn = step.gate->ne[1];
  ThreadPool pool(2);
  Workspace workspace;
  std::vector<float> out(step.x.size());
  const size_t choices = step.ids.size();
  std::vector<int32_t> someGiven(choices, 0), allGiven(choices, int32_t(ffn));
  for (size_t i = 0; i < choices; ++i)
    someGiven[i] = step.ids[i] == step.ids[0] ? int32_t(ffn) : 0;
  std::vector<int32_t> skipped(choices, -1);
  struct Case {
    const char *name;
    const std::vector<int32_t> *ids;
    const std::vector<int32_t> *given;
  } cases[] = {{"some given", &step.ids, &someGiven},
               {"all given", &step.ids, &allGiven},
               {"all skipped", &skipped, &allGiven}};
  for (const Case &c : cases) {
    SCOPED_TRACE(c.name);
    int firstRuns = 0, fills = 0, fillsBeforeFirst = 0;
    const std::function<void()> first = [&] { ++firstRuns; };
    GivenGatedRows rows{c.given->data(), [&](int64_t, float *row, int64_t count) {
                          ++fills;
                          fillsBeforeFirst += firstRuns == 0;
                          std::fill(row, row + count, 0.5f);
                        }};
    experts.forward(pool, workspace, step.x.data(), tokens, c.ids->data(), step.weights.data(),
                    topK, out.data(), nullptr, nullptr, &rows, &first);
    EXPECT_EQ(firstRuns, 1);
    EXPECT_EQ(fillsBeforeFirst, 0);
    EXPECT_EQ(fills,
              c.ids == &skipped ? 0 : int(std::count(c.given->begin(), c.given->end(), ffn)));
  }
}

// A step of fewer tokens than threads adds each token's experts up in
// slices of its values spread over the pool (1024 values: up to 4 slices,
// uneven with 3 threads); every value is still the experts' weighted sum
// in increasing expert order, and one-row experts read x in place.
TEST(RoutedExperts, FewTokensSumsSplitOverThePoolAddUpInExpertOrder) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig config = tinyF32Config();
  config.hiddenSize = 1024;
  ExpertStep step;
  const int64_t topK = 3;
  ASSERT_NO_FATAL_FAILURE(makeExpertStep("routed-split-sum", 2, topK, 5, 17, step, config));
  RoutedExperts experts(*step.gate, *step.up, *step.down, nullptr);
  const int64_t hidden = experts.hidden();
  ASSERT_EQ(hidden, 1024);
  const std::vector<float> &x = step.x, &weights = step.weights;
  const std::vector<int32_t> &ids = step.ids; // unsorted within each token
  Workspace workspace;
  for (const auto &[threads, tokens] : {std::pair{4, 1}, std::pair{3, 1}, std::pair{4, 2}}) {
    SCOPED_TRACE(std::to_string(threads) + " threads, " + std::to_string(tokens) + " tokens");
    ThreadPool pool(threads);
    std::vector<float> got(size_t(tokens * hidden));
    experts.forward(pool, workspace, x.data(), tokens, ids.data(), weights.data(), topK,
                    got.data());
    std::vector<float> expected(got.size(), 0.0f), one(static_cast<size_t>(hidden));
    ThreadPool single(1);
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<int64_t> order = {t * topK, t * topK + 1, t * topK + 2};
      std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
      for (int64_t i : order) {
        const float weight = 1.0f;
        experts.forward(single, workspace, x.data() + t * hidden, 1, &ids[size_t(i)], &weight, 1,
                        one.data());
        for (int64_t j = 0; j < hidden; ++j)
          expected[size_t(t * hidden + j)] += weights[size_t(i)] * one[size_t(j)];
      }
    }
    EXPECT_LE(relativeL2(got, expected), 1e-6);
  }
}

} // namespace
} // namespace kt::cpu::test
