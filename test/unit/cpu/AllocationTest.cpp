// A warm decode step of the CPU experts allocates nothing (Workspace: the
// executor's modules allocate nothing per token once warm): the routed
// experts' grouping, their gate/up and down loops with the generated
// kernels' inputs, the weighted sums and the pool's loops; and the CPU
// executor's whole decode step only the logits it returns. Counted by this
// binary's operator new (test/unit/common/CountingAllocator.h).
#include "runtime/cpu/FeedForward.h"
#include "test/unit/common/CountingAllocator.h"
#include "test/unit/cpu/TestKernels.h"
#include "test/unit/cpu/TestModels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

namespace kt::cpu::test {
namespace {

using kt::test::allocationsOf;

// Every thread of the pool sizes its matmul scratch (threadScratch) once,
// in a loop of a task per thread that ends only when all have started one,
// so that the counts below do not depend on which thread took which task
// while warming up.
void warmThreadScratch(ThreadPool &pool) {
  std::atomic<int> started{0};
  pool.parallelFor(pool.threadCount(), [&](int64_t, int) {
    threadScratch(0, 1 << 20);
    started.fetch_add(1);
    while (started.load() < pool.threadCount())
      std::this_thread::yield();
  });
}

TEST(Allocations, WarmDecodeOfTheRoutedExpertsAllocatesNothing) {
  KT_REQUIRE_COMPILER();
  TestModel model;
  ASSERT_NO_FATAL_FAILURE(buildModel("alloc-experts", tinyF32Config(), model));
  const gguf::TensorInfo *gate = model.model->findTensor("blk.1.ffn_gate_exps.weight"),
                         *up = model.model->findTensor("blk.1.ffn_up_exps.weight"),
                         *down = model.model->findTensor("blk.1.ffn_down_exps.weight");
  ASSERT_TRUE(gate && up && down);
  const int64_t hidden = gate->ne[0], experts = gate->ne[2];
  RoutedExperts routed(*gate, *up, *down, nullptr);
  ThreadPool pool(2);
  warmThreadScratch(pool);
  Workspace workspace;
  std::vector<float> x(static_cast<size_t>(hidden)), out(static_cast<size_t>(hidden));
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = std::sin(0.3f * float(i));
  // One token's 4 choices, other experts at every step; a skipped one.
  const int64_t topK = 4;
  std::vector<int32_t> ids(static_cast<size_t>(topK));
  const std::vector<float> weights{0.4f, 0.3f, 0.2f, 0.1f};
  auto step = [&](int s) {
    for (int64_t k = 0; k < topK; ++k)
      ids[size_t(k)] = int32_t((s * 3 + k * 5) % experts);
    ids[3] = s % 2 ? -1 : ids[3];
    routed.forward(pool, workspace, x.data(), 1, ids.data(), weights.data(), topK, out.data());
  };
  step(0);
  step(1); // warm: both the full and the skipping step
  for (int s = 2; s < 6; ++s)
    EXPECT_EQ(allocationsOf([&] { step(s); }), 0) << "step " << s;

  // As the GPU executor runs it: the first choice's gated rows given (all
  // of them: its down product only), a job for the caller first.
  const int64_t ffn = gate->ne[1];
  const std::vector<int32_t> rowsGiven{int32_t(ffn), 0, 0, 0};
  int filled = 0, jobs = 0;
  const GivenGatedRows given{rowsGiven.data(), [&](int64_t, float *row, int64_t count) {
                               ++filled;
                               std::fill(row, row + count, 0.01f);
                             }};
  const std::function<void()> callerFirst = [&] { ++jobs; };
  auto givenStep = [&](int s) {
    for (int64_t k = 0; k < topK; ++k)
      ids[size_t(k)] = int32_t((s * 3 + k * 5) % experts);
    routed.forward(pool, workspace, x.data(), 1, ids.data(), weights.data(), topK, out.data(),
                   nullptr, nullptr, &given, &callerFirst);
  };
  givenStep(6);
  for (int s = 7; s < 10; ++s)
    EXPECT_EQ(allocationsOf([&] { givenStep(s); }), 0) << "step " << s;
  EXPECT_EQ(filled, 4);
  EXPECT_EQ(jobs, 4);
}

TEST(Allocations, WarmFeedForwardWithGeneratedKernelsAllocatesNothing) {
  const int64_t hidden = 256, ffn = 512;
  std::vector<float> gate(ffn * hidden), up(ffn * hidden), down(hidden * ffn), x(hidden);
  for (size_t i = 0; i < gate.size(); ++i) {
    gate[i] = 0.02f * std::sin(0.11f * float(i));
    up[i] = 0.02f * std::cos(0.07f * float(i));
    down[i] = 0.02f * std::sin(0.05f * float(i) + 1.0f);
  }
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = std::sin(0.3f * float(i));
  KernelInputs xInputs(1, hidden), gateInputs(1, ffn);
  std::vector<float> out(hidden), gateRows(ffn), upRows(ffn);
  FfnBatch batch;
  batch.w = {testMatrix(gate, ffn, hidden, false), testMatrix(up, ffn, hidden, false),
             testMatrix(down, hidden, ffn, false)};
  batch.x = x.data();
  batch.tokens = 1;
  batch.out = out.data();
  batch.gate = gateRows.data();
  batch.up = upRows.data();
  batch.xInput = xInputs.view();
  batch.gateInput = gateInputs.view();
  const std::vector<FfnBatch> batches{batch, batch};
  ThreadPool pool(2);
  warmThreadScratch(pool);
  runFeedForward(pool, batches);
  EXPECT_EQ(allocationsOf([&] { runFeedForward(pool, batches); }), 0);
  float largest = 0;
  for (float v : out)
    largest = std::max(largest, std::fabs(v));
  EXPECT_GT(largest, 0.0f); // the kernels ran
}

// The whole CPU executor: a warm decode step allocates the logits it
// returns and nothing else, but for the scratch that grows with the
// positions (with headroom, so only now and then, on whichever threads take
// attention's tasks): most steps exactly one allocation, none many.
TEST(Allocations, WarmCpuDecodeStepAllocatesOnlyTheLogitsItReturns) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("alloc-executor", tinyF32Config(), m));
  auto executor = makeExecutor(m);
  ASSERT_TRUE(executor);
  for (int32_t token : {1, 2, 3, 4})
    ASSERT_TRUE(executor->forward({token}).ok());
  int single = 0;
  long most = 0;
  for (int32_t step = 0; step < 16; ++step) {
    const std::vector<int32_t> token{5 + step % 7};
    bool ok = false;
    const long count = allocationsOf([&] { ok = executor->forward(token).ok(); });
    ASSERT_TRUE(ok);
    single += count == 1;
    most = std::max(most, count);
  }
  // (Measured: 11-13 single steps, at most 6 allocations in one; before,
  // 91 every step.)
  EXPECT_GE(single, 8);
  EXPECT_LE(most, 10);
}

} // namespace
} // namespace kt::cpu::test
