// runFeedForward hands each generated kernel the int8 activations in the
// order it reads ("q8" or "q8-nibble-order", GeneratedKernels.h), also when
// the matrices of one input want different orders.
#include "runtime/cpu/FeedForward.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace kt::cpu {
namespace {

// Test kernels over f32 weight rows (rowBytes = cols * 4): y = W (xq times
// its scales), reading xq in order or in nibble order (each 128 values'
// groups of 32 as 0, 2, 1, 3). Fed the other order, they give other sums.
template <bool kNibbleOrder>
void dequantizedProduct(const uint8_t *w, uint64_t rowBytes, int64_t rows, const float *, int64_t,
                        const float *, const int8_t *xq, const float *xqScale, const int16_t *,
                        int64_t tokens, float *y, int64_t ldy) {
  const int64_t cols = static_cast<int64_t>(rowBytes / 4);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      const auto *row = reinterpret_cast<const float *>(w + r * rowBytes);
      double sum = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const int64_t group = c % 128 / 32, slot = group == 1 ? 2 : group == 2 ? 1 : group;
        const int64_t at = kNibbleOrder ? c - 32 * group + 32 * slot : c;
        sum += double(row[c]) * xq[t * cols + at] * xqScale[t * (cols / 256) + c / 256];
      }
      y[t * ldy + r] = static_cast<float>(sum);
    }
}

WeightMatrix testMatrix(const std::vector<float> &values, int64_t rows, int64_t cols,
                        bool nibbleOrder) {
  WeightMatrix w;
  w.type = gguf::GgmlType::F32;
  w.data = reinterpret_cast<const uint8_t *>(values.data());
  w.rows = rows;
  w.cols = cols;
  w.rowBytes = static_cast<uint64_t>(cols) * 4;
  w.kernel.function = nibbleOrder ? dequantizedProduct<true> : dequantizedProduct<false>;
  w.kernel.quantizedInput = true;
  w.kernel.nibbleOrderInput = nibbleOrder;
  return w;
}

// Inputs of one batch's generated kernels, for `tokens` rows of `cols`.
struct Inputs {
  std::vector<float> sums, scales;
  std::vector<int8_t> quantized, nibbles;
  std::vector<int16_t> sums16;
  Inputs(int64_t tokens, int64_t cols)
      : sums(tokens * cols / 32), scales(tokens * cols / 256), quantized(tokens * cols),
        nibbles(tokens * cols), sums16(tokens * cols / 16) {}
  KernelInput view() {
    return {sums.data(), quantized.data(), nibbles.data(), scales.data(), sums16.data()};
  }
};

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
    Inputs xInputs(tokens, hidden), gateInputs(tokens, ffn);
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
} // namespace kt::cpu
