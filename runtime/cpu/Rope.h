// Rotary position embedding of DeepSeek-V2/V3 as Hugging Face transformers
// computes it (DeepseekV3RotaryEmbedding with rope_type "yarn" or "default",
// rope_interleave = true), from the hyper-parameters a GGUF file carries.
#pragma once

#include <cstdint>
#include <vector>

namespace kt::cpu {

struct RopeConfig {
  int64_t dims = 0;             // qk_rope_head_dim
  double theta = 10000.0;       // rope_theta
  double factor = 1.0;          // rope_scaling.factor; > 1 means YaRN
  int64_t originalContext = 0;  // rope_scaling.original_max_position_embeddings
  // GGUF's rope.scaling.yarn_log_multiplier, which llama.cpp's converter
  // writes as 0.1 * mscale_all_dim. GGUF has no key for rope_scaling.mscale;
  // every DeepSeek release has mscale == mscale_all_dim, and so do we.
  double yarnLogMultiplier = 0.0;
  double betaFast = 32.0;
  double betaSlow = 1.0;

  bool yarn() const { return factor > 1.0; }
};

// HF's yarn_get_mscale(scale, mscale): 0.1 * mscale * ln(scale) + 1 for
// scale > 1, else 1.
double yarnMscale(double scale, double mscale);

// The YaRN correction range [low, high] of HF's find_correction_range
// (truncated to integers, clamped to [0, dims - 1]).
struct YarnRange {
  double low = 0, high = 0;
};
YarnRange yarnCorrectionRange(const RopeConfig &config);

// HF's inv_freq (dims / 2 values, in float32 as HF computes them): base
// frequencies, or with YaRN the blend of extrapolated and interpolated
// (divided by factor) frequencies along the linear ramp between low and high.
std::vector<float> ropeInverseFrequencies(const RopeConfig &config);

// HF's attention_scaling, the factor on cos and sin: 1. With mscale ==
// mscale_all_dim HF's ratio mscale(factor, mscale) / mscale(factor,
// mscale_all_dim) is 1; a GGUF without mscale_all_dim (multiplier 0) gets no
// rotary factor either, as llama.cpp reads it (HF then needs
// rope_scaling.attention_factor = 1, which kt-export-hf writes).
double ropeCosSinScale(const RopeConfig &config);

// DeepseekV3Attention.scaling: 1 / sqrt(qk_head_dim), times
// mscale(factor, mscale_all_dim)^2 under YaRN with mscale_all_dim.
double attentionSoftmaxScale(int64_t qkHeadDim, const RopeConfig &config);

class Rope {
public:
  explicit Rope(const RopeConfig &config);

  int64_t dims() const { return dims_; }
  const std::vector<float> &inverseFrequencies() const { return inverseFrequencies_; }

  // cos and sin (dims / 2 each, scaled by ropeCosSinScale) at `position`.
  void angles(int64_t position, float *cos, float *sin) const;

  // Rotates `x` (dims values) in place. The weights pair x[2i] with x[2i+1]
  // (HF's rope_interleave); as HF does, the result is stored de-interleaved:
  // x'[i] = x[2i] cos_i - x[2i+1] sin_i and x'[i + dims/2] = x[2i+1] cos_i +
  // x[2i] sin_i. Queries and keys get the same order, so their dot products
  // are those of the interleaved rotation.
  void rotate(float *x, const float *cos, const float *sin) const;

private:
  int64_t dims_;
  float cosSinScale_;
  std::vector<float> inverseFrequencies_;
};

} // namespace kt::cpu
