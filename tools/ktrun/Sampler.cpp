#include "tools/ktrun/Sampler.h"

namespace kt::ktrun {

exec::TokenSampling Sampler::nextDraw() {
  exec::TokenSampling draw;
  draw.temperature = float(options_.temperature);
  draw.topK = options_.topK;
  draw.topP = float(options_.topP);
  draw.seed = options_.seed;
  draw.draw = draws_++;
  return draw;
}

int32_t Sampler::sample(const float *logits, size_t count) {
  return exec::sampleToken(logits, int64_t(count), nextDraw());
}

} // namespace kt::ktrun
