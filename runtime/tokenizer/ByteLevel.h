// GPT-2's byte-level alphabet: byte-level BPE vocabularies spell every byte
// as one printable character, so that tokens are valid strings whatever
// bytes they stand for. Printable bytes ('!'..'~', U+00A1..U+00AC,
// U+00AE..U+00FF) stand for themselves; the other 68 bytes take U+0100,
// U+0101, ... in byte order (space is U+0120 'Ġ', newline U+010A 'Ċ').
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace kt::tokenizer {

// The UTF-8 text of the character that stands for `byte`.
const std::string &byteLevelSymbol(uint8_t byte);

// The byte that code point `codePoint` stands for, if it is in the alphabet.
std::optional<uint8_t> byteLevelByte(uint32_t codePoint);

// Decodes a token spelled in the byte-level alphabet into its bytes. Returns
// nullopt if `text` holds a character outside the alphabet (special tokens).
std::optional<std::string> byteLevelDecode(const std::string &text);

} // namespace kt::tokenizer
