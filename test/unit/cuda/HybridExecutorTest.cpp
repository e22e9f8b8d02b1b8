// The hybrid executor (GPU ops through NVRTC kernels, routed experts on the
// CPU) against the CPU executor, the reference, on the same generated model.
// Tests that need a GPU skip without one; the refusal of GPU plans on a
// host without a GPU runs everywhere.
#include "runtime/cuda/HybridExecutor.h"
#include "runtime/cuda/DeviceQuery.h"
#include "runtime/cuda/KernelCatalog.h"
#include "runtime/exec/CreateExecutor.h"
#include "runtime/exec/StreamedExperts.h"
#include "runtime/gguf/GgufWriter.h"
#include "runtime/model/CheckpointModel.h"
#include "runtime/safetensors/Safetensors.h"
#include "test/unit/common/CountingAllocator.h"
#include "test/unit/cpu/TestModels.h"
#include "test/unit/cuda/CudaTestSupport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <map>
#include <sstream>
#include <thread>

namespace kt::cuda {
namespace {

using cpu::test::TestModel;

std::vector<GpuInfo> gpus() {
  std::string whyNone;
  return queryGpus(whyNone);
}

// The GPU the tests run on, as ktc's --target-gpu names it.
std::string targetGpu() {
  std::vector<GpuInfo> found = gpus();
  return found.empty() ? std::string("sm_90a:80GiB") : found[0].arch() + ":80GiB";
}

// Kernels compile into a cache of this test process.
class CacheDirectory : public ::testing::Environment {
public:
  void SetUp() override { setenv("KT_CACHE_DIR", dir_.path().c_str(), 1); }

private:
  test::TempDir dir_;
};
[[maybe_unused]] ::testing::Environment *const gCache =
    ::testing::AddGlobalTestEnvironment(new CacheDirectory);

#define KT_REQUIRE_GPU()                                                                           \
  do {                                                                                             \
    KT_REQUIRE_COMPILER();                                                                         \
    if (gpus().empty())                                                                            \
      GTEST_SKIP() << "no GPU on this host";                                                       \
  } while (0)

// The model as a GPU plan (default rules) and as a CPU plan. Routed experts
// keep f32 activations in both (--f32-cpu-experts), so the two differ only
// by the GPU's rounding.
struct ModelPair {
  TestModel gpu, cpu;
};

void buildPair(const std::string &name, const gen::ModelConfig &config, ModelPair &pair,
               const std::string &rules = "rules/DeepSeek-V3-Chat.yaml") {
  cpu::test::buildModel(name + "-gpu", config, pair.gpu, rules, targetGpu(), "--f32-cpu-experts");
  cpu::test::buildModel(name + "-cpu", config, pair.cpu, "rules/DeepSeek-V3-Chat-cpu-only.yaml",
                        "none", "--f32-cpu-experts");
}

// The error of an executor for `m` with `options` that must be refused
// (empty, with a failure, where it is not).
std::string refusal(const TestModel &m, const exec::ExecutorOptions &options) {
  StatusOr<std::unique_ptr<exec::Executor>> executor =
      exec::createExecutor(m.plan, *m.model, options);
  EXPECT_FALSE(executor.ok()) << "not refused";
  return executor.ok() ? std::string() : executor.message();
}

// refusal(), whose error must say each of `says`.
void expectRefusalSays(const TestModel &m, const exec::ExecutorOptions &options,
                       std::initializer_list<std::string> says) {
  const std::string message = refusal(m, options);
  for (const std::string &text : says)
    EXPECT_NE(message.find(text), std::string::npos) << "'" << text << "' not in: " << message;
}

// Loaded whole unless `background`: the streamed experts' later layers are
// page-locked by then.
std::unique_ptr<exec::Executor> open(const TestModel &m, exec::ExecutorOptions options = {},
                                     bool background = false) {
  if (options.threads == 0)
    options.threads = 2;
  StatusOr<std::unique_ptr<exec::Executor>> executor =
      exec::createExecutor(m.plan, *m.model, options);
  EXPECT_TRUE(executor.ok()) << executor.message();
  if (executor.ok() && !background)
    (*executor)->finishLoading();
  return executor.ok() ? std::move(*executor) : nullptr;
}

int32_t argmax(const std::vector<float> &logits, size_t row, int64_t vocab) {
  auto begin = logits.begin() + long(row * size_t(vocab));
  return int32_t(std::max_element(begin, begin + vocab) - begin);
}

// Prefill of `prompt` (all positions), then greedy decode: logits and
// tokens of the GPU plan against the CPU plan's.
// `gpuStats`: the GPU executor's expert cache statistics after the run.
void expectSameRun(const ModelPair &pair, size_t promptTokens, int decodeSteps, double tolerance,
                   exec::ExecutorOptions options = {}, bool background = false,
                   exec::ExpertCacheStats *gpuStats = nullptr) {
  // f32 against f32: Q8_0 prefill on tensor cores rounds the activations to
  // bf16 (GgufPrefillOnTensorCoresStaysNearTheGemv), and so do the CPU
  // experts' AMX tile kernels on hosts that have them (cpu_tests).
  options.ggufTensorCores = false;
  options.expertTileTokens = 0;
  exec::ExecutorOptions cpuOptions = options; // without the GPU's own options
  cpuOptions.gpuExpertCacheBytes = -1;
  cpuOptions.streamedExperts = cpuOptions.streamedGateUps = 0;
  cpuOptions.streamedGateUpShare = -1;
  cpuOptions.moveStreamedExperts = false;
  cpuOptions.expertProfile.clear();
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu, options, background),
                                  cpu = open(pair.cpu, cpuOptions);
  ASSERT_TRUE(gpu && cpu);
  EXPECT_NE(gpu->deviceDescription(), "cpu");
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(promptTokens, 7);
  StatusOr<std::vector<float>> g = gpu->forward(prompt, true), c = cpu->forward(prompt, true);
  ASSERT_TRUE(g.ok()) << g.message();
  ASSERT_TRUE(c.ok()) << c.message();
  const double prefillError = cpu::test::relativeL2(*g, *c);
  EXPECT_LE(prefillError, tolerance) << "prefill of " << promptTokens << " tokens";
  const int64_t vocab = cpu->vocabSize();
  int32_t next = argmax(*c, promptTokens - 1, vocab);
  double worst = 0;
  for (int step = 0; step < decodeSteps; ++step) {
    g = gpu->forward({next});
    c = cpu->forward({next});
    ASSERT_TRUE(g.ok()) << g.message();
    ASSERT_TRUE(c.ok()) << c.message();
    worst = std::max(worst, cpu::test::relativeL2(*g, *c));
    ASSERT_EQ(argmax(*g, 0, vocab), argmax(*c, 0, vocab)) << "decode step " << step;
    next = argmax(*c, 0, vocab);
  }
  EXPECT_LE(worst, tolerance);
  EXPECT_EQ(gpu->position(), cpu->position());
  std::printf("[ gpu      ] prefill %zu tokens: relative L2 %.2e; %d decode steps: worst %.2e\n",
              promptTokens, prefillError, decodeSteps, worst);
  if (gpuStats)
    *gpuStats = gpu->expertCacheStats();
}

// Greedy decode of `steps` tokens after a prompt of `promptTokens`, with
// and without CUDA graphs: the logits must be identical (the same kernels,
// replayed), and the executor without graphs launches none. Returns the
// graphed executor's statistics.
HybridExecutor::GraphStats expectGraphedDecodeEqualsPlain(const TestModel &m, size_t promptTokens,
                                                          int steps) {
  exec::ExecutorOptions withoutGraphs;
  withoutGraphs.cudaGraphs = false;
  std::unique_ptr<exec::Executor> graphed = open(m), plain = open(m, withoutGraphs);
  if (!graphed || !plain)
    return {};
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(promptTokens, 4);
  StatusOr<std::vector<float>> a = graphed->forward(prompt), b = plain->forward(prompt);
  EXPECT_TRUE(a.ok() && b.ok());
  for (int step = 0; step < steps && a.ok() && b.ok(); ++step) {
    const int32_t next = argmax(*b, 0, plain->vocabSize());
    a = graphed->forward({next});
    b = plain->forward({next});
    EXPECT_TRUE(a.ok()) << a.message();
    EXPECT_TRUE(b.ok()) << b.message();
    if (a.ok() && b.ok())
      EXPECT_EQ(*a, *b) << "decode step " << step;
  }
  EXPECT_EQ(dynamic_cast<HybridExecutor &>(*plain).graphStats().launched, 0u);
  return dynamic_cast<HybridExecutor &>(*graphed).graphStats();
}

TEST(HybridExecutor, QuantizedModelMatchesTheCpuExecutor) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-q", *gen::presetConfig("tiny"), pair);
  expectSameRun(pair, 23, 16, 1e-4);
}

TEST(HybridExecutor, F32ModelMatchesTheCpuExecutor) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-f32", cpu::test::tinyF32Config(), pair);
  expectSameRun(pair, 17, 16, 1e-4);
}

TEST(HybridExecutor, KQuantAttentionAndSoftmaxGatingMatchTheCpuExecutor) {
  KT_REQUIRE_GPU();
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.hiddenSize = 512; // k-quant rows are 256 values
  config.types.attention = gguf::GgmlType::Q6_K;
  config.types.sharedExperts = gguf::GgmlType::Q4_K;
  config.types.dense = gguf::GgmlType::Q5_K;
  config.types.output = gguf::GgmlType::Q6_K;
  config.gating = gen::GatingFunction::Softmax;
  ModelPair pair;
  buildPair("tiny-k", config, pair);
  expectSameRun(pair, 9, 8, 1e-4);
}

TEST(HybridExecutor, ModelWithoutQueryCompressionMatches) {
  KT_REQUIRE_GPU();
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.qLoraRank = 0;
  ModelPair pair;
  buildPair("tiny-noq", config, pair);
  expectSameRun(pair, 11, 6, 1e-4);
}

TEST(HybridExecutor, JointKvUpProjectionIsSplitAtLoad) {
  KT_REQUIRE_GPU();
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.attention = gen::AttentionLayout::Joint; // attn_kv_b only, as older conversions
  ModelPair pair;
  buildPair("tiny-joint", config, pair);
  expectSameRun(pair, 10, 6, 1e-4);
}

// Routed experts of layers 4 to 10 on the GPU (the rule file for a GPU with
// memory to spare): prefill, and decode replayed as CUDA graphs with the
// expert choice read on the device.
TEST(HybridExecutor, GpuExpertsMatchTheCpuExecutorInsideDecodeGraphs) {
  KT_REQUIRE_GPU();
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.layerCount = 6;
  ModelPair pair;
  buildPair("tiny-gpu-experts", config, pair, "rules/DeepSeek-V3-Chat-gpu-experts-4-10.yaml");
  int gpuExpertLayers = 0;
  for (const plan::Op &op : pair.gpu.plan.ops)
    gpuExpertLayers += op.kind == "routed_experts" && op.decodeDevice == "cuda:0";
  ASSERT_EQ(gpuExpertLayers, 2); // layers 4 and 5
  expectSameRun(pair, 15, 8, 1e-4);
  // Routing statistics: counted on the device for the GPU layers, equal to
  // the CPU executor's for every layer.
  {
    std::unique_ptr<exec::Executor> onGpu = open(pair.gpu), onCpu = open(pair.cpu);
    ASSERT_TRUE(onGpu && onCpu);
    const std::vector<int32_t> prompt = cpu::test::sampleTokens(10, 6);
    ASSERT_TRUE(onGpu->forward(prompt).ok());
    ASSERT_TRUE(onCpu->forward(prompt).ok());
    ASSERT_TRUE(onGpu->forward({3}).ok()); // a decode step, through the graphs
    ASSERT_TRUE(onCpu->forward({3}).ok());
    std::vector<exec::RoutingStats> g = onGpu->routingStats(), c = onCpu->routingStats();
    ASSERT_EQ(g.size(), c.size());
    for (size_t i = 0; i < g.size(); ++i) {
      EXPECT_EQ(g[i].path, c[i].path);
      EXPECT_EQ(g[i].selections, c[i].selections) << g[i].path;
    }
    onGpu->clearRoutingStats();
    for (const exec::RoutingStats &layer : onGpu->routingStats())
      EXPECT_EQ(layer.distinctExperts(), 0) << layer.path;
  }
  // The same decode with and without graphs: the experts' regions replay.
  EXPECT_GT(expectGraphedDecodeEqualsPlain(pair.gpu, 6, 4).launched, 0u);
}

// Bytes of one routed expert (its three matrices) and the routed experts
// of all CPU-placed layers of `m`'s plan.
std::pair<uint64_t, int64_t> cpuExpertSizes(const TestModel &m) {
  uint64_t perExpert = 0;
  int64_t experts = 0;
  for (const plan::Op &op : m.plan.ops)
    if (op.kind == "routed_experts" && op.decodeDevice == "cpu") {
      uint64_t bytes = 0;
      for (const plan::Weight &weight : op.weights)
        bytes += weight.bytes;
      const int64_t count = op.weights.front().shape.back();
      perExpert = bytes / uint64_t(count);
      experts += count;
    }
  return {perExpert, experts};
}

// The tiny model with 4 layers as NAME-gpu (default rules, f32 CPU
// experts, a 256 MiB expert cache reserved on cuda:0) and NAME-cpu (all on
// the CPU); returns its configuration.
gen::ModelConfig buildExpertCachePair(const std::string &name, ModelPair &pair) {
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.layerCount = 4;
  cpu::test::buildModel(name + "-gpu", config, pair.gpu, "rules/DeepSeek-V3-Chat.yaml", targetGpu(),
                        "--f32-cpu-experts --gpu-expert-cache 256MiB");
  cpu::test::buildModel(name + "-cpu", config, pair.cpu, "rules/DeepSeek-V3-Chat-cpu-only.yaml",
                        "none", "--f32-cpu-experts");
  return config;
}

// The GPU expert cache (ktc --gpu-expert-cache): the cached experts' choices
// run on cuda:0, the rest on the CPU, and the sums agree with the CPU
// executor's whether the cache holds all experts, some, or those a profile
// names.
TEST(HybridExecutor, ExpertCacheSplitsTheExpertsBetweenGpuAndCpu) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildExpertCachePair("tiny-expert-cache", pair);
  const auto [perExpert, allExperts] = cpuExpertSizes(pair.gpu);
  ASSERT_GT(allExperts, 0);
  ASSERT_LE(uint64_t(allExperts) * perExpert, 256ull << 20);

  // Filled after the first prefill: all experts, then about a third of them.
  for (int64_t cached : {allExperts, allExperts / 3}) {
    SCOPED_TRACE(std::to_string(cached) + " experts cached");
    exec::ExecutorOptions options;
    options.gpuExpertCacheBytes = int64_t(uint64_t(cached) * perExpert);
    expectSameRun(pair, 15, 8, 1e-4, options);
    std::unique_ptr<exec::Executor> gpu = open(pair.gpu, options);
    ASSERT_TRUE(gpu);
    EXPECT_TRUE(gpu->expertCacheStats().enabled);
    EXPECT_FALSE(gpu->expertCacheStats().filled);
    ASSERT_TRUE(gpu->forward(cpu::test::sampleTokens(12, 9)).ok());
    gpu->clearRoutingStats();
    for (int32_t token : {5, 9, 17, 33})
      ASSERT_TRUE(gpu->forward({token}).ok());
    const exec::ExpertCacheStats stats = gpu->expertCacheStats();
    EXPECT_TRUE(stats.filled);
    EXPECT_EQ(stats.experts, cached);
    EXPECT_EQ(stats.bytes, uint64_t(cached) * perExpert);
    EXPECT_GT(stats.selections, 0u);
    if (cached == allExperts)
      EXPECT_EQ(stats.gpuSelections, stats.selections);
    else
      EXPECT_LT(stats.gpuSelections, stats.selections);
  }

  // A profile that favours expert 1 of every layer fills the cache at load
  // with those experts: a decode that routes there is served from the GPU.
  std::unique_ptr<exec::Executor> cpu = open(pair.cpu);
  ASSERT_TRUE(cpu);
  ASSERT_TRUE(cpu->forward(cpu::test::sampleTokens(12, 9)).ok());
  std::vector<exec::RoutingStats> profile = cpu->routingStats();
  ASSERT_FALSE(profile.empty());
  for (exec::RoutingStats &layer : profile) {
    std::fill(layer.selections.begin(), layer.selections.end(), 0);
    layer.selections[1] = 100;
  }
  exec::ExecutorOptions fromProfile;
  fromProfile.gpuExpertCacheBytes = int64_t(uint64_t(profile.size()) * perExpert);
  fromProfile.expertProfile = profile;
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu, fromProfile);
  ASSERT_TRUE(gpu);
  EXPECT_TRUE(gpu->expertCacheStats().filled);
  EXPECT_EQ(gpu->expertCacheStats().experts, int64_t(profile.size()));
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(12, 9);
  StatusOr<std::vector<float>> g = gpu->forward(prompt), c = open(pair.cpu)->forward(prompt);
  ASSERT_TRUE(g.ok() && c.ok());
  EXPECT_LE(cpu::test::relativeL2(*g, *c), 1e-4);
  const exec::ExpertCacheStats stats = gpu->expertCacheStats();
  uint64_t expertOne = 0;
  for (const exec::RoutingStats &layer : gpu->routingStats())
    expertOne += layer.selections[1];
  EXPECT_EQ(stats.gpuSelections, expertOne);

  // A profile of another model is refused.
  profile.front().selections.pop_back();
  fromProfile.expertProfile = profile;
  StatusOr<std::unique_ptr<exec::Executor>> refused =
      exec::createExecutor(pair.gpu.plan, *pair.gpu.model, fromProfile);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("--save-expert-profile"), std::string::npos)
      << refused.message();
}

// Runs everywhere: more cache than the plan reserves is refused before any
// GPU is needed, with the recompile to do.
TEST(HybridExecutor, RefusesAnExpertCacheThePlanDoesNotReserve) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  cpu::test::buildModel("tiny-expert-cache-small", *gen::presetConfig("tiny"), m,
                        "rules/DeepSeek-V3-Chat.yaml", "sm_90a:80GiB", "--gpu-expert-cache 1MiB");
  exec::ExecutorOptions options;
  options.gpuExpertCacheBytes = 2 << 20;
  expectRefusalSays(m, options, {"reserves 1.00 MiB", "ktc compile --gpu-expert-cache 2097152"});
}

// Streamed experts (ExecutorOptions::streamedExperts): the GPU copies some
// of each step's CPU-side experts from page-locked host memory into N
// slots and runs them (in decode up to N; in prefill the most chosen, N / 2 at
// a time, in a share balanced by feedback), alone or beside the expert
// cache, one sequence or a batch; the sums agree with the CPU executor's
// and the counts add up; on the MoE-layer clock each decode layer's
// streamed share is timed.
TEST(HybridExecutor, StreamedExpertsRunOnTheGpuBesideTheCpuExperts) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  const gen::ModelConfig config = buildExpertCachePair("tiny-stream", pair);
  const auto [perExpert, allExperts] = cpuExpertSizes(pair.gpu);
  const int64_t moeLayers = config.layerCount - config.denseLayerCount;
  ASSERT_GT(allExperts, 0);
  struct Setting {
    int streamed, gateUps;
    int64_t cached;
    double gateUpShare = -1; // fixed; -1: balanced by feedback
  };
  for (const Setting &setting :
       {Setting{1, 0, 0}, Setting{3, 0, 0}, Setting{2, 0, allExperts / 3}, Setting{2, 1, 0},
        Setting{1, 2, allExperts / 3}, Setting{2, 2, 0, 1.5}}) {
    const auto [streamed, gateUps, cached, gateUpShare] = setting;
    SCOPED_TRACE(std::to_string(streamed) + " streamed, " + std::to_string(gateUps) +
                 " gate/up only (share " + std::to_string(gateUpShare) + "), " +
                 std::to_string(cached) + " cached");
    exec::ExecutorOptions options;
    options.streamedExperts = streamed;
    options.streamedGateUps = gateUps;
    options.streamedGateUpShare = gateUpShare;
    options.gpuExpertCacheBytes = int64_t(uint64_t(cached) * perExpert);
    expectSameRun(pair, 24, 8, 1e-4, options);
    // Stepping at once, while the later layers may still be page-locked in
    // the background: the same results (a layer streams once it is locked).
    expectSameRun(pair, 24, 8, 1e-4, options, true);
    std::unique_ptr<exec::Executor> gpu = open(pair.gpu, options);
    ASSERT_TRUE(gpu);
    const exec::ExpertCacheStats loaded = gpu->expertCacheStats();
    EXPECT_EQ(loaded.streamedPerToken, streamed);
    EXPECT_GE(loaded.pinnedBytes, uint64_t(allExperts) * perExpert); // every layer's, by now
    EXPECT_TRUE(loaded.pinningStopped.empty()) << loaded.pinningStopped;
    EXPECT_GT(gpu->streamLinkBandwidth(), 0.0);
    // The prefill streams some of the experts at least 4 of its tokens chose
    // (kPrefillStreamMinTokens), half the slots at a time, and each MoE layer
    // moves the share streamed by a notch (3 layers: it ends off its start).
    EXPECT_EQ(loaded.prefillStreamShare, 0.5);
    ASSERT_TRUE(gpu->forward(cpu::test::sampleTokens(24, 9)).ok());
    if (cached == 0) {
      uint64_t often = 0;
      for (const exec::RoutingStats &layer : gpu->routingStats())
        for (uint64_t count : layer.selections)
          often += count >= 4 ? count : 0;
      const exec::ExpertCacheStats prefill = gpu->expertCacheStats();
      EXPECT_GT(prefill.streamedSelections, uint64_t(4 * streamed)); // more experts than slots
      EXPECT_LT(prefill.streamedSelections, often);
      EXPECT_NE(prefill.prefillStreamShare, 0.5);
    }
    gpu->clearRoutingStats();
    const int decodeSteps = 4;
    gpu->clearMoeLayerTiming();
    gpu->setMoeLayerGpuClock(true); // and the streamed share's timeline
    for (int step = 0; step < decodeSteps; ++step)
      ASSERT_TRUE(gpu->forward({int32_t(5 + 7 * step)}).ok());
    gpu->setMoeLayerGpuClock(false);
    const exec::MoeLayerTiming timing = gpu->moeLayerTiming();
    if (cached == 0)
      EXPECT_EQ(timing.streamedLayers, decodeSteps * moeLayers);
    EXPECT_GT(timing.streamedLayers, 0);
    EXPECT_GT(timing.streamCopiedSeconds, 0.0);
    EXPECT_GT(timing.streamGpuEndSeconds, timing.streamCopiedSeconds); // products after copies
    EXPECT_GT(timing.streamCpuEndSeconds, timing.streamQueueSeconds);
    EXPECT_LE(timing.gpuLaterLayers, timing.streamedLayers);
    const exec::ExpertCacheStats stats = gpu->expertCacheStats();
    EXPECT_EQ(stats.selections, uint64_t(decodeSteps * moeLayers * config.expertsUsed));
    // One token a step: every streamed choice is an expert of its own, and
    // so is each gate/up-only one (its gate and up rows copied).
    EXPECT_NEAR(double(stats.streamedBytes),
                double(stats.streamedSelections * perExpert) +
                    double(stats.gateUpSelections * perExpert) * stats.gateUpShare *
                        stats.gateUpRowShare,
                1.0);
    if (gateUpShare >= 0) {
      // 1.5 of 2: the first expert's rows all, the second's first half.
      EXPECT_EQ(stats.decodeGateUpShare, gateUpShare);
      EXPECT_DOUBLE_EQ(stats.gateUpRowShare, 0.75);
    } else if (gateUps > 0) {
      // Each decode layer moved it by a sixteenth (within its limits).
      EXPECT_GE(stats.decodeGateUpShare, gateUps - double(decodeSteps * moeLayers) / 16);
      EXPECT_LE(stats.decodeGateUpShare, double(gateUps));
      EXPECT_GT(stats.gateUpRowShare, 0.0);
      EXPECT_LE(stats.gateUpRowShare, 1.0);
    }
    if (cached == 0) {
      EXPECT_EQ(stats.streamedSelections, uint64_t(decodeSteps * moeLayers * streamed));
      EXPECT_EQ(stats.gateUpSelections, uint64_t(decodeSteps * moeLayers * gateUps));
    } else {
      EXPECT_LE(stats.streamedSelections + stats.gpuSelections + stats.gateUpSelections,
                stats.selections);
    }
    EXPECT_GT(stats.streamedSelections, 0u);
    if (gateUps > 0)
      EXPECT_GT(stats.gateUpSelections, 0u);
  }

  // A cache that leaves the slots no room in the plan's reservation is
  // refused, with the size that fits.
  exec::ExecutorOptions crowded;
  crowded.streamedExperts = 2;
  crowded.gpuExpertCacheBytes = 256ll << 20;
  StatusOr<std::unique_ptr<exec::Executor>> refused =
      exec::createExecutor(pair.gpu.plan, *pair.gpu.model, crowded);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("ask for a cache of at most"), std::string::npos)
      << refused.message();

  // A batch of two sequences: an expert both tokens chose is copied once.
  exec::ExecutorOptions options;
  options.streamedExperts = 2;
  options.streamedGateUps = 1;
  options.gpuExpertCacheBytes = 0; // else the prefill's routing caches every expert
  options.sequences = 2;
  options.ggufTensorCores = false;
  options.expertTileTokens = 0;
  exec::ExecutorOptions cpuOptions = options;
  cpuOptions.streamedExperts = cpuOptions.streamedGateUps = 0;
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu, options), cpu = open(pair.cpu, cpuOptions);
  ASSERT_TRUE(gpu && cpu);
  std::vector<exec::SequenceTokens> batch = {{0, cpu::test::sampleTokens(6, 1)},
                                             {1, cpu::test::sampleTokens(9, 2)}};
  for (int step = 0; step < 4; ++step) {
    StatusOr<std::vector<float>> g = gpu->forwardBatch(batch), c = cpu->forwardBatch(batch);
    ASSERT_TRUE(g.ok() && c.ok());
    EXPECT_LE(cpu::test::relativeL2(*g, *c), 1e-4) << "step " << step;
    const int64_t vocab = cpu->vocabSize();
    for (size_t i = 0; i < batch.size(); ++i)
      batch[i].tokens = {argmax(*c, i, vocab)};
  }
  EXPECT_GT(gpu->expertCacheStats().streamedSelections, 0u);
  EXPECT_GT(gpu->expertCacheStats().gateUpSelections, 0u);
}

// Whole streamed experts moved by decode's balance (auto's, or asked for):
// a slot for one more is taken at load, the count decode streams stays
// within one of the slots and at least one, and every move leaves the
// results equal to the CPU executor's. (Which way this host's tiny model
// moves them depends on its timings; StreamedShareBalance's tests pin the
// rule itself down.)
TEST(HybridExecutor, StreamedWholeExpertsMoveByTheBalance) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  const gen::ModelConfig config = buildExpertCachePair("tiny-stream-move", pair);
  const int64_t moeLayers = config.layerCount - config.denseLayerCount;
  exec::ExecutorOptions options;
  options.streamedExperts = 2;
  options.streamedGateUps = 1;
  options.moveStreamedExperts = true;
  options.gpuExpertCacheBytes = 0;
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu, options);
  ASSERT_TRUE(gpu);
  exec::ExpertCacheStats stats = gpu->expertCacheStats();
  EXPECT_EQ(stats.streamedPerToken, 2);
  EXPECT_EQ(stats.streamedSlots, 3);
  EXPECT_EQ(stats.decodeStreamedNow, 2);
  EXPECT_EQ(stats.streamedMoves, 0);
  gpu.reset();
  // 40 decode steps: at least 40 x moeLayers balanced layers, more than
  // the share's 16 steps from one end to the other plus the patience.
  const int decodeSteps = 40;
  expectSameRun(pair, 24, decodeSteps, 1e-4, options, false, &stats);
  std::printf("[ moves    ] %lld whole experts moved; decode streams %lld now, its gate/up "
              "share %.4f\n",
              static_cast<long long>(stats.streamedMoves),
              static_cast<long long>(stats.decodeStreamedNow), stats.decodeGateUpShare);
  EXPECT_GE(stats.decodeStreamedNow, 1);
  EXPECT_LE(stats.decodeStreamedNow, 3);
  EXPECT_LE(std::abs(stats.decodeStreamedNow - 2), stats.streamedMoves);
  // The prefill's and at least one a decode layer.
  EXPECT_GE(stats.streamedSelections, uint64_t(decodeSteps * moeLayers));
}

// Runs everywhere: streaming with a plan that reserves no room for it is
// refused before any GPU is needed, with the recompile to do, and so are
// gate/up-only experts without streamed ones.
TEST(HybridExecutor, RefusesStreamedExpertsWithoutTheCacheReservation) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  cpu::test::buildModel("tiny-stream-unreserved", *gen::presetConfig("tiny"), m,
                        "rules/DeepSeek-V3-Chat.yaml", "sm_90a:80GiB", "");
  exec::ExecutorOptions options;
  options.streamedExperts = 2;
  expectRefusalSays(m, options, {"--stream-experts 2", "ktc compile --gpu-expert-cache"});
  // Gate/up-only experts add to streamed ones: alone they are refused.
  options.streamedExperts = 0;
  options.streamedGateUps = 1;
  expectRefusalSays(m, options, {"--stream-gate-up 1 adds experts to --stream-experts"});
  // A fixed share of their rows past the experts it shares out.
  options.streamedExperts = 2;
  options.streamedGateUpShare = 1.5;
  expectRefusalSays(m, options,
                    {"--stream-gate-up-share 1.5 is more than the --stream-gate-up "
                     "1 experts"});
  // The CPU's copy of the experts in huge pages beside streamed ones (read
  // from the file's page-locked mapping) would hold them twice; an unknown
  // --expert-pages is refused with the choices.
  options = {};
  options.streamedExperts = 2;
  options.expertPages = "huge";
  expectRefusalSays(m, options, {"--expert-pages huge and --stream-experts 2"});
  options.expertPages = "tiny";
  expectRefusalSays(m, options, {"--expert-pages 'tiny': give file"});
  // Auto chooses the gate/up-only experts and lets their share balance.
  options = {};
  options.streamedExperts = exec::kAutoStreamedExperts;
  options.streamedGateUps = 1;
  expectRefusalSays(m, options,
                    {"--stream-experts auto chooses the gate/up-only experts too, "
                     "and their share balances itself; drop --stream-gate-up,"});
  options.streamedGateUps = 0;
  options.streamedGateUpShare = 0.5;
  expectRefusalSays(m, options,
                    {"drop --stream-gate-up-share, or give --stream-experts a "
                     "number"});
  // Moving whole experts needs some to move, and the balance that moves them.
  options = {};
  options.moveStreamedExperts = true;
  expectRefusalSays(m, options,
                    {"--move-streamed-experts moves whole experts of --stream-experts N, "
                     "which is 0"});
  options.streamedExperts = 2;
  options.streamedGateUps = 1;
  options.streamedGateUpShare = 0.5;
  expectRefusalSays(m, options, {"--stream-gate-up-share fixes the share; drop one of them"});
}

// --stream-experts auto measures the link and the CPU threads side by side
// at load and streams what chooseStreamedExperts makes of the two (whatever
// this host's numbers: the results equal the CPU executor's either way);
// with no room left beside the cache it streams none, says why, and leaves
// nothing page-locked. Without a reservation it streams none silently (a
// plan without --gpu-expert-cache, ktrun's default).
TEST(HybridExecutor, AutoStreamedExpertsFollowTheMeasuredBandwidths) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  const gen::ModelConfig config = buildExpertCachePair("tiny-stream-auto", pair);
  const auto [perExpert, allExperts] = cpuExpertSizes(pair.gpu);
  exec::ExecutorOptions options;
  options.streamedExperts = exec::kAutoStreamedExperts;
  options.gpuExpertCacheBytes = 0; // the whole reservation is room for slots
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu, options);
  ASSERT_TRUE(gpu);
  exec::ExpertCacheStats stats = gpu->expertCacheStats();
  EXPECT_TRUE(stats.autoStreamingRan);
  EXPECT_GT(stats.chosenHostBandwidth, 0.0);
  EXPECT_GT(stats.chosenLinkBandwidth, 0.0);
  const exec::StreamedExpertsChoice expected = exec::chooseStreamedExperts(
      int(config.expertsUsed), stats.chosenHostBandwidth, stats.chosenLinkBandwidth, 64);
  std::printf("[ auto     ] host %.1f GB/s, link %.1f GB/s: %.2f experts' worth, %lld + %lld\n",
              stats.chosenHostBandwidth / 1e9, stats.chosenLinkBandwidth / 1e9, stats.chosenShare,
              static_cast<long long>(stats.streamedPerToken),
              static_cast<long long>(stats.gateUpsPerToken));
  EXPECT_DOUBLE_EQ(stats.chosenShare, expected.share);
  EXPECT_EQ(stats.streamedPerToken, expected.experts);
  EXPECT_EQ(stats.gateUpsPerToken, expected.gateUps);
  if (expected.experts > 0) {
    EXPECT_GE(stats.pinnedBytes, uint64_t(allExperts) * perExpert);
    EXPECT_TRUE(stats.streamingNone.empty()) << stats.streamingNone;
  } else {
    EXPECT_EQ(stats.pinnedBytes, 0u);
    EXPECT_NE(stats.streamingNone.find("under one expert's worth"), std::string::npos)
        << stats.streamingNone;
  }
  gpu.reset();
  expectSameRun(pair, 24, 8, 1e-4, options);

  // The cache takes the whole reservation: no slot fits.
  options.gpuExpertCacheBytes = int64_t{256} << 20;
  gpu = open(pair.gpu, options);
  ASSERT_TRUE(gpu);
  stats = gpu->expertCacheStats();
  EXPECT_TRUE(stats.autoStreamingRan);
  EXPECT_EQ(stats.streamedPerToken, 0);
  EXPECT_EQ(stats.pinnedBytes, 0u);
  EXPECT_NE(stats.streamingNone.find("less than one expert's"), std::string::npos)
      << stats.streamingNone;
  gpu.reset();

  // No reservation at all.
  TestModel unreserved;
  cpu::test::buildModel("tiny-stream-auto-unreserved", *gen::presetConfig("tiny"), unreserved,
                        "rules/DeepSeek-V3-Chat.yaml", targetGpu(), "");
  options.gpuExpertCacheBytes = -1;
  gpu = open(unreserved, options);
  ASSERT_TRUE(gpu);
  stats = gpu->expertCacheStats();
  EXPECT_FALSE(stats.autoStreamingRan);
  EXPECT_EQ(stats.streamedPerToken, 0);
  EXPECT_NE(stats.streamingNone.find("reserves no GPU expert cache"), std::string::npos)
      << stats.streamingNone;
}

TEST(HybridExecutor, ChunkedPrefillEqualsTheCpuExecutor) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-chunks", *gen::presetConfig("tiny"), pair);
  exec::ExecutorOptions options;
  options.chunkSize = 5; // three chunks, the later ones over a filled cache
  expectSameRun(pair, 13, 4, 1e-4, options);
}

TEST(HybridExecutor, LongContextDecodeMatchesTheCpuExecutor) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-long", *gen::presetConfig("tiny"), pair);
  // Decode at positions past 600: the split attention merges three chunks.
  expectSameRun(pair, 601, 4, 1e-4);
}

TEST(HybridExecutor, CudaGraphsReplayDecodeExactly) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-graphs", *gen::presetConfig("tiny"), pair);
  const HybridExecutor::GraphStats stats = expectGraphedDecodeEqualsPlain(pair.gpu, 9, 8);
  EXPECT_GT(stats.captured, 0u);
  EXPECT_EQ(stats.launched, stats.captured * 8); // captured once, then replayed every step
  // One graph per stretch of GPU steps between host steps (the embedding on
  // the host, copies, the CPU's experts), however many plan regions it spans:
  // after the queue order moved the gate and the shared expert, a MoE layer's
  // attention and gate are one graph.
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu);
  ASSERT_TRUE(gpu);
  const std::vector<size_t> order = dynamic_cast<HybridExecutor &>(*gpu).queueOrder();
  const std::vector<plan::Op> &ops = pair.gpu.plan.ops;
  auto onGpuInAGraph = [&](const plan::Op &op) {
    return op.decodeDevice.rfind("cuda", 0) == 0 && op.kind != "transfer" &&
           op.kind != "embedding" && op.params.count("graph_region") > 0;
  };
  size_t stretches = 0;
  for (size_t i = 0; i < order.size(); ++i)
    if (onGpuInAGraph(ops[order[i]]) && (i == 0 || !onGpuInAGraph(ops[order[i - 1]])))
      ++stretches;
  EXPECT_EQ(stats.captured, stretches);
}

// ktc fuses each residual add on the GPU with the norm after it
// (kt-fuse-residual-norm), the experts' sum included: one kernel writes the
// sum and its norm. Its bits are those of the adds and the norm as separate
// kernels (ktrun --no-fused-residual-norm), in prefill (one step and in
// chunks) and in decode's graphs.
TEST(HybridExecutor, FusedResidualNormsGiveTheBitsOfSeparateKernels) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-residual", *gen::presetConfig("tiny"), pair);
  int twoAddends = 0, threeAddends = 0, adds = 0;
  for (const plan::Op &op : pair.gpu.plan.ops) {
    twoAddends += op.kind == "add_rms_norm" && op.inputs.size() == 2;
    threeAddends += op.kind == "add_rms_norm" && op.inputs.size() == 3;
    adds += op.kind == "add";
  }
  EXPECT_GE(twoAddends, 3);   // after each attention, after the dense MLP
  EXPECT_GE(threeAddends, 1); // residual + (routed + shared) before the next norm
  EXPECT_EQ(adds, 0);
  for (int64_t chunk : {0, 8}) {
    SCOPED_TRACE(chunk);
    exec::ExecutorOptions options;
    options.chunkSize = chunk;
    std::unique_ptr<exec::Executor> fused = open(pair.gpu, options);
    options.fusedResidualNorms = false;
    std::unique_ptr<exec::Executor> separate = open(pair.gpu, options);
    ASSERT_TRUE(fused && separate);
    const std::vector<int32_t> prompt = cpu::test::sampleTokens(19, 5);
    StatusOr<std::vector<float>> a = fused->forward(prompt, true),
                                 b = separate->forward(prompt, true);
    ASSERT_TRUE(a.ok()) << a.message();
    ASSERT_TRUE(b.ok()) << b.message();
    ASSERT_EQ(a->size(), b->size());
    EXPECT_EQ(std::memcmp(a->data(), b->data(), a->size() * 4), 0) << "prefill logits differ";
    int32_t next = argmax(*a, prompt.size() - 1, fused->vocabSize());
    for (int step = 0; step < 4; ++step) {
      a = fused->forward({next});
      b = separate->forward({next});
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(std::memcmp(a->data(), b->data(), a->size() * 4), 0) << "decode step " << step;
      next = argmax(*a, 0, fused->vocabSize());
    }
  }
}

// Sequences stepped together share the matrix products (one step for all
// rows, attention per sequence); each gets the logits it would alone, in
// prefill and in batched decode steps.
TEST(HybridExecutor, BatchedSequencesMatchSeparateRuns) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-batch", *gen::presetConfig("tiny"), pair);
  exec::ExecutorOptions options;
  options.sequences = 3;
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu, options);
  ASSERT_TRUE(gpu);
  const int64_t vocab = gpu->vocabSize();
  const std::vector<std::vector<int32_t>> prompts = {
      cpu::test::sampleTokens(6, 1), cpu::test::sampleTokens(9, 2), cpu::test::sampleTokens(1, 3)};
  std::vector<std::unique_ptr<exec::Executor>> alone;
  std::vector<std::vector<float>> expected;
  for (const std::vector<int32_t> &prompt : prompts) {
    alone.push_back(open(pair.gpu));
    StatusOr<std::vector<float>> logits = alone.back()->forward(prompt);
    ASSERT_TRUE(logits.ok()) << logits.message();
    expected.push_back(*logits);
  }
  StatusOr<std::vector<float>> batched =
      gpu->forwardBatch({{0, prompts[0]}, {1, prompts[1]}, {2, prompts[2]}});
  ASSERT_TRUE(batched.ok()) << batched.message();
  for (int step = 0; step < 4; ++step) {
    std::vector<exec::SequenceTokens> next;
    for (size_t i = 0; i < prompts.size(); ++i) {
      std::vector<float> row(batched->begin() + long(i * vocab),
                             batched->begin() + long((i + 1) * vocab));
      EXPECT_LE(cpu::test::relativeL2(row, expected[i]), 1e-5)
          << "sequence " << i << ", step " << step;
      const int32_t token = argmax(expected[i], 0, vocab);
      next.push_back({int(i), {token}});
      StatusOr<std::vector<float>> single = alone[i]->forward({token});
      ASSERT_TRUE(single.ok()) << single.message();
      expected[i] = *single;
    }
    batched = gpu->forwardBatch(next); // one decode step for all three
    ASSERT_TRUE(batched.ok()) << batched.message();
  }
  EXPECT_EQ(gpu->position(0), 10);
  EXPECT_EQ(gpu->position(1), 13);
  EXPECT_EQ(gpu->position(2), 5);
  // The batch's decode steps replayed graphs of their own.
  EXPECT_GT(dynamic_cast<HybridExecutor &>(*gpu).graphStats().launched, 0u);
}

// Decode's MoE-layer clock (ktrun --bench's steady-state time per MoE
// layer): one interval per pair of consecutive CPU-expert layers per decode
// step (the tiny model has 2 MoE layers), none from prefill; cleared on
// request. Each interval covers a layer's experts and the next layer's
// attention, so it is longer than the expert step alone.
TEST(HybridExecutor, TimesDecodeFromOneMoeLayerToTheNext) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-layer-clock", *gen::presetConfig("tiny"), pair);
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu);
  ASSERT_TRUE(gpu);
  ASSERT_TRUE(gpu->forward(cpu::test::sampleTokens(9, 4)).ok());
  EXPECT_EQ(gpu->moeLayerTiming().intervals, 0);
  for (int step = 0; step < 5; ++step)
    ASSERT_TRUE(gpu->forward({int32_t(step + 1)}).ok());
  exec::MoeLayerTiming timing = gpu->moeLayerTiming();
  EXPECT_EQ(timing.intervals, 5);
  EXPECT_GT(timing.seconds, 0.0);
  // The experts' part: each interval's first layer, less than the interval.
  EXPECT_GT(timing.expertSeconds, 0.0);
  EXPECT_LT(timing.expertSeconds, timing.seconds);
  EXPECT_EQ(timing.gpuIntervals, 0); // the GPU clock is off unless asked for
  // With the GPU clock: the GPU's part of each interval, within what remains
  // of it beside the experts.
  gpu->setMoeLayerGpuClock(true);
  gpu->clearMoeLayerTiming();
  for (int step = 0; step < 5; ++step)
    ASSERT_TRUE(gpu->forward({int32_t(step + 6)}).ok());
  timing = gpu->moeLayerTiming();
  EXPECT_EQ(timing.gpuIntervals, timing.intervals);
  EXPECT_GT(timing.gpuSeconds, 0.0);
  EXPECT_LT(timing.gpuSeconds, timing.seconds - timing.expertSeconds);
  gpu->clearMoeLayerTiming();
  EXPECT_EQ(gpu->moeLayerTiming().intervals, 0);
  EXPECT_EQ(gpu->moeLayerTiming().seconds, 0.0);
  EXPECT_EQ(gpu->moeLayerTiming().expertSeconds, 0.0);
}

// The shared expert runs on the GPU while the CPU computes the routed
// experts: it is queued after the copies of the routed experts' inputs to
// the host (a copy waits for every kernel queued before it) and before the
// routed experts; the gate, whose choices those copies read, before them.
TEST(HybridExecutor, QueuesTheSharedExpertAfterTheCopiesToTheHost) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-queue", *gen::presetConfig("tiny"), pair);
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu);
  ASSERT_TRUE(gpu);
  const std::vector<size_t> order = dynamic_cast<HybridExecutor &>(*gpu).queueOrder();
  const std::vector<plan::Op> &ops = pair.gpu.plan.ops;
  ASSERT_EQ(order.size(), ops.size());
  std::vector<size_t> position(ops.size());
  for (size_t i = 0; i < order.size(); ++i)
    position[order[i]] = i;
  auto producer = [&](int value) {
    for (size_t i = 0; i < ops.size(); ++i)
      if (std::find(ops[i].outputs.begin(), ops[i].outputs.end(), value) != ops[i].outputs.end())
        return i;
    return ops.size();
  };
  int layers = 0;
  for (size_t r = 0; r < ops.size(); ++r) {
    if (ops[r].kind != "routed_experts")
      continue;
    const std::string layer = ops[r].path.substr(0, ops[r].path.rfind(".experts"));
    size_t shared = ops.size(), gate = ops.size();
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].path == layer + ".shared_experts")
        shared = i;
      if (ops[i].path == layer + ".gate")
        gate = i;
    }
    ASSERT_LT(shared, ops.size()) << layer;
    ASSERT_LT(gate, ops.size()) << layer;
    EXPECT_LT(position[shared], position[r]) << layer;
    for (int input : ops[r].inputs) {
      const size_t copy = producer(input);
      ASSERT_LT(copy, ops.size());
      EXPECT_EQ(ops[copy].kind, "transfer");
      EXPECT_LT(position[copy], position[shared]) << layer << ": the copy of value " << input;
      EXPECT_LT(position[gate], position[copy]) << layer;
    }
    ++layers;
  }
  EXPECT_EQ(layers, 2);
}

// Greedy decoding on the GPU (the plan's argmax kernel): the ids are the
// argmax of the logits forwardBatch() returns, for a batch and in decode.
TEST(HybridExecutor, GreedyIdsAreTheArgmaxOfTheLogits) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-greedy", *gen::presetConfig("tiny"), pair);
  exec::ExecutorOptions options;
  options.sequences = 2;
  std::unique_ptr<exec::Executor> greedy = open(pair.gpu, options), full = open(pair.gpu, options);
  ASSERT_TRUE(greedy && full);
  std::vector<exec::SequenceTokens> step = {{0, cpu::test::sampleTokens(7, 1)},
                                            {1, cpu::test::sampleTokens(4, 2)}};
  const int64_t vocab = full->vocabSize();
  for (int round = 0; round < 4; ++round) {
    StatusOr<std::vector<int32_t>> ids = greedy->forwardGreedy(step);
    StatusOr<std::vector<float>> logits = full->forwardBatch(step);
    ASSERT_TRUE(ids.ok()) << ids.message();
    ASSERT_TRUE(logits.ok()) << logits.message();
    ASSERT_EQ(ids->size(), 2u);
    for (size_t i = 0; i < 2; ++i)
      EXPECT_EQ((*ids)[i], argmax(*logits, i, vocab)) << "round " << round << ", sequence " << i;
    step = {{0, {(*ids)[0]}}, {1, {(*ids)[1]}}};
  }
  EXPECT_EQ(greedy->position(0), full->position(0));
}

// Sampling at a temperature on the GPU (sample_rows, which the plan lists)
// draws what the host rule draws from the logits forwardBatch() returns,
// for a batch whose entries sample differently, in prefill and decode.
TEST(HybridExecutor, SampledIdsAreTheHostRulesDrawsFromTheLogits) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-sampled", *gen::presetConfig("tiny"), pair);
  ASSERT_TRUE(std::any_of(pair.gpu.plan.kernelSpecializations.begin(),
                          pair.gpu.plan.kernelSpecializations.end(),
                          [](const plan::KernelSpecialization &k) {
                            return k.entry == "sample_rows";
                          }));
  exec::ExecutorOptions options;
  options.sequences = 3;
  std::unique_ptr<exec::Executor> sampled = open(pair.gpu, options), full = open(pair.gpu, options);
  ASSERT_TRUE(sampled && full);
  std::vector<exec::SequenceTokens> step = {{0, cpu::test::sampleTokens(7, 1)},
                                            {1, cpu::test::sampleTokens(4, 2)},
                                            {2, cpu::test::sampleTokens(5, 3)}};
  const int64_t vocab = full->vocabSize();
  int same = 0, total = 0;
  for (int round = 0; round < 8; ++round) {
    const std::vector<exec::TokenSampling> draws = {{0.8f, 0, 0.9f, 11, uint64_t(round)},
                                                    {1.5f, 20, 1.0f, 12, uint64_t(round)},
                                                    {0.0f, 0, 1.0f, 13, uint64_t(round)}};
    StatusOr<std::vector<int32_t>> ids = sampled->forwardSampled(step, draws);
    StatusOr<std::vector<float>> logits = full->forwardBatch(step);
    ASSERT_TRUE(ids.ok()) << ids.message();
    ASSERT_TRUE(logits.ok()) << logits.message();
    ASSERT_EQ(ids->size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      same += (*ids)[i] == exec::sampleToken(logits->data() + i * size_t(vocab), vocab, draws[i]);
      ++total;
    }
    EXPECT_EQ((*ids)[2], argmax(*logits, 2, vocab)) << "greedy entry, round " << round;
    step = {{0, {(*ids)[0]}}, {1, {(*ids)[1]}}, {2, {(*ids)[2]}}};
  }
  std::printf("[ gpu      ] sampled on the GPU: %d of %d draws as the host rule's\n", same, total);
  EXPECT_GE(same, total - 1);
}

// Batched decode replayed as CUDA graphs gives the logits of batched decode
// launched kernel by kernel, bit for bit, also when the batch changes.
TEST(HybridExecutor, BatchedDecodeGraphsReplayExactly) {
  KT_REQUIRE_GPU();
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.layerCount = 6;
  ModelPair pair;
  buildPair("tiny-batch-graphs", config, pair, "rules/DeepSeek-V3-Chat-gpu-experts-4-10.yaml");
  exec::ExecutorOptions graphed, plain;
  graphed.sequences = plain.sequences = 3;
  plain.cudaGraphs = false;
  std::unique_ptr<exec::Executor> a = open(pair.gpu, graphed), b = open(pair.gpu, plain);
  ASSERT_TRUE(a && b);
  const std::vector<exec::SequenceTokens> prompts = {
      {0, cpu::test::sampleTokens(5, 1)}, {1, cpu::test::sampleTokens(7, 2)},
      {2, cpu::test::sampleTokens(3, 3)}};
  StatusOr<std::vector<float>> x = a->forwardBatch(prompts), y = b->forwardBatch(prompts);
  ASSERT_TRUE(x.ok() && y.ok());
  const int64_t vocab = a->vocabSize();
  // Steps of all three, then of two (another batch, so other graphs), twice each.
  for (const std::vector<int> &batch :
       {std::vector<int>{0, 1, 2}, {0, 1, 2}, {0, 2}, {0, 2}, {0, 1, 2}}) {
    std::vector<exec::SequenceTokens> step;
    for (int sequence : batch)
      step.push_back({sequence, {int32_t((sequence * 7 + a->position(sequence)) % vocab)}});
    x = a->forwardBatch(step);
    y = b->forwardBatch(step);
    ASSERT_TRUE(x.ok()) << x.message();
    ASSERT_TRUE(y.ok()) << y.message();
    EXPECT_EQ(*x, *y);
  }
  const HybridExecutor::GraphStats stats = dynamic_cast<HybridExecutor &>(*a).graphStats();
  EXPECT_GT(stats.launched, stats.captured) << "the repeated batches replayed their graphs";
  EXPECT_EQ(dynamic_cast<HybridExecutor &>(*b).graphStats().launched, 0u);
}

// The server steps the model on its scheduler thread, not the one that
// loaded it.
TEST(HybridExecutor, RunsOnAnotherThreadThanTheOneThatCreatedIt) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-thread", *gen::presetConfig("tiny"), pair);
  exec::ExecutorOptions options;
  options.sequences = 2;
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu, options), reference = open(pair.gpu);
  ASSERT_TRUE(gpu && reference);
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(7, 5);
  StatusOr<std::vector<float>> expected = reference->forward(prompt);
  ASSERT_TRUE(expected.ok()) << expected.message();
  std::vector<float> prefilled;
  std::string error;
  std::thread worker([&] {
    StatusOr<std::vector<float>> step = gpu->forwardBatch({{0, prompt}, {1, prompt}});
    if (step.ok())
      prefilled = *step;
    for (int i = 0; step.ok() && i < 3; ++i) // decode steps: graphs captured on this thread
      step = gpu->forwardBatch({{0, {int32_t(i + 1)}}, {1, {int32_t(i + 1)}}});
    if (!step.ok())
      error = step.message();
  });
  worker.join();
  ASSERT_EQ(error, "");
  const size_t vocab = size_t(gpu->vocabSize());
  ASSERT_EQ(prefilled.size(), 2 * vocab);
  // Batched rows share token tiles in the GEMVs: equal up to f32 rounding.
  EXPECT_LE(cpu::test::relativeL2(
                std::vector<float>(prefilled.begin(), prefilled.begin() + long(vocab)), *expected),
            1e-5);
  EXPECT_LE(cpu::test::relativeL2(
                std::vector<float>(prefilled.begin() + long(vocab), prefilled.end()), *expected),
            1e-5);
  EXPECT_EQ(gpu->position(0), 10);
  // Back on this thread, the same executor goes on.
  StatusOr<std::vector<float>> more = gpu->forwardBatch({{0, {9}}});
  EXPECT_TRUE(more.ok()) << more.message();
}

TEST(HybridExecutor, CountsExpertSelectionsAndReportsKernels) {
  KT_REQUIRE_GPU();
  ModelPair pair;
  buildPair("tiny-stats", *gen::presetConfig("tiny"), pair);
  std::unique_ptr<exec::Executor> gpu = open(pair.gpu), cpu = open(pair.cpu);
  ASSERT_TRUE(gpu && cpu);
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(12, 3);
  ASSERT_TRUE(gpu->forward(prompt).ok());
  ASSERT_TRUE(cpu->forward(prompt).ok());
  std::vector<exec::RoutingStats> g = gpu->routingStats(), c = cpu->routingStats();
  ASSERT_EQ(g.size(), c.size());
  for (size_t i = 0; i < g.size(); ++i) {
    EXPECT_EQ(g[i].path, c[i].path);
    EXPECT_EQ(g[i].selections, c[i].selections) << g[i].path;
  }
  // A second executor finds every kernel in the cache the first filled.
  std::unique_ptr<exec::Executor> again = open(pair.gpu);
  ASSERT_TRUE(again);
  const auto &stats = dynamic_cast<HybridExecutor &>(*again).kernelLoadStats();
  EXPECT_GT(stats.kernels, 5u);
  EXPECT_EQ(stats.compiled, 0u);
  EXPECT_EQ(stats.fromCache, stats.kernels);
  EXPECT_NE(exec::kernelLoadSummary(*again).find("from the cache"), std::string::npos);
}

TEST(HybridExecutor, RefusesAPlanForAnotherGpuArchitecture) {
  KT_REQUIRE_GPU();
  const std::string arch = gpus()[0].arch() == "sm_80" ? "sm_89" : "sm_80";
  TestModel m;
  cpu::test::buildModel("tiny-arch", *gen::presetConfig("tiny"), m, "rules/DeepSeek-V3-Chat.yaml",
                        arch + ":24GiB");
  expectRefusalSays(m, {}, {"was compiled for " + arch, "--target-gpu"});
}

TEST(HybridExecutor, RefusesAPlanThatDoesNotListItsKernels) {
  KT_REQUIRE_GPU();
  TestModel m;
  cpu::test::buildModel("tiny-unlisted", *gen::presetConfig("tiny"), m,
                        "rules/DeepSeek-V3-Chat.yaml", targetGpu());
  m.plan.kernelSpecializations.erase(m.plan.kernelSpecializations.begin());
  expectRefusalSays(m, {}, {"does not list", "Recompile"});
}

// A GGUF model with its FP8 checkpoint (kt-export-hf --fp8) and the plan of
// the FP8-linear + GGUF-experts rules; `gguf` is the GGUF-only GPU plan.
void buildFp8Plan(const std::string &name, TestModel &gguf, plan::Plan &fp8Plan,
                  const std::string &target = targetGpu()) {
  cpu::test::buildModel(name, *gen::presetConfig("tiny"), gguf, "rules/DeepSeek-V3-Chat.yaml",
                        target);
  const std::string tools = KT_TOOLS_DIR, checkpoint = gguf.ggufPath + ".fp8",
                    planPath = gguf.ggufPath + ".fp8.plan";
  const std::string exportCommand =
      "'" + tools + "/kt-export-hf' '" + gguf.ggufPath + "' -o '" + checkpoint + "' --fp8 -q";
  ASSERT_EQ(std::system(exportCommand.c_str()), 0) << exportCommand;
  const std::string compileCommand =
      "'" + tools + "/ktc' compile --gguf-path '" + gguf.ggufPath + "' --fp8-path '" + checkpoint +
      "' --optimize-config-path '" + KT_SOURCE_DIR +
      "/rules/DeepSeek-V3-Chat-fp8-linear-ggml-experts.yaml' --target-gpu " + target +
      " --f32-cpu-experts -o '" + planPath + "' 2>/dev/null";
  ASSERT_EQ(std::system(compileCommand.c_str()), 0) << compileCommand;
  StatusOr<plan::Plan> read = plan::readPlan(planPath);
  ASSERT_TRUE(read.ok()) << read.message();
  fp8Plan = std::move(*read);
}

// The attention, dense and shared-expert projections read the checkpoint's
// e4m3 weights (gemv_fp8, on f32 activations also in prefill here). The
// reference is the same model with those projections replaced by their
// dequantized values in f32 (a GGUF written here), run through the GGUF GPU
// path: the two differ by f32 rounding only.
TEST(HybridExecutor, Fp8ProjectionsMatchTheirDequantizedWeights) {
  KT_REQUIRE_GPU();
  TestModel gguf;
  plan::Plan fp8Plan;
  buildFp8Plan("tiny-fp8", gguf, fp8Plan);
  StatusOr<std::unique_ptr<safetensors::Checkpoint>> checkpoint =
      safetensors::Checkpoint::open(fp8Plan.model.fp8->path);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.message();

  // GGUF tensor name -> the FP8 tensor that replaces it, by (module, role).
  std::map<std::string, std::string> replaced;
  for (size_t i = 0; i < fp8Plan.ops.size(); ++i)
    for (const plan::Weight &weight : fp8Plan.ops[i].weights)
      if (weight.type == "f8_e4m3")
        for (const plan::Op &op : gguf.plan.ops)
          if (op.path == fp8Plan.ops[i].path)
            for (const plan::Weight &original : op.weights)
              if (original.role == weight.role)
                replaced[original.tensor] = weight.tensor;
  ASSERT_GT(replaced.size(), 10u);
  gguf::GgufWriter writer;
  for (const gguf::KeyValue &entry : gguf.model->metadata())
    writer.addValue(entry.key, entry.value);
  for (const gguf::TensorInfo &tensor : gguf.model->tensors()) {
    auto it = replaced.find(tensor.name);
    if (it == replaced.end()) {
      writer.addTensor(tensor.name, tensor.ne, tensor.type,
                       std::vector<uint8_t>(tensor.data, tensor.data + tensor.nbytes));
      continue;
    }
    const safetensors::TensorInfo *weight = (*checkpoint)->findTensor(it->second);
    const safetensors::TensorInfo *scale = (*checkpoint)->findTensor(it->second + "_scale_inv");
    ASSERT_TRUE(weight && scale) << it->second;
    std::vector<float> values(size_t(weight->elements()));
    ASSERT_TRUE(safetensors::dequantize(*weight, scale, 128, values.data()).ok());
    std::vector<uint8_t> bytes(values.size() * 4);
    std::memcpy(bytes.data(), values.data(), bytes.size());
    writer.addTensor(tensor.name, tensor.ne, gguf::GgmlType::F32, std::move(bytes));
  }
  const std::string dequantizedPath = gguf.ggufPath + ".dequantized.gguf";
  ASSERT_TRUE(writer.write(dequantizedPath).ok());
  const std::string planPath = dequantizedPath + ".plan";
  const std::string compile = "'" + std::string(KT_TOOLS_DIR) + "/ktc' compile --gguf-path '" +
                              dequantizedPath + "' --optimize-config-path '" + KT_SOURCE_DIR +
                              "/rules/DeepSeek-V3-Chat.yaml' --target-gpu " + targetGpu() +
                              " --f32-cpu-experts -o '" + planPath + "' 2>/dev/null";
  ASSERT_EQ(std::system(compile.c_str()), 0) << compile;
  StatusOr<plan::Plan> referencePlan = plan::readPlan(planPath);
  ASSERT_TRUE(referencePlan.ok()) << referencePlan.message();
  StatusOr<std::unique_ptr<gguf::GgufModel>> dequantized = gguf::GgufModel::open(dequantizedPath);
  ASSERT_TRUE(dequantized.ok()) << dequantized.message();

  exec::ExecutorOptions options;
  options.threads = 2;
  options.fp8Gemm = false;
  StatusOr<std::unique_ptr<exec::Executor>> fp8 =
      exec::createExecutor(fp8Plan, *gguf.model, options);
  StatusOr<std::unique_ptr<exec::Executor>> reference =
      exec::createExecutor(*referencePlan, **dequantized, options);
  ASSERT_TRUE(fp8.ok()) << fp8.message();
  ASSERT_TRUE(reference.ok()) << reference.message();
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(12, 9);
  StatusOr<std::vector<float>> a = (*fp8)->forward(prompt, true),
                               b = (*reference)->forward(prompt, true);
  ASSERT_TRUE(a.ok()) << a.message();
  ASSERT_TRUE(b.ok()) << b.message();
  const int64_t vocab = (*reference)->vocabSize();
  const double prefill = cpu::test::relativeL2(*a, *b);
  double decode = 0;
  int32_t next = argmax(*b, prompt.size() - 1, vocab);
  for (int step = 0; step < 8; ++step) {
    a = (*fp8)->forward({next});
    b = (*reference)->forward({next});
    ASSERT_TRUE(a.ok()) << a.message();
    ASSERT_TRUE(b.ok()) << b.message();
    decode = std::max(decode, cpu::test::relativeL2(*a, *b));
    ASSERT_EQ(argmax(*a, 0, vocab), argmax(*b, 0, vocab)) << "decode step " << step;
    next = argmax(*b, 0, vocab);
  }
  EXPECT_LE(prefill, 1e-4);
  EXPECT_LE(decode, 1e-4);
  std::printf("[ gpu      ] FP8 projections against their dequantized weights: prefill relative "
              "L2 %.2e, decode worst %.2e\n",
              prefill, decode);
}

// On sm_90a, steps of more than one token multiply the FP8 projections
// with the wgmma GEMM on activations quantized per token and 128 columns
// (the kernel itself is checked exactly in cuda_tests). The quantization is
// per token, so prefill in chunks of 64 (row tiles, splits and scale
// strides change) gives the logits of one 200-token step up to f32
// rounding, which the quantization amplifies where a value's rounding to
// e4m3 flips (6.8e-4 on the H100; a wrong stride or row offset gives 1e-1).
// Against the GEMV on f32 activations the logits move by the quantization
// (e4m3 keeps 3 mantissa bits), and decode continues from the cache the
// GEMM filled.
TEST(HybridExecutor, Fp8PrefillGemmIsPerTokenAndNearTheGemvOnF32Activations) {
  KT_REQUIRE_GPU();
  if (targetGpu().rfind("sm_90a", 0) != 0)
    GTEST_SKIP() << "the FP8 GEMM runs on sm_90a, not " << targetGpu();
  TestModel gguf;
  plan::Plan fp8Plan;
  buildFp8Plan("tiny-fp8-gemm", gguf, fp8Plan);
  exec::ExecutorOptions options;
  options.threads = 2;
  // The chunks would switch the q8_0 matrices' kernels and the CPU experts'.
  options.ggufTensorCores = false;
  options.expertTileTokens = 0;
  StatusOr<std::unique_ptr<exec::Executor>> gemm =
      exec::createExecutor(fp8Plan, *gguf.model, options);
  options.chunkSize = 64;
  StatusOr<std::unique_ptr<exec::Executor>> chunked =
      exec::createExecutor(fp8Plan, *gguf.model, options);
  options.chunkSize = 0;
  options.fp8Gemm = false;
  StatusOr<std::unique_ptr<exec::Executor>> gemv =
      exec::createExecutor(fp8Plan, *gguf.model, options);
  ASSERT_TRUE(gemm.ok()) << gemm.message();
  ASSERT_TRUE(chunked.ok()) << chunked.message();
  ASSERT_TRUE(gemv.ok()) << gemv.message();
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(200, 11);
  StatusOr<std::vector<float>> a = (*gemm)->forward(prompt, true),
                               c = (*chunked)->forward(prompt, true),
                               b = (*gemv)->forward(prompt, true);
  ASSERT_TRUE(a.ok()) << a.message();
  ASSERT_TRUE(c.ok()) << c.message();
  ASSERT_TRUE(b.ok()) << b.message();
  const int64_t vocab = (*gemv)->vocabSize();
  const double chunking = cpu::test::relativeL2(*c, *a);
  const double prefill = cpu::test::relativeL2(*a, *b);
  size_t agree = 0;
  for (size_t row = 0; row < prompt.size(); ++row)
    agree += argmax(*a, row, vocab) == argmax(*b, row, vocab);
  double decode = 0;
  int32_t next = argmax(*b, prompt.size() - 1, vocab);
  for (int step = 0; step < 4; ++step) {
    a = (*gemm)->forward({next});
    b = (*gemv)->forward({next});
    ASSERT_TRUE(a.ok() && b.ok());
    decode = std::max(decode, cpu::test::relativeL2(*a, *b));
    next = argmax(*b, 0, vocab);
  }
  std::printf("[ gpu      ] FP8 GEMM prefill: in chunks of 64 against one step %.2e; against the "
              "GEMV on f32 activations %.2e, same top token at %zu of %zu positions; decode "
              "after it %.2e\n",
              chunking, prefill, agree, prompt.size(), decode);
  EXPECT_LE(chunking, 3e-3);
  EXPECT_GT(prefill, 1e-6); // the activations were quantized: the GEMM ran
  EXPECT_LE(prefill, 0.25);
  EXPECT_GE(agree, prompt.size() * 7 / 10);
  EXPECT_LE(decode, 0.1);
}

// ktc marks the norms whose results the FP8 GEMM multiplies
// (kt-fuse-norm-quantize); on sm_90a each such norm writes the GEMM's
// quantized activations in its own pass. They are the bytes the GEMM would
// have made, so prefill (one step, and in chunks of 64) and the decode after
// it give the same bits as with the quantization in a kernel of its own.
TEST(HybridExecutor, Fp8NormsQuantizeForTheGemmWithTheSameResults) {
  KT_REQUIRE_GPU();
  if (targetGpu().rfind("sm_90a", 0) != 0)
    GTEST_SKIP() << "the FP8 GEMM runs on sm_90a, not " << targetGpu();
  TestModel gguf;
  plan::Plan fp8Plan;
  buildFp8Plan("tiny-fp8-fused", gguf, fp8Plan);
  const auto marked = std::count_if(fp8Plan.ops.begin(), fp8Plan.ops.end(), [](const plan::Op &op) {
    auto it = op.params.find("quantize_fp8");
    return (op.kind == "rms_norm" || op.kind == "add_rms_norm") && it != op.params.end() &&
           std::get<bool>(it->second);
  });
  EXPECT_GE(marked, 2); // attention norms of every layer, the dense layer's MLP norm, ...
  for (int64_t chunk : {0, 64}) {
    SCOPED_TRACE(chunk);
    exec::ExecutorOptions options;
    options.threads = 2;
    options.chunkSize = chunk;
    StatusOr<std::unique_ptr<exec::Executor>> fused =
        exec::createExecutor(fp8Plan, *gguf.model, options);
    options.fusedNormQuantization = false;
    StatusOr<std::unique_ptr<exec::Executor>> separate =
        exec::createExecutor(fp8Plan, *gguf.model, options);
    ASSERT_TRUE(fused.ok()) << fused.message();
    ASSERT_TRUE(separate.ok()) << separate.message();
    const std::vector<int32_t> prompt = cpu::test::sampleTokens(150, 13);
    StatusOr<std::vector<float>> a = (*fused)->forward(prompt, true),
                                 b = (*separate)->forward(prompt, true);
    ASSERT_TRUE(a.ok()) << a.message();
    ASSERT_TRUE(b.ok()) << b.message();
    ASSERT_EQ(a->size(), b->size());
    EXPECT_EQ(std::memcmp(a->data(), b->data(), a->size() * 4), 0) << "prefill logits differ";
    const uint64_t runs = dynamic_cast<HybridExecutor &>(**fused).fusedNormQuantizations();
    EXPECT_GE(runs, uint64_t(marked) * (chunk ? 3 : 1)); // each marked norm, each chunk
    EXPECT_EQ(dynamic_cast<HybridExecutor &>(**separate).fusedNormQuantizations(), 0u);
    int32_t next = argmax(*a, prompt.size() - 1, (*fused)->vocabSize());
    for (int step = 0; step < 3; ++step) {
      a = (*fused)->forward({next});
      b = (*separate)->forward({next});
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(std::memcmp(a->data(), b->data(), a->size() * 4), 0) << "decode step " << step;
      next = argmax(*a, 0, (*fused)->vocabSize());
    }
    // Decode steps (one token) take the FP8 GEMV: no fused runs.
    EXPECT_EQ(dynamic_cast<HybridExecutor &>(**fused).fusedNormQuantizations(), runs);
  }
}

// A plan whose FP8 GEMMs were specialized by another ktc (here: without
// the promotion behind the products, as before it was the default) is
// refused with what to do, not run on the slower GEMV.
TEST(HybridExecutor, RefusesAnFp8PlanWithAnotherVersionsGemms) {
  KT_REQUIRE_GPU();
  if (targetGpu().rfind("sm_90a", 0) != 0)
    GTEST_SKIP() << "the FP8 GEMM runs on sm_90a, not " << targetGpu();
  TestModel gguf;
  plan::Plan fp8Plan;
  buildFp8Plan("tiny-fp8-old-gemm", gguf, fp8Plan);
  size_t changed = 0;
  for (plan::KernelSpecialization &k : fp8Plan.kernelSpecializations)
    if (k.entry == "gemm_fp8")
      changed += k.defines.erase("PROMOTE_BEHIND");
  ASSERT_GT(changed, 0u);
  StatusOr<std::unique_ptr<exec::Executor>> executor =
      exec::createExecutor(fp8Plan, *gguf.model, {});
  ASSERT_FALSE(executor.ok());
  EXPECT_NE(executor.message().find("another version of ktc"), std::string::npos)
      << executor.message();
}

// Runs everywhere: which plan entries count as another version's kernel.
TEST(PlanListsOtherVersionOf, SameKernelAndShapeWithOtherConstants) {
  StatusOr<KernelSpec> spec = gemmFp8Spec(1536, 7168);
  ASSERT_TRUE(spec.ok()) << spec.message();
  plan::Plan plan;
  plan::KernelSpecialization listed{spec->entry, spec->file, spec->defines, "sm_90a", "", {}};
  plan.kernelSpecializations.push_back(listed);
  const std::vector<std::string> shape = {"N_FEATURES", "K_FEATURES", "BLOCK_N", "GROUPED"};
  // Listed exactly: not another version.
  EXPECT_FALSE(planListsOtherVersionOf(plan, *spec, "sm_90a", shape));
  // Other constants of the same shape: another version.
  plan.kernelSpecializations[0].defines["STAGES"] = "7";
  EXPECT_TRUE(planListsOtherVersionOf(plan, *spec, "sm_90a", shape));
  // Another arch, another shape, or the grouped form: not this kernel.
  EXPECT_FALSE(planListsOtherVersionOf(plan, *spec, "sm_80", shape));
  plan.kernelSpecializations[0].defines["N_FEATURES"] = "2048";
  EXPECT_FALSE(planListsOtherVersionOf(plan, *spec, "sm_90a", shape));
  plan.kernelSpecializations[0].defines["N_FEATURES"] = "1536";
  plan.kernelSpecializations[0].defines["GROUPED"] = "1";
  EXPECT_FALSE(planListsOtherVersionOf(plan, *spec, "sm_90a", shape));
}

// A plan for compute_80 (PTX the driver compiles for this GPU) runs steps
// of 32 tokens or more through the bf16 mma GEMM of GPUs without FP8 tensor
// cores: its logits stay near those of the GEMV on f32 activations (bf16
// rounds the activations to 8 bits of mantissa; 3.6e-3 on the H100).
TEST(HybridExecutor, Fp8Bf16GemmOfAComputePtxPlanIsNearTheGemv) {
  KT_REQUIRE_GPU();
  std::string whyNone;
  if (queryGpus(whyNone)[0].computeMajor < 8)
    GTEST_SKIP() << "the bf16 GEMM needs sm_80";
  TestModel gguf;
  plan::Plan fp8Plan;
  buildFp8Plan("tiny-fp8-bf16", gguf, fp8Plan, "compute_80:80GiB");
  ASSERT_TRUE(std::any_of(fp8Plan.kernelSpecializations.begin(),
                          fp8Plan.kernelSpecializations.end(),
                          [](const plan::KernelSpecialization &k) {
                            return k.entry == "gemm_fp8_bf16" && k.arch == "compute_80";
                          }));
  exec::ExecutorOptions options;
  options.threads = 2;
  StatusOr<std::unique_ptr<exec::Executor>> gemm =
      exec::createExecutor(fp8Plan, *gguf.model, options);
  options.fp8Gemm = false;
  StatusOr<std::unique_ptr<exec::Executor>> gemv =
      exec::createExecutor(fp8Plan, *gguf.model, options);
  ASSERT_TRUE(gemm.ok()) << gemm.message();
  ASSERT_TRUE(gemv.ok()) << gemv.message();
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(150, 12);
  StatusOr<std::vector<float>> a = (*gemm)->forward(prompt, true),
                               b = (*gemv)->forward(prompt, true);
  ASSERT_TRUE(a.ok()) << a.message();
  ASSERT_TRUE(b.ok()) << b.message();
  const int64_t vocab = (*gemv)->vocabSize();
  const double prefill = cpu::test::relativeL2(*a, *b);
  size_t agree = 0;
  for (size_t row = 0; row < prompt.size(); ++row)
    agree += argmax(*a, row, vocab) == argmax(*b, row, vocab);
  std::printf("[ gpu      ] bf16 FP8 GEMM (compute_80 plan) against the GEMV: relative L2 %.2e, "
              "same top token at %zu of %zu positions\n",
              prefill, agree, prompt.size());
  EXPECT_GT(prefill, 1e-7); // the activations were rounded: the GEMM ran
  EXPECT_LE(prefill, 0.03);
  EXPECT_GE(agree, prompt.size() * 9 / 10);
}

// The checkpoint alone as the model: opened, and compiled with `rules` for
// `target` (`flags` appended) into `planPath`.
void buildCheckpointModel(const std::string &checkpoint, const std::string &planPath,
                          const std::string &rules, const std::string &target,
                          const std::string &flags, TestModel &m) {
  StatusOr<std::unique_ptr<gguf::GgufModel>> view = model::openModel(checkpoint);
  ASSERT_TRUE(view.ok()) << view.message();
  m.model = std::move(*view);
  m.planPath = planPath;
  ASSERT_NO_FATAL_FAILURE(cpu::test::compilePlan("--fp8-path '" + checkpoint + "'", planPath,
                                                 rules, target, flags));
  StatusOr<plan::Plan> read = plan::readPlan(planPath);
  ASSERT_TRUE(read.ok()) << read.message();
  m.plan = std::move(*read);
}

// The checkpoint model's GGUF twin: its values written as `weights` says to
// `name`.gguf beside the checkpoint, with the checkpoint for its projections
// (--fp8-path), compiled like it.
void buildGgufTwin(const TestModel &alone, const std::string &checkpoint, const std::string &name,
                   cpu::test::CheckpointWeights weights, const std::string &rules,
                   const std::string &target, TestModel &twin) {
  twin.ggufPath =
      cpu::test::writeCheckpointAsGguf(*alone.model, checkpoint + "." + name + ".gguf", weights);
  twin.planPath = checkpoint + "." + name + ".plan";
  ASSERT_NO_FATAL_FAILURE(cpu::test::compilePlan(
      "--gguf-path '" + twin.ggufPath + "' --fp8-path '" + checkpoint + "'", twin.planPath, rules,
      target));
  StatusOr<std::unique_ptr<gguf::GgufModel>> model = gguf::GgufModel::open(twin.ggufPath);
  ASSERT_TRUE(model.ok()) << model.message();
  twin.model = std::move(*model);
  StatusOr<plan::Plan> read = plan::readPlan(twin.planPath);
  ASSERT_TRUE(read.ok()) << read.message();
  twin.plan = std::move(*read);
}

// Prefill of `prompt` (every position), then `steps` greedy decode steps fed
// from `b`'s choices: the relative L2 of `a`'s logits against `b`'s, in
// prefill and at the worst decode step, and `a`'s prefill logits. With
// `sameTokens`, their top tokens must agree at every decode step.
struct RunDifference {
  double prefill = 0, decode = 0;
  std::vector<float> prefillLogits;
};
void compareRuns(exec::Executor &a, exec::Executor &b, const std::vector<int32_t> &prompt,
                 int steps, bool sameTokens, RunDifference &out) {
  StatusOr<std::vector<float>> x = a.forward(prompt, true), y = b.forward(prompt, true);
  ASSERT_TRUE(x.ok()) << x.message();
  ASSERT_TRUE(y.ok()) << y.message();
  out.prefill = cpu::test::relativeL2(*x, *y);
  out.prefillLogits = *x;
  const int64_t vocab = b.vocabSize();
  int32_t next = argmax(*y, prompt.size() - 1, vocab);
  for (int step = 0; step < steps; ++step) {
    x = a.forward({next});
    y = b.forward({next});
    ASSERT_TRUE(x.ok() && y.ok());
    out.decode = std::max(out.decode, cpu::test::relativeL2(*x, *y));
    if (sameTokens)
      ASSERT_EQ(argmax(*x, 0, vocab), argmax(*y, 0, vocab)) << "decode step " << step;
    next = argmax(*y, 0, vocab);
  }
}

// A native FP8 checkpoint alone as the model (ktc compile --fp8-path only):
// FP8 projections on the GPU from its e4m3 weights, experts and kv_b_proj
// converted to q8_0 at load. The reference is the GGUF model holding those
// q8_0 copies (and the BF16 tensors as stored) with the same checkpoint for
// its projections: the same weights through the same kernels.
TEST(HybridExecutor, CheckpointModelRunsLikeItsGgufWithTheSameCheckpoint) {
  KT_REQUIRE_GPU();
  TestModel gguf;
  plan::Plan unused;
  buildFp8Plan("tiny-ckpt", gguf, unused);
  const std::string checkpoint = gguf.ggufPath + ".fp8";
  const std::string rules = "rules/DeepSeek-V3-Chat-fp8-linear-ggml-experts.yaml";
  TestModel alone, combined;
  ASSERT_NO_FATAL_FAILURE(
      buildCheckpointModel(checkpoint, checkpoint + ".alone.plan", rules, targetGpu(), "", alone));
  ASSERT_NO_FATAL_FAILURE(buildGgufTwin(alone, checkpoint, "q8_0",
                                        cpu::test::CheckpointWeights::Q8_0Copies, rules,
                                        targetGpu(), combined));
  std::unique_ptr<exec::Executor> a = open(alone), b = open(combined);
  ASSERT_TRUE(a && b);
  RunDifference d;
  ASSERT_NO_FATAL_FAILURE(compareRuns(*a, *b, cpu::test::sampleTokens(100, 5), 6, true, d));
  std::printf("[ gpu      ] checkpoint model against its GGUF + --fp8-path twin: prefill %.2e, "
              "decode %.2e\n",
              d.prefill, d.decode);
  EXPECT_LE(d.prefill, 1e-6);
  EXPECT_LE(d.decode, 1e-6);
}

// The FP8-linear rules with the routed experts on cuda:0, beside `prefix`.
std::string writeGpuExpertRules(const std::string &prefix) {
  std::ifstream in(std::string(KT_SOURCE_DIR) +
                   "/rules/DeepSeek-V3-Chat-fp8-linear-ggml-experts.yaml");
  std::stringstream text;
  text << in.rdbuf();
  std::string rules = text.str();
  for (auto [from, to] : {std::pair<std::string, std::string>{"_device: \"cpu\"",
                                                              "_device: \"cuda:0\""},
                          {"KExpertsCPU", "KExpertsMarlin"}})
    for (size_t at = rules.find(from); at != std::string::npos; at = rules.find(from, at))
      rules.replace(at, from.size(), to);
  const std::string path = prefix + ".gpu-experts.yaml";
  std::ofstream(path) << rules;
  return path;
}

// FP8 routed experts on the GPU (a checkpoint alone, sm_90a): with the GEMV
// by expert id in prefill and decode (fp8Gemm off) they match the same
// model whose experts are their exact values in f32 on the GPU, to f32
// rounding; the grouped GEMM (prefill on FP8 activations) stays near that.
TEST(HybridExecutor, Fp8GpuExpertsMatchTheirExactValues) {
  KT_REQUIRE_GPU();
  if (gpus()[0].arch() != "sm_90a")
    GTEST_SKIP() << "FP8 experts on a GPU need sm_90a";
  TestModel gguf;
  plan::Plan unused;
  buildFp8Plan("tiny-gpu-fp8-experts", gguf, unused);
  const std::string checkpoint = gguf.ggufPath + ".fp8";
  const std::string rulesPath = writeGpuExpertRules(checkpoint);
  TestModel alone, exact;
  ASSERT_NO_FATAL_FAILURE(buildCheckpointModel(checkpoint, checkpoint + ".gpu-experts.plan",
                                               rulesPath, targetGpu(), "", alone));
  ASSERT_NO_FATAL_FAILURE(buildGgufTwin(alone, checkpoint, "f32-experts",
                                        cpu::test::CheckpointWeights::Q8_0CopiesF32Experts,
                                        rulesPath, targetGpu(), exact));
  ASSERT_TRUE(std::any_of(alone.plan.kernelSpecializations.begin(),
                          alone.plan.kernelSpecializations.end(),
                          [](const plan::KernelSpecialization &k) {
                            return k.entry == "gemm_fp8" && k.defines.count("GROUPED");
                          }));
  exec::ExecutorOptions gemvOnly;
  gemvOnly.fp8Gemm = false;
  std::unique_ptr<exec::Executor> a = open(alone, gemvOnly), b = open(exact, gemvOnly),
                                  grouped = open(alone);
  ASSERT_TRUE(a && b && grouped);
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(150, 9);
  RunDifference d;
  ASSERT_NO_FATAL_FAILURE(compareRuns(*a, *b, prompt, 6, true, d));
  StatusOr<std::vector<float>> z = grouped->forward(prompt, true);
  ASSERT_TRUE(z.ok()) << z.message();
  const double groupedPrefill = cpu::test::relativeL2(*z, d.prefillLogits);
  const int64_t vocab = b->vocabSize();
  size_t agree = 0;
  for (size_t row = 0; row < prompt.size(); ++row)
    agree += argmax(*z, row, vocab) == argmax(d.prefillLogits, row, vocab);
  std::printf("[ gpu      ] FP8 experts on the GPU against their f32 values: prefill %.2e, "
              "decode %.2e; grouped GEMM prefill against the GEMV %.2e, same top token at %zu "
              "of %zu positions\n",
              d.prefill, d.decode, groupedPrefill, agree, prompt.size());
  EXPECT_LE(d.prefill, 1e-5);
  EXPECT_LE(d.decode, 1e-5);
  EXPECT_GT(groupedPrefill, 1e-6); // the activations were quantized: the GEMM ran
  EXPECT_LE(groupedPrefill, 0.25);
  EXPECT_GE(agree, prompt.size() * 7 / 10);
}

// FP8 routed experts on a GPU without wgmma (a compute_80 plan, run here as
// PTX) are the q8_0 copies made at load: the same logits as the GGUF model
// holding those copies, with the same checkpoint for its projections.
TEST(HybridExecutor, Fp8GpuExpertsWithoutWgmmaRunTheirQ8_0Copies) {
  KT_REQUIRE_GPU();
  if (gpus()[0].computeMajor < 8)
    GTEST_SKIP() << "a compute_80 plan needs sm_80";
  TestModel gguf;
  plan::Plan unused;
  buildFp8Plan("tiny-ampere-fp8-experts", gguf, unused, "compute_80:80GiB");
  const std::string checkpoint = gguf.ggufPath + ".fp8";
  const std::string rulesPath = writeGpuExpertRules(checkpoint);
  TestModel alone, copies;
  ASSERT_NO_FATAL_FAILURE(buildCheckpointModel(checkpoint, checkpoint + ".ampere-experts.plan",
                                               rulesPath, "compute_80:80GiB", "", alone));
  ASSERT_NO_FATAL_FAILURE(buildGgufTwin(alone, checkpoint, "ampere-copies",
                                        cpu::test::CheckpointWeights::Q8_0Copies, rulesPath,
                                        "compute_80:80GiB", copies));
  std::unique_ptr<exec::Executor> a = open(alone), b = open(copies);
  ASSERT_TRUE(a && b);
  RunDifference d;
  ASSERT_NO_FATAL_FAILURE(compareRuns(*a, *b, cpu::test::sampleTokens(60, 4), 4, false, d));
  std::printf("[ gpu      ] FP8 experts as q8_0 copies on a compute_80 plan against the GGUF "
              "twin: prefill %.2e, decode %.2e\n",
              d.prefill, d.decode);
  EXPECT_LE(d.prefill, 1e-6);
  EXPECT_LE(d.decode, 1e-6);
}

// A checkpoint's CPU-placed FP8 experts in the GPU expert cache: the cache
// holds the q8_0 copies made at load and runs them like the CPU (f32
// activations on both here), so the logits stay those of the plan without
// the cache.
TEST(HybridExecutor, ExpertCacheHoldsFp8ExpertsAsQ8_0Copies) {
  KT_REQUIRE_GPU();
  TestModel gguf;
  plan::Plan unused;
  buildFp8Plan("tiny-fp8-cache", gguf, unused);
  const std::string checkpoint = gguf.ggufPath + ".fp8";
  const std::string rules = "rules/DeepSeek-V3-Chat-fp8-linear-ggml-experts.yaml";
  TestModel withCache, withoutCache;
  ASSERT_NO_FATAL_FAILURE(buildCheckpointModel(checkpoint, checkpoint + ".cache.plan", rules,
                                               targetGpu(),
                                               "--f32-cpu-experts --gpu-expert-cache 256MiB",
                                               withCache));
  ASSERT_NO_FATAL_FAILURE(buildCheckpointModel(checkpoint, checkpoint + ".nocache.plan", rules,
                                               targetGpu(), "--f32-cpu-experts", withoutCache));
  exec::ExecutorOptions options;
  options.gpuExpertCacheBytes = 256ll << 20;
  std::unique_ptr<exec::Executor> cached = open(withCache, options), plain = open(withoutCache);
  ASSERT_TRUE(cached && plain);
  RunDifference d;
  ASSERT_NO_FATAL_FAILURE(
      compareRuns(*cached, *plain, cpu::test::sampleTokens(20, 6), 6, false, d));
  const double worst = std::max(d.prefill, d.decode);
  const exec::ExpertCacheStats stats = cached->expertCacheStats();
  std::printf("[ gpu      ] FP8 experts' q8_0 copies in the GPU expert cache: %lld experts, %llu "
              "of %llu decode selections on the GPU; against no cache %.2e\n",
              (long long)stats.experts, (unsigned long long)stats.gpuSelections,
              (unsigned long long)stats.selections, worst);
  EXPECT_TRUE(stats.filled);
  EXPECT_GT(stats.experts, 0);
  EXPECT_GT(stats.gpuSelections, 0u);
  EXPECT_LE(worst, 1e-4);
}

// Decode over 1024 or more cached positions runs MLA attention on tensor
// cores (mla_decode_mma; below that, the f32 split core): after the same
// f32 prefill (chunks of 64 stay under the prefill core's threshold), the
// tokens that see fewer than 1024 positions get exactly the f32 executor's
// logits, the later ones logits near them.
TEST(HybridExecutor, LongDecodeAttentionOnTensorCoresStaysNearTheF32Core) {
  KT_REQUIRE_GPU();
  if (gpus()[0].computeMajor < 8)
    GTEST_SKIP() << "mma.sync on bf16 needs sm_80";
  TestModel m;
  cpu::test::buildModel("tiny-mla-decode-mma", *gen::presetConfig("tiny"), m,
                        "rules/DeepSeek-V3-Chat.yaml", targetGpu());
  ASSERT_TRUE(
      std::any_of(m.plan.kernelSpecializations.begin(), m.plan.kernelSpecializations.end(),
                  [](const plan::KernelSpecialization &k) { return k.entry == "mla_decode_mma"; }));
  exec::ExecutorOptions options;
  options.chunkSize = 64;
  options.cacheLens = 1100;
  std::unique_ptr<exec::Executor> mma = open(m, options);
  options.mlaTensorCores = false;
  std::unique_ptr<exec::Executor> f32 = open(m, options);
  ASSERT_TRUE(mma && f32);
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(1020, 17);
  StatusOr<std::vector<float>> a = mma->forward(prompt), b = f32->forward(prompt);
  ASSERT_TRUE(a.ok()) << a.message();
  ASSERT_TRUE(b.ok()) << b.message();
  EXPECT_EQ(*a, *b);
  const int64_t vocab = f32->vocabSize();
  std::vector<float> late, lateF32;
  int agree = 0, steps = 0;
  for (int64_t position = 1020; position < 1036; ++position) {
    const int32_t next = int32_t(argmax(*b, 0, vocab));
    a = mma->forward({next});
    b = f32->forward({next});
    ASSERT_TRUE(a.ok() && b.ok());
    if (position + 1 < kMlaDecodeMmaFrom) {
      EXPECT_EQ(*a, *b) << "position " << position;
      continue;
    }
    late.insert(late.end(), a->begin(), a->end());
    lateF32.insert(lateF32.end(), b->begin(), b->end());
    agree += argmax(*a, 0, vocab) == argmax(*b, 0, vocab);
    ++steps;
  }
  const double error = cpu::test::relativeL2(late, lateF32);
  std::printf("[ gpu      ] MLA decode on tensor cores (positions 1023-1035) against the f32 "
              "core: relative L2 %.2e, same top token at %d of %d steps\n",
              error, agree, steps);
  EXPECT_GT(error, 1e-7); // bf16: the tensor cores ran
  EXPECT_LE(error, 0.1);
  EXPECT_GE(agree, steps * 3 / 4);
}

// A long prefill (chunks of 512 after 512 or more cached positions) runs
// MLA attention on tensor cores in bf16 (2e-3 against double per kernel
// call, which the tiny random model amplifies to about 5e-2 in its logits,
// as it does FP8's rounding): near the f32 core's logits, the same top
// token nearly everywhere; the first chunk keeps the f32 core.
TEST(HybridExecutor, LongPrefillAttentionOnTensorCoresStaysNearTheF32Core) {
  KT_REQUIRE_GPU();
  if (gpus()[0].computeMajor < 8)
    GTEST_SKIP() << "mma.sync on bf16 needs sm_80";
  TestModel m;
  cpu::test::buildModel("tiny-mla-mma", *gen::presetConfig("tiny"), m,
                        "rules/DeepSeek-V3-Chat.yaml", targetGpu());
  ASSERT_TRUE(std::any_of(m.plan.kernelSpecializations.begin(), m.plan.kernelSpecializations.end(),
                          [](const plan::KernelSpecialization &k) {
                            return k.entry == "mla_prefill_mma";
                          }));
  exec::ExecutorOptions options;
  options.chunkSize = 512;
  std::unique_ptr<exec::Executor> mma = open(m, options);
  options.mlaTensorCores = false;
  std::unique_ptr<exec::Executor> f32 = open(m, options);
  ASSERT_TRUE(mma && f32);
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(1500, 13);
  StatusOr<std::vector<float>> a = mma->forward(prompt, true), b = f32->forward(prompt, true);
  ASSERT_TRUE(a.ok()) << a.message();
  ASSERT_TRUE(b.ok()) << b.message();
  const int64_t vocab = f32->vocabSize();
  // The first chunk (512 tokens over themselves) keeps the f32 core.
  const std::vector<float> firstA(a->begin(), a->begin() + 512 * vocab),
      firstB(b->begin(), b->begin() + 512 * vocab);
  EXPECT_EQ(firstA, firstB);
  const std::vector<float> restA(a->begin() + 512 * vocab, a->end()),
      restB(b->begin() + 512 * vocab, b->end());
  const double error = cpu::test::relativeL2(restA, restB);
  size_t agree = 0;
  for (size_t row = 512; row < prompt.size(); ++row)
    agree += argmax(*a, row, vocab) == argmax(*b, row, vocab);
  std::printf("[ gpu      ] MLA prefill on tensor cores (tokens 512-1499) against the f32 core: "
              "relative L2 %.2e, same top token at %zu of %zu positions\n",
              error, agree, prompt.size() - 512);
  EXPECT_GT(error, 1e-7); // bf16: the tensor cores ran
  EXPECT_LE(error, 0.1);
  EXPECT_GE(agree, (prompt.size() - 512) * 9 / 10);
}

// Q8_0 and k-quant matrices of prefill steps of 32 tokens or more run as
// tensor-core GEMMs (activations, and k-quant weights, rounded to bf16);
// shorter steps and decode keep the f32 GEMV. Against the GEMV everywhere,
// on the tiny random model with q8_0 weights and with k-quant ones.
void expectPrefillOnTensorCoresNearTheGemv(const std::string &name, const gen::ModelConfig &config,
                                           const char *entry,
                                           const char *rules = "rules/DeepSeek-V3-Chat.yaml") {
  TestModel m;
  cpu::test::buildModel(name, config, m, rules, targetGpu());
  ASSERT_TRUE(std::any_of(m.plan.kernelSpecializations.begin(), m.plan.kernelSpecializations.end(),
                          [&](const plan::KernelSpecialization &k) { return k.entry == entry; }));
  exec::ExecutorOptions options;
  std::unique_ptr<exec::Executor> mma = open(m, options);
  options.ggufTensorCores = false;
  std::unique_ptr<exec::Executor> gemv = open(m, options);
  ASSERT_TRUE(mma && gemv);
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(200, 17);
  StatusOr<std::vector<float>> a = mma->forward(prompt, true), b = gemv->forward(prompt, true);
  ASSERT_TRUE(a.ok()) << a.message();
  ASSERT_TRUE(b.ok()) << b.message();
  const int64_t vocab = gemv->vocabSize();
  const double error = cpu::test::relativeL2(*a, *b);
  size_t agree = 0;
  for (size_t row = 0; row < prompt.size(); ++row)
    agree += argmax(*a, row, vocab) == argmax(*b, row, vocab);
  // Decode after it: both GEMVs, on caches the prefills filled.
  int32_t next = argmax(*b, prompt.size() - 1, vocab);
  a = mma->forward({next});
  b = gemv->forward({next});
  ASSERT_TRUE(a.ok() && b.ok());
  const double decode = cpu::test::relativeL2(*a, *b);
  std::printf("[ gpu      ] %s prefill on tensor cores against the GEMV: relative L2 %.2e, "
              "same top token at %zu of %zu positions; decode after it %.2e\n",
              entry, error, agree, prompt.size(), decode);
  EXPECT_GT(error, 1e-7); // bf16: the tensor cores ran
  EXPECT_LE(error, 0.1);
  EXPECT_GE(agree, prompt.size() * 9 / 10);
  EXPECT_LE(decode, 0.1);
}

TEST(HybridExecutor, GgufPrefillOnTensorCoresStaysNearTheGemv) {
  KT_REQUIRE_GPU();
  if (gpus()[0].computeMajor < 8)
    GTEST_SKIP() << "mma.sync on bf16 needs sm_80";
  expectPrefillOnTensorCoresNearTheGemv("tiny-q8-mma", *gen::presetConfig("tiny"), "gemm_q8_0_mma");
  gen::ModelConfig kquants = *gen::presetConfig("tiny");
  kquants.types.attention = gguf::GgmlType::Q4_K;
  kquants.types.dense = gguf::GgmlType::Q6_K;
  kquants.types.sharedExperts = gguf::GgmlType::Q5_K;
  expectPrefillOnTensorCoresNearTheGemv("tiny-kquant-mma", kquants, "gemm_kquant_mma");
}

// Routed experts on the GPU (layers 4 and 5) in prefill: the grouped form of
// the tensor-core GEMM against the grouped GEMV. Every other matrix is f32,
// which has no tensor-core GEMM, so the difference is the experts'.
TEST(HybridExecutor, GpuExpertPrefillOnTensorCoresStaysNearTheGemv) {
  KT_REQUIRE_GPU();
  if (gpus()[0].computeMajor < 8)
    GTEST_SKIP() << "mma.sync on bf16 needs sm_80";
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.layerCount = 6;
  config.types.attention = config.types.dense = config.types.sharedExperts = config.types.output =
      gguf::GgmlType::F32;
  expectPrefillOnTensorCoresNearTheGemv("tiny-gpu-experts-mma", config, "gemm_kquant_mma",
                                        "rules/DeepSeek-V3-Chat-gpu-experts-4-10.yaml");
}

// Runs everywhere: a changed FP8 checkpoint is refused before any GPU is needed.
TEST(HybridExecutor, RefusesAChangedFp8Checkpoint) {
  KT_REQUIRE_COMPILER();
  TestModel gguf;
  plan::Plan fp8Plan;
  buildFp8Plan("tiny-fp8-changed", gguf, fp8Plan);
  ASSERT_TRUE(fp8Plan.model.fp8.has_value());
  fp8Plan.model.fp8->fingerprint = "00000000000000000000000000000000";
  StatusOr<std::unique_ptr<exec::Executor>> executor =
      exec::createExecutor(fp8Plan, *gguf.model, {});
  ASSERT_FALSE(executor.ok());
  EXPECT_NE(executor.message().find("is not the one the plan was compiled with"), std::string::npos)
      << executor.message();
  EXPECT_NE(executor.message().find("--fp8-path"), std::string::npos) << executor.message();
}

// The plan of the N-GPU rule file for a 24-layer model, whose stages sit
// on cuda:0,1 (2 GPUs), 0,1,3 (4) and 0,1,2,7 (8).
struct Pipeline {
  TestModel single, pipeline;
  int highestGpu = 0;
};

void buildPipeline(int gpus, Pipeline &p) {
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.layerCount = 24;
  cpu::test::buildModel("tiny-pipeline", config, p.single, "rules/DeepSeek-V3-Chat.yaml",
                        targetGpu());
  std::string targets = targetGpu();
  for (int i = 1; i < gpus; ++i)
    targets += " --target-gpu " + targetGpu();
  cpu::test::buildModel("tiny-pipeline-" + std::to_string(gpus), config, p.pipeline,
                        "rules/DeepSeek-V3-Chat-multi-gpu-" + std::to_string(gpus) + ".yaml",
                        targets);
  for (const plan::Op &op : p.pipeline.plan.ops)
    if (op.decodeDevice.rfind("cuda:", 0) == 0)
      p.highestGpu = std::max(p.highestGpu, std::atoi(op.decodeDevice.c_str() + 5));
  EXPECT_GT(p.highestGpu, 0) << "the plan uses one GPU only";
}

// Prefill and graphed decode of the pipeline against the one-GPU plan;
// profiles one more decode step to check that every stage ran.
void expectPipelineMatchesOneGpu(Pipeline &p, const exec::ExecutorOptions &options) {
  std::unique_ptr<exec::Executor> stages = open(p.pipeline, options), one = open(p.single);
  ASSERT_TRUE(stages && one);
  const std::vector<int32_t> prompt = cpu::test::sampleTokens(11, 3);
  StatusOr<std::vector<float>> a = stages->forward(prompt, true), b = one->forward(prompt, true);
  ASSERT_TRUE(a.ok()) << a.message();
  ASSERT_TRUE(b.ok()) << b.message();
  EXPECT_LE(cpu::test::relativeL2(*a, *b), 1e-6);
  for (int step = 0; step < 4; ++step) {
    const int32_t next = argmax(*b, step == 0 ? prompt.size() - 1 : 0, one->vocabSize());
    a = stages->forward({next});
    b = one->forward({next});
    ASSERT_TRUE(a.ok()) << a.message();
    ASSERT_TRUE(b.ok()) << b.message();
    EXPECT_LE(cpu::test::relativeL2(*a, *b), 1e-6) << "decode step " << step;
  }
  EXPECT_GT(dynamic_cast<HybridExecutor &>(*stages).graphStats().launched, 0u);
  stages->setProfiling(true);
  a = stages->forward({argmax(*b, 0, one->vocabSize())});
  ASSERT_TRUE(a.ok()) << a.message();
  const exec::ExecutionProfile profile = stages->profile();
  ASSERT_EQ(profile.gpuSecondsByDevice.size(), size_t(p.highestGpu + 1));
  for (int gpu = 0; gpu <= p.highestGpu; ++gpu) {
    const bool used = std::any_of(
        p.pipeline.plan.ops.begin(), p.pipeline.plan.ops.end(),
        [&](const plan::Op &op) { return op.decodeDevice == "cuda:" + std::to_string(gpu); });
    if (used)
      EXPECT_GT(profile.gpuSecondsByDevice[size_t(gpu)], 0.0) << "cuda:" << gpu;
  }
  EXPECT_GT(profile.gpuToGpuBytes, 0u);
  // The GPU time by op kind adds up to the GPU time, and names the plan's
  // GPU ops of a decode step.
  double byKind = 0;
  for (const auto &[kind, seconds] : profile.gpuSecondsByOpKind) {
    byKind += seconds;
    EXPECT_GT(profile.gpuStepsByOpKind.at(kind), 0) << kind;
  }
  EXPECT_NEAR(byKind, profile.gpuSeconds, 1e-9 + 1e-12 * profile.gpuSeconds);
  for (const plan::Op &op : p.pipeline.plan.ops)
    if (op.decodeDevice.rfind("cuda:", 0) == 0 && op.kind != "transfer")
      EXPECT_EQ(profile.gpuSecondsByOpKind.count(op.kind), 1u) << op.kind << " has no GPU time";
}

// The multi-GPU rule files on virtual GPUs: their stages, transfers and
// per-stage graphs run on GPU 0 and give the single-GPU plan's logits.
TEST(HybridExecutor, MultiGpuRulesRunOnVirtualGpusLikeOneGpu) {
  KT_REQUIRE_GPU();
  for (int count : {2, 4, 8}) {
    SCOPED_TRACE(std::to_string(count) + " GPUs");
    Pipeline p;
    buildPipeline(count, p);
    if (int(gpus().size()) <= p.highestGpu) { // too few GPUs: virtual ones are needed
      StatusOr<std::unique_ptr<exec::Executor>> refused =
          exec::createExecutor(p.pipeline.plan, *p.pipeline.model, {});
      ASSERT_FALSE(refused.ok());
      EXPECT_NE(refused.message().find("--virtual-gpus " + std::to_string(p.highestGpu + 1)),
                std::string::npos)
          << refused.message();
    }
    exec::ExecutorOptions options;
    options.virtualGpus = count;
    {
      std::unique_ptr<exec::Executor> stages = open(p.pipeline, options);
      ASSERT_TRUE(stages);
      EXPECT_NE(stages->deviceDescription().find("virtual GPUs"), std::string::npos);
    }
    expectPipelineMatchesOneGpu(p, options);
  }
}

// The same on real GPUs, as many as the host has (2 or more): each stage on
// its own GPU, activations copied between them.
TEST(HybridExecutor, MultiGpuRulesRunOnRealGpusLikeOneGpu) {
  KT_REQUIRE_GPU();
  const int available = int(gpus().size());
  if (available < 2)
    GTEST_SKIP() << "this host has one GPU";
  for (int count : {2, 4, 8}) {
    SCOPED_TRACE(std::to_string(count) + " GPUs");
    Pipeline p;
    buildPipeline(count, p);
    if (p.highestGpu >= available)
      continue;
    {
      std::unique_ptr<exec::Executor> stages = open(p.pipeline, {});
      ASSERT_TRUE(stages);
      const std::string description = stages->deviceDescription();
      EXPECT_NE(description.find("cuda:1 ("), std::string::npos) << description;
      EXPECT_EQ(description.find("virtual"), std::string::npos) << description;
      std::printf("[ gpu      ] %d-GPU plan on %s\n", count, description.c_str());
    }
    expectPipelineMatchesOneGpu(p, {});
  }
}

// Runs everywhere: a plan for more GPUs than the host has needs
// --virtual-gpus (a host without a GPU is told so first).
TEST(HybridExecutor, RefusesAMultiGpuPlanOnTooFewGpus) {
  KT_REQUIRE_COMPILER();
  if (gpus().size() >= 2)
    GTEST_SKIP() << "this host has enough GPUs for the plan";
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.layerCount = 4;
  TestModel pipeline;
  cpu::test::buildModel("tiny-pipeline-refused", config, pipeline,
                        "rules/DeepSeek-V3-Chat-multi-gpu-2.yaml",
                        "sm_90a:80GiB --target-gpu sm_90a:80GiB");
  expectRefusalSays(pipeline, {}, {gpus().empty() ? "no usable GPU" : "--virtual-gpus 2"});
  // Fewer virtual GPUs than the plan's stages are refused everywhere.
  exec::ExecutorOptions options;
  options.virtualGpus = 1;
  expectRefusalSays(pipeline, options, {"--virtual-gpus 2"});
}

// Runs everywhere: without a GPU a GPU plan is refused with what to do.
TEST(HybridExecutor, RefusesGpuPlansOnAHostWithoutAGpu) {
  KT_REQUIRE_COMPILER();
  if (!gpus().empty())
    GTEST_SKIP() << "this host has a GPU";
  TestModel m;
  cpu::test::buildModel("tiny-nogpu", *gen::presetConfig("tiny"), m, "rules/DeepSeek-V3-Chat.yaml",
                        "sm_90a:80GiB");
  exec::ExecutorOptions options;
  options.planPath = m.planPath;
  StatusOr<std::unique_ptr<exec::Executor>> executor =
      exec::createExecutor(m.plan, *m.model, options);
  ASSERT_FALSE(executor.ok());
  EXPECT_NE(executor.message().find("no usable GPU"), std::string::npos) << executor.message();
  EXPECT_NE(executor.message().find("--target-gpu none"), std::string::npos) << executor.message();
}

// A warm decode step allocates nothing on the host but the vector the call
// returns (the next token's id, or its logits): the step's inputs, the
// steps' operand lists, the decode graphs' lookup, the routed experts on the
// CPU and their jobs all reuse what earlier steps sized.
TEST(HybridExecutor, WarmDecodeStepsAllocateOnlyWhatTheyReturn) {
  KT_REQUIRE_GPU();
  TestModel m;
  cpu::test::buildModel("tiny-alloc-gpu", *gen::presetConfig("tiny"), m,
                        "rules/DeepSeek-V3-Chat.yaml", targetGpu());
  std::unique_ptr<exec::Executor> gpu = open(m);
  ASSERT_TRUE(gpu);
  ASSERT_TRUE(gpu->forward(cpu::test::sampleTokens(9, 4)).ok());
  const std::vector<exec::SequenceTokens> batch{{0, {5}}};
  const std::vector<int32_t> token{6};
  for (int step = 0; step < 4; ++step) { // graphs captured, scratch sized
    ASSERT_TRUE(gpu->forwardGreedy(batch).ok());
    ASSERT_TRUE(gpu->forward(token).ok());
  }
  auto allocationsOf = [&](auto step) { // and the step succeeded
    bool ok = false;
    const long count = kt::test::allocationsOf([&] { ok = step(); });
    EXPECT_TRUE(ok);
    return count;
  };
  std::vector<long> greedy, logits;
  for (int step = 0; step < 8; ++step) {
    greedy.push_back(allocationsOf([&] { return gpu->forwardGreedy(batch).ok(); }));
    logits.push_back(allocationsOf([&] { return gpu->forward(token).ok(); }));
  }
  std::printf("[ alloc    ] greedy steps:");
  for (long count : greedy)
    std::printf(" %ld", count);
  std::printf("; logits steps:");
  for (long count : logits)
    std::printf(" %ld", count);
  std::printf("\n");
  // (Measured on the H100: 1 in every step of both; 20 and 17 before.) A
  // step may grow a pool thread's scratch the first time that thread takes
  // a larger task (as in the CPU executor's AllocationTest), so a few steps
  // may allocate a little more; one more allocation every step may not.
  for (const std::vector<long> *counts : {&greedy, &logits}) {
    EXPECT_GE(std::count(counts->begin(), counts->end(), 1L), 6);
    EXPECT_LE(*std::max_element(counts->begin(), counts->end()), 3L);
  }
}

} // namespace
} // namespace kt::cuda
