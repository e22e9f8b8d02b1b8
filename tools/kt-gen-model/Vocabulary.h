// The vocabulary written into generated models: GGUF's `tokenizer.*` keys for a
// byte-level BPE tokenizer (tokenizer.ggml.model = "gpt2"), taken either from a
// Hugging Face tokenizer.json or from a small built-in vocabulary.
#pragma once

#include "runtime/support/Status.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace kt::gen {

// Token types as llama.cpp's converter writes them (gguf-py TokenType).
enum class TokenType : int32_t {
  Normal = 1,
  Unknown = 2,
  Control = 3,
  UserDefined = 4,
  Unused = 5,
  Byte = 6,
};

struct Vocabulary {
  std::string model = "gpt2";       // tokenizer.ggml.model
  std::string pre = "deepseek-v3";  // tokenizer.ggml.pre
  std::vector<std::string> tokens;  // index = token id
  std::vector<TokenType> tokenTypes;
  std::vector<std::string> merges;  // "left right", highest priority first
  std::optional<uint32_t> bosId;
  std::optional<uint32_t> eosId;
  std::optional<uint32_t> padId;
  std::optional<bool> addBos;
  std::optional<bool> addEos;
  std::string chatTemplate;         // empty: no tokenizer.chat_template key
  std::string source;               // where it came from, for the summary

  int64_t size() const { return static_cast<int64_t>(tokens.size()); }
  // Id of a token by its text, or nullopt.
  std::optional<uint32_t> find(const std::string &token) const;
};

// The DeepSeek special tokens of the built-in vocabulary.
// (UTF-8 source text: ｜ is U+FF5C, ▁ is U+2581.)
inline constexpr const char *kBeginOfSentence = "<｜begin▁of▁sentence｜>";
inline constexpr const char *kEndOfSentence = "<｜end▁of▁sentence｜>";
inline constexpr const char *kUserToken = "<｜User｜>";
inline constexpr const char *kAssistantToken = "<｜Assistant｜>";
inline constexpr const char *kThinkToken = "<think>";
inline constexpr const char *kEndThinkToken = "</think>";

// GPT-2's byte-to-unicode table: the UTF-8 text of the symbol that stands for
// byte `b` in byte-level BPE vocabularies (printable bytes map to themselves,
// the others to U+0100 and up).
std::string byteToUnicode(uint8_t b);

// A small byte-level BPE vocabulary for demos and tests: the two sentence
// tokens at ids 0 and 1 (as in DeepSeek-V3), the 256 byte tokens, merges
// learned from a built-in English text, then <｜User｜>, <｜Assistant｜>,
// <think> and </think>. Deterministic: every call returns the same vocabulary.
Vocabulary builtinVocabulary();

// Reads a Hugging Face tokenizer.json (model type BPE) the way llama.cpp's
// converter does: tokens by id with added tokens at their ids, gaps filled
// with "[PAD<id>]" (unused), token types normal / control (special added
// tokens, and added tokens that look special such as <｜...｜>) /
// user-defined (other added tokens, with U+2581 replaced by a space), merges
// as "a b" strings. When tokenizer_config.json sits in the same directory,
// its bos/eos/pad tokens, add_bos_token/add_eos_token and chat_template are
// used too (or chat_template.jinja, if the config has no template).
StatusOr<Vocabulary> loadTokenizerJson(const std::string &path);

// Pads the vocabulary with "[PAD<id>]" unused tokens up to `size` (the
// model's embedding rows, e.g. 129280 for DeepSeek-V3). Fails if the
// vocabulary already has more tokens than that.
Status padVocabulary(Vocabulary &vocab, int64_t size);

} // namespace kt::gen
