#include "tools/ktrun/Session.h"

#include "runtime/model/CheckpointModel.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace kt::ktrun {
namespace {

using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Reads every page of the mapped weights once, with a progress bar, so the
// first prompt does not pay for page faults and the user sees the load. A
// checkpoint's e4m3 tensors are left out: loading reads them once anyway
// (into q8_0 copies or onto a GPU), and for V3 they would not fit in the
// page cache beside the copies.
void pageIn(const gguf::GgufModel &model, bool progress) {
  uint64_t total = 0, done = 0;
  for (const gguf::TensorInfo &tensor : model.tensors())
    total += tensor.fp8 ? 0 : tensor.nbytes;
  volatile uint8_t sink = 0;
  int shown = -1;
  for (const gguf::TensorInfo &tensor : model.tensors()) {
    if (tensor.fp8)
      continue;
    for (uint64_t offset = 0; offset < tensor.nbytes; offset += 4096)
      sink ^= tensor.data[offset];
    done += tensor.nbytes;
    int percent = total ? static_cast<int>(done * 100 / total) : 100;
    if (progress && percent != shown) {
      shown = percent;
      int filled = percent * 30 / 100;
      std::fprintf(stderr, "\rloading weights [%.*s%*s] %3d%%", filled,
                   "##############################", 30 - filled, "", percent);
    }
  }
  if (progress)
    std::fprintf(stderr, "\n");
  (void)sink;
}

} // namespace

StatusOr<std::unique_ptr<Session>> Session::open(const SessionOptions &options) {
  std::unique_ptr<Session> session(new Session());
  session->options_ = options;
  StatusOr<plan::Plan> loaded = plan::readPlan(options.planPath);
  if (!loaded)
    return loaded.status();
  session->plan_ = std::move(*loaded);
  std::string modelPath = options.modelPath.empty() ? session->plan_.model.path
                                                    : options.modelPath;
  StatusOr<std::unique_ptr<gguf::GgufModel>> model = kt::model::openModel(modelPath);
  if (!model)
    return Status::error(model.message() + " (the model of plan " + options.planPath +
                         "; --gguf-path gives another location)");
  session->model_ = std::move(*model);
  if (Status matches = plan::checkModelMatches(session->plan_, *session->model_); !matches.ok())
    return Status::error(options.planPath + ": " + matches.message());

  pageIn(*session->model_, options.progress);
  StatusOr<std::unique_ptr<exec::Executor>> executor = session->makeExecutor();
  if (!executor)
    return executor.status();
  session->executor_ = std::move(*executor);

  StatusOr<tokenizer::Tokenizer> tokenizer = tokenizer::Tokenizer::fromGguf(*session->model_);
  if (!tokenizer)
    return tokenizer.status();
  session->tokenizer_ = std::move(*tokenizer);
  if (options.chat) {
    StatusOr<tokenizer::DeepseekChatTemplate> chatTemplate = [&]() {
      if (options.chatTemplatePath.empty())
        return tokenizer::DeepseekChatTemplate::forTokenizer(*session->tokenizer_);
      std::ifstream in(options.chatTemplatePath);
      if (!in)
        return StatusOr<tokenizer::DeepseekChatTemplate>(Status::error(
            "cannot read the chat template " + options.chatTemplatePath));
      std::stringstream text;
      text << in.rdbuf();
      std::optional<int32_t> bos = session->tokenizer_->bosId();
      return tokenizer::DeepseekChatTemplate::fromJinja(
          text.str(), bos ? session->tokenizer_->tokenText(*bos) : std::string(),
          options.chatTemplatePath);
    }();
    if (!chatTemplate)
      return chatTemplate.status();
    session->template_ = std::move(*chatTemplate);
  }
  session->sampler_ = std::make_unique<Sampler>(options.sampling);
  return session;
}

StatusOr<std::unique_ptr<exec::Executor>> Session::makeExecutor() const {
  exec::ExecutorOptions executorOptions;
  executorOptions.threads = options_.threads;
  executorOptions.expertGemmTokens = options_.expertGemmTokens;
  executorOptions.expertTileTokens = options_.expertTileTokens;
  executorOptions.numa = options_.numa;
  executorOptions.expertPages = options_.expertPages;
  executorOptions.cacheLens = options_.cacheLens;
  executorOptions.planPath = options_.planPath;
  executorOptions.sequences = options_.sequences;
  executorOptions.cudaGraphs = options_.cudaGraphs;
  executorOptions.overlapLaunches = options_.overlapLaunches;
  executorOptions.fp8Gemm = options_.fp8Gemm;
  executorOptions.fusedNormQuantization = options_.fusedNormQuantization;
  executorOptions.fusedResidualNorms = options_.fusedResidualNorms;
  executorOptions.idleSpinMicros = options_.idleSpinMicros;
  executorOptions.mlaTensorCores = options_.mlaTensorCores;
  executorOptions.ggufTensorCores = options_.ggufTensorCores;
  executorOptions.virtualGpus = options_.virtualGpus;
  executorOptions.gpuExpertCacheBytes = options_.gpuExpertCacheBytes;
  executorOptions.streamedExperts = options_.streamedExperts;
  executorOptions.streamedGateUps = options_.streamedGateUps;
  executorOptions.streamedGateUpShare = options_.streamedGateUpShare;
  executorOptions.moveStreamedExperts = options_.moveStreamedExperts;
  executorOptions.expertProfile = options_.expertProfile;
  executorOptions.progress = options_.progress;
  return exec::createExecutor(plan_, *model_, executorOptions);
}

std::string Session::modelName() const {
  if (!plan_.model.name.empty())
    return plan_.model.name;
  std::string path = plan_.model.path;
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

StatusOr<EncodedPrompt> Session::encodeChat(
    const std::vector<tokenizer::ChatMessage> &messages) const {
  if (!template_)
    return Status::error("the session was opened without a chat template");
  tokenizer::ChatRenderOptions render;
  render.forceThink = options_.forceThink;
  StatusOr<std::string> text = template_->render(messages, render);
  if (!text)
    return text.status();
  tokenizer::EncodeOptions encode;
  encode.parseSpecial = true; // the template's turn markers
  StatusOr<std::vector<int32_t>> ids = tokenizer_->encode(*text, encode);
  if (!ids)
    return ids.status();
  static const std::string openThink = "<think>\n";
  EncodedPrompt prompt;
  prompt.ids = std::move(*ids);
  prompt.opensThink = text->size() >= openThink.size() &&
                      text->compare(text->size() - openThink.size(), openThink.size(),
                                    openThink) == 0;
  return prompt;
}

StatusOr<EncodedPrompt> Session::encodeCompletion(const std::string &prompt) const {
  tokenizer::EncodeOptions encode;
  encode.addBos = tokenizer_->addBosByDefault();
  StatusOr<std::vector<int32_t>> ids = tokenizer_->encode(prompt, encode);
  if (!ids)
    return ids.status();
  EncodedPrompt encoded;
  encoded.ids = std::move(*ids);
  return encoded;
}

void Session::clear() {
  history_.clear();
  cached_.clear();
  executor_->reset();
}

StatusOr<std::vector<int32_t>> Session::promptIds(const std::string &input) {
  if (!options_.chat) {
    tokenizer::EncodeOptions encode;
    encode.addBos = cached_.empty() && tokenizer_->addBosByDefault();
    StatusOr<std::vector<int32_t>> ids = tokenizer_->encode(input, encode);
    if (!ids)
      return ids.status();
    std::vector<int32_t> all = cached_;
    all.insert(all.end(), ids->begin(), ids->end());
    return all;
  }
  std::vector<tokenizer::ChatMessage> messages = history_;
  messages.push_back(tokenizer::ChatMessage::user(input));
  StatusOr<EncodedPrompt> prompt = encodeChat(messages);
  if (!prompt)
    return prompt.status();
  return std::move(prompt->ids);
}

StatusOr<TurnResult> Session::run(const std::string &input, int64_t maxNewTokens,
                                  const std::function<void(const std::string &)> &onText) {
  StatusOr<std::vector<int32_t>> all = promptIds(input);
  if (!all)
    return all.status();
  StatusOr<TurnResult> result = feedAndGenerate(*all, maxNewTokens, *sampler_,
                                                [&](const std::string &text) {
                                                  onText(text);
                                                  return true;
                                                });
  if (result && options_.chat) {
    history_.push_back(tokenizer::ChatMessage::user(input));
    history_.push_back(tokenizer::ChatMessage::assistant(result->text));
  }
  return result;
}

StatusOr<TurnResult> Session::feedAndGenerate(const std::vector<int32_t> &allIds,
                                              int64_t maxNewTokens, Sampler &sampler,
                                              const TextSink &onText) {
  const std::vector<int32_t> *all = &allIds;
  // Feed only what the cache does not hold yet. Where the rendered history
  // departs from the cached tokens (R1 drops earlier reasoning; an answer
  // re-encodes to other ids), the cache is cut back to the common prefix.
  size_t common = 0;
  while (common < cached_.size() && common < all->size() && cached_[common] == (*all)[common])
    ++common;
  if (common == all->size() && common > 0)
    --common; // at least one token must be fed to get the next logits
  if (common < cached_.size()) {
    executor_->truncate(static_cast<int64_t>(common));
    cached_.resize(common);
  }
  TurnResult result;
  result.promptIds.assign(all->begin() + common, all->end());
  if (result.promptIds.empty())
    return Status::error("the prompt is empty");
  int64_t needed = static_cast<int64_t>(all->size());
  if (needed > executor_->cacheCapacity())
    return Status::error("the conversation needs " + std::to_string(needed) +
                         " tokens of KV cache but --cache-lens is " +
                         std::to_string(executor_->cacheCapacity()) +
                         "; start over with /clear or raise --cache-lens");

  // The executor picks each token where the logits are (on a GPU only the
  // id is copied): the most likely one, or drawn by the sampler's next draw.
  int32_t chosenNext = 0;
  auto feed = [&](std::vector<int32_t> tokens) -> Status {
    StatusOr<std::vector<int32_t>> ids =
        sampler.greedy() ? executor_->forwardGreedy({{0, std::move(tokens)}})
                         : executor_->forwardSampled({{0, std::move(tokens)}}, {sampler.nextDraw()});
    if (!ids)
      return ids.status();
    chosenNext = ids->front();
    return Status::success();
  };
  auto start = Clock::now();
  if (Status fed = feed(result.promptIds); !fed.ok())
    return fed;
  cached_.insert(cached_.end(), result.promptIds.begin(), result.promptIds.end());
  result.prefillSeconds = secondsSince(start);

  tokenizer::DecodeOptions decodeOptions;
  decodeOptions.skipSpecial = true;
  tokenizer::StreamingDecoder stream(*tokenizer_, decodeOptions);
  std::optional<int32_t> eos = tokenizer_->eosId();
  start = Clock::now();
  for (int64_t step = 0; step < maxNewTokens; ++step) {
    const int32_t next = chosenNext;
    if (eos && next == *eos) {
      result.stoppedAtEos = true;
      // The end-of-sentence token closes the turn in the history the
      // template renders; keep the cache in step with it.
      if (executor_->position() < executor_->cacheCapacity() && feed({next}).ok())
        cached_.push_back(next);
      break;
    }
    result.generatedIds.push_back(next);
    StatusOr<std::string> piece = stream.push(next);
    if (!piece)
      return piece.status();
    result.text += *piece;
    if (!onText(*piece)) {
      result.stoppedByCaller = true;
      break;
    }
    if (step + 1 == maxNewTokens)
      break;
    if (executor_->position() >= executor_->cacheCapacity())
      return Status::error("the KV cache is full (--cache-lens " +
                           std::to_string(executor_->cacheCapacity()) +
                           "); start over with /clear or raise --cache-lens");
    if (Status fed = feed({next}); !fed.ok())
      return fed;
    cached_.push_back(next);
  }
  if (!result.stoppedByCaller) {
    std::string rest = stream.flush();
    result.text += rest;
    if (!rest.empty())
      onText(rest);
  }
  result.decodeSeconds = secondsSince(start);
  return result;
}

} // namespace kt::ktrun
