#include "runtime/tokenizer/Utf8.h"

#include <gtest/gtest.h>

namespace kt::tokenizer {
namespace {

TEST(Utf8, ClassifiesCompleteCharactersOfEveryLength) {
  EXPECT_EQ(classifyUtf8Prefix("a").kind, Utf8Prefix::Complete);
  EXPECT_EQ(classifyUtf8Prefix("a").length, 1u);
  EXPECT_EQ(classifyUtf8Prefix("é!").length, 2u);                               // U+00E9
  EXPECT_EQ(classifyUtf8Prefix("你好").length, 3u);                             // U+4F60
  EXPECT_EQ(classifyUtf8Prefix("🙂").length, 4u);                             // U+1F642
  EXPECT_EQ(classifyUtf8Prefix("\xF4\x8F\xBF\xBF").kind, Utf8Prefix::Complete); // U+10FFFF
}

TEST(Utf8, ReportsCutOffStartsAsIncomplete) {
  Utf8Prefix prefix = classifyUtf8Prefix("\xE4\xBD"); // first two bytes of 你
  EXPECT_EQ(prefix.kind, Utf8Prefix::Incomplete);
  EXPECT_EQ(prefix.length, 2u);
  EXPECT_EQ(classifyUtf8Prefix("\xF0\x9F\x99").kind, Utf8Prefix::Incomplete);
  EXPECT_EQ(classifyUtf8Prefix("\xC3").kind, Utf8Prefix::Incomplete);
}

TEST(Utf8, RejectsOverlongSurrogateAndOutOfRangeForms) {
  for (const char *bad : {"\x80", "\xBF", "\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xED\xA0\x80",
                          "\xF0\x80\x80\x80", "\xF4\x90\x80\x80", "\xF5\x80\x80\x80", "\xFF"}) {
    Utf8Prefix prefix = classifyUtf8Prefix(bad);
    EXPECT_EQ(prefix.kind, Utf8Prefix::Invalid) << testing::PrintToString(bad);
    EXPECT_EQ(prefix.length, 1u) << testing::PrintToString(bad);
  }
  // A good start followed by a non-continuation byte: the maximal ill-formed
  // subpart is the good start.
  Utf8Prefix prefix = classifyUtf8Prefix("\xE4\xBD"
                                         "A");
  EXPECT_EQ(prefix.kind, Utf8Prefix::Invalid);
  EXPECT_EQ(prefix.length, 2u);
}

TEST(Utf8, ValidPrefixStopsAtTheFirstBadByte) {
  EXPECT_EQ(validUtf8PrefixLength("plain ascii text, longer than eight bytes"), 41u);
  EXPECT_EQ(validUtf8PrefixLength("abcdefghij\xFFxyz"), 10u);
  EXPECT_EQ(validUtf8PrefixLength("日本\xE8\xAA"), 6u);
  EXPECT_TRUE(isValidUtf8(""));
  EXPECT_TRUE(isValidUtf8("mixed ASCII and 中文 and 🙂"));
  EXPECT_FALSE(isValidUtf8("ends inside \xF0\x9F"));
}

// The expected strings are what Python's bytes.decode("utf-8", "replace") gives.
TEST(Utf8, ReplacesEachMaximalIllFormedSubpartWithOneReplacementCharacter) {
  EXPECT_EQ(toValidUtf8("a\xFF"
                        "b"),
            "a\xEF\xBF\xBD"
            "b");
  EXPECT_EQ(toValidUtf8("\xE4\xBD"), "\xEF\xBF\xBD");
  EXPECT_EQ(toValidUtf8("\xE4\xBD"
                        "A"),
            "\xEF\xBF\xBD"
            "A");
  EXPECT_EQ(toValidUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(toValidUtf8("ok 你"), "ok 你");
}

TEST(Utf8, EncodesCodePointsAtEveryLengthBoundary) {
  std::string out;
  for (uint32_t codePoint : {0x7Fu, 0x80u, 0x7FFu, 0x800u, 0xFFFFu, 0x10000u, 0x10FFFFu})
    appendUtf8(out, codePoint);
  EXPECT_EQ(out, "\x7F\xC2\x80\xDF\xBF\xE0\xA0\x80\xEF\xBF\xBF\xF0\x90\x80\x80\xF4\x8F\xBF\xBF");
  EXPECT_TRUE(isValidUtf8(out));
}

} // namespace
} // namespace kt::tokenizer
