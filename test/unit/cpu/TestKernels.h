// Stand-ins for generated row kernels in the feed-forward tests: products
// over f32 weight rows that read the int8 activations and their scales, as
// the generated kernels do, and the buffers of those inputs.
#pragma once

#include "runtime/cpu/FeedForward.h"

#include <cstdint>
#include <vector>

namespace kt::cpu::test {

// y = W (xq times its scales) over f32 weight rows (rowBytes = cols * 4),
// reading xq in order or in nibble order (each 128 values' groups of 32 as
// 0, 2, 1, 3). Fed the other order, they give other sums.
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

// `values` (rows x cols f32) as a matrix whose kernel is dequantizedProduct.
inline WeightMatrix testMatrix(const std::vector<float> &values, int64_t rows, int64_t cols,
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
struct KernelInputs {
  std::vector<float> sums, scales;
  std::vector<int8_t> quantized, nibbles;
  std::vector<int16_t> sums16;
  KernelInputs(int64_t tokens, int64_t cols)
      : sums(tokens * cols / 32), scales(tokens * cols / 256), quantized(tokens * cols),
        nibbles(tokens * cols), sums16(tokens * cols / 16) {}
  KernelInput view() {
    return {sums.data(), quantized.data(), nibbles.data(), scales.data(), sums16.data()};
  }
};

} // namespace kt::cpu::test
