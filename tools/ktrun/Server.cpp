#include "tools/ktrun/Server.h"

#include "tools/ktrun/BatchScheduler.h"

#include <httplib.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <unistd.h>
#include <signal.h>
#include <cstring>
#include <cerrno>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <pthread.h>
#include <set>
#include <thread>

namespace kt::ktrun {
namespace {

using json = nlohmann::json;

// ---------------------------------------------------------------- errors

// A request the server refuses, in OpenAI's error shape.
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;                        // empty: null
  std::string code;                         // empty: null
  std::string type = "invalid_request_error";
};

ApiError badParam(const std::string &param, const std::string &message) {
  return ApiError{400, message, param, "invalid_value"};
}

std::string dumpJson(const json &value) {
  // Model text is complete UTF-8 by construction; `replace` keeps a stray
  // byte from ever turning into an exception here.
  return value.dump(-1, ' ', false, json::error_handler_t::replace);
}

json errorBody(const ApiError &error) {
  return {{"error",
           {{"message", error.message},
            {"type", error.type},
            {"param", error.param.empty() ? json(nullptr) : json(error.param)},
            {"code", error.code.empty() ? json(nullptr) : json(error.code)}}}};
}

void sendError(httplib::Response &res, const ApiError &error) {
  res.status = error.status;
  res.set_content(dumpJson(errorBody(error)), "application/json");
}

// ---------------------------------------------------------------- requests

enum class Endpoint { Chat, Completion };

struct ParsedRequest {
  Endpoint endpoint = Endpoint::Chat;
  std::vector<tokenizer::ChatMessage> messages; // chat
  std::string prompt;                           // completion
  std::optional<int64_t> maxTokens;
  SamplingOptions sampling;
  std::vector<std::string> stops;
  bool stream = false;
  bool includeUsage = false;
  bool ignoreEos = false; // a common server extension, for fixed-length benchmarks
};

bool isInteger(const json &value) { return value.is_number_integer() || value.is_number_unsigned(); }

int64_t integerField(const json &value, const std::string &name) {
  if (!isInteger(value))
    throw badParam(name, "'" + name + "' must be an integer, not " + value.dump() + ".");
  if (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(INT64_MAX))
    throw badParam(name, "'" + name + "' is too large.");
  return value.get<int64_t>();
}

double numberField(const json &value, const std::string &name, double low, double high) {
  if (!value.is_number())
    throw badParam(name, "'" + name + "' must be a number, not " + value.dump() + ".");
  double number = value.get<double>();
  if (!(number >= low && number <= high))
    throw badParam(name, "'" + name + "' must be between " + json(low).dump() + " and " +
                             json(high).dump() + "; it is " + value.dump() + ".");
  return number;
}

bool boolField(const json &value, const std::string &name) {
  if (!value.is_boolean())
    throw badParam(name, "'" + name + "' must be true or false, not " + value.dump() + ".");
  return value.get<bool>();
}

// Fields OpenAI documents that this server accepts without acting on them
// (they do not change what a single greedy or sampled answer is, or the
// client sends them with their default value).
const std::set<std::string> &ignoredFields(Endpoint endpoint) {
  static const std::set<std::string> chat = {
      "user", "presence_penalty", "frequency_penalty", "logit_bias", "metadata", "store",
      "service_tier", "parallel_tool_calls", "reasoning_effort"};
  static const std::set<std::string> completion = {"user", "presence_penalty",
                                                   "frequency_penalty", "logit_bias"};
  return endpoint == Endpoint::Chat ? chat : completion;
}

// Documented fields of features this server lacks: accepted only with the
// value that means "off".
void checkOffValue(const std::string &name, const json &value) {
  bool off = value.is_null();
  if (name == "n" || name == "best_of")
    off = off || (isInteger(value) && value.get<int64_t>() == 1);
  else if (name == "logprobs")
    off = off || (value.is_boolean() && !value.get<bool>()) ||
          (isInteger(value) && value.get<int64_t>() == 0);
  else if (name == "top_logprobs")
    off = off || (isInteger(value) && value.get<int64_t>() == 0);
  else if (name == "echo")
    off = off || (value.is_boolean() && !value.get<bool>());
  else if (name == "tools" || name == "functions")
    off = off || (value.is_array() && value.empty());
  else if (name == "tool_choice" || name == "function_call")
    off = off || value == "none";
  else if (name == "response_format")
    off = off || (value.is_object() && value.value("type", json()) == "text" && value.size() == 1);
  else if (name == "suffix")
    off = off || value == "";
  if (!off)
    throw ApiError{400,
                   "'" + name + "' = " + value.dump() +
                       " is not supported by this server; leave it out (or give its default).",
                   name, "unsupported_value"};
}

std::string messageContent(const json &content, size_t index) {
  std::string param = "messages[" + std::to_string(index) + "].content";
  if (content.is_string())
    return content.get<std::string>();
  if (content.is_array()) {
    std::string text;
    for (const json &part : content) {
      if (!part.is_object() || part.value("type", json()) != "text" ||
          !part.contains("text") || !part["text"].is_string())
        throw badParam(param, "'" + param +
                                  "' parts must be {\"type\": \"text\", \"text\": \"...\"}; "
                                  "this server reads text only.");
      text += part["text"].get<std::string>();
    }
    return text;
  }
  throw badParam(param, "'" + param + "' must be a string or an array of text parts.");
}

std::vector<tokenizer::ChatMessage> parseMessages(const json &messages) {
  if (!messages.is_array() || messages.empty())
    throw badParam("messages", "'messages' must be a non-empty array of messages.");
  std::vector<tokenizer::ChatMessage> parsed;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json &message = messages[i];
    std::string where = "messages[" + std::to_string(i) + "]";
    if (!message.is_object())
      throw badParam(where, "'" + where + "' must be an object with 'role' and 'content'.");
    for (auto field = message.begin(); field != message.end(); ++field)
      if (field.key() != "role" && field.key() != "content" && field.key() != "name" &&
          field.key() != "reasoning_content")
        throw ApiError{400, "Unrecognized field '" + where + "." + field.key() + "'.",
                       where + "." + field.key(), "unknown_field"};
    if (!message.contains("role") || !message["role"].is_string())
      throw badParam(where + ".role", "'" + where + ".role' must be a string.");
    std::string role = message["role"].get<std::string>();
    if (role == "developer")
      role = "system"; // OpenAI's newer name for system instructions
    if (role != "system" && role != "user" && role != "assistant")
      throw badParam(where + ".role", "'" + where + ".role' is '" + role +
                                          "'; this server takes system, developer, user "
                                          "and assistant messages.");
    if (!message.contains("content") || message["content"].is_null())
      throw badParam(where + ".content", "'" + where + ".content' is missing.");
    parsed.push_back({role, messageContent(message["content"], i), {}});
  }
  return parsed;
}

ParsedRequest parseRequest(const std::string &body, Endpoint endpoint,
                           const SamplingOptions &defaults) {
  json request;
  try {
    request = json::parse(body);
  } catch (const json::parse_error &error) {
    std::string what = error.what();
    bool utf8 = what.find("UTF-8") != std::string::npos ||
                what.find("surrogate") != std::string::npos;
    throw ApiError{400,
                   std::string(utf8 ? "The request body is not valid UTF-8 JSON: "
                                    : "The request body is not valid JSON: ") +
                       what,
                   "", utf8 ? "invalid_utf8" : "invalid_json"};
  }
  if (!request.is_object())
    throw ApiError{400, "The request body must be a JSON object.", "", "invalid_json"};

  ParsedRequest parsed;
  parsed.endpoint = endpoint;
  parsed.sampling = defaults;
  static const std::set<std::string> offValued = {"n", "logprobs", "top_logprobs", "tools",
                                                  "tool_choice", "functions", "function_call",
                                                  "response_format", "best_of", "echo",
                                                  "suffix"};
  bool havePrompt = false;
  for (auto field = request.begin(); field != request.end(); ++field) {
    const std::string &name = field.key();
    const json &value = field.value();
    if (name == "model") {
      if (!value.is_string() && !value.is_null())
        throw badParam("model", "'model' must be a string.");
    } else if (name == "messages" && endpoint == Endpoint::Chat) {
      parsed.messages = parseMessages(value);
      havePrompt = true;
    } else if (name == "prompt" && endpoint == Endpoint::Completion) {
      if (value.is_string())
        parsed.prompt = value.get<std::string>();
      else if (value.is_array() && value.size() == 1 && value[0].is_string())
        parsed.prompt = value[0].get<std::string>();
      else
        throw badParam("prompt", "'prompt' must be a string (or an array of one string).");
      havePrompt = true;
    } else if (value.is_null()) {
      continue; // an optional field at its default
    } else if (name == "max_tokens" ||
               (name == "max_completion_tokens" && endpoint == Endpoint::Chat)) {
      int64_t maxTokens = integerField(value, name);
      if (maxTokens < 1)
        throw badParam(name, "'" + name + "' must be at least 1; it is " + value.dump() + ".");
      parsed.maxTokens = maxTokens;
    } else if (name == "temperature") {
      parsed.sampling.temperature = numberField(value, name, 0.0, 2.0);
    } else if (name == "top_p") {
      parsed.sampling.topP = numberField(value, name, 0.0, 1.0);
      if (parsed.sampling.topP <= 0.0)
        throw badParam(name, "'top_p' must be above 0.");
    } else if (name == "top_k") {
      int64_t topK = integerField(value, name);
      if (topK < 0 || topK > INT32_MAX)
        throw badParam(name, "'top_k' must be 0 (no limit) or a positive integer.");
      parsed.sampling.topK = static_cast<int>(topK);
    } else if (name == "seed") {
      parsed.sampling.seed = static_cast<uint64_t>(integerField(value, name));
    } else if (name == "stop") {
      std::vector<json> stops;
      if (value.is_string())
        stops.push_back(value);
      else if (value.is_array() && value.size() <= 4)
        stops.assign(value.begin(), value.end());
      else
        throw badParam("stop", "'stop' must be a string or an array of at most 4 strings.");
      for (const json &stop : stops) {
        if (!stop.is_string())
          throw badParam("stop", "'stop' must be a string or an array of at most 4 strings.");
        if (!stop.get<std::string>().empty())
          parsed.stops.push_back(stop.get<std::string>());
      }
    } else if (name == "stream") {
      parsed.stream = boolField(value, name);
    } else if (name == "ignore_eos") {
      parsed.ignoreEos = boolField(value, name);
    } else if (name == "stream_options") {
      if (!value.is_object())
        throw badParam(name, "'stream_options' must be an object.");
      for (auto option = value.begin(); option != value.end(); ++option) {
        if (option.key() != "include_usage")
          throw ApiError{400, "Unrecognized field 'stream_options." + option.key() + "'.",
                         "stream_options." + option.key(), "unknown_field"};
        parsed.includeUsage = boolField(option.value(), "stream_options.include_usage");
      }
    } else if (offValued.count(name) &&
               (endpoint == Endpoint::Chat
                    ? name != "best_of" && name != "echo" && name != "suffix"
                    : name != "top_logprobs" && name != "tools" && name != "tool_choice" &&
                          name != "functions" && name != "function_call" &&
                          name != "response_format")) {
      checkOffValue(name, value);
    } else if (ignoredFields(endpoint).count(name)) {
      continue;
    } else {
      throw ApiError{400, "Unrecognized request argument supplied: " + name, name,
                     "unknown_field"};
    }
  }
  if (!havePrompt) {
    std::string field = endpoint == Endpoint::Chat ? "messages" : "prompt";
    throw ApiError{400, "Missing required parameter: '" + field + "'.", field,
                   "missing_required_parameter"};
  }
  return parsed;
}

// ---------------------------------------------------------------- text

// Length of the longest suffix of `text` that is a proper prefix of `word`:
// bytes to hold back because the next piece may complete `word`.
size_t partialSuffix(const std::string &text, const std::string &word) {
  for (size_t length = std::min(text.size(), word.size() - 1); length > 0; --length)
    if (text.compare(text.size() - length, length, word, 0, length) == 0)
      return length;
  return 0;
}

// Cuts the generated text at the first stop string; passes on only text
// that can no longer turn out to be the start of one.
class StopFilter {
public:
  explicit StopFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  // The text that is now final; sets stopped() when a stop string appeared.
  std::string push(const std::string &piece) {
    pending_ += piece;
    size_t cut = std::string::npos;
    for (const std::string &stop : stops_)
      cut = std::min(cut, pending_.find(stop));
    if (cut != std::string::npos) {
      stopped_ = true;
      std::string out = pending_.substr(0, cut);
      pending_.clear();
      return out;
    }
    size_t hold = 0;
    for (const std::string &stop : stops_)
      hold = std::max(hold, partialSuffix(pending_, stop));
    std::string out = pending_.substr(0, pending_.size() - hold);
    pending_.erase(0, pending_.size() - hold);
    return out;
  }
  std::string flush() { return std::exchange(pending_, std::string()); }
  bool stopped() const { return stopped_; }

private:
  std::vector<std::string> stops_;
  std::string pending_;
  bool stopped_ = false;
};

// Separates DeepSeek-R1's "<think>...</think>" reasoning from the answer.
class ReasoningSplitter {
public:
  explicit ReasoningSplitter(bool startsInside) : inside_(startsInside), decided_(startsInside) {}

  struct Parts {
    std::string reasoning, content;
  };
  Parts push(const std::string &piece) {
    pending_ += piece;
    Parts parts;
    while (!pending_.empty()) {
      if (!decided_) {
        // Only a block at the very start (after blank space) is reasoning.
        size_t start = pending_.find_first_not_of(" \t\r\n");
        if (start == std::string::npos)
          return parts;
        std::string rest = pending_.substr(start);
        if (rest.compare(0, kOpen.size(), kOpen) == 0) {
          pending_ = rest.substr(kOpen.size());
          inside_ = true;
        } else if (kOpen.compare(0, rest.size(), rest) == 0) {
          return parts; // maybe "<think>" still arriving
        }
        decided_ = true;
        continue;
      }
      if (inside_) {
        size_t close = pending_.find(kClose);
        if (close == std::string::npos) {
          size_t hold = partialSuffix(pending_, kClose);
          parts.reasoning += pending_.substr(0, pending_.size() - hold);
          pending_.erase(0, pending_.size() - hold);
          return parts;
        }
        parts.reasoning += pending_.substr(0, close);
        pending_.erase(0, close + kClose.size());
        inside_ = false;
        trimAnswerStart_ = true;
        continue;
      }
      if (trimAnswerStart_) {
        // R1 writes "</think>\n\n" before the answer.
        size_t start = pending_.find_first_not_of(" \t\r\n");
        if (start == std::string::npos) {
          pending_.clear();
          return parts;
        }
        pending_.erase(0, start);
        trimAnswerStart_ = false;
      }
      parts.content += pending_;
      pending_.clear();
    }
    return parts;
  }
  Parts flush() {
    Parts parts;
    (inside_ ? parts.reasoning : parts.content) = std::exchange(pending_, std::string());
    if (!inside_ && trimAnswerStart_)
      parts.content.clear();
    return parts;
  }
private:
  static inline const std::string kOpen = "<think>", kClose = "</think>";
  std::string pending_;
  bool inside_, decided_, trimAnswerStart_ = false;
};

// ---------------------------------------------------------------- generation

struct Outcome {
  GenerationResult result;
  std::string finishReason;
  bool clientGone = false;
};

// Cancels the generation when the last HTTP callback holding it is gone,
// whichever way the response ended (done, client gone, never started).
struct GenerationHandle {
  explicit GenerationHandle(std::shared_ptr<Generation> g) : generation(std::move(g)) {}
  GenerationHandle(const GenerationHandle &) = delete;
  GenerationHandle &operator=(const GenerationHandle &) = delete;
  ~GenerationHandle() { generation->cancel(); }
  std::shared_ptr<Generation> generation;
};

// How often a waiting response checks that its client is still there.
constexpr std::chrono::milliseconds kPollInterval{50};
// Silence after which a response writes a keep-alive byte: a client that
// left then fails the next write (httplib 0.11 has no other way to tell).
constexpr std::chrono::milliseconds kKeepAliveInterval{250};

// Writes `keepAlive` to the client when nothing was written for a while;
// false once a write fails (the client is gone).
class KeepAlive {
public:
  KeepAlive(httplib::DataSink &sink, std::string keepAlive)
      : sink_(sink), keepAlive_(std::move(keepAlive)) {}
  bool write(const std::string &data) {
    last_ = std::chrono::steady_clock::now();
    return sink_.write(data.data(), data.size());
  }
  bool poll() {
    if (std::chrono::steady_clock::now() - last_ < kKeepAliveInterval)
      return true;
    return sink_.is_writable() && write(keepAlive_);
  }

private:
  httplib::DataSink &sink_;
  std::string keepAlive_;
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

class Server {
public:
  Server(Session &session, BatchScheduler &scheduler, const ServerOptions &options)
      : session_(session), scheduler_(scheduler), options_(options),
        modelName_(session.modelName()), capacity_(session.cacheCapacity()) {}

  void handle(const httplib::Request &req, httplib::Response &res, Endpoint endpoint) {
    try {
      ParsedRequest request = parseRequest(req.body, endpoint, options_.defaultSampling);
      StatusOr<EncodedPrompt> prompt = endpoint == Endpoint::Chat
                                           ? session_.encodeChat(request.messages)
                                           : session_.encodeCompletion(request.prompt);
      std::string promptParam = endpoint == Endpoint::Chat ? "messages" : "prompt";
      if (!prompt)
        throw badParam(promptParam, prompt.message());
      if (prompt->ids.empty())
        throw badParam(promptParam, "The prompt is empty.");
      int64_t promptTokens = static_cast<int64_t>(prompt->ids.size());
      if (promptTokens >= capacity_)
        throw ApiError{400,
                       "This model's context holds " + std::to_string(capacity_) +
                           " tokens (--cache-lens), but the prompt has " +
                           std::to_string(promptTokens) +
                           " tokens; shorten it (or restart the server with a larger "
                           "--cache-lens).",
                       promptParam, "context_length_exceeded"};
      GenerationRequest generationRequest;
      generationRequest.promptIds = prompt->ids;
      generationRequest.maxNewTokens =
          std::min(request.maxTokens.value_or(options_.defaultMaxTokens), capacity_ - promptTokens);
      generationRequest.sampling = request.sampling;
      generationRequest.ignoreEos = request.ignoreEos;
      std::shared_ptr<Generation> generation = scheduler_.submit(std::move(generationRequest));
      if (!generation)
        throw ApiError{503,
                       "The server is busy: all " + std::to_string(options_.parallel) +
                           " slots are generating and " + std::to_string(options_.queue) +
                           " requests are waiting; retry later.",
                       "", "server_busy", "server_error"};
      auto handle = std::make_shared<GenerationHandle>(generation);
      auto shared = std::make_shared<ParsedRequest>(std::move(request));
      auto encoded = std::make_shared<EncodedPrompt>(std::move(*prompt));
      std::string id = nextId(endpoint);
      // Both answers are written by a content provider that waits for the
      // generation, so the wait can notice a client that left (and free its
      // slot or its place in the queue at once).
      if (!shared->stream) {
        res.set_chunked_content_provider(
            "application/json",
            [this, handle, shared, encoded, id](size_t, httplib::DataSink &sink) {
              respondWhole(sink, *handle->generation, *shared, *encoded, id);
              sink.done();
              return true;
            },
            [handle](bool) { handle->generation->cancel(); });
        return;
      }
      res.set_header("Cache-Control", "no-cache");
      res.set_chunked_content_provider(
          "text/event-stream",
          [this, handle, shared, encoded, id](size_t, httplib::DataSink &sink) {
            streamAnswer(sink, *handle->generation, *shared, *encoded, id);
            sink.done();
            return true;
          },
          [handle](bool) { handle->generation->cancel(); });
    } catch (const ApiError &error) {
      sendError(res, error);
    }
  }

  void models(httplib::Response &res) {
    json model = {{"id", modelName_}, {"object", "model"}, {"created", started_},
                  {"owned_by", "ktransformers"}};
    res.set_content(dumpJson({{"object", "list"}, {"data", json::array({model})}}),
                    "application/json");
  }
  void health(httplib::Response &res) {
    BatchScheduler::Stats stats = scheduler_.stats();
    json body = {{"slots_total", stats.slots},
                 {"slots_idle", stats.slots - stats.busy},
                 {"slots_busy", stats.busy},
                 {"queued", stats.queued},
                 {"batching",
                  {{"steps", stats.steps},
                   {"tokens", stats.rows},
                   {"batched_steps", stats.batchedSteps},
                   {"largest_batch", stats.largestBatch}}}};
    body["status"] = "ok";
    body["model"] = modelName_;
    body["cache_lens"] = capacity_;
    res.set_content(dumpJson(body), "application/json");
  }

private:
  std::string nextId(Endpoint endpoint) {
    return (endpoint == Endpoint::Chat ? "chatcmpl-" : "cmpl-") + std::to_string(started_) +
           "-" + std::to_string(++counter_);
  }

  // Waits for the generation; `emit` gets the final text piece by piece
  // (stop strings cut off) and returns false when the client is gone;
  // `alive` is called every poll interval and returns false when the
  // client is gone.
  StatusOr<Outcome> run(Generation &generation, const ParsedRequest &request,
                        const std::function<bool(const std::string &)> &emit,
                        const std::function<bool()> &alive) {
    StopFilter stops(request.stops);
    Outcome outcome;
    for (;;) {
      std::string text;
      bool finished = generation.wait(kPollInterval, text);
      if (!text.empty() && !outcome.clientGone && !stops.stopped()) {
        std::string out = stops.push(text);
        if (!out.empty() && !emit(out))
          outcome.clientGone = true;
        if (outcome.clientGone || stops.stopped())
          generation.cancel();
      }
      if (finished)
        break;
      if (!outcome.clientGone && !alive()) {
        outcome.clientGone = true;
        generation.cancel();
      }
    }
    outcome.result = generation.result();
    if (!outcome.result.status.ok())
      return outcome.result.status;
    if (!stops.stopped() && !outcome.clientGone) {
      std::string rest = stops.flush();
      if (!rest.empty() && !emit(rest))
        outcome.clientGone = true;
    }
    outcome.finishReason = stops.stopped() || outcome.result.stoppedAtEos ? "stop" : "length";
    return outcome;
  }

  json usage(const EncodedPrompt &prompt, const Outcome &outcome) {
    size_t completion = outcome.result.generatedIds.size();
    return {{"prompt_tokens", prompt.ids.size()},
            {"completion_tokens", completion},
            {"total_tokens", prompt.ids.size() + completion}};
  }

  void respondWhole(httplib::DataSink &sink, Generation &generation,
                    const ParsedRequest &request, const EncodedPrompt &prompt,
                    const std::string &id) {
    std::string text;
    KeepAlive writer(sink, " "); // JSON may start with blank space
    StatusOr<Outcome> outcome = run(
        generation, request,
        [&](const std::string &piece) {
          text += piece;
          return true;
        },
        [&] { return writer.poll(); });
    json body;
    if (!outcome) {
      // The status line is out already; the body says what went wrong.
      body = errorBody(ApiError{500, "Generation failed: " + outcome.message(), "",
                                "generation_failed", "server_error"});
    } else if (outcome->clientGone) {
      return;
    } else {
      json choice = {{"index", 0}, {"finish_reason", outcome->finishReason}, {"logprobs", nullptr}};
      body = {{"id", id}, {"created", now()}, {"model", modelName_},
              {"usage", usage(prompt, *outcome)}};
      if (request.endpoint == Endpoint::Chat) {
        ReasoningSplitter splitter(prompt.opensThink);
        ReasoningSplitter::Parts parts = splitter.push(text), rest = splitter.flush();
        parts.reasoning += rest.reasoning;
        parts.content += rest.content;
        json message = {{"role", "assistant"}, {"content", parts.content}};
        if (!parts.reasoning.empty() || prompt.opensThink)
          message["reasoning_content"] = parts.reasoning;
        choice["message"] = message;
        body["object"] = "chat.completion";
      } else {
        choice["text"] = text;
        body["object"] = "text_completion";
      }
      body["choices"] = json::array({choice});
    }
    writer.write(dumpJson(body));
  }

  void streamAnswer(httplib::DataSink &sink, Generation &generation,
                    const ParsedRequest &request, const EncodedPrompt &prompt,
                    const std::string &id) {
    bool chat = request.endpoint == Endpoint::Chat;
    int64_t created = now();
    KeepAlive writer(sink, ": keep-alive\n\n"); // an SSE comment; clients skip it
    auto send = [&](const json &event) { return writer.write("data: " + dumpJson(event) + "\n\n"); };
    auto chunk = [&](json delta, json finish) {
      json choice = {{"index", 0}, {"logprobs", nullptr}, {"finish_reason", finish}};
      if (chat)
        choice["delta"] = std::move(delta);
      else
        choice["text"] = delta.is_string() ? delta : json("");
      return json{{"id", id},
                  {"object", chat ? "chat.completion.chunk" : "text_completion"},
                  {"created", created},
                  {"model", modelName_},
                  {"choices", json::array({choice})}};
    };
    ReasoningSplitter splitter(prompt.opensThink);
    auto sendParts = [&](const ReasoningSplitter::Parts &parts) {
      if (!parts.reasoning.empty() && !send(chunk({{"reasoning_content", parts.reasoning}}, nullptr)))
        return false;
      if (!parts.content.empty() && !send(chunk({{"content", parts.content}}, nullptr)))
        return false;
      return true;
    };
    if (chat && !send(chunk({{"role", "assistant"}, {"content", ""}}, nullptr)))
      return;
    StatusOr<Outcome> outcome = run(
        generation, request,
        [&](const std::string &piece) {
          return chat ? sendParts(splitter.push(piece)) : send(chunk(piece, nullptr));
        },
        [&] { return writer.poll(); });
    if (!outcome) {
      ApiError error{500, "Generation failed: " + outcome.message(), "", "generation_failed",
                     "server_error"};
      send(errorBody(error));
    } else if (!outcome->clientGone) {
      if (chat && !sendParts(splitter.flush()))
        return;
      if (!send(chunk(chat ? json::object() : json(""), outcome->finishReason)))
        return;
      if (request.includeUsage) {
        json last = chunk(json::object(), nullptr);
        last["choices"] = json::array();
        last["usage"] = usage(prompt, *outcome);
        if (!send(last))
          return;
      }
    } else {
      return;
    }
    static const std::string done = "data: [DONE]\n\n";
    sink.write(done.data(), done.size());
  }

  static int64_t now() { return static_cast<int64_t>(std::time(nullptr)); }

  Session &session_; // encoding only (const, thread-safe)
  BatchScheduler &scheduler_;
  ServerOptions options_;
  std::string modelName_;
  int64_t capacity_;
  int64_t started_ = now();
  std::atomic<uint64_t> counter_{0};
};

// The self-pipe that carries a stop signal to the waiter thread.
int gStopPipe[2] = {-1, -1};
extern "C" void onStopSignal(int) {
  const char byte = 1;
  ssize_t ignored = write(gStopPipe[1], &byte, 1); // async-signal-safe
  (void)ignored;
}

} // namespace

int serve(std::unique_ptr<Session> session, const ServerOptions &options) {
  exec::Executor &executor = session->executor();
  if (executor.sequenceCount() != options.parallel) {
    std::fprintf(stderr, "ktrun: error: the executor has %d KV cache slots for --parallel %d\n",
                 executor.sequenceCount(), options.parallel);
    return 1;
  }
  // SIGINT/SIGTERM end the server: whichever thread gets one (the
  // executor's workers exist before this point, with the default mask)
  // writes a byte to a pipe that a waiter thread reads, which stops the
  // HTTP server.
  if (pipe(gStopPipe) != 0) {
    std::fprintf(stderr, "ktrun: error: cannot create a pipe: %s\n", std::strerror(errno));
    return 1;
  }
  struct sigaction onStop {};
  onStop.sa_handler = onStopSignal;
  onStop.sa_flags = SA_RESTART;
  sigemptyset(&onStop.sa_mask);
  sigaction(SIGINT, &onStop, nullptr);
  sigaction(SIGTERM, &onStop, nullptr);
  std::signal(SIGPIPE, SIG_IGN); // a vanished client is a failed write, not death

  BatchScheduler scheduler(executor, session->tokenizer(), options.queue, executor.chunkSize());
  Server server(*session, scheduler, options);

  httplib::Server http;
  // Enough workers that queued requests (which hold one while waiting) and
  // the quick answers (503s, /health) never wait behind each other.
  size_t workers = static_cast<size_t>(options.parallel + options.queue + 4);
  http.new_task_queue = [workers] { return new httplib::ThreadPool(workers); };
  http.set_payload_max_length(options.maxBodyBytes);
  http.Post("/v1/chat/completions", [&](const httplib::Request &req, httplib::Response &res) {
    server.handle(req, res, Endpoint::Chat);
  });
  http.Post("/v1/completions", [&](const httplib::Request &req, httplib::Response &res) {
    server.handle(req, res, Endpoint::Completion);
  });
  http.Get("/v1/models", [&](const httplib::Request &, httplib::Response &res) { server.models(res); });
  http.Get("/health", [&](const httplib::Request &, httplib::Response &res) { server.health(res); });
  http.set_exception_handler([](const httplib::Request &, httplib::Response &res, std::exception_ptr error) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception &e) {
      what = e.what();
    } catch (...) {
    }
    sendError(res, ApiError{500, "Internal error: " + what, "", "internal_error", "server_error"});
  });
  http.set_error_handler([](const httplib::Request &req, httplib::Response &res) {
    if (!res.body.empty())
      return; // a handler's own error answer
    ApiError error{res.status, "", "", "", "invalid_request_error"};
    if (res.status == 404) {
      error.message = "Unknown path " + req.method + " " + req.path +
                      "; this server has POST /v1/chat/completions, POST /v1/completions, "
                      "GET /v1/models and GET /health.";
      error.code = "unknown_url";
    } else if (res.status == 413) {
      error.message = "The request body is too large.";
      error.code = "payload_too_large";
    } else {
      error.message = "HTTP error " + std::to_string(res.status) + " for " + req.method + " " +
                      req.path + ".";
    }
    sendError(res, error);
  });

  int port = options.port;
  if (port == 0)
    port = http.bind_to_any_port(options.host);
  else if (!http.bind_to_port(options.host, port))
    port = -1;
  if (port <= 0) {
    std::fprintf(stderr, "ktrun: error: cannot listen on %s:%d (in use, or not an address of "
                         "this machine); choose another --host/--port\n",
                 options.host.c_str(), options.port);
    return 1;
  }
  std::atomic<bool> signalled{false}, listening{true};
  std::thread signalWaiter([&] {
    char byte = 0;
    while (read(gStopPipe[0], &byte, 1) < 0 && errno == EINTR) {
    }
    if (listening)
      signalled = true;
    http.stop();
  });
  std::fprintf(stderr, "ktrun: serving %s with %d batched slots of %lld tokens of KV cache, "
                       "queue %d; listening on http://%s:%d\n",
               session->modelName().c_str(), options.parallel,
               static_cast<long long>(session->cacheCapacity()), options.queue,
               options.host.c_str(), port);
  bool ok = http.listen_after_bind();
  listening = false;
  if (!signalled) // listen failed on its own: wake the waiter to join it
    onStopSignal(0);
  signalWaiter.join();
  return ok || signalled ? 0 : 1;
}

} // namespace kt::ktrun
