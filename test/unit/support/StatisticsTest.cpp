#include "runtime/support/Statistics.h"

#include <gtest/gtest.h>

namespace kt {
namespace {

TEST(StatisticsTest, MedianIsTheMiddleOfTheSortedValues) {
  EXPECT_EQ(median({1.18, 1.06, 1.20, 1.10, 1.08}), 1.10); // odd count, unsorted
  EXPECT_EQ(median({4.0, 1.0, 3.0, 2.0}), 2.5);            // even: the two middle ones' mean
  EXPECT_EQ(median({7.0}), 7.0);
  EXPECT_EQ(median({2.0, 2.0, 9.0}), 2.0);
  EXPECT_EQ(median({}), 0.0);
}

} // namespace
} // namespace kt
