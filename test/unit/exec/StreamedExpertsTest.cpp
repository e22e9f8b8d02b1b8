// ktrun --stream-experts auto: the streamed share from the two bandwidths.
#include "runtime/exec/StreamedExperts.h"

#include <gtest/gtest.h>

namespace kt::exec {
namespace {

constexpr double kGB = 1e9;

// The choice for 8 experts a token (or `experts`), room for 64: N whole and M gate/up-only.
void expectChoice(double hostGBs, double linkGBs, int whole, int gateUps, int experts = 8,
                  int room = 64) {
  const StreamedExpertsChoice c =
      chooseStreamedExperts(experts, hostGBs * kGB, linkGBs * kGB, room);
  EXPECT_NEAR(c.share, experts * linkGBs / (hostGBs + linkGBs), 1e-12) << hostGBs << " " << linkGBs;
  EXPECT_EQ(c.experts, whole) << hostGBs << " " << linkGBs << " share " << c.share;
  EXPECT_EQ(c.gateUps, gateUps) << hostGBs << " " << linkGBs << " share " << c.share;
}

TEST(StreamedExperts, WholeExpertsForTheShareAndAGateUpExpertForTheRest) {
  // 16 cores beside PCIe 5: 8 x 50 / 180 = 2.22 experts' worth.
  expectChoice(130, 50, 2, 1);
  // The threads slowed by the link's copies: 2.93 (measured on the H200
  // host) is still 2 + 1, never a third whole expert.
  expectChoice(93.5, 54, 2, 1);
  // 4.44: four whole and a gate/up-only one.
  expectChoice(40, 50, 4, 1);
  // Exactly 3.0: three whole ones, nothing left to balance.
  expectChoice(100, 60, 3, 0);
}

TEST(StreamedExperts, UnderOneExpertsWorthStreamsNone) {
  // PCIe 4 (25 GB/s) beside 130: 1.29, one whole and a gate/up-only one.
  expectChoice(130, 25, 1, 1);
  // PCIe 3 (12 GB/s): 0.68 of an expert, not worth the copies and launches.
  expectChoice(130, 12, 0, 0);
}

TEST(StreamedExperts, TheRoomAndTheTokensExpertsCapIt) {
  expectChoice(130, 50, 2, 0, 8, 2);
  expectChoice(130, 50, 1, 0, 8, 1);
  // A link far faster than the host: 1.96 of 2, one whole expert and the
  // other's gate/up (the share never reaches all of them).
  expectChoice(10, 500, 1, 1, 2, 64);
}

TEST(StreamedExperts, NothingWithoutMeasurementsOrRoom) {
  for (StreamedExpertsChoice c :
       {chooseStreamedExperts(8, 0, 50 * kGB, 64), chooseStreamedExperts(8, 130 * kGB, 0, 64),
        chooseStreamedExperts(0, 130 * kGB, 50 * kGB, 64),
        chooseStreamedExperts(8, 130 * kGB, 50 * kGB, 0)}) {
    EXPECT_EQ(c.experts, 0);
    EXPECT_EQ(c.gateUps, 0);
  }
}

} // namespace
} // namespace kt::exec
