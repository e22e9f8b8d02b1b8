// ktrun: runs a compiled plan — interactive chat with the DeepSeek template,
// or one-shot completion for scripts.
#include "runtime/exec/ExpertProfile.h"
#include "runtime/support/ByteSize.h"
#include "tools/ktrun/Bench.h"
#include "tools/ktrun/Server.h"
#include "tools/ktrun/Session.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <charconv>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <unistd.h>

namespace {

using kt::ktrun::Session;
using kt::ktrun::SessionOptions;
using kt::ktrun::TurnResult;

int fail(const std::string &message) {
  std::fprintf(stderr, "ktrun: error: %s\n", message.c_str());
  return 1;
}

std::string rate(size_t tokens, double seconds) {
  char text[64];
  std::snprintf(text, sizeof text, "%.2f tok/s", seconds > 0 ? tokens / seconds : 0.0);
  return text;
}

void report(const TurnResult &turn) {
  std::fprintf(stderr, "[prompt %zu tokens, %s prefill; generated %zu tokens, %s decode]\n",
               turn.promptIds.size(), rate(turn.promptIds.size(), turn.prefillSeconds).c_str(),
               turn.generatedIds.size(),
               rate(turn.generatedIds.size(), turn.decodeSeconds).c_str());
}

// What the GPU expert cache holds, once it is filled (after the first
// prompt, whose routing chose the experts, or at load from a profile).
void reportExpertCache(const kt::exec::Executor &executor) {
  static bool reported = false;
  const kt::exec::ExpertCacheStats cache = executor.expertCacheStats();
  if (reported || !cache.filled)
    return;
  reported = true;
  std::fprintf(stderr, "[GPU expert cache: %lld experts, %s, filled in %.2f s]\n",
               static_cast<long long>(cache.experts), kt::formatByteSize(cache.bytes).c_str(),
               cache.fillSeconds);
}

// What --stream-experts chose at load (auto) or was given; empty where
// nothing streams for a reason a user did not ask about (no reservation).
std::string streamingSummary(const kt::exec::ExpertCacheStats &cache) {
  if (cache.streamedPerToken <= 0)
    return cache.autoStreamingRan ? "--stream-experts auto streams none: " + cache.streamingNone
                                  : std::string();
  char chosen[200] = "";
  if (cache.autoStreamingRan)
    std::snprintf(chosen, sizeof chosen,
                  " (--stream-experts auto: link %.1f GB/s beside the CPU threads' %.1f GB/s, "
                  "%.2f experts' worth)",
                  cache.chosenLinkBandwidth / 1e9, cache.chosenHostBandwidth / 1e9,
                  cache.chosenShare);
  char text[480];
  std::snprintf(text, sizeof text,
                "streaming %lld + %lld gate/up-only routed experts a token and layer over the "
                "link%s; page-locked %s of %s so far in %.1f s (the first MoE layer's at load, "
                "the rest in the background)",
                static_cast<long long>(cache.streamedPerToken),
                static_cast<long long>(cache.gateUpsPerToken), chosen,
                kt::formatByteSize(cache.pinnedBytes).c_str(),
                kt::formatByteSize(cache.pinTargetBytes).c_str(), cache.pinSeconds);
  return text;
}

int oneShot(Session &session, const std::string &prompt, int64_t maxNewTokens, bool json) {
  auto print = [&](const std::string &text) {
    if (!json) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    }
  };
  kt::StatusOr<TurnResult> turn = session.run(prompt, maxNewTokens, print);
  if (!turn)
    return fail(turn.message());
  if (json) {
    nlohmann::json out = {
        {"prompt_ids", turn->promptIds},
        {"generated_ids", turn->generatedIds},
        {"text", turn->text},
        {"stopped_at_eos", turn->stoppedAtEos},
        {"prefill", {{"tokens", turn->promptIds.size()}, {"seconds", turn->prefillSeconds}}},
        {"decode", {{"tokens", turn->generatedIds.size()}, {"seconds", turn->decodeSeconds}}},
        // MoE layers whose CPU experts run the plan's generated code.
        {"generated_expert_layers", session.executor().generatedExpertLayers()},
        {"tile_expert_layers", session.executor().tileExpertLayers()},
        {"device", session.executor().deviceDescription()},
    };
    if (const kt::exec::NumaPlacement numa = session.executor().numaPlacement();
        !numa.nodes.empty())
      out["numa"] = {{"nodes", numa.nodes},
                     {"threads_per_node", numa.threadsPerNode},
                     {"expert_bytes", numa.expertBytes}};
    else if (numa.hugePages)
      out["huge_page_experts"] = {{"expert_bytes", numa.expertBytes}, {"seconds", numa.seconds}};
    if (const kt::exec::ExpertCacheStats cache = session.executor().expertCacheStats();
        cache.enabled)
      out["gpu_expert_cache"] = {{"experts", cache.experts},
                                 {"bytes", cache.bytes},
                                 {"fill_seconds", cache.fillSeconds},
                                 {"choices", cache.selections},
                                 {"choices_on_gpu", cache.gpuSelections}};
    if (const kt::exec::ExpertCacheStats cache = session.executor().expertCacheStats();
        cache.streamedPerToken > 0)
      out["streamed_experts"] = {{"per_token", cache.streamedPerToken},
                                 {"choices", cache.selections},
                                 {"choices_streamed", cache.streamedSelections},
                                 {"choices_gate_up_streamed", cache.gateUpSelections},
                                 {"gate_up_row_share", cache.gateUpRowShare},
                                 {"gate_up_share_now", cache.decodeGateUpShare},
                                 {"bytes", cache.streamedBytes},
                                 {"pinned_bytes", cache.pinnedBytes},
                                 {"pin_seconds", cache.pinSeconds},
                                 {"gate_ups_per_token", cache.gateUpsPerToken},
                                 {"slots", cache.streamedSlots},
                                 {"per_token_now", cache.decodeStreamedNow},
                                 {"moves", cache.streamedMoves}};
    if (const kt::exec::ExpertCacheStats cache = session.executor().expertCacheStats();
        cache.autoStreamingRan || !cache.streamingNone.empty())
      out["streamed_experts_auto"] = {{"host_bytes_per_second", cache.chosenHostBandwidth},
                                      {"link_bytes_per_second", cache.chosenLinkBandwidth},
                                      {"share", cache.chosenShare},
                                      {"per_token", cache.streamedPerToken},
                                      {"gate_ups_per_token", cache.gateUpsPerToken},
                                      {"none_because", cache.streamingNone}};
    std::cout << out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::printf("\n");
    report(*turn);
    reportExpertCache(session.executor());
  }
  return 0;
}

int chat(Session &session, int64_t maxNewTokens) {
  bool interactive = isatty(STDIN_FILENO);
  if (interactive)
    std::fprintf(stderr, "Chat with %s. /clear starts over, /exit (or Ctrl-D) quits.\n",
                 session.plan().model.name.empty() ? session.plan().model.path.c_str()
                                                   : session.plan().model.name.c_str());
  std::string line;
  while (true) {
    if (interactive) {
      std::fprintf(stderr, "> ");
      std::fflush(stderr);
    }
    if (!std::getline(std::cin, line))
      break;
    if (line == "/exit" || line == "/quit")
      break;
    if (line == "/clear") {
      session.clear();
      std::fprintf(stderr, "(conversation cleared)\n");
      continue;
    }
    if (line.empty())
      continue;
    kt::StatusOr<TurnResult> turn = session.run(line, maxNewTokens, [](const std::string &text) {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::fflush(stdout);
    });
    std::printf("\n");
    if (!turn) {
      // A turn that does not fit is reported; the session goes on.
      std::fprintf(stderr, "ktrun: error: %s\n", turn.message().c_str());
      continue;
    }
    report(*turn);
    reportExpertCache(session.executor());
  }
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"ktrun: runs a model plan compiled by `ktc compile`: an interactive chat with "
               "the DeepSeek template (default), or one completion with --prompt."};
  SessionOptions options;
  std::string prompt, promptFile;
  int64_t maxNewTokens = 1000;
  bool json = false, noChat = false, noProgress = false;
  app.add_option("plan", options.planPath, "The plan file (ktc compile -o ...)")->required();
  app.add_option("--prompt", prompt, "One-shot: answer this prompt and exit");
  app.add_option("--prompt-file,--prompt_file", promptFile, "One-shot: the prompt from a file ('-': stdin)");
  app.add_option("--max-new-tokens,--max_new_tokens", maxNewTokens,
                 "Most tokens to generate per answer (default 1000)")
      ->check(CLI::PositiveNumber);
  app.add_option("--cache-lens,--cache_lens", options.cacheLens,
                 "Tokens of context the KV cache holds (default: the plan's)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--expert-gemm-tokens", options.expertGemmTokens,
                 "Routed experts chosen by at least this many tokens of a prefill step run as bf16 "
                 "GEMMs through oneDNN (AMX where the CPU has it); 0: never (default 0; see "
                 "docs/cpu-codegen.md for when it pays)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--expert-tile-tokens", options.expertTileTokens,
                 "Routed experts chosen by at least this many tokens of a prefill step run on the "
                 "plan's AMX tile kernels (plans compiled for a CPU with AMX-BF16); 0: never "
                 "(default " +
                     std::to_string(kt::exec::ExecutorOptions::kDefaultExpertTileTokens) + ")")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--cpu-infer,--cpu_infer", options.threads,
                 "CPU threads (default: all cores)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--numa", options.numa,
                 "NUMA nodes: auto (this host's), off, or the nodes' CPU lists separated by ';' "
                 "(e.g. '0-7,16-23;8-15,24-31'). On several nodes the CPU threads are pinned per "
                 "node and each node gets a copy of the rows of the routed experts its threads "
                 "multiply (memory: the experts' size, once); one node changes nothing "
                 "(default auto)");
  app.add_option("--expert-pages", options.expertPages,
                 "Where the CPU reads the routed experts on one NUMA node: file (the model "
                 "file's mapping, 4 KiB pages; the default) or huge (copied at load into "
                 "transparent huge pages, which the kernels stream about 5% faster; memory: "
                 "the experts' size, the file's pages of them handed back; not with "
                 "--stream-experts N; auto then streams none). Several nodes always copy (--numa)")
      ->check(CLI::IsMember({"file", "huge"}));
  app.add_flag("--force-think,--force_think", options.forceThink,
               "Start the answer with <think>\\n so R1 reasons before answering");
  app.add_option("--temperature", options.sampling.temperature,
                 "Sampling temperature; 0 is greedy decoding (default)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p,--top_p", options.sampling.topP, "Nucleus sampling: keep this much probability")
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--top-k,--top_k", options.sampling.topK, "Sample among the k most likely tokens")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", options.sampling.seed, "Random seed for sampling");
  app.add_option("--chat-template,--chat_template", options.chatTemplatePath,
                 "A Jinja chat template file to use instead of the model's");
  app.add_flag("--no-chat,--no_chat", noChat, "Raw completion: no chat template");
  app.add_flag("--json", json,
               "One-shot: print one JSON object (prompt and generated ids, text, timings)");
  app.add_option("--gguf-path,--gguf_path", options.modelPath,
                 "The model, if it moved since the plan was compiled");
  app.add_flag("--no-progress,--no_progress", noProgress, "No progress bar while loading");
  app.add_option("--virtual-gpus", options.virtualGpus,
                 "Run a plan compiled for N GPUs (cuda:0 .. cuda:N-1, e.g. the multi-GPU rule "
                 "files) on this host's GPU 0, for hosts with fewer GPUs (otherwise it runs on "
                 "GPUs 0 .. N-1): each logical GPU keeps its own buffers and the plan's memory "
                 "budget, stages hand activations over as on N GPUs")
      ->check(CLI::Range(0, 64));
  std::string gpuExpertCache, expertProfile, saveExpertProfile;
  app.add_option("--gpu-expert-cache", gpuExpertCache,
                 "GPU plans compiled with ktc compile --gpu-expert-cache: use SIZE (e.g. 8GiB, at "
                 "most what the plan reserves; 0: none) of cuda:0 for copies of the most often "
                 "routed experts of CPU-placed layers, chosen by --expert-profile or else by the "
                 "first prefill's routing (default: all the plan reserves)");
  std::string streamExperts = "auto";
  app.add_option("--stream-experts", streamExperts,
                 "GPU plans compiled with ktc compile --gpu-expert-cache: the GPU runs some of "
                 "the routed experts of CPU-placed layers itself, its copy engine reading their "
                 "weights from host memory over PCIe (page-locked: the first MoE layer's at "
                 "load, the rest in the background) into N slots while "
                 "the CPU threads run the rest, so the link adds its bandwidth to theirs: in "
                 "decode up to N of each step's experts per layer, in prefill the most chosen "
                 "ones, half the slots at a time, in a share balanced against the CPU's by "
                 "feedback. The slots (N experts' weights) come out of the plan's expert cache "
                 "reservation. auto (the default): at load, measure the link and the CPU "
                 "threads side by side over the experts' memory and choose N and "
                 "--stream-gate-up for that balance (2 + 1 with 16 cores and PCIe 5), then "
                 "move whole experts by feedback as --move-streamed-experts does; none "
                 "where the plan reserves no expert cache or the experts are over 3/4 of the "
                 "host's memory (ktrun prints the choice; --bench times both sides per layer). "
                 "0: none")
      ->check(CLI::Validator(
          [](std::string &value) -> std::string {
            int experts = -1;
            const char *end = value.data() + value.size();
            const auto [last, error] = std::from_chars(value.data(), end, experts);
            if (value == "auto" ||
                (error == std::errc() && last == end && experts >= 0 && experts <= 64))
              return {};
            return "expects auto or a number of experts from 0 to 64, not '" + value + "'";
          },
          "auto|0..64"));
  app.add_option("--stream-gate-up", options.streamedGateUps,
                 "With --stream-experts: in decode the GPU also streams the gate and up "
                 "matrices of M more of each step's experts per layer and computes their gated "
                 "rows, which the CPU's down products read (a finer share than whole experts: "
                 "with Q4_K a third of an expert each; 0: none, the default). How many of "
                 "their rows it takes balances itself: after each MoE layer a sixteenth of an "
                 "expert more when the GPU had finished by the time the CPU had, less when not "
                 "(ktrun --bench prints where it settled)")
      ->check(CLI::Range(0, 64));
  app.add_option("--stream-gate-up-share", options.streamedGateUpShare,
                 "With --stream-gate-up M: fix the GPU's share of those experts' gate and up "
                 "rows at X experts' worth (0 to M; e.g. 1.5 with M = 2: all of the first "
                 "expert's rows and the first half of the second's) instead of balancing it "
                 "by feedback")
      ->check(CLI::Range(0.0, 64.0));
  app.add_flag("--move-streamed-experts", options.moveStreamedExperts,
               "With --stream-experts N: let decode move whole experts between the GPU and the "
               "CPU as auto does: when the balanced gate/up share has stayed at all of its rows "
               "for 16 MoE layers in a row (the GPU keeps finishing first), one more expert "
               "streams, in a slot for N + 1 taken at load; when it has stayed at none (the GPU "
               "keeps finishing last), one fewer, never under one; a move undone waits twice "
               "as long for the next (ktrun --bench prints the moves)");
  app.add_option("--expert-profile", expertProfile,
                 "Fill the GPU expert cache at load from this routing profile (written by "
                 "--save-expert-profile)");
  app.add_option("--save-expert-profile", saveExpertProfile,
                 "On exit, write how often each MoE layer chose each expert in this run (with "
                 "--bench: from its decode on) to this file, for --expert-profile");
  bool noCudaGraphs = false, noLaunchOverlap = false;
  app.add_flag("--no-cuda-graphs", noCudaGraphs,
               "GPU plans: launch decode's kernels one by one instead of replaying each GPU "
               "region as a CUDA graph (for comparison and debugging)");
  app.add_flag("--no-launch-overlap", noLaunchOverlap,
               "GPU plans on sm_90 and newer: in decode's CUDA graphs, start each kernel only "
               "when the one before it has finished, instead of letting it start early and wait "
               "for that kernel's results on the GPU (for comparison and debugging)");
  bool noFp8Gemm = false;
  app.add_flag("--no-fp8-gemm", noFp8Gemm,
               "FP8 plans: multiply the FP8 projections of prefill steps with the FP8 GEMV on "
               "f32 activations too, instead of the tensor-core GEMM (sm_90a: on activations "
               "quantized per token and 128 columns; sm_80 to sm_89: in bf16) (for comparison)");
  bool noFusedQuantization = false;
  app.add_flag("--no-fused-quantization", noFusedQuantization,
               "FP8 plans on sm_90a: quantize the FP8 GEMMs' activations in a kernel of their own "
               "instead of in the RMSNorm or SiLU product before them (the same bytes; for "
               "comparison)");
  bool noFusedResidualNorm = false;
  app.add_flag("--no-fused-residual-norm", noFusedResidualNorm,
               "GPU plans: run each residual add and the RMSNorm after it (add_rms_norm, fused "
               "by ktc) as separate kernels instead of one (the same bits; for comparison)");
  int64_t idleSpinMicros = 3000;
  app.add_option("--idle-spin-us", idleSpinMicros,
                 "GPU plans: how long idle CPU threads keep spinning before they sleep, in "
                 "microseconds. Decode leaves them idle between MoE layers while the GPU runs "
                 "attention; spinning, they start the next layer's experts at once (0: sleep "
                 "soon, saving CPU time)")
      ->check(CLI::Range(int64_t(0), int64_t(1000000)));
  bool noMlaTensorCores = false;
  app.add_flag("--no-mla-tensor-cores", noMlaTensorCores,
               "GPU plans: keep MLA attention in f32 on CUDA cores for long prompts and long "
               "caches too (by default prefill chunks attending over 512K token-positions or "
               "more, and decode over 1024 positions or more, run on tensor cores in bf16, "
               "about 1e-3 relative error)");
  bool noGgufTensorCores = false;
  app.add_flag("--no-gguf-tensor-cores", noGgufTensorCores,
               "GPU plans: multiply Q8_0 and k-quant matrices of prefill steps with the "
               "token-tiled GEMV in f32 instead of the tensor-core GEMM (sm_80 and newer, steps "
               "of 32 tokens or more, activations and k-quant weights rounded to bf16) (for "
               "comparison)");
  bool bench = false;
  kt::ktrun::BenchOptions benchOptions;
  app.add_flag("--bench", bench,
               "Benchmark: prefill a random prompt twice (tok/s of the second, after the "
               "first's warm-up), decode greedily, print tok/s, decode's "
               "expert-weight GB/s against the measured memory bandwidth, and the distinct "
               "experts each MoE layer used");
  app.add_option("--bench-prompt,--bench_prompt", benchOptions.promptTokens, "Benchmark prompt tokens (256)")
      ->check(CLI::PositiveNumber);
  app.add_option("--bench-tokens,--bench_tokens", benchOptions.decodeTokens, "Benchmark decoded tokens (64)")
      ->check(CLI::PositiveNumber);
  app.add_option("--bench-rounds", benchOptions.decodeRounds,
                 "Benchmark decode rounds of --bench-tokens each, each followed by its own "
                 "reading of the host's bandwidth; with more than one, each round's ratio to "
                 "the bound and their median (1)")
      ->check(CLI::PositiveNumber);
  bool serve = false;
  kt::ktrun::ServerOptions serverOptions;
  app.add_flag("--serve", serve,
               "Serve an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, "
               "/v1/models, /health) until SIGINT/SIGTERM; docs/server.md");
  app.add_option("--host", serverOptions.host, "--serve: the address to listen on (127.0.0.1)");
  app.add_option("--port", serverOptions.port,
                 "--serve: the TCP port (10002; 0 picks a free one and prints it)")
      ->check(CLI::Range(0, 65535));
  app.add_option("--parallel", serverOptions.parallel,
                 "--serve: requests generating at once, each with its own KV cache of "
                 "--cache-lens tokens; their steps run batched together (2)")
      ->check(CLI::Range(1, 256));
  app.add_option("--queue", serverOptions.queue,
                 "--serve: requests waiting for a slot before the server answers 503 (16)")
      ->check(CLI::Range(0, 4096));
  CLI11_PARSE(app, argc, argv);

  if (serve && (!prompt.empty() || !promptFile.empty() || json || bench))
    return fail("--serve takes its prompts from HTTP requests: drop --prompt, --prompt-file, "
                "--json and --bench");
  if (serve && noChat)
    return fail("--serve needs the chat template for /v1/chat/completions: drop --no-chat "
                "(/v1/completions is the raw completion)");
  if (json && prompt.empty() && promptFile.empty())
    return fail("--json needs --prompt or --prompt-file");
  if (!promptFile.empty()) {
    std::stringstream text;
    if (promptFile == "-") {
      text << std::cin.rdbuf();
    } else {
      std::ifstream in(promptFile, std::ios::binary);
      if (!in)
        return fail("cannot read the prompt file " + promptFile);
      text << in.rdbuf();
    }
    prompt = text.str();
  }
  options.chat = !noChat;
  options.progress = !noProgress && isatty(STDERR_FILENO);
  options.cudaGraphs = !noCudaGraphs;
  options.overlapLaunches = !noLaunchOverlap;
  options.fp8Gemm = !noFp8Gemm;
  options.fusedNormQuantization = !noFusedQuantization;
  options.fusedResidualNorms = !noFusedResidualNorm;
  options.idleSpinMicros = idleSpinMicros;
  options.mlaTensorCores = !noMlaTensorCores;
  options.ggufTensorCores = !noGgufTensorCores;
  options.streamedExperts =
      streamExperts == "auto" ? kt::exec::kAutoStreamedExperts : std::stoi(streamExperts);
  if (!gpuExpertCache.empty()) {
    std::optional<uint64_t> bytes = kt::parseByteSize(gpuExpertCache);
    if (!bytes || *bytes > uint64_t(INT64_MAX))
      return fail("--gpu-expert-cache '" + gpuExpertCache + "' is not a size, e.g. 8GiB");
    options.gpuExpertCacheBytes = int64_t(*bytes);
  }
  if (!expertProfile.empty()) {
    kt::StatusOr<std::vector<kt::exec::RoutingStats>> profile =
        kt::exec::readExpertProfile(expertProfile);
    if (!profile)
      return fail(profile.message());
    options.expertProfile = std::move(*profile);
  }
  if (serve && !saveExpertProfile.empty())
    return fail("--save-expert-profile does not go with --serve; save a profile from a chat, a "
                "--prompt or a --bench run");
  if (serve)
    options.sequences = serverOptions.parallel; // one KV cache slot per concurrent request

  kt::StatusOr<std::unique_ptr<Session>> session = Session::open(options);
  if (!session)
    return fail(session.message());
  if (std::string kernels = kt::exec::kernelLoadSummary((*session)->executor()); !kernels.empty())
    std::fprintf(stderr, "ktrun: %s: %s\n", (*session)->executor().deviceDescription().c_str(),
                 kernels.c_str());
  if (std::string streaming = streamingSummary((*session)->executor().expertCacheStats());
      !streaming.empty())
    std::fprintf(stderr, "ktrun: %s\n", streaming.c_str());
  if (kt::exec::NumaPlacement numa = (*session)->executor().numaPlacement(); !numa.nodes.empty()) {
    std::string threads;
    for (int count : numa.threadsPerNode)
      threads += (threads.empty() ? "" : "+") + std::to_string(count);
    std::fprintf(
        stderr, "ktrun: NUMA: %s; threads %s; routed experts copied to their nodes: %s in %.2f s\n",
        numa.nodes.c_str(), threads.c_str(), kt::formatByteSize(numa.expertBytes).c_str(),
        numa.seconds);
  } else if (numa.hugePages) {
    std::fprintf(stderr, "ktrun: routed experts copied into huge pages: %s in %.2f s\n",
                 kt::formatByteSize(numa.expertBytes).c_str(), numa.seconds);
  }
  if (kt::exec::WeightConversionStats converted = (*session)->executor().weightConversions();
      converted.tensors > 0)
    std::fprintf(stderr, "ktrun: converted %d FP8 tensors to q8_0 for the CPU (%s) in %.2f s\n",
                 converted.tensors, kt::formatByteSize(converted.bytes).c_str(),
                 converted.seconds);
  if (serve) {
    serverOptions.defaultMaxTokens = maxNewTokens;
    serverOptions.defaultSampling = options.sampling;
    return kt::ktrun::serve(std::move(*session), serverOptions);
  }
  int status;
  if (bench)
    status = kt::ktrun::runBench((*session)->plan(), (*session)->executor(), benchOptions);
  else if (!prompt.empty() || !promptFile.empty())
    status = oneShot(**session, prompt, maxNewTokens, json);
  else
    status = chat(**session, maxNewTokens);
  if (!saveExpertProfile.empty()) {
    if (kt::Status saved = kt::exec::writeExpertProfile(saveExpertProfile,
                                                        (*session)->executor().routingStats());
        !saved.ok())
      return fail(saved.message());
    std::fprintf(stderr, "ktrun: wrote the expert profile %s\n", saveExpertProfile.c_str());
  }
  return status;
}
