#include "runtime/tokenizer/ByteLevel.h"

#include <gtest/gtest.h>

#include <set>

namespace kt::tokenizer {
namespace {

TEST(ByteLevel, PrintableBytesStandForThemselves) {
  EXPECT_EQ(byteLevelSymbol('A'), "A");
  EXPECT_EQ(byteLevelSymbol('~'), "~");
  EXPECT_EQ(byteLevelSymbol(0xE9), "é"); // U+00E9
}

TEST(ByteLevel, OtherBytesTakeCodePointsFrom256InByteOrder) {
  EXPECT_EQ(byteLevelSymbol(0x00), "\u0100");
  EXPECT_EQ(byteLevelSymbol('\n'), "\u010A"); // Ċ
  EXPECT_EQ(byteLevelSymbol(' '), "\u0120");  // Ġ: the 33rd non-printable byte
  EXPECT_EQ(byteLevelSymbol(0x7F), "\u0121");
  EXPECT_EQ(byteLevelSymbol(0xAD), "\u0143"); // the last of the 68
}

TEST(ByteLevel, TheAlphabetIsABijection) {
  std::set<std::string> symbols;
  for (int byte = 0; byte < 256; ++byte)
    symbols.insert(byteLevelSymbol(static_cast<uint8_t>(byte)));
  EXPECT_EQ(symbols.size(), 256u);
  for (int byte = 0; byte < 256; ++byte) {
    std::optional<std::string> decoded =
        byteLevelDecode(byteLevelSymbol(static_cast<uint8_t>(byte)));
    ASSERT_TRUE(decoded.has_value());
    EXPECT_EQ(*decoded, std::string(1, static_cast<char>(byte)));
  }
  EXPECT_FALSE(byteLevelByte(0x144).has_value());
  EXPECT_FALSE(byteLevelByte(' ').has_value()); // space itself is spelled Ġ
}

TEST(ByteLevel, DecodesTokensAndRefusesTextOutsideTheAlphabet) {
  EXPECT_EQ(byteLevelDecode("ĠhelloĊ"), std::optional<std::string>(" hello\n"));
  EXPECT_EQ(byteLevelDecode("ä½łå¥½"), std::optional<std::string>("你好"));
  EXPECT_FALSE(byteLevelDecode("<｜User｜>").has_value());
  EXPECT_FALSE(byteLevelDecode("a b").has_value());
}

} // namespace
} // namespace kt::tokenizer
