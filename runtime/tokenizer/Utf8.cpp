#include "runtime/tokenizer/Utf8.h"

#include <cstring>

namespace kt::tokenizer {

void appendUtf8(std::string &out, uint32_t codePoint) {
  if (codePoint < 0x80) {
    out += static_cast<char>(codePoint);
  } else if (codePoint < 0x800) {
    out += static_cast<char>(0xC0 | (codePoint >> 6));
    out += static_cast<char>(0x80 | (codePoint & 0x3F));
  } else if (codePoint < 0x10000) {
    out += static_cast<char>(0xE0 | (codePoint >> 12));
    out += static_cast<char>(0x80 | ((codePoint >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (codePoint & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (codePoint >> 18));
    out += static_cast<char>(0x80 | ((codePoint >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((codePoint >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (codePoint & 0x3F));
  }
}

Utf8Prefix classifyUtf8Prefix(std::string_view text) {
  auto byteAt = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  uint8_t lead = byteAt(0);
  if (lead < 0x80)
    return {Utf8Prefix::Complete, 1};
  size_t length;
  // The allowed range of the second byte depends on the lead byte: this
  // excludes overlong forms (E0, F0), surrogates (ED) and values above
  // U+10FFFF (F4); the other continuation bytes are always 80..BF.
  uint8_t secondLow = 0x80, secondHigh = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0)
      secondLow = 0xA0;
    else if (lead == 0xED)
      secondHigh = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0)
      secondLow = 0x90;
    else if (lead == 0xF4)
      secondHigh = 0x8F;
  } else {
    return {Utf8Prefix::Invalid, 1}; // continuation byte, C0, C1 or F5..FF
  }
  for (size_t i = 1; i < length; ++i) {
    if (i >= text.size())
      return {Utf8Prefix::Incomplete, i};
    uint8_t low = i == 1 ? secondLow : 0x80;
    uint8_t high = i == 1 ? secondHigh : 0xBF;
    if (byteAt(i) < low || byteAt(i) > high)
      return {Utf8Prefix::Invalid, i};
  }
  return {Utf8Prefix::Complete, length};
}

size_t validUtf8PrefixLength(std::string_view text) {
  size_t pos = 0;
  while (pos < text.size()) {
    // ASCII runs are by far the most common; skip them eight bytes at a time.
    while (pos + 8 <= text.size()) {
      uint64_t word;
      std::memcpy(&word, text.data() + pos, sizeof(word));
      if (word & 0x8080808080808080ull)
        break;
      pos += 8;
    }
    if (pos >= text.size())
      break;
    Utf8Prefix prefix = classifyUtf8Prefix(text.substr(pos));
    if (prefix.kind != Utf8Prefix::Complete)
      return pos;
    pos += prefix.length;
  }
  return text.size();
}

std::string toValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    Utf8Prefix prefix = classifyUtf8Prefix(text.substr(pos));
    if (prefix.kind == Utf8Prefix::Complete)
      out.append(text.substr(pos, prefix.length));
    else
      out.append(kReplacementCharacter);
    pos += prefix.length;
  }
  return out;
}

} // namespace kt::tokenizer
