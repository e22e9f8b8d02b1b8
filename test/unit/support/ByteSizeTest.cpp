#include "runtime/support/ByteSize.h"

#include <gtest/gtest.h>

namespace kt {
namespace {

TEST(ByteSizeTest, ParsesBinaryAndDecimalUnits) {
  EXPECT_EQ(parseByteSize("17"), 17u);
  EXPECT_EQ(parseByteSize("17B"), 17u);
  EXPECT_EQ(parseByteSize("2K"), 2048u);
  EXPECT_EQ(parseByteSize("2kib"), 2048u);
  EXPECT_EQ(parseByteSize("2KB"), 2000u);
  EXPECT_EQ(parseByteSize("3MiB"), 3u * 1024 * 1024);
  EXPECT_EQ(parseByteSize("24GiB"), 24ull << 30);
  EXPECT_EQ(parseByteSize("24G"), 24ull << 30);
  EXPECT_EQ(parseByteSize("24GB"), 24000000000ull);
  EXPECT_EQ(parseByteSize("1.5GiB"), 3ull << 29);
  EXPECT_EQ(parseByteSize("2TiB"), 2ull << 40);
  EXPECT_EQ(parseByteSize("1TB"), 1000000000000ull);
}

TEST(ByteSizeTest, RefusesMalformedSizes) {
  for (const char *text : {"", "GiB", "-1GiB", "12 GiB", "12XB", "1e30", "abc", "1.5.2G"})
    EXPECT_FALSE(parseByteSize(text).has_value()) << text;
}

TEST(ByteSizeTest, Formats) {
  EXPECT_EQ(formatByteSize(17), "17 B");
  EXPECT_EQ(formatByteSize(1536), "1.50 KiB");
  EXPECT_EQ(formatByteSize(80ull << 30), "80.00 GiB");
  EXPECT_EQ(formatByteSize(3ull << 40), "3.00 TiB");
}

} // namespace
} // namespace kt
