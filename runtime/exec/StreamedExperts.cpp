#include "runtime/exec/StreamedExperts.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace kt::exec {

StreamedExpertsChoice chooseStreamedExperts(int expertsPerToken, double hostBytesPerSecond,
                                            double linkBytesPerSecond, int maxExperts) {
  StreamedExpertsChoice choice;
  if (expertsPerToken <= 0 || !(hostBytesPerSecond > 0) || !(linkBytesPerSecond > 0) ||
      maxExperts <= 0)
    return choice;
  choice.share =
      double(expertsPerToken) * linkBytesPerSecond / (hostBytesPerSecond + linkBytesPerSecond);
  if (choice.share < 1)
    return choice;
  choice.experts = int(std::floor(choice.share));
  choice.gateUps = choice.share > choice.experts ? 1 : 0;
  // (The share stays under expertsPerToken: the CPU keeps some.)
  choice.experts = std::min(choice.experts, maxExperts);
  choice.gateUps = std::min(choice.gateUps, maxExperts - choice.experts);
  return choice;
}

void StreamedShareBalance::update(bool gpuFinishedFirst) {
  const int direction = gpuFinishedFirst ? 1 : -1;
  const bool atEnd = gpuFinishedFirst ? gateUpShare >= double(gateUps) : gateUpShare <= 0;
  if (!atEnd) {
    gateUpShare = std::clamp(gateUpShare + direction * kStep, 0.0, double(gateUps));
    pressure = 0;
    return;
  }
  if (!moveExperts)
    return;
  pressure = pressure * direction > 0 ? pressure + direction : direction;
  const bool canMove = gpuFinishedFirst ? experts < maxExperts : experts > 1;
  if (!canMove || std::abs(pressure) < patience)
    return;
  experts += direction;
  gateUpShare = gpuFinishedFirst ? 0.0 : double(gateUps);
  pressure = 0;
  if (lastMove == -direction)
    patience = std::min(2 * patience, kMaxPatience);
  lastMove = direction;
  ++moves;
}

} // namespace kt::exec
