#include "runtime/tokenizer/ByteLevel.h"

#include "runtime/tokenizer/Utf8.h"

#include <array>
#include <string_view>

namespace kt::tokenizer {
namespace {

bool isPrintableByte(int byte) {
  return (byte >= '!' && byte <= '~') || (byte >= 0xA1 && byte <= 0xAC) ||
         (byte >= 0xAE && byte <= 0xFF);
}

struct Alphabet {
  std::array<uint32_t, 256> codePointOfByte{};
  std::array<std::string, 256> symbolOfByte;
  // Every code point of the alphabet is below U+0144 (256 + 68).
  std::array<int16_t, 0x200> byteOfCodePoint{};

  Alphabet() {
    byteOfCodePoint.fill(-1);
    uint32_t nextExtra = 256;
    for (int byte = 0; byte < 256; ++byte) {
      uint32_t codePoint = isPrintableByte(byte) ? static_cast<uint32_t>(byte) : nextExtra++;
      codePointOfByte[byte] = codePoint;
      appendUtf8(symbolOfByte[byte], codePoint);
      byteOfCodePoint[codePoint] = static_cast<int16_t>(byte);
    }
  }
};

const Alphabet &alphabet() {
  static const Alphabet instance;
  return instance;
}

} // namespace

const std::string &byteLevelSymbol(uint8_t byte) { return alphabet().symbolOfByte[byte]; }

std::optional<uint8_t> byteLevelByte(uint32_t codePoint) {
  if (codePoint >= alphabet().byteOfCodePoint.size())
    return std::nullopt;
  int16_t byte = alphabet().byteOfCodePoint[codePoint];
  if (byte < 0)
    return std::nullopt;
  return static_cast<uint8_t>(byte);
}

std::optional<std::string> byteLevelDecode(const std::string &text) {
  std::string bytes;
  bytes.reserve(text.size());
  std::string_view rest = text;
  while (!rest.empty()) {
    Utf8Prefix prefix = classifyUtf8Prefix(rest);
    if (prefix.kind != Utf8Prefix::Complete || prefix.length > 2)
      return std::nullopt; // the alphabet only has 1- and 2-byte characters
    uint32_t codePoint = static_cast<uint8_t>(rest[0]);
    if (prefix.length == 2)
      codePoint = ((codePoint & 0x1F) << 6) | (static_cast<uint8_t>(rest[1]) & 0x3F);
    std::optional<uint8_t> byte = byteLevelByte(codePoint);
    if (!byte)
      return std::nullopt;
    bytes += static_cast<char>(*byte);
    rest.remove_prefix(prefix.length);
  }
  return bytes;
}

} // namespace kt::tokenizer
