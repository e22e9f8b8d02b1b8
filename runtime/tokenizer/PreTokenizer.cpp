#include "runtime/tokenizer/PreTokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

namespace kt::tokenizer {

const std::vector<std::string> &deepseekV3PreTokenizerPatterns() {
  // Copied from the pre_tokenizer of DeepSeek-V3's tokenizer.json.
  static const std::vector<std::string> patterns = {
      R"re(\p{N}{1,3})re",
      "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
      // Carriage return and line feed appear as raw characters in the JSON.
      R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^)re"
      "\r\n"
      R"re(\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[)re"
      "\r\n"
      R"re(]*|\s*[)re"
      "\r\n"
      R"re(]+|\s+(?!\S)|\s+)re",
  };
  return patterns;
}

std::string oniguramaToPcre2(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 16);
  bool inClass = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char escaped = pattern[++i];
      if (escaped == 's')
        out += inClass ? "\\s\\x{85}" : "[\\s\\x{85}]";
      else if (escaped == 'S' && !inClass)
        out += "[^\\s\\x{85}]";
      else
        (out += '\\') += escaped;
      continue;
    }
    if (!inClass && c == '[') {
      inClass = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^')
        out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']')
        out += pattern[++i];
      continue;
    }
    if (inClass && c == ']')
      inClass = false;
    out += c;
  }
  return out;
}

namespace {

pcre2_code *asCode(void *code) { return static_cast<pcre2_code *>(code); }
pcre2_match_data *asMatchData(void *data) { return static_cast<pcre2_match_data *>(data); }

std::string pcre2ErrorText(int errorCode) {
  PCRE2_UCHAR buffer[256];
  int length = pcre2_get_error_message(errorCode, buffer, sizeof(buffer));
  if (length < 0)
    return "PCRE2 error " + std::to_string(errorCode);
  return std::string(reinterpret_cast<const char *>(buffer), static_cast<size_t>(length));
}

} // namespace

StatusOr<std::unique_ptr<RegexPreTokenizer>>
RegexPreTokenizer::create(std::vector<std::string> patterns, const std::string &source) {
  std::unique_ptr<RegexPreTokenizer> result(new RegexPreTokenizer());
  result->source_ = source;
  for (const std::string &pattern : patterns) {
    std::string translated = oniguramaToPcre2(pattern);
    int errorCode = 0;
    PCRE2_SIZE errorOffset = 0;
    pcre2_code *code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                      PCRE2_UTF | PCRE2_UCP, &errorCode, &errorOffset, nullptr);
    if (!code)
      return Status::error(source + ": the pre-tokenizer regex '" + pattern +
                           "' does not compile with PCRE2 (" + pcre2ErrorText(errorCode) +
                           " at offset " + std::to_string(errorOffset) +
                           "); this tokenizer is not supported.");
    result->codes_.push_back(code);
    // Without JIT (a PCRE2 built without it) matching still works, slower.
    if (pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) != 0)
      result->usesJit_ = false;
  }
  result->patterns_ = std::move(patterns);
  return result;
}

RegexPreTokenizer::~RegexPreTokenizer() {
  for (void *code : codes_)
    pcre2_code_free(asCode(code));
}

RegexPreTokenizer::Scratch::Scratch(const RegexPreTokenizer &preTokenizer) {
  for (void *code : preTokenizer.codes_)
    matchData_.push_back(pcre2_match_data_create_from_pattern(asCode(code), nullptr));
}

RegexPreTokenizer::Scratch::~Scratch() {
  for (void *data : matchData_)
    pcre2_match_data_free(asMatchData(data));
}

Status RegexPreTokenizer::split(std::string_view text, Scratch &scratch,
                                std::vector<std::string_view> &pieces) const {
  if (text.empty())
    return Status::success();
  return splitLevel(0, text, scratch, pieces);
}

Status RegexPreTokenizer::splitLevel(size_t level, std::string_view text, Scratch &scratch,
                                     std::vector<std::string_view> &pieces) const {
  if (level == codes_.size()) {
    pieces.push_back(text);
    return Status::success();
  }
  pcre2_code *code = asCode(codes_[level]);
  pcre2_match_data *matchData = asMatchData(scratch.matchData_[level]);
  auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t gapStart = 0, searchFrom = 0;
  while (searchFrom < text.size()) {
    // The caller validated the UTF-8, which JIT matching requires and the
    // interpreter need not check again.
    int rc = usesJit_
                 ? pcre2_jit_match(code, subject, text.size(), searchFrom, 0, matchData, nullptr)
                 : pcre2_match(code, subject, text.size(), searchFrom, PCRE2_NO_UTF_CHECK,
                               matchData, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH)
      break;
    if (rc < 0)
      return Status::error(source_ + ": the pre-tokenizer regex '" + patterns_[level] +
                           "' failed on a piece of " + std::to_string(text.size()) + " bytes (" +
                           pcre2ErrorText(rc) + "); split the input into smaller parts.");
    PCRE2_SIZE *ovector = pcre2_get_ovector_pointer(matchData);
    size_t matchStart = ovector[0], matchEnd = ovector[1];
    if (matchEnd == matchStart) {
      // An empty match splits nothing; step over one character and go on.
      searchFrom = matchStart + 1;
      while (searchFrom < text.size() && (static_cast<uint8_t>(text[searchFrom]) & 0xC0) == 0x80)
        ++searchFrom;
      continue;
    }
    if (matchStart > gapStart) {
      Status status =
          splitLevel(level + 1, text.substr(gapStart, matchStart - gapStart), scratch, pieces);
      if (!status.ok())
        return status;
    }
    Status status =
        splitLevel(level + 1, text.substr(matchStart, matchEnd - matchStart), scratch, pieces);
    if (!status.ok())
      return status;
    gapStart = searchFrom = matchEnd;
  }
  if (gapStart < text.size())
    return splitLevel(level + 1, text.substr(gapStart), scratch, pieces);
  return Status::success();
}

} // namespace kt::tokenizer
