// Helpers shared by the tokenizer tests: where the real DeepSeek-V3
// tokenizer lives, and the tokenizers built from it (loaded once per binary).
#pragma once

#include "test/unit/common/SharedData.h"

#include "runtime/tokenizer/Tokenizer.h"
#include "tools/kt-gen-model/ModelGenerator.h"
#include "tools/kt-gen-model/Vocabulary.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

namespace kt::tokenizer::test {

namespace fs = std::filesystem;

using ::kt::test::deepseekTokenizerJson;
using ::kt::test::sharedDataDir;
using ::kt::test::deepseekTokenizerDir;

#define KT_REQUIRE_DEEPSEEK_TOKENIZER()                                                            \
  do {                                                                                             \
    if (!std::filesystem::exists(::kt::tokenizer::test::deepseekTokenizerJson()))                  \
      GTEST_SKIP() << "DeepSeek-V3 tokenizer not found at "                                        \
                   << ::kt::tokenizer::test::deepseekTokenizerJson()                               \
                   << "; set KT_SHARED_DIR to the directory holding "                              \
                      "data/deepseek-v3-tokenizer/tokenizer.json";                                 \
  } while (0)

// The real tokenizer from tokenizer.json; loaded on first use.
inline const Tokenizer &jsonTokenizer() {
  static const Tokenizer tokenizer = [] {
    StatusOr<Tokenizer> loaded = Tokenizer::fromTokenizerJson(deepseekTokenizerJson().string());
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.message();
      std::abort();
    }
    return *loaded;
  }();
  return tokenizer;
}

// The same vocabulary as a GGUF model carries it: converted the way
// llama.cpp's converter does (kt-gen-model's vocabulary reader), padded to
// DeepSeek-V3's 129280 embedding rows, and read back from GGUF metadata.
inline const Tokenizer &ggufTokenizer() {
  static const Tokenizer tokenizer = [] {
    StatusOr<gen::Vocabulary> vocab = gen::loadTokenizerJson(deepseekTokenizerJson().string());
    if (!vocab.ok()) {
      ADD_FAILURE() << vocab.message();
      std::abort();
    }
    if (Status padded = gen::padVocabulary(*vocab, 129280); !padded.ok()) {
      ADD_FAILURE() << padded.message();
      std::abort();
    }
    StatusOr<gen::ModelConfig> config = gen::presetConfig("tiny");
    std::vector<gguf::KeyValue> metadata = gen::buildMetadata(*config, *vocab);
    StatusOr<Tokenizer> loaded = Tokenizer::fromGgufMetadata(metadata, "deepseek-v3 (GGUF)");
    if (!loaded.ok()) {
      ADD_FAILURE() << loaded.message();
      std::abort();
    }
    return *loaded;
  }();
  return tokenizer;
}

inline std::vector<TokenId> encodeOrDie(const Tokenizer &tokenizer, std::string_view text,
                                        EncodeOptions options = {}) {
  StatusOr<std::vector<TokenId>> ids = tokenizer.encode(text, options);
  EXPECT_TRUE(ids.ok()) << (ids.ok() ? "" : ids.message());
  return ids.ok() ? *ids : std::vector<TokenId>{};
}

inline std::string decodeOrDie(const Tokenizer &tokenizer, const std::vector<TokenId> &ids,
                               DecodeOptions options = {}) {
  StatusOr<std::string> text = tokenizer.decode(ids, options);
  EXPECT_TRUE(text.ok()) << (text.ok() ? "" : text.message());
  return text.ok() ? *text : std::string();
}

} // namespace kt::tokenizer::test
