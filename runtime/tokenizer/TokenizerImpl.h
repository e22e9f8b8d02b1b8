// Internals of Tokenizer shared by its source files; not part of the API.
#pragma once

#include "runtime/tokenizer/PreTokenizer.h"
#include "runtime/tokenizer/Tokenizer.h"

#include <array>
#include <unordered_map>

namespace kt::tokenizer {

// What a loader (GGUF or tokenizer.json) reads, before the tables are built.
struct VocabularySpec {
  std::string source;              // file the vocabulary came from, for messages
  std::vector<std::string> tokens; // by id
  std::vector<TokenKind> kinds;    // by id
  std::vector<std::string> merges; // "left right", rank = index
  std::vector<std::string> preTokenizerPatterns;
  std::optional<uint64_t> bos, eos; // checked against the vocabulary by build()
  bool addBos = false;
  std::string chatTemplate;
};

// Merge rules by the ids of their two parts: open addressing over 64-bit
// keys, which is several times faster than std::unordered_map here.
class MergeTable {
public:
  struct Merge {
    uint32_t rank;
    TokenId merged;
  };
  void build(const std::vector<std::pair<uint64_t, Merge>> &entries);
  const Merge *find(TokenId left, TokenId right) const {
    uint64_t key = keyOf(left, right);
    size_t slot = slotOf(key);
    while (true) {
      const Entry &entry = entries_[slot];
      if (entry.key == key)
        return &entry.merge;
      if (entry.key == kEmpty)
        return nullptr;
      slot = (slot + 1) & mask_;
    }
  }
  static uint64_t keyOf(TokenId left, TokenId right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }
  size_t size() const { return size_; }

private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  struct Entry {
    uint64_t key = kEmpty;
    Merge merge{};
  };
  size_t slotOf(uint64_t key) const {
    return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_);
  }
  std::vector<Entry> entries_{Entry{}};
  size_t mask_ = 0;
  int shift_ = 63;
  size_t size_ = 0;
};

// Finds added tokens in text: a byte trie walked from each position, taking
// the leftmost match and, there, the longest (Hugging Face's rule).
class AddedTokenMatcher {
public:
  void add(std::string_view text, TokenId id);
  bool empty() const { return nodes_.size() == 1; }
  struct Match {
    size_t begin = 0, length = 0;
    TokenId id = -1;
  };
  // The first match at or after `from`, or nullopt.
  std::optional<Match> findNext(std::string_view text, size_t from) const;

private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> children; // sorted by byte
    TokenId id = -1;                                   // token ending here, or -1
  };
  int32_t child(int32_t node, uint8_t byte) const;
  std::vector<Node> nodes_{Node{}};
  std::array<bool, 256> startsToken_{};
};

struct Tokenizer::Impl {
  std::string source;
  std::vector<std::string> tokenTexts;
  std::vector<std::string> tokenBytes;
  std::vector<TokenKind> kinds;
  // BPE vocabulary: spelling -> id of normal tokens (views into tokenTexts).
  std::unordered_map<std::string_view, TokenId> normalIds;
  std::array<TokenId, 256> byteTokens{};
  MergeTable merges;
  std::unique_ptr<RegexPreTokenizer> preTokenizer;
  AddedTokenMatcher specialMatcher;     // control, unknown and user-defined tokens
  AddedTokenMatcher userDefinedMatcher; // user-defined tokens only
  std::optional<TokenId> bos, eos;
  bool addBos = false;
  std::string chatTemplate;

  static StatusOr<std::shared_ptr<const Impl>> build(VocabularySpec spec);
};

} // namespace kt::tokenizer
