#include "runtime/cpu/CpuExecutor.h"

#include "runtime/safetensors/Safetensors.h"

#include "runtime/cpu/Attention.h"
#include "runtime/cpu/FeedForward.h"
#include "runtime/cpu/Linear.h"
#include "runtime/cpu/Math.h"
#include "runtime/cpu/IsaVariants.h"
#include "runtime/cpu/MoeRouting.h"
#include "runtime/cpu/OpBinder.h"
#include "runtime/cpu/ThreadPool.h"
#include "runtime/exec/SequenceCaches.h"
#include "runtime/quant/Quant.h"
#include "runtime/safetensors/Safetensors.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <set>

namespace kt::cpu {

namespace {

// ---------------------------------------------------------------- values

// An activation: `rows` tokens of `width` floats, or (the outputs of
// moe_gate's expert choice and value 0) of `width` int32 ids.
struct Value {
  int64_t rows = 0;
  int64_t width = 0;
  std::vector<float> data;
  std::vector<int32_t> ids;
};

enum class ValueKind { Tokens, Floats, ExpertIds };

struct ValueInfo {
  ValueKind kind = ValueKind::Floats;
  int64_t width = 0;
  int64_t experts = 0; // ExpertIds: the expert count of the gate that chose them
  bool defined = false;
};

// The tokens of one sequence within a step: rows [row, row + count) of
// every activation, at positions [start, start + count) of its KV cache.
struct Segment {
  int64_t row = 0;
  int64_t count = 0;
  int64_t start = 0;
  size_t sequence = 0;
  MlaAttention::Path attentionPath = MlaAttention::Path::Expanded;
};

struct StepContext {
  ThreadPool &pool;
  Workspace &workspace;
  std::vector<Segment> segments; // in row order, covering every row once
  bool lastTokenOnly = false;    // lm_head: logits of each segment's last token only
  std::vector<std::vector<LatentCache>> *caches = nullptr; // [sequence][layer]
  exec::ExpertPhaseSeconds *expertPhases = nullptr;        // while profiling
};

class Step {
public:
  virtual ~Step() = default;
  virtual void run(StepContext &ctx, const std::vector<Value *> &in,
                   const std::vector<Value *> &out) = 0;
};

void shape(Value &v, int64_t rows, int64_t width) {
  v.rows = rows;
  v.width = width;
  v.data.resize(static_cast<size_t>(rows * width));
}

// ---------------------------------------------------------------- steps

class EmbeddingStep : public Step {
public:
  explicit EmbeddingStep(WeightMatrix table) : table_(table) {}
  void run(StepContext &ctx, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    const Value &tokens = *in[0];
    Value &o = *out[0];
    shape(o, tokens.rows, table_.cols);
    float *scratch = threadScratch(0, static_cast<size_t>(table_.cols));
    for (int64_t t = 0; t < tokens.rows; ++t) {
      const float *row = decodeRows(table_, tokens.ids[static_cast<size_t>(t)], 1, scratch);
      std::memcpy(o.data.data() + t * table_.cols, row,
                  static_cast<size_t>(table_.cols) * sizeof(float));
    }
    (void)ctx;
  }

private:
  WeightMatrix table_;
};

class RmsNormStep : public Step {
public:
  RmsNormStep(std::vector<float> weight, float eps) : weight_(std::move(weight)), eps_(eps) {}
  void run(StepContext &, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    const Value &x = *in[0];
    Value &o = *out[0];
    shape(o, x.rows, x.width);
    for (int64_t t = 0; t < x.rows; ++t)
      rmsNorm(x.data.data() + t * x.width, weight_.data(), x.width, eps_,
              o.data.data() + t * x.width);
  }

private:
  std::vector<float> weight_;
  float eps_;
};

class AddStep : public Step {
public:
  void run(StepContext &, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    const Value &a = *in[0], &b = *in[1];
    Value &o = *out[0];
    shape(o, a.rows, a.width);
    for (size_t i = 0; i < o.data.size(); ++i)
      o.data[i] = a.data[i] + b.data[i];
  }
};

class CopyStep : public Step {
public:
  void run(StepContext &, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    out[0]->rows = in[0]->rows;
    out[0]->width = in[0]->width;
    out[0]->data = in[0]->data;
    out[0]->ids = in[0]->ids;
  }
};

class AttentionStep : public Step {
public:
  AttentionStep(MlaAttention attention, size_t layer)
      : attention_(std::move(attention)), layer_(layer) {}
  void run(StepContext &ctx, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    const Value &x = *in[0];
    Value &o = *out[0];
    const int64_t hidden = attention_.shape().hidden;
    shape(o, x.rows, hidden);
    // Each sequence attends over its own cache.
    segments_.clear();
    for (const Segment &segment : ctx.segments)
      segments_.push_back({segment.row, segment.count, segment.start,
                           (*ctx.caches)[segment.sequence][layer_], segment.attentionPath});
    attention_.forward(ctx.pool, ctx.workspace, x.data.data(), x.rows, segments_,
                       o.data.data());
  }

private:
  MlaAttention attention_;
  size_t layer_;
  std::vector<MlaAttention::Segment> segments_;
};

class FeedForwardStep : public Step {
public:
  explicit FeedForwardStep(FfnMatrices w) : w_(w) {}
  void run(StepContext &ctx, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    const Value &x = *in[0];
    Value &o = *out[0];
    shape(o, x.rows, w_.down.rows);
    const size_t ffnFloats = static_cast<size_t>(x.rows * w_.gate.rows);
    FfnBatch batch{w_,
                   x.data.data(),
                   x.rows,
                   o.data.data(),
                   ctx.workspace.floats(Workspace::FfnGate, ffnFloats),
                   ctx.workspace.floats(Workspace::FfnUp, ffnFloats)};
    batches_.assign(1, batch); // kept: no allocation per token
    runFeedForward(ctx.pool, batches_);
  }

private:
  FfnMatrices w_;
  std::vector<FfnBatch> batches_;
};

class GateStep : public Step {
public:
  GateStep(std::string path, WeightMatrix router, std::vector<float> bias, RoutingParams params)
      : router_(router), bias_(std::move(bias)), params_(params),
        selections_(static_cast<size_t>(params.experts), 0) {
    stats_.path = std::move(path);
  }
  void run(StepContext &ctx, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    const Value &x = *in[0];
    Value &ids = *out[0], &weights = *out[1];
    const int64_t tokens = x.rows, experts = params_.experts, topK = params_.topK;
    float *logits =
        ctx.workspace.floats(Workspace::RouterLogits, static_cast<size_t>(tokens * experts));
    matmul(ctx.pool, router_, x.data.data(), tokens, logits);
    ids.rows = weights.rows = tokens;
    ids.width = weights.width = topK;
    ids.ids.resize(static_cast<size_t>(tokens * topK));
    weights.data.resize(static_cast<size_t>(tokens * topK));
    scratch_.resize(static_cast<size_t>(2 * experts + params_.groups));
    for (int64_t t = 0; t < tokens; ++t)
      routeToken(params_, logits + t * experts, bias_.empty() ? nullptr : bias_.data(),
                 ids.ids.data() + t * topK, weights.data.data() + t * topK, scratch_.data());
    for (int32_t expert : ids.ids)
      ++selections_[static_cast<size_t>(expert)];
  }

  RoutingStats stats() const {
    RoutingStats stats = stats_;
    stats.selections = selections_;
    return stats;
  }
  void clearStats() { std::fill(selections_.begin(), selections_.end(), 0); }

private:
  WeightMatrix router_;
  std::vector<float> bias_;
  RoutingParams params_;
  RoutingStats stats_;
  std::vector<uint64_t> selections_;
  std::vector<float> scratch_; // routeToken's, kept: no allocation per token
};

class ExpertsStep : public Step {
public:
  explicit ExpertsStep(RoutedExperts experts) : experts_(std::move(experts)) {}
  void run(StepContext &ctx, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    const Value &x = *in[0], &ids = *in[1], &weights = *in[2];
    Value &o = *out[0];
    shape(o, x.rows, experts_.hidden());
    segmentStarts_.clear();
    for (const Segment &segment : ctx.segments)
      segmentStarts_.push_back(segment.row);
    experts_.forward(ctx.pool, ctx.workspace, x.data.data(), x.rows, ids.ids.data(),
                     weights.data.data(), ids.width, o.data.data(), &segmentStarts_,
                     ctx.expertPhases);
  }
  const RoutedExperts &experts() const { return experts_; }

private:
  RoutedExperts experts_;
  std::vector<int64_t> segmentStarts_; // the step's sequences' first rows, kept
};

class LmHeadStep : public Step {
public:
  explicit LmHeadStep(WeightMatrix w) : w_(w) {}
  void run(StepContext &ctx, const std::vector<Value *> &in,
           const std::vector<Value *> &out) override {
    const Value &x = *in[0];
    Value &o = *out[0];
    if (!ctx.lastTokenOnly) {
      shape(o, x.rows, w_.rows);
      matmul(ctx.pool, w_, x.data.data(), x.rows, o.data.data());
      return;
    }
    // The last row of every segment, gathered.
    const int64_t rows = static_cast<int64_t>(ctx.segments.size());
    lastRows_.resize(static_cast<size_t>(rows * x.width));
    for (int64_t i = 0; i < rows; ++i) {
      const Segment &segment = ctx.segments[static_cast<size_t>(i)];
      std::memcpy(lastRows_.data() + i * x.width,
                  x.data.data() + (segment.row + segment.count - 1) * x.width,
                  static_cast<size_t>(x.width) * sizeof(float));
    }
    shape(o, rows, w_.rows);
    matmul(ctx.pool, w_, lastRows_.data(), rows, o.data.data());
  }

private:
  WeightMatrix w_;
  std::vector<float> lastRows_;
};

// ---------------------------------------------------------------- binding

// Kernel variants kt-select-kernels picks for CPU placements.
bool isCpuKernelVariant(const std::string &variant) {
  static const std::set<std::string> variants = {"amx", "avx512_bf16", "avx512_vnni",
                                                 "avx512", "avx2", "generic"};
  return variants.count(variant) > 0;
}

struct BoundStep {
  std::unique_ptr<Step> step;
  std::vector<int> inputs, outputs;
};

} // namespace

// ---------------------------------------------------------------- executor

class CpuExecutor::Impl {
public:
  Impl(int threads, const NumaTopology &numa) : pool(threads, numa) {}

  ThreadPool pool;
  Workspace workspace;
  std::vector<BoundStep> steps;
  std::vector<Value> values;
  std::vector<int> lastUse;      // per value: index of the last step reading it
  std::vector<std::vector<float>> spareBuffers;
  int outputValue = -1;
  int64_t vocab = 0;             // logits per token
  int64_t embeddingRows = 0;     // token ids accepted
  int64_t chunkSize = 0;
  exec::SequenceCaches sequences;                // per sequence: tokens in its cache
  std::vector<std::vector<float>> cacheStorage;
  std::vector<std::vector<LatentCache>> caches;  // [sequence][layer]
  AttentionPath attentionPath = AttentionPath::Automatic;
  std::string modelName;
  std::unique_ptr<GeneratedKernels> generated; // the plan's CPU expert code, if any
  int generatedExpertLayers = 0;
  int tileExpertLayers = 0;
  exec::NumaPlacement numaPlacement;
  std::unique_ptr<safetensors::Checkpoint> fp8; // the plan's --fp8-path checkpoint, if any
  std::unique_ptr<WeightConversions> conversions; // FP8 weights as q8_0
  int64_t expertGemmTokens = 0;
  int64_t expertTileTokens = 0;
  bool hugePageExperts = false; // ExecutorOptions::expertPages == "huge"
  bool profiling = false;
  exec::ExecutionProfile profile; // while profiling: CPU experts and the other steps

  Status bind(const plan::Plan &plan, const gguf::GgufModel &model, const std::string &planName);
  // One step over the tokens of several sequences (`tokens` holds each
  // segment's rows in order); writes the logits of each segment's last
  // token, or of every token, to `logits`.
  // `segments` is the caller's, handed back (its capacity kept) on return.
  void runStep(const int32_t *tokens, std::vector<Segment> &segments, bool lastTokenOnly,
               float *logits);
  // Scratch kept from step to step (nothing allocated per token once warm).
  std::vector<Segment> stepSegments;
  std::vector<Value *> stepIn, stepOut;
  void acquire(Value &v);
  void release(Value &v);
};

Status CpuExecutor::Impl::bind(const plan::Plan &plan, const gguf::GgufModel &model,
                               const std::string &planName) {
  int maxValue = plan.outputValue;
  for (const plan::Op &op : plan.ops)
    for (const std::vector<int> *ids : {&op.inputs, &op.outputs})
      for (int id : *ids)
        maxValue = std::max(maxValue, id);
  if (maxValue < 0)
    return Status::error(planName + " has no ops; recompile it with ktc compile.");
  std::vector<ValueInfo> info(static_cast<size_t>(maxValue + 1));
  info[0] = {ValueKind::Tokens, 1, 0, true};

  struct AttentionCacheShape {
    int64_t latent, rope;
  };
  std::vector<AttentionCacheShape> cacheShapes;

  for (size_t index = 0; index < plan.ops.size(); ++index) {
    const plan::Op &op = plan.ops[index];
    OpBinder b(op, index, model, planName, conversions.get());

    // Placement: this executor runs CPU plans only.
    for (const auto &[phase, device] :
         {std::pair<const char *, const std::string &>{"prefill", op.prefillDevice},
          {"decode", op.decodeDevice},
          {"output", op.outDevice}}) {
      if (device.empty() && std::string(phase) == "output")
        continue;
      if (device != "cpu")
        return Status::error(b.where() + " runs on " +
                             (device.empty() ? std::string("no device") : device) + " for " +
                             phase +
                             "; this executor runs plans whose ops are all placed on the CPU "
                             "(GPU execution comes with the GPU backend). Compile a CPU plan: "
                             "ktc compile --target-gpu none --optimize-config-path "
                             "rules/DeepSeek-V3-Chat-cpu-only.yaml.");
    }
    for (const auto &[key, kernel] : op.kernels) {
      const std::string variant = kernel.substr(kernel.rfind('.') + 1);
      if (!isCpuKernelVariant(variant))
        return Status::error(b.where() + " runs '" + key + "' with the GPU kernel " + kernel +
                             "; this executor runs plans whose ops are all placed on the CPU "
                             "(GPU execution comes with the GPU backend). Compile a CPU plan: "
                             "ktc compile --target-gpu none --optimize-config-path "
                             "rules/DeepSeek-V3-Chat-cpu-only.yaml.");
    }

    // Operands.
    std::vector<const ValueInfo *> in;
    auto defined = [&](int id) { return info[static_cast<size_t>(id)].defined; };
    if (Status flow = b.checkDataflow(maxValue, defined); !flow.ok())
      return flow;
    for (int id : op.inputs)
      in.push_back(&info[static_cast<size_t>(id)]);
    auto expectFloats = [&](size_t i, int64_t width) {
      b.require(in[i]->kind == ValueKind::Floats && in[i]->width == width,
                "expects input " + std::to_string(i) + " to have " + std::to_string(width) +
                    " features per token, but value " + std::to_string(op.inputs[i]) +
                    " has " + std::to_string(in[i]->width) +
                    "; the plan is damaged: recompile it.");
    };

    std::unique_ptr<Step> step;
    std::vector<ValueInfo> produced;
    const std::string &kind = op.kind;
    if (kind == "embedding") {
      if (!b.operands(1, 1))
        return b.status();
      b.require(in[0]->kind == ValueKind::Tokens, "must read the token ids (value 0).");
      const gguf::TensorInfo *table = b.tensor("weight", 2);
      if (table) {
        embeddingRows = table->ne[1];
        step = std::make_unique<EmbeddingStep>(weightMatrix(*table));
        produced.push_back({ValueKind::Floats, table->ne[0], 0, true});
      }
    } else if (kind == "rms_norm") {
      if (!b.operands(1, 1))
        return b.status();
      const int64_t width = in[0]->width;
      expectFloats(0, width);
      std::vector<float> weight = b.vector("weight", width);
      const float eps = static_cast<float>(b.real("eps"));
      step = std::make_unique<RmsNormStep>(std::move(weight), eps);
      produced.push_back({ValueKind::Floats, width, 0, true});
    } else if (kind == "add") {
      if (!b.operands(2, 1))
        return b.status();
      expectFloats(0, in[0]->width);
      expectFloats(1, in[0]->width);
      step = std::make_unique<AddStep>();
      produced.push_back({ValueKind::Floats, in[0]->width, 0, true});
    } else if (kind == "transfer") {
      if (!b.operands(1, 1))
        return b.status();
      step = std::make_unique<CopyStep>();
      produced.push_back(*in[0]);
    } else if (kind == "mla_attention") {
      if (!b.operands(1, 1))
        return b.status();
      MlaShape s;
      RopeConfig rope;
      b.attention(in[0]->width, s, rope);
      if (!b.ok())
        return b.status();
      const int64_t qkDim = s.nope + s.rope;
      MlaWeights w;
      if (s.qLoraRank > 0) {
        w.qA = b.matrix("q_a_proj", s.hidden, s.qLoraRank);
        w.qANorm = b.vector("q_a_norm", s.qLoraRank);
        w.qB = b.matrix("q_b_proj", s.qLoraRank, s.heads * qkDim);
      } else {
        w.q = b.matrix("q_proj", s.hidden, s.heads * qkDim);
      }
      w.kvA = b.matrix("kv_a_proj_with_mqa", s.hidden, s.kvLoraRank + s.rope);
      w.kvANorm = b.vector("kv_a_norm", s.kvLoraRank);
      if (const gguf::TensorInfo *kvB = b.tensor("kv_b_proj", 2, false)) {
        b.checkShape("kv_b_proj", *kvB, {s.kvLoraRank, s.heads * (s.nope + s.v)});
        w.kvB = weightMatrix(*kvB);
      }
      const gguf::TensorInfo *kB = b.tensor("k_b_proj", 3, false);
      const gguf::TensorInfo *vB = b.tensor("v_b_proj", 3, false);
      if (kB) {
        b.checkShape("k_b_proj", *kB, {s.nope, s.kvLoraRank, s.heads});
        w.kB = weightMatrix(*kB);
      }
      if (vB) {
        b.checkShape("v_b_proj", *vB, {s.kvLoraRank, s.v, s.heads});
        w.vB = weightMatrix(*vB);
      }
      b.require(w.kvB || (w.kB && w.vB),
                "has neither kv_b_proj nor both k_b_proj and v_b_proj; the model must carry "
                "the up-projection of the compressed KV in one of these forms.");
      w.o = b.matrix("o_proj", s.heads * s.v, s.hidden);
      if (!b.ok())
        return b.status();
      step = std::make_unique<AttentionStep>(MlaAttention(s, std::move(w), rope),
                                             cacheShapes.size());
      cacheShapes.push_back({s.kvLoraRank, s.rope});
      produced.push_back({ValueKind::Floats, s.hidden, 0, true});
    } else if (kind == "mlp" || kind == "shared_experts") {
      if (!b.operands(1, 1))
        return b.status();
      const int64_t hidden = in[0]->width;
      expectFloats(0, hidden);
      const gguf::TensorInfo *gate = b.tensor("gate_proj", 2);
      const int64_t ffn = gate ? gate->ne[1] : 0;
      FfnMatrices w{b.matrix("gate_proj", hidden, ffn), b.matrix("up_proj", hidden, ffn),
                    b.matrix("down_proj", ffn, hidden)};
      step = std::make_unique<FeedForwardStep>(w);
      produced.push_back({ValueKind::Floats, hidden, 0, true});
    } else if (kind == "moe_gate") {
      if (!b.operands(1, 2))
        return b.status();
      const int64_t hidden = in[0]->width;
      expectFloats(0, hidden);
      const RoutingParams p = b.routing();
      if (!b.ok())
        return b.status();
      WeightMatrix router = b.matrix("weight", hidden, p.experts);
      std::vector<float> bias = b.vector("e_score_correction_bias", p.experts, false);
      step = std::make_unique<GateStep>(op.path, router, std::move(bias), p);
      produced.push_back({ValueKind::ExpertIds, p.topK, p.experts, true});
      produced.push_back({ValueKind::Floats, p.topK, 0, true});
    } else if (kind == "routed_experts") {
      if (!b.operands(3, 1))
        return b.status();
      const int64_t hidden = in[0]->width;
      expectFloats(0, hidden);
      b.require(in[1]->kind == ValueKind::ExpertIds,
                "expects the expert ids of a moe_gate as input 1; the plan is damaged: "
                "recompile it.");
      expectFloats(2, in[1]->width);
      const OpBinder::ExpertTensors t = b.experts(hidden, in[1]->experts);
      if (!b.ok())
        return b.status();
      RoutedExperts routed(*t.gate, *t.up, *t.down, generated.get());
      routed.setGemmTokens(expertGemmTokens);
      routed.setTileTokens(expertTileTokens);
      if (expertTileTokens > 0 && routed.hasTileKernels())
        ++tileExpertLayers;
      if (routed.usesGeneratedKernels())
        ++generatedExpertLayers;
      if (Status placed = placeExperts(routed, pool, numaPlacement, hugePageExperts); !placed.ok())
        return placed;
      step = std::make_unique<ExpertsStep>(std::move(routed));
      produced.push_back({ValueKind::Floats, hidden, 0, true});
    } else if (kind == "lm_head") {
      if (!b.operands(1, 1))
        return b.status();
      const int64_t hidden = in[0]->width;
      expectFloats(0, hidden);
      const gguf::TensorInfo *weight = b.tensor("weight", 2);
      if (weight) {
        b.checkShape("weight", *weight, {hidden, weight->ne[1]});
        step = std::make_unique<LmHeadStep>(weightMatrix(*weight));
        produced.push_back({ValueKind::Floats, weight->ne[1], 0, true});
      }
    } else {
      return Status::error(b.where() + " has the unknown kind '" + kind +
                           "'; this runtime does not know it: use a ktc of the same version "
                           "as this runtime to compile the plan.");
    }
    if (!b.ok())
      return b.status();
    for (size_t i = 0; i < op.outputs.size(); ++i)
      info[static_cast<size_t>(op.outputs[i])] = produced[i];
    steps.push_back({std::move(step), op.inputs, op.outputs});
  }

  if (plan.outputValue <= 0 || !info[static_cast<size_t>(plan.outputValue)].defined ||
      info[static_cast<size_t>(plan.outputValue)].kind != ValueKind::Floats)
    return Status::error(planName + " has no logits output (output_value " +
                         std::to_string(plan.outputValue) +
                         "); the plan is damaged: recompile it.");
  if (steps.empty() || embeddingRows == 0)
    return Status::error(planName + " has no embedding op; recompile it with ktc compile.");
  outputValue = plan.outputValue;
  vocab = info[static_cast<size_t>(outputValue)].width;

  values.resize(info.size());
  lastUse.assign(info.size(), -1);
  for (size_t i = 0; i < steps.size(); ++i)
    for (int id : steps[i].inputs)
      lastUse[static_cast<size_t>(id)] = static_cast<int>(i);

  for (std::vector<LatentCache> &sequenceCaches : caches)
    for (const AttentionCacheShape &c : cacheShapes) {
      std::vector<float> latent(static_cast<size_t>(sequences.capacity() * c.latent));
      std::vector<float> rope(static_cast<size_t>(sequences.capacity() * c.rope));
      sequenceCaches.push_back({latent.data(), rope.data()});
      cacheStorage.push_back(std::move(latent));
      cacheStorage.push_back(std::move(rope));
    }
  return Status::success();
}

void CpuExecutor::Impl::acquire(Value &v) {
  if (v.data.empty() && !spareBuffers.empty()) {
    v.data = std::move(spareBuffers.back());
    spareBuffers.pop_back();
  }
}

void CpuExecutor::Impl::release(Value &v) {
  if (v.data.capacity() > 0) {
    spareBuffers.push_back(std::move(v.data));
    v.data = {};
  }
}

void CpuExecutor::Impl::runStep(const int32_t *tokens, std::vector<Segment> &segments,
                                bool lastTokenOnly, float *logits) {
  StepContext ctx{pool, workspace};
  int64_t rows = 0;
  for (Segment &segment : segments) {
    segment.row = rows;
    segment.start = sequences.position(segment.sequence);
    rows += segment.count;
    switch (attentionPath) {
    case AttentionPath::Automatic:
      segment.attentionPath =
          segment.count == 1 ? MlaAttention::Path::Absorbed : MlaAttention::Path::Expanded;
      break;
    case AttentionPath::Expanded: segment.attentionPath = MlaAttention::Path::Expanded; break;
    case AttentionPath::Absorbed: segment.attentionPath = MlaAttention::Path::Absorbed; break;
    }
  }
  ctx.segments = std::move(segments);
  ctx.lastTokenOnly = lastTokenOnly;
  ctx.caches = &caches;
  if (profiling)
    ctx.expertPhases = &profile.expertPhases;

  Value &input = values[0];
  input.rows = rows;
  input.width = 1;
  input.ids.assign(tokens, tokens + rows);

  std::vector<Value *> &in = stepIn, &out = stepOut;
  for (size_t i = 0; i < steps.size(); ++i) {
    BoundStep &s = steps[i];
    in.clear();
    out.clear();
    for (int id : s.inputs)
      in.push_back(&values[static_cast<size_t>(id)]);
    for (int id : s.outputs) {
      Value &v = values[static_cast<size_t>(id)];
      acquire(v);
      out.push_back(&v);
    }
    const auto start = std::chrono::steady_clock::now();
    s.step->run(ctx, in, out);
    if (profiling) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      (dynamic_cast<const ExpertsStep *>(s.step.get()) ? profile.cpuExpertSeconds
                                                       : profile.cpuOtherSeconds) += seconds;
    }
    for (int id : s.inputs)
      if (id != 0 && id != outputValue && lastUse[static_cast<size_t>(id)] == static_cast<int>(i))
        release(values[static_cast<size_t>(id)]);
  }
  const Value &result = values[static_cast<size_t>(outputValue)];
  std::memcpy(logits, result.data.data(), result.data.size() * sizeof(float));
  release(values[static_cast<size_t>(outputValue)]);
  for (const Segment &segment : ctx.segments)
    sequences.advance(segment.sequence, segment.count);
  segments = std::move(ctx.segments);
}

CpuExecutor::CpuExecutor(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CpuExecutor::~CpuExecutor() = default;

StatusOr<std::unique_ptr<CpuExecutor>> CpuExecutor::create(const plan::Plan &plan,
                                                           const gguf::GgufModel &model,
                                                           const ExecutorOptions &options) {
  const std::string planName =
      options.planPath.empty() ? std::string("the plan") : "plan " + options.planPath;
  const int64_t capacity = options.cacheLens > 0 ? options.cacheLens : plan.defaults.cacheLens;
  if (capacity <= 0)
    return Status::error("The KV cache length must be positive (" + planName +
                         " asks for " + std::to_string(capacity) +
                         "); pass --cache-lens with a positive number of tokens.");
  if (options.sequences < 1)
    return Status::error("The executor needs at least one sequence (KV cache slot), not " +
                         std::to_string(options.sequences) + ".");
  if (Status pages = exec::checkExpertPages(options.expertPages); !pages.ok())
    return pages;
  StatusOr<NumaTopology> numa = numaTopologyFor(options.numa);
  if (!numa)
    return numa.status();
  auto impl = std::make_unique<Impl>(options.threads, *numa);
  impl->sequences = exec::SequenceCaches(options.sequences, capacity);
  impl->expertGemmTokens = std::max<int64_t>(0, options.expertGemmTokens);
  impl->expertTileTokens = std::max<int64_t>(0, options.expertTileTokens);
  impl->hugePageExperts = options.expertPages == "huge";
  impl->caches.resize(static_cast<size_t>(options.sequences));
  impl->chunkSize = options.chunkSize > 0 ? options.chunkSize
                                          : std::max<int64_t>(1, plan.defaults.chunkSize);
  // The plan's CPU kernels were chosen for its target CPU; refuse a host
  // that lacks what they need rather than run into illegal instructions.
  if (Status isa = checkHostRunsPlan(plan, hostCpuFeatures(), planName); !isa.ok())
    return isa;
  if (plan.cpuCode) {
    // The generated expert code checks the host's ISA itself; the plan's
    // file locates it.
    const std::string codePlanPath = !options.planPath.empty() ? options.planPath : plan.sourcePath;
    StatusOr<std::unique_ptr<GeneratedKernels>> generated =
        GeneratedKernels::load(*plan.cpuCode, codePlanPath.empty() ? "plan" : codePlanPath,
                               hostCpuFeatures());
    if (!generated)
      return generated.status();
    impl->generated = std::move(*generated);
  }
  StatusOr<std::unique_ptr<safetensors::Checkpoint>> fp8 = openPlanFp8Checkpoint(plan, planName);
  if (!fp8)
    return fp8.status();
  impl->fp8 = std::move(*fp8);
  impl->conversions = std::make_unique<WeightConversions>(impl->fp8.get(), options.progress);
  Status bound = impl->bind(plan, model, planName);
  impl->conversions->finishProgress();
  if (!bound.ok())
    return bound;
  return std::unique_ptr<CpuExecutor>(new CpuExecutor(std::move(impl)));
}

exec::WeightConversionStats CpuExecutor::weightConversions() const {
  const WeightConversions &c = *impl_->conversions;
  return {c.convertedTensors(), c.convertedBytes(), c.convertSeconds()};
}

StatusOr<std::vector<float>> CpuExecutor::forward(const std::vector<int32_t> &tokens,
                                                  bool allPositions) {
  Impl &m = *impl_;
  if (Status valid = m.sequences.checkForward(tokens, m.embeddingRows); !valid.ok())
    return valid;
  const int64_t count = static_cast<int64_t>(tokens.size());
  std::vector<float> logits(static_cast<size_t>((allPositions ? count : 1) * m.vocab));
  for (int64_t begin = 0; begin < count; begin += m.chunkSize) {
    const int64_t chunk = std::min(m.chunkSize, count - begin);
    const bool last = begin + chunk == count;
    std::vector<Segment> &segment = m.stepSegments;
    segment.assign(1, Segment{});
    segment[0].count = chunk;
    if (allPositions)
      m.runStep(tokens.data() + begin, segment, false,
                logits.data() + static_cast<size_t>(begin * m.vocab));
    else if (last)
      m.runStep(tokens.data() + begin, segment, true, logits.data());
    else {
      std::vector<float> discarded(static_cast<size_t>(m.vocab));
      m.runStep(tokens.data() + begin, segment, true, discarded.data());
    }
  }
  return logits;
}

StatusOr<std::vector<float>> CpuExecutor::forwardBatch(const std::vector<SequenceTokens> &batch) {
  Impl &m = *impl_;
  if (Status valid = m.sequences.checkBatch(batch, m.embeddingRows); !valid.ok())
    return valid;
  std::vector<int32_t> tokens;
  std::vector<Segment> segments;
  for (const SequenceTokens &entry : batch) {
    const int64_t count = static_cast<int64_t>(entry.tokens.size());
    const size_t sequence = static_cast<size_t>(entry.sequence);
    tokens.insert(tokens.end(), entry.tokens.begin(), entry.tokens.end());
    Segment segment;
    segment.count = count;
    segment.sequence = sequence;
    segments.push_back(segment);
  }
  std::vector<float> logits(batch.size() * static_cast<size_t>(m.vocab));
  m.runStep(tokens.data(), segments, true, logits.data());
  return logits;
}

int64_t CpuExecutor::position(int sequence) const {
  return impl_->sequences.position(static_cast<size_t>(sequence));
}
int64_t CpuExecutor::cacheCapacity() const { return impl_->sequences.capacity(); }
int64_t CpuExecutor::chunkSize() const { return impl_->chunkSize; }
int CpuExecutor::generatedExpertLayers() const { return impl_->generatedExpertLayers; }
int CpuExecutor::tileExpertLayers() const { return impl_->tileExpertLayers; }

exec::NumaPlacement CpuExecutor::numaPlacement() const { return impl_->numaPlacement; }
std::vector<exec::HostBytes> CpuExecutor::routedExpertBytes() const {
  return routedExpertBytesOf<ExpertsStep>(impl_->steps);
}
void CpuExecutor::setProfiling(bool on) {
  impl_->profiling = on;
  impl_->profile = {};
  impl_->profile.available = true;
}
exec::ExecutionProfile CpuExecutor::profile() const { return impl_->profile; }
int CpuExecutor::sequenceCount() const { return impl_->sequences.count(); }
void CpuExecutor::reset(int sequence) { impl_->sequences.reset(static_cast<size_t>(sequence)); }
void CpuExecutor::truncate(int sequence, int64_t tokens) {
  impl_->sequences.truncate(static_cast<size_t>(sequence), tokens);
}

std::vector<RoutingStats> CpuExecutor::routingStats() const {
  std::vector<RoutingStats> stats;
  for (const BoundStep &bound : impl_->steps)
    if (auto *gate = dynamic_cast<const GateStep *>(bound.step.get()))
      stats.push_back(gate->stats());
  return stats;
}

void CpuExecutor::clearRoutingStats() {
  for (BoundStep &bound : impl_->steps)
    if (auto *gate = dynamic_cast<GateStep *>(bound.step.get()))
      gate->clearStats();
}

int64_t CpuExecutor::vocabSize() const { return impl_->vocab; }
int CpuExecutor::threadCount() const { return impl_->pool.threadCount(); }
void CpuExecutor::setAttentionPath(AttentionPath path) { impl_->attentionPath = path; }

} // namespace kt::cpu
