// A conversation with a compiled model: the plan, its weights, the CPU
// executor with its KV cache, the tokenizer and chat template, and the
// history. Generation streams text through a callback.
#pragma once

#include "runtime/cpu/CpuExecutor.h"
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
  int64_t cacheLens = 0;        // 0: the plan's
  bool forceThink = false;
  bool chat = true;             // false: raw completion of the prompt
  bool progress = false;        // progress bar while the weights are read
  SamplingOptions sampling;
};

struct TurnResult {
  std::vector<int32_t> promptIds;    // the tokens this turn fed (prompt part)
  std::vector<int32_t> generatedIds;
  std::string text;
  double prefillSeconds = 0, decodeSeconds = 0;
  bool stoppedAtEos = false;
};

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
  const plan::Plan &plan() const { return plan_; }
  cpu::CpuExecutor &executor() { return *executor_; }

private:
  Session() = default;
  StatusOr<std::vector<int32_t>> promptIds(const std::string &input);

  SessionOptions options_;
  plan::Plan plan_;
  std::unique_ptr<gguf::GgufModel> model_;
  std::unique_ptr<cpu::CpuExecutor> executor_;
  std::optional<tokenizer::Tokenizer> tokenizer_;
  std::optional<tokenizer::DeepseekChatTemplate> template_;
  std::vector<tokenizer::ChatMessage> history_;
  std::vector<int32_t> cached_; // the tokens in the KV cache, in order
  std::unique_ptr<Sampler> sampler_;
};

} // namespace kt::ktrun
