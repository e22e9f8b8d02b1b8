#include "runtime/tokenizer/PreTokenizer.h"

#include "test/unit/tokenizer/TokenizerTestUtil.h"

#include <nlohmann/json.hpp>

#include <fstream>
#include <random>

namespace kt::tokenizer {
namespace {

using Pieces = std::vector<std::string>;

const RegexPreTokenizer &deepseekPreTokenizer() {
  static const std::unique_ptr<RegexPreTokenizer> preTokenizer = [] {
    StatusOr<std::unique_ptr<RegexPreTokenizer>> created =
        RegexPreTokenizer::create(deepseekV3PreTokenizerPatterns(), "deepseek-v3");
    EXPECT_TRUE(created.ok()) << (created.ok() ? "" : created.message());
    return std::move(*created);
  }();
  return *preTokenizer;
}

Pieces split(std::string_view text) {
  RegexPreTokenizer::Scratch scratch(deepseekPreTokenizer());
  std::vector<std::string_view> pieces;
  Status status = deepseekPreTokenizer().split(text, scratch, pieces);
  EXPECT_TRUE(status.ok()) << (status.ok() ? "" : status.message());
  return Pieces(pieces.begin(), pieces.end());
}

TEST(PreTokenizer, BuiltInPatternsAreThoseOfDeepSeekTokenizerJson) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  std::ifstream in(test::deepseekTokenizerJson());
  nlohmann::json json = nlohmann::json::parse(in);
  std::vector<std::string> patterns;
  for (const auto &step : json["pre_tokenizer"]["pretokenizers"])
    if (step["type"] == "Split")
      patterns.push_back(step["pattern"]["Regex"].get<std::string>());
  EXPECT_EQ(patterns, deepseekV3PreTokenizerPatterns());
}

TEST(PreTokenizer, UsesPcre2Jit) { EXPECT_TRUE(deepseekPreTokenizer().usesJit()); }

TEST(PreTokenizer, TranslatesOnigurumaWhitespaceToIncludeNextLine) {
  EXPECT_EQ(oniguramaToPcre2(R"(\s+(?!\S)|\s+)"), R"([\s\x{85}]+(?![^\s\x{85}])|[\s\x{85}]+)");
  EXPECT_EQ(oniguramaToPcre2(R"([\s,]x)"), R"([\s\x{85},]x)");
  // Escaped backslashes and other escapes are left alone.
  EXPECT_EQ(oniguramaToPcre2(R"(\\s\p{L}[\]\s])"), R"(\\s\p{L}[\]\s\x{85}])");
  EXPECT_EQ(oniguramaToPcre2(R"([]s]\s)"), R"([]s][\s\x{85}])");
}

// Expected pieces follow from the regexes and agree with the token
// boundaries Hugging Face tokenizers produces for these strings.
TEST(PreTokenizer, SplitsWordsWithTheirLeadingSpace) {
  EXPECT_EQ(split("Hello world! 12345"), (Pieces{"Hello", " world", "!", " ", "123", "45"}));
  EXPECT_EQ(split("don't stop"), (Pieces{"don", "'t", " stop"}));
  EXPECT_EQ(split("a.b,c"), (Pieces{"a", ".b", ",c"}));
}

TEST(PreTokenizer, IsolatesDigitsInRunsOfUpToThree) {
  EXPECT_EQ(split("1234567"), (Pieces{"123", "456", "7"}));
  EXPECT_EQ(split("x1y22z"), (Pieces{"x", "1", "y", "22", "z"}));
  // \p{N} covers all numerals, not only ASCII digits.
  EXPECT_EQ(split("٣٤٥٦½"), (Pieces{"٣٤٥", "٦½"}));
}

TEST(PreTokenizer, KeepsRunsOfCjkAndKanaTogether) {
  EXPECT_EQ(split("你好，世界"), (Pieces{"你好", "，", "世界"}));
  EXPECT_EQ(split("日本語のテキスト"), (Pieces{"日本語のテキスト"}));
  EXPECT_EQ(split("中文abc"), (Pieces{"中文", "abc"}));
  // Hangul is not in the CJK class; it is split like letters.
  EXPECT_EQ(split("한국어 텍스트"), (Pieces{"한국어", " 텍스트"}));
}

TEST(PreTokenizer, SplitsWhitespaceRunsBeforeWords) {
  EXPECT_EQ(split("  leading"), (Pieces{" ", " leading"}));
  EXPECT_EQ(split("a  \n\n\tb"), (Pieces{"a", "  \n\n", "\tb"}));
  EXPECT_EQ(split("trailing   "), (Pieces{"trailing", "   "}));
  EXPECT_EQ(split("x;\r\n"), (Pieces{"x", ";\r\n"}));
}

TEST(PreTokenizer, TreatsNextLineAsWhitespaceLikeOniguruma) {
  // U+0085 is White_Space in Oniguruma (Hugging Face's engine) but not \s in
  // PCRE2. As whitespace it lets "\s+(?!\S)" keep both spaces together, as
  // it does before U+00A0; a zero-width space (not whitespace) does not.
  // Hugging Face tokenizers gives 'a', 'ĠĠ', ... and 'a', 'Ġ', 'Ġ', ... here.
  EXPECT_EQ(split("a  \u0085b"), (Pieces{"a", "  ", "\u0085b"}));
  EXPECT_EQ(split("a  \u00A0b"), (Pieces{"a", "  ", "\u00A0b"}));
  EXPECT_EQ(split("a  \u200Bb"), (Pieces{"a", " ", " ", "\u200Bb"}));
}

TEST(PreTokenizer, KeepsCombiningMarksWithTheirLetters) {
  EXPECT_EQ(split("cafe\u0301 ok"), (Pieces{"cafe\u0301", " ok"}));
}

TEST(PreTokenizer, SplitsEmojiSequencesAtJoiners) {
  // Emoji are symbols (So); the zero-width joiner (Cf) matches no
  // alternative and stays between them as its own piece.
  EXPECT_EQ(split("👨\u200D👩"), (Pieces{"👨", "\u200D", "👩"}));
  EXPECT_EQ(split(" 🙂🙂"), (Pieces{" 🙂🙂"}));
}

TEST(PreTokenizer, PiecesCoverRandomTextExactly) {
  const char *alphabet[] = {"a",      "Z",      " ",      "\n",     "\t", "1", "9",
                            "中",     "の",     "é",      "\u0301", "!",  "'", "🙂",
                            "\u200D", "\u0085", "\u3000", "한",     "-",  "\r"};
  std::mt19937 random(7);
  for (int round = 0; round < 500; ++round) {
    std::string text;
    int length = static_cast<int>(random() % 40);
    for (int i = 0; i < length; ++i)
      text += alphabet[random() % (sizeof(alphabet) / sizeof(alphabet[0]))];
    std::string joined;
    for (const std::string &piece : split(text)) {
      EXPECT_FALSE(piece.empty());
      joined += piece;
    }
    EXPECT_EQ(joined, text);
  }
}

TEST(PreTokenizer, HandlesMegabyteRunsWithoutHittingEngineLimits) {
  std::string letters(1 << 20, 'x');
  EXPECT_EQ(split(letters), Pieces{letters});
  std::string spaces = std::string(1 << 20, ' ') + "x";
  EXPECT_EQ(split(spaces), (Pieces{std::string((1 << 20) - 1, ' '), " x"}));
  std::string punctuation(1 << 20, '!');
  EXPECT_EQ(split(punctuation), Pieces{punctuation});
}

TEST(PreTokenizer, ReportsPatternsThatDoNotCompile) {
  StatusOr<std::unique_ptr<RegexPreTokenizer>> created =
      RegexPreTokenizer::create({"[unclosed"}, "bad.json");
  ASSERT_FALSE(created.ok());
  EXPECT_NE(created.message().find("bad.json"), std::string::npos);
  EXPECT_NE(created.message().find("[unclosed"), std::string::npos);
}

} // namespace
} // namespace kt::tokenizer
