// Prefill matrix products of experts chosen by many tokens: the expert's
// quantized rows dequantized to bf16 (in parallel, into a buffer reused
// across calls) and multiplied by oneDNN's bf16 matmul, which uses AMX or
// AVX-512 BF16 where the host has them. Decode and experts with few tokens
// keep the row kernels: dequantizing a whole matrix only pays off once
// enough tokens share it.
#pragma once

#include "runtime/cpu/Linear.h"
#include "runtime/cpu/ThreadPool.h"

#include <cstdint>
#include <vector>

namespace kt::cpu {

// Whether this build has oneDNN (Debian's libdnnl-dev) and it offers bf16
// matmul on this host (AVX-512 or AMX; not on AVX2 hosts).
bool haveExpertGemm();

class ExpertGemm {
public:
  // y[t * ldy + r] = <row r of w, x[t * cols ...]> for every row and token,
  // activations and weights rounded to bf16, accumulated in f32. Without
  // oneDNN's bf16 matmul (haveExpertGemm), the reference matmul.
  void multiply(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens, float *y,
                int64_t ldy);

private:
  std::vector<uint16_t> weights_, input_; // bf16 scratch, kept between calls
};

} // namespace kt::cpu
