#include "runtime/quant/Quant.h"

#include <string>

namespace kt::quant {

Status splitQ8_0Rows(const void *gguf, void *split, int64_t rows, int64_t cols) {
  if (!q8_0RowsSplit(GgmlType::Q8_0, cols) || rows < 0)
    return Status::error("q8_0 rows of " + std::to_string(cols) +
                         " values cannot be split: the GPU's split rows hold a multiple of " +
                         std::to_string(kQ8_0SplitRowValues) + " values.");
  if (rows > 0 && (!gguf || !split))
    return Status::error("splitQ8_0Rows needs both buffers.");
  const gguf::GgmlTypeTraits &q8_0 = gguf::ggmlTypeTraits(GgmlType::Q8_0);
  const int64_t blockBytes = q8_0.blockBytes, blockValues = q8_0.blockSize;
  const int64_t blocks = cols / blockValues, rowBytes = blocks * blockBytes;
  const auto *source = static_cast<const uint8_t *>(gguf);
  auto *destination = static_cast<uint8_t *>(split);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t *from = source + r * rowBytes;
    uint8_t *quants = destination + r * rowBytes, *scales = quants + cols;
    for (int64_t b = 0; b < blocks; ++b) {
      std::memcpy(scales + 2 * b, from + b * blockBytes, 2);
      std::memcpy(quants + b * blockValues, from + b * blockBytes + 2, size_t(blockValues));
    }
  }
  return Status::success();
}

} // namespace kt::quant
