// Compares the tokenizer and the chat template with Hugging Face's, through
// golden.json, which golden/make_golden.py writes with the `tokenizers` and
// `transformers` libraries from golden/strings.json and golden/chats.json.
#include "runtime/tokenizer/ChatTemplate.h"
#include "runtime/tokenizer/Tokenizer.h"
#include "test/unit/common/TempDir.h"
#include "test/unit/tokenizer/TokenizerTestUtil.h"

#include <nlohmann/json.hpp>

#include <fstream>

namespace kt::tokenizer {
namespace {

using nlohmann::json;
using test::decodeOrDie;
using test::encodeOrDie;

const std::string kGoldenDir = std::string(KT_SOURCE_DIR) + "/test/unit/tokenizer/golden";

json readJson(const std::string &path) {
  std::ifstream in(path);
  if (!in)
    return json();
  return json::parse(in, nullptr, /*allow_exceptions=*/false);
}

// golden.json, or a failed test saying how to make it.
const json &golden() {
  static const json data = readJson(kGoldenDir + "/golden.json");
  return data;
}

#define KT_REQUIRE_GOLDEN()                                                                        \
  do {                                                                                             \
    KT_REQUIRE_DEEPSEEK_TOKENIZER();                                                               \
    if (!golden().is_object())                                                                     \
      GTEST_FAIL() << kGoldenDir << "/golden.json is missing or not JSON. Generate it where "      \
                   << "Hugging Face tokenizers and transformers are installed: python3 "           \
                   << "test/unit/tokenizer/golden/make_golden.py --tokenizer "                     \
                   << "<dir of tokenizer.json> --strings " << kGoldenDir                           \
                   << "/strings.json --chats " << kGoldenDir << "/chats.json --out " << kGoldenDir \
                   << "/golden.json";                                                              \
  } while (0)

std::vector<TokenId> idsOf(const json &array) { return array.get<std::vector<TokenId>>(); }

TEST(Golden, CoversTheCommittedInputs) {
  KT_REQUIRE_GOLDEN();
  json strings = readJson(kGoldenDir + "/strings.json");
  ASSERT_TRUE(strings.is_array());
  EXPECT_GE(strings.size(), 300u);
  const json &encodings = golden()["encodings"];
  ASSERT_EQ(encodings.size(), strings.size()) << "golden.json is stale: regenerate it";
  for (size_t i = 0; i < strings.size(); ++i)
    EXPECT_EQ(encodings[i]["text"], strings[i]) << "golden.json is stale: regenerate it";
  json chats = readJson(kGoldenDir + "/chats.json");
  ASSERT_TRUE(chats.is_array());
  EXPECT_EQ(golden()["chats"].size(), chats.size() * 2) << "one rendering per template";
}

void checkEncodings(const Tokenizer &tokenizer, const char *which) {
  size_t failures = 0;
  for (const json &entry : golden()["encodings"]) {
    std::string text = entry["text"].get<std::string>();
    std::vector<TokenId> ids = idsOf(entry["ids"]);
    std::vector<TokenId> plainIds = idsOf(entry["ids_plain"]);
    std::vector<TokenId> bosIds = idsOf(entry["ids_with_bos"]);
    bool ok = true;
    ok &= encodeOrDie(tokenizer, text, {/*parseSpecial=*/true}) == ids;
    ok &= encodeOrDie(tokenizer, text, {/*parseSpecial=*/false}) == plainIds;
    ok &= encodeOrDie(tokenizer, text, {/*parseSpecial=*/true, /*addBos=*/true}) == bosIds;
    ok &= decodeOrDie(tokenizer, ids) == text;
    ok &= decodeOrDie(tokenizer, plainIds) == text;
    if (!ok && ++failures <= 10) {
      ADD_FAILURE() << which << ": " << json(text).dump() << "\n  expected " << entry["ids"].dump()
                    << "\n  got      " << json(encodeOrDie(tokenizer, text, {true})).dump()
                    << "\n  plain expected " << entry["ids_plain"].dump() << "\n  plain got      "
                    << json(encodeOrDie(tokenizer, text, {false})).dump();
    }
  }
  EXPECT_EQ(failures, 0u) << which << ": strings whose ids differ from Hugging Face's";
}

TEST(Golden, TokenizerJsonIdsMatchHuggingFace) {
  KT_REQUIRE_GOLDEN();
  checkEncodings(test::jsonTokenizer(), "tokenizer.json");
}

TEST(Golden, GgufIdsMatchHuggingFace) {
  KT_REQUIRE_GOLDEN();
  checkEncodings(test::ggufTokenizer(), "GGUF");
}

// A checkpoint opened as a GGUF model carries its tokenizer.json as GGUF
// metadata (runtime/model/CheckpointModel.h).
TEST(Golden, TokenizerJsonAsGgufMetadataIdsMatchHuggingFace) {
  KT_REQUIRE_GOLDEN();
  StatusOr<std::vector<gguf::KeyValue>> metadata =
      ggufMetadataFromTokenizerJson(test::deepseekTokenizerJson().string());
  ASSERT_TRUE(metadata.ok()) << metadata.message();
  StatusOr<Tokenizer> tokenizer = Tokenizer::fromGgufMetadata(*metadata, "checkpoint");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.message();
  EXPECT_EQ(tokenizer->vocabSize(), test::jsonTokenizer().vocabSize());
  EXPECT_EQ(tokenizer->chatTemplate(), test::jsonTokenizer().chatTemplate());
  checkEncodings(*tokenizer, "tokenizer.json as GGUF metadata");
}

// kt-export-hf writes a GGUF vocabulary as tokenizer.json and
// tokenizer_config.json; reading them back gives every token, its kind and
// the special tokens, and Hugging Face's ids.
TEST(Golden, GgufVocabularyWrittenAsTokenizerJsonReadsBackTheSame) {
  KT_REQUIRE_GOLDEN();
  StatusOr<gen::Vocabulary> vocab = gen::loadTokenizerJson(test::deepseekTokenizerJson().string());
  ASSERT_TRUE(vocab.ok()) << vocab.message();
  ASSERT_TRUE(gen::padVocabulary(*vocab, 129280).ok());
  std::vector<gguf::KeyValue> metadata = gen::buildMetadata(*gen::presetConfig("tiny"), *vocab);
  StatusOr<TokenizerJsonFiles> files = tokenizerJsonFromGgufMetadata(metadata, "GGUF");
  ASSERT_TRUE(files.ok()) << files.message();
  kt::test::TempDir dir;
  std::ofstream(dir.file("tokenizer.json")) << files->tokenizerJson;
  std::ofstream(dir.file("tokenizer_config.json")) << files->tokenizerConfigJson;
  StatusOr<Tokenizer> written = Tokenizer::fromTokenizerJson(dir.file("tokenizer.json"));
  ASSERT_TRUE(written.ok()) << written.message();
  const Tokenizer &gguf = test::ggufTokenizer();
  ASSERT_EQ(written->vocabSize(), gguf.vocabSize());
  size_t differing = 0;
  for (size_t id = 0; id < gguf.vocabSize(); ++id) {
    const TokenId token = static_cast<TokenId>(id);
    if (written->tokenText(token) != gguf.tokenText(token) ||
        written->tokenKind(token) != gguf.tokenKind(token))
      ++differing;
  }
  EXPECT_EQ(differing, 0u);
  EXPECT_EQ(written->bosId(), gguf.bosId());
  EXPECT_EQ(written->eosId(), gguf.eosId());
  EXPECT_EQ(written->addBosByDefault(), gguf.addBosByDefault());
  EXPECT_EQ(written->chatTemplate(), gguf.chatTemplate());
  checkEncodings(*written, "tokenizer.json written from GGUF");
}

std::vector<ChatMessage> messagesOf(const json &messages) {
  std::vector<ChatMessage> result;
  for (const json &message : messages) {
    ChatMessage chat;
    chat.role = message["role"].get<std::string>();
    if (message.contains("content") && message["content"].is_string())
      chat.content = message["content"].get<std::string>();
    if (message.contains("tool_calls"))
      for (const json &call : message["tool_calls"])
        chat.toolCalls.push_back({call["type"].get<std::string>(),
                                  call["function"]["name"].get<std::string>(),
                                  call["function"]["arguments"].get<std::string>()});
    result.push_back(std::move(chat));
  }
  return result;
}

TEST(Golden, ChatTemplateRendersAsTransformersDoes) {
  KT_REQUIRE_GOLDEN();
  const Tokenizer &tokenizer = test::jsonTokenizer();
  StatusOr<DeepseekChatTemplate> v3 = DeepseekChatTemplate::forTokenizer(tokenizer);
  ASSERT_TRUE(v3.ok()) << v3.message();
  DeepseekChatTemplate r1(ChatTemplateStyle::deepseekR1(), tokenizer.tokenText(*tokenizer.bosId()));
  size_t checked = 0;
  for (const json &entry : golden()["chats"]) {
    const DeepseekChatTemplate &chat = entry["template"] == "r1" ? r1 : *v3;
    std::string expected = entry["text"].get<std::string>();
    std::string label =
        entry["template"].get<std::string>() + " " + entry["name"].get<std::string>();
    ChatRenderOptions options;
    options.addGenerationPrompt = entry["add_generation_prompt"].get<bool>();
    StatusOr<std::string> text = chat.render(messagesOf(entry["messages"]), options);
    ASSERT_TRUE(text.ok()) << label << ": " << text.message();
    EXPECT_EQ(*text, expected) << label;
    EXPECT_EQ(encodeOrDie(tokenizer, *text, {/*parseSpecial=*/true}), idsOf(entry["ids"])) << label;

    // --force_think appends "<think>\n" after the final <｜Assistant｜>,
    // unless the template already opened the block.
    options.forceThink = true;
    std::string forced = *chat.render(messagesOf(entry["messages"]), options);
    const std::string assistant = "<｜Assistant｜>", think = "<think>\n";
    auto endsWith = [](const std::string &s, const std::string &suffix) {
      return s.size() >= suffix.size() &&
             s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (options.addGenerationPrompt && endsWith(expected, assistant))
      EXPECT_EQ(forced, expected + think) << label;
    else
      EXPECT_EQ(forced, expected) << label;
    ++checked;
  }
  EXPECT_GT(checked, 0u);
}

} // namespace
} // namespace kt::tokenizer
