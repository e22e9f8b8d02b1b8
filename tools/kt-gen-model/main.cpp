// kt-gen-model: writes random-weight DeepSeek-V3-architecture GGUF models.
// See docs/model-generator.md.
#include "runtime/support/ByteSize.h"
#include "tools/kt-gen-model/ModelGenerator.h"

#include <CLI/CLI.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <map>
#include <unistd.h>

namespace {

using namespace kt::gen;
using kt::formatByteSize;
using kt::gguf::GgmlType;
using kt::Status;
using kt::StatusOr;

std::atomic<bool> gInterrupted{false};

extern "C" void onSignal(int) { gInterrupted = true; }

void installSignalHandlers() {
  struct sigaction action {};
  action.sa_handler = onSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGHUP, &action, nullptr);
}

int usageError(const std::string &message) {
  std::cerr << "kt-gen-model: error: " << message << "\n";
  return 2;
}


std::string formatCount(uint64_t count) {
  char buffer[64];
  if (count >= 1000000000ull)
    std::snprintf(buffer, sizeof buffer, "%.2f B", count / 1e9);
  else if (count >= 1000000ull)
    std::snprintf(buffer, sizeof buffer, "%.2f M", count / 1e6);
  else if (count >= 1000ull)
    std::snprintf(buffer, sizeof buffer, "%.1f K", count / 1e3);
  else
    std::snprintf(buffer, sizeof buffer, "%llu", static_cast<unsigned long long>(count));
  return buffer;
}

std::string shapeText(const std::vector<int64_t> &ne) {
  std::string text = "{";
  for (size_t i = 0; i < ne.size(); ++i)
    text += (i ? ", " : "") + std::to_string(ne[i]);
  return text + "}";
}

// A progress bar on stderr, redrawn in place.
class ProgressBar {
public:
  void update(uint64_t done, uint64_t total) {
    using Clock = std::chrono::steady_clock;
    if (finished_)
      return;
    if (!started_) {
      start_ = Clock::now();
      started_ = true;
    }
    double seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    // Rounded down, so that 100% means done.
    double fraction = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
    int percent = static_cast<int>(fraction * 100);
    constexpr int kWidth = 30;
    int filled = static_cast<int>(fraction * kWidth);
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    // No rate until there is enough time to measure it.
    double rate = seconds > 0.5 ? done / seconds : 0.0;
    char eta[32] = "";
    if (rate > 0 && done < total) {
      long remaining = static_cast<long>((total - done) / rate);
      std::snprintf(eta, sizeof eta, "  ETA %ld:%02ld", remaining / 60, remaining % 60);
    }
    std::string speed = rate > 0 ? "  " + formatByteSize(static_cast<uint64_t>(rate)) + "/s" : "";
    std::fprintf(stderr, "\r[%s] %3d%%  %s / %s%s%s   ", bar.c_str(), percent,
                 formatByteSize(done).c_str(), formatByteSize(total).c_str(), speed.c_str(), eta);
    if (done >= total) {
      std::fprintf(stderr, "\n");
      finished_ = true;
    }
    std::fflush(stderr);
  }

private:
  bool started_ = false;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
};

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"Writes a random-weight DeepSeek-V3-architecture GGUF model "
               "(general.architecture = deepseek2) for tests, demos and benchmarks.",
               "kt-gen-model"};
  app.get_formatter()->column_width(36);

  std::string preset = "demo";
  std::string output;
  app.add_option("--preset", preset, "Starting point: tiny, demo or v3; other options override it")
      ->capture_default_str();
  app.add_option("-o,--output", output,
                 "Output .gguf file (split models: NAME-00001-of-0000N.gguf)");

  int64_t hidden = 0, layers = 0, denseLayers = 0, denseFfn = 0, experts = 0, expertsUsed = 0,
          sharedExperts = 0, expertFfn = 0, groups = 0, groupsUsed = 0, heads = 0, qLora = 0,
          kvLora = 0, ropeDim = 0, nopeDim = 0, vDim = 0, contextLength = 0, yarnOriginal = 0,
          vocabSize = 0;
  double yarnFactor = 0, yarnLogMul = 0, ropeBase = 0, rmsEps = 0, routedScaling = 0;
  bool normTopk = true;
  std::string gating, attention, name;
  uint64_t seed = 0;
  std::vector<std::pair<CLI::Option *, std::function<void(ModelConfig &)>>> overrides;
  auto intOption = [&](const char *flags, int64_t &target, int64_t ModelConfig::*field,
                       const char *help) {
    CLI::Option *option = app.add_option(flags, target, help)->group("Model shape");
    overrides.push_back({option, [&target, field](ModelConfig &c) { c.*field = target; }});
  };
  intOption("--hidden", hidden, &ModelConfig::hiddenSize, "Hidden size (embedding_length)");
  intOption("--layers", layers, &ModelConfig::layerCount, "Number of layers (block_count)");
  intOption("--dense-layers", denseLayers, &ModelConfig::denseLayerCount,
            "Leading dense (non-MoE) layers");
  intOption("--dense-ffn", denseFfn, &ModelConfig::denseFfnSize,
            "FFN size of the dense layers (feed_forward_length)");
  intOption("--experts", experts, &ModelConfig::expertCount, "Routed experts per MoE layer");
  intOption("--experts-used,--top-k", expertsUsed, &ModelConfig::expertsUsed,
            "Experts each token is routed to");
  intOption("--shared-experts", sharedExperts, &ModelConfig::sharedExpertCount,
            "Shared experts per MoE layer");
  intOption("--expert-ffn", expertFfn, &ModelConfig::expertFfnSize, "FFN size of one expert");
  intOption("--groups", groups, &ModelConfig::expertGroupCount, "Expert groups");
  intOption("--groups-used", groupsUsed, &ModelConfig::expertGroupsUsed,
            "Expert groups a token may use");
  intOption("--heads", heads, &ModelConfig::headCount, "Attention heads");
  intOption("--q-lora-rank", qLora, &ModelConfig::qLoraRank,
            "Query compression rank; 0 = none (attn_q, the V2-Lite form)");
  intOption("--kv-lora-rank", kvLora, &ModelConfig::kvLoraRank, "KV compression rank");
  intOption("--qk-rope-dim", ropeDim, &ModelConfig::qkRopeHeadDim,
            "Rotary part of each query/key head (qk_rope_head_dim)");
  intOption("--qk-nope-dim", nopeDim, &ModelConfig::qkNopeHeadDim,
            "Non-rotary part of each query/key head (qk_nope_head_dim)");
  intOption("--v-head-dim", vDim, &ModelConfig::vHeadDim, "Value head size (v_head_dim)");
  intOption("--context-length", contextLength, &ModelConfig::contextLength,
            "context_length (default 163840)");
  intOption("--yarn-original-context", yarnOriginal, &ModelConfig::yarnOriginalContext,
            "YaRN original context length (default 4096)");
  intOption("--vocab-size", vocabSize, &ModelConfig::vocabSize,
            "Embedding rows; the vocabulary is padded with unused tokens up to it");

  auto doubleOption = [&](const char *flags, double &target, double ModelConfig::*field,
                          const char *help) {
    CLI::Option *option = app.add_option(flags, target, help)->group("Model shape");
    overrides.push_back({option, [&target, field](ModelConfig &c) { c.*field = target; }});
  };
  doubleOption("--yarn-factor", yarnFactor, &ModelConfig::yarnFactor,
               "YaRN scaling factor (default 40; 1 = no rope scaling keys)");
  doubleOption("--yarn-log-multiplier", yarnLogMul, &ModelConfig::yarnLogMultiplier,
               "rope.scaling.yarn_log_multiplier (default 0.1)");
  doubleOption("--rope-freq-base", ropeBase, &ModelConfig::ropeFreqBase,
               "RoPE base (default 10000)");
  doubleOption("--rms-eps", rmsEps, &ModelConfig::rmsNormEps, "RMSNorm epsilon (default 1e-6)");
  doubleOption("--routed-scaling-factor", routedScaling, &ModelConfig::routedScalingFactor,
               "expert_weights_scale (default 2.5)");
  CLI::Option *normTopkOption =
      app.add_option("--norm-topk-prob", normTopk,
                     "expert_weights_norm: normalize the top-k weights (default true)")
          ->group("Model shape");
  CLI::Option *gatingOption =
      app.add_option("--gating", gating, "Expert scoring: sigmoid (V3, default) or softmax (V2)")
          ->group("Model shape");
  CLI::Option *attentionOption =
      app.add_option("--attention", attention,
                     "MLA up-projection: split (attn_k_b + attn_v_b, default), joint "
                     "(attn_kv_b) or both")
          ->group("Model shape");
  CLI::Option *nameOption = app.add_option("--name", name, "general.name")->group("Model shape");
  CLI::Option *seedOption =
      app.add_option("--seed", seed, "Random seed (default 0); same options + seed = same bytes");

  std::map<std::string, std::string> typeNames;
  std::vector<std::pair<std::string, GgmlType TensorTypes::*>> typeOptions = {
      {"--type-experts", &TensorTypes::experts},
      {"--type-shared-experts", &TensorTypes::sharedExperts},
      {"--type-attn", &TensorTypes::attention},
      {"--type-dense", &TensorTypes::dense},
      {"--type-embed", &TensorTypes::embedding},
      {"--type-output", &TensorTypes::output},
      {"--type-router", &TensorTypes::router},
      {"--type-norm", &TensorTypes::norm},
  };
  const std::map<std::string, std::string> typeHelp = {
      {"--type-experts", "Routed experts ffn_*_exps (default q4_K)"},
      {"--type-shared-experts", "Shared experts ffn_*_shexp (default q8_0)"},
      {"--type-attn", "Attention projections (default q8_0)"},
      {"--type-dense", "Dense-layer FFN (default q8_0)"},
      {"--type-embed", "token_embd (default q8_0)"},
      {"--type-output", "output (default q8_0)"},
      {"--type-router", "ffn_gate_inp (default f32)"},
      {"--type-norm", "Norm weights: f32, f16 or bf16 (default f32)"},
  };
  for (const auto &[flag, field] : typeOptions)
    app.add_option(flag, typeNames[flag], typeHelp.at(flag))->group("Weight types");
  std::string typeAll;
  app.add_option("--type-all", typeAll,
                 "Type for every weight class except router and norms (the specific options "
                 "win)")
      ->group("Weight types");

  std::string tokenizerJson, tokenizerPre;
  app.add_option("--tokenizer-json", tokenizerJson,
                 "Hugging Face tokenizer.json for the vocabulary (tokenizer_config.json next to "
                 "it is read too); default: a small built-in vocabulary")
      ->group("Vocabulary");
  app.add_option("--tokenizer-pre", tokenizerPre, "tokenizer.ggml.pre (default deepseek-v3)")
      ->group("Vocabulary");

  int64_t splitMaxTensors = 0, splitCount = 0;
  int threads = 0;
  bool quiet = false, dryRun = false, progressFlag = false, metadataOnly = false;
  app.add_option("--split-max-tensors", splitMaxTensors,
                 "Write a split model with at most N tensors per file")
      ->group("Output");
  app.add_option("--split-count", splitCount, "Write a split model of N files balanced by size")
      ->group("Output");
  app.add_option("-t,--threads", threads, "Generation threads (default: all cores)")
      ->group("Output");
  bool referenceQ4K = false;
  app.add_flag("--reference-q4k", referenceQ4K,
               "Quantize q4_K tensors with the reference quantizer instead of synthesizing "
               "zero-mean blocks (about 10x slower; different bytes)")
      ->group("Weight types");
  app.add_flag("--dry-run", dryRun, "List the tensors and sizes; write nothing")->group("Output");
  app.add_flag("--metadata-only", metadataOnly,
               "Write the header but leave tensor data as holes: a sparse file of full size "
               "that reads as zeros and uses almost no disk (for compiling full-size models)")
      ->group("Output");
  app.add_flag("--progress", progressFlag, "Show the progress bar even when stderr is no terminal")
      ->group("Output");
  app.add_flag("-q,--quiet", quiet, "No progress bar and no summary")->group("Output");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &error) {
    return app.exit(error);
  }

  StatusOr<ModelConfig> presetResult = presetConfig(preset);
  if (!presetResult.ok())
    return usageError(presetResult.message());
  ModelConfig config = *presetResult;
  for (auto &[option, apply] : overrides)
    if (option->count() > 0)
      apply(config);
  if (normTopkOption->count() > 0)
    config.normTopkProb = normTopk;
  if (gatingOption->count() > 0) {
    std::optional<GatingFunction> parsed = parseGatingFunction(gating);
    if (!parsed)
      return usageError("Unknown --gating '" + gating + "'; use sigmoid or softmax.");
    config.gating = *parsed;
  }
  if (attentionOption->count() > 0) {
    std::optional<AttentionLayout> parsed = parseAttentionLayout(attention);
    if (!parsed)
      return usageError("Unknown --attention '" + attention + "'; use split, joint or both.");
    config.attention = *parsed;
  }
  if (nameOption->count() > 0)
    config.name = name;
  if (seedOption->count() > 0)
    config.seed = seed;

  auto parseType = [](const std::string &text, const std::string &flag) -> std::optional<GgmlType> {
    std::optional<GgmlType> type = kt::gguf::parseGgmlType(text);
    if (!type)
      std::cerr << "kt-gen-model: error: Unknown weight type '" << text << "' for " << flag
                << "; use one of " << quantizableTypeNames() << ".\n";
    return type;
  };
  if (!typeAll.empty()) {
    std::optional<GgmlType> type = parseType(typeAll, "--type-all");
    if (!type)
      return 2;
    for (GgmlType *field : {&config.types.embedding, &config.types.output,
                            &config.types.attention, &config.types.dense,
                            &config.types.sharedExperts, &config.types.experts})
      *field = *type;
  }
  for (const auto &[flag, field] : typeOptions) {
    const std::string &text = typeNames[flag];
    if (text.empty())
      continue;
    std::optional<GgmlType> type = parseType(text, flag);
    if (!type)
      return 2;
    config.types.*field = *type;
  }

  if (referenceQ4K)
    config.synthesizeQ4K = false;

  Status valid = validateConfig(config);
  if (!valid.ok())
    return usageError(valid.message());

  Vocabulary vocabulary;
  if (!tokenizerJson.empty()) {
    StatusOr<Vocabulary> loaded = loadTokenizerJson(tokenizerJson);
    if (!loaded.ok())
      return usageError(loaded.message());
    vocabulary = std::move(*loaded);
    // DeepSeek-V3's embedding has 129280 rows, more than its tokenizer's ids.
    if (preset == "v3" && vocabSize == 0 && config.vocabSize == 0)
      config.vocabSize = 129280;
  } else {
    vocabulary = builtinVocabulary();
  }
  if (!tokenizerPre.empty())
    vocabulary.pre = tokenizerPre;

  StatusOr<ModelPlan> plan = planModel(config, std::move(vocabulary));
  if (!plan.ok())
    return usageError(plan.message());

  // Tensors whose rows don't fit the requested type's blocks, by change.
  std::map<std::pair<GgmlType, GgmlType>, std::vector<std::string>> fallbacks;
  for (const PlannedTensor &t : plan->tensors)
    if (t.type != t.requestedType)
      fallbacks[{t.requestedType, t.type}].push_back(t.name);
  auto printFallbacks = [&](FILE *out) {
    for (const auto &[change, names] : fallbacks)
      std::fprintf(out,
                   "  note        %zu tensor%s stored as %s instead of %s: their rows (ne[0]) are "
                   "not a multiple of the %s block size, e.g. %s\n",
                   names.size(), names.size() == 1 ? "" : "s",
                   std::string(kt::gguf::ggmlTypeName(change.second)).c_str(),
                   std::string(kt::gguf::ggmlTypeName(change.first)).c_str(),
                   std::string(kt::gguf::ggmlTypeName(change.first)).c_str(),
                   names.front().c_str());
  };

  if (dryRun) {
    for (const PlannedTensor &t : plan->tensors)
      std::printf("%-32s %-24s %-6s %12s\n", t.name.c_str(), shapeText(t.ne).c_str(),
                  std::string(kt::gguf::ggmlTypeName(t.type)).c_str(),
                  formatByteSize(t.bytes()).c_str());
    std::printf("%zu tensors, %s parameters, %s of tensor data, %zu metadata keys\n",
                plan->tensors.size(), formatCount(plan->parameterCount()).c_str(),
                formatByteSize(plan->tensorBytes()).c_str(), plan->metadata.size());
    printFallbacks(stdout);
    return 0;
  }
  if (output.empty())
    return usageError("No output file given; pass one with -o/--output (or use --dry-run).");

  installSignalHandlers();
  WriteOptions options;
  options.outputPath = output;
  options.splitCount = splitCount;
  options.splitMaxTensors = splitMaxTensors;
  options.threads = threads;
  options.metadataOnly = metadataOnly;
  options.cancel = &gInterrupted;
  ProgressBar bar;
  if (!quiet && (progressFlag || ::isatty(STDERR_FILENO)))
    options.progress = [&bar](uint64_t done, uint64_t total) { bar.update(done, total); };

  StatusOr<WriteResult> result = writeModel(*plan, options);
  if (!result.ok()) {
    std::cerr << (options.progress ? "\n" : "") << "kt-gen-model: error: " << result.message()
              << "\n";
    return gInterrupted ? 130 : 1;
  }
  if (quiet)
    return 0;

  const ModelConfig &c = plan->config;
  for (const WrittenFile &file : result->files)
    std::printf("wrote %s (%s, %zu tensors)\n", file.path.c_str(), formatByteSize(file.bytes).c_str(),
                file.tensorCount);
  std::printf("  total       %s in %zu file%s, %zu tensors, %s parameters\n",
              formatByteSize(result->totalBytes).c_str(), result->files.size(),
              result->files.size() == 1 ? "" : "s", result->tensorCount,
              formatCount(result->parameterCount).c_str());
  std::printf("  model       deepseek2, %lld layers (%lld dense), hidden %lld, %lld heads, "
              "q_lora %lld, kv_lora %lld, attention %s\n",
              static_cast<long long>(c.layerCount), static_cast<long long>(c.denseLayerCount),
              static_cast<long long>(c.hiddenSize), static_cast<long long>(c.headCount),
              static_cast<long long>(c.qLoraRank), static_cast<long long>(c.kvLoraRank),
              std::string(attentionLayoutName(c.attention)).c_str());
  std::printf("  experts     %lld x ffn %lld, top-%lld, %lld shared, %lld groups (%lld used), %s "
              "gating\n",
              static_cast<long long>(c.expertCount), static_cast<long long>(c.expertFfnSize),
              static_cast<long long>(c.expertsUsed), static_cast<long long>(c.sharedExpertCount),
              static_cast<long long>(c.expertGroupCount),
              static_cast<long long>(c.expertGroupsUsed),
              std::string(gatingFunctionName(c.gating)).c_str());
  std::printf("  vocabulary  %lld tokens (%s)\n", static_cast<long long>(plan->vocabulary.size()),
              plan->vocabulary.source.c_str());
  std::printf("  seed        %llu\n", static_cast<unsigned long long>(c.seed));
  printFallbacks(stdout);
  return 0;
}
