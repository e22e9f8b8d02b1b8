#include "runtime/exec/StreamedExperts.h"

#include <algorithm>
#include <cmath>

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

} // namespace kt::exec
