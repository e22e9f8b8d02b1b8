// runFeedForward hands each generated kernel the int8 activations in the
// order it reads ("q8" or "q8-nibble-order", GeneratedKernels.h), also when
// the matrices of one input want different orders.
#include "runtime/cpu/FeedForward.h"
#include "test/unit/cpu/TestKernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace kt::cpu::test {
namespace {

TEST(FeedForward, EachKernelGetsTheActivationOrderItReads) {
  const int64_t hidden = 256, ffn = 512, tokens = 3;
  std::vector<float> gate(ffn * hidden), up(ffn * hidden), down(hidden * ffn), x(tokens * hidden);
  for (size_t i = 0; i < gate.size(); ++i) {
    gate[i] = 0.02f * std::sin(0.11f * float(i));
    up[i] = 0.02f * std::cos(0.07f * float(i));
    down[i] = 0.02f * std::sin(0.05f * float(i) + 1.0f);
  }
  for (size_t i = 0; i < x.size(); ++i)
    x[i] = std::sin(0.3f * float(i)) + 0.1f * float(i % 7);
  ThreadPool pool(2);
  // gate and up in different orders (both quantizations of x), down in
  // nibble order; the same product with every kernel reading in order.
  auto run = [&](bool gateNibbles, bool upNibbles, bool downNibbles) {
    KernelInputs xInputs(tokens, hidden), gateInputs(tokens, ffn);
    std::vector<float> out(tokens * hidden), gateScratch(tokens * ffn), upScratch(tokens * ffn);
    FfnBatch batch;
    batch.w = {testMatrix(gate, ffn, hidden, gateNibbles), testMatrix(up, ffn, hidden, upNibbles),
               testMatrix(down, hidden, ffn, downNibbles)};
    batch.x = x.data();
    batch.tokens = tokens;
    batch.out = out.data();
    batch.gate = gateScratch.data();
    batch.up = upScratch.data();
    batch.xInput = xInputs.view();
    batch.gateInput = gateInputs.view();
    runFeedForward(pool, {batch});
    return out;
  };
  const std::vector<float> inOrder = run(false, false, false);
  EXPECT_EQ(run(true, false, true), inOrder);
  EXPECT_EQ(run(false, true, false), inOrder);
  EXPECT_EQ(run(true, true, true), inOrder);
  // Had the nibble-order kernels been given x in order, the sums would differ.
  float largest = 0;
  for (float v : inOrder)
    largest = std::max(largest, std::fabs(v));
  EXPECT_GT(largest, 0.0f);
}

} // namespace
} // namespace kt::cpu::test
