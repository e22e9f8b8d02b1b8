// What runs an execution plan: the CPU executor (every op on the CPU, the
// reference) and the hybrid executor (GPU ops through NVRTC kernels, routed
// experts on the CPU) behind one interface, so ktrun's chat, server and
// benchmark drive either. createExecutor() picks by the plan's placement.
#pragma once

#include "runtime/exec/TokenSampling.h"
#include "runtime/support/Status.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace kt::exec {

// How often each expert of one MoE layer was chosen since the statistics
// were last cleared (benchmarks print how many distinct experts a layer used).
struct RoutingStats {
  std::string path; // the gate's module path, "model.layers.3.mlp.gate"
  std::vector<uint64_t> selections;
  int64_t distinctExperts() const {
    return std::count_if(selections.begin(), selections.end(), [](uint64_t n) { return n > 0; });
  }
};

// The index of each of `rows` rows' largest logit (the lower index on a tie,
// as std::max_element): greedy decoding where the logits are on the host.
inline void argmaxRows(const float *logits, int64_t rows, int64_t vocab, int32_t *ids) {
  for (int64_t row = 0; row < rows; ++row)
    ids[row] =
        static_cast<int32_t>(std::max_element(logits + row * vocab, logits + (row + 1) * vocab) -
                             (logits + row * vocab));
}

constexpr int kAutoStreamedExperts = -1; // ExecutorOptions::streamedExperts

struct ExecutorOptions {
  int threads = 0;       // CPU threads; 0: one per hardware thread
  // NUMA: "auto" (this host's nodes), "off", or the nodes' CPU lists
  // separated by ';' ("0-7;8-15"). On several nodes the threads are pinned
  // per node and the routed experts' rows copied to the node that
  // multiplies them; on one node nothing changes.
  std::string numa = "auto";
  // Where the CPU reads the routed experts on one node: "file" (the model
  // file's mapping) or "huge" (a copy in transparent huge pages, made at
  // load; RoutedExperts::copyIntoHugePages). Several NUMA nodes always copy.
  std::string expertPages = "file";
  int64_t cacheLens = 0; // positions the KV cache holds; 0: the plan's runtime.cache_lens
  int64_t chunkSize = 0; // most tokens one prefill step runs; 0: the plan's runtime.chunk_size
  std::string planPath;  // the plan's file, for messages; empty: "the plan"
  // Experts chosen by at least this many tokens of a step run as bf16
  // GEMMs through oneDNN (builds with it); 0: never. Off by default: the
  // GEMMs beat the row kernels per matrix from about 64 tokens, but oneDNN's
  // OpenMP threads keep spinning against the pool's between them, and end
  // to end a 2048-token prefill was slower (docs/cpu-codegen.md).
  int64_t expertGemmTokens = 0;
  // Experts chosen by at least this many tokens of one sequence in a step
  // run their products for them through the plan's AMX tile kernels (plans
  // compiled for AMX hosts); 0: never. Other sequences of the step do not
  // change the choice, so an answer is the same alone or batched.
  int64_t expertTileTokens = kDefaultExpertTileTokens;
  // End to end (2048-token prefill, V3 dimensions) 8 beat 16 in two runs on the 16-core SPR host.
  static constexpr int64_t kDefaultExpertTileTokens = 8;
  // Independent sequences (KV caches of cacheLens positions each) that
  // forwardBatch() can advance together; forward() uses sequence 0.
  int sequences = 1;
  // GPU plans: capture each decode step's GPU regions (the plan's
  // graph_region) as CUDA graphs on first use and replay them after.
  bool cudaGraphs = true;
  // GPU plans on sm_90 and newer: in those graphs each kernel may start
  // before the one ahead of it has finished, waiting for its results on the
  // GPU (programmatic dependent launch); false: one after the other.
  bool overlapLaunches = true;
  // GPU plans with FP8 projections on sm_90a: steps of more than one token
  // run them as tensor-core GEMMs on activations quantized per token and
  // 128 columns (DeepSeek's recipe); false: the FP8 GEMV on f32
  // activations for every step (for comparison).
  bool fp8Gemm = true;
  // GPU plans: how long the CPU threads, idle, keep spinning before they
  // sleep. In decode they wait between MoE layers while the GPU runs the
  // next attention (a few hundred microseconds); woken from sleep, they
  // start late and staggered. H100 machine, V3 dimensions, 6 alternated
  // runs: 2.26 ms per MoE layer at 3000 against 2.39 at 0 (docs/gpu-execution.md).
  int64_t idleSpinMicros = 3000;
  // GPU plans whose norms and SiLU-gated products ktc marked
  // (kt-fuse-norm-quantize): such a producer writes the activations the FP8
  // GEMM after it reads, quantized, in its own pass (the same bytes); false:
  // the GEMM quantizes them (for comparison).
  bool fusedNormQuantization = true;
  // GPU plans with add_rms_norm ops (kt-fuse-residual-norm): a residual sum
  // and its norm in one kernel; false: the adds and the norm as separate
  // kernels (the same bits, for comparison).
  bool fusedResidualNorms = true;
  // GPU plans that list them (sm_80+): MLA prefill of long segments, and
  // decode over long caches, on tensor cores in bf16 (about 1e-3 relative
  // error); false: the f32 cores always.
  bool mlaTensorCores = true;
  // GPU plans that list them (sm_80+): Q8_0 and k-quant matrices of prefill
  // steps of 32 or more tokens as tensor-core GEMMs (activations, and
  // k-quant weights, rounded to bf16); false: the token-tiled GEMV in f32.
  bool ggufTensorCores = true;
  // GPU plans: run a plan for N GPUs (cuda:0 .. cuda:N-1) on this host's
  // GPU 0, each logical device with its own buffers and the plan's memory
  // budget (pipelines tested on one GPU); 0: cuda:0 only.
  int virtualGpus = 0;
  // Progress on stderr for long loading work (FP8 weights converted to q8_0).
  bool progress = false;
  // GPU plans compiled with --gpu-expert-cache: bytes of cuda:0 for copies
  // of the most often routed experts of CPU-placed layers; -1: what the plan
  // reserves, 0: none. More than the plan reserves is refused.
  int64_t gpuExpertCacheBytes = -1;
  // Decode: of each token's routed choices in the CPU-placed layers that the
  // expert cache does not hold, the GPU runs up to this many itself, its
  // copy engine reading their weights from host memory (page-locked at
  // load) into room taken from the plan's expert cache reservation, while
  // the CPU runs the rest: the link adds its bandwidth to the CPU threads'.
  // 0: none. kAutoStreamedExperts: chosen at load (with streamedGateUps)
  // from the link's and the CPU threads' bandwidths measured side by side
  // (chooseStreamedExperts); none where the plan reserves no expert cache.
  int streamedExperts = 0;
  // Decode, with streamedExperts: of this many more of each step's
  // CPU-side experts the GPU streams only the gate and up matrices and
  // computes their gated rows, which the CPU's down products then read: a
  // finer share than whole experts (for Q4_K, a third of an expert each).
  int streamedGateUps = 0;
  // How much of those experts' gate and up rows the GPU takes, in experts'
  // worth (0 to streamedGateUps; the last expert streamed may give it only
  // its first rows). Negative: balanced by feedback, starting at all of
  // them: after each decode MoE layer a sixteenth of an expert more when
  // the GPU had finished by the time the CPU's experts had, less when not.
  double streamedGateUpShare = -1;
  // Decode, with streamedExperts N and the share balanced: move whole
  // experts between the GPU and the CPU when the gate/up share stays pushed
  // against either end (StreamedShareBalance), within room for N + 1 taken
  // at load. kAutoStreamedExperts always does.
  bool moveStreamedExperts = false;
  // Routing statistics (a profile saved by an earlier run) that choose the
  // cached experts at load; empty: the first prefill's routing chooses them.
  std::vector<RoutingStats> expertProfile;
};

// The new tokens of one sequence in a batched step.
struct SequenceTokens {
  int sequence = 0;
  std::vector<int32_t> tokens;
};

// The GPU expert cache: what it holds, and the share of the CPU-placed
// layers' selections it served since the routing statistics were cleared.
// FP8 weights converted to q8_0 at load (checkpoint models on the CPU).
struct WeightConversionStats {
  int tensors = 0;
  uint64_t bytes = 0; // of the q8_0 copies
  double seconds = 0;
};

struct ExpertCacheStats {
  bool enabled = false; // the plan and options ask for one
  bool filled = false;
  int64_t experts = 0; // cached (layer, expert) pairs
  uint64_t bytes = 0;
  double fillSeconds = 0;
  uint64_t selections = 0;    // of the cacheable layers' experts
  uint64_t gpuSelections = 0; // of those, run from the cache
  // Streamed experts (ExecutorOptions::streamedExperts): how many a token
  // may stream per layer, the choices streamed, the bytes copied, and the
  // host memory page-locked for it so far (the first layer's at load, the
  // rest in the background) and the seconds that took.
  int64_t streamedPerToken = 0;
  uint64_t streamedSelections = 0;
  uint64_t streamedBytes = 0;
  uint64_t pinnedBytes = 0;
  uint64_t pinTargetBytes = 0; // all layers' ranges
  double pinSeconds = 0;
  double prefillStreamShare = 0; // of a prefill step's CPU-side experts, streamed now
  // Decode choices whose gate and up the GPU computed (streamedGateUps), and
  // the share of an expert's bytes those two matrices are.
  uint64_t gateUpSelections = 0;
  double gateUpShare = 0;
  // The mean share of those choices' gate and up rows the GPU computed
  // (ExecutorOptions::streamedGateUpShare), and that share now.
  double gateUpRowShare = 0;
  double decodeGateUpShare = 0;
  int64_t gateUpsPerToken = 0; // gate/up-only experts streamed beside streamedPerToken
  // Whole experts moved by decode's balance (ExecutorOptions::
  // moveStreamedExperts): slots for them, how many decode streams now, and
  // the moves so far. streamedPerToken is the count it started with.
  int64_t streamedSlots = 0;
  int64_t decodeStreamedNow = 0;
  int64_t streamedMoves = 0;
  // Why the background page-locking stopped short (the layers after run
  // all their experts on the CPU); empty when it did not.
  std::string pinningStopped;
  // --stream-experts auto: whether it ran at load, the bandwidths it
  // measured side by side (bytes/s), the experts' worth they give the GPU;
  // or why it streams none (also where it did not run: no reservation).
  bool autoStreamingRan = false;
  double chosenHostBandwidth = 0, chosenLinkBandwidth = 0, chosenShare = 0;
  std::string streamingNone;
};

// ExecutorOptions::expertPages checked: "file" or "huge".
inline Status checkExpertPages(const std::string &pages) {
  if (pages == "file" || pages == "huge")
    return Status::success();
  return Status::error("--expert-pages '" + pages +
                       "': give file (read the experts where the model file is mapped) or huge "
                       "(copy them into huge pages at load).");
}

// A range of host memory.
struct HostBytes {
  const uint8_t *data = nullptr;
  uint64_t bytes = 0;
};

// How the CPU threads and routed experts were spread over NUMA nodes.
struct NumaPlacement {
  std::string nodes; // "node 0: CPUs 0-7; node 1: CPUs 8-15"; empty: one node
  std::vector<int> threadsPerNode;
  uint64_t expertBytes = 0; // routed-expert bytes copied to the nodes
  double seconds = 0;       // spent copying them
  bool hugePages = false;   // one node: the experts copied into huge pages (expertPages)
};

// Decode's time per MoE layer in the steady state: host time between the
// starts of consecutive CPU-expert layers within a decode step (one layer's
// experts, the copy back, the next layer's attention and routing on the
// GPU, the copy to the host), summed over the steps since it was cleared.
// Unlike a step's time over its MoE layers it leaves out the embedding,
// the dense layers and the output head, which a model of 58 MoE layers
// spreads thinner than a test model of a few. Measured without waiting for
// anything the step does not wait for already.
struct MoeLayerTiming {
  double seconds = 0;       // summed intervals
  double expertSeconds = 0; // their CPU experts' part (each interval's first layer)
  int64_t intervals = 0;    // how many (MoE layers - 1 per decode step)
  // With the GPU clock on (setMoeLayerGpuClock): GPU time between the two
  // (from the experts' result queued for the GPU to the next layer's copies
  // to the host done), summed over `gpuIntervals` of the intervals.
  double gpuSeconds = 0;
  int64_t gpuIntervals = 0;
  // The host's side of the intervals: from one layer's experts' end to its
  // wait for the next layer's copies to the host (queueing the GPU's work),
  // that wait, and from its end to the next experts' start (routing them).
  double hostQueueSeconds = 0, hostWaitSeconds = 0, hostStartSeconds = 0;
  // With the GPU clock on and streamed experts (decode): per layer, from
  // the moment the host starts queueing the streamed share, the host time
  // until the CPU's experts start and end, and the GPU time until the
  // link's copies and the streamed products are done; summed over
  // `streamedLayers` layers. `gpuLaterLayers` of them ended on the GPU
  // after the CPU, by `gpuLaterSeconds` together.
  double streamQueueSeconds = 0, streamCpuEndSeconds = 0, streamCopiedSeconds = 0,
         streamGpuEndSeconds = 0, gpuLaterSeconds = 0;
  int64_t streamedLayers = 0, gpuLaterLayers = 0;
};

// Wall time of the parts of the CPU's routed experts (RoutedExperts::forward).
struct ExpertPhaseSeconds {
  double gather = 0;  // grouping the tokens by expert
  double tiles = 0;   // experts on the AMX tile kernels
  double rows = 0;    // experts on the row kernels (or oneDNN)
  double combine = 0; // each token's weighted sum
};

// Where the time of the steps since profiling was switched on went. The
// hybrid executor waits for the GPU after each GPU step while profiling, so
// GPU work no longer overlaps the CPU experts: profile separately from the
// runs you time.
struct ExecutionProfile {
  double gpuSeconds = 0;       // GPU kernels
  double cpuExpertSeconds = 0; // routed experts on the CPU
  ExpertPhaseSeconds expertPhases; // of cpuExpertSeconds
  double cpuOtherSeconds = 0; // other CPU steps (embedding)
  double transferSeconds = 0; // copies between host and GPU, and between GPUs
  uint64_t transferBytes = 0;
  uint64_t gpuToGpuBytes = 0;             // of transferBytes, from one GPU to another
  std::vector<double> gpuSecondsByDevice; // gpuSeconds by the plan's cuda:N
  // gpuSeconds by the kind of the plan op a step runs ("mla_attention",
  // "lm_head", ...), and how many steps of each ran: each step's time
  // includes its launches and the wait for it.
  std::map<std::string, double> gpuSecondsByOpKind;
  std::map<std::string, int64_t> gpuStepsByOpKind;
  bool available = false;                 // false: the executor does not profile
};

class Executor {
public:
  virtual ~Executor() = default;

  // Feeds `tokens` at the next positions (prefill when several, in chunks
  // of at most chunkSize; decode when one) and returns the logits of the
  // last token ([vocab]) or, with allPositions, of every token
  // ([tokens.size() * vocab], token-major). Fails without changing any state
  // for an empty input, a token id outside the vocabulary, or when the KV
  // cache would overflow (the message says how many tokens still fit).
  virtual StatusOr<std::vector<float>> forward(const std::vector<int32_t> &tokens,
                                               bool allPositions = false) = 0;

  // One step for several sequences at once (continuous batching): each
  // entry's tokens go to the next positions of its own KV cache. Returns
  // the logits of each entry's last token ([batch.size() * vocab], in batch
  // order). Fails without changing any state for an empty batch or entry,
  // an unknown or repeated sequence, a bad token id, or a cache that would
  // overflow. The caller bounds the step's size (no chunking here).
  virtual StatusOr<std::vector<float>> forwardBatch(const std::vector<SequenceTokens> &batch) = 0;
  // Greedy decoding where the logits are: the step of forwardBatch(), but
  // returns each entry's most likely next token (the lower id on a tie)
  // instead of its logits; a GPU plan then copies an id per entry instead of
  // a vocabulary of logits.
  virtual StatusOr<std::vector<int32_t>> forwardGreedy(const std::vector<SequenceTokens> &batch) {
    StatusOr<std::vector<float>> logits = forwardBatch(batch);
    if (!logits)
      return logits.status();
    std::vector<int32_t> ids(batch.size());
    argmaxRows(logits->data(), static_cast<int64_t>(batch.size()), vocabSize(), ids.data());
    return ids;
  }
  // Sampling where the logits are: the step of forwardBatch(), but returns
  // each entry's next token drawn by its `sampling` (exec::sampleToken's
  // rule; greedy at temperature 0). A GPU plan that lists the sampling
  // kernel then copies an id per entry instead of a vocabulary of logits.
  virtual StatusOr<std::vector<int32_t>>
  forwardSampled(const std::vector<SequenceTokens> &batch,
                 const std::vector<TokenSampling> &sampling) {
    if (sampling.size() != batch.size())
      return Status::error("forwardSampled needs one sampling per batch entry");
    StatusOr<std::vector<float>> logits = forwardBatch(batch);
    if (!logits)
      return logits.status();
    std::vector<int32_t> ids(batch.size());
    for (size_t i = 0; i < batch.size(); ++i)
      ids[i] = sampleToken(logits->data() + i * size_t(vocabSize()), vocabSize(), sampling[i]);
    return ids;
  }

  virtual int64_t position(int sequence) const = 0; // tokens in that sequence's cache
  int64_t position() const { return position(0); }
  virtual int64_t cacheCapacity() const = 0; // positions each sequence's cache holds
  virtual int sequenceCount() const = 0;
  virtual int64_t chunkSize() const = 0; // most tokens forward() runs in one step
  // MoE layers whose routed experts run the plan's generated CPU code (the
  // others use the reference kernels).
  virtual int generatedExpertLayers() const = 0;
  // Of those, the layers whose prefill runs the AMX tile kernels for experts
  // with ExecutorOptions::expertTileTokens tokens or more.
  virtual int tileExpertLayers() const = 0;
  virtual void reset(int sequence) = 0; // empties the cache (a new conversation)
  void reset() { reset(0); }
  // Keeps only the first `tokens` positions of the cache, for a
  // conversation whose history diverges from what was fed after them.
  virtual void truncate(int sequence, int64_t tokens) = 0;
  void truncate(int64_t tokens) { truncate(0, tokens); }
  virtual std::vector<RoutingStats> routingStats() const = 0;
  virtual void clearRoutingStats() = 0;
  virtual int64_t vocabSize() const = 0; // logits per token
  virtual int threadCount() const = 0;   // CPU threads
  // Profiling on (clears the profile) or off.
  virtual void setProfiling(bool) {}
  virtual ExecutionProfile profile() const { return {}; }
  virtual ExpertCacheStats expertCacheStats() const { return {}; }
  // With streamed experts: bytes/s the link moves from their page-locked
  // host memory into their staging on the GPU, measured now (the ceiling of
  // the GPU's share); 0 without.
  virtual double streamLinkBandwidth() { return 0; }
  // Waits for what loading left to run in the background (the streamed
  // experts' page-locking after the first layer's), so that a benchmark
  // times the executor as it runs from then on. Steps need not wait: a
  // layer streams once its experts are locked.
  virtual void finishLoading() {}
  // Plans with CPU experts on a GPU executor; zero intervals elsewhere.
  virtual MoeLayerTiming moeLayerTiming() const { return {}; }
  virtual void clearMoeLayerTiming() {}
  // Whether decode also marks the GPU's time between MoE layers (two timing
  // events a layer; off unless a benchmark asks).
  virtual void setMoeLayerGpuClock(bool) {}
  virtual WeightConversionStats weightConversions() const { return {}; }
  virtual NumaPlacement numaPlacement() const { return {}; }
  // The routed experts' bytes the CPU threads read, where they read them
  // (the model file's mapping or the huge-page copy), so that a benchmark
  // can measure the host's read bandwidth over those very pages. Empty with
  // NUMA node copies (each node's band is read by that node's threads) and
  // without CPU experts.
  virtual std::vector<HostBytes> routedExpertBytes() const { return {}; }
  // "cpu", or the GPU that runs the GPU ops ("cuda:0 (NVIDIA H100 80GB HBM3)").
  virtual std::string deviceDescription() const = 0;
};

} // namespace kt::exec
