// The read bandwidth over memory that is already there (ktrun --bench's
// bound over the routed experts' own pages): which pieces it reads.
#include "runtime/cpu/ReadBandwidth.h"

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

namespace kt::cpu {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;

// Pieces whose pages are not all in memory are left out: reading them
// would time page faults (or the disk), not the memory.
TEST(ReadBandwidth, OverRangesReadsOnlyResidentPieces) {
  AnonymousMemory memory(64 * kMiB, PageKind::Small);
  ASSERT_NE(memory.data(), nullptr);
  ThreadPool pool(2);
  uint64_t sampled = 1;
  EXPECT_EQ(measureReadBandwidth(pool, {{memory.data(), 64 * kMiB}}, 64 * kMiB, 1, sampled), 0);
  EXPECT_EQ(sampled, 0u) << "untouched pages are not resident";
  std::memset(memory.data() + 32 * kMiB, 7, 32 * kMiB);
  const double rate =
      measureReadBandwidth(pool, {{memory.data(), 64 * kMiB}}, 64 * kMiB, 1, sampled);
  EXPECT_EQ(sampled, 32 * kMiB) << "the written half, 8 pieces of 4 MiB";
  EXPECT_GT(rate, 0);
}

// Up to the bytes asked for, spread over all the ranges; pieces start on a
// page inside their range and end inside it.
TEST(ReadBandwidth, OverRangesTakesWholePiecesUpToTheSample) {
  AnonymousMemory memory(64 * kMiB, PageKind::Small);
  ASSERT_NE(memory.data(), nullptr);
  std::memset(memory.data(), 1, 64 * kMiB);
  ThreadPool pool(2);
  uint64_t sampled = 0;
  measureReadBandwidth(pool, {{memory.data(), 64 * kMiB}}, 8 * kMiB, 1, sampled);
  EXPECT_EQ(sampled, 8 * kMiB);
  measureReadBandwidth(pool, {{memory.data(), 64 * kMiB}}, 6 * kMiB, 1, sampled);
  EXPECT_EQ(sampled, 4 * kMiB) << "whole pieces only";
  // From a page boundary past the start, so 8 MiB from an unaligned start
  // holds one piece; two ranges add up.
  measureReadBandwidth(pool, {{memory.data() + 100, 8 * kMiB}}, 64 * kMiB, 1, sampled);
  EXPECT_EQ(sampled, 4 * kMiB);
  measureReadBandwidth(pool,
                       {{memory.data() + 100, 8 * kMiB}, {memory.data() + 32 * kMiB, 16 * kMiB}},
                       64 * kMiB, 1, sampled);
  EXPECT_EQ(sampled, 20 * kMiB);
  measureReadBandwidth(pool, {}, 64 * kMiB, 1, sampled);
  EXPECT_EQ(sampled, 0u);
}

} // namespace
} // namespace kt::cpu
