#include "tools/ktrun/Bench.h"

#include "runtime/cpu/ReadBandwidth.h"
#include "runtime/support/Statistics.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace kt::ktrun {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// The value `value` was copied from, through any transfers.
int sourceValue(const plan::Plan &plan, int value) {
  for (bool moved = true; moved;) {
    moved = false;
    for (const plan::Op &op : plan.ops)
      if (op.kind == "transfer" && op.outputs.size() == 1 && op.outputs[0] == value &&
          op.inputs.size() == 1) {
        value = op.inputs[0];
        moved = true;
      }
  }
  return value;
}

// Routed experts that decode on the CPU (their bytes come from host memory).
bool cpuExperts(const plan::Op &op) {
  return op.kind == "routed_experts" && op.decodeDevice == "cpu";
}

// The host's read bandwidth for the bound, and what it was read over.
struct HostBandwidth {
  double bytesPerSecond = 0;
  std::string over;
};

// Over the routed experts' own bytes where the kernels read them: on some
// hosts (virtual machines among them) the memory behind one buffer reads
// 30% faster or slower than behind another, so a fresh buffer's speed is
// not the experts'. Where less than kMinimumSample of them is resident
// (a small model, or one larger than memory), or they sit in NUMA node
// copies read by each node's own threads, over a fresh buffer in pages like
// theirs: 4 KiB where they are read from the model file's mapping, huge
// pages where they were copied.
HostBandwidth measureHostBandwidth(const exec::Executor &executor, cpu::ThreadPool &pool) {
  constexpr uint64_t kSampleBytes = uint64_t{2} << 30, kMinimumSample = uint64_t{1} << 30;
  uint64_t sampled = 0;
  const double overExperts =
      cpu::measureReadBandwidth(pool, executor.routedExpertBytes(), kSampleBytes, 5, sampled);
  if (sampled >= kMinimumSample) {
    char over[96];
    std::snprintf(over, sizeof over, "over %.2f GiB of the routed experts' own pages",
                  double(sampled) / double(uint64_t{1} << 30));
    return {overExperts, over};
  }
  const exec::NumaPlacement placement = executor.numaPlacement();
  const bool hugePages = placement.hugePages || !placement.nodes.empty();
  return {cpu::measureReadBandwidth(pool, size_t{1} << 30, 5,
                                    hugePages ? cpu::PageKind::Huge : cpu::PageKind::Small),
          std::string(hugePages ? "huge" : "4 KiB") + " pages like the experts'"};
}

// The hybrid deployment's aim for decode: this many times the bound of the
// expert bytes each MoE layer reads from host memory.
constexpr double kBoundTarget = 1.15;

int moeLayers(const plan::Plan &plan) {
  return static_cast<int>(std::count_if(plan.ops.begin(), plan.ops.end(), cpuExperts));
}

// Routed-expert bytes one decoded token reads: top_k experts' three
// matrices in every MoE layer (with cpuOnly, the layers whose experts are on
// the CPU: the bytes that come from host memory).
uint64_t expertBytesPerToken(const plan::Plan &plan, bool cpuOnly) {
  uint64_t bytes = 0;
  for (size_t i = 0; i < plan.ops.size(); ++i) {
    const plan::Op &op = plan.ops[i];
    if (op.kind != "routed_experts" || (cpuOnly && !cpuExperts(op)) || op.weights.empty())
      continue;
    uint64_t all = 0;
    for (const plan::Weight &weight : op.weights)
      all += weight.bytes;
    int64_t experts = op.weights.front().shape.back();
    // top_k is the width of the routing the gate feeding this op produced.
    int64_t topK = 0;
    const int ids = op.inputs.size() > 1 ? sourceValue(plan, op.inputs[1]) : -1;
    for (const plan::Op &gate : plan.ops)
      if (gate.kind == "moe_gate" && !gate.outputs.empty() && gate.outputs.front() == ids)
        if (auto it = gate.params.find("top_k"); it != gate.params.end())
          topK = std::get<int64_t>(it->second);
    if (experts > 0)
      bytes += all / static_cast<uint64_t>(experts) * static_cast<uint64_t>(topK);
  }
  return bytes;
}

// All weight bytes one decoded token reads: every module's weights, but only
// top_k of the routed experts (the embedding reads one row).
uint64_t weightBytesPerToken(const plan::Plan &plan) {
  uint64_t bytes = expertBytesPerToken(plan, false);
  for (const plan::Op &op : plan.ops) {
    if (op.kind == "routed_experts")
      continue;
    for (const plan::Weight &weight : op.weights)
      bytes += op.kind == "embedding" && !weight.shape.empty() && weight.shape.back() > 0
                   ? weight.bytes / static_cast<uint64_t>(weight.shape.back())
                   : weight.bytes;
  }
  return bytes;
}

// The GPU time of each pipeline stage (the plan's cuda:N) and what moved
// between the GPUs.
void printStages(const exec::ExecutionProfile &profile) {
  if (profile.gpuSecondsByDevice.size() < 2)
    return;
  std::printf("  GPU time by stage:");
  for (size_t gpu = 0; gpu < profile.gpuSecondsByDevice.size(); ++gpu)
    std::printf("%s cuda:%zu %.3f s", gpu ? "," : "", gpu, profile.gpuSecondsByDevice[gpu]);
  std::printf("; GPU-to-GPU copies %.3f MB\n", profile.gpuToGpuBytes / 1e6);
}

// Where a profiled run's `seconds` went: the routed experts against the
// rest on a CPU plan; CPU experts, GPU, transfers and the rest on a GPU plan;
// then the CPU experts' phases.
void printSplit(const std::string &what, const exec::Executor &executor,
                const exec::ExecutionProfile &profile, double seconds) {
  if (!profile.available)
    return;
  auto share = [&](double part) { return seconds > 0 ? 100 * part / seconds : 0.0; };
  if (executor.deviceDescription() == "cpu") {
    std::printf("%s split (profiled run, %.3f s): routed experts %.3f s (%.0f%%), other steps "
                "%.3f s (%.0f%%)\n",
                what.c_str(), seconds, profile.cpuExpertSeconds, share(profile.cpuExpertSeconds),
                profile.cpuOtherSeconds, share(profile.cpuOtherSeconds));
  } else {
    const double other = seconds - profile.gpuSeconds - profile.cpuExpertSeconds -
                         profile.cpuOtherSeconds - profile.transferSeconds;
    std::printf("%s split (profiled run, %.3f s): CPU experts %.3f s (%.0f%%), GPU %.3f s "
                "(%.0f%%), transfers %.3f s (%.0f%%, %.1f MB), other CPU %.3f s, rest %.3f s\n",
                what.c_str(), seconds, profile.cpuExpertSeconds, share(profile.cpuExpertSeconds),
                profile.gpuSeconds, share(profile.gpuSeconds), profile.transferSeconds,
                share(profile.transferSeconds), profile.transferBytes / 1e6,
                profile.cpuOtherSeconds, other);
    printStages(profile);
  }
  if (profile.cpuExpertSeconds > 0)
    std::printf("CPU experts: grouping %.3f s, AMX tile kernels %.3f s, row kernels %.3f s, "
                "weighted sums %.3f s\n",
                profile.expertPhases.gather, profile.expertPhases.tiles, profile.expertPhases.rows,
                profile.expertPhases.combine);
}

// A profiled run's GPU time by the kind of op, per token, largest first
// (each step's time includes its launches and the wait for it).
void printGpuOps(const std::string &what, const exec::ExecutionProfile &profile, int64_t tokens) {
  if (profile.gpuSecondsByOpKind.empty() || tokens <= 0)
    return;
  std::vector<std::pair<double, std::string>> byTime;
  for (const auto &[kind, seconds] : profile.gpuSecondsByOpKind)
    byTime.emplace_back(seconds, kind);
  std::sort(byTime.rbegin(), byTime.rend());
  std::printf("%s GPU by op, per token (each step waited for):", what.c_str());
  for (size_t i = 0; i < byTime.size(); ++i)
    std::printf("%s %s %.3f ms (%.0f steps)", i ? "," : "", byTime[i].second.c_str(),
                byTime[i].first * 1e3 / double(tokens),
                double(profile.gpuStepsByOpKind.at(byTime[i].second)) / double(tokens));
  std::printf("\n");
}

} // namespace

int runBench(const plan::Plan &plan, exec::Executor &executor, const BenchOptions &options) {
  std::mt19937_64 random(options.seed);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(executor.vocabSize() - 1));
  std::vector<int32_t> prompt(static_cast<size_t>(options.promptTokens));
  for (int32_t &id : prompt)
    id = token(random);
  const int64_t rounds = std::max<int64_t>(1, options.decodeRounds);
  if (const int64_t needed = options.promptTokens + rounds * options.decodeTokens;
      needed > executor.cacheCapacity()) {
    std::fprintf(stderr,
                 "ktrun: error: the benchmark needs %lld tokens of KV cache (%lld of prompt, "
                 "%lld rounds of %lld decoded) and the executor holds %lld; raise --cache-lens "
                 "or lower --bench-rounds\n",
                 static_cast<long long>(needed), static_cast<long long>(options.promptTokens),
                 static_cast<long long>(rounds), static_cast<long long>(options.decodeTokens),
                 static_cast<long long>(executor.cacheCapacity()));
    return 1;
  }

  executor.finishLoading(); // timed as it runs from then on (every layer streaming)
  executor.reset();
  executor.clearRoutingStats();
  auto start = Clock::now();
  StatusOr<std::vector<float>> logits = executor.forward(prompt);
  const double firstPrefill = seconds(start);
  // The prompt again, the figure reported: the first prefill after loading
  // also pays for first uses (the CPU threads' scratch and tile state, the
  // GPU's first launches, the streamed share's balance still moving).
  if (logits) {
    executor.reset();
    start = Clock::now();
    logits = executor.forward(prompt);
  }
  const double prefill = seconds(start);
  if (!logits) {
    std::fprintf(stderr, "ktrun: error: %s\n", logits.message().c_str());
    return 1;
  }
  std::vector<exec::RoutingStats> prefillRouting = executor.routingStats();
  executor.clearRoutingStats();
  // Greedy decode, the executor picking each token where the logits are,
  // then the host's bandwidth for the bound (the host's speed moves between
  // runs: each round is measured against its own reading).
  int32_t next = static_cast<int32_t>(std::max_element(logits->begin(), logits->end()) -
                                      logits->begin());
  cpu::ThreadPool pool(executor.threadCount());
  struct Round {
    double seconds = 0;
    exec::MoeLayerTiming moeTiming;
    HostBandwidth host;
    // Per MoE layer: the whole tokens' time over the layers; the steady
    // state, from one layer's experts to the next's (0 without intervals);
    // the bound, the layer's expert bytes over this round's bandwidth.
    double perLayer(int64_t tokens, int layers) const { return seconds / double(tokens) / layers; }
    double steady() const {
      return moeTiming.intervals > 0 ? moeTiming.seconds / double(moeTiming.intervals) : 0.0;
    }
    double bound(uint64_t expertBytes, int layers) const {
      return double(expertBytes) / layers / host.bytesPerSecond;
    }
  };
  auto decodeRound = [&](Round &round) {
    executor.clearMoeLayerTiming();
    executor.setMoeLayerGpuClock(true);
    const auto roundStart = Clock::now();
    for (int64_t i = 0; i < options.decodeTokens; ++i) {
      StatusOr<std::vector<int32_t>> ids = executor.forwardGreedy({{0, {next}}});
      if (!ids) {
        std::fprintf(stderr, "ktrun: error: %s\n", ids.message().c_str());
        return false;
      }
      next = ids->front();
    }
    round.seconds = seconds(roundStart);
    executor.setMoeLayerGpuClock(false);
    round.moeTiming = executor.moeLayerTiming();
    round.host = measureHostBandwidth(executor, pool);
    return true;
  };
  Round first;
  if (!decodeRound(first))
    return 1;
  double decode = first.seconds;
  const exec::MoeLayerTiming &moeTiming = first.moeTiming;
  std::vector<exec::RoutingStats> decodeRouting = executor.routingStats();
  const exec::ExpertCacheStats cache = executor.expertCacheStats();

  double decodeRate = options.decodeTokens / decode;
  uint64_t expertBytes = expertBytesPerToken(plan, true);
  const HostBandwidth &host = first.host;
  const double bandwidth = host.bytesPerSecond;
  double achieved = expertBytes * decodeRate;
  std::printf("threads: %d\n", executor.threadCount());
  std::printf("prefill: %lld tokens in %.3f s, %.1f tok/s (the second run; the first after "
              "loading took %.3f s)\n",
              static_cast<long long>(options.promptTokens), prefill, options.promptTokens / prefill,
              firstPrefill);
  std::printf("decode: %lld tokens in %.3f s, %.1f tok/s\n",
              static_cast<long long>(options.decodeTokens), decode, decodeRate);
  std::printf("decode CPU expert weights: %.2f MB per token, %.2f GB/s; host read bandwidth "
              "%.2f GB/s (%d threads, %s); ratio %.3f\n",
              expertBytes / 1e6, achieved / 1e9, bandwidth / 1e9, executor.threadCount(),
              host.over.c_str(), bandwidth > 0 ? achieved / bandwidth : 0.0);
  uint64_t allBytes = weightBytesPerToken(plan);
  std::printf("decode all weights: %.2f MB per token, %.2f GB/s; ratio %.3f\n", allBytes / 1e6,
              allBytes * decodeRate / 1e9, bandwidth > 0 ? allBytes * decodeRate / bandwidth : 0.0);
  const int gpuExpertLayers = static_cast<int>(
      std::count_if(plan.ops.begin(), plan.ops.end(), [](const plan::Op &op) {
        return op.kind == "routed_experts" && !cpuExperts(op);
      }));
  if (gpuExpertLayers > 0)
    std::printf("MoE layers: %d with CPU experts, %d with GPU experts (no per-layer bound: the "
                "token's time covers both)\n",
                moeLayers(plan), gpuExpertLayers);
  else if (const int layers = moeLayers(plan); layers > 0 && bandwidth > 0 && expertBytes > 0) {
    // Decode is bound by the expert bytes each MoE layer reads from host
    // memory; the hybrid deployment aims at kBoundTarget times that.
    const double perLayer = first.perLayer(options.decodeTokens, layers);
    const double bound = first.bound(expertBytes, layers);
    std::printf("decode per MoE layer per token: %.3f ms (the token's time over its %d MoE "
                "layers, embedding, dense layers and output head included); bound (expert bytes "
                "/ host bandwidth) %.3f ms; ratio %.2f (target %.2f or less)\n",
                perLayer * 1e3, layers, bound * 1e3, perLayer / bound, kBoundTarget);
    // The layers' own time: from one MoE layer's experts to the next's.
    if (moeTiming.intervals > 0) {
      const double steady = first.steady();
      std::printf("decode per MoE layer, steady state: %.3f ms (from one layer's CPU experts to "
                  "the next's, %lld intervals); ratio to the bound %.2f (target %.2f or less)\n",
                  steady * 1e3, static_cast<long long>(moeTiming.intervals), steady / bound,
                  kBoundTarget);
      // The CPU experts against the bandwidth, and what the layer spends
      // outside them (the copies, the GPU's attention and routing).
      // The bytes the CPU read: what the expert cache and streaming left it.
      const double offCpu =
          cache.selections
              ? (double(cache.gpuSelections + cache.streamedSelections) +
                 double(cache.gateUpSelections) * cache.gateUpShare * cache.gateUpRowShare) /
                    double(cache.selections)
              : 0.0;
      const double cpuLayerBytes = double(expertBytes) / layers * (1 - offCpu);
      const double experts = moeTiming.expertSeconds / double(moeTiming.intervals);
      if (experts > 0)
        std::printf("  of which CPU experts %.3f ms (%.2f GB/s, %.0f%% of the host bandwidth) and "
                    "between them %.3f ms (copies, the GPU's attention and routing)\n",
                    experts * 1e3, cpuLayerBytes / experts / 1e9,
                    100 * cpuLayerBytes / experts / bandwidth, (steady - experts) * 1e3);
      if (moeTiming.gpuIntervals > 0)
        std::printf("  between them the GPU's part %.3f ms (from the experts' result queued to "
                    "the next layer's copies to the host done); launches and waits the rest\n",
                    moeTiming.gpuSeconds / double(moeTiming.gpuIntervals) * 1e3);
      const double intervals = double(moeTiming.intervals);
      std::printf("  the host between them: %.3f ms queueing the GPU's work, %.3f ms waiting "
                  "for the copies to the host, %.3f ms routing until the next experts start\n",
                  moeTiming.hostQueueSeconds / intervals * 1e3,
                  moeTiming.hostWaitSeconds / intervals * 1e3,
                  moeTiming.hostStartSeconds / intervals * 1e3);
      if (moeTiming.streamedLayers > 0) {
        const double layersTimed = double(moeTiming.streamedLayers);
        std::printf(
            "  streamed share, from the host queueing it: CPU experts start at %+.3f ms "
            "and end at %.3f; the link's copies end at %.3f, the GPU's products at %.3f; the "
            "GPU ended last in %.0f%% of layers, %.3f ms after the CPU on average over "
            "all\n",
            moeTiming.streamQueueSeconds / layersTimed * 1e3,
            moeTiming.streamCpuEndSeconds / layersTimed * 1e3,
            moeTiming.streamCopiedSeconds / layersTimed * 1e3,
            moeTiming.streamGpuEndSeconds / layersTimed * 1e3,
            100.0 * double(moeTiming.gpuLaterLayers) / layersTimed,
            moeTiming.gpuLaterSeconds / layersTimed * 1e3);
      }
      // Streamed experts read host memory through the GPU's link as well:
      // the bound over both bandwidths is the one they can approach.
      if (cache.streamedPerToken > 0)
        if (const double link = executor.streamLinkBandwidth(); link > 0) {
          const double both = double(expertBytes) / layers / (bandwidth + link);
          std::printf("  with streamed experts: link %.2f GB/s (page-locked host memory to "
                      "cuda:0, measured now); bound over the host and link bandwidths together "
                      "%.3f ms; steady state ratio to it %.2f\n",
                      link / 1e9, both * 1e3, steady / both);
        }
    }
  }
  if (cache.enabled) {
    // The cache takes its share of the CPU-placed layers' expert choices,
    // and so of the expert bytes decode reads from host memory.
    const double share =
        cache.selections ? double(cache.gpuSelections) / double(cache.selections) : 0.0;
    std::printf("GPU expert cache: %lld experts, %.2f GiB, filled in %.2f s%s; decode: %.1f%% of "
                "the CPU-placed layers' expert choices ran from it; CPU expert weights left "
                "%.2f MB per token, %.2f GB/s\n",
                static_cast<long long>(cache.experts), cache.bytes / 1073741824.0,
                cache.fillSeconds, cache.filled ? "" : " (not filled)", 100 * share,
                expertBytes * (1 - share) / 1e6, expertBytes * (1 - share) * decodeRate / 1e9);
  }
  if (cache.streamedPerToken > 0) {
    const double share =
        cache.selections ? double(cache.streamedSelections) / double(cache.selections) : 0.0;
    std::printf("streamed experts: %lld slots; decode: %.1f%% of the "
                "CPU-placed layers' expert choices ran on the GPU from host memory, %.2f MB per "
                "token over the link (%.2f GB/s); %.2f GiB page-locked in %.2f s; prefill "
                "streams the most chosen %.0f%% of a step's CPU-side experts (balanced by "
                "feedback)\n",
                static_cast<long long>(cache.streamedSlots), 100 * share,
                double(cache.streamedBytes) / options.decodeTokens / 1e6,
                double(cache.streamedBytes) / decode / 1e9, cache.pinnedBytes / 1073741824.0,
                cache.pinSeconds, 100 * cache.prefillStreamShare);
    if (cache.streamedSlots > cache.streamedPerToken || cache.streamedMoves > 0)
      std::printf("  whole experts moved by decode's balance: %lld times; decode streams %lld "
                  "now (started at %lld, slots for %lld)\n",
                  static_cast<long long>(cache.streamedMoves),
                  static_cast<long long>(cache.decodeStreamedNow),
                  static_cast<long long>(cache.streamedPerToken),
                  static_cast<long long>(cache.streamedSlots));
  }
  if (!cache.pinningStopped.empty())
    std::printf("  page-locking stopped short (%s): the layers after run their experts on the "
                "CPU\n",
                cache.pinningStopped.c_str());
  if (cache.autoStreamingRan && cache.streamedPerToken > 0)
    std::printf("  chosen at load by --stream-experts auto: %lld + %lld gate/up-only, the link "
                "%.2f GB/s beside the CPU threads' %.2f GB/s over the experts' pages giving the "
                "GPU %.2f experts' worth a token\n",
                static_cast<long long>(cache.streamedPerToken),
                static_cast<long long>(cache.gateUpsPerToken), cache.chosenLinkBandwidth / 1e9,
                cache.chosenHostBandwidth / 1e9, cache.chosenShare);
  else if (!cache.streamingNone.empty())
    std::printf("streamed experts: none (--stream-experts auto: %s)\n",
                cache.streamingNone.c_str());
  if (cache.gateUpSelections > 0)
    std::printf("  and the gate and up of %.1f%% more (%.0f%% of an expert's bytes each), %.0f%% "
                "of their rows on average (the share now: %.3f experts' worth), the CPU "
                "computing the rest and their down products\n",
                100 * double(cache.gateUpSelections) / double(cache.selections),
                100 * cache.gateUpShare, 100 * cache.gateUpRowShare, cache.decodeGateUpShare);
  std::printf("distinct experts used per MoE layer (prefill / decode):\n");
  for (size_t i = 0; i < prefillRouting.size(); ++i)
    std::printf("  %s: %lld / %lld of %zu\n", prefillRouting[i].path.c_str(),
                static_cast<long long>(prefillRouting[i].distinctExperts()),
                static_cast<long long>(decodeRouting[i].distinctExperts()),
                prefillRouting[i].selections.size());

  // More rounds: each one's ratios to the bound of its own bandwidth reading.
  if (const int layers = moeLayers(plan);
      rounds > 1 && layers > 0 && expertBytes > 0 && gpuExpertLayers == 0) {
    std::vector<Round> all = {first};
    for (int64_t r = 1; r < rounds; ++r) {
      all.emplace_back();
      if (!decodeRound(all.back()))
        return 1;
    }
    std::vector<double> perToken, steady;
    for (const Round &round : all) {
      if (round.host.bytesPerSecond <= 0)
        continue;
      const double bound = round.bound(expertBytes, layers);
      perToken.push_back(round.perLayer(options.decodeTokens, layers) / bound);
      if (round.moeTiming.intervals > 0)
        steady.push_back(round.steady() / bound);
    }
    auto printRatios = [](const char *what, const std::vector<double> &ratios) {
      if (ratios.empty())
        return;
      std::printf("  %s:", what);
      for (size_t i = 0; i < ratios.size(); ++i)
        std::printf("%s %.2f", i ? "," : "", ratios[i]);
      std::printf("; median %.2f (target %.2f or less)\n", median(ratios), kBoundTarget);
    };
    std::printf("decode rounds: %lld of %lld tokens, each against the host bandwidth read after "
                "it (first round above)\n",
                static_cast<long long>(rounds), static_cast<long long>(options.decodeTokens));
    printRatios("per MoE layer per token, ratio to the bound", perToken);
    printRatios("per MoE layer, steady state, ratio to the bound", steady);
  } else if (rounds > 1) {
    std::printf("decode rounds: one (no per-layer bound for this plan to compare more with)\n");
  }

  // Where prefill's time goes: the same prompt again, profiled (GPU steps
  // waited for one by one, so it runs a little slower than the second run
  // above).
  executor.reset();
  executor.setProfiling(true);
  start = Clock::now();
  logits = executor.forward(prompt);
  const double profiled = seconds(start);
  const exec::ExecutionProfile profile = executor.profile();
  executor.setProfiling(false);
  if (!logits) {
    std::fprintf(stderr, "ktrun: error: %s\n", logits.message().c_str());
    return 1;
  }
  printSplit("prefill", executor, profile, profiled);

  // And of decode (profiling waits for the GPU after each GPU step, so the
  // shares are what counts, not the time).
  if (profile.available && options.decodeTokens > 0) {
    executor.setProfiling(true);
    const int64_t tokens = std::min<int64_t>(options.decodeTokens, 32);
    start = Clock::now();
    for (int64_t i = 0; i < tokens && logits; ++i)
      logits = executor.forward({static_cast<int32_t>(
          std::max_element(logits->begin(), logits->end()) - logits->begin())});
    const double decodeProfiled = seconds(start);
    const exec::ExecutionProfile decodeProfile = executor.profile();
    executor.setProfiling(false);
    if (!logits) {
      std::fprintf(stderr, "ktrun: error: %s\n", logits.message().c_str());
      return 1;
    }
    printSplit("decode (" + std::to_string(tokens) + " tokens)", executor, decodeProfile,
               decodeProfiled);
    printGpuOps("decode", decodeProfile, tokens);
    if (decodeProfile.transferBytes > 0)
      std::printf("decode transfers: %.3f MB per token\n",
                  decodeProfile.transferBytes / 1e6 / double(tokens));
  }
  return 0;
}

} // namespace kt::ktrun
