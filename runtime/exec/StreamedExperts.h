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

// Decode's streamed share, balanced by feedback after each MoE layer that
// streamed: the gate/up-only experts' row share moves a step up when the
// GPU had finished by the time the CPU's experts had, down when not. With
// `moveExperts` (auto's choice, or ExecutorOptions::moveStreamedExperts)
// the whole experts move too: a share pushed against one end for
// `patience` layers in a row takes a whole expert to the GPU (a slot free;
// the share restarting at none) or back to the CPU (at least one stays;
// the share restarting at all of the gate/up-only experts), so that a
// choice made from a poor reading at load costs some layers, not the run.
// A move that undoes the one before doubles the patience: a balance that
// falls between two counts of whole experts settles instead of flipping.
struct StreamedShareBalance {
  int experts = 0;          // whole experts decode streams now (1 to maxExperts)
  int maxExperts = 0;       // slots for whole experts
  int gateUps = 0;          // gate/up-only experts
  double gateUpShare = 0;   // of their rows, in experts' worth (0 to gateUps)
  bool moveExperts = false; // whether whole experts move
  int patience = kFirstPatience;
  int pressure = 0;  // layers in a row pushed against an end: + up, - down
  int lastMove = 0;  // +1: the last move took an expert to the GPU, -1: back
  int64_t moves = 0; // whole experts moved so far
  static constexpr double kStep = 1.0 / 16;
  static constexpr int kFirstPatience = 16, kMaxPatience = 1024;

  // Whether there is anything to balance.
  bool balances() const { return gateUps > 0 || moveExperts; }
  // One MoE layer's outcome.
  void update(bool gpuFinishedFirst);
};

} // namespace kt::exec
