#include "tools/kt-gen-model/Vocabulary.h"

#include "runtime/tokenizer/Tokenizer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

namespace kt::gen {
namespace {

std::string encodeUtf8(uint32_t codePoint) {
  std::string out;
  if (codePoint < 0x80) {
    out += static_cast<char>(codePoint);
  } else if (codePoint < 0x800) {
    out += static_cast<char>(0xC0 | (codePoint >> 6));
    out += static_cast<char>(0x80 | (codePoint & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (codePoint >> 12));
    out += static_cast<char>(0x80 | ((codePoint >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (codePoint & 0x3F));
  }
  return out;
}

std::string replaceAll(std::string text, const std::string &from, const std::string &to) {
  size_t pos = 0;
  while ((pos = text.find(from, pos)) != std::string::npos) {
    text.replace(pos, from.size(), to);
    pos += to.size();
  }
  return text;
}

// Text the built-in vocabulary's merges are learned from: ordinary English
// about the project, so that demo prompts tokenize into multi-byte tokens.
constexpr const char *kTrainingText = R"(
Hello! This is a small random model with the architecture of DeepSeek-V3. It has
multi-head latent attention, a few dense layers at the start and then layers with
a mixture of experts. Each token is routed to the experts with the highest scores,
and a shared expert sees every token. The weights are random, so the model says
nothing useful, but it runs the same code as the real one and it is small enough
for tests. What is the capital of France? The capital of France is Paris. What is
the weather like today? It is sunny and warm, with a light wind from the west.
Please write a short story about a robot who learns to paint. Once upon a time,
there was a robot that wanted to paint the sea. Every morning it walked to the
shore and looked at the water and the light. Then it went home and tried again.
The user asks a question and the assistant answers it. Let me think about this
step by step. First, we read the model file. Then we compile a plan for the
machine, with the hot part on the GPU and the experts on the CPU. Finally we run
the model and print the answer. Thank you for reading, and have a good day!
One, two, three, four, five, six, seven, eight, nine, ten. 1 2 3 10 20 100 2024.
the the the of of of and and and to to to in in in is is is that that that it it
)";

// Splits ASCII text roughly the way DeepSeek-V3's pre-tokenizer does: words
// with their leading space, numbers of up to three digits, punctuation runs,
// whitespace.
std::vector<std::string> pretokenize(const std::string &text) {
  std::vector<std::string> pieces;
  size_t i = 0;
  auto isLetter = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; };
  auto isDigit = [](char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; };
  auto isSpace = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  while (i < text.size()) {
    size_t start = i;
    if (text[i] == ' ' && i + 1 < text.size() && !isSpace(text[i + 1]) && !isDigit(text[i + 1]))
      ++i; // a word or punctuation run keeps its leading space
    if (isLetter(text[i])) {
      while (i < text.size() && isLetter(text[i]))
        ++i;
    } else if (isDigit(text[i])) {
      size_t digits = 0;
      while (i < text.size() && isDigit(text[i]) && digits < 3) {
        ++i;
        ++digits;
      }
    } else if (isSpace(text[i])) {
      while (i < text.size() && isSpace(text[i]))
        ++i;
    } else {
      while (i < text.size() && !isLetter(text[i]) && !isDigit(text[i]) && !isSpace(text[i]))
        ++i;
    }
    pieces.push_back(text.substr(start, i - start));
  }
  return pieces;
}

// Byte-pair encoding training on the pieces of `text`: repeatedly merges the
// most frequent adjacent pair (ties broken by the pair's text, so the result
// is deterministic) until `maxMerges` merges or no pair occurs twice.
std::vector<std::pair<std::string, std::string>> learnMerges(const std::string &text,
                                                             size_t maxMerges) {
  std::map<std::string, int64_t> pieceCounts;
  for (const std::string &piece : pretokenize(text))
    ++pieceCounts[piece];
  std::vector<std::pair<std::vector<std::string>, int64_t>> words;
  for (const auto &[piece, count] : pieceCounts) {
    std::vector<std::string> symbols;
    for (char c : piece)
      symbols.push_back(byteToUnicode(static_cast<uint8_t>(c)));
    words.emplace_back(std::move(symbols), count);
  }

  std::vector<std::pair<std::string, std::string>> merges;
  while (merges.size() < maxMerges) {
    std::map<std::pair<std::string, std::string>, int64_t> pairCounts;
    for (const auto &[symbols, count] : words)
      for (size_t k = 0; k + 1 < symbols.size(); ++k)
        pairCounts[{symbols[k], symbols[k + 1]}] += count;
    const std::pair<std::string, std::string> *best = nullptr;
    int64_t bestCount = 1;
    for (const auto &[pair, count] : pairCounts)
      if (count > bestCount) {
        best = &pair;
        bestCount = count;
      }
    if (!best)
      break;
    std::pair<std::string, std::string> merge = *best;
    for (auto &[symbols, count] : words) {
      std::vector<std::string> merged;
      for (size_t k = 0; k < symbols.size(); ++k) {
        if (k + 1 < symbols.size() && symbols[k] == merge.first && symbols[k + 1] == merge.second) {
          merged.push_back(merge.first + merge.second);
          ++k;
        } else {
          merged.push_back(symbols[k]);
        }
      }
      symbols = std::move(merged);
    }
    merges.push_back(std::move(merge));
  }
  return merges;
}

void addToken(Vocabulary &vocab, std::string text, TokenType type) {
  vocab.tokens.push_back(std::move(text));
  vocab.tokenTypes.push_back(type);
}

StatusOr<std::string> readFile(const std::string &path, const std::string &what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error("Cannot open " + what + " '" + path + "': " + std::strerror(errno) +
                         ".");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    return Status::error("Cannot read " + what + " '" + path + "': " + std::strerror(errno) + ".");
  return text.str();
}

std::string directoryOf(const std::string &path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

bool fileExists(const std::string &path) { return std::ifstream(path).good(); }

// A special token in tokenizer_config.json is a string or {"content": ...}.
std::optional<std::string> specialTokenText(const nlohmann::json &config, const char *key) {
  auto it = config.find(key);
  if (it == config.end())
    return std::nullopt;
  if (it->is_string())
    return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string())
      return content->get<std::string>();
  }
  return std::nullopt;
}

Status applyTokenizerConfig(Vocabulary &vocab, const std::string &configPath) {
  StatusOr<std::string> text = readFile(configPath, "tokenizer config");
  if (!text.ok())
    return text.status();
  nlohmann::json config = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object())
    return Status::error("'" + configPath +
                         "' is not a JSON object; fix or remove it (it is read because it sits "
                         "next to the tokenizer.json).");

  auto idOf = [&](const char *key) -> std::optional<uint32_t> {
    std::optional<std::string> token = specialTokenText(config, key);
    return token ? vocab.find(*token) : std::nullopt;
  };
  vocab.bosId = idOf("bos_token");
  vocab.eosId = idOf("eos_token");
  vocab.padId = idOf("pad_token");
  if (auto it = config.find("add_bos_token"); it != config.end() && it->is_boolean())
    vocab.addBos = it->get<bool>();
  if (auto it = config.find("add_eos_token"); it != config.end() && it->is_boolean())
    vocab.addEos = it->get<bool>();

  if (auto it = config.find("chat_template"); it != config.end()) {
    if (it->is_string()) {
      vocab.chatTemplate = it->get<std::string>();
    } else if (it->is_array()) {
      // Newer configs list named templates; llama.cpp keeps the default one.
      for (const nlohmann::json &entry : *it) {
        if (!entry.is_object() || !entry.contains("template") || !entry["template"].is_string())
          continue;
        bool isDefault = entry.contains("name") && entry["name"] == "default";
        if (vocab.chatTemplate.empty() || isDefault)
          vocab.chatTemplate = entry["template"].get<std::string>();
      }
    }
  }
  return Status::success();
}

} // namespace

std::optional<uint32_t> Vocabulary::find(const std::string &token) const {
  for (size_t id = 0; id < tokens.size(); ++id)
    if (tokens[id] == token)
      return static_cast<uint32_t>(id);
  return std::nullopt;
}

std::string byteToUnicode(uint8_t b) {
  auto printable = [](int c) {
    return (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
  };
  if (printable(b))
    return encodeUtf8(b);
  // Non-printable bytes take code points 256, 257, ... in byte order.
  uint32_t index = 0;
  for (int c = 0; c < b; ++c)
    if (!printable(c))
      ++index;
  return encodeUtf8(256 + index);
}

Vocabulary builtinVocabulary() {
  Vocabulary vocab;
  vocab.source = "built-in byte-level BPE vocabulary";
  addToken(vocab, kBeginOfSentence, TokenType::Control);
  addToken(vocab, kEndOfSentence, TokenType::Control);
  for (int b = 0; b < 256; ++b)
    addToken(vocab, byteToUnicode(static_cast<uint8_t>(b)), TokenType::Normal);
  for (auto &[left, right] : learnMerges(kTrainingText, 256)) {
    std::string merged = left + right;
    // Different merge paths can produce the same text; a token is listed once.
    if (!vocab.find(merged))
      addToken(vocab, merged, TokenType::Normal);
    vocab.merges.push_back(left + " " + right);
  }
  addToken(vocab, kUserToken, TokenType::Control);
  addToken(vocab, kAssistantToken, TokenType::Control);
  // DeepSeek-R1 ships <think> and </think> as non-special added tokens, which
  // the converter writes as user-defined.
  addToken(vocab, kThinkToken, TokenType::UserDefined);
  addToken(vocab, kEndThinkToken, TokenType::UserDefined);
  vocab.bosId = 0;
  vocab.eosId = 1;
  vocab.padId = 1;
  vocab.addBos = true;
  vocab.addEos = false;
  // A minimal template in DeepSeek-V3's form: llama.cpp recognizes that
  // family by the assistant turn's "'<｜Assistant｜>' + message['content'] +
  // '<｜end▁of▁sentence｜>'" expression.
  vocab.chatTemplate =
      "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
      "{% endif %}{{ bos_token }}"
      "{% for message in messages %}{% if message['role'] == 'system' %}"
      "{{ message['content'] }}{% endif %}{% endfor %}"
      "{% for message in messages %}"
      "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
      "{% elif message['role'] == 'assistant' %}"
      "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
      "{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}";
  return vocab;
}

StatusOr<Vocabulary> loadTokenizerJson(const std::string &path) {
  StatusOr<std::string> text = readFile(path, "tokenizer file");
  if (!text.ok())
    return Status::error(text.message() +
                         " Pass the path of a Hugging Face tokenizer.json with --tokenizer-json.");
  nlohmann::json json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object())
    return Status::error("'" + path + "' is not valid JSON; pass a Hugging Face tokenizer.json.");

  const nlohmann::json *model = json.contains("model") ? &json["model"] : nullptr;
  if (!model || !model->is_object() || !model->contains("vocab") || !(*model)["vocab"].is_object())
    return Status::error("'" + path +
                         "' has no model.vocab object; it is not a Hugging Face tokenizer.json.");
  if (model->contains("type") && (*model)["type"] != "BPE")
    return Status::error("'" + path + "' holds a " + (*model)["type"].dump() +
                         " tokenizer; only byte-level BPE tokenizers (type \"BPE\", as "
                         "DeepSeek's) can be written as tokenizer.ggml.model = gpt2.");

  // id -> (text, type); added tokens override the base vocabulary's entry.
  std::map<int64_t, std::pair<std::string, TokenType>> byId;
  for (const auto &[token, id] : (*model)["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0)
      return Status::error("'" + path + "': token " + nlohmann::json(token).dump() +
                           " has id " + id.dump() + ", which is not a non-negative integer.");
    byId[id.get<int64_t>()] = {token, TokenType::Normal};
  }
  if (json.contains("added_tokens") && json["added_tokens"].is_array()) {
    for (const nlohmann::json &added : json["added_tokens"]) {
      if (!added.is_object() || !added.contains("id") || !added["id"].is_number_integer() ||
          !added.contains("content") || !added["content"].is_string())
        return Status::error("'" + path + "': an entry of added_tokens lacks an integer id or a "
                             "string content: " + added.dump() + ".");
      std::string content = added["content"].get<std::string>();
      bool special = added.value("special", false);
      TokenType type = TokenType::Control;
      if (!special && !tokenizer::looksLikeSpecialToken(content)) {
        type = TokenType::UserDefined;
        content = replaceAll(content, "▁", " ");
      }
      byId[added["id"].get<int64_t>()] = {content, type};
    }
  }
  if (byId.empty())
    return Status::error("'" + path + "' has an empty vocabulary.");

  Vocabulary vocab;
  vocab.source = path;
  int64_t count = byId.rbegin()->first + 1;
  if (count > (int64_t(1) << 24))
    return Status::error("'" + path + "' uses token id " + std::to_string(count - 1) +
                         ", which is implausibly large for a vocabulary.");
  vocab.tokens.reserve(count);
  vocab.tokenTypes.reserve(count);
  for (int64_t id = 0; id < count; ++id) {
    auto it = byId.find(id);
    if (it == byId.end())
      addToken(vocab, "[PAD" + std::to_string(id) + "]", TokenType::Unused);
    else
      addToken(vocab, it->second.first, it->second.second);
  }

  if (model->contains("merges") && (*model)["merges"].is_array()) {
    for (const nlohmann::json &merge : (*model)["merges"]) {
      // Older files store "a b", newer ones ["a", "b"].
      if (merge.is_string()) {
        vocab.merges.push_back(merge.get<std::string>());
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
                 merge[1].is_string()) {
        vocab.merges.push_back(merge[0].get<std::string>() + " " + merge[1].get<std::string>());
      } else {
        return Status::error("'" + path + "': merge " + merge.dump() +
                             " is neither \"a b\" nor [\"a\", \"b\"].");
      }
    }
  }

  std::string directory = directoryOf(path);
  std::string configPath = directory + "/tokenizer_config.json";
  if (fileExists(configPath)) {
    Status status = applyTokenizerConfig(vocab, configPath);
    if (!status.ok())
      return status;
  }
  std::string templatePath = directory + "/chat_template.jinja";
  if (vocab.chatTemplate.empty() && fileExists(templatePath)) {
    StatusOr<std::string> chatTemplate = readFile(templatePath, "chat template");
    if (!chatTemplate.ok())
      return chatTemplate.status();
    vocab.chatTemplate = *chatTemplate;
  }
  return vocab;
}

Status padVocabulary(Vocabulary &vocab, int64_t size) {
  if (size < vocab.size())
    return Status::error("The vocabulary (" + vocab.source + ") has " +
                         std::to_string(vocab.size()) + " tokens, more than --vocab-size " +
                         std::to_string(size) + "; raise --vocab-size or leave it out.");
  for (int64_t id = vocab.size(); id < size; ++id)
    addToken(vocab, "[PAD" + std::to_string(id) + "]", TokenType::Unused);
  return Status::success();
}

} // namespace kt::gen
