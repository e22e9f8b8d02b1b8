// ktrun --stream-experts auto: the streamed share from the two bandwidths,
// and decode's balance of it by feedback.
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

// Auto's balance: 2 + 1 in slots for 3 whole experts, starting where auto
// starts it (all of the gate/up-only expert's rows on the GPU).
StreamedShareBalance autoBalance() {
  StreamedShareBalance b;
  b.experts = 2;
  b.maxExperts = 3;
  b.gateUps = 1;
  b.gateUpShare = 1;
  b.moveExperts = true;
  return b;
}

// Feeds `layers` outcomes of one kind.
void feed(StreamedShareBalance &b, bool gpuFinishedFirst, int layers) {
  for (int i = 0; i < layers; ++i)
    b.update(gpuFinishedFirst);
}

TEST(StreamedShareBalance, TheGateUpShareStepsBetweenItsEnds) {
  StreamedShareBalance b = autoBalance();
  b.update(false);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 15.0 / 16);
  feed(b, false, 15);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 0);
  EXPECT_EQ(b.experts, 2);
  b.update(true);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 1.0 / 16);
  EXPECT_EQ(b.moves, 0);
}

TEST(StreamedShareBalance, ASharePushedAgainstAnEndMovesAWholeExpert) {
  // The GPU late even with none of the gate/up rows: after the patience's
  // layers at the end, an expert goes back to the CPU and the share
  // restarts at all of the gate/up rows.
  StreamedShareBalance b = autoBalance();
  feed(b, false, 16 + StreamedShareBalance::kFirstPatience - 1);
  EXPECT_EQ(b.experts, 2);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 0);
  b.update(false);
  EXPECT_EQ(b.experts, 1);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 1);
  EXPECT_EQ(b.moves, 1);
  // Never below one whole expert.
  feed(b, false, 16 + 4 * StreamedShareBalance::kFirstPatience);
  EXPECT_EQ(b.experts, 1);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 0);
  EXPECT_EQ(b.moves, 1);
}

TEST(StreamedShareBalance, AnEarlyGpuTakesAWholeExpertWhileASlotIsFree) {
  StreamedShareBalance b = autoBalance();
  feed(b, true, StreamedShareBalance::kFirstPatience);
  EXPECT_EQ(b.experts, 3);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 0);
  // No slot for a fourth: the share climbs to its end and stays.
  feed(b, true, 16 + 4 * StreamedShareBalance::kFirstPatience);
  EXPECT_EQ(b.experts, 3);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 1);
  EXPECT_EQ(b.moves, 1);
}

TEST(StreamedShareBalance, AnOutcomeTheOtherWayStartsThePatienceAgain) {
  StreamedShareBalance b = autoBalance();
  // At the top end, late and early alternating around it: it never moves.
  for (int i = 0; i < 200; ++i) {
    feed(b, true, StreamedShareBalance::kFirstPatience - 1);
    b.update(false);
    b.update(true);
  }
  EXPECT_EQ(b.experts, 2);
  EXPECT_EQ(b.moves, 0);
}

TEST(StreamedShareBalance, AMoveUndoneDoublesThePatience) {
  // The balance between 2 + all and 3 + none: each move back and forth
  // waits twice as long as the one before.
  StreamedShareBalance b = autoBalance();
  feed(b, true, 16);
  ASSERT_EQ(b.experts, 3);
  feed(b, false, 15);
  EXPECT_EQ(b.experts, 3);
  b.update(false);
  ASSERT_EQ(b.experts, 2);
  EXPECT_EQ(b.patience, 2 * StreamedShareBalance::kFirstPatience);
  feed(b, true, 2 * 16 - 1);
  EXPECT_EQ(b.experts, 2);
  b.update(true);
  EXPECT_EQ(b.experts, 3);
  EXPECT_EQ(b.patience, 4 * StreamedShareBalance::kFirstPatience);
  EXPECT_EQ(b.moves, 3);
}

TEST(StreamedShareBalance, FixedWholeExpertsOnlyMoveTheShare) {
  StreamedShareBalance b = autoBalance();
  b.moveExperts = false;
  feed(b, false, 1000);
  EXPECT_EQ(b.experts, 2);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 0);
  // Without gate/up-only experts there is nothing to balance.
  b.gateUps = 0;
  EXPECT_FALSE(b.balances());
  b.moveExperts = true;
  EXPECT_TRUE(b.balances());
  // And the whole experts then move by themselves.
  b.gateUpShare = 0;
  feed(b, false, StreamedShareBalance::kFirstPatience);
  EXPECT_EQ(b.experts, 1);
  EXPECT_DOUBLE_EQ(b.gateUpShare, 0);
}

} // namespace
} // namespace kt::exec
