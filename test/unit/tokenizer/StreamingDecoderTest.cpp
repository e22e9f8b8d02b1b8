#include "runtime/tokenizer/ByteLevel.h"
#include "runtime/tokenizer/Tokenizer.h"
#include "runtime/tokenizer/Utf8.h"
#include "test/unit/tokenizer/TokenizerTestUtil.h"

namespace kt::tokenizer {
namespace {

using test::encodeOrDie;
using test::jsonTokenizer;

TokenId byteToken(uint8_t byte) { return *jsonTokenizer().findToken(byteLevelSymbol(byte)); }

std::string pushOrDie(StreamingDecoder &decoder, TokenId id) {
  StatusOr<std::string> text = decoder.push(id);
  EXPECT_TRUE(text.ok()) << (text.ok() ? "" : text.message());
  return text.ok() ? *text : std::string();
}

TEST(StreamingDecoder, HoldsBackACharacterUntilItsLastByteArrives) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  StreamingDecoder decoder(jsonTokenizer());
  // 你 is E4 BD A0.
  EXPECT_EQ(pushOrDie(decoder, byteToken(0xE4)), "");
  EXPECT_EQ(decoder.pendingBytes(), 1u);
  EXPECT_EQ(pushOrDie(decoder, byteToken(0xBD)), "");
  EXPECT_EQ(pushOrDie(decoder, byteToken(0xA0)), "你");
  EXPECT_EQ(decoder.pendingBytes(), 0u);
  EXPECT_EQ(decoder.flush(), "");
}

TEST(StreamingDecoder, EmitsCompleteCharactersAndKeepsOnlyTheUnfinishedTail) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  StreamingDecoder decoder(jsonTokenizer());
  // "ok" followed by the first two bytes of 🙂 (F0 9F 99 82).
  TokenId ok = *jsonTokenizer().findToken("ok");
  EXPECT_EQ(pushOrDie(decoder, ok), "ok");
  EXPECT_EQ(pushOrDie(decoder, byteToken(0xF0)), "");
  EXPECT_EQ(pushOrDie(decoder, byteToken(0x9F)), "");
  EXPECT_EQ(pushOrDie(decoder, byteToken(0x99)), "");
  EXPECT_EQ(pushOrDie(decoder, byteToken(0x82)), "🙂");
}

TEST(StreamingDecoder, ReplacesBytesThatCanNeverFormACharacter) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  StreamingDecoder decoder(jsonTokenizer());
  EXPECT_EQ(pushOrDie(decoder, byteToken(0xFF)), kReplacementCharacter);
  EXPECT_EQ(pushOrDie(decoder, byteToken(0xE4)), "");
  // 'a' cannot continue E4: the held byte is given up as U+FFFD.
  EXPECT_EQ(pushOrDie(decoder, byteToken('a')), std::string(kReplacementCharacter) + "a");
  EXPECT_EQ(pushOrDie(decoder, byteToken(0xE4)), "");
  EXPECT_EQ(decoder.flush(), kReplacementCharacter);
  EXPECT_EQ(decoder.pendingBytes(), 0u);
}

TEST(StreamingDecoder, ReproducesDecodeChunkByChunkInValidUtf8) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  std::string text = "Mixed 中文、日本語のかな、한국어, emoji 🙂👨‍👩‍👧‍👦🏳️‍🌈, "
                     "accents "
                     "naïve e\u0301, math ∑∫√ and <｜User｜>tokens<｜Assistant｜>.";
  std::vector<TokenId> ids = encodeOrDie(jsonTokenizer(), text, {/*parseSpecial=*/true});
  StreamingDecoder decoder(jsonTokenizer());
  std::string streamed;
  size_t chunksHeldBack = 0;
  for (TokenId id : ids) {
    std::string chunk = pushOrDie(decoder, id);
    EXPECT_TRUE(isValidUtf8(chunk));
    chunksHeldBack += decoder.pendingBytes() > 0;
    streamed += chunk;
  }
  streamed += decoder.flush();
  EXPECT_EQ(streamed, text);
  // Some of these characters span several tokens, so the decoder did hold back.
  EXPECT_GT(chunksHeldBack, 0u);
}

TEST(StreamingDecoder, SkipsSpecialTokensWhenAsked) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  StreamingDecoder decoder(jsonTokenizer(), {/*skipSpecial=*/true});
  EXPECT_EQ(pushOrDie(decoder, 1), "");
  EXPECT_EQ(pushOrDie(decoder, *jsonTokenizer().findToken("ok")), "ok");
  StatusOr<std::string> bad = decoder.push(999999);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("999999"), std::string::npos);
}

} // namespace
} // namespace kt::tokenizer
