// Choosing the next token: greedy at temperature 0, else temperature, top-k
// and top-p (nucleus) sampling, defined so that the GPU kernel
// (kernels/sample.cu) and this host code draw the same token from the same
// logits and seed:
//
// - candidates: every token, or with top-k those whose logit is at least the
//   k-th largest (ties at the boundary all stay);
// - weights w = exp((logit - max) / temperature) in 2^-40 fixed point, summed
//   exactly in 64-bit integers;
// - with top-p, the nucleus: the candidates whose logit is at least the
//   largest threshold t at which the weight of the candidates >= t reaches
//   p times the candidates' weight (ties at the boundary all stay);
// - the draw: Gumbel-max, the token maximizing (logit - max) / temperature -
//   log(-log(u)), with u uniform in (0, 1) from a hash of (seed, draw,
//   token): an exact sample of the renormalized distribution, with no sort.
//
// Float rounding differs between the GPU and the host in the last bit, so
// the two agree on nearly every draw, not on every one.
#pragma once

#include <cstdint>

namespace kt::exec {

struct TokenSampling {
  float temperature = 0; // 0: greedy
  int32_t topK = 0;      // 0: no limit
  float topP = 1;        // 1: no limit
  uint64_t seed = 0;
  uint64_t draw = 0; // which draw of the seed's sequence (the step)

  bool greedy() const { return temperature <= 0; }
};

// The order-preserving integer key of a logit (larger logit, larger key).
inline uint32_t logitKey(float logit) {
  uint32_t bits;
  static_assert(sizeof bits == sizeof logit);
  __builtin_memcpy(&bits, &logit, sizeof bits);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}

// The uniform number in (0, 1) the draw uses for `token` (23 random bits).
float samplingUniform(uint64_t seed, uint64_t draw, int64_t token);

// The token chosen from one row of `vocab` logits.
int32_t sampleToken(const float *logits, int64_t vocab, const TokenSampling &sampling);

} // namespace kt::exec
