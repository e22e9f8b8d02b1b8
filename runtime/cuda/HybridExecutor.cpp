#include "runtime/cuda/HybridExecutor.h"

#include "runtime/cpu/FeedForward.h"
#include "runtime/cpu/GeneratedKernels.h"
#include "runtime/cpu/IsaVariants.h"
#include "runtime/cpu/Linear.h"
#include "runtime/cpu/Math.h"
#include "runtime/cpu/OpBinder.h"
#include "runtime/cpu/ReadBandwidth.h"
#include "runtime/cpu/Rope.h"
#include "runtime/cpu/ThreadPool.h"
#include "runtime/cuda/CudaDevice.h"
#include "runtime/cuda/DeviceQuery.h"
#include "runtime/cuda/Fp8Gemm.h"
#include "runtime/cuda/KernelCache.h"
#include "runtime/cuda/KernelCatalog.h"
#include "runtime/cuda/Nvrtc.h"
#include "runtime/exec/SequenceCaches.h"
#include "runtime/exec/StreamedExperts.h"
#include "runtime/quant/Quant.h"
#include "runtime/safetensors/Safetensors.h"
#include "runtime/support/ByteSize.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <tuple>

#include <unistd.h>

namespace kt::cuda {

namespace {

using gguf::GgmlType;

enum class Where { Host, Gpu };
enum class Kind { Tokens, Floats, ExpertIds };

// One value of the graph: where it lives, what it holds, and (after
// binding) the buffer it uses, sized for the most rows a step has.
struct Value {
  Where where = Where::Gpu;
  Kind kind = Kind::Floats;
  int64_t width = 0;
  int64_t experts = 0; // ExpertIds: the gate's expert count
  bool defined = false;
  int slot = -1;
  DevicePointer gpu = 0;
  void *host = nullptr;
  int logicalGpu = 0; // of a GPU value (virtual GPUs)
  // The run of the fused norm that last wrote this value's FP8 quantization
  // into its GPU's GEMM scratch (0: none); the GEMMs reading the value reuse
  // it where the scratch still holds it (runFp8Gemm's quantizedBy).
  uint64_t fp8Quantization = 0;
  float *hostFloats() const { return static_cast<float *>(host); }
  int32_t *hostIds() const { return static_cast<int32_t *>(host); }
};

struct Kernel {
  LoadedKernel loaded;
  unsigned threads = 0;
  // Its entries wait for the kernel before them (KT_WAIT_FOR_PRIOR_GRID), so
  // decode graphs may start it early.
  bool waitsForPriorGrid = false;
};

// A matrix in GPU memory (GGUF storage type, or the FP8 checkpoint's e4m3
// with its block scales) and its GEMVs: one token per block for decode,
// kGemvPrefillTokenTile for prefill (FP8: one token per block in both);
// `heads` matrices of `out` x `in` one after another for the per-head batches.
struct GpuMatrix {
  DevicePointer data = 0;
  DevicePointer scales = 0; // FP8: weight_scale_inv, one f32 per 128x128 block
  int64_t out = 0, in = 0, heads = 1;
  GgmlType type = GgmlType::F32;
  const Kernel *kernel = nullptr, *tiled = nullptr;
  unsigned blocks = 0, tiledBlocks = 0; // of the decode and prefill kernels
  // Dense Q8_0 matrices of split rows (GemvVariant::SplitRows): one-token
  // steps quantize x into the GPU's planes, then run the planes GEMV.
  const Kernel *planes = nullptr, *quantizePlanes = nullptr;
  unsigned planesBlocks = 0;
  // FP8 on sm_90a: the tensor-core GEMM for steps of more than
  // kFp8GemvMaxTokens tokens, on the default tiles (null: the GEMV for
  // every step) and the other widths the plan lists (fp8GemmTiling picks).
  struct Fp8Gemm {
    Fp8GemmWeight weight;
    Fp8GemmKernels kernels;
  };
  std::shared_ptr<const Fp8Gemm> fp8Gemm;
  std::vector<std::shared_ptr<const Fp8Gemm>> fp8GemmWidths;
  // FP8 routed experts on sm_90a: the grouped GEMM over all experts' stacked
  // weights (prefill; null: the GEMV by expert id).
  std::shared_ptr<const Fp8Gemm> fp8Grouped;
  // FP8 on sm_80 to sm_89: the bf16 mma GEMM for steps of at least
  // kFp8Bf16GemmMinTokens tokens (null: the GEMV).
  const Kernel *fp8Bf16Gemm = nullptr;
  // Q8_0 and k-quants on sm_80 and newer: the tensor-core GEMM for steps of
  // at least kMmaGemmMinTokens tokens (null: the token-tiled GEMV); for
  // routed experts (stacked), its grouped form for every prefill step.
  const Kernel *mmaGemm = nullptr;
};

// FP8 steps of up to this many tokens keep the GEMV on f32 activations
// (single-token decode); larger ones quantize the activations and run the
// GEMM, which reads the weight once for 128 tokens and is faster from two
// tokens on (fp8_gemm_bench measures the crossover; docs/gpu-kernels.md).
constexpr int64_t kFp8GemvMaxTokens = 1;
// The bf16 mma GEMM of GPUs without FP8 tensor cores (sm_80 to sm_89) has
// a block per 64 outputs and 64 tokens and no pipelining: it overtakes the
// GEMV between 8 and 32 tokens (measured as compute_80 PTX on the H100).
constexpr int64_t kFp8Bf16GemmMinTokens = 32;
// The GGUF tensor-core GEMMs have the same tiles; from this many tokens on.
constexpr int64_t kMmaGemmMinTokens = 32;
// Prefill segments whose attention covers at least this many tokens x
// positions (a 512-token chunk after 512 cached ones) run MLA on tensor
// cores, in bf16; shorter ones keep the f32 core, whose results match the
// CPU's to 1e-6 (the tensor cores' to about 1e-3).
constexpr int64_t kMlaPrefillMmaMinWork = 512 * 1024;

struct LatentCache {
  DevicePointer latent = 0, rope = 0;
};

// The tokens of one sequence within a step: rows [row, row + count) of
// every activation, at positions [start, start + count) of its cache.
struct Segment {
  int64_t row = 0, count = 0, start = 0;
  size_t sequence = 0;
};

struct StepContext {
  int64_t rows = 0;              // tokens of this step, all sequences
  std::vector<Segment> segments; // in row order, covering every row once
  bool lastTokenOnly = false;    // lm_head: each segment's last token's logits only
  bool decode = false;           // one token of each sequence: graphs may replay it
  const int32_t *tokens = nullptr;
};

class Step {
public:
  virtual ~Step() = default;
  virtual Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
                     const std::vector<Value *> &out) = 0;
  // Floats of GPU scratch the step needs for `rows` tokens.
  virtual size_t scratchFloats(int64_t) const { return 0; }
  // Work on the host (GPU steps after it that do not need its result are
  // queued before it, so the GPU runs them meanwhile).
  virtual bool runsOnHost() const { return false; }
  virtual bool movable() const { return true; } // a GPU step that may be queued earlier
  // Whether a CUDA graph can hold the step (GPU work only, no host copies).
  virtual bool capturable() const { return !runsOnHost(); }
};

using Clock = std::chrono::steady_clock;
double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct BoundStep {
  std::unique_ptr<Step> step;
  std::vector<int> inputs, outputs;
  int64_t graphRegion = -1; // the plan's decode graph region, -1 for none
  int gpu = 0;              // the logical GPU it runs on (or copies to or from)
  size_t op = 0;            // the plan op it runs
  std::string opKind;       // its kind (the plan is not kept after binding)
};

// Same-size buffers handed out at bind time by liveness, so values that are
// never alive together share memory and no step allocates.
struct SlotPlanner {
  std::vector<size_t> bytes;
  std::vector<bool> busy;
  int acquire(size_t need) {
    int best = -1;
    for (size_t i = 0; i < bytes.size(); ++i)
      if (!busy[i] && bytes[i] >= need && (best < 0 || bytes[i] < bytes[size_t(best)]))
        best = int(i);
    if (best < 0) {
      bytes.push_back(need);
      busy.push_back(false);
      best = int(bytes.size() - 1);
    }
    busy[size_t(best)] = true;
    return best;
  }
  void release(int slot) { busy[size_t(slot)] = false; }
};

unsigned ceilDiv(int64_t a, int64_t b) { return static_cast<unsigned>((a + b - 1) / b); }

class ExpertsStep;

// N of "cuda:N", -1 for any other device.
int gpuIndex(const std::string &device) {
  if (device.rfind("cuda:", 0) != 0 || device.size() == 5)
    return -1;
  int index = 0;
  for (char c : device.substr(5)) {
    if (c < '0' || c > '9' || index > 1000)
      return -1;
    index = index * 10 + (c - '0');
  }
  return index;
}

struct CachedExperts; // the GPU expert cache of one CPU-placed layer (below)
} // namespace

// ---------------------------------------------------------------- executor

class HybridExecutor::Impl {
public:
  Impl(int threads, const cpu::NumaTopology &numa) : pool(threads, numa) {}
  ~Impl();

  // A physical GPU the plan runs on and the step buffers it holds.
  struct Gpu {
    std::unique_ptr<CudaDevice> device;
    GpuInfo info;
    DevicePointer scratch = 0;   // steps' temporaries
    DevicePointer positions = 0; // the step's positions (int32)
    DevicePointer tokens = 0;    // the step's token ids, for a GPU embedding
    std::vector<DevicePointer> allocations;
    int multiprocessors = 0;
    // The FP8 GEMM's activations, scales and split-K partials, sized at
    // bind time for the widest FP8 GEMM weight on this GPU, and rows per
    // token (routed experts quantize each token's top-k assignments).
    Fp8GemmScratch fp8;
    int64_t fp8RowsPerToken = 1;
    // One token's x as three int8 planes and their block scales, for the
    // planes GEMVs (sized for the widest split-row matrix on this GPU); and
    // the x they hold (0: none), which a GEMV of the same x, unchanged since
    // (gemv's xUnchanged), multiplies without quantizing again.
    int64_t planesIn = 0;
    DevicePointer planes = 0, planeScales = 0;
    DevicePointer planesHold = 0;
  };
  std::vector<Gpu> physical;
  std::vector<int> physicalOf; // logical GPU (cuda:N of the plan) -> index into physical
  bool peerAccess = false;     // between every pair of physical GPUs
  // The GPU that steps and allocations use now (use()), and its buffers.
  CudaDevice *device = nullptr;
  DevicePointer scratch = 0, positionsGpu = 0, tokensGpu = 0;
  int currentPhysical = -1;
  // Makes logical GPU `logical` the one steps run on and allocations are
  // charged to; makes its context current when the physical GPU changes.
  Status use(int logical);
  // For a call from the caller's thread: makes the context current again.
  Status enter() {
    currentPhysical = -1;
    return use(0);
  }
  CudaDevice &deviceOf(const Value &v) {
    return *physical[size_t(physicalOf[size_t(v.logicalGpu)])].device;
  }

  std::string arch; // the plan's
  std::unique_ptr<KernelCache> cache;
  const plan::Plan *plan = nullptr;
  std::string planName;
  // By physical GPU and KernelSpec::describe(): each GPU loads its own modules.
  std::map<std::pair<int, std::string>, std::unique_ptr<Kernel>> kernels;
  KernelLoadStats loadStats;

  cpu::ThreadPool pool;
  cpu::Workspace workspace;
  std::unique_ptr<cpu::GeneratedKernels> generated;
  int generatedExpertLayers = 0;
  int tileExpertLayers = 0;
  exec::NumaPlacement numaPlacement;
  std::unique_ptr<safetensors::Checkpoint> fp8; // the plan's FP8 checkpoint, if any
  // FP8 weights the CPU (and the MLA operator's kv_b split) read as q8_0.
  std::unique_ptr<cpu::WeightConversions> conversions;
  int64_t expertGemmTokens = 0;
  int64_t expertTileTokens = 0;
  bool hugePageExperts = false; // ExecutorOptions::expertPages == "huge"

  std::vector<BoundStep> steps;
  std::vector<Value> values;
  int outputValue = -1;
  int64_t vocab = 0;
  int64_t embeddingRows = 0;
  int64_t chunkSize = 0;
  exec::SequenceCaches sequences;
  std::vector<std::vector<LatentCache>> caches; // [sequence][layer]
  struct CacheShape {
    int64_t latent, rope;
    int gpu; // logical GPU of the attention op
  };
  std::vector<CacheShape> cacheShapes;

  // The step's positions, page-locked so that their copies are queued, not
  // waited for (every step ends waiting for its result, so the next one
  // writes them only once the copies are done); room for chunkSize.
  int32_t *positionsHost = nullptr;
  // The GPU whose queued copies to it read host values: waited for before a
  // host step writes any (TransferStep; null where none are in flight).
  CudaDevice *hostReadsPending = nullptr;
  Status waitForHostReads() {
    if (!hostReadsPending)
      return Status::success();
    Status s = hostReadsPending->synchronize();
    hostReadsPending = nullptr;
    return s;
  }
  // `gpu`'s stream was waited for: its copies to it are done too.
  void streamDone(const CudaDevice *gpu) {
    if (hostReadsPending == gpu)
      hostReadsPending = nullptr;
  }
  std::vector<void *> hostAllocations;
  uint64_t weightBytes = 0, bufferBytes = 0;
  int logicalGpus = 1;                // cuda:0 .. cuda:logicalGpus-1
  bool virtualGpus = false;           // all of them on GPU 0
  int bindingGpu = 0;                 // the logical GPU allocations are charged to
  std::vector<uint64_t> logicalBytes; // per logical GPU
  bool profiling = false;
  exec::ExecutionProfile profile;
  bool cudaGraphs = true;
  bool fp8Gemm = true; // ExecutorOptions::fp8Gemm
  bool fusedNormQuantization = true; // ExecutorOptions::fusedNormQuantization
  bool fusedResidualNorms = true;    // ExecutorOptions::fusedResidualNorms
  bool mlaTensorCores = true; // ExecutorOptions::mlaTensorCores
  bool mmaGemm = true;        // ExecutorOptions::ggufTensorCores
  // The GPU expert cache (on cuda:0), and what the plan lets it use there.
  uint64_t expertCacheBudget = 0;
  std::optional<uint64_t> firstGpuBudget;
  bool expertCacheFilled = false;
  exec::ExpertCacheStats expertCache;
  // Sets up `experts` (CPU-placed) for the cache where its input and result
  // are on cuda:0; returns the GPU value of its input, or -1.
  StatusOr<int> bindExpertCache(ExpertsStep &experts, cpu::OpBinder &b,
                                const cpu::OpBinder::ExpertTensors &tensors, size_t opIndex,
                                const std::vector<Value *> &in);
  // Copies the most often chosen experts by `counts` (per gate path) to the
  // GPU until the cache's bytes are used.
  Status fillExpertCache(const std::vector<exec::RoutingStats> &counts);
  // Without a profile, the first prefill's routing chooses the experts.
  Status fillExpertCacheAfterPrefill();
  // Streamed experts (ExecutorOptions::streamedExperts): some of the
  // experts left to the CPU are copied into streamedExperts staging slots
  // and run on the GPU (CachedExperts::route and queue). One set of slots serves all
  // layers: the stream runs them one after the other.
  // Prefill streams through all streamedExperts slots; decode streams
  // decodeShare.experts whole experts (as many, or where they move by
  // feedback, decodeShare.moveExperts, one fewer at first).
  int64_t streamedExperts = 0;
  int64_t streamedGateUps = 0; // ExecutorOptions::streamedGateUps
  // Decode: how many whole experts it streams, and how much of the
  // gate/up-only experts' gate and up rows the GPU computes, in experts'
  // worth (0 to streamedGateUps; the last of them streams only its first
  // rows). Unless the options fix the share, it balances the CPU and the
  // link by feedback, as prefill's share does: after each decode MoE layer
  // that streamed, up a step when the GPU had finished by the time the
  // CPU's experts had, down a step when not (exec::StreamedShareBalance;
  // moveExperts: ExecutorOptions::moveStreamedExperts, or auto).
  exec::StreamedShareBalance decodeShare;
  bool balanceGateUpShare = true;
  // gate and up: streamedExperts + streamedGateUps slices each, down:
  // streamedExperts (the gate/up-only experts' slots come last).
  DevicePointer streamStaging[3] = {};
  // Prefill: the share of a step's CPU-side experts the GPU streams (those
  // chosen most). It balances the two by feedback: up a notch when the GPU
  // had finished by the time the CPU's experts had, down a notch when not.
  double prefillStreamShare = 0.5;
  // Page-locked by registerHostReadOnly, the streamed experts' ranges by
  // setUpExpertStreaming and then by pinThread (under pinMutex).
  std::vector<const void *> registeredHost;
  std::thread pinThread;
  std::atomic<bool> stopPinning{false};
  std::mutex pinMutex;
  std::string pinningStopped; // why the background locking stopped (pinMutex)
  std::atomic<uint64_t> pinnedBytes{0};
  std::atomic<double> pinnedSeconds{0};
  Clock::time_point pinStarted;
  // Locks for `gpu` those of `merged`'s ranges (by index) not `locked` yet.
  Status lockRanges(CudaDevice &gpu, const std::vector<std::pair<uintptr_t, uintptr_t>> &merged,
                    const std::vector<size_t> &ranges, std::vector<bool> &locked);
  // Waits for the background locking to end, or (`stop`) for it to stop
  // after the range it is locking.
  void joinPinning(bool stop);
  // Takes the staging slots out of the cache's room (`reserved` by the plan,
  // `askedCache` by the options, -1: the rest) and page-locks the host
  // memory of the experts they copy.
  // `progress`: says on stderr what the page-locking costs (seconds for
  // tens of GiB).
  Status setUpExpertStreaming(uint64_t reserved, int64_t askedCache, bool progress);
  // ExecutorOptions::streamedExperts = kAutoStreamedExperts: the layers are
  // bound for streaming, and setUpExpertStreaming chooses how much.
  bool autoStreaming = false;
  // Auto: the link's and the CPU threads' bytes/s over the first layer's
  // routed experts (page-locked at load), measured side by side as decode
  // runs them: copies of distinct experts' gate slices queued for about 40
  // ms, and the threads reading a sample of the experts meanwhile; the best
  // of three such rounds.
  Status measureStreamingBandwidths(const CachedExperts &first, double &host, double &link);
  void unlockStreamedExperts(); // undoes the page-locking
  // Decode graphs by (first step, the step's sequences in row order, lm_head
  // on last tokens only): a batch of sequences replays graphs of its own.
  using GraphKey = std::tuple<size_t, std::vector<size_t>, bool>;
  std::map<GraphKey, CapturedGraph> graphs;
  GraphKey graphKey;      // runGraph's lookup, kept so that a warm step allocates none
  size_t batchGraphs = 0; // of several sequences, at most kMaxBatchGraphs
  static constexpr size_t kMaxBatchGraphs = 256;
  HybridExecutor::GraphStats graphStats;

  // Runs steps [begin, end) as a CUDA graph: captured on first use for
  // this sequence, replayed after.
  Status runGraph(size_t begin, size_t end, StepContext &ctx);
  Status runSteps(size_t begin, size_t end, StepContext &ctx);
  std::vector<Value *> stepIn, stepOut; // runSteps' operands (kept: no allocation)

  Status bind(const gguf::GgufModel &model);
  Status planBuffers();
  // One step over the tokens of one or several sequences (`tokens` holds
  // each segment's rows in order, at most chunkSize in all); writes each
  // segment's last logits, or every token's.
  // With `ids`, each segment's next token instead: drawn by `sampling`
  // (one per segment), or the most likely one without it. `segments` is
  // handed back (with each segment's row and start filled in) so that its
  // room serves the next step.
  Status runStep(const int32_t *tokens, std::vector<Segment> &segments, bool lastTokenOnly,
                 float *logits, int32_t *ids = nullptr,
                 const exec::TokenSampling *sampling = nullptr);
  // forwardBatch(), forwardGreedy() and forwardSampled(): each entry's last
  // logits into `logits`, or with `ids` its next token (by `sampling`, one
  // per entry, or greedy).
  Status runBatch(const std::vector<exec::SequenceTokens> &batch, float *logits, int32_t *ids,
                  const exec::TokenSampling *sampling = nullptr);
  // forward()'s and runBatch()'s step inputs and results, kept between
  // calls: a warm decode step allocates only what the call returns.
  std::vector<Segment> stepSegments;
  std::vector<int32_t> batchTokens, batchIds;
  std::vector<size_t> batchEntries; // batch index of each segment
  std::vector<float> batchLogits;
  std::vector<exec::TokenSampling> batchSampling;
  // Greedy decoding and sampling on the GPU where the logits are (plans
  // that list argmax and sample_rows).
  const Kernel *argmax = nullptr;
  const Kernel *sampler = nullptr;
  DevicePointer argmaxIds = 0;    // int32 per sequence, on the logits' GPU
  DevicePointer sampleParams = 0; // kSampleParamsBytes per sequence, beside them
  std::vector<float> hostLogits; // without the kernels: the logits, then the choice here
  uint64_t fp8NormRuns = 0;      // fused producer runs so far (rmsNormForFp8, siluMulForFp8)
  // This decode step's CPU-expert layer starts, and the intervals between
  // them so far (exec::MoeLayerTiming).
  std::vector<Clock::time_point> expertLayerStarts, expertLayerEnds;
  // Decode: each wait for copies to the host, from its call to its return.
  std::vector<std::pair<Clock::time_point, Clock::time_point>> hostCopyWaits;
  exec::MoeLayerTiming moeLayers;
  // GPUs with copies to the host queued and not yet waited for: a run of
  // copies (a MoE layer's activations, choices and weights) is waited for
  // once, when it ends: before the next step, so that GPU work queued after
  // the copies (the shared expert) is not waited for too.
  std::vector<CudaDevice *> hostCopiesPending;
  bool copiesGpuToHost(const BoundStep &s) const;
  // The MoE-layer GPU clock (setMoeLayerGpuClock): in decode steps, a mark
  // where a layer's expert result is queued for the GPU and one where the
  // next layer's copies to the host end; paired when the step ends.
  bool moeLayerGpuClock = false, decodeStep = false;
  // Decode graphs let each kernel that waits for the one before it start
  // early (programmatic dependent launch; ExecutorOptions::overlapLaunches).
  bool capturingDecodeGraph = false, overlapLaunches = true;
  struct GpuMark {
    CudaDevice *gpu;
    size_t mark;
    bool afterExperts; // else: after copies to the host
  };
  std::vector<GpuMark> gpuMarks;
  // A decode layer's streamed share on the clock (streaming devices only):
  // GPU marks where the side stream starts its copies, where they are done
  // and where the products are; host times where queueing began and where
  // the CPU's experts started and ended.
  struct StreamTimeline {
    CudaDevice *gpu;
    size_t start, copied, done;
    Clock::time_point queued, cpuStart, cpuEnd;
  };
  std::vector<StreamTimeline> streamTimelines;
  bool onMoeLayerClock() const { return moeLayerGpuClock && decodeStep && !profiling; }
  Status markGpuTime(CudaDevice *gpu, bool afterExperts) {
    if (!onMoeLayerClock())
      return Status::success();
    StatusOr<size_t> mark = gpu->markTime();
    if (!mark)
      return mark.status();
    gpuMarks.push_back({gpu, *mark, afterExperts});
    return Status::success();
  }
  // Adds each experts-to-copies pair of marks to moeLayers (the stream has
  // passed them all) and frees the marks.
  Status addGpuMarks() {
    for (size_t i = 0; i < gpuMarks.size(); ++i) {
      if (!gpuMarks[i].afterExperts)
        continue;
      for (size_t j = i + 1; j < gpuMarks.size(); ++j) {
        if (gpuMarks[j].afterExperts)
          break;
        if (gpuMarks[j].gpu != gpuMarks[i].gpu)
          continue;
        StatusOr<double> seconds =
            gpuMarks[i].gpu->secondsBetweenMarks(gpuMarks[i].mark, gpuMarks[j].mark);
        if (!seconds)
          return seconds.status();
        moeLayers.gpuSeconds += *seconds;
        ++moeLayers.gpuIntervals;
        break;
      }
    }
    // The GPU's streamed share may end after the step's last wait.
    if (!streamTimelines.empty())
      if (Status s = streamTimelines.front().gpu->synchronize(); !s.ok())
        return s;
    for (const StreamTimeline &t : streamTimelines) {
      StatusOr<double> copied = t.gpu->secondsBetweenMarks(t.start, t.copied);
      StatusOr<double> done = t.gpu->secondsBetweenMarks(t.start, t.done);
      if (!copied || !done)
        return copied ? done.status() : copied.status();
      const double cpuEnd = std::chrono::duration<double>(t.cpuEnd - t.queued).count();
      moeLayers.streamQueueSeconds += std::chrono::duration<double>(t.cpuStart - t.queued).count();
      moeLayers.streamCpuEndSeconds += cpuEnd;
      moeLayers.streamCopiedSeconds += *copied;
      moeLayers.streamGpuEndSeconds += *done;
      ++moeLayers.streamedLayers;
      if (*done > cpuEnd) {
        moeLayers.gpuLaterSeconds += *done - cpuEnd;
        ++moeLayers.gpuLaterLayers;
      }
    }
    for (const GpuMark &m : gpuMarks)
      m.gpu->clearTimeMarks();
    for (const StreamTimeline &t : streamTimelines)
      t.gpu->clearTimeMarks();
    gpuMarks.clear();
    streamTimelines.clear();
    return Status::success();
  }
  Status finishHostCopies() {
    if (hostCopiesPending.empty())
      return Status::success();
    if (Status s = markGpuTime(hostCopiesPending.front(), false); !s.ok())
      return s;
    const Clock::time_point called = Clock::now();
    for (CudaDevice *gpu : hostCopiesPending) {
      if (Status s = gpu->synchronize(); !s.ok())
        return s;
      streamDone(gpu);
    }
    hostCopiesPending.clear();
    if (decodeStep)
      hostCopyWaits.push_back({called, Clock::now()});
    return Status::success();
  }

  // The loaded kernel of `spec`, compiled or read from the cache; the plan
  // must list the specialization (else it comes from another ktc).
  StatusOr<const Kernel *> kernel(const StatusOr<KernelSpec> &spec, const std::string &where);
  // The error for a kernel `where` needs that the plan does not list.
  Status unlistedKernel(const std::string &where, const KernelSpec &spec) const;
  // Whether the plan lists an FP8 GEMM of `spec`'s shape with other
  // constants (planListsOtherVersionOf).
  bool listsOtherFp8GemmVersion(const KernelSpec &spec) const;
  // Whether the plan lists `spec` for its arch (same file, entry and constants).
  bool listsKernel(const KernelSpec &spec) const {
    return std::any_of(plan->kernelSpecializations.begin(), plan->kernelSpecializations.end(),
                       [&](const plan::KernelSpecialization &k) {
                         return k.file == spec.file && k.entry == spec.entry &&
                                k.defines == spec.defines && k.arch == arch;
                       });
  }
  StatusOr<DevicePointer> allocate(size_t bytes, bool weights);
  StatusOr<DevicePointer> upload(const void *data, size_t bytes);
  // A dense Q8_0 matrix of `rows` GGUF rows of `cols` values, uploaded with
  // split rows (quant::splitQ8_0Rows) through splitRowsStaging, a chunk at a time.
  StatusOr<DevicePointer> uploadSplitRows(const void *gguf, int64_t rows, int64_t cols);
  static constexpr size_t kSplitRowsStagingBytes = size_t(32) << 20;
  std::vector<uint8_t> splitRowsStaging;
  Status launch(const Kernel &k, unsigned gridX, unsigned gridY, unsigned gridZ,
                unsigned sharedBytes, std::initializer_list<void *> arguments) {
    LaunchShape shape;
    shape.gridX = gridX;
    shape.gridY = gridY;
    shape.gridZ = gridZ;
    shape.blockX = k.threads;
    shape.sharedBytes = sharedBytes;
    return device->launch(k.loaded, shape, arguments,
                          capturingDecodeGraph && k.waitsForPriorGrid && overlapLaunches);
  }
  // y = W x for `tokens` tokens (and W's heads) laid out as `layout` says.
  // `xUnchanged`: the previous call multiplied the same x, unchanged since
  // (the FP8 GEMM may reuse the quantization that call made).
  // `quantizedBy`: the fused norm run that quantized x (Value::fp8Quantization).
  Status gemv(const GpuMatrix &w, DevicePointer x, DevicePointer y, int64_t tokens,
              GemvLayout layout, bool xUnchanged = false, uint64_t quantizedBy = 0) {
    DevicePointer data = w.data, scales = w.scales;
    layout.tokens = int(tokens);
    Gpu &gpu = physical[size_t(currentPhysical)];
    const DevicePointer planesHeld = gpu.planesHold;
    gpu.planesHold = 0; // holds x past this call only where it quantizes x below
    if (w.fp8Gemm && tokens > kFp8GemvMaxTokens && !layout.matrixIds) {
      const Fp8GemmTiling tiling = fp8GemmTiling(tokens, w.out, w.in, gpu.multiprocessors);
      const GpuMatrix::Fp8Gemm *path = w.fp8Gemm.get();
      for (const std::shared_ptr<const GpuMatrix::Fp8Gemm> &width : w.fp8GemmWidths)
        if (width->kernels.config.blockN == tiling.blockN)
          path = width.get();
      return runFp8Gemm(
          *device, path->kernels, path->weight, x, layout.xTokenStride, tokens, y,
          layout.yTokenStride, gpu.fp8,
          fp8GemmSplits(tokens, w.out, w.in, gpu.multiprocessors, path->kernels.config.blockN),
          xUnchanged, quantizedBy);
    }
    gpu.fp8.holds = {}; // the next call's xUnchanged speaks of this call's x only
    if (w.fp8Bf16Gemm && tokens >= kFp8Bf16GemmMinTokens && !layout.matrixIds) {
      int xStride = layout.xTokenStride, yStride = layout.yTokenStride, rows = int(tokens);
      return launch(*w.fp8Bf16Gemm, unsigned(w.out / 64), ceilDiv(tokens, 64), 1, 0,
                    {&data, &scales, &x, &xStride, &y, &yStride, &rows});
    }
    if (w.mmaGemm && tokens >= kMmaGemmMinTokens && !layout.matrixIds && w.heads == 1) {
      int xStride = layout.xTokenStride, yStride = layout.yTokenStride, rows = int(tokens);
      DevicePointer ungrouped = 0; // no tile table, row index or result rows
      return launch(*w.mmaGemm, unsigned(w.out / 64), ceilDiv(tokens, 64), 1, 0,
                    {&data, &x, &xStride, &y, &yStride, &rows, &ungrouped, &ungrouped, &ungrouped});
    }
    if (w.planes && tokens == 1 && !layout.matrixIds && w.heads == 1) {
      if (!xUnchanged || planesHeld != x) {
        DevicePointer planes = gpu.planes, planeScales = gpu.planeScales;
        if (Status s = launch(*w.quantizePlanes, quantizePlanesGridBlocks(w.in), 1, 1, 0,
                              {&x, &planes, &planeScales});
            !s.ok())
          return s;
      }
      gpu.planesHold = x;
      DevicePointer planes = gpu.planes, planeScales = gpu.planeScales;
      return launch(*w.planes, w.planesBlocks, 1, 1, 0, {&data, &planes, &planeScales, &y});
    }
    if (scales) // FP8: one token per block, the block scales before the activations
      return launch(*w.kernel, w.blocks, static_cast<unsigned>(tokens),
                    static_cast<unsigned>(w.heads), 0, {&data, &scales, &x, &y, &layout});
    const bool tiled = tokens > 1 && !layout.matrixIds; // chosen matrices differ per token
    const unsigned tiles =
        tiled ? ceilDiv(tokens, kGemvPrefillTokenTile) : static_cast<unsigned>(tokens);
    return launch(tiled ? *w.tiled : *w.kernel, tiled ? w.tiledBlocks : w.blocks, tiles,
                  static_cast<unsigned>(w.heads), 0, {&data, &x, &y, &layout});
  }
  // silu(gate x) * (up x) of the chosen experts (decode: one token per
  // block, matrix ids in `layout`), in one pass over both stacks.
  Status gateUpGemv(const Kernel &k, const GpuMatrix &gate, const GpuMatrix &up, DevicePointer x,
                    DevicePointer y, int64_t tokens, GemvLayout layout) {
    DevicePointer data = gate.data;
    layout.tokens = int(tokens);
    layout.upWeight = up.data;
    return launch(k, gate.blocks, static_cast<unsigned>(tokens), static_cast<unsigned>(gate.heads),
                  0, {&data, &x, &y, &layout});
  }
  // Y[j] = W[expert of j] x[rowIndex[j]] for assignment rows grouped by
  // expert as the tile table `tiles` says ({expert, first row, end row},
  // `tileCount` of them, up to 64 rows each), results to y rows `outRows`
  // (0: in order): the grouped tensor-core GEMM of stacked experts.
  Status groupedMmaGemm(const GpuMatrix &w, DevicePointer x, int64_t xStride, DevicePointer y,
                        int64_t yStride, DevicePointer tiles, int64_t tileCount,
                        DevicePointer rowIndex, DevicePointer outRows) {
    DevicePointer data = w.data;
    int xs = int(xStride), ys = int(yStride), rows = 0;
    return launch(*w.mmaGemm, unsigned(w.out / 64), unsigned(tileCount), 1, 0,
                  {&data, &x, &xs, &y, &ys, &rows, &tiles, &rowIndex, &outRows});
  }
  // y = W x over the tiles of grouped assignments in `layout.groups`.
  Status groupedGemv(const GpuMatrix &w, DevicePointer x, DevicePointer y, int64_t tiles,
                     GemvLayout layout) {
    DevicePointer data = w.data;
    return launch(*w.tiled, w.tiledBlocks, static_cast<unsigned>(tiles), 1, 0,
                  {&data, &x, &y, &layout});
  }
  Status rmsNorm(const Kernel &k, DevicePointer x, DevicePointer weight, DevicePointer y,
                 int64_t rows, int64_t xStride, int64_t yStride) {
    int rowCount = int(rows), xs = int(xStride), ys = int(yStride);
    return launch(k, static_cast<unsigned>(rows), 1, 1, 0, {&x, &weight, &y, &rowCount, &xs, &ys});
  }
  // The norm of `rows` rows of `width` into y (rows `width` apart), and, with
  // `fused` (rmsNormFp8Spec's kernel) where the FP8 GEMM will read y (more
  // than kFp8GemvMaxTokens rows that fit this GPU's scratch), y quantized
  // into the scratch as the GEMM would quantize it. Returns the run that
  // quantized (the readers' quantizedBy), 0 where none did.
  StatusOr<uint64_t> rmsNormForFp8(const Kernel &plain, const Kernel *fused, DevicePointer x,
                                   DevicePointer weight, DevicePointer y, int64_t rows,
                                   int64_t width) {
    Fp8GemmScratch &scratch = physical[size_t(currentPhysical)].fp8;
    if (!fused || !fp8ScratchTakes(rows, width)) {
      if (Status s = rmsNorm(plain, x, weight, y, rows, width, width); !s.ok())
        return s;
      return uint64_t(0);
    }
    int rowCount = int(rows), stride = int(width),
        scaleStride = int(fp8GemmScaleStride(scratch.rows));
    DevicePointer q = scratch.activations, scales = scratch.scales;
    if (Status s =
            launch(*fused, static_cast<unsigned>(rows), 1, 1, 0,
                   {&x, &weight, &y, &rowCount, &stride, &stride, &q, &scales, &scaleStride});
        !s.ok())
      return s;
    return producedFp8(y, rows, width);
  }
  // out = silu(gate) * up over `rows` rows of `width` (a step's scratch,
  // rows `width` apart); with `fused` (silu_mul_fp8) where an FP8 GEMM will
  // read out, its quantization into the scratch instead of the floats. The
  // run as rmsNormForFp8's.
  StatusOr<uint64_t> siluMulForFp8(const Kernel &plain, const Kernel *fused, DevicePointer gate,
                                   DevicePointer up, DevicePointer out, int64_t rows,
                                   int64_t width) {
    Fp8GemmScratch &scratch = physical[size_t(currentPhysical)].fp8;
    if (!fused || !fp8ScratchTakes(rows, width)) {
      if (Status s = elementwise(plain, gate, up, out, rows, width); !s.ok())
        return s;
      return uint64_t(0);
    }
    int tokens = int(rows), scaleStride = int(fp8GemmScaleStride(scratch.rows));
    DevicePointer q = scratch.activations, scales = scratch.scales;
    if (Status s = launch(*fused, ceilDiv(rows * (width / 128) * 32, fused->threads), 1, 1, 0,
                          {&gate, &up, &q, &scales, &scaleStride, &tokens});
        !s.ok())
      return s;
    return producedFp8(out, rows, width);
  }
  // Whether this GPU's FP8 GEMM scratch takes a fused producer's
  // quantization of `rows` x `width`: steps the GEMM runs (more than
  // kFp8GemvMaxTokens rows) that fit it.
  bool fp8ScratchTakes(int64_t rows, int64_t width) const {
    const Fp8GemmScratch &scratch = physical[size_t(currentPhysical)].fp8;
    return rows > kFp8GemvMaxTokens && rows <= scratch.rows && width <= scratch.in &&
           scratch.activations;
  }
  // Records a fused producer's quantization of x (`rows` x `width`, rows
  // `width` apart), queued last, as what the scratch holds; returns its run.
  uint64_t producedFp8(DevicePointer x, int64_t rows, int64_t width) {
    Fp8GemmScratch &scratch = physical[size_t(currentPhysical)].fp8;
    scratch.holds = {};
    scratch.producer = {{x, 0, rows, width, width}, ++fp8NormRuns};
    return scratch.producer.run;
  }
  // Element-wise kernels stride over the data: enough blocks to fill the GPU.
  Status elementwise(const Kernel &k, DevicePointer a, DevicePointer b, DevicePointer out,
                     int64_t rows, int64_t width) {
    int tokens = int(rows);
    const unsigned blocks = std::min<unsigned>(ceilDiv(rows * width, k.threads), 4096);
    return launch(k, blocks, 1, 1, 0, {&a, &b, &out, &tokens});
  }
};

HybridExecutor::Impl::~Impl() {
  for (Gpu &gpu : physical) {
    if (!gpu.device || !gpu.device->makeCurrent().ok())
      continue;
    for (DevicePointer p : gpu.allocations)
      (void)gpu.device->free(p);
  }
  joinPinning(true);
  if (!physical.empty() && physical[0].device) {
    for (void *p : hostAllocations)
      (void)physical[0].device->freeHost(p);
    for (const void *p : registeredHost)
      (void)physical[0].device->unregisterHost(p);
  }
}

Status HybridExecutor::Impl::use(int logical) {
  bindingGpu = logical;
  const int index = physicalOf[size_t(logical)];
  if (index == currentPhysical)
    return Status::success();
  Gpu &gpu = physical[size_t(index)];
  if (Status s = gpu.device->makeCurrent(); !s.ok())
    return s;
  currentPhysical = index;
  device = gpu.device.get();
  scratch = gpu.scratch;
  positionsGpu = gpu.positions;
  tokensGpu = gpu.tokens;
  return Status::success();
}

StatusOr<DevicePointer> HybridExecutor::Impl::allocate(size_t bytes, bool weights) {
  StatusOr<DevicePointer> p = device->allocate(std::max<size_t>(bytes, 256));
  if (!p)
    return Status::error(p.message() + " The plan's data for cuda:" + std::to_string(bindingGpu) +
                         " do not fit its GPU (" +
                         std::to_string(logicalBytes[size_t(bindingGpu)] >> 20) +
                         " MiB allocated there so far): lower --cache-lens or recompile the plan "
                         "with a smaller --gpu-mem budget so that more runs on the CPU.");
  physical[size_t(currentPhysical)].allocations.push_back(*p);
  (weights ? weightBytes : bufferBytes) += bytes;
  logicalBytes[size_t(bindingGpu)] += bytes;
  return *p;
}

StatusOr<DevicePointer> HybridExecutor::Impl::uploadSplitRows(const void *gguf, int64_t rows,
                                                              int64_t cols) {
  const size_t rowBytes = size_t(*gguf::ggmlRowBytes(GgmlType::Q8_0, cols));
  StatusOr<DevicePointer> p = allocate(rowBytes * size_t(rows), true);
  if (!p)
    return p;
  const int64_t chunkRows = std::max<int64_t>(1, int64_t(kSplitRowsStagingBytes / rowBytes));
  splitRowsStaging.resize(std::min(size_t(chunkRows), size_t(rows)) * rowBytes);
  for (int64_t first = 0; first < rows; first += chunkRows) {
    const int64_t count = std::min(chunkRows, rows - first);
    if (Status s =
            quant::splitQ8_0Rows(static_cast<const uint8_t *>(gguf) + size_t(first) * rowBytes,
                                 splitRowsStaging.data(), count, cols);
        !s.ok())
      return s;
    if (Status s = device->copyToDevice(*p + size_t(first) * rowBytes, splitRowsStaging.data(),
                                        size_t(count) * rowBytes);
        !s.ok())
      return s;
  }
  return *p;
}

StatusOr<DevicePointer> HybridExecutor::Impl::upload(const void *data, size_t bytes) {
  StatusOr<DevicePointer> p = allocate(bytes, true);
  if (!p)
    return p;
  if (Status s = device->copyToDevice(*p, data, bytes); !s.ok())
    return s;
  return *p;
}

bool planListsOtherVersionOf(const plan::Plan &plan, const KernelSpec &spec,
                             const std::string &arch, const std::vector<std::string> &sameDefines) {
  auto value = [](const std::map<std::string, std::string> &defines, const std::string &name) {
    auto it = defines.find(name);
    return it == defines.end() ? std::string() : it->second;
  };
  return std::any_of(
      plan.kernelSpecializations.begin(), plan.kernelSpecializations.end(),
      [&](const plan::KernelSpecialization &k) {
        return k.file == spec.file && k.entry == spec.entry && k.arch == arch &&
               k.defines != spec.defines &&
               std::all_of(sameDefines.begin(), sameDefines.end(), [&](const std::string &name) {
                 return value(k.defines, name) == value(spec.defines, name);
               });
      });
}

Status HybridExecutor::Impl::unlistedKernel(const std::string &where,
                                            const KernelSpec &spec) const {
  return Status::error(where + " needs the GPU kernel " + spec.describe() + " for " + arch +
                       ", which " + planName +
                       " does not list: it was compiled by another version of ktc. "
                       "Recompile it with this version's ktc compile.");
}

bool HybridExecutor::Impl::listsOtherFp8GemmVersion(const KernelSpec &spec) const {
  return planListsOtherVersionOf(*plan, spec, arch,
                                 {"N_FEATURES", "K_FEATURES", "BLOCK_N", "GROUPED"});
}

StatusOr<const Kernel *> HybridExecutor::Impl::kernel(const StatusOr<KernelSpec> &spec,
                                                      const std::string &where) {
  if (!spec)
    return Status::error(where + " cannot run on the GPU: " + spec.message());
  const std::string name = spec->describe();
  if (auto it = kernels.find({currentPhysical, name}); it != kernels.end())
    return it->second.get();
  if (!listsKernel(*spec))
    return unlistedKernel(where, *spec);
  StatusOr<CompiledKernel> compiled = cache->getOrCompile(*spec, arch);
  if (!compiled)
    return compiled.status();
  StatusOr<LoadedKernel> loaded = device->load(*compiled);
  if (!loaded)
    return loaded.status();
  auto k = std::make_unique<Kernel>();
  k->loaded = *loaded;
  k->threads = spec->blockThreads;
  k->waitsForPriorGrid = kernelWaitsForPriorGrid(spec->source);
  const Kernel *result = k.get();
  kernels.emplace(std::make_pair(currentPhysical, name), std::move(k));
  return result;
}

namespace {

// ---------------------------------------------------------------- steps

// Uploads a 2-D (or per-head 3-D) weight and finds its GEMV.
class MatrixLoader {
public:
  MatrixLoader(HybridExecutor::Impl &m, cpu::OpBinder &b, const plan::Op &op)
      : m_(m), b_(b), op_(op) {}

  // A [cols, rows] matrix (GGML order), or with `heads` a [cols, rows,
  // heads] stack of them; `groupedPrefill`: routed experts, whose prefill
  // GEMV reads tiles of assignments grouped by expert.
  GpuMatrix load(const std::string &role, int64_t cols, int64_t rows, int64_t heads = 0,
                 bool groupedPrefill = false) {
    for (const plan::Weight &weight : op_.weights)
      if (weight.role == role && weight.type == "f8_e4m3" && !heads)
        return loadFp8(role, weight, cols, rows);
    GpuMatrix w;
    const gguf::TensorInfo *info = b_.tensor(role, heads ? 3 : 2);
    if (!info)
      return w;
    if (heads)
      b_.checkShape(role, *info, {cols, rows, heads});
    else
      b_.checkShape(role, *info, {cols, rows});
    if (!b_.ok())
      return w;
    w.out = rows;
    w.in = cols;
    w.heads = heads ? heads : 1;
    w.type = info->type;
    // Dense Q8_0 rows of whole runs of 8 blocks go to the GPU split
    // (quantized activations' planes in decode); stacks keep the GGUF layout.
    const bool splitRows =
        !heads && !groupedPrefill && denseGemvVariant(info->type, cols) == GemvVariant::SplitRows;
    if (!findKernels(w, role, groupedPrefill, splitRows))
      return w;
    if (splitRows) {
      w.planes = kernel(gemvQ8_0PlanesSpec(rows, cols));
      w.quantizePlanes = kernel(quantizePlanesSpec(cols));
      if (!w.planes || !w.quantizePlanes)
        return w;
      w.planesBlocks = gemvQ8_0PlanesGridBlocks(rows, cols);
      HybridExecutor::Impl::Gpu &gpu = m_.physical[size_t(m_.currentPhysical)];
      gpu.planesIn = std::max(gpu.planesIn, cols);
    }
    // Prefill on tensor cores where the plan lists it (routed experts: the
    // grouped form over the stack).
    if ((!heads || groupedPrefill) && m_.mmaGemm && gemmMmaFits(info->type, rows, cols)) {
      StatusOr<KernelSpec> mma = gemmMmaSpec(info->type, rows, cols, splitRows);
      if (mma && m_.listsKernel(*mma)) {
        StatusOr<const Kernel *> k = m_.kernel(mma, b_.where() + " (" + role + ")");
        if (!k) {
          b_.fail("cannot multiply '" + role + "' on the GPU: " + k.message());
          return w;
        }
        w.mmaGemm = *k;
      }
    }
    w.blocks = gemvGridBlocks(info->type, rows, cols);
    w.tiledBlocks = gemvGridBlocks(info->type, rows, cols, kGemvPrefillTokenTile);
    StatusOr<DevicePointer> data = splitRows ? m_.uploadSplitRows(info->data, rows, cols)
                                             : m_.upload(info->data, info->nbytes);
    if (!data) {
      b_.fail("cannot copy '" + role + "' to the GPU: " + data.message());
      return w;
    }
    w.data = *data;
    return w;
  }

  // Rows (output features) of the matrix `role` as the plan records it
  // ([cols, rows] in GGML order; FP8 weights are not in the GGUF file).
  int64_t rows(const std::string &role) {
    for (const plan::Weight &weight : op_.weights)
      if (weight.role == role && weight.shape.size() >= 2)
        return weight.shape[1];
    b_.fail("has no '" + role + "' weight; recompile the plan with this version of ktc.");
    return 0;
  }

  // An FP8 projection from the plan's checkpoint: e4m3 [rows][cols] and its
  // weight_scale_inv [ceil(rows / 128)][ceil(cols / 128)].
  GpuMatrix loadFp8(const std::string &role, const plan::Weight &weight, int64_t cols,
                    int64_t rows) {
    GpuMatrix w;
    // A checkpoint model holds it under its GGUF name; a GGUF model with
    // --fp8-path finds it in that checkpoint.
    const gguf::TensorInfo *tensor = b_.model().findTensor(weight.tensor);
    if (!tensor)
      tensor = m_.conversions->checkpointTensor(weight.tensor);
    if (!tensor || tensor->type != gguf::GgmlType::F8_E4M3_B128 || !tensor->fp8 ||
        tensor->ne != std::vector<int64_t>{cols, rows} || tensor->fp8->values.size() != 1) {
      b_.fail("needs the FP8 matrix '" + weight.tensor + "' (F8_E4M3 [" + std::to_string(rows) +
              ", " + std::to_string(cols) + "]) with its weight_scale_inv, which " +
              (m_.fp8 ? "the FP8 checkpoint " + m_.fp8->path() : std::string("the model")) +
              " lacks or has in another form; recompile the plan for this model and "
              "checkpoint.");
      return w;
    }
    const int64_t block = gguf::BlockScaledFp8::kBlock;
    const size_t valueBytes = size_t(rows) * size_t(cols);
    const size_t scaleBytes = size_t((rows + block - 1) / block) *
                              size_t((cols + block - 1) / block) * sizeof(float);
    w.out = rows;
    w.in = cols;
    if (!findFp8Gemv(role, w))
      return w;
    StatusOr<DevicePointer> data = m_.upload(tensor->fp8->values[0], valueBytes);
    StatusOr<DevicePointer> scales = m_.upload(tensor->fp8->scales[0], scaleBytes);
    if (!data || !scales) {
      b_.fail("cannot copy '" + role + "' to the GPU: " + (!data ? data : scales).message());
      return w;
    }
    w.data = *data;
    w.scales = *scales;
    if (m_.fp8Gemm) {
      loadFp8Gemm(role, w);
      // sm_80 to sm_89: the bf16 GEMM where the plan lists it.
      StatusOr<KernelSpec> bf16 = gemmFp8Bf16Spec(w.out, w.in);
      if (bf16 && m_.listsKernel(*bf16)) {
        StatusOr<const Kernel *> k = m_.kernel(bf16, b_.where() + " (" + role + ")");
        if (!k)
          b_.fail("cannot multiply '" + role + "' on the GPU: " + k.message());
        else
          w.fp8Bf16Gemm = *k;
      }
    }
    return w;
  }

  // The FP8 GEMV of `w` (w.out x w.in; by expert id for stacked experts):
  // decode's, and prefill's without a GEMM. False on errors, which fail the
  // binding.
  bool findFp8Gemv(const std::string &role, GpuMatrix &w) {
    StatusOr<const Kernel *> k =
        m_.kernel(gemvFp8Spec(w.out, w.in), b_.where() + " (" + role + ")");
    if (!k) {
      b_.fail("cannot multiply '" + role + "' on the GPU: " + k.message());
      return false;
    }
    w.kernel = w.tiled = *k;
    w.blocks = w.tiledBlocks = ceilDiv(w.out, kGemvRowsPerBlock);
    return true;
  }

  // A routed-experts matrix of a checkpoint: every expert's e4m3 [rows][cols]
  // and block scales stacked on the GPU, the FP8 GEMV by expert id (grid z:
  // the `topK` slots) and, where the plan lists it, the grouped GEMM.
  GpuMatrix loadFp8Experts(const std::string &role, const plan::Weight &weight, int64_t cols,
                           int64_t rows, int64_t experts, int64_t topK) {
    GpuMatrix w;
    const gguf::TensorInfo *tensor = b_.model().findTensor(weight.tensor);
    if (!tensor || tensor->type != gguf::GgmlType::F8_E4M3_B128 || !tensor->fp8 ||
        tensor->ne != std::vector<int64_t>{cols, rows, experts} ||
        int64_t(tensor->fp8->values.size()) != experts || rows % 128 != 0) {
      b_.fail("needs the FP8 experts '" + weight.tensor + "' ([" + std::to_string(experts) +
              "][" + std::to_string(rows) + "][" + std::to_string(cols) +
              "] e4m3 with their block scales), which the model lacks or has in another form; "
              "recompile the plan for this model.");
      return w;
    }
    const int64_t block = gguf::BlockScaledFp8::kBlock;
    const size_t matrixBytes = size_t(rows * cols);
    const size_t scaleBytes = size_t((rows / block) * ((cols + block - 1) / block)) * 4;
    // Each expert's slice straight from the checkpoint's mapping.
    StatusOr<DevicePointer> data = m_.allocate(matrixBytes * size_t(experts), true);
    StatusOr<DevicePointer> scaleData = m_.allocate(scaleBytes * size_t(experts), true);
    Status copied = !data ? data.status() : !scaleData ? scaleData.status() : Status::success();
    for (int64_t e = 0; e < experts && copied.ok(); ++e) {
      copied = m_.device->copyToDevice(*data + DevicePointer(e) * matrixBytes,
                                       tensor->fp8->values[size_t(e)], matrixBytes);
      if (copied.ok())
        copied = m_.device->copyToDevice(*scaleData + DevicePointer(e) * scaleBytes,
                                         tensor->fp8->scales[size_t(e)], scaleBytes);
    }
    if (!copied.ok()) {
      b_.fail("cannot copy '" + role + "' to the GPU: " + copied.message());
      return w;
    }
    w.data = *data;
    w.scales = *scaleData;
    w.out = rows;
    w.in = cols;
    w.heads = topK;
    w.type = gguf::GgmlType::F8_E4M3_B128;
    if (!findFp8Gemv(role, w))
      return w;
    StatusOr<Fp8GemmConfig> config = fp8GemmConfig(rows);
    StatusOr<KernelSpec> grouped =
        config ? gemmFp8GroupedSpec(rows, cols, *config) : StatusOr<KernelSpec>(config.status());
    if (!m_.fp8Gemm || !grouped)
      return w;
    if (!m_.listsKernel(*grouped)) {
      if (m_.listsOtherFp8GemmVersion(*grouped))
        b_.fail(m_.unlistedKernel("(" + role + ")", *grouped).message());
      return w;
    }
    const std::string where = b_.where() + " (" + role + ")";
    StatusOr<const Kernel *> gemm = m_.kernel(grouped, where),
                             quantize = m_.kernel(fp8QuantizeSpec(cols), where);
    if (!gemm || !quantize) {
      b_.fail("cannot multiply '" + role + "' on the GPU: " +
              (!gemm ? gemm : quantize).message());
      return w;
    }
    Status allowed = allowFp8GemmSharedBytes(*m_.device, (*gemm)->loaded, *config);
    StatusOr<Fp8GemmWeight> stacked =
        allowed.ok()
            ? prepareFp8GemmWeight(*m_.device, w.data, w.scales, experts * rows, cols, *config)
            : StatusOr<Fp8GemmWeight>(allowed);
    if (!stacked) {
      b_.fail("cannot set up the grouped FP8 GEMM of '" + role + "': " + stacked.message());
      return w;
    }
    w.fp8Grouped = std::make_shared<const GpuMatrix::Fp8Gemm>(GpuMatrix::Fp8Gemm{
        *stacked, {&(*quantize)->loaded, &(*gemm)->loaded, nullptr, *config}});
    HybridExecutor::Impl::Gpu &gpu = m_.physical[size_t(m_.currentPhysical)];
    gpu.fp8.in = std::max(gpu.fp8.in, cols);
    gpu.fp8RowsPerToken = std::max(gpu.fp8RowsPerToken, topK);
    return w;
  }

  // The FP8 GEMMs of `w` where the plan lists them (sm_90a targets, shapes
  // they take), and room for them in their GPU's FP8 scratch.
  void loadFp8Gemm(const std::string &role, GpuMatrix &w) {
    StatusOr<Fp8GemmConfig> standard = fp8GemmConfig(w.out);
    if (!standard || !loadFp8GemmPath(role, w, *standard, w.fp8Gemm))
      return;
    for (unsigned blockN : fp8GemmTileWidths(w.out)) {
      std::shared_ptr<const GpuMatrix::Fp8Gemm> path;
      if (StatusOr<Fp8GemmConfig> config = fp8GemmConfig(w.out, blockN);
          config && config->blockN != standard->blockN && loadFp8GemmPath(role, w, *config, path))
        w.fp8GemmWidths.push_back(std::move(path));
    }
  }
  // One tile width's kernels and weight tensor map into `path`; false where
  // the plan does not list it (or on errors, which fail the binding).
  bool loadFp8GemmPath(const std::string &role, GpuMatrix &w, const Fp8GemmConfig &config,
                       std::shared_ptr<const GpuMatrix::Fp8Gemm> &path) {
    StatusOr<KernelSpec> gemm = gemmFp8Spec(w.out, w.in, config);
    if (!gemm)
      return false;
    if (!m_.listsKernel(*gemm)) {
      // The default tiles are listed with every FP8 GEMM; other constants
      // for this shape mean a plan of another ktc.
      if (&path == &w.fp8Gemm && m_.listsOtherFp8GemmVersion(*gemm))
        b_.fail(m_.unlistedKernel("(" + role + ")", *gemm).message());
      return false;
    }
    const std::string where = b_.where() + " (" + role + ")";
    StatusOr<const Kernel *> k = m_.kernel(gemm, where),
                             sum = m_.kernel(gemmFp8SumSpec(w.out, w.in), where),
                             quantize = m_.kernel(fp8QuantizeSpec(w.in), where);
    if (!k || !sum || !quantize) {
      b_.fail("cannot multiply '" + role + "' on the GPU: " +
              (!k ? k : !sum ? sum : quantize).message());
      return false;
    }
    HybridExecutor::Impl::Gpu &gpu = m_.physical[size_t(m_.currentPhysical)];
    Status allowed = allowFp8GemmSharedBytes(*m_.device, (*k)->loaded, config);
    StatusOr<Fp8GemmWeight> weight =
        allowed.ok() ? prepareFp8GemmWeight(*m_.device, w.data, w.scales, w.out, w.in, config)
                     : StatusOr<Fp8GemmWeight>(allowed);
    if (!weight) {
      b_.fail("cannot set up the FP8 GEMM of '" + role + "': " + weight.message());
      return false;
    }
    path = std::make_shared<const GpuMatrix::Fp8Gemm>(GpuMatrix::Fp8Gemm{
        *weight, {&(*quantize)->loaded, &(*k)->loaded, &(*sum)->loaded, config}});
    gpu.fp8.in = std::max(gpu.fp8.in, w.in);
    gpu.fp8.partialFloats =
        std::max(gpu.fp8.partialFloats, fp8GemmPartialFloats(m_.chunkSize, w.out, w.in,
                                                             gpu.multiprocessors, config.blockN));
    return true;
  }

  // `heads` f32 matrices of `out` x `in` from host values (made at load).
  GpuMatrix fromFloats(const std::string &what, const std::vector<float> &values, int64_t out,
                       int64_t in, int64_t heads) {
    GpuMatrix w;
    w.out = out;
    w.in = in;
    w.heads = heads;
    w.type = GgmlType::F32;
    if (!findKernels(w, what))
      return w;
    w.blocks = gemvGridBlocks(GgmlType::F32, out, in);
    w.tiledBlocks = gemvGridBlocks(GgmlType::F32, out, in, kGemvPrefillTokenTile);
    StatusOr<DevicePointer> data = m_.upload(values.data(), values.size() * sizeof(float));
    if (!data) {
      b_.fail("cannot copy " + what + " to the GPU: " + data.message());
      return w;
    }
    w.data = *data;
    return w;
  }

  // The decode and prefill GEMVs of `w` (type and shape set); `splitRows`:
  // over the split rows of a dense Q8_0 matrix.
  bool findKernels(GpuMatrix &w, const std::string &what, bool groupedPrefill = false,
                   bool splitRows = false) {
    for (auto [tile, slot] :
         {std::pair<int64_t, const Kernel **>{1, &w.kernel}, {kGemvPrefillTokenTile, &w.tiled}}) {
      StatusOr<const Kernel *> k =
          m_.kernel(gemvSpec(w.type, w.out, w.in, tile,
                             splitRows                    ? GemvVariant::SplitRows
                             : tile > 1 && groupedPrefill ? GemvVariant::Grouped
                                                          : GemvVariant::Plain),
                    b_.where() + " (" + what + ")");
      if (!k) {
        b_.fail("cannot multiply " + what + " on the GPU: " + k.message());
        return false;
      }
      *slot = *k;
    }
    return true;
  }

  DevicePointer vector(const std::string &role, int64_t length, bool required = true) {
    std::vector<float> values = b_.vector(role, length, required);
    if (values.empty())
      return 0;
    StatusOr<DevicePointer> data = m_.upload(values.data(), values.size() * sizeof(float));
    if (!data) {
      b_.fail("cannot copy '" + role + "' to the GPU: " + data.message());
      return 0;
    }
    return *data;
  }

  const Kernel *kernel(const StatusOr<KernelSpec> &spec) {
    StatusOr<const Kernel *> k = m_.kernel(spec, b_.where());
    if (!k) {
      b_.fail("cannot run on the GPU: " + k.message());
      return nullptr;
    }
    return *k;
  }

private:
  HybridExecutor::Impl &m_;
  cpu::OpBinder &b_;
  const plan::Op &op_;
};

class CpuEmbeddingStep : public Step {
public:
  explicit CpuEmbeddingStep(cpu::WeightMatrix table) : table_(table) {}
  bool runsOnHost() const override { return true; }
  bool movable() const override { return false; }
  Status run(HybridExecutor::Impl &, StepContext &ctx, const std::vector<Value *> &,
             const std::vector<Value *> &out) override {
    float *scratch = cpu::threadScratch(0, static_cast<size_t>(table_.cols));
    for (int64_t t = 0; t < ctx.rows; ++t) {
      const float *row = cpu::decodeRows(table_, ctx.tokens[t], 1, scratch);
      std::memcpy(out[0]->hostFloats() + t * table_.cols, row,
                  static_cast<size_t>(table_.cols) * sizeof(float));
    }
    return Status::success();
  }

private:
  cpu::WeightMatrix table_;
};

class GpuEmbeddingStep : public Step {
public:
  GpuEmbeddingStep(DevicePointer table, const Kernel *kernel) : table_(table), kernel_(kernel) {}
  bool movable() const override { return false; }
  bool capturable() const override { return false; } // uploads the token ids
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &,
             const std::vector<Value *> &out) override {
    if (Status s = m.device->copyToDevice(m.tokensGpu, ctx.tokens, size_t(ctx.rows) * 4); !s.ok())
      return s;
    DevicePointer table = table_, tokens = m.tokensGpu, o = out[0]->gpu;
    int count = int(ctx.rows);
    return m.launch(*kernel_, unsigned(ctx.rows), 1, 1, 0, {&table, &tokens, &o, &count});
  }

private:
  DevicePointer table_;
  const Kernel *kernel_;
};

// Moves a value between the host and the GPU (or copies it in place).
class TransferStep : public Step {
public:
  bool runsOnHost() const override { return true; }
  bool movable() const override { return false; }
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    const Value &from = *in[0];
    Value &to = *out[0];
    const size_t bytes = size_t(ctx.rows * from.width) * 4;
    if (m.profiling && (from.where != to.where || from.logicalGpu != to.logicalGpu)) {
      const auto start = Clock::now();
      Status s = copy(m, from, to, bytes);
      if (s.ok() && to.where == Where::Gpu)
        s = m.device->synchronize(); // a copy from another GPU is queued, not done
      else if (s.ok())
        s = m.finishHostCopies();
      m.profile.transferSeconds += secondsSince(start);
      m.profile.transferBytes += bytes;
      return s;
    }
    return copy(m, from, to, bytes);
  }

private:
  // The step runs on the GPU of `to` (of `from` for a copy to the host).
  static Status copy(HybridExecutor::Impl &m, const Value &from, Value &to, size_t bytes) {
    if (from.where == Where::Gpu && to.where == Where::Gpu) {
      if (m.profiling && from.logicalGpu != to.logicalGpu)
        m.profile.gpuToGpuBytes += bytes;
      CudaDevice &source = m.deviceOf(from);
      if (&source == m.device) // the same GPU (virtual GPUs)
        return m.device->copyOnDevice(to.gpu, from.gpu, bytes);
      return m.device->copyFromPeer(to.gpu, source, from.gpu, bytes);
    }
    if (from.where == Where::Gpu) { // waited for before the next host step
      if (std::find(m.hostCopiesPending.begin(), m.hostCopiesPending.end(), m.device) ==
          m.hostCopiesPending.end())
        m.hostCopiesPending.push_back(m.device);
      return m.device->copyToHostAsync(to.host, from.gpu, bytes);
    }
    if (to.where == Where::Gpu) {
      // Queued: runSteps waits for it before the next host step, which may
      // write the host buffer it reads.
      m.hostReadsPending = m.device;
      return m.device->copyToDeviceAsync(to.gpu, from.host, bytes);
    }
    if (Status s = m.waitForHostReads(); !s.ok())
      return s;
    std::memcpy(to.host, from.host, bytes);
    return Status::success();
  }
};

class RmsNormStep : public Step {
public:
  // `fp8Kernel`: the fused norm and quantization, where the plan marks the
  // norm (quantize_fp8: an FP8 GEMM reads its result in prefill).
  RmsNormStep(DevicePointer weight, const Kernel *kernel, const Kernel *fp8Kernel, int64_t width)
      : weight_(weight), kernel_(kernel), fp8Kernel_(fp8Kernel), width_(width) {}
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    StatusOr<uint64_t> run =
        m.rmsNormForFp8(*kernel_, fp8Kernel_, in[0]->gpu, weight_, out[0]->gpu, ctx.rows, width_);
    if (!run)
      return run.status();
    out[0]->fp8Quantization = *run;
    return Status::success();
  }

private:
  DevicePointer weight_;
  const Kernel *kernel_, *fp8Kernel_;
  int64_t width_;
};

class AddStep : public Step {
public:
  AddStep(const Kernel *kernel, int64_t width) : kernel_(kernel), width_(width) {}
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    return m.elementwise(*kernel_, in[0]->gpu, in[1]->gpu, out[0]->gpu, ctx.rows, width_);
  }

private:
  const Kernel *kernel_;
  int64_t width_;
};

// A residual sum and its norm (add_rms_norm, from ktc's
// kt-fuse-residual-norm): one kernel, or the adds and then the norm where
// the norm quantizes for an FP8 GEMM (prefill) or no fused kernel is given
// (ktrun --no-fused-residual-norm).
class AddRmsNormStep : public Step {
public:
  AddRmsNormStep(DevicePointer weight, const Kernel *fused, const Kernel *add, const Kernel *norm,
                 const Kernel *normFp8, int64_t width)
      : weight_(weight), fused_(fused), add_(add), norm_(weight, norm, normFp8, width),
        quantizes_(normFp8 != nullptr), width_(width) {}
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    DevicePointer sum = out[0]->gpu, y = out[1]->gpu;
    if (fused_ && !(quantizes_ && m.fp8ScratchTakes(ctx.rows, width_))) {
      DevicePointer a = in[0]->gpu, b = in[1]->gpu, c = in.size() > 2 ? in[2]->gpu : b,
                    weight = weight_;
      int rows = int(ctx.rows);
      out[1]->fp8Quantization = 0;
      return m.launch(*fused_, static_cast<unsigned>(ctx.rows), 1, 1, 0,
                      {&a, &b, &c, &weight, &sum, &y, &rows});
    }
    DevicePointer rest = in[1]->gpu;
    if (in.size() > 2) { // b + c into y, which the norm overwrites
      if (Status s = m.elementwise(*add_, in[1]->gpu, in[2]->gpu, y, ctx.rows, width_); !s.ok())
        return s;
      rest = y;
    }
    if (Status s = m.elementwise(*add_, in[0]->gpu, rest, sum, ctx.rows, width_); !s.ok())
      return s;
    return norm_.run(m, ctx, {out[0]}, {out[1]});
  }

private:
  DevicePointer weight_;
  const Kernel *fused_, *add_;
  RmsNormStep norm_; // of the sum, after the adds
  bool quantizes_;
  int64_t width_;
};

// MLA with weight absorption over the GPU latent cache, every token over
// its causal prefix (runtime/cpu/Attention's absorbed path is the reference).
class AttentionStep : public Step {
public:
  cpu::MlaShape s;
  int64_t qk() const { return s.nope + s.rope; }
  GpuMatrix qA, qB, q, kvA, kB, vB, o;
  DevicePointer qANorm = 0, kvANorm = 0, inverseFrequencies = 0;
  const Kernel *qNorm = nullptr, *ropeQ = nullptr, *append = nullptr, *core = nullptr,
               *splitCore = nullptr, *combine = nullptr;
  const Kernel *qNormFp8 = nullptr; // q_a_norm quantizing for q_b's FP8 GEMM
  // The prefill core on tensor cores (sm_80+, where the plan lists it) for
  // segments of at least kMlaPrefillMmaMinWork tokens x positions.
  const Kernel *coreMma = nullptr;
  unsigned coreMmaShared = 0;
  // The decode core on tensor cores (same conditions), for tokens that see
  // at least kMlaDecodeMmaFrom positions; the split core takes the others.
  const Kernel *decodeMma = nullptr;
  unsigned decodeMmaShared = 0;
  size_t layer = 0;
  int64_t headsPerBlock = 1; // of the prefill core

  // Single-token steps use the split core, whose pieces need
  // kMlaDecodePieces x (kv_lora + 2) floats per head.
  size_t scratchFloats(int64_t rows) const override {
    return size_t(rows) * size_t(s.qLoraRank + s.heads * qk() + s.kvLoraRank + s.rope +
                                 2 * s.heads * s.kvLoraRank + s.heads * s.v) +
           size_t(s.heads * kMlaDecodePieces * (s.kvLoraRank + 2));
  }

  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    const int64_t rows = ctx.rows, H = s.heads, qk = s.nope + s.rope;
    const int64_t kvWidth = s.kvLoraRank + s.rope;
    DevicePointer next = m.scratch;
    auto carve = [&](int64_t floats) {
      DevicePointer p = next;
      next += DevicePointer(floats) * 4;
      return p;
    };
    const DevicePointer qLoraBuf = carve(rows * s.qLoraRank), qBuf = carve(rows * H * qk),
                        kvABuf = carve(rows * kvWidth), qLatent = carve(rows * H * s.kvLoraRank),
                        context = carve(rows * H * s.kvLoraRank), vOut = carve(rows * H * s.v),
                        pieces = carve(H * kMlaDecodePieces * (s.kvLoraRank + 2));
    const DevicePointer x = in[0]->gpu, result = out[0]->gpu;
    int tokens = int(rows);
    DevicePointer positions = m.positionsGpu, frequencies = inverseFrequencies;

    Status st = Status::success();
    auto step = [&](Status s) {
      if (st.ok())
        st = std::move(s);
    };
    // Queries: compressed, normalized, expanded to heads; rope on each head's tail.
    // kv_a right after q_a: the FP8 GEMM quantizes x once for both.
    const GemvLayout kvALayout{int(s.hidden), int(kvWidth), 0, 0};
    // x's FP8 quantization, where the norm before made it.
    const uint64_t xQuantized = in[0]->fp8Quantization;
    if (s.qLoraRank > 0) {
      step(m.gemv(qA, x, qLoraBuf, rows, {int(s.hidden), int(s.qLoraRank), 0, 0}, false,
                  xQuantized));
      step(m.gemv(kvA, x, kvABuf, rows, kvALayout, true, xQuantized));
      uint64_t qQuantized = 0;
      if (st.ok()) {
        StatusOr<uint64_t> run =
            m.rmsNormForFp8(*qNorm, qNormFp8, qLoraBuf, qANorm, qLoraBuf, rows, s.qLoraRank);
        step(run.status());
        qQuantized = run ? *run : 0;
      }
      step(m.gemv(qB, qLoraBuf, qBuf, rows, {int(s.qLoraRank), int(H * qk), 0, 0}, false,
                  qQuantized));
    } else {
      step(m.gemv(q, x, qBuf, rows, {int(s.hidden), int(H * qk), 0, 0}, false, xQuantized));
      step(m.gemv(kvA, x, kvABuf, rows, kvALayout, true, xQuantized));
    }
    DevicePointer qPointer = qBuf;
    step(m.launch(*ropeQ, ceilDiv(rows * H * (s.rope / 2), ropeQ->threads), 1, 1, 0,
                  {&qPointer, &positions, &frequencies, &tokens}));
    // Absorption: each head's nope query into latent space.
    step(m.gemv(kB, qBuf, qLatent, rows,
                {int(H * qk), int(H * s.kvLoraRank), int(qk), int(s.kvLoraRank)}));
    // Each sequence appends to and attends over its own cache: the new
    // latents normalized and rope keys rotated on the way, at the positions
    // in device memory (so a decode graph replays at any position).
    DevicePointer latentNorm = kvANorm;
    int headStride = int(qk), tokenStride = int(H * qk);
    for (const Segment &segment : ctx.segments) {
      const LatentCache &cache = m.caches[segment.sequence][layer];
      const DevicePointer row = DevicePointer(segment.row);
      DevicePointer latent = cache.latent, rope = cache.rope,
                    segmentRows = kvABuf + row * DevicePointer(kvWidth) * 4,
                    segmentPositions = positions + row * 4,
                    qLatentP = qLatent + row * DevicePointer(H * s.kvLoraRank) * 4,
                    qRope = qBuf + (row * DevicePointer(H * qk) + DevicePointer(s.nope)) * 4,
                    contextP = context + row * DevicePointer(H * s.kvLoraRank) * 4,
                    piecesP = pieces;
      step(m.launch(*append, unsigned(segment.count), 1, 1, 0,
                    {&segmentRows, &segmentPositions, &latentNorm, &frequencies, &latent, &rope}));
      if (segment.count == 1) {
        int pieceCount = int(kMlaDecodePieces);
        // Both cores are launched (a graph replays them at every position);
        // each scores the chunks only on its side of mmaFrom.
        int mmaFrom = decodeMma ? int(kMlaDecodeMmaFrom) : std::numeric_limits<int>::max();
        step(m.launch(*splitCore, unsigned(H / headsPerBlock), unsigned(kMlaDecodePieces), 1, 0,
                      {&qLatentP, &qRope, &headStride, &latent, &rope, &segmentPositions, &mmaFrom,
                       &piecesP}));
        if (decodeMma)
          step(m.launch(*decodeMma, ceilDiv(H, 16 * kMlaDecodeMmaRowGroups),
                        unsigned(kMlaDecodePieces), 1, decodeMmaShared,
                        {&qLatentP, &qRope, &headStride, &latent, &rope, &segmentPositions,
                         &mmaFrom, &piecesP}));
        step(m.launch(*combine, unsigned(H), 1, 1, 0,
                      {&piecesP, &segmentPositions, &pieceCount, &contextP}));
      } else {
        int firstPositions = int(segment.start + 1), tokenCount = int(segment.count);
        if (coreMma && segment.count * (segment.start + segment.count) >= kMlaPrefillMmaMinWork)
          step(m.launch(*coreMma, unsigned(ceilDiv(segment.count * H, kMlaPrefillMmaRows)), 1, 1,
                        coreMmaShared,
                        {&qLatentP, &qRope, &headStride, &tokenStride, &latent, &rope,
                         &firstPositions, &tokenCount, &contextP}));
        else
          step(m.launch(*core, unsigned(H / headsPerBlock), unsigned(segment.count), 1, 0,
                        {&qLatentP, &qRope, &headStride, &tokenStride, &latent, &rope,
                         &firstPositions, &contextP}));
      }
    }
    // Values out of latent space per head, then the output projection.
    step(m.gemv(vB, context, vOut, rows,
                {int(H * s.kvLoraRank), int(H * s.v), int(s.kvLoraRank), int(s.v)}));
    step(m.gemv(o, vOut, result, rows, {int(H * s.v), int(s.hidden), 0, 0}));
    return st;
  }
};

class FeedForwardStep : public Step {
public:
  GpuMatrix gate, up, down;
  const Kernel *siluMul = nullptr;
  const Kernel *siluMulFp8 = nullptr; // where down's FP8 GEMM reads the product quantized
  int64_t hidden = 0, ffn = 0;

  size_t scratchFloats(int64_t rows) const override { return size_t(2 * rows * ffn); }
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    const int64_t rows = ctx.rows;
    const DevicePointer g = m.scratch, u = m.scratch + DevicePointer(rows * ffn) * 4;
    const GemvLayout wide{int(hidden), int(ffn), 0, 0};
    const uint64_t xQuantized = in[0]->fp8Quantization; // by the norm before
    if (Status s = m.gemv(gate, in[0]->gpu, g, rows, wide, false, xQuantized); !s.ok())
      return s;
    if (Status s = m.gemv(up, in[0]->gpu, u, rows, wide, true, xQuantized); !s.ok())
      return s;
    // The fused product writes only the quantization: only where down's
    // GEMM (not its GEMV) reads g.
    const bool downGemm = down.fp8Gemm && rows > kFp8GemvMaxTokens;
    StatusOr<uint64_t> run =
        m.siluMulForFp8(*siluMul, downGemm ? siluMulFp8 : nullptr, g, u, g, rows, ffn);
    if (!run)
      return run.status();
    return m.gemv(down, g, out[0]->gpu, rows, {int(ffn), int(hidden), 0, 0}, false, *run);
  }
};

class GateStep : public Step {
public:
  GpuMatrix router;
  DevicePointer bias = 0;
  const Kernel *choose = nullptr;
  int64_t hidden = 0, experts = 0;

  size_t scratchFloats(int64_t rows) const override { return size_t(rows * experts); }
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    DevicePointer logits = m.scratch, b = bias, ids = out[0]->gpu, weights = out[1]->gpu;
    if (Status s = m.gemv(router, in[0]->gpu, logits, ctx.rows, {int(hidden), int(experts), 0, 0});
        !s.ok())
      return s;
    return m.launch(*choose, unsigned(ctx.rows), 1, 1, 0, {&logits, &b, &ids, &weights});
  }
};

// Prefill tiles of routed-expert assignments grouped by matrix
// (groupAssignments()): built on the host, copied from page-locked memory.
struct AssignmentGroups {
  int32_t *host = nullptr;
  DevicePointer gpu = 0;
  static constexpr int64_t kTileInts = 1 + kGemvPrefillTokenTile;

  // Room for the tiles of `assignments` assignments (at most one tile each).
  Status allocate(HybridExecutor::Impl &m, int64_t assignments);
  // Groups `matrixOf` (one entry per assignment) and queues the copy;
  // returns the tile count.
  StatusOr<int64_t> build(HybridExecutor::Impl &m, const int32_t *matrixOf, int64_t assignments) {
    const int64_t tiles = groupAssignments(matrixOf, assignments, host);
    if (Status s = m.device->copyToDeviceAsync(gpu, host, size_t(tiles * kTileInts) * 4); !s.ok())
      return s;
    return tiles;
  }
  // x rows of `xStride` floats, one per `assignmentsPerX` assignments; y
  // rows of `yStride`, one per assignment.
  GemvLayout layout(int64_t xStride, int64_t yStride, int64_t assignmentsPerX) const {
    GemvLayout layout{int(xStride), int(yStride), 0, 0, 0};
    layout.groups = gpu;
    layout.assignmentsPerX = int(assignmentsPerX);
    return layout;
  }
};

// A layer's routed experts on the GPU (all of them, or the cached ones in
// slot order) and the kernels of their products.
struct ExpertMatrices {
  const GpuMatrix &gate, &up, &down;
  const Kernel &siluMul;
  const Kernel *gateUp; // decode's fused gate and up (types agreeing), or null
  int64_t hidden, ffn, topK;
};

// silu(gate x) * (up x), then down, for each of `rows` tokens' top_k
// choices, into d [choices][hidden] (g and u: [choices][ffn] of scratch).
// With `groups` (prefill), `tiles` tiles of choices grouped by matrix, each
// matrix read once per tile; else one slot per choice, its matrix id in
// device memory at `matrixIds` (decode graphs replay that).
Status expertProducts(HybridExecutor::Impl &m, const ExpertMatrices &e, DevicePointer x,
                      int64_t rows, const AssignmentGroups *groups, int64_t tiles,
                      uint64_t matrixIds, DevicePointer g, DevicePointer u, DevicePointer d);
// Decode's gated rows silu(gate x) * (up x) of each token's top_k choices
// into g [choices][ffn] (u: scratch), the matrix of each choice's slot at
// `matrixIds` (-1: skipped).
Status gatedProducts(HybridExecutor::Impl &m, const ExpertMatrices &e, DevicePointer x,
                     int64_t rows, uint64_t matrixIds, DevicePointer g, DevicePointer u);
// Decode's down products of those gated rows g into d [choices][hidden].
Status downProducts(HybridExecutor::Impl &m, const ExpertMatrices &e, DevicePointer g, int64_t rows,
                    uint64_t matrixIds, DevicePointer d);

// Copies of a CPU-placed layer's most often routed experts on the GPU (the
// spare-VRAM expert cache): the choices of cached experts run there, the
// rest on the CPU meanwhile, and the GPU adds the two sums.
struct CachedExperts {
  const gguf::TensorInfo *tensors[3] = {}; // gate, up, down of all experts, on the host
  GpuMatrix matrices[3];                   // the cached experts in slot order (empty until filled)
  const Kernel *siluMul = nullptr, *combine = nullptr, *add = nullptr;
  const Kernel *gateUp = nullptr; // decode's fused gate and up (types agreeing)
  int64_t hidden = 0, ffn = 0, topK = 0, experts = 0;
  // Streamed experts: whether this layer's experts are page-locked yet (the
  // later layers' are locked in the background after load); it streams
  // none until they are.
  std::atomic<bool> pinned{false};
  uint64_t bytesPerExpert = 0;
  std::vector<int32_t> slotOf; // expert -> slot, -1: on the CPU only
  int64_t cached = 0;
  std::vector<int32_t> cpuIds; // a step's choices with the cached ones -1
  std::vector<CudaDevice::HostCopy> slotCopies; // copyIntoSlots' batch, reused
  int32_t *slotsHost = nullptr;
  float *weightsHost = nullptr; // page-locked: queued copies read them
  DevicePointer slots = 0, weights = 0;
  AssignmentGroups groups; // prefill: the cached choices grouped by slot
  uint64_t selections = 0, gpuSelections = 0;
  int64_t stepCachedChoices = 0; // route()'s choices of cached experts
  // Streaming: the shared staging slots as this layer's matrices, each
  // choice's place in the step's streamed experts (-1: not streamed; in
  // decode its slot), and per step the experts streamed (in that order) and
  // each expert's place (-1 between steps). Prefill streams its experts
  // through the two halves of the slots in turn, grouped as `streamGroups`.
  GpuMatrix staged[3];
  int32_t *streamSlotsHost = nullptr; // page-locked: queued copies read it
  DevicePointer streamSlots = 0;
  std::vector<int32_t> streamedIds, streamSlotOf, streamTokens, chunkSlotOf;
  AssignmentGroups streamGroups; // prefill: at most a tile per choice, as `groups`
  uint64_t streamedSelections = 0, streamedBytes = 0;
  // Decode's gate/up-only experts (m.streamedGateUps): each choice's slot
  // (-1: none), the step's experts and each expert's place, which choices
  // the CPU gets gated rows for, and those rows as the GPU copied them back
  // (page-locked, [choices][ffn], valid after kGatedRowsReady).
  int32_t *gateUpSlotsHost = nullptr;
  DevicePointer gateUpSlots = 0;
  std::vector<int32_t> gateUpIds, gateUpPlaceOf;
  std::vector<int64_t> gateUpRows;     // per place: the leading rows streamed
  std::vector<int32_t> gatedRowsGiven; // per choice: the rows the CPU is given
  float *gatedRowsHost = nullptr;
  uint64_t gateUpSelections = 0, gateUpRowSelections = 0; // choices, and their rows
  // The gate and up rows the GPU computes of the gate/up-only expert at
  // `place` for the decode share's gate/up rows: whole 16-row groups (the CPU's tasks' grain),
  // all of them once the share covers the expert; 0: it stays on the CPU.
  int64_t gateUpRowsAt(double share, int64_t place) const {
    const double part = std::clamp(share - double(place), 0.0, 1.0);
    return part >= 1.0 ? ffn : int64_t(part * double(ffn) + 0.5) / 16 * 16;
  }
  // The last run's streamed-share marks (Impl::StreamTimeline), if on the
  // clock: start on the side stream, copies done, products done.
  std::optional<std::array<size_t, 3>> streamMarks;
  Clock::time_point streamQueued; // when the host began queueing them

  size_t scratchFloats(int64_t rows) const {
    return size_t(rows * (topK * (2 * ffn + hidden) + hidden));
  }
  // Bytes of one expert's matrix `i` (gate, up, down).
  size_t sliceBytes(int i) const { return size_t(tensors[i]->nbytes / uint64_t(experts)); }

  // Queues the cached choices of `rows` tokens on the GPU, and with
  // streaming (m.streamedExperts slots) some of the others, their weights
  // copied into the slots first: in decode up to a slot-count of experts,
  // in prefill the most chosen (by kPrefillStreamMinTokens tokens or more),
  // m.prefillStreamShare of the step's CPU-side experts, half the slots at
  // a time. Their weighted sum goes into scratch (returned). Sets cpuIds to
  // what the CPU runs. In parts: route() decides on the host what runs
  // where (cpuIds, the gated rows given), queue() queues the GPU's share;
  // decode queues the copies first (queueCopies), then the rest, from the
  // calling thread while the pool's other threads start the CPU's share.
  void route(HybridExecutor::Impl &m, int64_t rows, const int32_t *ids, const float *gateWeights,
             bool decode);
  // Decode: queues on the side stream the copies of route()'s streamed
  // weights (the gate/up-only experts' first: the CPU waits for their
  // rows), the first of the GPU's share, so that the link starts at once.
  Status queueCopies(HybridExecutor::Impl &m);
  StatusOr<DevicePointer> queue(HybridExecutor::Impl &m, int64_t rows, DevicePointer x,
                                bool decode);
  // The device's order events (CudaDevice::signal) per set of slots, and
  // for the gate/up-only experts' copies and gated rows.
  static constexpr int kSlotsFree[2] = {0, 1}, kCopied[2] = {2, 3};
  static constexpr int kGateUpCopied = 4, kGatedRowsReady = 5;
  // Decode: the gate and up of the last pass's whole experts, copied before
  // their down matrices.
  static constexpr int kLastGateUpCopied = 6;

private:
  // Queues on the side stream the copies of matrices [firstMatrix,
  // endMatrix) (0 gate, 1 up, 2 down) of experts ids[first, first + count)
  // into slots firstSlot on; with `leadingRows` (gate and up only), of
  // expert i's first leadingRows[i] rows.
  Status copyIntoSlots(HybridExecutor::Impl &m, const std::vector<int32_t> &ids, size_t first,
                       size_t count, size_t firstSlot, int endMatrix,
                       const std::vector<int64_t> *leadingRows = nullptr, int firstMatrix = 0);
  // Decode's gate/up-only experts, once queueCopies copied their gate and
  // up: the gated rows of their choices into g, and g to gatedRowsHost
  // (kGatedRowsReady).
  Status gatedRowsForCpu(HybridExecutor::Impl &m, DevicePointer x, int64_t rows, DevicePointer g,
                         DevicePointer u);
};

// A prefill step streams only experts at least this many of its tokens
// chose: the CPU's time for an expert grows with its tokens (the tile
// kernels' arithmetic) while the link's is its bytes alone, and an expert of
// a token or two costs the CPU little more than reading it, which its
// threads do about twice as fast as the link.
constexpr int64_t kPrefillStreamMinTokens = 4;

class ExpertsStep : public Step {
public:
  ExpertsStep(cpu::RoutedExperts experts, std::string gatePath, void *staging)
      : experts_(std::move(experts)), staging_(static_cast<float *>(staging)) {
    stats_.path = std::move(gatePath);
    stats_.selections.assign(size_t(experts_.experts()), 0);
  }
  bool runsOnHost() const override { return true; }
  bool movable() const override { return false; }
  size_t scratchFloats(int64_t rows) const override {
    return cache ? cache->scratchFloats(rows) : 0;
  }
  // in: x, ids, weights on the host; with a cache, x on the GPU too.
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    const Value &x = *in[0], &ids = *in[1], &weights = *in[2];
    Value &o = *out[0];
    float *result = o.where == Where::Host ? o.hostFloats() : staging_;
    const int32_t *cpuIds = ids.hostIds();
    DevicePointer cachedSum = 0;
    // Gated rows the GPU computes for the CPU's down products (decode's
    // gate/up-only experts), waited for once, when the CPU needs them.
    cpu::GivenGatedRows given;
    const cpu::GivenGatedRows *gatedRows = nullptr;
    Status gatedStatus = Status::success();
    bool gatedWaited = false;
    bool streamedPrefill = false; // this step streamed experts in prefill
    // The GPU's share of the experts: queued before the CPU's in prefill
    // (the CPU's tile products would delay it), in decode by this thread
    // while the others start the CPU's (`queueOnGpu`, run once).
    Status queued = Status::success();
    // The two jobs below reach this call's state through one pointer, which
    // std::function holds in place: they allocate nothing per token.
    struct JobState {
      HybridExecutor::Impl *m;
      CachedExperts *cache;
      StepContext *ctx;
      DevicePointer x, *cachedSum;
      Status *queued, *gatedStatus;
      bool *gatedWaited;
      int64_t ffn;
      const float *rows;
    } jobs{&m, cache.get(), &ctx, 0, &cachedSum, &queued, &gatedStatus, &gatedWaited, 0, nullptr};
    std::function<void()> queueOnGpu;
    if (cache && (cache->cached > 0 || (m.streamedExperts > 0 && cache->pinned)) &&
        o.where == Where::Gpu) {
      cache->route(m, ctx.rows, ids.hostIds(), weights.hostFloats(), ctx.decode);
      jobs.x = in[3]->gpu;
      queueOnGpu = [j = &jobs] {
        // Decode: the streamed weights' copies first, so that the link
        // starts as the pool's workers do (queued before the pool, they
        // held the CPU's start back by 0.02-0.03 ms a layer).
        if (j->ctx->decode)
          if (Status s = j->cache->queueCopies(*j->m); !s.ok()) {
            *j->queued = s;
            return;
          }
        StatusOr<DevicePointer> sum = j->cache->queue(*j->m, j->ctx->rows, j->x, j->ctx->decode);
        if (sum)
          *j->cachedSum = *sum;
        else
          *j->queued = sum.status();
      };
      if (!ctx.decode) {
        queueOnGpu();
        if (!queued.ok())
          return queued;
      }
      cpuIds = cache->cpuIds.data();
      streamedPrefill = !ctx.decode && !cache->streamedIds.empty();
      if (!cache->gateUpIds.empty()) {
        jobs.ffn = cache->ffn;
        jobs.rows = cache->gatedRowsHost;
        given.rows = cache->gatedRowsGiven.data();
        given.fill = [j = &jobs](int64_t assignment, float *row, int64_t count) {
          if (!*j->gatedWaited) {
            *j->gatedWaited = true;
            *j->gatedStatus = j->queued->ok()
                                  ? j->m->device->waitOnHost(CachedExperts::kGatedRowsReady)
                                  : *j->queued;
          }
          if (j->gatedStatus->ok())
            std::memcpy(row, j->rows + assignment * j->ffn, size_t(count) * 4);
          else
            std::fill(row, row + count, 0.0f);
        };
        gatedRows = &given;
      }
    } else if (cache) {
      cache->selections += uint64_t(ctx.rows * ids.width);
    }
    auto start = Clock::now();
    if (ctx.decode)
      m.expertLayerStarts.push_back(start);
    segmentStarts_.clear();
    for (const Segment &segment : ctx.segments)
      segmentStarts_.push_back(segment.row);
    experts_.forward(m.pool, m.workspace, x.hostFloats(), ctx.rows, cpuIds, weights.hostFloats(),
                     ids.width, result, &segmentStarts_,
                     m.profiling ? &m.profile.expertPhases : nullptr, gatedRows,
                     queueOnGpu && ctx.decode ? &queueOnGpu : nullptr);
    if (!queued.ok())
      return queued;
    if (!gatedStatus.ok())
      return gatedStatus;
    if (ctx.decode)
      m.expertLayerEnds.push_back(Clock::now());
    if (cache && cache->streamMarks && ctx.decode) {
      const auto &[first, copied, done] = *cache->streamMarks;
      m.streamTimelines.push_back(
          {m.device, first, copied, done, cache->streamQueued, start, Clock::now()});
      cache->streamMarks.reset();
    }
    // Whoever finished first takes more next time: of the next prefill
    // step's experts, or of the next decode layer's gate/up rows.
    struct Balanced {
      double *share, step, lowest, highest;
    };
    std::optional<Balanced> balanced;
    constexpr double kPrefillShareStep = 0.05;
    if (streamedPrefill)
      balanced = {&m.prefillStreamShare, kPrefillShareStep, kPrefillShareStep, 1.0};
    const bool balanceDecode = ctx.decode && m.balanceGateUpShare && m.decodeShare.balances() &&
                               cache && (!cache->streamedIds.empty() || !cache->gateUpIds.empty());
    if (balanced || balanceDecode) {
      StatusOr<bool> gpuDone = m.device->finishedQueuedWork();
      if (!gpuDone)
        return gpuDone.status();
      if (balanced)
        *balanced->share =
            std::clamp(*balanced->share + (*gpuDone ? balanced->step : -balanced->step),
                       balanced->lowest, balanced->highest);
      else
        m.decodeShare.update(*gpuDone);
    }
    for (int64_t i = 0; i < ctx.rows * ids.width; ++i)
      ++stats_.selections[size_t(ids.hostIds()[i])];
    if (m.profiling)
      m.profile.cpuExpertSeconds += secondsSince(start);
    if (o.where == Where::Host)
      return Status::success();
    const size_t bytes = size_t(ctx.rows * experts_.hidden()) * 4;
    start = Clock::now();
    // Queued: the staging buffer is written again only by this layer's next
    // step, after copies to the host the stream passes after this one.
    Status copied = m.device->copyToDeviceAsync(o.gpu, result, bytes);
    if (copied.ok() && m.profiling)
      copied = m.device->synchronize();
    if (copied.ok())
      copied = m.markGpuTime(m.device, true);
    if (m.profiling) {
      m.profile.transferSeconds += secondsSince(start);
      m.profile.transferBytes += bytes;
    }
    if (!copied.ok() || !cachedSum)
      return copied;
    return m.elementwise(*cache->add, o.gpu, cachedSum, o.gpu, ctx.rows, experts_.hidden());
  }
  const exec::RoutingStats &stats() const { return stats_; }
  void clearStats() {
    std::fill(stats_.selections.begin(), stats_.selections.end(), 0);
    if (cache)
      cache->selections = cache->gpuSelections = cache->streamedSelections = cache->streamedBytes =
          cache->gateUpSelections = cache->gateUpRowSelections = 0;
  }
  const cpu::RoutedExperts &experts() const { return experts_; }

  std::unique_ptr<CachedExperts> cache; // null: the layer is not cached

private:
  cpu::RoutedExperts experts_;
  std::vector<int64_t> segmentStarts_; // the step's sequences' first rows (kept: no allocation)
  float *staging_; // page-locked, for a result that goes to the GPU
  exec::RoutingStats stats_;
};

void CachedExperts::route(HybridExecutor::Impl &m, int64_t rows, const int32_t *ids,
                          const float *gateWeights, bool decode) {
  const bool streams = pinned.load(std::memory_order_acquire);
  // Prefill streams through every slot, decode its balance's whole experts.
  const int64_t choices = rows * topK, slotCount = !streams ? 0
                                                   : decode ? m.decodeShare.experts
                                                            : m.streamedExperts;
  cpuIds.resize(size_t(choices));
  streamedIds.clear();
  if (slotCount > 0 && !decode) {
    // Prefill: the most chosen experts (those of kPrefillStreamMinTokens
    // tokens or more), m.prefillStreamShare of the step's CPU-side ones.
    streamTokens.assign(size_t(experts), 0);
    for (int64_t i = 0; i < choices; ++i)
      if (slotOf[size_t(ids[i])] < 0)
        ++streamTokens[size_t(ids[i])];
    int64_t cpuSide = 0;
    for (int64_t e = 0; e < experts; ++e) {
      cpuSide += streamTokens[size_t(e)] > 0;
      if (streamTokens[size_t(e)] >= kPrefillStreamMinTokens)
        streamedIds.push_back(int32_t(e));
    }
    std::stable_sort(streamedIds.begin(), streamedIds.end(), [&](int32_t a, int32_t b) {
      return streamTokens[size_t(a)] > streamTokens[size_t(b)];
    });
    const auto share = size_t(std::ceil(m.prefillStreamShare * double(cpuSide)));
    streamedIds.resize(std::min(streamedIds.size(), share));
    for (size_t place = 0; place < streamedIds.size(); ++place)
      streamSlotOf[size_t(streamedIds[place])] = int32_t(place);
  }
  int64_t cachedChoices = 0;
  const int64_t gateUpCount = decode && streams ? m.streamedGateUps : 0;
  gateUpIds.clear();
  gateUpRows.clear();
  if (gateUpCount > 0)
    gatedRowsGiven.assign(size_t(choices), 0);
  for (int64_t i = 0; i < choices; ++i) {
    const int32_t expert = ids[i];
    const int32_t slot = slotOf[size_t(expert)];
    int32_t streamed = -1, gateUpSlot = -1;
    if (slot < 0 && slotCount > 0) {
      streamed = streamSlotOf[size_t(expert)];
      // Decode: the first experts of the step, up to a slot each.
      if (decode && streamed < 0 && int64_t(streamedIds.size()) < slotCount) {
        streamed = int32_t(streamedIds.size());
        streamSlotOf[size_t(expert)] = streamed;
        streamedIds.push_back(expert);
      }
    }
    // Decode: the next experts have only their gate and up on the GPU.
    if (slot < 0 && streamed < 0 && gateUpCount > 0) {
      int32_t place = gateUpPlaceOf[size_t(expert)];
      if (place < 0 && int64_t(gateUpIds.size()) < gateUpCount)
        if (const int64_t rows = gateUpRowsAt(m.decodeShare.gateUpShare, int64_t(gateUpIds.size()));
            rows > 0) {
          place = int32_t(gateUpIds.size());
          gateUpPlaceOf[size_t(expert)] = place;
          gateUpIds.push_back(expert);
          gateUpRows.push_back(rows);
        }
      if (place >= 0) {
        gateUpSlot = int32_t(m.streamedExperts) + place; // after all whole experts' slots
        gatedRowsGiven[size_t(i)] = int32_t(gateUpRows[size_t(place)]);
        gateUpRowSelections += uint64_t(gateUpRows[size_t(place)]);
      }
    }
    const bool onGpu = slot >= 0 || streamed >= 0;
    slotsHost[i] = slot;
    weightsHost[i] = onGpu ? gateWeights[i] : 0.0f; // 0: moe_combine skips the slot
    cpuIds[size_t(i)] = onGpu ? -1 : expert;
    cachedChoices += slot >= 0;
    streamedSelections += streamed >= 0;
    gateUpSelections += gateUpSlot >= 0;
    if (slotCount > 0)
      streamSlotsHost[i] = streamed;
    if (gateUpCount > 0)
      gateUpSlotsHost[i] = gateUpSlot;
  }
  for (int32_t expert : streamedIds)
    streamSlotOf[size_t(expert)] = -1;
  for (int32_t expert : gateUpIds)
    gateUpPlaceOf[size_t(expert)] = -1;
  gpuSelections += uint64_t(cachedChoices);
  selections += uint64_t(choices);
  stepCachedChoices = cachedChoices;
}

StatusOr<DevicePointer> CachedExperts::queue(HybridExecutor::Impl &m, int64_t rows, DevicePointer x,
                                             bool decode) {
  const int64_t choices = rows * topK, slotCount = m.streamedExperts;
  if (Status s = m.device->copyToDeviceAsync(weights, weightsHost, size_t(choices) * 4); !s.ok())
    return s;
  using Queue = CudaDevice::Queue;
  const DevicePointer g = m.scratch, u = g + DevicePointer(choices * ffn) * 4,
                      d = u + DevicePointer(choices * ffn) * 4,
                      sum = d + DevicePointer(choices * hidden) * 4;
  // Each pass writes the g, u and d rows of its own choices only (a slot of
  // -1 is skipped), so the combine reads every pass's rows. The gate/up-only
  // experts go first: the CPU waits for their rows.
  if (!gateUpIds.empty())
    if (Status s = gatedRowsForCpu(m, x, rows, g, u); !s.ok())
      return s;
  if (stepCachedChoices > 0) {
    if (Status s = m.device->copyToDeviceAsync(slots, slotsHost, size_t(choices) * 4); !s.ok())
      return s;
    // Prefill: each cached expert read once per tile of its choices.
    StatusOr<int64_t> tiles = rows > 1 ? groups.build(m, slotsHost, choices) : int64_t(0);
    if (!tiles)
      return tiles.status();
    const ExpertMatrices cachedMatrices{matrices[0], matrices[1], matrices[2], *siluMul,
                                        gateUp,      hidden,      ffn,         topK};
    if (Status s = expertProducts(m, cachedMatrices, x, rows, rows > 1 ? &groups : nullptr, *tiles,
                                  slots, g, u, d);
        !s.ok())
      return s;
  }
  const ExpertMatrices stagedMatrices{staged[0], staged[1], staged[2], *siluMul,
                                      gateUp,    hidden,    ffn,       topK};
  // The copies run on the device's side stream, so that they overlap the
  // stream's kernels (the shared expert, earlier chunks' products): a set
  // of slots is copied into once the products that read it last are done
  // (kSlotsFree), and products wait for their set's copies (kCopied).
  if (decode && !streamedIds.empty()) {
    // Their weights' copies are queued already (queueCopies): the first
    // expert's, then the others' (kCopied[0], kCopied[1]). The first one's
    // products run while the others' weights still cross the link, so that
    // only theirs remain after the last copy: each pass reads a table of
    // its own choices' slots (the others -1), after the whole table.
    const size_t passes = streamedIds.size() > 1 ? 2 : 1;
    if (passes > 1)
      for (int64_t i = 0; i < choices; ++i) {
        const int32_t place = streamSlotsHost[i];
        streamSlotsHost[choices + i] = place == 0 ? 0 : -1;
        streamSlotsHost[2 * choices + i] = place > 0 ? place : -1;
      }
    const size_t firstTable = passes > 1 ? size_t(choices) : 0;
    if (Status s =
            m.device->copyToDeviceAsync(streamSlots + DevicePointer(firstTable * 4),
                                        streamSlotsHost + firstTable, passes * size_t(choices) * 4);
        !s.ok())
      return s;
    // The last pass's gate and up run once theirs are copied, before its
    // down matrices are (kLastGateUpCopied): after the last copy only the
    // down products and the weighted sum remain.
    for (size_t pass = 0; pass < passes; ++pass) {
      const bool last = pass + 1 == passes;
      const DevicePointer table = streamSlots + DevicePointer((firstTable + pass * choices) * 4);
      if (Status s = m.device->waitFor(Queue::Main, last ? kLastGateUpCopied : kCopied[pass]);
          !s.ok())
        return s;
      if (Status s = gatedProducts(m, stagedMatrices, x, rows, table, g, u); !s.ok())
        return s;
      if (last)
        if (Status s = m.device->waitFor(Queue::Main, kCopied[pass]); !s.ok())
          return s;
      if (Status s = downProducts(m, stagedMatrices, g, rows, table, d); !s.ok())
        return s;
    }
    for (Status s : {m.device->signal(Queue::Main, kSlotsFree[0]),
                     m.device->signal(Queue::Main, kSlotsFree[1])})
      if (!s.ok())
        return s;
  } else if (!streamedIds.empty()) {
    // Prefill: chunks of half the slots, alternating between the two sets
    // (with one slot, one set), so that the next chunk's copies run while a
    // chunk's products do; each chunk's choices grouped by slot, all
    // chunks' tiles copied at once.
    const size_t chunkSize = size_t(std::max<int64_t>(slotCount / 2, 1));
    const size_t sets = slotCount >= 2 ? 2 : 1;
    const size_t chunks = (streamedIds.size() + chunkSize - 1) / chunkSize;
    std::vector<int64_t> tileStart(chunks + 1, 0);
    chunkSlotOf.resize(size_t(choices));
    for (size_t chunk = 0; chunk < chunks; ++chunk) {
      const size_t firstSlot = (chunk % sets) * chunkSize;
      for (int64_t i = 0; i < choices; ++i) {
        const int32_t place = streamSlotsHost[i];
        chunkSlotOf[size_t(i)] = place >= 0 && size_t(place) / chunkSize == chunk
                                     ? int32_t(firstSlot + size_t(place) % chunkSize)
                                     : -1;
      }
      tileStart[chunk + 1] =
          tileStart[chunk] +
          groupAssignments(chunkSlotOf.data(), choices,
                           streamGroups.host + tileStart[chunk] * AssignmentGroups::kTileInts);
    }
    if (Status s = m.device->copyToDeviceAsync(
            streamGroups.gpu, streamGroups.host,
            size_t(tileStart[chunks] * AssignmentGroups::kTileInts) * 4);
        !s.ok())
      return s;
    for (size_t chunk = 0; chunk < chunks; ++chunk) {
      const size_t set = chunk % sets, first = chunk * chunkSize;
      for (Status s :
           {m.device->waitFor(Queue::Side, kSlotsFree[set]),
            copyIntoSlots(m, streamedIds, first, std::min(chunkSize, streamedIds.size() - first),
                          set * chunkSize, 3),
            m.device->signal(Queue::Side, kCopied[set]),
            m.device->waitFor(Queue::Main, kCopied[set])})
        if (!s.ok())
          return s;
      AssignmentGroups chunkGroups = streamGroups;
      chunkGroups.gpu += DevicePointer(tileStart[chunk] * AssignmentGroups::kTileInts) * 4;
      if (Status s = expertProducts(m, stagedMatrices, x, rows, &chunkGroups,
                                    tileStart[chunk + 1] - tileStart[chunk], 0, g, u, d);
          !s.ok())
        return s;
      if (Status s = m.device->signal(Queue::Main, kSlotsFree[set]); !s.ok())
        return s;
    }
  }
  if (Status s = m.elementwise(*combine, d, weights, sum, rows, hidden); !s.ok())
    return s;
  if (decode && streamMarks) {
    StatusOr<size_t> done = m.device->markTime();
    if (!done)
      return done.status();
    (*streamMarks)[2] = *done;
  }
  return sum;
}

Status CachedExperts::queueCopies(HybridExecutor::Impl &m) {
  using Queue = CudaDevice::Queue;
  streamMarks.reset();
  if (streamedIds.empty() && gateUpIds.empty())
    return Status::success();
  // On the clock: a layer that streams whole experts.
  if (!streamedIds.empty() && m.onMoeLayerClock()) {
    StatusOr<size_t> start = m.device->markTime(Queue::Side);
    if (!start)
      return start.status();
    streamMarks = std::array<size_t, 3>{*start, 0, 0};
    streamQueued = Clock::now();
  }
  // Decode fills all slots (both sets) once the products that read them
  // last are done.
  for (Status s : {m.device->waitFor(Queue::Side, kSlotsFree[0]),
                   m.device->waitFor(Queue::Side, kSlotsFree[1])})
    if (!s.ok())
      return s;
  // Gate/up-only experts: their gate and up, into the slots after the
  // whole experts'.
  if (!gateUpIds.empty()) {
    if (Status s = copyIntoSlots(m, gateUpIds, 0, gateUpIds.size(), size_t(m.streamedExperts), 2,
                                 &gateUpRows);
        !s.ok())
      return s;
    if (Status s = m.device->signal(Queue::Side, kGateUpCopied); !s.ok())
      return s;
  }
  if (streamedIds.empty())
    return Status::success();
  // The first whole expert, then the others (queue() multiplies the first
  // while the others are copied); of the last pass's experts (the others,
  // or the first alone) the gate and up before the down matrices.
  const size_t later = streamedIds.size() - 1;
  if (later > 0)
    for (Status s :
         {copyIntoSlots(m, streamedIds, 0, 1, 0, 3), m.device->signal(Queue::Side, kCopied[0])})
      if (!s.ok())
        return s;
  const size_t lastFirst = later > 0 ? 1 : 0, lastCount = later > 0 ? later : 1;
  for (Status s : {copyIntoSlots(m, streamedIds, lastFirst, lastCount, lastFirst, 2),
                   m.device->signal(Queue::Side, kLastGateUpCopied),
                   copyIntoSlots(m, streamedIds, lastFirst, lastCount, lastFirst, 3, nullptr, 2)})
    if (!s.ok())
      return s;
  // Marked before the signal: the stream's wait for it covers the mark.
  if (streamMarks) {
    StatusOr<size_t> copied = m.device->markTime(Queue::Side);
    if (!copied)
      return copied.status();
    (*streamMarks)[1] = *copied;
  }
  return m.device->signal(Queue::Side, kCopied[later > 0 ? 1 : 0]);
}

Status CachedExperts::gatedRowsForCpu(HybridExecutor::Impl &m, DevicePointer x, int64_t rows,
                                      DevicePointer g, DevicePointer u) {
  using Queue = CudaDevice::Queue;
  const int64_t choices = rows * topK;
  // Every row of the slots: past an expert's leading rows (gateUpRows) they
  // hold older weights, whose rows the CPU never reads; a GEMV over fewer
  // rows would need a kernel per count, for a few microseconds saved.
  for (Status s :
       {m.device->copyToDeviceAsync(gateUpSlots, gateUpSlotsHost, size_t(choices) * 4),
        m.device->waitFor(Queue::Main, kGateUpCopied),
        gatedProducts(m, {staged[0], staged[1], staged[2], *siluMul, gateUp, hidden, ffn, topK}, x,
                      rows, gateUpSlots, g, u),
        m.device->copyToHostAsync(gatedRowsHost, g, size_t(choices * ffn) * 4),
        m.device->signal(Queue::Main, kGatedRowsReady)})
    if (!s.ok())
      return s;
  return Status::success();
}

Status CachedExperts::copyIntoSlots(HybridExecutor::Impl &m, const std::vector<int32_t> &ids,
                                    size_t first, size_t count, size_t firstSlot,
                                    int endMatrix, const std::vector<int64_t> *leadingRows,
                                    int firstMatrix) {
  // One batch: each driver call takes a few microseconds of the caller's
  // (in decode, of a thread the CPU's experts wait for).
  slotCopies.clear();
  for (size_t slot = 0; slot < count; ++slot)
    for (int i = firstMatrix; i < endMatrix; ++i) {
      const size_t slice = sliceBytes(i);
      // A gate or up matrix is ffn rows of whole quant blocks.
      const size_t bytes =
          leadingRows ? slice / size_t(ffn) * size_t((*leadingRows)[first + slot]) : slice;
      slotCopies.push_back(
          {staged[i].data + (firstSlot + slot) * slice,
           static_cast<const uint8_t *>(tensors[i]->data) + size_t(ids[first + slot]) * slice,
           bytes});
      streamedBytes += bytes;
    }
  return m.device->copyBatchToDeviceOnSide(slotCopies);
}

Status expertProducts(HybridExecutor::Impl &m, const ExpertMatrices &e, DevicePointer x,
                      int64_t rows, const AssignmentGroups *groups, int64_t tiles,
                      uint64_t matrixIds, DevicePointer g, DevicePointer u, DevicePointer d) {
  const int64_t choices = rows * e.topK;
  if (groups) {
    const GemvLayout wide = groups->layout(e.hidden, e.ffn, e.topK),
                     narrow = groups->layout(e.ffn, e.hidden, 1);
    for (Status s : {m.groupedGemv(e.gate, x, g, tiles, wide), m.groupedGemv(e.up, x, u, tiles, wide),
                     m.elementwise(e.siluMul, g, u, g, choices, e.ffn),
                     m.groupedGemv(e.down, g, d, tiles, narrow)})
      if (!s.ok())
        return s;
    return Status::success();
  }
  if (Status s = gatedProducts(m, e, x, rows, matrixIds, g, u); !s.ok())
    return s;
  return downProducts(m, e, g, rows, matrixIds, d);
}

Status downProducts(HybridExecutor::Impl &m, const ExpertMatrices &e, DevicePointer g, int64_t rows,
                    uint64_t matrixIds, DevicePointer d) {
  const GemvLayout narrow{
      int(e.topK * e.ffn), int(e.topK * e.hidden), int(e.ffn), int(e.hidden), int(rows), matrixIds};
  return m.gemv(e.down, g, d, rows, narrow);
}

Status gatedProducts(HybridExecutor::Impl &m, const ExpertMatrices &e, DevicePointer x,
                     int64_t rows, uint64_t matrixIds, DevicePointer g, DevicePointer u) {
  const GemvLayout wide{int(e.hidden), int(e.topK * e.ffn), 0, int(e.ffn), int(rows), matrixIds};
  if (e.gateUp) // gate and up in one pass
    return m.gateUpGemv(*e.gateUp, e.gate, e.up, x, g, rows, wide);
  for (Status s : {m.gemv(e.gate, x, g, rows, wide), m.gemv(e.up, x, u, rows, wide, true),
                   m.elementwise(e.siluMul, g, u, g, rows * e.topK, e.ffn)})
    if (!s.ok())
      return s;
  return Status::success();
}

Status AssignmentGroups::allocate(HybridExecutor::Impl &m, int64_t assignments) {
  const size_t bytes = size_t(std::max<int64_t>(assignments, 1) * kTileInts) * 4;
  StatusOr<void *> pinned = m.device->allocateHost(bytes);
  if (!pinned)
    return pinned.status();
  m.hostAllocations.push_back(*pinned);
  host = static_cast<int32_t *>(*pinned);
  StatusOr<DevicePointer> onGpu = m.allocate(bytes, false);
  if (!onGpu)
    return onGpu.status();
  gpu = *onGpu;
  return Status::success();
}

// Routed experts on the GPU: each token's chosen experts (ids read on the
// device, so decode graphs replay them) through gate/up, SiLU, down, and
// the gate-weighted sum.
class GpuExpertsStep : public Step {
public:
  GpuMatrix gate, up, down;
  const Kernel *siluMul = nullptr, *combine = nullptr, *countSelections = nullptr;
  const Kernel *gateUp = nullptr; // decode's fused gate and up (types agreeing)
  int64_t hidden = 0, ffn = 0, topK = 0, experts = 0;
  DevicePointer selections = 0; // u64 per expert: the routing statistics
  std::string gatePath;
  AssignmentGroups groups; // prefill: the tokens' choices grouped by expert
  std::vector<int32_t> hostIds;
  // Experts with a grouped GEMM (FP8's wgmma, GGUF's tensor-core GEMM): per
  // prefill step, the assignments grouped by expert: x row (token) and
  // result row (assignment) of each, and the GEMM's tiles; written to
  // page-locked memory, copied before use.
  struct RowGroups {
    int32_t *host = nullptr; // rowIndex[A], outRows[A], tiles[3 * (A + experts)]
    DevicePointer gpu = 0;
    int64_t capacity = 0;                   // A
    std::vector<int64_t> sizes, next;       // per expert: rows, next free row
    // On the device after build(): rowIndex, outRows and the tile table.
    DevicePointer rowIndex = 0, outRows = 0, tiles = 0;
    int64_t tileCount = 0;
  } rowGroups;
  // Whether prefill runs the GGUF experts' grouped tensor-core GEMM.
  bool mmaPrefill() const { return gate.mmaGemm && up.mmaGemm && down.mmaGemm; }
  // Room in rowGroups for a prefill chunk of `chunkSize` tokens.
  Status allocateRowGroups(HybridExecutor::Impl &m, int64_t chunkSize) {
    // Tiles: at most one per assignment plus one partial tile per expert.
    const int64_t capacity = std::max<int64_t>(chunkSize * topK, 1);
    const size_t bytes = size_t(2 * capacity + 3 * (capacity + experts)) * 4;
    StatusOr<void *> pinned = m.device->allocateHost(bytes);
    if (!pinned)
      return pinned.status();
    m.hostAllocations.push_back(*pinned);
    StatusOr<DevicePointer> onGpu = m.allocate(bytes, false);
    if (!onGpu)
      return onGpu.status();
    rowGroups.host = static_cast<int32_t *>(*pinned);
    rowGroups.gpu = *onGpu;
    rowGroups.capacity = capacity;
    return Status::success();
  }

  size_t scratchFloats(int64_t rows) const override {
    return size_t(rows * topK * (2 * ffn + hidden));
  }
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    const int64_t rows = ctx.rows, choices = rows * topK;
    const DevicePointer g = m.scratch, u = g + DevicePointer(choices * ffn) * 4,
                        d = u + DevicePointer(choices * ffn) * 4;
    const uint64_t ids = in[1]->gpu;
    // Prefill: the choices grouped by expert (ids read back to the host).
    // Decode, one token per sequence, keeps the ids on the device for its
    // graphs.
    int64_t tiles = 0;
    const bool fp8Experts = gate.type == GgmlType::F8_E4M3_B128;
    if (fp8Experts && !ctx.decode && gate.fp8Grouped) {
      if (Status s = fp8Prefill(m, in[0]->gpu, rows, ids, g, u, d); !s.ok())
        return s;
    } else if (!fp8Experts && !ctx.decode && rows >= kMmaGemmMinTokens && mmaPrefill()) {
      if (Status s = mmaGroupedPrefill(m, in[0]->gpu, rows, ids, g, u, d); !s.ok())
        return s;
    } else {
      // FP8 experts without the grouped GEMM take the GEMV by expert id in
      // prefill too.
      if (!ctx.decode && !fp8Experts) {
        hostIds.resize(size_t(choices));
        if (Status s = m.device->copyToHost(hostIds.data(), ids, size_t(choices) * 4); !s.ok())
          return s;
        StatusOr<int64_t> built = groups.build(m, hostIds.data(), choices);
        if (!built)
          return built.status();
        tiles = *built;
      }
      const bool grouped = !ctx.decode && !fp8Experts;
      if (Status s = expertProducts(m, {gate, up, down, *siluMul, gateUp, hidden, ffn, topK},
                                    in[0]->gpu, rows, grouped ? &groups : nullptr, tiles, ids, g,
                                    u, d);
          !s.ok())
        return s;
    }
    DevicePointer idsPointer = in[1]->gpu, counts = selections;
    int tokens = int(rows);
    if (Status s = m.launch(*countSelections, ceilDiv(rows * topK, countSelections->threads), 1, 1,
                            0, {&idsPointer, &counts, &tokens});
        !s.ok())
      return s;
    return m.elementwise(*combine, d, in[2]->gpu, out[0]->gpu, rows, hidden);
  }

  // The choices of a prefill step of `rows` tokens grouped by expert on the
  // host (ids read back), in tiles of up to `tileRows` rows, copied to the
  // device (rowGroups' pointers).
  Status groupChoices(HybridExecutor::Impl &m, int64_t rows, uint64_t ids, int64_t tileRows) {
    RowGroups &groups = rowGroups;
    const int64_t choices = rows * topK;
    if (choices > groups.capacity)
      return Status::error("a prefill step of " + std::to_string(rows) +
                           " tokens exceeds the experts' grouping room; recompile the plan.");
    hostIds.resize(size_t(choices));
    if (Status s = m.device->copyToHost(hostIds.data(), ids, size_t(choices) * 4); !s.ok())
      return s;
    if (std::optional<int32_t> invalid =
            orderAssignmentsByExpert(hostIds.data(), choices, topK, experts, groups.sizes,
                                     groups.next, groups.host, groups.host + choices))
      return Status::error("the gate chose expert " + std::to_string(*invalid) + " of " +
                           std::to_string(experts) + "; the plan is damaged: recompile it.");
    const std::vector<int32_t> tiles = expertRowTiles(groups.sizes, tileRows);
    std::memcpy(groups.host + 2 * choices, tiles.data(), tiles.size() * 4);
    const size_t bytes = size_t(2 * choices) * 4 + tiles.size() * 4;
    if (Status s = m.device->copyToDeviceAsync(groups.gpu, groups.host, bytes); !s.ok())
      return s;
    groups.rowIndex = groups.gpu;
    groups.outRows = groups.gpu + DevicePointer(choices) * 4;
    groups.tiles = groups.gpu + DevicePointer(2 * choices) * 4;
    groups.tileCount = int64_t(tiles.size() / 3);
    return Status::success();
  }

  // Prefill through a grouped GEMM: the choices grouped by expert in tiles
  // of `tileRows`, gate and up on the gathered rows (g, u in group order),
  // SiLU, and down back into the choices' order (d), which the weighted sum
  // reads. `product(w, x, xStride, y, yStride, rowIndex, outRows)` queues
  // one grouped GEMM over rowGroups' tiles.
  template <typename Product>
  Status groupedPrefill(HybridExecutor::Impl &m, DevicePointer x, int64_t rows, uint64_t ids,
                        DevicePointer g, DevicePointer u, DevicePointer d, int64_t tileRows,
                        Product product) {
    if (Status s = groupChoices(m, rows, ids, tileRows); !s.ok())
      return s;
    const DevicePointer gathered = rowGroups.rowIndex, scattered = rowGroups.outRows;
    for (Status s : {product(gate, x, hidden, g, ffn, gathered, 0),
                     product(up, x, hidden, u, ffn, gathered, 0),
                     m.elementwise(*siluMul, g, u, g, rows * topK, ffn),
                     product(down, g, ffn, d, hidden, 0, scattered)})
      if (!s.ok())
        return s;
    return Status::success();
  }
  // GGUF experts: the grouped tensor-core GEMM on 64-row tiles.
  Status mmaGroupedPrefill(HybridExecutor::Impl &m, DevicePointer x, int64_t rows, uint64_t ids,
                           DevicePointer g, DevicePointer u, DevicePointer d) {
    return groupedPrefill(
        m, x, rows, ids, g, u, d, kMmaGemmTileRows,
        [&](const GpuMatrix &w, DevicePointer in, int64_t inStride, DevicePointer out,
            int64_t outStride, DevicePointer rowIndex, DevicePointer outRows) {
          return m.groupedMmaGemm(w, in, inStride, out, outStride, rowGroups.tiles,
                                  rowGroups.tileCount, rowIndex, outRows);
        });
  }
  // FP8 experts: activations quantized as gathered, the wgmma GEMM on
  // 128-row tiles.
  Status fp8Prefill(HybridExecutor::Impl &m, DevicePointer x, int64_t rows, uint64_t ids,
                    DevicePointer g, DevicePointer u, DevicePointer d) {
    HybridExecutor::Impl::Gpu &gpu = m.physical[size_t(m.currentPhysical)];
    const int64_t choices = rows * topK;
    return groupedPrefill(
        m, x, rows, ids, g, u, d, kFp8GemmTileRows,
        [&](const GpuMatrix &w, DevicePointer in, int64_t inStride, DevicePointer out,
            int64_t outStride, DevicePointer rowIndex, DevicePointer outRows) {
          return runFp8GroupedGemm(*m.device, w.fp8Grouped->kernels, w.fp8Grouped->weight, w.out,
                                   in, inStride, rowIndex, choices, rowGroups.tiles,
                                   rowGroups.tileCount, out, outStride, gpu.fp8, outRows);
        });
  }

  StatusOr<exec::RoutingStats> stats(CudaDevice &device) const {
    exec::RoutingStats stats;
    stats.path = gatePath;
    stats.selections.assign(size_t(experts), 0);
    if (Status s = device.copyToHost(stats.selections.data(), selections, size_t(experts) * 8);
        !s.ok())
      return s;
    return stats;
  }
  Status clearStats(CudaDevice &device) {
    const std::vector<uint64_t> zeros(size_t(experts), 0);
    return device.copyToDevice(selections, zeros.data(), zeros.size() * 8);
  }
};

class LmHeadStep : public Step {
public:
  GpuMatrix w;
  int64_t hidden = 0;
  bool movable() const override { return false; }
  Status run(HybridExecutor::Impl &m, StepContext &ctx, const std::vector<Value *> &in,
             const std::vector<Value *> &out) override {
    if (!ctx.lastTokenOnly)
      return m.gemv(w, in[0]->gpu, out[0]->gpu, ctx.rows, {int(hidden), int(w.out), 0, 0});
    // The last row of each segment, into consecutive logits rows.
    for (size_t i = 0; i < ctx.segments.size(); ++i) {
      const Segment &segment = ctx.segments[i];
      const DevicePointer x = in[0]->gpu +
                              DevicePointer((segment.row + segment.count - 1) * hidden) * 4,
                          y = out[0]->gpu + DevicePointer(i) * DevicePointer(w.out) * 4;
      if (Status s = m.gemv(w, x, y, 1, {int(hidden), int(w.out), 0, 0}); !s.ok())
        return s;
    }
    return Status::success();
  }
};

// Whether the compiler set the op's flag `name` (kt-fuse-norm-quantize's).
bool marked(const plan::Op &op, const std::string &name) {
  auto it = op.params.find(name);
  const bool *value = it == op.params.end() ? nullptr : std::get_if<bool>(&it->second);
  return value && *value;
}

std::string placementText(const plan::Op &op) {
  return "prefill on " + op.prefillDevice + ", decode on " + op.decodeDevice;
}

} // namespace

// ---------------------------------------------------------------- expert cache

StatusOr<int> HybridExecutor::Impl::bindExpertCache(ExpertsStep &experts, cpu::OpBinder &b,
                                                    const cpu::OpBinder::ExpertTensors &tensors,
                                                    size_t opIndex,
                                                    const std::vector<Value *> &in) {
  // The input as the GPU had it before its transfer to the host, and the
  // result going to cuda:0: the cache adds its sum there.
  const plan::Op &op = plan->ops[opIndex];
  int gpuInput = -1;
  for (size_t i = 0; i < opIndex; ++i) {
    const plan::Op &transfer = plan->ops[i];
    if (transfer.kind == "transfer" && transfer.outputs.size() == 1 &&
        transfer.outputs[0] == op.inputs[0] && transfer.inputs.size() == 1) {
      const Value &source = values[size_t(transfer.inputs[0])];
      if (source.where == Where::Gpu && source.logicalGpu == 0)
        gpuInput = transfer.inputs[0];
    }
  }
  const plan::Buffer *result = nullptr;
  for (const plan::Buffer &buffer : plan->buffers)
    if (buffer.value == op.outputs[0])
      result = &buffer;
  if (gpuInput < 0 || !result || result->decodeDevice != "cuda:0")
    return -1;

  auto cache = std::make_unique<CachedExperts>();
  cache->hidden = in[0]->width;
  cache->ffn = tensors.gate->ne[1];
  cache->topK = in[1]->width;
  cache->experts = in[1]->experts;
  cache->tensors[0] = tensors.gate;
  cache->tensors[1] = tensors.up;
  cache->tensors[2] = tensors.down;
  for (int i = 0; i < 3; ++i) {
    const gguf::TensorInfo &tensor = *cache->tensors[i];
    cache->bytesPerExpert += tensor.nbytes / uint64_t(cache->experts);
    GpuMatrix &w = cache->matrices[i];
    w.in = tensor.ne[0];
    w.out = tensor.ne[1];
    w.heads = cache->topK; // the launches' grid z runs over the chosen slots
    w.type = tensor.type;
    w.blocks = gemvGridBlocks(tensor.type, w.out, w.in);
    w.tiledBlocks = gemvGridBlocks(tensor.type, w.out, w.in, kGemvPrefillTokenTile);
    StatusOr<const Kernel *> k = kernel(gemvSpec(tensor.type, w.out, w.in, 1), b.where()),
                             tiled = kernel(
                                 gemvSpec(tensor.type, w.out, w.in, kGemvPrefillTokenTile,
                                          GemvVariant::Grouped),
                                 b.where());
    for (const StatusOr<const Kernel *> *found : {&k, &tiled})
      if (!*found)
        return Status::error(
            b.where() + ": the GPU expert cache cannot multiply its experts: " + found->message());
    w.kernel = *k;
    w.tiled = *tiled;
  }
  StatusOr<const Kernel *> silu = kernel(elementwiseSpec("silu_mul", cache->ffn), b.where()),
                           combine = kernel(moeCombineSpec(cache->hidden, cache->topK), b.where()),
                           add = kernel(elementwiseSpec("add", cache->hidden), b.where());
  for (const StatusOr<const Kernel *> *k : {&silu, &combine, &add})
    if (!*k)
      return k->status();
  cache->siluMul = *silu;
  cache->combine = *combine;
  cache->add = *add;
  if (cache->matrices[0].type == cache->matrices[1].type) {
    StatusOr<const Kernel *> gateUp = kernel(
        gemvSpec(cache->matrices[0].type, cache->ffn, cache->hidden, 1, GemvVariant::GateUp),
        b.where());
    if (!gateUp)
      return gateUp.status();
    cache->gateUp = *gateUp;
  }
  cache->slotOf.assign(size_t(cache->experts), -1);
  cache->streamSlotOf.assign(size_t(cache->experts), -1);
  const size_t choices = size_t(std::max<int64_t>(chunkSize, 1) * cache->topK);
  std::vector<void **> hostArrays = {reinterpret_cast<void **>(&cache->slotsHost),
                                     reinterpret_cast<void **>(&cache->weightsHost)};
  std::vector<DevicePointer *> gpuArrays = {&cache->slots, &cache->weights};
  if (streamedGateUps > 0 || autoStreaming) {
    hostArrays.push_back(reinterpret_cast<void **>(&cache->gateUpSlotsHost));
    gpuArrays.push_back(&cache->gateUpSlots);
    cache->gateUpPlaceOf.assign(size_t(cache->experts), -1);
    // A decode step's gated rows: one token per sequence.
    StatusOr<void *> rows = device->allocateHost(
        size_t(std::max<size_t>(caches.size(), 1) * size_t(cache->topK * cache->ffn)) * 4);
    if (!rows)
      return rows.status();
    hostAllocations.push_back(*rows);
    cache->gatedRowsHost = static_cast<float *>(*rows);
  }
  for (void **host : hostArrays) {
    StatusOr<void *> p = device->allocateHost(choices * 4);
    if (!p)
      return p.status();
    hostAllocations.push_back(*p);
    *host = *p;
  }
  for (DevicePointer *gpu : gpuArrays) {
    StatusOr<DevicePointer> p = allocate(choices * 4, false);
    if (!p)
      return p.status();
    *gpu = *p;
  }
  // Decode's streamed slots also hold the tables of its two passes
  // (CachedExperts::queue): three tables of a step's choices.
  if (streamedExperts > 0 || autoStreaming) {
    const size_t tables =
        3 * std::max(choices, std::max<size_t>(caches.size(), 1) * size_t(cache->topK));
    StatusOr<void *> host = device->allocateHost(tables * 4);
    if (!host)
      return host.status();
    hostAllocations.push_back(*host);
    cache->streamSlotsHost = static_cast<int32_t *>(*host);
    StatusOr<DevicePointer> gpu = allocate(tables * 4, false);
    if (!gpu)
      return gpu.status();
    cache->streamSlots = *gpu;
  }
  if (Status s = cache->groups.allocate(*this, int64_t(choices)); !s.ok())
    return s;
  if (streamedExperts > 0 || autoStreaming)
    if (Status s = cache->streamGroups.allocate(*this, int64_t(choices)); !s.ok())
      return s;
  experts.cache = std::move(cache);
  return gpuInput;
}

Status HybridExecutor::Impl::fillExpertCache(const std::vector<exec::RoutingStats> &counts) {
  const auto started = Clock::now();
  expertCacheFilled = true;
  std::vector<ExpertsStep *> layers;
  for (BoundStep &bound : steps)
    if (auto *experts = dynamic_cast<ExpertsStep *>(bound.step.get()); experts && experts->cache)
      layers.push_back(experts);
  // (count, layer, expert), most chosen first.
  struct Candidate {
    uint64_t count;
    size_t layer;
    int64_t expert;
  };
  std::vector<Candidate> candidates;
  size_t matched = 0;
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    const std::string &path = layers[layer]->stats().path;
    const exec::RoutingStats *found = nullptr;
    for (const exec::RoutingStats &stats : counts)
      if (stats.path == path)
        found = &stats;
    matched += found != nullptr;
    const int64_t experts = layers[layer]->cache->experts;
    if (found && int64_t(found->selections.size()) != experts)
      return Status::error("The expert profile has " + std::to_string(found->selections.size()) +
                           " experts for " + path + ", but the model has " +
                           std::to_string(experts) +
                           "; use a profile saved with this model (--save-expert-profile).");
    for (int64_t e = 0; e < experts; ++e)
      candidates.push_back({found ? found->selections[size_t(e)] : 0, layer, e});
  }
  if (matched == 0 && !layers.empty())
    return Status::error("The expert profile counts none of the MoE layers whose experts the GPU "
                         "cache can hold (" +
                         layers.front()->stats().path +
                         ", ...); use a profile saved with this model (--save-expert-profile).");
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate &a, const Candidate &b) { return a.count > b.count; });
  // What is left of cuda:0's budget bounds the cache too (the runtime's
  // buffers may differ from the compiler's estimate).
  if (Status s = use(0); !s.ok())
    return s;
  uint64_t budget = expertCacheBudget;
  if (firstGpuBudget)
    budget = std::min(budget, *firstGpuBudget > logicalBytes[0] ? *firstGpuBudget - logicalBytes[0]
                                                                : uint64_t(0));
  std::vector<std::vector<int64_t>> chosen(layers.size());
  uint64_t used = 0;
  for (const Candidate &c : candidates) {
    const uint64_t bytes = layers[c.layer]->cache->bytesPerExpert;
    if (used + bytes > budget)
      continue;
    used += bytes;
    chosen[c.layer].push_back(c.expert);
  }
  for (size_t layer = 0; layer < layers.size(); ++layer) {
    CachedExperts &cache = *layers[layer]->cache;
    std::vector<int64_t> &experts = chosen[layer];
    if (experts.empty())
      continue;
    std::sort(experts.begin(), experts.end());
    for (int i = 0; i < 3; ++i) {
      const gguf::TensorInfo &tensor = *cache.tensors[i];
      const size_t slice = size_t(tensor.nbytes / uint64_t(cache.experts));
      StatusOr<DevicePointer> stack = allocate(slice * experts.size(), true);
      if (!stack)
        return stack.status();
      for (size_t slot = 0; slot < experts.size(); ++slot)
        if (Status s = device->copyToDevice(
                *stack + slot * slice,
                static_cast<const uint8_t *>(tensor.data) + size_t(experts[slot]) * slice, slice);
            !s.ok())
          return s;
      cache.matrices[i].data = *stack;
    }
    for (size_t slot = 0; slot < experts.size(); ++slot)
      cache.slotOf[size_t(experts[slot])] = int32_t(slot);
    cache.cached = int64_t(experts.size());
    expertCache.experts += cache.cached;
  }
  expertCache.filled = true;
  expertCache.bytes = used;
  expertCache.fillSeconds = secondsSince(started);
  return Status::success();
}

Status HybridExecutor::Impl::fillExpertCacheAfterPrefill() {
  if (expertCacheBudget == 0 || expertCacheFilled)
    return Status::success();
  std::vector<exec::RoutingStats> counts;
  for (const BoundStep &bound : steps)
    if (auto *experts = dynamic_cast<const ExpertsStep *>(bound.step.get());
        experts && experts->cache)
      counts.push_back(experts->stats());
  return fillExpertCache(counts);
}

Status HybridExecutor::Impl::setUpExpertStreaming(uint64_t reserved, int64_t askedCache,
                                                  bool progress) {
  std::vector<CachedExperts *> layers;
  for (BoundStep &bound : steps)
    if (auto *experts = dynamic_cast<ExpertsStep *>(bound.step.get()); experts && experts->cache)
      layers.push_back(experts->cache.get());
  // Auto streams none where it cannot (and says why); numbers asked for
  // that cannot be met are errors.
  auto streamNone = [&](const std::string &why) {
    streamedExperts = streamedGateUps = 0;
    expertCache.autoStreamingRan = true;
    expertCache.streamingNone = why;
    if (progress)
      std::fprintf(stderr, "[--stream-experts auto: none; %s]\n", why.c_str());
    return Status::success();
  };
  const std::string asked = autoStreaming ? std::string("--stream-experts auto")
                                          : "--stream-experts " + std::to_string(streamedExperts);
  if (layers.empty()) {
    const std::string why = planName + " has no CPU-placed routed experts whose result goes to "
                                       "cuda:0, so there is nothing to stream";
    return autoStreaming ? streamNone(why) : Status::error(asked + ": " + why + "; leave it out.");
  }
  size_t slices[3] = {};
  for (const CachedExperts *layer : layers)
    for (int i = 0; i < 3; ++i)
      slices[i] = std::max(slices[i], layer->sliceBytes(i));
  // Gate and up have slots for the gate/up-only experts too.
  auto stagingFor = [&](int64_t whole, int64_t gateUps) {
    return uint64_t(whole + gateUps) * (slices[0] + slices[1]) + uint64_t(whole) * slices[2];
  };
  const uint64_t room =
      askedCache < 0 ? reserved : reserved - std::min(reserved, uint64_t(askedCache));
  const uint64_t expertBytes = slices[0] + slices[1] + slices[2];
  if (autoStreaming) {
    if (room < expertBytes)
      return streamNone(formatByteSize(room) + " of " + planName +
                        "'s GPU expert cache reservation left beside the cache, less than "
                        "one expert's " +
                        formatByteSize(expertBytes));
  } else {
    // Moving whole experts takes a slot for one more.
    const uint64_t staging =
        stagingFor(streamedExperts + (decodeShare.moveExperts ? 1 : 0), streamedGateUps);
    const std::string forWhat =
        decodeShare.moveExperts ? asked + " with whole experts moving" : asked;
    if (staging > reserved)
      return Status::error(forWhat + " needs " + formatByteSize(staging) +
                           " of cuda:0 for the streamed experts' weights, taken from the GPU "
                           "expert cache's reservation, but " +
                           planName + " reserves " + formatByteSize(reserved) +
                           "; recompile it with ktc compile --gpu-expert-cache " +
                           std::to_string(staging) +
                           " (or more: the rest caches experts), or stream fewer.");
    if (askedCache >= 0 && uint64_t(askedCache) + staging > reserved)
      return Status::error(forWhat + " needs " + formatByteSize(staging) + " of the " +
                           formatByteSize(reserved) + " " + planName +
                           " reserves for the GPU expert cache; ask for a cache of at most " +
                           formatByteSize(reserved - staging) + ".");
  }
  // The copies must not wait for the host: the experts' pages are locked,
  // whole pages, ranges that share one merged.
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
  for (const CachedExperts *layer : layers)
    for (const gguf::TensorInfo *tensor : layer->tensors) {
      const uintptr_t begin = reinterpret_cast<uintptr_t>(tensor->data);
      ranges.push_back({begin / page * page, (begin + tensor->nbytes + page - 1) / page * page});
    }
  std::sort(ranges.begin(), ranges.end());
  std::vector<std::pair<uintptr_t, uintptr_t>> merged;
  for (const auto &range : ranges)
    if (!merged.empty() && range.first <= merged.back().second)
      merged.back().second = std::max(merged.back().second, range.second);
    else
      merged.push_back(range);
  uint64_t total = 0;
  for (const auto &[begin, end] : merged)
    total += end - begin;
  // Locking most of the host's memory would starve everything else (and a
  // model larger than memory cannot be locked at all).
  const uint64_t hostMemory = uint64_t(sysconf(_SC_PHYS_PAGES)) * uint64_t(page);
  if (autoStreaming && total > hostMemory / 4 * 3)
    return streamNone("the routed experts (" + formatByteSize(total) +
                      ") are more than 3/4 of this host's memory (" + formatByteSize(hostMemory) +
                      ") and would all be page-locked");
  // Each layer's ranges, by index: the first layer's are locked now (auto
  // measures over them, and its steps stream at once), the others' in the
  // background (seconds for each GiB): a layer streams once its are.
  std::vector<std::vector<size_t>> layerRanges(layers.size());
  for (size_t i = 0; i < layers.size(); ++i)
    for (const gguf::TensorInfo *tensor : layers[i]->tensors) {
      const uintptr_t begin = reinterpret_cast<uintptr_t>(tensor->data) / page * page;
      const size_t range = size_t(
          std::upper_bound(merged.begin(), merged.end(), std::make_pair(begin, UINTPTR_MAX)) -
          merged.begin() - 1);
      if (std::find(layerRanges[i].begin(), layerRanges[i].end(), range) == layerRanges[i].end())
        layerRanges[i].push_back(range);
    }
  if (progress)
    std::fprintf(stderr,
                 "[page-locking %s of routed experts for %s: the first MoE layer's now, the "
                 "rest in the background]\n",
                 formatByteSize(total).c_str(), asked.c_str());
  // Locked for cuda:0, whose copies read them (the background thread keeps
  // this device while decode's use() moves `device` between GPUs).
  if (Status s = use(0); !s.ok())
    return s;
  CudaDevice *const firstGpu = device;
  pinStarted = Clock::now();
  expertCache.pinTargetBytes = total;
  std::vector<bool> locked(merged.size(), false);
  if (Status s = lockRanges(*firstGpu, merged, layerRanges[0], locked); !s.ok()) {
    if (!autoStreaming)
      return Status::error(asked +
                           " needs the routed experts' host memory page-locked, which "
                           "failed: " +
                           s.message() +
                           " Raise the locked-memory limit (ulimit -l) or leave it out.");
    unlockStreamedExperts();
    return streamNone("page-locking the routed experts failed: " + s.message());
  }
  layers[0]->pinned.store(true, std::memory_order_release);
  pinnedSeconds.store(secondsSince(pinStarted));
  expertCache.gateUpShare =
      double(slices[0] + slices[1]) / double(slices[0] + slices[1] + slices[2]);
  if (autoStreaming) {
    double host = 0, link = 0;
    if (Status s = measureStreamingBandwidths(*layers[0], host, link); !s.ok())
      return s;
    const int maxExperts = int(std::min<uint64_t>(64, room / expertBytes));
    const exec::StreamedExpertsChoice choice =
        exec::chooseStreamedExperts(int(layers[0]->topK), host, link, maxExperts);
    expertCache.autoStreamingRan = true;
    expertCache.chosenHostBandwidth = host;
    expertCache.chosenLinkBandwidth = link;
    expertCache.chosenShare = choice.share;
    char measured[160];
    std::snprintf(measured, sizeof measured,
                  "the link %.1f GB/s beside the CPU threads' %.1f GB/s: %.2f of %lld experts "
                  "a token",
                  link / 1e9, host / 1e9, choice.share, static_cast<long long>(layers[0]->topK));
    if (choice.experts == 0) {
      unlockStreamedExperts();
      return streamNone(std::string(measured) + ", under one expert's worth");
    }
    // Decode starts at the choice, its share balanced from all of the
    // gate/up rows down; whole experts move by feedback, into a slot for
    // one more where the room has it.
    streamedGateUps = choice.gateUps;
    decodeShare.moveExperts = true;
    streamedExperts =
        choice.experts + (stagingFor(choice.experts + 1, streamedGateUps) <= room ? 1 : 0);
    decodeShare.experts = choice.experts;
    decodeShare.gateUps = choice.gateUps;
    decodeShare.gateUpShare = double(streamedGateUps);
    if (progress)
      std::fprintf(stderr, "[--stream-experts auto: %s; streaming %lld + %lld gate/up-only]\n",
                   measured, static_cast<long long>(choice.experts),
                   static_cast<long long>(streamedGateUps));
  } else if (decodeShare.moveExperts) {
    ++streamedExperts; // the slot for one more
  }
  decodeShare.maxExperts = int(streamedExperts);
  const uint64_t staging = stagingFor(streamedExperts, streamedGateUps);
  expertCacheBudget = askedCache < 0 ? reserved - staging : uint64_t(askedCache);
  expertCache.enabled = expertCacheBudget > 0;
  if (Status s = use(0); !s.ok())
    return s;
  const size_t slotsOf[3] = {size_t(streamedExperts + streamedGateUps),
                             size_t(streamedExperts + streamedGateUps), size_t(streamedExperts)};
  for (int i = 0; i < 3; ++i) {
    StatusOr<DevicePointer> slots = allocate(slotsOf[i] * slices[i], false);
    if (!slots)
      return slots.status();
    streamStaging[i] = *slots;
  }
  for (CachedExperts *layer : layers)
    for (int i = 0; i < 3; ++i) {
      layer->staged[i] = layer->matrices[i];
      layer->staged[i].data = streamStaging[i];
    }
  expertCache.streamedPerToken = decodeShare.experts;
  expertCache.streamedSlots = streamedExperts;
  expertCache.gateUpsPerToken = streamedGateUps;
  // The other layers' ranges: a failure stops there (the layers after run
  // their experts on the CPU) and says so.
  pinThread = std::thread([this, firstGpu, layers, layerRanges, merged, locked]() mutable {
    Status current = firstGpu->makeCurrent();
    for (size_t i = 1; i < layers.size() && current.ok() && !stopPinning.load(); ++i) {
      current = lockRanges(*firstGpu, merged, layerRanges[i], locked);
      if (current.ok())
        layers[i]->pinned.store(true, std::memory_order_release);
    }
    pinnedSeconds.store(secondsSince(pinStarted));
    if (!current.ok()) {
      std::lock_guard<std::mutex> lock(pinMutex);
      pinningStopped = current.message();
      std::fprintf(stderr,
                   "warning: page-locking the routed experts for streaming stopped (%s); the "
                   "MoE layers not locked run their experts on the CPU.\n",
                   current.message().c_str());
    }
  });
  return Status::success();
}

Status HybridExecutor::Impl::lockRanges(CudaDevice &gpu,
                                        const std::vector<std::pair<uintptr_t, uintptr_t>> &merged,
                                        const std::vector<size_t> &ranges,
                                        std::vector<bool> &locked) {
  for (size_t range : ranges) {
    if (locked[range])
      continue;
    const auto [begin, end] = merged[range];
    const void *pointer = reinterpret_cast<const void *>(begin);
    if (Status s = gpu.registerHostReadOnly(pointer, size_t(end - begin)); !s.ok())
      return s;
    locked[range] = true;
    std::lock_guard<std::mutex> lock(pinMutex);
    registeredHost.push_back(pointer);
    pinnedBytes += end - begin;
  }
  return Status::success();
}

void HybridExecutor::Impl::joinPinning(bool stop) {
  if (stop)
    stopPinning.store(true);
  if (pinThread.joinable())
    pinThread.join();
}

void HybridExecutor::Impl::unlockStreamedExperts() {
  joinPinning(true);
  for (const void *pointer : registeredHost)
    (void)physical[0].device->unregisterHost(pointer);
  registeredHost.clear();
  pinnedBytes = 0;
}

Status HybridExecutor::Impl::measureStreamingBandwidths(const CachedExperts &first, double &host,
                                                        double &link) {
  if (Status s = use(0); !s.ok())
    return s;
  const size_t slice = first.sliceBytes(0);
  StatusOr<DevicePointer> scratch = device->allocate(slice);
  if (!scratch)
    return scratch.status();
  // Distinct experts' gate slices of the first layer (the one locked at
  // load), as decode copies them.
  int64_t next = 0;
  auto queueCopies = [&](int64_t count) {
    const auto *gate = static_cast<const uint8_t *>(first.tensors[0]->data);
    for (int64_t i = 0; i < count; ++i, ++next)
      if (Status s = device->copyToDeviceAsync(*scratch,
                                               gate + size_t(next % first.experts) * slice, slice);
          !s.ok())
        return s;
    return Status::success();
  };
  // The threads read the same layer: its pages are mapped in by the
  // locking, where reading a later layer's would first fault them in (the
  // reading fell to 42-78 GB/s from 105 that way).
  std::vector<exec::HostBytes> experts;
  for (const gguf::TensorInfo *tensor : first.tensors)
    experts.push_back({static_cast<const uint8_t *>(tensor->data), tensor->nbytes});
  Status status = queueCopies(2);
  if (status.ok())
    status = device->synchronize();
  // The link alone sizes the side-by-side rounds: copies for about 40 ms,
  // while the threads read 256 MiB twice (plain and prefetched) at ~100 GB/s.
  // The best of three: the host's other work only ever lowers a reading,
  // and a low one gives the GPU experts it then finishes late.
  const auto aloneStarted = Clock::now();
  if (status.ok())
    status = queueCopies(16);
  if (status.ok())
    status = device->synchronize();
  const double alone = 16.0 * double(slice) / secondsSince(aloneStarted);
  const int64_t copies = std::clamp<int64_t>(int64_t(0.04 * alone / double(slice)), 16, 4096);
  host = link = 0;
  constexpr int kRounds = 3;
  for (int round = 0; round < kRounds && status.ok(); ++round) {
    const auto started = Clock::now();
    status = queueCopies(copies);
    uint64_t sampled = 0;
    double read = 0;
    if (status.ok())
      read = cpu::measureReadBandwidth(pool, experts, uint64_t{256} << 20, 1, sampled);
    // Experts too few to sample (small models): a buffer as large instead.
    if (status.ok() && sampled == 0)
      read = cpu::measureReadBandwidth(pool, size_t{256} << 20, 1);
    if (status.ok())
      status = device->synchronize();
    host = std::max(host, read);
    link = std::max(link, double(copies) * double(slice) / secondsSince(started));
  }
  (void)device->free(*scratch);
  return status;
}

// ---------------------------------------------------------------- binding

Status HybridExecutor::Impl::bind(const gguf::GgufModel &model) {
  int maxValue = plan->outputValue;
  for (const plan::Op &op : plan->ops)
    for (const std::vector<int> *ids : {&op.inputs, &op.outputs})
      for (int id : *ids)
        maxValue = std::max(maxValue, id);
  if (maxValue < 0)
    return Status::error(planName + " has no ops; recompile it with ktc compile.");
  values.assign(size_t(maxValue + 1), Value{});
  values[0] = {Where::Host, Kind::Tokens, 1, 0, true};
  // Where each value lives, from the plan's buffers.
  std::vector<std::optional<Where>> bufferWhere(values.size());
  std::vector<int> bufferGpu(values.size(), 0);
  for (const plan::Buffer &buffer : plan->buffers) {
    if (buffer.value < 0 || buffer.value > maxValue)
      continue;
    if (buffer.prefillDevice != buffer.decodeDevice)
      return Status::error("Value " + std::to_string(buffer.value) + " of " + planName +
                           " lives on " + buffer.prefillDevice + " in prefill but on " +
                           buffer.decodeDevice +
                           " in decode; the GPU executor runs plans whose placement is the "
                           "same in both phases. Give prefill_device and generate_device the "
                           "same value in the rule file.");
    const std::string &device = buffer.decodeDevice;
    if (const int gpu = gpuIndex(device); gpu >= 0 && gpu < logicalGpus) {
      bufferWhere[size_t(buffer.value)] = Where::Gpu;
      bufferGpu[size_t(buffer.value)] = gpu;
    } else if (device == "cpu" || device == "host") {
      bufferWhere[size_t(buffer.value)] = Where::Host;
    } else {
      return Status::error(planName + " places value " + std::to_string(buffer.value) + " on " +
                           device + ", which this executor does not run; recompile the plan.");
    }
  }

  for (size_t index = 0; index < plan->ops.size(); ++index) {
    const plan::Op &op = plan->ops[index];
    cpu::OpBinder b(op, index, model, planName, conversions.get());

    MatrixLoader loader(*this, b, op);
    const int opGpu = gpuIndex(op.decodeDevice);
    const bool gpuOp = opGpu >= 0 && opGpu < logicalGpus;
    if (Status s = use(gpuOp ? opGpu : 0); !s.ok())
      return s;
    if (op.prefillDevice != op.decodeDevice)
      return Status::error(b.where() + " runs " + placementText(op) +
                           "; the GPU executor runs ops whose prefill and decode devices are "
                           "equal. Give prefill_device and generate_device the same value in "
                           "the rule file.");
    if (!gpuOp && op.decodeDevice != "cpu")
      return Status::error(b.where() + " runs on " + op.decodeDevice +
                           ", which this executor does not run; recompile the plan.");
    std::vector<Value *> in;
    auto defined = [&](int id) { return values[size_t(id)].defined; };
    if (Status flow = b.checkDataflow(maxValue, defined); !flow.ok())
      return flow;
    for (int id : op.inputs)
      in.push_back(&values[size_t(id)]);
    // Operands must be where the op runs (kt-insert-transfers put them there).
    auto expectWhere = [&](Where where) {
      for (size_t i = 0; i < in.size(); ++i)
        b.require(in[i]->where == where,
                  "reads value " + std::to_string(op.inputs[i]) + " on the " +
                      (in[i]->where == Where::Gpu ? "GPU" : "host") +
                      " but runs on the other side, with no transfer between; the plan is "
                      "damaged: recompile it.");
    };
    auto unsupportedOnCpu = [&]() {
      return Status::error(b.where() +
                           " runs on the CPU in a plan that also uses the GPU; the "
                           "GPU executor runs embeddings and routed experts on the CPU, and "
                           "everything else on cuda:0 so far. Place this module on cuda:0 in "
                           "the rule file, or run an all-CPU plan (rules/DeepSeek-V3-Chat-cpu-"
                           "only.yaml).");
    };

    // Whether the plan marks the op's producer of GPU GEMM inputs `flag`
    // (kt-fuse-norm-quantize) and the executor fuses the quantization in.
    auto fuses = [&](const char *flag) {
      return fusedNormQuantization && fp8Gemm && marked(op, flag);
    };
    std::unique_ptr<Step> step;
    std::vector<Value> produced;
    std::vector<int> stepInputs = op.inputs; // and values a step reads besides the op's
    const std::string &kind = op.kind;
    const Where here = gpuOp ? Where::Gpu : Where::Host;
    if (kind == "embedding") {
      if (!b.operands(1, 1))
        return b.status();
      b.require(in[0]->kind == Kind::Tokens, "must read the token ids (value 0).");
      const gguf::TensorInfo *table = b.tensor("weight", 2);
      if (table) {
        embeddingRows = table->ne[1];
        if (gpuOp) {
          const Kernel *k = loader.kernel(embeddingSpec(table->ne[0], table->ne[1], table->type));
          StatusOr<DevicePointer> data = upload(table->data, table->nbytes);
          if (!data)
            return data.status();
          step = std::make_unique<GpuEmbeddingStep>(*data, k);
        } else {
          step = std::make_unique<CpuEmbeddingStep>(cpu::weightMatrix(*table));
        }
        produced.push_back({here, Kind::Floats, table->ne[0], 0, true});
      }
    } else if (kind == "transfer") {
      if (!b.operands(1, 1))
        return b.status();
      step = std::make_unique<TransferStep>();
      Value v = *in[0];
      v.slot = -1;
      produced.push_back(v);
    } else if (kind == "routed_experts") {
      if (!b.operands(3, 1))
        return b.status();
      expectWhere(here);
      const int64_t hidden = in[0]->width;
      b.require(in[1]->kind == Kind::ExpertIds,
                "expects the expert ids of a moe_gate as input 1; the plan is damaged: "
                "recompile it.");
      // FP8 experts on an sm_90a GPU stay FP8; elsewhere the binder
      // converts them to q8_0 for the q8_0 kernels the plan lists.
      const plan::Weight *fp8Gate = nullptr;
      for (const plan::Weight &weight : op.weights)
        if (weight.role == "gate_proj" && weight.type == "f8_e4m3" && arch == "sm_90a")
          fp8Gate = &weight;
      const cpu::OpBinder::ExpertTensors t =
          gpuOp && fp8Gate ? cpu::OpBinder::ExpertTensors{} : b.experts(hidden, in[1]->experts);
      if (!b.ok())
        return b.status();
      if (gpuOp) {
        auto experts = std::make_unique<GpuExpertsStep>();
        experts->hidden = hidden;
        experts->ffn = fp8Gate ? (fp8Gate->shape.size() == 3 ? fp8Gate->shape[1] : 0)
                               : t.gate->ne[1];
        experts->topK = in[1]->width;
        const int64_t count = in[1]->experts;
        experts->experts = count;
        if (fp8Gate) {
          // e4m3 stacks with the GEMV by id and the grouped GEMM.
          for (auto [role, matrix, cols, rows] :
               {std::tuple<const char *, GpuMatrix *, int64_t, int64_t>{
                    "gate_proj", &experts->gate, experts->hidden, experts->ffn},
                {"up_proj", &experts->up, experts->hidden, experts->ffn},
                {"down_proj", &experts->down, experts->ffn, experts->hidden}}) {
            const plan::Weight *weight = nullptr;
            for (const plan::Weight &w : op.weights)
              if (w.role == role)
                weight = &w;
            if (!weight || weight->type != "f8_e4m3") {
              b.fail("mixes FP8 and other routed-expert weights ('" + std::string(role) +
                     "'); recompile the plan.");
              return b.status();
            }
            *matrix =
                loader.loadFp8Experts(role, *weight, cols, rows, count, experts->topK);
          }
          if (!b.ok())
            return b.status();
          if (Status s = experts->allocateRowGroups(*this, chunkSize); !s.ok())
            return s;
        } else {
          experts->gate = loader.load("gate_proj", experts->hidden, experts->ffn, count, true);
          experts->up = loader.load("up_proj", experts->hidden, experts->ffn, count, true);
          experts->down = loader.load("down_proj", experts->ffn, experts->hidden, count, true);
          if (Status s = experts->groups.allocate(*this, chunkSize * experts->topK); !s.ok())
            return s;
          if (experts->mmaPrefill())
            if (Status s = experts->allocateRowGroups(*this, chunkSize); !s.ok())
              return s;
          // The launches' grid z runs over the top_k chosen slots, not the experts.
          for (GpuMatrix *w : {&experts->gate, &experts->up, &experts->down})
            w->heads = experts->topK;
          if (experts->gate.type == experts->up.type)
            experts->gateUp = loader.kernel(gemvSpec(experts->gate.type, experts->ffn,
                                                     experts->hidden, 1, GemvVariant::GateUp));
        }
        experts->siluMul = loader.kernel(elementwiseSpec("silu_mul", experts->ffn));
        experts->combine = loader.kernel(moeCombineSpec(experts->hidden, experts->topK));
        experts->countSelections =
            loader.kernel(moeCombineSpec(experts->hidden, experts->topK, "expert_counts"));
        experts->experts = count;
        const std::vector<uint64_t> zeros(size_t(count), 0);
        StatusOr<DevicePointer> selections = allocate(zeros.size() * 8, false); // not a weight
        if (!selections)
          return selections.status();
        if (Status s = device->copyToDevice(*selections, zeros.data(), zeros.size() * 8); !s.ok())
          return s;
        experts->selections = *selections;
        experts->gatePath = cpu::gatePathOf(op.path);
        produced.push_back({here, Kind::Floats, experts->hidden, 0, true});
        step = std::move(experts);
      } else {
        cpu::RoutedExperts routed(*t.gate, *t.up, *t.down, generated.get());
        routed.setGemmTokens(expertGemmTokens);
        routed.setTileTokens(expertTileTokens);
        if (expertTileTokens > 0 && routed.hasTileKernels())
          ++tileExpertLayers;
        if (routed.usesGeneratedKernels())
          ++generatedExpertLayers;
        if (Status placed = cpu::placeExperts(routed, pool, numaPlacement, hugePageExperts);
            !placed.ok())
          return placed;
        StatusOr<void *> staging =
            device->allocateHost(size_t(std::max(chunkSize, int64_t(1)) * hidden) * 4);
        if (!staging)
          return staging.status();
        hostAllocations.push_back(*staging);
        auto experts =
            std::make_unique<ExpertsStep>(std::move(routed), cpu::gatePathOf(op.path), *staging);
        if (expertCacheBudget > 0 || streamedExperts > 0 || autoStreaming) {
          StatusOr<int> gpuInput = bindExpertCache(*experts, b, t, index, in);
          if (!gpuInput)
            return gpuInput.status();
          if (*gpuInput >= 0)
            stepInputs.push_back(*gpuInput); // keeps it alive until the step
        }
        step = std::move(experts);
        produced.push_back({Where::Host, Kind::Floats, hidden, 0, true});
      }
    } else if (!gpuOp) {
      return unsupportedOnCpu();
    } else if (kind == "rms_norm") {
      if (!b.operands(1, 1))
        return b.status();
      expectWhere(Where::Gpu);
      const int64_t width = in[0]->width;
      DevicePointer weight = loader.vector("weight", width);
      const float eps = float(b.real("eps"));
      const Kernel *k = loader.kernel(rmsNormSpec(width, eps));
      const Kernel *fused =
          fuses("quantize_fp8") ? loader.kernel(rmsNormFp8Spec(width, eps)) : nullptr;
      step = std::make_unique<RmsNormStep>(weight, k, fused, width);
      produced.push_back({here, Kind::Floats, width, 0, true});
    } else if (kind == "add_rms_norm") {
      if (!b.operands(op.inputs.size() == 3 ? 3 : 2, 2))
        return b.status();
      expectWhere(Where::Gpu);
      const int64_t width = in[0]->width;
      for (const Value *addend : in)
        b.require(addend->width == width, "adds values of different widths; the plan is "
                                          "damaged: recompile it.");
      DevicePointer weight = loader.vector("weight", width);
      const float eps = float(b.real("eps"));
      const Kernel *fused = fusedResidualNorms
                                ? loader.kernel(addRmsNormSpec(width, eps, int(op.inputs.size())))
                                : nullptr;
      const Kernel *normFp8 =
          fuses("quantize_fp8") ? loader.kernel(rmsNormFp8Spec(width, eps)) : nullptr;
      // The adds and the plain norm where the step may run them.
      const bool separate = !fused || normFp8;
      step = std::make_unique<AddRmsNormStep>(
          weight, fused, separate ? loader.kernel(elementwiseSpec("add", width)) : nullptr,
          separate ? loader.kernel(rmsNormSpec(width, eps)) : nullptr, normFp8, width);
      produced.push_back({here, Kind::Floats, width, 0, true});
      produced.push_back({here, Kind::Floats, width, 0, true});
    } else if (kind == "add") {
      if (!b.operands(2, 1))
        return b.status();
      expectWhere(Where::Gpu);
      const int64_t width = in[0]->width;
      b.require(in[1]->width == width, "adds values of different widths; the plan is damaged: "
                                       "recompile it.");
      step = std::make_unique<AddStep>(loader.kernel(elementwiseSpec("add", width)), width);
      produced.push_back({here, Kind::Floats, width, 0, true});
    } else if (kind == "mla_attention") {
      if (!b.operands(1, 1))
        return b.status();
      expectWhere(Where::Gpu);
      auto attention = std::make_unique<AttentionStep>();
      cpu::MlaShape &s = attention->s;
      cpu::RopeConfig rope;
      b.attention(in[0]->width, s, rope);
      if (!b.ok())
        return b.status();
      const float eps = s.eps;
      if (s.qLoraRank > 0) {
        attention->qA = loader.load("q_a_proj", s.hidden, s.qLoraRank);
        attention->qANorm = loader.vector("q_a_norm", s.qLoraRank);
        attention->qNorm = loader.kernel(rmsNormSpec(s.qLoraRank, eps));
        if (fuses("quantize_fp8_q_norm"))
          attention->qNormFp8 = loader.kernel(rmsNormFp8Spec(s.qLoraRank, eps));
        attention->qB = loader.load("q_b_proj", s.qLoraRank, s.heads * attention->qk());
      } else {
        attention->q = loader.load("q_proj", s.hidden, s.heads * attention->qk());
      }
      attention->kvA = loader.load("kv_a_proj_with_mqa", s.hidden, s.kvLoraRank + s.rope);
      attention->kvANorm = loader.vector("kv_a_norm", s.kvLoraRank);
      if (b.tensor("k_b_proj", 3, false) && b.tensor("v_b_proj", 3, false)) {
        attention->kB = loader.load("k_b_proj", s.nope, s.kvLoraRank, s.heads);
        attention->vB = loader.load("v_b_proj", s.kvLoraRank, s.v, s.heads);
      } else if (const gguf::TensorInfo *kvB = b.tensor("kv_b_proj", 2, false)) {
        // Only the joint up-projection (older conversions): split it per head
        // into f32 k_b (transposed) and v_b, as the absorbed path multiplies them.
        b.checkShape("kv_b_proj", *kvB, {s.kvLoraRank, s.heads * (s.nope + s.v)});
        if (!b.ok())
          return b.status();
        std::vector<float> joint(size_t(kvB->elements()));
        if (Status d = quant::dequantize(kvB->type, kvB->data, joint.data(), kvB->elements());
            !d.ok())
          return Status::error(b.where() + " cannot decode kv_b_proj: " + d.message());
        std::vector<float> kB(size_t(s.heads * s.kvLoraRank * s.nope)),
            vB(size_t(s.heads * s.v * s.kvLoraRank));
        for (int64_t h = 0; h < s.heads; ++h) {
          const float *head = joint.data() + h * (s.nope + s.v) * s.kvLoraRank;
          for (int64_t n = 0; n < s.nope; ++n)
            for (int64_t c = 0; c < s.kvLoraRank; ++c)
              kB[size_t((h * s.kvLoraRank + c) * s.nope + n)] = head[n * s.kvLoraRank + c];
          std::copy(head + s.nope * s.kvLoraRank, head + (s.nope + s.v) * s.kvLoraRank,
                    vB.begin() + h * s.v * s.kvLoraRank);
        }
        attention->kB =
            loader.fromFloats("k_b (from kv_b_proj)", kB, s.kvLoraRank, s.nope, s.heads);
        attention->vB = loader.fromFloats("v_b (from kv_b_proj)", vB, s.v, s.kvLoraRank, s.heads);
      } else {
        b.fail("has neither kv_b_proj nor both k_b_proj and v_b_proj; the model must carry "
               "the up-projection of the compressed KV in one of these forms.");
      }
      if (!b.ok())
        return b.status();
      attention->o = loader.load("o_proj", s.heads * s.v, s.hidden);
      const float cosSin = static_cast<float>(cpu::ropeCosSinScale(rope));
      attention->ropeQ =
          loader.kernel(ropeSpec({s.rope, s.heads, attention->qk(), s.nope, cosSin}));
      attention->append = loader.kernel(mlaCacheAppendSpec(s.kvLoraRank, s.rope, eps, cosSin));
      const float scale = static_cast<float>(cpu::attentionSoftmaxScale(attention->qk(), rope));
      attention->core = loader.kernel(mlaPrefillSpec(s.kvLoraRank, s.rope, scale, s.heads));
      attention->headsPerBlock = mlaHeadsPerBlock(s.heads);
      // The tensor-core cores where the plan lists them (sm_80+), with the
      // shared memory they ask for; their 16-byte query loads need nope and
      // qk in multiples of 4.
      auto loadMma = [&](StatusOr<KernelSpec> spec, unsigned shared, const Kernel *&kernel,
                         unsigned &kernelShared) -> Status {
        if (!mlaTensorCores || !spec || !listsKernel(*spec) || s.nope % 4 != 0 ||
            attention->qk() % 4 != 0)
          return Status::success();
        kernel = loader.kernel(spec);
        kernelShared = shared;
        return kernel ? device->allowSharedBytes(kernel->loaded, shared) : Status::success();
      };
      if (Status st = loadMma(mlaPrefillMmaSpec(s.kvLoraRank, s.rope, scale, s.heads),
                              mlaPrefillMmaSharedBytes(s.kvLoraRank, s.rope), attention->coreMma,
                              attention->coreMmaShared);
          !st.ok())
        return st;
      if (Status st = loadMma(mlaDecodeMmaSpec(s.kvLoraRank, s.rope, scale, s.heads),
                              mlaDecodeMmaSharedBytes(s.kvLoraRank, s.rope), attention->decodeMma,
                              attention->decodeMmaShared);
          !st.ok())
        return st;
      attention->splitCore = loader.kernel(
          mlaDecodeSplitSpec(s.kvLoraRank, s.rope, scale, s.heads, "mla_decode_split"));
      attention->combine =
          loader.kernel(mlaDecodeSplitSpec(s.kvLoraRank, s.rope, scale, s.heads, "mla_combine"));
      std::vector<float> frequencies = cpu::ropeInverseFrequencies(rope);
      if (!b.ok())
        return b.status();
      StatusOr<DevicePointer> f = upload(frequencies.data(), frequencies.size() * 4);
      if (!f)
        return f.status();
      attention->inverseFrequencies = *f;
      attention->layer = cacheShapes.size();
      cacheShapes.push_back({s.kvLoraRank, s.rope, opGpu});
      produced.push_back({here, Kind::Floats, s.hidden, 0, true});
      step = std::move(attention);
    } else if (kind == "mlp" || kind == "shared_experts") {
      if (!b.operands(1, 1))
        return b.status();
      expectWhere(Where::Gpu);
      auto ffn = std::make_unique<FeedForwardStep>();
      ffn->hidden = in[0]->width;
      ffn->ffn = loader.rows("gate_proj");
      ffn->gate = loader.load("gate_proj", ffn->hidden, ffn->ffn);
      ffn->up = loader.load("up_proj", ffn->hidden, ffn->ffn);
      ffn->down = loader.load("down_proj", ffn->ffn, ffn->hidden);
      ffn->siluMul = loader.kernel(elementwiseSpec("silu_mul", ffn->ffn));
      if (fuses("quantize_fp8_act"))
        ffn->siluMulFp8 = loader.kernel(elementwiseSpec("silu_mul_fp8", ffn->ffn));
      produced.push_back({here, Kind::Floats, ffn->hidden, 0, true});
      step = std::move(ffn);
    } else if (kind == "moe_gate") {
      if (!b.operands(1, 2))
        return b.status();
      expectWhere(Where::Gpu);
      auto gate = std::make_unique<GateStep>();
      gate->hidden = in[0]->width;
      const cpu::RoutingParams routing = b.routing();
      if (!b.ok())
        return b.status();
      MoeGateShape shape;
      shape.experts = routing.experts;
      shape.topK = routing.topK;
      shape.groups = routing.groups;
      shape.groupsUsed = routing.groupsUsed;
      shape.sigmoid = routing.scoring == cpu::GateScoring::Sigmoid;
      shape.normalize = routing.normalize;
      shape.scale = routing.scale;
      gate->experts = shape.experts;
      gate->router = loader.load("weight", gate->hidden, shape.experts);
      gate->bias = loader.vector("e_score_correction_bias", shape.experts, false);
      shape.hasBias = gate->bias != 0;
      gate->choose = loader.kernel(moeGateSpec(shape));
      produced.push_back({here, Kind::ExpertIds, shape.topK, shape.experts, true});
      produced.push_back({here, Kind::Floats, shape.topK, 0, true});
      step = std::move(gate);
    } else if (kind == "lm_head") {
      if (!b.operands(1, 1))
        return b.status();
      expectWhere(Where::Gpu);
      auto head = std::make_unique<LmHeadStep>();
      head->hidden = in[0]->width;
      const gguf::TensorInfo *weight = b.tensor("weight", 2);
      if (weight) {
        head->w = loader.load("weight", head->hidden, weight->ne[1]);
        // Greedy decoding's argmax, where the plan lists it (ktc adds it).
        const StatusOr<KernelSpec> greedy = argmaxSpec(weight->ne[1]);
        if (greedy && listsKernel(*greedy))
          argmax = loader.kernel(greedy);
        // Sampling at a temperature, likewise.
        const StatusOr<KernelSpec> sampling = sampleSpec(weight->ne[1]);
        if (sampling && listsKernel(*sampling)) {
          sampler = loader.kernel(sampling);
          StatusOr<DevicePointer> params =
              allocate(size_t(sequences.count()) * kSampleParamsBytes, false);
          if (!params)
            return params.status();
          sampleParams = *params;
        }
        if (argmax || sampler) {
          StatusOr<DevicePointer> ids = allocate(size_t(sequences.count()) * 4, false);
          if (!ids)
            return ids.status();
          argmaxIds = *ids;
        }
      }
      produced.push_back({here, Kind::Floats, head->w.out, 0, true});
      step = std::move(head);
    } else {
      return Status::error(b.where() + " has the unknown kind '" + kind +
                           "'; this runtime does not know it: use a ktc of the same version "
                           "as this runtime to compile the plan.");
    }
    if (!b.ok())
      return b.status();
    for (size_t i = 0; i < op.outputs.size(); ++i) {
      Value &v = values[size_t(op.outputs[i])];
      v = produced[i];
      // Results live where the plan's buffers say (a transfer's output is
      // on the other side; routed experts write to their out device).
      if (const auto &where = bufferWhere[size_t(op.outputs[i])])
        v.where = *where;
      v.logicalGpu = bufferGpu[size_t(op.outputs[i])];
    }
    int64_t region = -1;
    if (auto it = op.params.find("graph_region"); it != op.params.end())
      if (const int64_t *r = std::get_if<int64_t>(&it->second))
        region = *r;
    // A host step runs with the GPU it copies to (or from) current.
    int stepGpu = gpuOp ? opGpu : 0;
    if (!gpuOp) {
      for (const Value *v : in)
        if (v->where == Where::Gpu)
          stepGpu = v->logicalGpu;
      for (int id : op.outputs)
        if (values[size_t(id)].where == Where::Gpu)
          stepGpu = values[size_t(id)].logicalGpu;
    }
    steps.push_back({std::move(step), stepInputs, op.outputs, region, stepGpu, index, op.kind});
  }

  if (plan->outputValue <= 0 || !values[size_t(plan->outputValue)].defined ||
      values[size_t(plan->outputValue)].kind != Kind::Floats)
    return Status::error(planName + " has no logits output (output_value " +
                         std::to_string(plan->outputValue) +
                         "); the plan is damaged: recompile it.");
  if (steps.empty() || embeddingRows == 0)
    return Status::error(planName + " has no embedding op; recompile it with ktc compile.");
  outputValue = plan->outputValue;
  vocab = values[size_t(outputValue)].width;
  return planBuffers();
}

Status HybridExecutor::Impl::planBuffers() {
  // GPU work that does not need a host step's result is queued before it:
  // the shared expert runs on the GPU while the CPU computes the routed ones.
  // A copy to the host waits for all GPU work queued before it, so only
  // what such copies read (the gate's choices) goes before one: the shared
  // expert is queued after the copies, and the routed experts start as
  // soon as their inputs arrive.
  auto copiesToHost = [&](size_t s) { return copiesGpuToHost(steps[s]); };
  // Whether a copy to the host after step j, before the next other host
  // step, reads what j writes.
  auto copiedToHost = [&](size_t j) {
    for (size_t k = j + 1; k < steps.size(); ++k) {
      if (!steps[k].step->runsOnHost())
        continue;
      if (!copiesToHost(k))
        return false;
      if (std::find(steps[j].outputs.begin(), steps[j].outputs.end(), steps[k].inputs[0]) !=
          steps[j].outputs.end())
        return true;
    }
    return false;
  };
  for (size_t i = 0; i < steps.size(); ++i) {
    if (!steps[i].step->runsOnHost() || steps[i].step->movable())
      continue;
    const bool copy = copiesToHost(i);
    std::set<int> producedSince(steps[i].outputs.begin(), steps[i].outputs.end());
    for (size_t j = i + 1; j < steps.size(); ++j) {
      const bool independent = std::none_of(steps[j].inputs.begin(), steps[j].inputs.end(),
                                            [&](int id) { return producedSince.count(id) > 0; });
      if (independent && !steps[j].step->runsOnHost() && steps[j].step->movable() &&
          (!copy || copiedToHost(j))) {
        std::rotate(steps.begin() + long(i), steps.begin() + long(j), steps.begin() + long(j) + 1);
        ++i;
        continue;
      }
      producedSince.insert(steps[j].outputs.begin(), steps[j].outputs.end());
    }
  }

  // Buffers by liveness, on each side.
  const int64_t rows = chunkSize;
  std::vector<int> lastUse(values.size(), -1);
  for (size_t i = 0; i < steps.size(); ++i)
    for (int id : steps[i].inputs)
      lastUse[size_t(id)] = int(i);
  lastUse[size_t(outputValue)] = int(steps.size());
  // Each logical GPU has buffers of its own (its own memory budget).
  std::vector<SlotPlanner> gpuSlots(static_cast<size_t>(logicalGpus));
  SlotPlanner hostSlots;
  auto planner = [&](const Value &v) -> SlotPlanner & {
    return v.where == Where::Gpu ? gpuSlots[size_t(v.logicalGpu)] : hostSlots;
  };
  std::vector<size_t> scratchFloats(physical.size(), 0); // per physical GPU
  for (size_t i = 0; i < steps.size(); ++i) {
    size_t &scratchOfGpu = scratchFloats[size_t(physicalOf[size_t(steps[i].gpu)])];
    scratchOfGpu = std::max(scratchOfGpu, steps[i].step->scratchFloats(rows));
    for (int id : steps[i].outputs) {
      Value &v = values[size_t(id)];
      const size_t bytes = size_t(rows * v.width) * 4;
      v.slot = planner(v).acquire(bytes);
    }
    // Inputs read for the last time, and outputs nobody reads, free their buffers.
    std::set<int> done;
    for (int id : steps[i].inputs)
      if (id != 0 && lastUse[size_t(id)] == int(i))
        done.insert(id);
    for (int id : steps[i].outputs)
      if (lastUse[size_t(id)] < 0)
        done.insert(id);
    for (int id : done) {
      const Value &v = values[size_t(id)];
      planner(v).release(v.slot);
    }
  }
  std::vector<std::vector<DevicePointer>> gpuBuffers(static_cast<size_t>(logicalGpus));
  for (int gpu = 0; gpu < logicalGpus; ++gpu) {
    if (Status s = use(gpu); !s.ok())
      return s;
    for (size_t bytes : gpuSlots[size_t(gpu)].bytes) {
      StatusOr<DevicePointer> p = allocate(bytes, false);
      if (!p)
        return p.status();
      gpuBuffers[size_t(gpu)].push_back(*p);
    }
  }
  if (Status s = use(0); !s.ok())
    return s;
  std::vector<void *> hostBuffers;
  for (size_t bytes : hostSlots.bytes) {
    StatusOr<void *> p = device->allocateHost(std::max<size_t>(bytes, 256));
    if (!p)
      return p.status();
    hostAllocations.push_back(*p);
    hostBuffers.push_back(*p);
  }
  for (size_t id = 1; id < values.size(); ++id) {
    Value &v = values[id];
    if (v.slot < 0)
      continue;
    if (v.where == Where::Gpu)
      v.gpu = gpuBuffers[size_t(v.logicalGpu)][size_t(v.slot)];
    else
      v.host = hostBuffers[size_t(v.slot)];
  }
  std::vector<uint8_t>().swap(splitRowsStaging); // the weights are uploaded
  StatusOr<void *> positionsPinned = device->allocateHost(size_t(rows) * 4);
  if (!positionsPinned)
    return positionsPinned.status();
  hostAllocations.push_back(*positionsPinned);
  positionsHost = static_cast<int32_t *>(*positionsPinned);
  // Each physical GPU's step buffers, charged to the first logical GPU on it.
  for (size_t index = 0; index < physical.size(); ++index) {
    Gpu &gpu = physical[index];
    const int logical =
        int(std::find(physicalOf.begin(), physicalOf.end(), int(index)) - physicalOf.begin());
    if (Status s = use(logical); !s.ok())
      return s;
    for (auto [pointer, bytes] :
         {std::pair<DevicePointer *, size_t>{&gpu.scratch, scratchFloats[index] * 4},
          {&gpu.positions, size_t(rows) * 4},
          {&gpu.tokens, size_t(rows) * 4}}) {
      StatusOr<DevicePointer> p = allocate(bytes, false);
      if (!p)
        return p.status();
      *pointer = *p;
    }
    if (gpu.planesIn > 0)
      for (auto [pointer, bytes] :
           {std::pair<DevicePointer *, size_t>{&gpu.planes, size_t(planesBytes(gpu.planesIn))},
            {&gpu.planeScales, size_t(planeScalesBytes(gpu.planesIn))}}) {
        StatusOr<DevicePointer> p = allocate(bytes, false);
        if (!p)
          return p.status();
        *pointer = *p;
      }
    if (gpu.fp8.in > 0) {
      gpu.fp8.rows = rows * gpu.fp8RowsPerToken;
      for (auto [pointer, bytes] :
           {std::pair<DevicePointer *, size_t>{&gpu.fp8.activations,
                                               fp8GemmActivationBytes(gpu.fp8.rows, gpu.fp8.in)},
            {&gpu.fp8.scales, fp8GemmScaleBytes(gpu.fp8.rows, gpu.fp8.in)},
                                    {&gpu.fp8.partials, gpu.fp8.partialFloats * 4}}) {
        StatusOr<DevicePointer> p = allocate(bytes, false);
        if (!p)
          return p.status();
        *pointer = *p;
      }
    }
  }
  for (std::vector<LatentCache> &sequenceCaches : caches)
    for (const CacheShape &shape : cacheShapes) {
      if (Status s = use(shape.gpu); !s.ok())
        return s;
      StatusOr<DevicePointer> latent =
          allocate(size_t(sequences.capacity() * shape.latent) * 4, false);
      if (!latent)
        return latent.status();
      StatusOr<DevicePointer> rope = allocate(size_t(sequences.capacity() * shape.rope) * 4, false);
      if (!rope)
        return rope.status();
      sequenceCaches.push_back({*latent, *rope});
    }
  if (Status s = enter(); !s.ok()) // with the buffers just made
    return s;
  // The plan's memory budget of each logical GPU (ktc compile --gpu-mem).
  for (const plan::DeviceMemory &memory : plan->memory) {
    const int gpu = gpuIndex(memory.device);
    if (gpu < 0 || gpu >= logicalGpus || !memory.budget)
      continue;
    if (logicalBytes[size_t(gpu)] > *memory.budget)
      return Status::error(planName + ": " + memory.device + " needs " +
                           std::to_string(logicalBytes[size_t(gpu)] >> 20) +
                           " MiB here, more than its budget of " +
                           std::to_string(*memory.budget >> 20) +
                           " MiB; lower --cache-lens or recompile with a larger --gpu-mem for it.");
  }
  return Status::success();
}

bool HybridExecutor::Impl::copiesGpuToHost(const BoundStep &s) const {
  return dynamic_cast<const TransferStep *>(s.step.get()) &&
         values[size_t(s.inputs[0])].where == Where::Gpu &&
         values[size_t(s.outputs[0])].where == Where::Host;
}

Status HybridExecutor::Impl::runSteps(size_t begin, size_t end, StepContext &ctx) {
  std::vector<Value *> &in = stepIn, &out = stepOut;
  for (size_t i = begin; i < end; ++i) {
    BoundStep &s = steps[i];
    in.clear();
    out.clear();
    for (int id : s.inputs)
      in.push_back(&values[size_t(id)]);
    for (int id : s.outputs)
      out.push_back(&values[size_t(id)]);
    if (Status st = use(s.gpu); !st.ok())
      return st;
    if (!hostCopiesPending.empty() && !copiesGpuToHost(s))
      if (Status st = finishHostCopies(); !st.ok())
        return st;
    if (s.step->runsOnHost() && !dynamic_cast<const TransferStep *>(s.step.get()))
      if (Status st = waitForHostReads(); !st.ok())
        return st;
    if (!profiling) {
      if (Status st = s.step->run(*this, ctx, in, out); !st.ok())
        return st;
      continue;
    }
    // Host steps time themselves; GPU steps are waited for.
    const auto start = Clock::now();
    Status st = s.step->run(*this, ctx, in, out);
    if (st.ok() && !s.step->runsOnHost())
      st = device->synchronize();
    if (!st.ok())
      return st;
    if (!s.step->runsOnHost()) {
      const double seconds = secondsSince(start);
      profile.gpuSeconds += seconds;
      profile.gpuSecondsByDevice.resize(size_t(logicalGpus), 0.0);
      profile.gpuSecondsByDevice[size_t(s.gpu)] += seconds;
      profile.gpuSecondsByOpKind[s.opKind] += seconds;
      ++profile.gpuStepsByOpKind[s.opKind];
    } else if (dynamic_cast<const CpuEmbeddingStep *>(s.step.get()))
      profile.cpuOtherSeconds += secondsSince(start);
  }
  return Status::success();
}

Status HybridExecutor::Impl::runGraph(size_t begin, size_t end, StepContext &ctx) {
  std::get<0>(graphKey) = begin;
  std::vector<size_t> &sequenceOrder = std::get<1>(graphKey);
  sequenceOrder.clear();
  for (const Segment &segment : ctx.segments)
    sequenceOrder.push_back(segment.sequence);
  std::get<2>(graphKey) = ctx.lastTokenOnly;
  if (Status s = use(steps[begin].gpu); !s.ok()) // the graph's stream
    return s;
  auto it = graphs.find(graphKey);
  if (it == graphs.end() && ctx.segments.size() > 1) {
    // A server's batches come in many combinations: past the bound, new
    // ones launch kernel by kernel instead of holding ever more graphs.
    if (batchGraphs >= kMaxBatchGraphs)
      return runSteps(begin, end, ctx);
    ++batchGraphs;
  }
  if (it == graphs.end()) {
    if (Status s = device->beginCapture(); !s.ok())
      return s;
    capturingDecodeGraph = true;
    for (Gpu &gpu : physical) // a graph quantizes its own planes
      gpu.planesHold = 0;
    Status recorded = runSteps(begin, end, ctx);
    capturingDecodeGraph = false;
    StatusOr<CapturedGraph> graph = device->endCapture();
    if (!recorded.ok())
      return recorded;
    if (!graph)
      return graph.status();
    it = graphs.emplace(graphKey, *graph).first;
    ++graphStats.captured;
  }
  ++graphStats.launched;
  return device->launchGraph(it->second);
}

Status HybridExecutor::Impl::runStep(const int32_t *tokens, std::vector<Segment> &segments,
                                     bool lastTokenOnly, float *logits, int32_t *greedyIds,
                                     const exec::TokenSampling *sampling) {
  int64_t stepRows = 0;
  for (const Segment &segment : segments)
    stepRows += segment.count;
  if (stepRows > chunkSize) // the callers cut steps to it; the buffers hold that many
    return Status::error("a step of " + std::to_string(stepRows) + " tokens, more than the " +
                         std::to_string(chunkSize) + " the executor's buffers hold");
  StepContext ctx;
  struct HandBack { // however the step ends
    std::vector<Segment> &to;
    StepContext &ctx;
    ~HandBack() { to = std::move(ctx.segments); }
  } handBack{segments, ctx};
  for (Segment &segment : segments) {
    segment.row = ctx.rows;
    segment.start = sequences.position(segment.sequence);
    for (int64_t i = 0; i < segment.count; ++i)
      positionsHost[ctx.rows + i] = int32_t(segment.start + i);
    ctx.rows += segment.count;
  }
  ctx.segments = std::move(segments);
  ctx.lastTokenOnly = lastTokenOnly;
  ctx.tokens = tokens;
  // Every GPU's attention reads the positions from its own memory.
  for (int logical = 0; logical < logicalGpus; ++logical) {
    if (logical !=
        int(std::find(physicalOf.begin(), physicalOf.end(), physicalOf[size_t(logical)]) -
            physicalOf.begin()))
      continue; // not the first logical GPU on its physical one
    if (Status s = use(logical); !s.ok())
      return s;
    if (Status s = device->copyToDeviceAsync(positionsGpu, positionsHost, size_t(ctx.rows) * 4);
        !s.ok())
      return s;
    // The step ends waiting for the result's GPU only: another one's copy
    // is waited for here.
    if (physical.size() > 1)
      if (Status s = device->synchronize(); !s.ok())
        return s;
  }
  // Decode steps (one token of each sequence) replay their GPU regions as
  // CUDA graphs, one per sequence or batch of sequences (the caches differ);
  // profiling waits for each step, so it runs them one by one.
  ctx.decode = std::all_of(ctx.segments.begin(), ctx.segments.end(),
                           [](const Segment &segment) { return segment.count == 1; });
  const bool replay = cudaGraphs && ctx.decode && !profiling;
  expertLayerStarts.clear();
  expertLayerEnds.clear();
  hostCopyWaits.clear();
  decodeStep = ctx.decode;
  for (const GpuMark &mark : gpuMarks) // left by a step that failed
    mark.gpu->clearTimeMarks();
  gpuMarks.clear();
  for (size_t i = 0; i < steps.size();) {
    size_t end = i + 1;
    if (!hostCopiesPending.empty() && !copiesGpuToHost(steps[i]))
      if (Status st = finishHostCopies(); !st.ok())
        return st;
    if (replay && steps[i].graphRegion >= 0 && steps[i].step->capturable()) {
      // Regions next to each other run as one graph (a MoE layer's gate,
      // queued right after its attention, ahead of the copies to the host).
      while (end < steps.size() && steps[end].graphRegion >= 0 && steps[end].gpu == steps[i].gpu &&
             steps[end].step->capturable())
        ++end;
      if (Status st = runGraph(i, end, ctx); !st.ok())
        return st;
    } else if (Status st = runSteps(i, end, ctx); !st.ok()) {
      return st;
    }
    i = end;
  }
  if (Status s = finishHostCopies(); !s.ok())
    return s;
  // The GPU marks are read once the result is on the host (addGpuMarks may
  // wait for the streamed share, which the result's copy waits for anyway).
  for (size_t i = 1; i < expertLayerStarts.size(); ++i) {
    moeLayers.seconds +=
        std::chrono::duration<double>(expertLayerStarts[i] - expertLayerStarts[i - 1]).count();
    moeLayers.expertSeconds +=
        std::chrono::duration<double>(expertLayerEnds[i - 1] - expertLayerStarts[i - 1]).count();
    ++moeLayers.intervals;
    // The last wait for copies to the host between the two layers.
    for (auto wait = hostCopyWaits.rbegin(); wait != hostCopyWaits.rend(); ++wait)
      if (wait->second <= expertLayerStarts[i] && wait->first >= expertLayerEnds[i - 1]) {
        using Seconds = std::chrono::duration<double>;
        moeLayers.hostQueueSeconds += Seconds(wait->first - expertLayerEnds[i - 1]).count();
        moeLayers.hostWaitSeconds += Seconds(wait->second - wait->first).count();
        moeLayers.hostStartSeconds += Seconds(expertLayerStarts[i] - wait->second).count();
        break;
      }
  }
  const Value &result = values[size_t(outputValue)];
  const int64_t logitRows = lastTokenOnly ? int64_t(ctx.segments.size()) : ctx.rows;
  const Kernel *chooser = sampling ? sampler : argmax;
  if (greedyIds && result.where == Where::Gpu && chooser && argmaxIds &&
      logitRows <= int64_t(sequences.count())) {
    // Only the ids cross to the host.
    if (Status s = use(result.logicalGpu); !s.ok())
      return s;
    DevicePointer rows = result.gpu, ids = argmaxIds, params = sampleParams;
    if (sampling) {
      std::vector<uint8_t> packed(size_t(logitRows) * kSampleParamsBytes);
      for (int64_t row = 0; row < logitRows; ++row)
        packSampleParams(sampling[row], packed.data() + size_t(row) * kSampleParamsBytes);
      if (Status s = device->copyToDevice(sampleParams, packed.data(), packed.size()); !s.ok())
        return s;
      if (Status s = launch(*sampler, unsigned(logitRows), 1, 1, 0, {&rows, &params, &ids});
          !s.ok())
        return s;
    } else if (Status s = launch(*argmax, unsigned(logitRows), 1, 1, 0, {&rows, &ids}); !s.ok()) {
      return s;
    }
    if (Status s = device->copyToHost(greedyIds, argmaxIds, size_t(logitRows) * 4); !s.ok())
      return s;
    streamDone(device);
    if (Status s = addGpuMarks(); !s.ok())
      return s;
    for (const Segment &segment : ctx.segments)
      sequences.advance(segment.sequence, segment.count);
    return Status::success();
  }
  if (greedyIds) { // no argmax kernel: the logits, then their argmax here
    hostLogits.resize(size_t(logitRows * vocab));
    logits = hostLogits.data();
  }
  const size_t bytes = size_t(logitRows * vocab) * 4;
  const auto copyStart = Clock::now();
  if (result.where == Where::Gpu) {
    if (Status s = use(result.logicalGpu); !s.ok())
      return s;
    if (Status s = device->copyToHost(logits, result.gpu, bytes); !s.ok())
      return s;
    streamDone(device);
  } else {
    std::memcpy(logits, result.host, bytes);
  }
  if (profiling) {
    profile.transferSeconds += secondsSince(copyStart);
    profile.transferBytes += bytes;
  }
  if (Status s = addGpuMarks(); !s.ok())
    return s;
  for (const Segment &segment : ctx.segments)
    sequences.advance(segment.sequence, segment.count);
  if (greedyIds && sampling)
    for (int64_t row = 0; row < logitRows; ++row)
      greedyIds[row] = exec::sampleToken(logits + row * vocab, vocab, sampling[row]);
  else if (greedyIds)
    exec::argmaxRows(logits, logitRows, vocab, greedyIds);
  return Status::success();
}

// ---------------------------------------------------------------- public

HybridExecutor::HybridExecutor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HybridExecutor::~HybridExecutor() = default;

namespace {
// Whether code compiled for `planArch` runs on a GPU of compute capability
// major.minor: CUBINs need the same architecture, PTX an equal or newer GPU.
bool archRuns(const std::string &planArch, const GpuInfo &gpu) {
  if (planArch == gpu.arch())
    return true;
  if (planArch.rfind("compute_", 0) == 0) {
    const int version = std::atoi(planArch.c_str() + 8);
    return gpu.computeMajor * 10 + gpu.computeMinor >= version;
  }
  return planArch == "sm_" + std::to_string(gpu.computeMajor) + std::to_string(gpu.computeMinor);
}
} // namespace

StatusOr<std::unique_ptr<HybridExecutor>>
HybridExecutor::create(const plan::Plan &plan, const gguf::GgufModel &model,
                       const exec::ExecutorOptions &options) {
  const auto started = Clock::now();
  const std::string planName =
      options.planPath.empty() ? std::string("the plan") : "plan " + options.planPath;
  const int64_t capacity = options.cacheLens > 0 ? options.cacheLens : plan.defaults.cacheLens;
  if (capacity <= 0)
    return Status::error("The KV cache length must be positive (" + planName + " asks for " +
                         std::to_string(capacity) +
                         "); pass --cache-lens with a positive number of tokens.");
  if (options.sequences < 1)
    return Status::error("The executor needs at least one sequence (KV cache slot), not " +
                         std::to_string(options.sequences) + ".");
  if (plan.target.gpus.empty())
    return Status::error(planName + " places ops on a GPU but names no target GPU; the plan is "
                                    "damaged: recompile it.");
  // A plan for N GPUs runs on GPUs 0..N-1 of this host, or, with virtual
  // GPUs, on GPU 0 alone (checked before any GPU is needed where possible).
  const bool virtualGpus = options.virtualGpus > 0;
  int highestGpu = 0;
  for (const plan::Op &op : plan.ops)
    for (const std::string *device : {&op.prefillDevice, &op.decodeDevice, &op.outDevice})
      highestGpu = std::max(highestGpu, gpuIndex(*device));
  const int logicalGpus = virtualGpus ? options.virtualGpus : highestGpu + 1;
  if (highestGpu >= logicalGpus)
    return Status::error(planName + " runs ops on cuda:" + std::to_string(highestGpu) +
                         ", more than the " + std::to_string(options.virtualGpus) +
                         " virtual GPUs asked for. Run it with --virtual-gpus " +
                         std::to_string(highestGpu + 1) + ".");
  for (int gpu = 1; gpu < std::min<int>(logicalGpus, int(plan.target.gpus.size())); ++gpu)
    if (plan.target.gpus[size_t(gpu)].arch != plan.target.gpus[0].arch)
      return Status::error(planName + " targets GPUs of different architectures (" +
                           plan.target.gpus[0].arch + ", " + plan.target.gpus[size_t(gpu)].arch +
                           "); this executor runs plans whose GPUs share one architecture. "
                           "Compile it with the same --target-gpu architecture for each GPU.");
  // The FP8 checkpoint of the projections (ktc compile --fp8-path), checked
  // against the plan before any GPU is needed.
  StatusOr<std::unique_ptr<safetensors::Checkpoint>> fp8 =
      cpu::openPlanFp8Checkpoint(plan, planName);
  if (!fp8)
    return fp8.status();

  // The GPU expert cache: what the plan reserves on cuda:0, or less.
  uint64_t reserved = 0;
  std::optional<uint64_t> firstGpuBudget;
  for (const plan::DeviceMemory &memory : plan.memory)
    if (memory.device == "cuda:0") {
      reserved = memory.expertCache;
      firstGpuBudget = memory.budget;
    }
  if (options.gpuExpertCacheBytes > 0 && uint64_t(options.gpuExpertCacheBytes) > reserved)
    return Status::error(
        "A GPU expert cache of " + formatByteSize(uint64_t(options.gpuExpertCacheBytes)) +
        " was asked for, but " + planName + " reserves " + formatByteSize(reserved) +
        " on cuda:0 for it; recompile the plan with ktc compile --gpu-expert-cache " +
        std::to_string(options.gpuExpertCacheBytes) +
        " (its memory plan must have room), or ask for less.");
  const uint64_t expertCacheBytes =
      options.gpuExpertCacheBytes < 0 ? reserved : uint64_t(options.gpuExpertCacheBytes);
  const bool autoStreaming = options.streamedExperts == exec::kAutoStreamedExperts;
  if (autoStreaming && (options.streamedGateUps > 0 || !(options.streamedGateUpShare < 0)))
    return Status::error(
        std::string("--stream-experts auto chooses the gate/up-only experts "
                    "too, and their share balances itself; drop ") +
        (options.streamedGateUps > 0 ? "--stream-gate-up" : "--stream-gate-up-share") +
        ", or give --stream-experts a number.");
  if (options.streamedGateUps > 0 && options.streamedExperts <= 0)
    return Status::error("--stream-gate-up " + std::to_string(options.streamedGateUps) +
                         " adds experts to --stream-experts N, which is 0; pass both.");
  if (!(options.streamedGateUpShare < 0) &&
      !(options.streamedGateUpShare <= double(options.streamedGateUps))) {
    char share[32];
    std::snprintf(share, sizeof share, "%g", options.streamedGateUpShare);
    return Status::error(std::string("--stream-gate-up-share ") + share +
                         " is more than the --stream-gate-up " +
                         std::to_string(options.streamedGateUps) +
                         " experts it shares out; give at most that, or leave it out to let "
                         "the share balance itself.");
  }
  if (options.moveStreamedExperts && !autoStreaming && options.streamedExperts <= 0)
    return Status::error("--move-streamed-experts moves whole experts of --stream-experts N, "
                         "which is 0; pass a number of experts (or auto, which moves them "
                         "anyway).");
  if (options.moveStreamedExperts && !(options.streamedGateUpShare < 0))
    return Status::error("--move-streamed-experts moves whole experts when the balanced "
                         "gate/up share stays at one end, but --stream-gate-up-share fixes the "
                         "share; drop one of them.");
  if (Status pages = exec::checkExpertPages(options.expertPages); !pages.ok())
    return pages;
  // Streamed experts are page-locked where the model file is mapped; a copy
  // for the CPU would hold their bytes twice.
  if (options.expertPages == "huge" && options.streamedExperts > 0)
    return Status::error("--expert-pages huge and --stream-experts " +
                         std::to_string(options.streamedExperts) +
                         " together would keep the routed experts in memory twice (the GPU "
                         "streams them from the model file's page-locked mapping); drop one.");
  if (options.streamedExperts > 0 && reserved == 0)
    return Status::error("--stream-experts " + std::to_string(options.streamedExperts) +
                         ": streamed experts run on the GPU expert cache's kernels and room, but " +
                         planName +
                         " reserves none; recompile it with ktc compile "
                         "--gpu-expert-cache SIZE (at least the streamed experts' weights, e.g. "
                         "128MiB for 2 of DeepSeek-V3's Q4_K experts).");

  std::string whyNone;
  std::vector<GpuInfo> gpus = queryGpus(whyNone);
  if (gpus.empty())
    return Status::error(planName + " runs ops on cuda:0, but this host has no usable GPU (" +
                         whyNone +
                         "). Run it on the GPU machine, or compile a CPU plan: ktc compile "
                         "--target-gpu none --optimize-config-path "
                         "rules/DeepSeek-V3-Chat-cpu-only.yaml.");
  const int physicalGpus = virtualGpus ? 1 : logicalGpus;
  if (int(gpus.size()) < physicalGpus)
    return Status::error(planName + " runs ops on cuda:0 to cuda:" + std::to_string(highestGpu) +
                         ", but this host has " + std::to_string(gpus.size()) +
                         " GPU(s). Run it with --virtual-gpus " + std::to_string(highestGpu + 1) +
                         " (its stages then share GPU 0), or compile it for " +
                         std::to_string(gpus.size()) + " GPU(s).");
  StatusOr<cpu::NumaTopology> numa = cpu::numaTopologyFor(options.numa);
  if (!numa)
    return numa.status();
  auto impl = std::make_unique<Impl>(options.threads, *numa);
  impl->fp8 = std::move(*fp8);
  impl->conversions =
      std::make_unique<cpu::WeightConversions>(impl->fp8.get(), options.progress);
  impl->plan = &plan;
  impl->planName = planName;
  impl->arch = plan.target.gpus[0].arch;
  for (int index = 0; index < physicalGpus; ++index) {
    const GpuInfo &gpu = gpus[size_t(index)];
    if (!archRuns(impl->arch, gpu))
      return Status::error(planName + " was compiled for " + impl->arch + " GPUs, but GPU " +
                           std::to_string(index) + " is " + gpu.name + " (" + gpu.arch() +
                           "). Recompile the plan on this machine, or with --target-gpu " +
                           gpu.arch() + ":MEMORY.");
  }
  StatusOr<const Nvrtc *> nvrtc = Nvrtc::instance();
  if (!nvrtc)
    return nvrtc.status();
  StatusOr<std::string> cacheDirectory = KernelCache::defaultDirectory();
  if (!cacheDirectory)
    return cacheDirectory.status();
  impl->cache = std::make_unique<KernelCache>(*cacheDirectory, **nvrtc);
  for (int index = 0; index < physicalGpus; ++index) {
    StatusOr<std::unique_ptr<CudaDevice>> device = CudaDevice::open(index);
    if (!device)
      return device.status();
    StatusOr<int> multiprocessors = (*device)->multiprocessors();
    if (!multiprocessors)
      return multiprocessors.status();
    impl->physical.push_back({std::move(*device), gpus[size_t(index)]});
    impl->physical.back().multiprocessors = *multiprocessors;
  }
  // Stages hand activations to each other directly where the GPUs allow.
  impl->peerAccess = physicalGpus > 1;
  for (Impl::Gpu &a : impl->physical)
    for (Impl::Gpu &b : impl->physical)
      if (&a != &b) {
        StatusOr<bool> enabled = a.device->enablePeerAccess(*b.device);
        if (!enabled)
          return enabled.status();
        impl->peerAccess = impl->peerAccess && *enabled;
      }
  for (int logical = 0; logical < logicalGpus; ++logical)
    impl->physicalOf.push_back(virtualGpus ? 0 : logical);
  impl->virtualGpus = virtualGpus;

  impl->sequences = exec::SequenceCaches(options.sequences, capacity);
  impl->cudaGraphs = options.cudaGraphs;
  impl->overlapLaunches = options.overlapLaunches;
  impl->fp8Gemm = options.fp8Gemm;
  impl->fusedNormQuantization = options.fusedNormQuantization;
  impl->fusedResidualNorms = options.fusedResidualNorms;
  impl->pool.setIdleSpin(options.idleSpinMicros);
  impl->mlaTensorCores = options.mlaTensorCores;
  impl->mmaGemm = options.ggufTensorCores;
  impl->logicalGpus = logicalGpus;
  impl->logicalBytes.assign(size_t(logicalGpus), 0);
  if (Status s = impl->enter(); !s.ok())
    return s;
  impl->caches.resize(size_t(options.sequences));
  impl->expertGemmTokens = std::max<int64_t>(0, options.expertGemmTokens);
  impl->expertTileTokens = std::max<int64_t>(0, options.expertTileTokens);
  impl->hugePageExperts = options.expertPages == "huge";
  impl->chunkSize =
      options.chunkSize > 0 ? options.chunkSize : std::max<int64_t>(1, plan.defaults.chunkSize);
  if (impl->chunkSize > 65535)
    impl->chunkSize = 65535; // a grid dimension per token
  if (Status isa = cpu::checkHostRunsPlan(plan, cpu::hostCpuFeatures(), planName); !isa.ok())
    return isa;
  if (plan.cpuCode) {
    const std::string codePlanPath = !options.planPath.empty() ? options.planPath : plan.sourcePath;
    StatusOr<std::unique_ptr<cpu::GeneratedKernels>> generated = cpu::GeneratedKernels::load(
        *plan.cpuCode, codePlanPath.empty() ? "plan" : codePlanPath, cpu::hostCpuFeatures());
    if (!generated)
      return generated.status();
    impl->generated = std::move(*generated);
  }
  impl->firstGpuBudget = firstGpuBudget;
  impl->expertCacheBudget = expertCacheBytes;
  impl->expertCache.enabled = expertCacheBytes > 0;
  // Auto streams only where explicit numbers would be accepted, and says
  // why not otherwise (ktrun's default: plans without the reservation, or
  // with the experts copied into huge pages, simply stream none).
  impl->autoStreaming = autoStreaming && reserved > 0 && options.expertPages != "huge";
  if (autoStreaming && !impl->autoStreaming)
    impl->expertCache.streamingNone =
        reserved == 0 ? planName + " reserves no GPU expert cache (ktc compile --gpu-expert-cache)"
                      : std::string("--expert-pages huge keeps the experts outside the model "
                                    "file's mapping");
  impl->streamedExperts = std::max(0, options.streamedExperts);
  impl->streamedGateUps = impl->streamedExperts > 0 ? std::max(0, options.streamedGateUps) : 0;
  impl->balanceGateUpShare = options.streamedGateUpShare < 0;
  // (A fixed share was refused above: the balance moves them.)
  impl->decodeShare.moveExperts = options.moveStreamedExperts && impl->streamedExperts > 0;
  impl->decodeShare.experts = int(impl->streamedExperts);
  impl->decodeShare.gateUps = int(impl->streamedGateUps);
  impl->decodeShare.gateUpShare =
      impl->balanceGateUpShare ? double(impl->streamedGateUps) : options.streamedGateUpShare;
  Status bound = impl->bind(model);
  impl->conversions->finishProgress();
  if (!bound.ok())
    return bound;
  if (impl->streamedExperts > 0 || impl->autoStreaming)
    if (Status s =
            impl->setUpExpertStreaming(reserved, options.gpuExpertCacheBytes, options.progress);
        !s.ok())
      return s;
  if (impl->expertCacheBudget > 0 && !options.expertProfile.empty())
    if (Status filled = impl->fillExpertCache(options.expertProfile); !filled.ok())
      return filled;
  const KernelCacheStats stats = impl->cache->stats();
  impl->loadStats.kernels = impl->kernels.size();
  impl->loadStats.fromCache = stats.hits;
  impl->loadStats.compiled = stats.misses;
  impl->loadStats.compileSeconds = stats.compileSeconds;
  impl->loadStats.cacheDirectory = *cacheDirectory;
  impl->loadStats.loadSeconds = secondsSince(started);
  impl->plan = nullptr; // not kept: the caller's plan may go away
  return std::unique_ptr<HybridExecutor>(new HybridExecutor(std::move(impl)));
}

StatusOr<std::vector<float>> HybridExecutor::forward(const std::vector<int32_t> &tokens,
                                                     bool allPositions) {
  Impl &m = *impl_;
  if (Status valid = m.sequences.checkForward(tokens, m.embeddingRows); !valid.ok())
    return valid;
  if (Status current = m.enter(); !current.ok())
    return current;
  const int64_t count = static_cast<int64_t>(tokens.size());
  std::vector<float> logits(size_t((allPositions ? count : 1) * m.vocab));
  std::vector<float> discarded;
  for (int64_t begin = 0; begin < count; begin += m.chunkSize) {
    const int64_t chunk = std::min(m.chunkSize, count - begin);
    const bool last = begin + chunk == count;
    float *into = logits.data();
    if (allPositions)
      into = logits.data() + size_t(begin * m.vocab);
    else if (!last) {
      discarded.resize(size_t(m.vocab));
      into = discarded.data();
    }
    m.stepSegments.assign(1, Segment{0, chunk, 0, 0});
    if (Status s = m.runStep(tokens.data() + begin, m.stepSegments, !allPositions, into); !s.ok())
      return s;
  }
  if (count > 1)
    if (Status s = m.fillExpertCacheAfterPrefill(); !s.ok())
      return s;
  return logits;
}

StatusOr<std::vector<float>>
HybridExecutor::forwardBatch(const std::vector<exec::SequenceTokens> &batch) {
  std::vector<float> logits(batch.size() * size_t(impl_->vocab));
  if (Status s = impl_->runBatch(batch, logits.data(), nullptr); !s.ok())
    return s;
  return logits;
}

StatusOr<std::vector<int32_t>>
HybridExecutor::forwardGreedy(const std::vector<exec::SequenceTokens> &batch) {
  std::vector<int32_t> ids(batch.size());
  if (Status s = impl_->runBatch(batch, nullptr, ids.data()); !s.ok())
    return s;
  return ids;
}

StatusOr<std::vector<int32_t>>
HybridExecutor::forwardSampled(const std::vector<exec::SequenceTokens> &batch,
                               const std::vector<exec::TokenSampling> &sampling) {
  if (sampling.size() != batch.size())
    return Status::error("forwardSampled needs one sampling per batch entry");
  std::vector<int32_t> ids(batch.size());
  if (Status s = impl_->runBatch(batch, nullptr, ids.data(), sampling.data()); !s.ok())
    return s;
  return ids;
}

Status HybridExecutor::Impl::runBatch(const std::vector<exec::SequenceTokens> &batch,
                                      float *logits, int32_t *greedyIds,
                                      const exec::TokenSampling *sampling) {
  if (Status valid = sequences.checkBatch(batch, embeddingRows); !valid.ok())
    return valid;
  if (Status current = enter(); !current.ok())
    return current;
  // Entries share steps of at most chunkSize rows, so the matrix products
  // (and the routed experts) serve several sequences at once; an entry
  // longer than a chunk runs in chunks of its own.
  std::vector<int32_t> &tokens = batchTokens, &stepIds = batchIds;
  std::vector<Segment> &segments = stepSegments;
  std::vector<size_t> &entries = batchEntries;
  std::vector<float> &stepLogits = batchLogits;
  std::vector<exec::TokenSampling> &stepSampling = batchSampling;
  tokens.clear();
  segments.clear();
  entries.clear();
  auto flush = [&]() -> Status {
    if (segments.empty())
      return Status::success();
    stepLogits.resize(greedyIds ? 0 : segments.size() * size_t(vocab));
    stepIds.resize(segments.size());
    stepSampling.clear();
    if (sampling)
      for (size_t entry : entries)
        stepSampling.push_back(sampling[entry]);
    if (Status s = runStep(tokens.data(), segments, true, stepLogits.data(),
                           greedyIds ? stepIds.data() : nullptr,
                           sampling ? stepSampling.data() : nullptr);
        !s.ok())
      return s;
    for (size_t i = 0; i < entries.size(); ++i)
      if (greedyIds)
        greedyIds[entries[i]] = stepIds[i];
      else
        std::copy(stepLogits.begin() + long(i * size_t(vocab)),
                  stepLogits.begin() + long((i + 1) * size_t(vocab)),
                  logits + entries[i] * size_t(vocab));
    tokens.clear();
    segments.clear();
    entries.clear();
    return Status::success();
  };
  int64_t rows = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const exec::SequenceTokens &entry = batch[i];
    const int64_t count = static_cast<int64_t>(entry.tokens.size());
    for (int64_t begin = 0; begin < count; begin += chunkSize) {
      const int64_t chunk = std::min(chunkSize, count - begin);
      if (rows + chunk > chunkSize) {
        if (Status s = flush(); !s.ok())
          return s;
        rows = 0;
      }
      tokens.insert(tokens.end(), entry.tokens.begin() + begin,
                    entry.tokens.begin() + begin + chunk);
      segments.push_back({0, chunk, 0, size_t(entry.sequence)});
      entries.push_back(i);
      rows += chunk;
      if (begin + chunk < count) { // the entry's later chunks need this one in the cache
        if (Status s = flush(); !s.ok())
          return s;
        rows = 0;
      }
    }
  }
  if (Status s = flush(); !s.ok())
    return s;
  for (const exec::SequenceTokens &entry : batch)
    if (entry.tokens.size() > 1)
      return fillExpertCacheAfterPrefill();
  return Status::success();
}

int64_t HybridExecutor::position(int sequence) const {
  return impl_->sequences.position(size_t(sequence));
}
int64_t HybridExecutor::cacheCapacity() const { return impl_->sequences.capacity(); }
int HybridExecutor::sequenceCount() const { return impl_->sequences.count(); }
int64_t HybridExecutor::chunkSize() const { return impl_->chunkSize; }
int HybridExecutor::generatedExpertLayers() const { return impl_->generatedExpertLayers; }
int HybridExecutor::tileExpertLayers() const { return impl_->tileExpertLayers; }

exec::NumaPlacement HybridExecutor::numaPlacement() const { return impl_->numaPlacement; }
std::vector<exec::HostBytes> HybridExecutor::routedExpertBytes() const {
  return cpu::routedExpertBytesOf<ExpertsStep>(impl_->steps);
}
void HybridExecutor::reset(int sequence) { impl_->sequences.reset(size_t(sequence)); }
void HybridExecutor::truncate(int sequence, int64_t tokens) {
  impl_->sequences.truncate(size_t(sequence), tokens);
}
std::vector<exec::RoutingStats> HybridExecutor::routingStats() const {
  std::vector<exec::RoutingStats> stats;
  (void)impl_->enter();
  for (const BoundStep &bound : impl_->steps)
    if (auto *experts = dynamic_cast<const ExpertsStep *>(bound.step.get()))
      stats.push_back(experts->stats());
    else if (auto *gpuExperts = dynamic_cast<const GpuExpertsStep *>(bound.step.get())) {
      (void)impl_->use(bound.gpu);
      StatusOr<exec::RoutingStats> counted = gpuExperts->stats(*impl_->device);
      stats.push_back(counted ? *counted : exec::RoutingStats{gpuExperts->gatePath, {}});
    }
  return stats;
}
void HybridExecutor::clearRoutingStats() {
  (void)impl_->enter();
  for (BoundStep &bound : impl_->steps)
    if (auto *experts = dynamic_cast<ExpertsStep *>(bound.step.get()))
      experts->clearStats();
    else if (auto *gpuExperts = dynamic_cast<GpuExpertsStep *>(bound.step.get())) {
      (void)impl_->use(bound.gpu);
      (void)gpuExperts->clearStats(*impl_->device);
    }
}
int64_t HybridExecutor::vocabSize() const { return impl_->vocab; }
int HybridExecutor::threadCount() const { return impl_->pool.threadCount(); }
std::string HybridExecutor::deviceDescription() const {
  std::string text;
  for (size_t index = 0; index < impl_->physical.size(); ++index) {
    const GpuInfo &gpu = impl_->physical[index].info;
    text += (index ? ", cuda:" : "cuda:") + std::to_string(index) + " (" + gpu.name + ", " +
            gpu.arch() + ")";
  }
  if (impl_->virtualGpus)
    text += " as " + std::to_string(impl_->logicalGpus) + " virtual GPUs";
  else if (impl_->physical.size() > 1)
    text += impl_->peerAccess ? "; peer access between the GPUs"
                              : "; copies between the GPUs through the host";
  return text;
}
void HybridExecutor::setProfiling(bool on) {
  impl_->profiling = on;
  impl_->profile = {};
  impl_->profile.available = true;
}
exec::ExecutionProfile HybridExecutor::profile() const { return impl_->profile; }
exec::WeightConversionStats HybridExecutor::weightConversions() const {
  const cpu::WeightConversions &c = *impl_->conversions;
  return {c.convertedTensors(), c.convertedBytes(), c.convertSeconds()};
}

exec::ExpertCacheStats HybridExecutor::expertCacheStats() const {
  exec::ExpertCacheStats stats = impl_->expertCache;
  double gateUpRows = 0, gateUpAllRows = 0; // streamed, and of those experts in all
  for (const BoundStep &bound : impl_->steps)
    if (auto *experts = dynamic_cast<const ExpertsStep *>(bound.step.get());
        experts && experts->cache) {
      stats.selections += experts->cache->selections;
      stats.gpuSelections += experts->cache->gpuSelections;
      stats.streamedSelections += experts->cache->streamedSelections;
      stats.streamedBytes += experts->cache->streamedBytes;
      stats.gateUpSelections += experts->cache->gateUpSelections;
      gateUpRows += double(experts->cache->gateUpRowSelections);
      gateUpAllRows += double(experts->cache->gateUpSelections) * double(experts->cache->ffn);
    }
  stats.pinnedBytes = impl_->pinnedBytes.load();
  stats.pinSeconds = impl_->pinnedSeconds.load();
  {
    std::lock_guard<std::mutex> lock(impl_->pinMutex);
    stats.pinningStopped = impl_->pinningStopped;
  }
  stats.prefillStreamShare = impl_->prefillStreamShare;
  stats.gateUpRowShare = gateUpAllRows > 0 ? gateUpRows / gateUpAllRows : 0.0;
  stats.decodeGateUpShare = impl_->decodeShare.gateUpShare;
  stats.decodeStreamedNow = impl_->decodeShare.experts;
  stats.streamedMoves = impl_->decodeShare.moves;
  return stats;
}

void HybridExecutor::finishLoading() { impl_->joinPinning(false); }

double HybridExecutor::streamLinkBandwidth() {
  Impl &m = *impl_;
  const CachedExperts *layer = nullptr;
  for (const BoundStep &bound : m.steps)
    if (auto *experts = dynamic_cast<const ExpertsStep *>(bound.step.get());
        experts && experts->cache && !layer)
      layer = experts->cache.get();
  if (m.streamedExperts <= 0 || !layer || !m.use(0).ok())
    return 0;
  // The gate slices of distinct experts into the staging slots, as decode
  // copies them: one round to warm up, then 16 queued together.
  const size_t slice = layer->sliceBytes(0);
  const auto *gate = static_cast<const uint8_t *>(layer->tensors[0]->data);
  int64_t copy = 0;
  auto queueRound = [&] {
    for (int64_t slot = 0; slot < m.streamedExperts; ++slot, ++copy)
      if (!m.device
               ->copyToDeviceAsync(m.streamStaging[0] + size_t(slot) * slice,
                                   gate + size_t(copy % layer->experts) * slice, slice)
               .ok())
        return false;
    return true;
  };
  if (!queueRound() || !m.device->synchronize().ok())
    return 0;
  const auto started = Clock::now();
  constexpr int kRounds = 16;
  for (int round = 0; round < kRounds; ++round)
    if (!queueRound())
      return 0;
  if (!m.device->synchronize().ok())
    return 0;
  return double(kRounds * m.streamedExperts) * double(slice) / secondsSince(started);
}

HybridExecutor::GraphStats HybridExecutor::graphStats() const { return impl_->graphStats; }

uint64_t HybridExecutor::fusedNormQuantizations() const { return impl_->fp8NormRuns; }

exec::MoeLayerTiming HybridExecutor::moeLayerTiming() const { return impl_->moeLayers; }

std::vector<size_t> HybridExecutor::queueOrder() const {
  std::vector<size_t> order;
  for (const BoundStep &step : impl_->steps)
    order.push_back(step.op);
  return order;
}

void HybridExecutor::clearMoeLayerTiming() { impl_->moeLayers = {}; }
void HybridExecutor::setMoeLayerGpuClock(bool on) { impl_->moeLayerGpuClock = on; }
const KernelLoadStats &HybridExecutor::kernelLoadStats() const { return impl_->loadStats; }
uint64_t HybridExecutor::gpuWeightBytes() const { return impl_->weightBytes; }
uint64_t HybridExecutor::gpuBufferBytes() const { return impl_->bufferBytes; }

} // namespace kt::cuda
