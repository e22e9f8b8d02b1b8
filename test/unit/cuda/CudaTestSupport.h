// Shared pieces of the kt_cuda tests.
#pragma once

#include "runtime/cuda/KernelCatalog.h"

#include <string>
#include <vector>

namespace kt::cuda::test {

// A fresh directory under $TMPDIR (or /tmp), removed with its contents on destruction.
class TempDir {
public:
  TempDir();
  ~TempDir();
  const std::string &path() const { return path_; }

private:
  std::string path_;
};

std::vector<std::string> listDirectory(const std::string &path);

// DeepSeek-V3's real dimensions (hidden 7168, vocab 129280, q/kv LoRA ranks
// 1536/512, MLA and shared-expert projections, lm_head) with Q8_0 weights.
ModelKernelShapes deepseekV3Shapes();
// A small model as kt-gen-model writes them, with an f32 embedding table.
ModelKernelShapes smallModelShapes();

// The architectures CI compiles every kernel for: CUBINs and the PTX fallback.
const std::vector<std::string> &ciArchitectures();

} // namespace kt::cuda::test
