// Byte-level BPE tokenizer of DeepSeek-V3/R1 (GPT-2 style byte mapping,
// DeepSeek-V3 pre-tokenizer, special and added tokens), built from a GGUF
// model's tokenizer.* metadata or from a Hugging Face tokenizer.json; both
// give the same ids.
//
// Encoding is Hugging Face `tokenizers`' algorithm: added tokens are cut out
// of the text first (leftmost, longest), the rest is split by the
// pre-tokenizer regexes, each piece is mapped byte by byte to the GPT-2
// alphabet and merged by BPE, lowest merge rank first.
//
// Nothing here throws; loading reports problems as Status. A Tokenizer is
// immutable once built, cheap to copy (it shares its tables) and safe to use
// from several threads.
#pragma once

#include "runtime/support/Status.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kt::gguf {
class GgufModel;
struct KeyValue;
} // namespace kt::gguf

namespace kt::tokenizer {

using TokenId = int32_t;

// Token types, numbered as GGUF's tokenizer.ggml.token_type (llama.cpp's
// converter writes them).
enum class TokenKind : uint8_t {
  Normal = 1, // an ordinary BPE token
  Unknown = 2,
  Control = 3,     // special tokens: <｜begin▁of▁sentence｜>, <｜User｜>, ...
  UserDefined = 4, // added tokens that are not special (R1's <think>)
  Unused = 5,      // padding of the vocabulary up to the embedding size
  Byte = 6,
};

struct EncodeOptions {
  // Text that spells a control (special) token, such as "<｜User｜>", becomes
  // that token. Off, such text is encoded as ordinary characters, so user
  // input cannot inject turn markers. User-defined added tokens (<think> in
  // R1) are matched either way, as llama.cpp does.
  bool parseSpecial = false;
  // Prepend the beginning-of-sentence token (if the vocabulary has one).
  bool addBos = false;
};

struct DecodeOptions {
  // Leave out control tokens (turn markers, end of sentence).
  bool skipSpecial = false;
};

// Whether an added token looks like a special one by llama.cpp's converter
// rule (does_token_look_special): such tokens are control tokens even when
// tokenizer.json does not mark them special (DeepSeek's <｜User｜>).
bool looksLikeSpecialToken(std::string_view token);

class Tokenizer {
public:
  // From GGUF metadata: tokenizer.ggml.model must be "gpt2" and
  // tokenizer.ggml.pre "deepseek-v3"; reads tokens, token_type, merges,
  // bos/eos ids, add_bos_token and tokenizer.chat_template.
  static StatusOr<Tokenizer> fromGguf(const gguf::GgufModel &model);
  static StatusOr<Tokenizer> fromGgufMetadata(const std::vector<gguf::KeyValue> &metadata,
                                              const std::string &sourceName);
  // Opens a GGUF model (file, split part or directory) and reads its tokenizer.
  static StatusOr<Tokenizer> fromGgufPath(const std::string &path);
  // From a Hugging Face tokenizer.json (BPE model, Sequence of Split regexes
  // and ByteLevel pre-tokenizer, as DeepSeek's). tokenizer_config.json in the
  // same directory, if present, supplies bos/eos, add_bos_token and the chat
  // template.
  static StatusOr<Tokenizer> fromTokenizerJson(const std::string &path);

  // Token ids of `text`. Any bytes are accepted: invalid UTF-8 bytes are
  // encoded as their single byte tokens, so decode(encode(text)) == text.
  // Fails only if the regex engine hits a resource limit.
  StatusOr<std::vector<TokenId>> encode(std::string_view text,
                                        const EncodeOptions &options = {}) const;
  // The bytes the ids stand for, concatenated (not necessarily valid UTF-8
  // when the ids end inside a character). Fails on an id outside the vocabulary.
  StatusOr<std::string> decode(const std::vector<TokenId> &ids,
                               const DecodeOptions &options = {}) const;

  // The pieces the pre-tokenizer cuts `text` (valid UTF-8, no added tokens
  // considered) into; for tests and diagnostics.
  StatusOr<std::vector<std::string>> preTokenize(std::string_view text) const;

  size_t vocabSize() const;
  bool isValid(TokenId id) const { return id >= 0 && static_cast<size_t>(id) < vocabSize(); }
  // The token as spelled in the vocabulary (byte-level alphabet for normal
  // tokens, plain text for special ones). `id` must be valid.
  const std::string &tokenText(TokenId id) const;
  // The bytes the token decodes to. `id` must be valid.
  const std::string &tokenBytes(TokenId id) const;
  TokenKind tokenKind(TokenId id) const;
  // Id of a token by its vocabulary spelling.
  std::optional<TokenId> findToken(std::string_view text) const;

  std::optional<TokenId> bosId() const;
  std::optional<TokenId> eosId() const;
  // The model's add_bos_token setting (false when it does not say).
  bool addBosByDefault() const;
  // The Jinja chat template shipped with the vocabulary (empty if none).
  const std::string &chatTemplate() const;
  // Where the tokenizer was loaded from, for messages.
  const std::string &source() const;

  struct Impl;

private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

// The tokenizer.ggml.* / tokenizer.chat_template metadata a GGUF converter
// would write for a Hugging Face tokenizer.json (and tokenizer_config.json
// beside it), so that a checkpoint seen as a GGUF model (runtime/model/
// CheckpointModel.h) carries its tokenizer. Only the DeepSeek-V3
// pre-tokenizer is accepted, as everywhere here.
StatusOr<std::vector<gguf::KeyValue>> ggufMetadataFromTokenizerJson(const std::string &path);

// The other way: tokenizer.json and tokenizer_config.json texts for a GGUF
// vocabulary (tokenizer.ggml.*), which fromTokenizerJson reads back to the
// same ids and kinds (unused padding tokens become [PADn] vocabulary
// entries past the last added token, as they read back as normal tokens).
struct TokenizerJsonFiles {
  std::string tokenizerJson, tokenizerConfigJson;
};
StatusOr<TokenizerJsonFiles> tokenizerJsonFromGgufMetadata(
    const std::vector<gguf::KeyValue> &metadata, const std::string &sourceName);

// Turns generated token ids into text as they arrive, emitting only complete
// UTF-8 characters: a character whose bytes are spread over several tokens
// is returned once its last byte has arrived. Byte sequences that can never
// become valid UTF-8 are emitted as U+FFFD, so the output is always valid.
class StreamingDecoder {
public:
  explicit StreamingDecoder(Tokenizer tokenizer, DecodeOptions options = {});

  // Adds one token; returns the text completed by it (possibly empty).
  // Fails on an id outside the vocabulary.
  StatusOr<std::string> push(TokenId id);
  // Ends the stream: returns what is still held back, an incomplete
  // character at the end becoming U+FFFD.
  std::string flush();
  // Bytes held back, waiting for the rest of a character.
  size_t pendingBytes() const { return pending_.size(); }

private:
  std::string takeComplete(bool endOfStream);

  Tokenizer tokenizer_;
  DecodeOptions options_;
  std::string pending_;
};

} // namespace kt::tokenizer
