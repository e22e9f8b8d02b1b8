#include "runtime/tokenizer/Tokenizer.h"

#include "runtime/gguf/GgufFile.h"
#include "runtime/tokenizer/ByteLevel.h"
#include "runtime/tokenizer/Utf8.h"
#include "test/unit/tokenizer/TokenizerTestUtil.h"

#include <algorithm>
#include <fstream>
#include <random>

namespace kt::tokenizer {
namespace {

using test::decodeOrDie;
using test::encodeOrDie;
using test::ggufTokenizer;
using test::jsonTokenizer;
using Ids = std::vector<TokenId>;

//===----------------------------------------------------------------------===//
// A small hand-made vocabulary, where BPE's result can be worked out by hand.
//===----------------------------------------------------------------------===//

gguf::Value stringValue(std::string text) {
  gguf::Value value;
  value.type = gguf::ValueType::String;
  value.s = std::move(text);
  return value;
}

gguf::Value stringArray(const std::vector<std::string> &texts) {
  gguf::Value value;
  value.type = gguf::ValueType::Array;
  value.elementType = gguf::ValueType::String;
  for (const std::string &text : texts)
    value.array.push_back(stringValue(text));
  return value;
}

gguf::Value intArray(const std::vector<int32_t> &numbers) {
  gguf::Value value;
  value.type = gguf::ValueType::Array;
  value.elementType = gguf::ValueType::Int32;
  for (int32_t number : numbers) {
    gguf::Value element;
    element.type = gguf::ValueType::Int32;
    element.i = number;
    value.array.push_back(element);
  }
  return value;
}

gguf::Value uintValue(uint32_t number) {
  gguf::Value value;
  value.type = gguf::ValueType::UInt32;
  value.u = number;
  return value;
}

// Ids 0..255: the byte tokens in byte order; then `extra` tokens (normal
// unless they start with '<'), with the merges given.
std::vector<gguf::KeyValue> smallVocabulary(const std::vector<std::string> &extra,
                                            const std::vector<std::string> &merges,
                                            const std::string &pre = "deepseek-v3") {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int byte = 0; byte < 256; ++byte) {
    tokens.push_back(byteLevelSymbol(static_cast<uint8_t>(byte)));
    types.push_back(1);
  }
  for (const std::string &token : extra) {
    tokens.push_back(token);
    types.push_back(token.rfind("<", 0) == 0 ? 3 : 1);
  }
  return {{"tokenizer.ggml.model", stringValue("gpt2")},
          {"tokenizer.ggml.pre", stringValue(pre)},
          {"tokenizer.ggml.tokens", stringArray(tokens)},
          {"tokenizer.ggml.token_type", intArray(types)},
          {"tokenizer.ggml.merges", stringArray(merges)},
          {"tokenizer.ggml.bos_token_id", uintValue(256)}};
}

Tokenizer smallTokenizer(const std::vector<std::string> &extra,
                         const std::vector<std::string> &merges) {
  StatusOr<Tokenizer> tokenizer =
      Tokenizer::fromGgufMetadata(smallVocabulary(extra, merges), "small.gguf");
  EXPECT_TRUE(tokenizer.ok()) << (tokenizer.ok() ? "" : tokenizer.message());
  return *tokenizer;
}

TEST(Bpe, AppliesTheLowestRankedMergeFirst) {
  // 256 = "<s>", 257 = "ab", 258 = "bc", 259 = "abc".
  Tokenizer bcFirst = smallTokenizer({"<s>", "ab", "bc", "abc"}, {"b c", "a b", "a bc"});
  EXPECT_EQ(encodeOrDie(bcFirst, "abc"), (Ids{259})); // (b c) then (a bc)
  EXPECT_EQ(encodeOrDie(bcFirst, "ab"), (Ids{257}));
  Tokenizer abFirst = smallTokenizer({"<s>", "ab", "bc", "abc"}, {"a b", "b c", "a bc"});
  EXPECT_EQ(encodeOrDie(abFirst, "abc"), (Ids{257, 'c'})); // (a b) leaves no rule for ab+c
}

TEST(Bpe, TakesTheLeftmostOccurrenceOfARuleFirst) {
  // "aaa" with a+a: the left pair merges, the last a stays alone.
  Tokenizer tokenizer = smallTokenizer({"<s>", "aa", "aaaa"}, {"a a", "aa aa"});
  EXPECT_EQ(encodeOrDie(tokenizer, "aaa"), (Ids{257, 'a'}));
  EXPECT_EQ(encodeOrDie(tokenizer, "aaaa"), (Ids{258}));
  EXPECT_EQ(encodeOrDie(tokenizer, "aaaaa"), (Ids{258, 'a'}));
}

TEST(Bpe, ShortAndLongPiecesFollowTheSameOrder) {
  // Short pieces and long ones take different code paths; both must merge
  // all a+a pairs left to right before any aa+aa.
  Tokenizer tokenizer = smallTokenizer({"<s>", "aa", "aaaa"}, {"a a", "aa aa"});
  for (size_t length : {5u, 9u, 23u, 24u, 25u, 50u, 301u}) {
    Ids expected(length / 4, 258);
    if (length % 4 >= 2)
      expected.push_back(257);
    if (length % 2 == 1)
      expected.push_back('a');
    EXPECT_EQ(encodeOrDie(tokenizer, std::string(length, 'a')), expected) << length;
  }
}

TEST(Bpe, MergesNeverCrossPreTokenizerPieces) {
  // " a" would merge, but "1 a" is not split there: "1", " a".
  Tokenizer tokenizer = smallTokenizer({"<s>", "Ġa", "1Ġ"}, {"1 Ġ", "Ġ a"});
  EXPECT_EQ(encodeOrDie(tokenizer, "1 a"), (Ids{'1', 257}));
}

TEST(Bpe, EncodesBytesOfTheByteLevelAlphabet) {
  Tokenizer tokenizer = smallTokenizer({"<s>"}, {});
  // Space is byte 0x20 and its token is the one spelled "Ġ".
  EXPECT_EQ(encodeOrDie(tokenizer, " \n"), (Ids{' ', '\n'}));
  EXPECT_EQ(encodeOrDie(tokenizer, "é"), (Ids{0xC3, 0xA9}));
}

TEST(Bpe, MatchesSpecialTokensOnlyWhenAsked) {
  Tokenizer tokenizer = smallTokenizer({"<s>", "<s2>"}, {});
  EXPECT_EQ(encodeOrDie(tokenizer, "x<s>y", {/*parseSpecial=*/true}), (Ids{'x', 256, 'y'}));
  EXPECT_EQ(encodeOrDie(tokenizer, "<s2>", {/*parseSpecial=*/true}), (Ids{257})); // longest
  EXPECT_EQ(encodeOrDie(tokenizer, "<s>", {/*parseSpecial=*/false}), (Ids{'<', 's', '>'}));
  EXPECT_EQ(encodeOrDie(tokenizer, "a", {/*parseSpecial=*/false, /*addBos=*/true}),
            (Ids{256, 'a'}));
}

TEST(TokenizerLoad, RefusesVocabulariesItCannotEncodeCorrectly) {
  auto messageOf = [](const std::vector<gguf::KeyValue> &metadata) {
    StatusOr<Tokenizer> tokenizer = Tokenizer::fromGgufMetadata(metadata, "model.gguf");
    EXPECT_FALSE(tokenizer.ok());
    return tokenizer.ok() ? std::string() : tokenizer.message();
  };
  std::string message = messageOf(smallVocabulary({"<s>"}, {}, "llama3"));
  EXPECT_NE(message.find("model.gguf"), std::string::npos) << message;
  EXPECT_NE(message.find("'llama3'"), std::string::npos) << message;
  EXPECT_NE(message.find("deepseek-v3"), std::string::npos) << message;

  message = messageOf(smallVocabulary({"<s>", "ab"}, {"a x"}));
  EXPECT_NE(message.find("merge 0 ('a x')"), std::string::npos) << message;

  std::vector<gguf::KeyValue> noByte = smallVocabulary({"<s>"}, {});
  noByte[2].value.array[0x41].s = "not-A";
  message = messageOf(noByte);
  EXPECT_NE(message.find("byte 0x41"), std::string::npos) << message;

  std::vector<gguf::KeyValue> noModel = smallVocabulary({"<s>"}, {});
  noModel.erase(noModel.begin());
  message = messageOf(noModel);
  EXPECT_NE(message.find("tokenizer.ggml.model"), std::string::npos) << message;

  std::vector<gguf::KeyValue> badBos = smallVocabulary({"<s>"}, {});
  badBos.back().value.u = 100000;
  message = messageOf(badBos);
  EXPECT_NE(message.find("100000"), std::string::npos) << message;
}

TEST(TokenizerLoad, NamesTheFileThatCannotBeRead) {
  StatusOr<Tokenizer> tokenizer = Tokenizer::fromTokenizerJson("/nonexistent/tokenizer.json");
  ASSERT_FALSE(tokenizer.ok());
  EXPECT_NE(tokenizer.message().find("/nonexistent/tokenizer.json"), std::string::npos);
}

TEST(TokenizerLoad, RefusesTokenizerJsonFeaturesItDoesNotImplement) {
  std::string directory = ::testing::TempDir() + "/kt-tokenizer-load";
  std::filesystem::create_directories(directory);
  auto messageOf = [&](const std::string &json) {
    std::string path = directory + "/tokenizer.json";
    std::ofstream(path) << json;
    StatusOr<Tokenizer> tokenizer = Tokenizer::fromTokenizerJson(path);
    EXPECT_FALSE(tokenizer.ok());
    return tokenizer.ok() ? std::string() : tokenizer.message();
  };
  EXPECT_NE(messageOf("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(messageOf(R"({"model": {"type": "Unigram", "vocab": {}}})").find("Unigram"),
            std::string::npos);
  std::string message = messageOf(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
          "pre_tokenizer": {"type": "Whitespace"}})");
  EXPECT_NE(message.find("Whitespace"), std::string::npos) << message;
  message = messageOf(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
          "normalizer": {"type": "NFC"},
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}})");
  EXPECT_NE(message.find("NFC"), std::string::npos) << message;
  message = messageOf(
      R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
          "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}})");
  EXPECT_NE(message.find("no token for byte"), std::string::npos) << message;
}

//===----------------------------------------------------------------------===//
// The real DeepSeek-V3 tokenizer
//===----------------------------------------------------------------------===//

// Ids checked against Hugging Face tokenizers on these strings.
TEST(DeepseekTokenizer, EncodesKnownStrings) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  for (const Tokenizer *tokenizer : {&jsonTokenizer(), &ggufTokenizer()}) {
    EXPECT_EQ(encodeOrDie(*tokenizer, "Hello world! 12345"),
              (Ids{19923, 2058, 3, 223, 6895, 1883}));
    EXPECT_EQ(encodeOrDie(*tokenizer, "你好，世界"), (Ids{30594, 303, 3427}));
    EXPECT_EQ(encodeOrDie(*tokenizer, "<｜User｜>hi<｜Assistant｜>", {/*parseSpecial=*/true}),
              (Ids{128803, 6366, 128804}));
  }
}

TEST(DeepseekTokenizer, KnowsItsSpecialTokens) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  for (const Tokenizer *tokenizer : {&jsonTokenizer(), &ggufTokenizer()}) {
    EXPECT_EQ(tokenizer->bosId(), std::optional<TokenId>(0));
    EXPECT_EQ(tokenizer->eosId(), std::optional<TokenId>(1));
    EXPECT_TRUE(tokenizer->addBosByDefault());
    EXPECT_EQ(tokenizer->tokenText(0), "<｜begin▁of▁sentence｜>");
    EXPECT_EQ(tokenizer->findToken("<｜User｜>"), std::optional<TokenId>(128803));
    EXPECT_EQ(tokenizer->findToken("<｜Assistant｜>"), std::optional<TokenId>(128804));
    EXPECT_EQ(tokenizer->findToken("<｜tool▁sep｜>"), std::optional<TokenId>(128814));
    EXPECT_EQ(tokenizer->findToken("Hello"), std::optional<TokenId>(19923));
    for (TokenId id : {0, 1, 128803, 128804, 128814})
      EXPECT_EQ(tokenizer->tokenKind(id), TokenKind::Control) << id;
    EXPECT_EQ(tokenizer->tokenKind(19923), TokenKind::Normal);
    EXPECT_EQ(tokenizer->chatTemplate().find("<｜Assistant｜>") != std::string::npos, true);
  }
  EXPECT_EQ(jsonTokenizer().vocabSize(), 128815u);
  // The GGUF vocabulary is padded to the embedding's rows with unused tokens.
  EXPECT_EQ(ggufTokenizer().vocabSize(), 129280u);
  EXPECT_EQ(ggufTokenizer().tokenKind(129279), TokenKind::Unused);
  EXPECT_EQ(decodeOrDie(ggufTokenizer(), {129279}), "");
}

TEST(DeepseekTokenizer, EncodesEveryVocabularyTokenAsItself) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  // Each ordinary token whose bytes are whole UTF-8 characters encodes to
  // exactly that token (Hugging Face's tokenizer does this for all 126527 of
  // them); the rest are fragments of characters.
  const Tokenizer &tokenizer = jsonTokenizer();
  size_t checked = 0;
  for (TokenId id = 0; id < static_cast<TokenId>(tokenizer.vocabSize()); ++id) {
    if (tokenizer.tokenKind(id) != TokenKind::Normal || !isValidUtf8(tokenizer.tokenBytes(id)))
      continue;
    StatusOr<std::vector<TokenId>> ids = tokenizer.encode(tokenizer.tokenBytes(id));
    ASSERT_TRUE(ids.ok());
    ASSERT_EQ(*ids, Ids{id}) << "token " << id << " '" << tokenizer.tokenText(id) << "'";
    ++checked;
  }
  EXPECT_EQ(checked, 126527u);
}

TEST(DeepseekTokenizer, TreatsSpecialTokenTextAsPlainTextUnlessAsked) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  for (const Tokenizer *tokenizer : {&jsonTokenizer(), &ggufTokenizer()}) {
    std::string text = "<｜User｜>hi<｜end▁of▁sentence｜>";
    Ids plain = encodeOrDie(*tokenizer, text);
    for (TokenId id : plain)
      EXPECT_EQ(tokenizer->tokenKind(id), TokenKind::Normal) << id;
    EXPECT_EQ(decodeOrDie(*tokenizer, plain), text);
    EXPECT_EQ(encodeOrDie(*tokenizer, text, {/*parseSpecial=*/true}), (Ids{128803, 6366, 1}));
  }
}

TEST(DeepseekTokenizer, AddsTheBeginningOfSentenceTokenWhenAsked) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  EXPECT_EQ(encodeOrDie(jsonTokenizer(), "Hello", {false, /*addBos=*/true}), (Ids{0, 19923}));
  EXPECT_EQ(encodeOrDie(jsonTokenizer(), "", {false, /*addBos=*/true}), (Ids{0}));
  EXPECT_EQ(encodeOrDie(jsonTokenizer(), ""), Ids{});
}

TEST(DeepseekTokenizer, DecodingCanSkipSpecialTokens) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  const Tokenizer &tokenizer = jsonTokenizer();
  Ids ids = encodeOrDie(tokenizer, "<｜begin▁of▁sentence｜><｜User｜>Hi there<｜Assistant｜>",
                        {/*parseSpecial=*/true});
  EXPECT_EQ(decodeOrDie(tokenizer, ids),
            "<｜begin▁of▁sentence｜><｜User｜>Hi there<｜Assistant｜>");
  EXPECT_EQ(decodeOrDie(tokenizer, ids, {/*skipSpecial=*/true}), "Hi there");
}

TEST(DeepseekTokenizer, ShowsItsPreTokenizerPieces) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  StatusOr<std::vector<std::string>> pieces = jsonTokenizer().preTokenize("Hello world 2024!");
  ASSERT_TRUE(pieces.ok());
  EXPECT_EQ(*pieces, (std::vector<std::string>{"Hello", " world", " ", "202", "4", "!"}));
  EXPECT_FALSE(jsonTokenizer().preTokenize("bad \xFF").ok());
}

TEST(DeepseekTokenizer, RefusesIdsOutsideTheVocabulary) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  StatusOr<std::string> text = jsonTokenizer().decode({19923, 128815});
  ASSERT_FALSE(text.ok());
  EXPECT_NE(text.message().find("128815"), std::string::npos) << text.message();
  EXPECT_FALSE(jsonTokenizer().decode({-1}).ok());
}

TEST(DeepseekTokenizer, RoundTripsArbitraryBytesIncludingInvalidUtf8) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  const Tokenizer &tokenizer = jsonTokenizer();
  // Invalid bytes become their byte tokens.
  EXPECT_EQ(encodeOrDie(tokenizer, "\xFF"), Ids{*tokenizer.findToken(byteLevelSymbol(0xFF))});
  std::mt19937 random(11);
  // Includes cut-off characters, stray bytes and a NUL byte.
  const std::string fragments[] = {"a",        " ",           "中",   "\xE4\xBD",        "\xFF",
                                   "\x80",     "1",           "\n",   "🙂",              "\xF0\x9F",
                                   "<｜User｜>", "é",           "\t",   std::string(1, '\0')};
  for (int round = 0; round < 300; ++round) {
    std::string text;
    int length = static_cast<int>(random() % 30);
    for (int i = 0; i < length; ++i)
      text += fragments[random() % (sizeof(fragments) / sizeof(fragments[0]))];
    for (bool parseSpecial : {false, true})
      EXPECT_EQ(decodeOrDie(tokenizer, encodeOrDie(tokenizer, text, {parseSpecial})), text);
  }
}

TEST(DeepseekTokenizer, GgufAndTokenizerJsonGiveTheSameIds) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  for (const char *text :
       {"The quick brown fox jumps over the lazy dog.", "日本語のテキストとカタカナ",
        "한국어 텍스트입니다", "def f(x):\n    return x**2  # comment\n", "naïve café",
        "🙂👨‍👩‍👧‍👦", "  \t\n\n  spaces", "1234567890",
        "<｜User｜>q<｜Assistant｜>a<think>"}) {
    for (bool parseSpecial : {false, true})
      EXPECT_EQ(encodeOrDie(jsonTokenizer(), text, {parseSpecial}),
                encodeOrDie(ggufTokenizer(), text, {parseSpecial}))
          << text;
  }
}

} // namespace
} // namespace kt::tokenizer
