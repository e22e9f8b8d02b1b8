// The built-in vocabulary and vocabularies read from Hugging Face tokenizer.json.
#include "test/unit/generator/GeneratorTestUtil.h"

#include <map>

namespace kt::gen::test {
namespace {

TEST(GeneratorVocabulary, ByteToUnicodeIsGpt2sTable) {
  EXPECT_EQ(byteToUnicode('A'), "A");
  EXPECT_EQ(byteToUnicode('!'), "!");
  EXPECT_EQ(byteToUnicode(' '), "Ġ");  // U+0120: 0x20 is the 33rd non-printable byte
  EXPECT_EQ(byteToUnicode('\n'), "Ċ"); // U+010A
  EXPECT_EQ(byteToUnicode(0), "Ā");    // U+0100
  EXPECT_EQ(byteToUnicode(0xAD), "Ń"); // U+0143, the soft hyphen is remapped
  EXPECT_EQ(byteToUnicode(0xFF), "ÿ");
  std::set<std::string> all;
  for (int b = 0; b < 256; ++b)
    all.insert(byteToUnicode(static_cast<uint8_t>(b)));
  EXPECT_EQ(all.size(), 256u);
}

TEST(GeneratorVocabulary, BuiltinVocabularyIsAConsistentByteLevelBpe) {
  Vocabulary vocab = builtinVocabulary();
  ASSERT_EQ(vocab.tokens.size(), vocab.tokenTypes.size());
  EXPECT_EQ(vocab.tokens[0], "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(vocab.tokens[1], "<｜end▁of▁sentence｜>");
  EXPECT_EQ(vocab.tokenTypes[0], TokenType::Control);
  EXPECT_EQ(vocab.bosId, 0u);
  EXPECT_EQ(vocab.eosId, 1u);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(vocab.tokens[2 + b], byteToUnicode(static_cast<uint8_t>(b)));
    EXPECT_EQ(vocab.tokenTypes[2 + b], TokenType::Normal);
  }
  std::map<std::string, TokenType> typeOf;
  for (size_t i = 0; i < vocab.tokens.size(); ++i)
    EXPECT_TRUE(typeOf.emplace(vocab.tokens[i], vocab.tokenTypes[i]).second)
        << "token listed twice: " << vocab.tokens[i];
  EXPECT_EQ(typeOf.at("<｜User｜>"), TokenType::Control);
  EXPECT_EQ(typeOf.at("<｜Assistant｜>"), TokenType::Control);
  EXPECT_EQ(typeOf.at("<think>"), TokenType::UserDefined);
  EXPECT_EQ(typeOf.at("</think>"), TokenType::UserDefined);

  // Every merge joins two tokens into a third, as a BPE tokenizer needs.
  ASSERT_GE(vocab.merges.size(), 50u);
  for (const std::string &merge : vocab.merges) {
    size_t space = merge.find(' ');
    ASSERT_NE(space, std::string::npos) << merge;
    std::string left = merge.substr(0, space), right = merge.substr(space + 1);
    EXPECT_TRUE(typeOf.count(left)) << merge;
    EXPECT_TRUE(typeOf.count(right)) << merge;
    EXPECT_TRUE(typeOf.count(left + right)) << merge;
  }
  // Learned from English text: common words with their leading space exist.
  EXPECT_TRUE(typeOf.count("Ġthe"));
  EXPECT_TRUE(typeOf.count("Ġand"));
}

TEST(GeneratorVocabulary, BuiltinVocabularyIsDeterministic) {
  Vocabulary a = builtinVocabulary(), b = builtinVocabulary();
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.merges, b.merges);
}

TEST(GeneratorVocabulary, PaddingAddsUnusedTokens) {
  Vocabulary vocab = builtinVocabulary();
  int64_t size = vocab.size();
  ASSERT_TRUE(padVocabulary(vocab, size + 3).ok());
  EXPECT_EQ(vocab.size(), size + 3);
  EXPECT_EQ(vocab.tokens.back(), "[PAD" + std::to_string(size + 2) + "]");
  EXPECT_EQ(vocab.tokenTypes.back(), TokenType::Unused);
  Status tooSmall = padVocabulary(vocab, 10);
  ASSERT_FALSE(tooSmall.ok());
  EXPECT_NE(tooSmall.message().find("--vocab-size"), std::string::npos);
}

TEST(GeneratorVocabulary, ReadsTheDeepSeekV3TokenizerLikeLlamaCppsConverter) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  StatusOr<Vocabulary> loaded = loadTokenizerJson(deepseekTokenizerJson().string());
  ASSERT_TRUE(loaded.ok()) << loaded.message();
  const Vocabulary &vocab = *loaded;
  // 128000 BPE tokens and added tokens up to id 128814.
  EXPECT_EQ(vocab.size(), 128815);
  EXPECT_EQ(vocab.model, "gpt2");
  EXPECT_EQ(vocab.pre, "deepseek-v3");
  EXPECT_EQ(vocab.tokens[0], "<｜begin▁of▁sentence｜>");
  EXPECT_EQ(vocab.tokenTypes[0], TokenType::Control);
  EXPECT_EQ(vocab.tokens[3], "!");
  EXPECT_EQ(vocab.tokenTypes[3], TokenType::Normal);
  EXPECT_EQ(vocab.tokens[50000], "stick");
  EXPECT_EQ(vocab.tokens[1000], "ĠÐ²");
  EXPECT_EQ(vocab.tokens[128000], "<｜place▁holder▁no▁0｜>");
  EXPECT_EQ(vocab.tokenTypes[128000], TokenType::Control); // special
  // Non-special added tokens that look special are control tokens too.
  EXPECT_EQ(vocab.tokens[128803], "<｜User｜>");
  EXPECT_EQ(vocab.tokenTypes[128803], TokenType::Control);
  EXPECT_EQ(vocab.tokens[128804], "<｜Assistant｜>");
  EXPECT_EQ(vocab.tokens[128805], "<|EOT|>");

  EXPECT_EQ(vocab.merges.size(), 127741u);
  EXPECT_EQ(vocab.merges[0], "Ġ t");
  EXPECT_EQ(vocab.merges[2], "i n");

  // From tokenizer_config.json next to it.
  EXPECT_EQ(vocab.bosId, 0u);
  EXPECT_EQ(vocab.eosId, 1u);
  EXPECT_EQ(vocab.padId, 1u);
  EXPECT_EQ(vocab.addBos, true);
  EXPECT_EQ(vocab.addEos, false);
  EXPECT_NE(vocab.chatTemplate.find("<｜Assistant｜>"), std::string::npos);
}

TEST(GeneratorVocabulary, ModelWithTheDeepSeekTokenizerHasItsVocabulary) {
  KT_REQUIRE_DEEPSEEK_TOKENIZER();
  TempDir dir;
  std::string path = dir.file("vocab.gguf");
  // The v3 preset pads to DeepSeek-V3's 129280 embedding rows; a small model
  // keeps the run short.
  CommandResult run = runGenerator(
      "--preset v3 --layers 1 --dense-layers 1 --hidden 256 --dense-ffn 256 --heads 2 "
      "--q-lora-rank 64 --kv-lora-rank 64 --experts 8 --groups 1 --groups-used 1 "
      "--expert-ffn 256 --type-embed q4_K --type-output q4_K -q --tokenizer-json '" +
      deepseekTokenizerJson().string() + "' -o '" + path + "'");
  ASSERT_EQ(run.exitCode, 0) << run.output;
  auto model = gguf::GgufModel::open(path);
  ASSERT_TRUE(model.ok()) << model.message();
  const gguf::Value *tokens = (*model)->find("tokenizer.ggml.tokens");
  const gguf::Value *types = (*model)->find("tokenizer.ggml.token_type");
  const gguf::Value *merges = (*model)->find("tokenizer.ggml.merges");
  ASSERT_TRUE(tokens && types && merges);
  ASSERT_EQ(tokens->array.size(), 129280u);
  ASSERT_EQ(types->array.size(), 129280u);
  EXPECT_EQ(tokens->array[128803].s, "<｜User｜>");
  EXPECT_EQ(types->array[128803].i, 3);
  EXPECT_EQ(tokens->array[129279].s, "[PAD129279]");
  EXPECT_EQ(types->array[129279].i, 5);
  EXPECT_EQ(types->array[500].i, 1);
  EXPECT_EQ(merges->array.size(), 127741u);
  EXPECT_EQ((*model)->find("deepseek2.vocab_size")->u, 129280u);
  EXPECT_EQ((*model)->findTensor("token_embd.weight")->ne, (std::vector<int64_t>{256, 129280}));
  EXPECT_EQ((*model)->findTensor("output.weight")->ne, (std::vector<int64_t>{256, 129280}));
  EXPECT_NE((*model)->find("tokenizer.chat_template"), nullptr);
}

TEST(GeneratorVocabulary, TokenizerJsonDetailsFollowTheConverter) {
  TempDir dir;
  // Array-form merges, a non-special added token (user-defined, with U+2581
  // turned into a space), a gap in the ids, and a config with object-form
  // special tokens.
  {
    std::ofstream json(dir.file("tokenizer.json"));
    json << R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2},
                "merges": [["a", "b"]]},
                "added_tokens": [
                  {"id": 4, "content": "<s>", "special": true},
                  {"id": 5, "content": "my▁word", "special": false},
                  {"id": 6, "content": "<|tool|>", "special": false}]})";
  }
  {
    std::ofstream config(dir.file("tokenizer_config.json"));
    config << R"({"bos_token": {"content": "<s>"}, "eos_token": "<|tool|>",
                  "add_bos_token": false,
                  "chat_template": [{"name": "tool_use", "template": "T"},
                                    {"name": "default", "template": "D"}]})";
  }
  StatusOr<Vocabulary> vocab = loadTokenizerJson(dir.file("tokenizer.json"));
  ASSERT_TRUE(vocab.ok()) << vocab.message();
  ASSERT_EQ(vocab->size(), 7);
  EXPECT_EQ(vocab->tokens[3], "[PAD3]");
  EXPECT_EQ(vocab->tokenTypes[3], TokenType::Unused);
  EXPECT_EQ(vocab->tokenTypes[4], TokenType::Control);
  EXPECT_EQ(vocab->tokens[5], "my word");
  EXPECT_EQ(vocab->tokenTypes[5], TokenType::UserDefined);
  EXPECT_EQ(vocab->tokenTypes[6], TokenType::Control);
  EXPECT_EQ(vocab->merges, (std::vector<std::string>{"a b"}));
  EXPECT_EQ(vocab->bosId, 4u);
  EXPECT_EQ(vocab->eosId, 6u);
  EXPECT_FALSE(vocab->padId.has_value());
  EXPECT_EQ(vocab->addBos, false);
  EXPECT_FALSE(vocab->addEos.has_value());
  EXPECT_EQ(vocab->chatTemplate, "D");
}

TEST(GeneratorVocabulary, BadTokenizerFilesAreReportedClearly) {
  TempDir dir;
  StatusOr<Vocabulary> missing = loadTokenizerJson(dir.file("nope.json"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("nope.json"), std::string::npos);
  {
    std::ofstream(dir.file("broken.json")) << "{ not json";
  }
  StatusOr<Vocabulary> broken = loadTokenizerJson(dir.file("broken.json"));
  ASSERT_FALSE(broken.ok());
  EXPECT_NE(broken.message().find("not valid JSON"), std::string::npos);
  {
    std::ofstream(dir.file("unigram.json")) << R"({"model": {"type": "Unigram", "vocab": {}}})";
  }
  StatusOr<Vocabulary> unigram = loadTokenizerJson(dir.file("unigram.json"));
  ASSERT_FALSE(unigram.ok());
  EXPECT_NE(unigram.message().find("BPE"), std::string::npos);
}

} // namespace
} // namespace kt::gen::test
