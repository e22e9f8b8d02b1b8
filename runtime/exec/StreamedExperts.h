// How many of each token's routed experts the GPU streams over the link
// (ExecutorOptions::streamedExperts = kAutoStreamedExperts, ktrun
// --stream-experts auto), from the link's and the CPU threads' bandwidths
// measured side by side at load.
#pragma once

#include <cstdint>

namespace kt::exec {

struct StreamedExpertsChoice {
  int experts = 0;  // whole experts streamed per token and layer (N)
  int gateUps = 0;  // and gate/up-only ones (M), their row share balanced by feedback
  double share = 0; // the experts' worth the bandwidths give the GPU
};

// `expertsPerToken` routed experts a token go to the CPU (the cache's hits
// left out), each read once; the GPU should take the share of them that
// ends its copies when the CPU ends its products: expertsPerToken x link /
// (host + link), both bandwidths measured while the other reads. Whole
// experts for its integer part, and one gate/up-only expert for the rest,
// whose rows the feedback then shares out (from none to all of its gate and
// up). Never a whole expert more: the GPU's part also waits for queueing and
// for its products after the copies, so the share overstates what it
// finishes in time (on the H200 host 2.93 measured, 3 + 0 streamed ran 13%
// slower than 2 + 1). Nothing under one expert's worth. `maxExperts` caps
// N + M (the room the reservation has).
StreamedExpertsChoice chooseStreamedExperts(int expertsPerToken, double hostBytesPerSecond,
                                            double linkBytesPerSecond, int maxExperts);

} // namespace kt::exec
