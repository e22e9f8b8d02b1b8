// A conversation with a compiled model: the plan, its weights, the CPU
// executor with its KV cache, the tokenizer and chat template, and the
// history. Generation streams text through a callback.
#pragma once

#include "runtime/exec/CreateExecutor.h"
#include "runtime/gguf/GgufFile.h"
#include "runtime/plan/Plan.h"
#include "runtime/tokenizer/ChatTemplate.h"
#include "runtime/tokenizer/Tokenizer.h"
#include "tools/ktrun/Sampler.h"

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace kt::ktrun {

struct SessionOptions {
  std::string planPath;
  std::string modelPath;        // overrides the plan's model path
  std::string chatTemplatePath; // a Jinja template to use instead of the model's
  int threads = 0;
  std::string numa = "auto";    // ExecutorOptions::numa
  std::string expertPages = "file"; // ExecutorOptions::expertPages
  int64_t cacheLens = 0;        // 0: the plan's
  int64_t expertGemmTokens = 0; // experts with this many tokens in a step run as bf16 GEMMs; 0: never
  bool forceThink = false;
  // Experts with this many tokens in a step run on AMX tile kernels; 0: never.
  int64_t expertTileTokens = exec::ExecutorOptions::kDefaultExpertTileTokens;
  bool chat = true;             // false: raw completion of the prompt
  bool progress = false;        // progress bar while the weights are read
  int sequences = 1;            // KV cache slots of the executor (the server's --parallel)
  bool cudaGraphs = true;       // GPU plans: replay decode's GPU regions as CUDA graphs
  bool overlapLaunches = true;  // GPU plans: graphs' kernels start before the previous ends
  bool fp8Gemm = true;          // GPU plans: FP8 projections of prefill steps as GEMMs
  bool fusedNormQuantization = true; // FP8 plans: norms, SiLU products quantize for the GEMM
  bool fusedResidualNorms = true;    // GPU plans: add_rms_norm ops as one kernel
  int64_t idleSpinMicros = 3000;     // GPU plans: CPU threads spin this long before sleeping
  bool mlaTensorCores = true;   // GPU plans: long MLA prefills on tensor cores
  bool ggufTensorCores = true;  // GPU plans: Q8_0/k-quant prefill GEMMs on tensor cores
  int virtualGpus = 0;          // run a plan for N GPUs on GPU 0
  int64_t gpuExpertCacheBytes = -1;            // -1: what the plan reserves
  int streamedExperts = 0; // choices per token and layer the GPU streams; -1: auto
  int streamedGateUps = 0; // decode: more experts whose gate and up only it streams
  double streamedGateUpShare = -1; // of those, in experts' worth; -1: balanced by feedback
  bool moveStreamedExperts = false; // decode moves whole experts by feedback (auto always)
  std::vector<exec::RoutingStats> expertProfile; // chooses the cached experts at load
  SamplingOptions sampling;
};

struct TurnResult {
  std::vector<int32_t> promptIds;    // the tokens this turn fed (prompt part)
  std::vector<int32_t> generatedIds;
  std::string text;
  double prefillSeconds = 0, decodeSeconds = 0;
  bool stoppedAtEos = false;
  bool stoppedByCaller = false; // the text callback asked to stop
};

// A prompt as token ids, ready for the server's BatchScheduler.
struct EncodedPrompt {
  std::vector<int32_t> ids;
  // The rendered prompt ends inside an open "<think>" block (R1's template
  // or --force-think): what the model generates first is reasoning.
  bool opensThink = false;
};

// Receives each piece of generated text; returning false stops generation.
using TextSink = std::function<bool(const std::string &)>;

class Session {
public:
  static StatusOr<std::unique_ptr<Session>> open(const SessionOptions &options);

  // One user turn (chat) or one completion (raw): feeds the prompt, then
  // generates up to `maxNewTokens`, calling `onText` with each piece of text
  // as it becomes complete UTF-8.
  StatusOr<TurnResult> run(const std::string &input, int64_t maxNewTokens,
                           const std::function<void(const std::string &)> &onText);
  // Forgets the conversation and empties the KV cache.
  void clear();

  // Stateless use (the server, which drives the executor's sequences
  // itself through a BatchScheduler): encode a whole conversation with the chat
  // template, or a raw completion prompt (with BOS where the vocabulary
  // wants it). Both are const and safe to call from several threads.
  StatusOr<EncodedPrompt> encodeChat(const std::vector<tokenizer::ChatMessage> &messages) const;
  StatusOr<EncodedPrompt> encodeCompletion(const std::string &prompt) const;
  int64_t cacheCapacity() const { return executor_->cacheCapacity(); }
  // The plan's model name, or its file name when the plan has none.
  std::string modelName() const;

  const plan::Plan &plan() const { return plan_; }
  exec::Executor &executor() { return *executor_; }
  const tokenizer::Tokenizer &tokenizer() const { return *tokenizer_; }

private:
  Session() = default;
  StatusOr<std::vector<int32_t>> promptIds(const std::string &input);
  StatusOr<std::unique_ptr<exec::Executor>> makeExecutor() const;
  // Feeds what of `all` the cache does not hold yet, then decodes.
  StatusOr<TurnResult> feedAndGenerate(const std::vector<int32_t> &all, int64_t maxNewTokens,
                                       Sampler &sampler, const TextSink &onText);

  SessionOptions options_;
  plan::Plan plan_;
  std::shared_ptr<gguf::GgufModel> model_;
  std::unique_ptr<exec::Executor> executor_;
  std::optional<tokenizer::Tokenizer> tokenizer_;
  std::optional<tokenizer::DeepseekChatTemplate> template_;
  std::vector<tokenizer::ChatMessage> history_;
  std::vector<int32_t> cached_; // the tokens in the KV cache, in order
  std::unique_ptr<Sampler> sampler_;
};

} // namespace kt::ktrun
