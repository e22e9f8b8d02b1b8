// The pre-tokenizer: splits text into the pieces that byte-level BPE encodes
// one at a time.
//
// It is Hugging Face's `Sequence` of `Split` pre-tokenizers with behavior
// "Isolated": each regex splits every piece the previous one produced into
// its matches and the text between them, all kept as pieces. The regexes are
// those of tokenizer.json (Oniguruma syntax); they run on PCRE2 with full
// Unicode properties (UTF + UCP) and JIT compilation.
#pragma once

#include "runtime/support/Status.h"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kt::tokenizer {

// The three Split regexes of DeepSeek-V3's tokenizer.json: digits in runs of
// up to three; runs of CJK ideographs and kana; then letters, punctuation and
// whitespace. GGUF files name them `tokenizer.ggml.pre = "deepseek-v3"`.
const std::vector<std::string> &deepseekV3PreTokenizerPatterns();

// Rewrites an Oniguruma pattern for PCRE2 where the two engines differ: \s
// in Oniguruma is Unicode White_Space, which includes U+0085 (NEXT LINE);
// PCRE2's \s does not.
std::string oniguramaToPcre2(std::string_view pattern);

class RegexPreTokenizer {
public:
  // Compiles `patterns` (Oniguruma syntax, applied in order). `source` names
  // where they came from, for error messages.
  static StatusOr<std::unique_ptr<RegexPreTokenizer>> create(std::vector<std::string> patterns,
                                                             const std::string &source);
  ~RegexPreTokenizer();
  RegexPreTokenizer(const RegexPreTokenizer &) = delete;
  RegexPreTokenizer &operator=(const RegexPreTokenizer &) = delete;

  // Per-call matching state (PCRE2 match data). One scratch serves one
  // thread; the pre-tokenizer itself is immutable and shared.
  class Scratch {
  public:
    explicit Scratch(const RegexPreTokenizer &preTokenizer);
    ~Scratch();
    Scratch(const Scratch &) = delete;
    Scratch &operator=(const Scratch &) = delete;

  private:
    friend class RegexPreTokenizer;
    std::vector<void *> matchData_; // pcre2_match_data_8 *, one per pattern
  };

  // Appends the pieces of `text` (valid UTF-8) to `pieces`, in order; they
  // are views into `text` and cover it exactly. Fails only if the regex
  // engine gives up (a resource limit), with a message naming the source.
  Status split(std::string_view text, Scratch &scratch,
               std::vector<std::string_view> &pieces) const;

  const std::vector<std::string> &patterns() const { return patterns_; }
  bool usesJit() const { return usesJit_; }

private:
  RegexPreTokenizer() = default;
  Status splitLevel(size_t level, std::string_view text, Scratch &scratch,
                    std::vector<std::string_view> &pieces) const;

  std::vector<std::string> patterns_;
  std::vector<void *> codes_; // pcre2_code_8 *, one per pattern
  std::string source_;
  bool usesJit_ = true;
};

} // namespace kt::tokenizer
