// Small element-wise kernels of the CPU executor and the buffers its modules
// share.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace kt::cpu {

// out = x * rsqrt(mean(x^2) + eps) * weight, in f32 as HF's RMSNorm (the mean
// accumulated in double). `out` may be `x`.
void rmsNorm(const float *x, const float *weight, int64_t n, float eps, float *out);

// HF's SiLU: x * sigmoid(x).
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

// In-place softmax over n values.
void softmax(float *x, int64_t n);

// Scratch buffers reused from one forward step to the next, so that the
// executor's modules allocate nothing per token once warm. Used by the
// thread that drives the forward pass only.
class Workspace {
public:
  enum Slot {
    Query,        // q: tokens x heads x (nope + rope)
    QueryLora,    // q_a output: tokens x q_lora_rank
    KvCompressed, // kv_a output: tokens x (kv_lora_rank + rope)
    AttnHeads,    // tokens x heads x v_head_dim
    FfnGate,      // tokens x experts-used x ffn: gate, then silu(gate) * up
    FfnUp,
    ExpertInput, // gathered token rows per expert
    // Inputs of generated kernels (KernelInput) per row of ExpertInput and
    // of FfnGate: sums of runs of 32, int8 values, their scales and sums.
    ExpertInputSums,
    ExpertInputQuantized,
    ExpertInputQuantizedNibbleOrder,
    ExpertInputScales,
    ExpertInputSums16,
    FfnGateSums,
    FfnGateQuantized,
    FfnGateQuantizedNibbleOrder,
    FfnGateScales,
    FfnGateSums16,
    // bf16 rows of ExpertInput and FfnGate for tile kernels (padded blocks).
    ExpertInputBf16,
    FfnGateBf16,
    ExpertOutput,
    RouterLogits,
    kSlotCount
  };
  float *floats(Slot slot, size_t count) { return grown(buffers_[slot], count); }
  // `buffer` with room for `count` floats. It grows with headroom (twice
  // the need, at most 256K floats more), so that buffers that grow a
  // position a token (attention's) are not reallocated every token, while a
  // prefill's large ones take at most 1 MiB more than they need.
  static float *grown(std::vector<float> &buffer, size_t count) {
    if (buffer.size() < count)
      buffer.resize(count + std::min<size_t>(count, size_t(1) << 18));
    return buffer.data();
  }

private:
  std::array<std::vector<float>, kSlotCount> buffers_;
};

} // namespace kt::cpu
