// UTF-8 helpers for the tokenizer: validation (the regex engine may only see
// valid UTF-8), encoding of code points, and the rules a streaming decoder
// needs to tell a complete character from the start of one.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kt::tokenizer {

// U+FFFD, the replacement character, in UTF-8.
inline constexpr std::string_view kReplacementCharacter = "\xEF\xBF\xBD";

// Appends the UTF-8 encoding of `codePoint` (must be <= 0x10FFFF).
void appendUtf8(std::string &out, uint32_t codePoint);

// What the bytes at the start of `text` hold.
struct Utf8Prefix {
  enum Kind {
    Complete,   // a well-formed character of `length` bytes
    Incomplete, // a well-formed start of a character, cut off by the end of `text`
    Invalid,    // `length` bytes that can never start a well-formed character
  };
  Kind kind;
  size_t length; // bytes consumed: the character, the partial start, or the bad bytes
};

// Classifies the character at the start of non-empty `text` by the Unicode
// rules (no overlong forms, no surrogates, nothing above U+10FFFF). An
// invalid sequence is reported as its maximal ill-formed subpart, so that
// replacing each one with U+FFFD matches what Python and Rust do.
Utf8Prefix classifyUtf8Prefix(std::string_view text);

// Length of the longest prefix of `text` that is valid UTF-8.
size_t validUtf8PrefixLength(std::string_view text);

inline bool isValidUtf8(std::string_view text) {
  return validUtf8PrefixLength(text) == text.size();
}

// `text` with every ill-formed subpart replaced by U+FFFD.
std::string toValidUtf8(std::string_view text);

} // namespace kt::tokenizer
