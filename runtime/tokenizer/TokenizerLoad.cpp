// Loading a Tokenizer from GGUF metadata or from a Hugging Face tokenizer.json.
#include "runtime/gguf/GgufFile.h"
#include "runtime/tokenizer/TokenizerImpl.h"

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

namespace kt::tokenizer {
namespace {

//===----------------------------------------------------------------------===//
// GGUF
//===----------------------------------------------------------------------===//

const gguf::Value *findKey(const std::vector<gguf::KeyValue> &metadata, std::string_view key) {
  for (const gguf::KeyValue &entry : metadata)
    if (entry.key == key)
      return &entry.value;
  return nullptr;
}

StatusOr<std::vector<std::string>> stringArray(const std::vector<gguf::KeyValue> &metadata,
                                               const std::string &key, const std::string &source,
                                               bool required) {
  const gguf::Value *value = findKey(metadata, key);
  if (!value) {
    if (!required)
      return std::vector<std::string>{};
    return Status::error(source + " has no '" + key +
                         "' metadata, so it carries no tokenizer; pass a model converted with "
                         "its vocabulary, or a tokenizer.json.");
  }
  if (value->type != gguf::ValueType::Array || value->elementType != gguf::ValueType::String)
    return Status::error(source + ": '" + key + "' is not an array of strings.");
  std::vector<std::string> strings;
  strings.reserve(value->array.size());
  for (const gguf::Value &element : value->array)
    strings.push_back(element.s);
  return strings;
}

// A token id key; a value that is not a non-negative integer is kept as an
// impossible id so that build() reports it.
std::optional<uint64_t> optionalTokenId(const std::vector<gguf::KeyValue> &metadata,
                                        const char *key) {
  const gguf::Value *value = findKey(metadata, key);
  if (!value)
    return std::nullopt;
  return value->asUInt().value_or(UINT64_MAX);
}

// llama.cpp's names for the pre-tokenizers it knows; only DeepSeek-V3's is
// implemented here.
StatusOr<std::vector<std::string>> preTokenizerByName(const std::string &name,
                                                      const std::string &source) {
  if (name == "deepseek-v3")
    return deepseekV3PreTokenizerPatterns();
  return Status::error(source + ": tokenizer.ggml.pre is '" + name +
                       "', but only the DeepSeek-V3 pre-tokenizer ('deepseek-v3') is "
                       "supported; pass the model's tokenizer.json with --tokenizer-json "
                       "if it is a DeepSeek-V3/R1 vocabulary.");
}

//===----------------------------------------------------------------------===//
// tokenizer.json
//===----------------------------------------------------------------------===//

using nlohmann::json;

StatusOr<std::string> readFile(const std::string &path, const std::string &what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error("Cannot open " + what + " '" + path + "': " + std::strerror(errno) + ".");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    return Status::error("Cannot read " + what + " '" + path + "': " + std::strerror(errno) + ".");
  return text.str();
}

bool fileExists(const std::string &path) { return std::ifstream(path).good(); }

bool startsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}
bool endsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

bool isNullOrEmptyString(const json &object, const char *key) {
  auto it = object.find(key);
  return it == object.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty());
}

bool isFalseOrMissing(const json &object, const char *key) {
  auto it = object.find(key);
  return it == object.end() || it->is_null() || (it->is_boolean() && !it->get<bool>());
}

// The pre-tokenizer of tokenizer.json as a list of regexes: a Split with
// behavior Isolated, or a Sequence of them, ending with a ByteLevel that
// does no splitting of its own.
Status readPreTokenizer(const json &preTokenizer, const std::string &path,
                        std::vector<std::string> &patterns) {
  auto unsupported = [&](const std::string &what) {
    return Status::error(path + ": " + what +
                         " is not supported; only a Sequence of Split regexes (behavior "
                         "Isolated) followed by ByteLevel without its own regex, as in "
                         "DeepSeek-V3, is.");
  };
  if (!preTokenizer.is_object())
    return unsupported("a missing pre_tokenizer");
  std::vector<json> steps;
  if (preTokenizer.value("type", "") == "Sequence" && preTokenizer.contains("pretokenizers") &&
      preTokenizer["pretokenizers"].is_array())
    steps.assign(preTokenizer["pretokenizers"].begin(), preTokenizer["pretokenizers"].end());
  else
    steps.push_back(preTokenizer);
  bool sawByteLevel = false;
  for (const json &step : steps) {
    std::string type = step.is_object() ? step.value("type", "") : "";
    if (sawByteLevel)
      return unsupported("a pre-tokenizer step after ByteLevel");
    if (type == "Split") {
      const json &pattern = step.contains("pattern") ? step["pattern"] : json();
      if (!pattern.is_object() || !pattern.contains("Regex") || !pattern["Regex"].is_string())
        return unsupported("a Split step without a Regex pattern");
      if (step.value("behavior", "") != "Isolated")
        return unsupported("a Split with behavior " + step.value("behavior", std::string("?")));
      if (!isFalseOrMissing(step, "invert"))
        return unsupported("an inverted Split");
      patterns.push_back(pattern["Regex"].get<std::string>());
    } else if (type == "ByteLevel") {
      if (!isFalseOrMissing(step, "add_prefix_space"))
        return unsupported("ByteLevel with add_prefix_space");
      if (!isFalseOrMissing(step, "use_regex"))
        return unsupported("ByteLevel with its own (GPT-2) regex");
      sawByteLevel = true;
    } else {
      return unsupported("pre-tokenizer type '" + type + "'");
    }
  }
  if (!sawByteLevel)
    return unsupported("a pre-tokenizer without ByteLevel");
  return Status::success();
}

Status checkModel(const json &model, const std::string &path) {
  if (!model.is_object() || !model.contains("vocab") || !model["vocab"].is_object())
    return Status::error(path + " has no model.vocab object; it is not a Hugging Face "
                                "tokenizer.json.");
  if (model.value("type", "BPE") != "BPE")
    return Status::error(path + " holds a " + model.value("type", std::string()) +
                         " model; only byte-level BPE (as DeepSeek's) is supported.");
  if (!isNullOrEmptyString(model, "continuing_subword_prefix") ||
      !isNullOrEmptyString(model, "end_of_word_suffix") ||
      !isFalseOrMissing(model, "byte_fallback") || !isFalseOrMissing(model, "ignore_merges") ||
      (model.contains("dropout") && !model["dropout"].is_null()))
    return Status::error(path + ": the BPE model uses continuing_subword_prefix, "
                                "end_of_word_suffix, byte_fallback, ignore_merges or dropout, "
                                "which this tokenizer does not implement.");
  return Status::success();
}

Status checkNormalizerAndDecoder(const json &root, const std::string &path) {
  if (root.contains("normalizer")) {
    const json &normalizer = root["normalizer"];
    bool identity = normalizer.is_null() ||
                    (normalizer.is_object() && normalizer.value("type", "") == "Sequence" &&
                     normalizer.contains("normalizers") && normalizer["normalizers"].is_array() &&
                     normalizer["normalizers"].empty());
    if (!identity)
      return Status::error(path + ": the normalizer " + normalizer.dump() +
                           " is not supported; DeepSeek's tokenizers have none.");
  }
  if (root.contains("decoder")) {
    const json &decoder = root["decoder"];
    if (!decoder.is_null() && !(decoder.is_object() && decoder.value("type", "") == "ByteLevel"))
      return Status::error(path + ": the decoder " + decoder.dump() +
                           " is not supported; only ByteLevel is.");
  }
  return Status::success();
}

// A special token in tokenizer_config.json is a string or {"content": ...}.
std::optional<std::string> specialTokenText(const json &config, const char *key) {
  auto it = config.find(key);
  if (it == config.end())
    return std::nullopt;
  if (it->is_string())
    return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

Status applyTokenizerConfig(const std::string &configPath, VocabularySpec &spec) {
  StatusOr<std::string> text = readFile(configPath, "tokenizer config");
  if (!text.ok())
    return text.status();
  json config = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object())
    return Status::error(configPath + " is not a JSON object; fix or remove it (it is read "
                                      "because it sits next to the tokenizer.json).");
  auto idOf = [&](const char *key) -> StatusOr<std::optional<uint64_t>> {
    std::optional<std::string> token = specialTokenText(config, key);
    if (!token)
      return std::optional<uint64_t>();
    for (size_t id = 0; id < spec.tokens.size(); ++id)
      if (spec.tokens[id] == *token)
        return std::optional<uint64_t>(id);
    return Status::error(configPath + ": " + key + " '" + *token +
                         "' is not a token of the vocabulary.");
  };
  StatusOr<std::optional<uint64_t>> bos = idOf("bos_token");
  if (!bos.ok())
    return bos.status();
  StatusOr<std::optional<uint64_t>> eos = idOf("eos_token");
  if (!eos.ok())
    return eos.status();
  spec.bos = *bos;
  spec.eos = *eos;
  if (auto it = config.find("add_bos_token"); it != config.end() && it->is_boolean())
    spec.addBos = it->get<bool>();
  if (auto it = config.find("chat_template"); it != config.end()) {
    if (it->is_string()) {
      spec.chatTemplate = it->get<std::string>();
    } else if (it->is_array()) {
      // Newer configs list named templates; the one named "default" is the chat template.
      for (const json &entry : *it)
        if (entry.is_object() && entry.contains("template") && entry["template"].is_string() &&
            (spec.chatTemplate.empty() || entry.value("name", "") == "default"))
          spec.chatTemplate = entry["template"].get<std::string>();
    }
  }
  return Status::success();
}

StatusOr<VocabularySpec> readTokenizerJson(const std::string &path) {
  StatusOr<std::string> text = readFile(path, "tokenizer file");
  if (!text.ok())
    return text.status();
  json root = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object())
    return Status::error(path + " is not valid JSON; pass a Hugging Face tokenizer.json.");
  const json &model = root.contains("model") ? root["model"] : json();
  if (Status status = checkModel(model, path); !status.ok())
    return status;
  if (Status status = checkNormalizerAndDecoder(root, path); !status.ok())
    return status;

  VocabularySpec spec;
  spec.source = path;
  if (Status status =
          readPreTokenizer(root.contains("pre_tokenizer") ? root["pre_tokenizer"] : json(), path,
                           spec.preTokenizerPatterns);
      !status.ok())
    return status;

  std::map<int64_t, std::pair<std::string, TokenKind>> byId;
  for (const auto &[token, id] : model["vocab"].items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      return Status::error(path + ": token " + json(token).dump() + " has id " + id.dump() +
                           ", which is not a valid token id.");
    // Padding named as llama.cpp's converter names it is unused, wherever it
    // is listed.
    const bool padding = token == "[PAD" + std::to_string(id.get<int64_t>()) + "]";
    byId[id.get<int64_t>()] = {token, padding ? TokenKind::Unused : TokenKind::Normal};
  }
  if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
    for (const json &added : root["added_tokens"]) {
      if (!added.is_object() || !added.contains("id") || !added["id"].is_number_integer() ||
          added["id"].get<int64_t>() < 0 || added["id"].get<int64_t>() > INT32_MAX ||
          !added.contains("content") || !added["content"].is_string())
        return Status::error(path +
                             ": an entry of added_tokens lacks a valid id or a string "
                             "content: " +
                             added.dump() + ".");
      for (const char *flag : {"lstrip", "rstrip", "single_word"})
        if (!isFalseOrMissing(added, flag))
          return Status::error(path + ": added token " + added["content"].dump() + " sets " + flag +
                               ", which this tokenizer does not implement.");
      std::string content = added["content"].get<std::string>();
      bool special = added.value("special", false) || looksLikeSpecialToken(content);
      byId[added["id"].get<int64_t>()] = {content,
                                          special ? TokenKind::Control : TokenKind::UserDefined};
    }
  }
  if (byId.empty())
    return Status::error(path + " has an empty vocabulary.");
  int64_t count = byId.rbegin()->first + 1;
  if (count > (int64_t(1) << 24))
    return Status::error(path + " uses token id " + std::to_string(count - 1) +
                         ", which is implausibly large for a vocabulary.");
  spec.tokens.reserve(count);
  spec.kinds.reserve(count);
  for (int64_t id = 0; id < count; ++id) {
    auto it = byId.find(id);
    if (it == byId.end()) {
      // Ids no token uses, named as llama.cpp's converter names them.
      spec.tokens.push_back("[PAD" + std::to_string(id) + "]");
      spec.kinds.push_back(TokenKind::Unused);
    } else {
      spec.tokens.push_back(it->second.first);
      spec.kinds.push_back(it->second.second);
    }
  }

  if (model.contains("merges") && model["merges"].is_array()) {
    spec.merges.reserve(model["merges"].size());
    for (const json &merge : model["merges"]) {
      // Older files store "a b", newer ones ["a", "b"].
      if (merge.is_string())
        spec.merges.push_back(merge.get<std::string>());
      else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string())
        spec.merges.push_back(merge[0].get<std::string>() + " " + merge[1].get<std::string>());
      else
        return Status::error(path + ": merge " + merge.dump() +
                             " is neither \"a b\" nor [\"a\", \"b\"].");
    }
  }

  size_t slash = path.find_last_of('/');
  std::string directory = slash == std::string::npos ? "." : path.substr(0, slash);
  std::string configPath = directory + "/tokenizer_config.json";
  if (fileExists(configPath))
    if (Status status = applyTokenizerConfig(configPath, spec); !status.ok())
      return status;
  return spec;
}

StatusOr<VocabularySpec> readTokenizerJsonNoThrow(const std::string &path) {
  try {
    return readTokenizerJson(path);
  } catch (const nlohmann::json::exception &error) {
    // The checks above should leave nothing to throw; this keeps the API's
    // no-exceptions promise if a case was missed.
    return Status::error(path + " has an unexpected structure (" + error.what() +
                         "); it does not look like a Hugging Face tokenizer.json.");
  }
}

} // namespace

StatusOr<Tokenizer> Tokenizer::fromGgufMetadata(const std::vector<gguf::KeyValue> &metadata,
                                                const std::string &sourceName) {
  const gguf::Value *model = findKey(metadata, "tokenizer.ggml.model");
  if (!model)
    return Status::error(sourceName + " has no 'tokenizer.ggml.model' metadata, so it carries "
                                      "no tokenizer; pass the model's tokenizer.json instead.");
  if (model->type != gguf::ValueType::String || model->s != "gpt2")
    return Status::error(sourceName + ": tokenizer.ggml.model is " + model->toString() +
                         ", but only byte-level BPE ('gpt2', as DeepSeek-V3/R1 use) is "
                         "supported.");
  VocabularySpec spec;
  spec.source = sourceName;
  const gguf::Value *pre = findKey(metadata, "tokenizer.ggml.pre");
  if (!pre || pre->type != gguf::ValueType::String)
    return Status::error(sourceName + " has no string 'tokenizer.ggml.pre', which names the "
                                      "pre-tokenizer; DeepSeek-V3/R1 models have "
                                      "'deepseek-v3'. Reconvert the model or pass its "
                                      "tokenizer.json.");
  StatusOr<std::vector<std::string>> patterns = preTokenizerByName(pre->s, sourceName);
  if (!patterns.ok())
    return patterns.status();
  spec.preTokenizerPatterns = std::move(*patterns);

  StatusOr<std::vector<std::string>> tokens =
      stringArray(metadata, "tokenizer.ggml.tokens", sourceName, /*required=*/true);
  if (!tokens.ok())
    return tokens.status();
  spec.tokens = std::move(*tokens);
  StatusOr<std::vector<std::string>> merges =
      stringArray(metadata, "tokenizer.ggml.merges", sourceName, /*required=*/false);
  if (!merges.ok())
    return merges.status();
  spec.merges = std::move(*merges);

  spec.kinds.assign(spec.tokens.size(), TokenKind::Normal);
  if (const gguf::Value *types = findKey(metadata, "tokenizer.ggml.token_type")) {
    if (types->type != gguf::ValueType::Array ||
        (!types->array.empty() && !types->array.front().isInteger()))
      return Status::error(sourceName + ": 'tokenizer.ggml.token_type' is not an array of "
                                        "integers.");
    spec.kinds.clear();
    for (const gguf::Value &type : types->array) {
      std::optional<int64_t> value = type.asInt();
      spec.kinds.push_back(
          static_cast<TokenKind>(value && *value >= 1 && *value <= 6 ? *value : 0));
    }
  }
  spec.bos = optionalTokenId(metadata, "tokenizer.ggml.bos_token_id");
  spec.eos = optionalTokenId(metadata, "tokenizer.ggml.eos_token_id");
  if (const gguf::Value *addBos = findKey(metadata, "tokenizer.ggml.add_bos_token"))
    spec.addBos = addBos->type == gguf::ValueType::Bool && addBos->u != 0;
  if (const gguf::Value *chatTemplate = findKey(metadata, "tokenizer.chat_template"))
    if (chatTemplate->type == gguf::ValueType::String)
      spec.chatTemplate = chatTemplate->s;

  StatusOr<std::shared_ptr<const Impl>> impl = Impl::build(std::move(spec));
  if (!impl.ok())
    return impl.status();
  return Tokenizer(std::move(*impl));
}

StatusOr<Tokenizer> Tokenizer::fromGguf(const gguf::GgufModel &model) {
  return fromGgufMetadata(model.metadata(), model.sourcePath());
}

StatusOr<Tokenizer> Tokenizer::fromGgufPath(const std::string &path) {
  StatusOr<std::unique_ptr<gguf::GgufModel>> model = gguf::GgufModel::open(path);
  if (!model.ok())
    return model.status();
  return fromGguf(**model);
}

StatusOr<Tokenizer> Tokenizer::fromTokenizerJson(const std::string &path) {
  StatusOr<VocabularySpec> spec = readTokenizerJsonNoThrow(path);
  if (!spec.ok())
    return spec.status();
  StatusOr<std::shared_ptr<const Impl>> impl = Impl::build(std::move(*spec));
  if (!impl.ok())
    return impl.status();
  return Tokenizer(std::move(*impl));
}

StatusOr<std::vector<gguf::KeyValue>> ggufMetadataFromTokenizerJson(const std::string &path) {
  StatusOr<VocabularySpec> spec = readTokenizerJsonNoThrow(path);
  if (!spec.ok())
    return spec.status();
  if (spec->preTokenizerPatterns != deepseekV3PreTokenizerPatterns())
    return Status::error(path + ": the pre-tokenizer's regexes are not DeepSeek-V3's, the only "
                                "pre-tokenizer supported; use the model's own tokenizer.json.");
  std::vector<gguf::KeyValue> metadata;
  metadata.push_back({"tokenizer.ggml.model", gguf::stringValue("gpt2")});
  metadata.push_back({"tokenizer.ggml.pre", gguf::stringValue("deepseek-v3")});
  metadata.push_back({"tokenizer.ggml.tokens", gguf::stringArrayValue(spec->tokens)});
  std::vector<int32_t> kinds;
  for (TokenKind kind : spec->kinds)
    kinds.push_back(static_cast<int32_t>(kind));
  metadata.push_back({"tokenizer.ggml.token_type", gguf::int32ArrayValue(kinds)});
  metadata.push_back({"tokenizer.ggml.merges", gguf::stringArrayValue(spec->merges)});
  if (spec->bos)
    metadata.push_back({"tokenizer.ggml.bos_token_id", gguf::unsignedValue(*spec->bos)});
  if (spec->eos)
    metadata.push_back({"tokenizer.ggml.eos_token_id", gguf::unsignedValue(*spec->eos)});
  metadata.push_back({"tokenizer.ggml.add_bos_token", gguf::boolValue(spec->addBos)});
  if (!spec->chatTemplate.empty())
    metadata.push_back({"tokenizer.chat_template", gguf::stringValue(spec->chatTemplate)});
  return metadata;
}

StatusOr<TokenizerJsonFiles> tokenizerJsonFromGgufMetadata(
    const std::vector<gguf::KeyValue> &metadata, const std::string &sourceName) {
  // Checked by building the tokenizer: what it accepts is what is written.
  StatusOr<Tokenizer> tokenizer = Tokenizer::fromGgufMetadata(metadata, sourceName);
  if (!tokenizer.ok())
    return tokenizer.status();
  json vocab = json::object(), added = json::array();
  for (size_t id = 0; id < tokenizer->vocabSize(); ++id) {
    const TokenId token = static_cast<TokenId>(id);
    const TokenKind kind = tokenizer->tokenKind(token);
    if (kind == TokenKind::Control || kind == TokenKind::UserDefined)
      added.push_back({{"id", id},
                       {"content", tokenizer->tokenText(token)},
                       {"single_word", false},
                       {"lstrip", false},
                       {"rstrip", false},
                       {"normalized", kind == TokenKind::UserDefined},
                       {"special", kind == TokenKind::Control}});
    else
      vocab[tokenizer->tokenText(token)] = id;
  }
  StatusOr<std::vector<std::string>> merges =
      stringArray(metadata, "tokenizer.ggml.merges", sourceName, /*required=*/false);
  if (!merges.ok())
    return merges.status();
  json steps = json::array();
  for (const std::string &pattern : deepseekV3PreTokenizerPatterns())
    steps.push_back({{"type", "Split"},
                     {"pattern", {{"Regex", pattern}}},
                     {"behavior", "Isolated"},
                     {"invert", false}});
  steps.push_back(
      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
       {"use_regex", false}});
  json root = {{"version", "1.0"},
               {"truncation", nullptr},
               {"padding", nullptr},
               {"added_tokens", added},
               {"normalizer", nullptr},
               {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", steps}}},
               {"post_processor", nullptr},
               {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true},
                            {"trim_offsets", true}, {"use_regex", true}}},
               {"model", {{"type", "BPE"},
                          {"dropout", nullptr},
                          {"unk_token", nullptr},
                          {"continuing_subword_prefix", nullptr},
                          {"end_of_word_suffix", nullptr},
                          {"fuse_unk", false},
                          {"byte_fallback", false},
                          {"vocab", vocab},
                          {"merges", *merges}}}};
  json config = {{"add_bos_token", tokenizer->addBosByDefault()},
                 {"add_eos_token", false},
                 {"tokenizer_class", "LlamaTokenizerFast"}};
  if (std::optional<TokenId> bos = tokenizer->bosId())
    config["bos_token"] = tokenizer->tokenText(*bos);
  if (std::optional<TokenId> eos = tokenizer->eosId())
    config["eos_token"] = tokenizer->tokenText(*eos);
  if (!tokenizer->chatTemplate().empty())
    config["chat_template"] = tokenizer->chatTemplate();
  // Invalid UTF-8 in a token would make dump() throw; replace it instead.
  return TokenizerJsonFiles{root.dump(1, ' ', false, json::error_handler_t::replace) + "\n",
                            config.dump(2, ' ', false, json::error_handler_t::replace) + "\n"};
}

// The converter's rule, so tokenizer.json and GGUF tokenizers classify alike.
bool looksLikeSpecialToken(std::string_view token) {
  if (token == "<pad>" || token == "<mask>" || token == "<2mass>" || token == "[@BOS@]")
    return true;
  if (startsWith(token, "<|") && endsWith(token, "|>"))
    return true;
  if (startsWith(token, "<｜") && endsWith(token, "｜>"))
    return true;
  return startsWith(token, "<unused") && endsWith(token, ">");
}

} // namespace kt::tokenizer
