#include "runtime/support/ByteSize.h"
#include "tools/kt-gen-model/ModelGenerator.h"

#include "runtime/gguf/GgufStreamWriter.h"
#include "runtime/quant/Quant.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <sys/statvfs.h>
#include <thread>
#include <unistd.h>

namespace kt::gen {
namespace {

using gguf::KeyValue;
using gguf::Value;
using gguf::ValueType;

constexpr const char *kArch = "deepseek2";

// ---------------------------------------------------------------- metadata values

using gguf::boolValue;
using gguf::int32ArrayValue;
using gguf::signedValue;
using gguf::stringArrayValue;
using gguf::stringValue;
using gguf::unsignedValue;
// Rounded to the Float32 the file stores.
Value floatValue(double v) { return gguf::realValue(static_cast<float>(v)); }

// llama.cpp's LLAMA_FTYPE of a file whose bulk (the routed experts) is `type`.
uint32_t fileTypeOf(GgmlType type) {
  switch (type) {
  case GgmlType::F32: return 0;   // ALL_F32
  case GgmlType::F16: return 1;   // MOSTLY_F16
  case GgmlType::Q8_0: return 7;  // MOSTLY_Q8_0
  case GgmlType::Q4_K: return 15; // MOSTLY_Q4_K_M
  case GgmlType::Q5_K: return 17; // MOSTLY_Q5_K_M
  case GgmlType::Q6_K: return 18; // MOSTLY_Q6_K
  case GgmlType::BF16: return 32; // MOSTLY_BF16
  default: return 0;
  }
}

// ---------------------------------------------------------------- random numbers

uint64_t splitmix64(uint64_t &state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t mixSeed(uint64_t a, uint64_t b) {
  uint64_t state = a ^ (b * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull);
  return splitmix64(state);
}

uint64_t tensorSeed(uint64_t seed, const std::string &name) {
  uint64_t hash = 0xCBF29CE484222325ull; // FNV-1a
  for (unsigned char c : name)
    hash = (hash ^ c) * 0x100000001B3ull;
  return mixSeed(seed, hash);
}

// `count` values of mean + stddev * g, where g is the sum of four uniform
// 16-bit variables (the lanes of one 64-bit random number) rescaled to unit
// variance: Gaussian enough for weights (Irwin-Hall, bounded at 3.46 sigma),
// exactly zero-mean, and cheap, which keeps writing a DeepSeek-V3-sized model
// fast. Row `row` of a tensor always gets the same values, so chunking and
// threading don't change the output.
void gaussianRow(uint64_t seed, int64_t row, float mean, float stddev, float *out, int64_t count) {
  uint64_t state = mixSeed(seed, static_cast<uint64_t>(row));
  // Each lane is uniform on {0..65535}; +0.5 centres it, so the sum of four
  // has mean 131072 and variance 4 * 65536^2 / 12.
  const float scale = stddev * std::sqrt(3.0f) / 65536.0f;
  for (int64_t k = 0; k < count; ++k) {
    uint64_t r = splitmix64(state);
    int64_t sum = static_cast<int64_t>(r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) +
                  ((r >> 48) & 0xFFFF);
    out[k] = mean + scale * (static_cast<float>(sum - 131072) + 2.0f);
  }
}

// ---------------------------------------------------------------- presets

ModelConfig tinyPreset() {
  ModelConfig c;
  c.name = "kt-tiny-deepseek-v3";
  c.hiddenSize = 256;
  c.layerCount = 3;
  c.denseLayerCount = 1;
  c.denseFfnSize = 512;
  c.expertCount = 16;
  c.expertsUsed = 4;
  c.sharedExpertCount = 1;
  c.expertFfnSize = 256;
  c.expertGroupCount = 4;
  c.expertGroupsUsed = 2;
  c.headCount = 4;
  c.qLoraRank = 64;
  c.kvLoraRank = 64;
  c.qkNopeHeadDim = 32;
  c.qkRopeHeadDim = 16;
  c.vHeadDim = 32;
  return c;
}

ModelConfig demoPreset() {
  ModelConfig c;
  c.name = "kt-demo-deepseek-v3";
  c.hiddenSize = 512;
  c.layerCount = 4;
  c.denseLayerCount = 1;
  c.denseFfnSize = 1024;
  c.expertCount = 32;
  c.expertsUsed = 4;
  c.sharedExpertCount = 1;
  c.expertFfnSize = 256;
  c.expertGroupCount = 4;
  c.expertGroupsUsed = 2;
  c.headCount = 8;
  c.qLoraRank = 128;
  c.kvLoraRank = 128;
  c.qkNopeHeadDim = 64;
  c.qkRopeHeadDim = 32;
  c.vHeadDim = 64;
  return c;
}

// DeepSeek-V3's config.json (and R1's, which has the same shapes).
ModelConfig v3Preset() {
  ModelConfig c;
  c.name = "kt-random-deepseek-v3";
  c.hiddenSize = 7168;
  c.layerCount = 61;
  c.denseLayerCount = 3;
  c.denseFfnSize = 18432;
  c.expertCount = 256;
  c.expertsUsed = 8;
  c.sharedExpertCount = 1;
  c.expertFfnSize = 2048;
  c.expertGroupCount = 8;
  c.expertGroupsUsed = 4;
  c.headCount = 128;
  c.qLoraRank = 1536;
  c.kvLoraRank = 512;
  c.qkNopeHeadDim = 128;
  c.qkRopeHeadDim = 64;
  c.vHeadDim = 128;
  return c;
}

std::string typeName(GgmlType type) { return std::string(gguf::ggmlTypeName(type)); }

bool isFloatType(GgmlType type) {
  return type == GgmlType::F32 || type == GgmlType::F16 || type == GgmlType::BF16;
}

// Where a tensor's rows don't fit the requested type's blocks (e.g. attn_k_b
// rows of 128 values with q4_K's 256-value blocks) llama.cpp's quantizer
// falls back to another type; this generator picks q8_0, or f16 when even
// 32-value blocks don't fit.
GgmlType fittingType(GgmlType requested, int64_t rowLength) {
  if (gguf::ggmlRowBytes(requested, rowLength))
    return requested;
  if (gguf::ggmlRowBytes(GgmlType::Q8_0, rowLength) && !isFloatType(requested))
    return GgmlType::Q8_0;
  return GgmlType::F16;
}


std::string directoryOf(const std::string &path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos)
    return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

} // namespace

// ---------------------------------------------------------------- names

std::string_view attentionLayoutName(AttentionLayout layout) {
  switch (layout) {
  case AttentionLayout::Joint: return "joint";
  case AttentionLayout::Split: return "split";
  case AttentionLayout::Both: return "both";
  }
  return "split";
}

std::optional<AttentionLayout> parseAttentionLayout(std::string_view name) {
  if (name == "joint")
    return AttentionLayout::Joint;
  if (name == "split")
    return AttentionLayout::Split;
  if (name == "both")
    return AttentionLayout::Both;
  return std::nullopt;
}

std::string_view gatingFunctionName(GatingFunction gating) {
  return gating == GatingFunction::Softmax ? "softmax" : "sigmoid";
}

std::optional<GatingFunction> parseGatingFunction(std::string_view name) {
  if (name == "softmax")
    return GatingFunction::Softmax;
  if (name == "sigmoid")
    return GatingFunction::Sigmoid;
  return std::nullopt;
}

std::string_view weightClassName(WeightClass weightClass) {
  switch (weightClass) {
  case WeightClass::Embedding: return "embed";
  case WeightClass::Output: return "output";
  case WeightClass::Attention: return "attn";
  case WeightClass::Dense: return "dense";
  case WeightClass::SharedExperts: return "shared-experts";
  case WeightClass::Experts: return "experts";
  case WeightClass::Router: return "router";
  case WeightClass::Norm: return "norm";
  case WeightClass::ExpertBias: return "expert-bias";
  }
  return "?";
}

GgmlType TensorTypes::of(WeightClass weightClass) const {
  switch (weightClass) {
  case WeightClass::Embedding: return embedding;
  case WeightClass::Output: return output;
  case WeightClass::Attention: return attention;
  case WeightClass::Dense: return dense;
  case WeightClass::SharedExperts: return sharedExperts;
  case WeightClass::Experts: return experts;
  case WeightClass::Router: return router;
  case WeightClass::Norm: return norm;
  case WeightClass::ExpertBias: return GgmlType::F32;
  }
  return GgmlType::F32;
}

std::string quantizableTypeNames() {
  std::string names;
  for (uint32_t id = 0; id < 64; ++id) {
    std::optional<gguf::GgmlTypeTraits> traits = gguf::ggmlTypeTraits(id);
    if (traits && traits->quantizable)
      names += (names.empty() ? "" : ", ") + std::string(traits->name);
  }
  return names;
}

const std::vector<std::string> &presetNames() {
  static const std::vector<std::string> names = {"tiny", "demo", "v3"};
  return names;
}

StatusOr<ModelConfig> presetConfig(std::string_view preset) {
  if (preset == "tiny")
    return tinyPreset();
  if (preset == "demo")
    return demoPreset();
  if (preset == "v3")
    return v3Preset();
  return Status::error("Unknown preset '" + std::string(preset) +
                       "'; choose tiny, demo or v3.");
}

// ---------------------------------------------------------------- validation

Status validateConfig(const ModelConfig &c) {
  auto positive = [](int64_t value, const char *option) -> Status {
    if (value <= 0)
      return Status::error(std::string(option) + " must be at least 1 (got " +
                           std::to_string(value) + ").");
    return Status::success();
  };
  const std::pair<int64_t, const char *> required[] = {
      {c.hiddenSize, "--hidden"},         {c.layerCount, "--layers"},
      {c.denseFfnSize, "--dense-ffn"},    {c.expertCount, "--experts"},
      {c.expertsUsed, "--experts-used"},  {c.expertFfnSize, "--expert-ffn"},
      {c.expertGroupCount, "--groups"},   {c.expertGroupsUsed, "--groups-used"},
      {c.headCount, "--heads"},           {c.kvLoraRank, "--kv-lora-rank"},
      {c.qkNopeHeadDim, "--qk-nope-dim"}, {c.qkRopeHeadDim, "--qk-rope-dim"},
      {c.vHeadDim, "--v-head-dim"},       {c.contextLength, "--context-length"},
  };
  for (const auto &[value, option] : required) {
    Status status = positive(value, option);
    if (!status.ok())
      return status;
  }
  if (c.sharedExpertCount < 1)
    return Status::error("--shared-experts must be at least 1 (got " +
                         std::to_string(c.sharedExpertCount) +
                         "): the deepseek2 architecture always has shared experts, and "
                         "llama.cpp's loader requires their tensors.");
  if (c.denseLayerCount < 0 || c.denseLayerCount > c.layerCount)
    return Status::error("--dense-layers (" + std::to_string(c.denseLayerCount) +
                         ") must be between 0 and --layers (" + std::to_string(c.layerCount) +
                         ").");
  if (c.qLoraRank < 0)
    return Status::error("--q-lora-rank must be 0 (no query compression) or positive (got " +
                         std::to_string(c.qLoraRank) + ").");
  if (c.expertsUsed > c.expertCount)
    return Status::error("--experts-used (" + std::to_string(c.expertsUsed) +
                         ") must not exceed --experts (" + std::to_string(c.expertCount) +
                         "): a token cannot be routed to more experts than a layer has.");
  if (c.expertCount % c.expertGroupCount != 0)
    return Status::error("--groups (" + std::to_string(c.expertGroupCount) +
                         ") must divide --experts (" + std::to_string(c.expertCount) +
                         ") so that every group holds the same number of experts.");
  if (c.expertGroupsUsed > c.expertGroupCount)
    return Status::error("--groups-used (" + std::to_string(c.expertGroupsUsed) +
                         ") must not exceed --groups (" + std::to_string(c.expertGroupCount) +
                         ").");
  int64_t selectable = c.expertGroupsUsed * (c.expertCount / c.expertGroupCount);
  if (selectable < c.expertsUsed)
    return Status::error("--groups-used " + std::to_string(c.expertGroupsUsed) + " of " +
                         std::to_string(c.expertGroupCount) + " groups leaves " +
                         std::to_string(selectable) + " experts to choose from, fewer than "
                         "--experts-used (" + std::to_string(c.expertsUsed) +
                         "); raise --groups-used or lower --experts-used.");
  if (c.qkRopeHeadDim % 2 != 0)
    return Status::error("--qk-rope-dim (" + std::to_string(c.qkRopeHeadDim) +
                         ") must be even: RoPE rotates pairs of dimensions.");
  if (!(c.rmsNormEps > 0.0))
    return Status::error("--rms-eps must be positive.");
  if (!(c.ropeFreqBase > 0.0))
    return Status::error("--rope-freq-base must be positive.");
  if (c.yarnFactor < 1.0 && c.yarnFactor != 0.0)
    return Status::error("--yarn-factor must be 0 or 1 (no YaRN scaling) or greater than 1.");
  if (c.yarnFactor > 1.0 && c.yarnOriginalContext <= 0)
    return Status::error("--yarn-original-context must be positive when --yarn-factor > 1.");
  if (!(c.routedScalingFactor > 0.0))
    return Status::error("--routed-scaling-factor must be positive.");
  if (c.vocabSize < 0)
    return Status::error("--vocab-size must not be negative.");

  const std::pair<GgmlType, const char *> types[] = {
      {c.types.embedding, "--type-embed"},  {c.types.output, "--type-output"},
      {c.types.attention, "--type-attn"},   {c.types.dense, "--type-dense"},
      {c.types.sharedExperts, "--type-shared-experts"},
      {c.types.experts, "--type-experts"},  {c.types.router, "--type-router"},
      {c.types.norm, "--type-norm"},
  };
  for (const auto &[type, option] : types) {
    if (!gguf::ggmlTypeTraits(type).quantizable)
      return Status::error(std::string(option) + " " + typeName(type) +
                           ": this project cannot quantize to that type yet; use one of " +
                           quantizableTypeNames() + ".");
  }
  if (!isFloatType(c.types.norm))
    return Status::error("--type-norm " + typeName(c.types.norm) +
                         ": norm weights are stored as f32, f16 or bf16.");
  return Status::success();
}

// ---------------------------------------------------------------- plan

int64_t PlannedTensor::elements() const {
  int64_t n = 1;
  for (int64_t d : ne)
    n *= d;
  return n;
}

uint64_t PlannedTensor::bytes() const {
  return *gguf::ggmlRowBytes(type, ne[0]) * static_cast<uint64_t>(rows());
}

uint64_t ModelPlan::tensorBytes() const {
  uint64_t total = 0;
  for (const PlannedTensor &t : tensors)
    total += t.bytes();
  return total;
}

uint64_t ModelPlan::parameterCount() const {
  uint64_t total = 0;
  for (const PlannedTensor &t : tensors)
    total += static_cast<uint64_t>(t.elements());
  return total;
}

std::vector<KeyValue> buildMetadata(const ModelConfig &c, const Vocabulary &vocab) {
  std::vector<KeyValue> kv;
  auto add = [&](std::string key, Value value) { kv.push_back({std::move(key), std::move(value)}); };
  auto arch = [](const char *key) { return std::string(kArch) + "." + key; };

  add("general.architecture", stringValue(kArch));
  add("general.type", stringValue("model"));
  add("general.name", stringValue(c.name));
  add("general.file_type", unsignedValue(fileTypeOf(c.types.experts)));
  add("general.quantization_version", unsignedValue(2));

  add(arch("block_count"), unsignedValue(c.layerCount));
  add(arch("context_length"), unsignedValue(c.contextLength));
  add(arch("embedding_length"), unsignedValue(c.hiddenSize));
  add(arch("feed_forward_length"), unsignedValue(c.denseFfnSize));
  add(arch("attention.head_count"), unsignedValue(c.headCount));
  // Since the attn_k_b/attn_v_b split the converter stores MLA as
  // multi-query attention over the compressed latent (one KV head); older
  // joint files kept the config's num_key_value_heads, which equals the head
  // count, and llama.cpp sizes their (decompressed) KV cache by it.
  add(arch("attention.head_count_kv"),
      unsignedValue(c.attention == AttentionLayout::Joint ? c.headCount : 1));
  add(arch("rope.freq_base"), floatValue(c.ropeFreqBase));
  add(arch("attention.layer_norm_rms_epsilon"), floatValue(c.rmsNormEps));
  add(arch("expert_used_count"), unsignedValue(c.expertsUsed));
  add(arch("expert_group_count"), unsignedValue(c.expertGroupCount));
  add(arch("expert_group_used_count"), unsignedValue(c.expertGroupsUsed));
  add(arch("expert_gating_func"), unsignedValue(static_cast<uint32_t>(c.gating)));
  add(arch("leading_dense_block_count"), unsignedValue(c.denseLayerCount));
  add(arch("vocab_size"), unsignedValue(vocab.tokens.size()));
  // The converter omits q_lora_rank for models without query compression,
  // but llama.cpp then only loads them at 26 or 27 layers; 0 says the same
  // thing and loads at any depth.
  add(arch("attention.q_lora_rank"), unsignedValue(c.qLoraRank));
  add(arch("attention.kv_lora_rank"), unsignedValue(c.kvLoraRank));
  if (c.attention == AttentionLayout::Joint) {
    // Files from before the attn_k_b/attn_v_b split describe the
    // decompressed multi-head attention.
    add(arch("attention.key_length"), unsignedValue(c.qkNopeHeadDim + c.qkRopeHeadDim));
    add(arch("attention.value_length"), unsignedValue(c.vHeadDim));
  } else {
    // Since the split, key/value_length describe the latent (MQA) form and
    // the *_mla keys the decompressed heads; their presence tells llama.cpp
    // to load attn_k_b/attn_v_b.
    add(arch("attention.key_length"), unsignedValue(c.kvLoraRank + c.qkRopeHeadDim));
    add(arch("attention.value_length"), unsignedValue(c.kvLoraRank));
    add(arch("attention.key_length_mla"), unsignedValue(c.qkNopeHeadDim + c.qkRopeHeadDim));
    add(arch("attention.value_length_mla"), unsignedValue(c.vHeadDim));
  }
  add(arch("expert_feed_forward_length"), unsignedValue(c.expertFfnSize));
  add(arch("expert_count"), unsignedValue(c.expertCount));
  add(arch("expert_shared_count"), unsignedValue(c.sharedExpertCount));
  add(arch("expert_weights_scale"), floatValue(c.routedScalingFactor));
  add(arch("expert_weights_norm"), boolValue(c.normTopkProb));
  add(arch("rope.dimension_count"), unsignedValue(c.qkRopeHeadDim));
  if (c.yarnFactor > 1.0) {
    add(arch("rope.scaling.type"), stringValue("yarn"));
    add(arch("rope.scaling.factor"), floatValue(c.yarnFactor));
    add(arch("rope.scaling.original_context_length"), unsignedValue(c.yarnOriginalContext));
    add(arch("rope.scaling.yarn_log_multiplier"), floatValue(c.yarnLogMultiplier));
  }

  add("tokenizer.ggml.model", stringValue(vocab.model));
  add("tokenizer.ggml.pre", stringValue(vocab.pre));
  add("tokenizer.ggml.tokens", stringArrayValue(vocab.tokens));
  std::vector<int32_t> types;
  types.reserve(vocab.tokenTypes.size());
  for (TokenType type : vocab.tokenTypes)
    types.push_back(static_cast<int32_t>(type));
  add("tokenizer.ggml.token_type", int32ArrayValue(types));
  add("tokenizer.ggml.merges", stringArrayValue(vocab.merges));
  if (vocab.bosId)
    add("tokenizer.ggml.bos_token_id", unsignedValue(*vocab.bosId));
  if (vocab.eosId)
    add("tokenizer.ggml.eos_token_id", unsignedValue(*vocab.eosId));
  if (vocab.padId)
    add("tokenizer.ggml.padding_token_id", unsignedValue(*vocab.padId));
  if (vocab.addBos)
    add("tokenizer.ggml.add_bos_token", boolValue(*vocab.addBos));
  if (vocab.addEos)
    add("tokenizer.ggml.add_eos_token", boolValue(*vocab.addEos));
  if (!vocab.chatTemplate.empty())
    add("tokenizer.chat_template", stringValue(vocab.chatTemplate));
  return kv;
}

StatusOr<ModelPlan> planModel(const ModelConfig &config, Vocabulary vocabulary) {
  Status valid = validateConfig(config);
  if (!valid.ok())
    return valid;
  if (vocabulary.tokens.empty())
    return Status::error("The vocabulary is empty; pass a tokenizer.json or use the built-in one.");
  if (vocabulary.tokenTypes.size() != vocabulary.tokens.size())
    return Status::error("Internal error: the vocabulary has " +
                         std::to_string(vocabulary.tokens.size()) + " tokens but " +
                         std::to_string(vocabulary.tokenTypes.size()) + " token types.");
  if (config.vocabSize > 0) {
    Status padded = padVocabulary(vocabulary, config.vocabSize);
    if (!padded.ok())
      return padded;
  }

  ModelPlan plan;
  plan.config = config;
  const ModelConfig &c = plan.config;
  const int64_t vocab = vocabulary.size();
  const int64_t qkHeadDim = c.qkNopeHeadDim + c.qkRopeHeadDim;
  auto inverseSqrt = [](int64_t fanIn) { return 1.0f / std::sqrt(static_cast<float>(fanIn)); };

  auto add = [&](std::string name, std::vector<int64_t> ne, WeightClass weightClass, float mean,
                 float stddev, WeightInit init = WeightInit::Gaussian,
                 const std::string &seedName = "") {
    PlannedTensor t;
    t.requestedType = c.types.of(weightClass);
    t.type = fittingType(t.requestedType, ne[0]);
    t.seed = tensorSeed(c.seed, seedName.empty() ? name : seedName);
    t.name = std::move(name);
    t.ne = std::move(ne);
    t.weightClass = weightClass;
    t.init = init;
    t.mean = mean;
    t.stddev = stddev;
    plan.tensors.push_back(std::move(t));
  };
  // Norm weights sit near 1 like trained ones; linear weights have variance
  // 1/fan_in so activations keep their scale from layer to layer, and the
  // router's logits vary enough that tokens pick different experts.
  constexpr float kNormSpread = 0.05f;
  constexpr float kExpertBiasSpread = 0.05f;

  add("token_embd.weight", {c.hiddenSize, vocab}, WeightClass::Embedding, 0.0f, 1.0f);
  for (int64_t layer = 0; layer < c.layerCount; ++layer) {
    const std::string p = "blk." + std::to_string(layer) + ".";
    add(p + "attn_norm.weight", {c.hiddenSize}, WeightClass::Norm, 1.0f, kNormSpread);
    if (c.qLoraRank > 0) {
      add(p + "attn_q_a_norm.weight", {c.qLoraRank}, WeightClass::Norm, 1.0f, kNormSpread);
      add(p + "attn_q_a.weight", {c.hiddenSize, c.qLoraRank}, WeightClass::Attention, 0.0f,
          inverseSqrt(c.hiddenSize));
      add(p + "attn_q_b.weight", {c.qLoraRank, c.headCount * qkHeadDim}, WeightClass::Attention,
          0.0f, inverseSqrt(c.qLoraRank));
    } else {
      add(p + "attn_q.weight", {c.hiddenSize, c.headCount * qkHeadDim}, WeightClass::Attention,
          0.0f, inverseSqrt(c.hiddenSize));
    }
    add(p + "attn_kv_a_norm.weight", {c.kvLoraRank}, WeightClass::Norm, 1.0f, kNormSpread);
    add(p + "attn_kv_a_mqa.weight", {c.hiddenSize, c.kvLoraRank + c.qkRopeHeadDim},
        WeightClass::Attention, 0.0f, inverseSqrt(c.hiddenSize));
    // attn_k_b and attn_v_b hold exactly the values of attn_kv_b (before
    // conversion to their types), so every layout describes the same model.
    const std::string kvB = p + "attn_kv_b.weight";
    const float kvBStddev = inverseSqrt(c.kvLoraRank);
    if (c.attention != AttentionLayout::Split)
      add(kvB, {c.kvLoraRank, c.headCount * (c.qkNopeHeadDim + c.vHeadDim)},
          WeightClass::Attention, 0.0f, kvBStddev);
    if (c.attention != AttentionLayout::Joint) {
      add(p + "attn_k_b.weight", {c.qkNopeHeadDim, c.kvLoraRank, c.headCount},
          WeightClass::Attention, 0.0f, kvBStddev, WeightInit::KvBSplitK, kvB);
      add(p + "attn_v_b.weight", {c.kvLoraRank, c.vHeadDim, c.headCount},
          WeightClass::Attention, 0.0f, kvBStddev, WeightInit::KvBSplitV, kvB);
    }
    add(p + "attn_output.weight", {c.headCount * c.vHeadDim, c.hiddenSize},
        WeightClass::Attention, 0.0f, inverseSqrt(c.headCount * c.vHeadDim));
    add(p + "ffn_norm.weight", {c.hiddenSize}, WeightClass::Norm, 1.0f, kNormSpread);
    if (layer < c.denseLayerCount) {
      add(p + "ffn_gate.weight", {c.hiddenSize, c.denseFfnSize}, WeightClass::Dense, 0.0f,
          inverseSqrt(c.hiddenSize));
      add(p + "ffn_up.weight", {c.hiddenSize, c.denseFfnSize}, WeightClass::Dense, 0.0f,
          inverseSqrt(c.hiddenSize));
      add(p + "ffn_down.weight", {c.denseFfnSize, c.hiddenSize}, WeightClass::Dense, 0.0f,
          inverseSqrt(c.denseFfnSize));
      continue;
    }
    add(p + "ffn_gate_inp.weight", {c.hiddenSize, c.expertCount}, WeightClass::Router, 0.0f,
        inverseSqrt(c.hiddenSize));
    if (c.gating == GatingFunction::Sigmoid)
      add(p + "exp_probs_b.bias", {c.expertCount}, WeightClass::ExpertBias, 0.0f,
          kExpertBiasSpread);
    add(p + "ffn_gate_exps.weight", {c.hiddenSize, c.expertFfnSize, c.expertCount},
        WeightClass::Experts, 0.0f, inverseSqrt(c.hiddenSize));
    add(p + "ffn_up_exps.weight", {c.hiddenSize, c.expertFfnSize, c.expertCount},
        WeightClass::Experts, 0.0f, inverseSqrt(c.hiddenSize));
    add(p + "ffn_down_exps.weight", {c.expertFfnSize, c.hiddenSize, c.expertCount},
        WeightClass::Experts, 0.0f, inverseSqrt(c.expertFfnSize));
    const int64_t sharedFfn = c.expertFfnSize * c.sharedExpertCount;
    add(p + "ffn_gate_shexp.weight", {c.hiddenSize, sharedFfn}, WeightClass::SharedExperts, 0.0f,
        inverseSqrt(c.hiddenSize));
    add(p + "ffn_up_shexp.weight", {c.hiddenSize, sharedFfn}, WeightClass::SharedExperts, 0.0f,
        inverseSqrt(c.hiddenSize));
    add(p + "ffn_down_shexp.weight", {sharedFfn, c.hiddenSize}, WeightClass::SharedExperts, 0.0f,
        inverseSqrt(sharedFfn));
  }
  add("output_norm.weight", {c.hiddenSize}, WeightClass::Norm, 1.0f, kNormSpread);
  add("output.weight", {c.hiddenSize, vocab}, WeightClass::Output, 0.0f,
      inverseSqrt(c.hiddenSize));

  plan.metadata = buildMetadata(c, vocabulary);
  plan.vocabulary = std::move(vocabulary);
  return plan;
}

// ---------------------------------------------------------------- values

void generateRows(const PlannedTensor &t, const ModelConfig &c, int64_t firstRow,
                  int64_t rowCount, float *out) {
  const int64_t rowLength = t.ne[0];
  const int64_t kvBRowsPerHead = c.qkNopeHeadDim + c.vHeadDim;
  switch (t.init) {
  case WeightInit::Gaussian:
    for (int64_t r = 0; r < rowCount; ++r)
      gaussianRow(t.seed, firstRow + r, t.mean, t.stddev, out + r * rowLength, rowLength);
    return;
  case WeightInit::KvBSplitV: {
    // attn_v_b row (j, h) is attn_kv_b row h*(nope+v) + nope + j.
    for (int64_t r = 0; r < rowCount; ++r) {
      int64_t row = firstRow + r;
      int64_t head = row / c.vHeadDim, j = row % c.vHeadDim;
      gaussianRow(t.seed, head * kvBRowsPerHead + c.qkNopeHeadDim + j, t.mean, t.stddev,
                  out + r * rowLength, rowLength);
    }
    return;
  }
  case WeightInit::KvBSplitK: {
    // attn_k_b element (j, c, h) is attn_kv_b element (c, h*(nope+v) + j):
    // the key rows of each head, transposed.
    std::vector<float> keyRows(static_cast<size_t>(c.qkNopeHeadDim * c.kvLoraRank));
    int64_t loadedHead = -1;
    for (int64_t r = 0; r < rowCount; ++r) {
      int64_t row = firstRow + r;
      int64_t head = row / c.kvLoraRank, column = row % c.kvLoraRank;
      if (head != loadedHead) {
        for (int64_t j = 0; j < c.qkNopeHeadDim; ++j)
          gaussianRow(t.seed, head * kvBRowsPerHead + j, t.mean, t.stddev,
                      keyRows.data() + j * c.kvLoraRank, c.kvLoraRank);
        loadedHead = head;
      }
      for (int64_t j = 0; j < c.qkNopeHeadDim; ++j)
        out[r * rowLength + j] = keyRows[j * c.kvLoraRank + column];
    }
    return;
  }
  }
}

bool usesQ4KSynthesis(const PlannedTensor &t, const ModelConfig &c) {
  return c.synthesizeQ4K && t.type == GgmlType::Q4_K && t.init == WeightInit::Gaussian &&
         t.mean == 0.0f;
}

void synthesizeQ4KRows(const PlannedTensor &t, int64_t firstRow, int64_t rowCount,
                       uint8_t *out) {
  constexpr int64_t kBlock = 256, kBlockBytes = 144;
  // Levels v = q - 7.5 of floor(8 + kLevelSpread * g) have standard deviation
  // sqrt(kLevelSpread^2 + 1/12) (rounding adds a uniform's variance); a
  // value is d * 2 * v.
  constexpr float kLevelSpread = 2.5f;
  const float levelStddev = std::sqrt(kLevelSpread * kLevelSpread + 1.0f / 12.0f);
  const uint16_t d = quant::floatToHalf(t.stddev / (2.0f * levelStddev));
  const int64_t rowLength = t.ne[0];
  const int64_t blocksPerRow = rowLength / kBlock;
  const float toLevel = kLevelSpread * std::sqrt(3.0f) / 65536.0f;
  uint8_t levels[kBlock];
  for (int64_t r = 0; r < rowCount; ++r) {
    uint64_t state = mixSeed(t.seed, static_cast<uint64_t>(firstRow + r));
    for (int64_t b = 0; b < blocksPerRow; ++b) {
      for (int k = 0; k < kBlock; ++k) {
        uint64_t bits = splitmix64(state);
        int64_t sum = static_cast<int64_t>(bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) +
                      ((bits >> 32) & 0xFFFF) + ((bits >> 48) & 0xFFFF);
        float g = toLevel * (static_cast<float>(sum - 131072) + 2.0f);
        int level = static_cast<int>(std::floor(8.0f + g));
        levels[k] = static_cast<uint8_t>(std::clamp(level, 0, 15));
      }
      uint8_t *block = out + (r * blocksPerRow + b) * kBlockBytes;
      std::memcpy(block, &d, 2);     // d
      std::memcpy(block + 2, &d, 2); // dmin
      // 6-bit scales and mins, GGML's get_scale_min_k4 packing: sub-blocks
      // 0-3 in bytes 0-3 (scale) and 4-7 (min), sub-blocks 4-7 as nibbles
      // of bytes 8-11 (both values < 16, so no high bits elsewhere).
      for (int j = 0; j < 4; ++j) {
        block[4 + j] = 2;
        block[8 + j] = 15;
        block[12 + j] = static_cast<uint8_t>(2 | (15 << 4));
      }
      // Each 32-byte group holds 64 values: low nibbles first, then high.
      uint8_t *qs = block + 16;
      for (int group = 0; group < 4; ++group)
        for (int l = 0; l < 32; ++l)
          qs[group * 32 + l] = static_cast<uint8_t>(levels[group * 64 + l] |
                                                    (levels[group * 64 + 32 + l] << 4));
    }
  }
}

// ---------------------------------------------------------------- writing

std::vector<std::string> splitPaths(const std::string &outputPath, int64_t count) {
  std::string prefix = outputPath;
  const std::string suffix = ".gguf";
  if (prefix.size() > suffix.size() &&
      prefix.compare(prefix.size() - suffix.size(), suffix.size(), suffix) == 0)
    prefix.resize(prefix.size() - suffix.size());
  std::vector<std::string> paths;
  for (int64_t i = 0; i < count; ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "-%05lld-of-%05lld.gguf", static_cast<long long>(i + 1),
                  static_cast<long long>(count));
    paths.push_back(prefix + name);
  }
  return paths;
}

StatusOr<std::vector<int64_t>> assignSplits(const ModelPlan &plan, const WriteOptions &options) {
  const int64_t n = static_cast<int64_t>(plan.tensors.size());
  std::vector<int64_t> fileOf(plan.tensors.size(), 0);
  if (options.splitCount > 1 && options.splitMaxTensors > 0)
    return Status::error("Use either --split-count or --split-max-tensors, not both.");
  if (options.splitCount < 0 || options.splitMaxTensors < 0)
    return Status::error("--split-count and --split-max-tensors must not be negative.");
  if (options.splitMaxTensors > 0) {
    for (int64_t i = 0; i < n; ++i)
      fileOf[i] = i / options.splitMaxTensors;
    return fileOf;
  }
  if (options.splitCount <= 1)
    return fileOf;
  const int64_t files = options.splitCount;
  if (files > n)
    return Status::error("--split-count " + std::to_string(files) + " asks for more files than the " +
                         std::to_string(n) + " tensors of this model; every part needs a tensor.");
  // Balance the parts by bytes, keeping tensor order and at least one tensor
  // per part.
  uint64_t total = plan.tensorBytes();
  uint64_t done = 0;
  int64_t file = 0, inFile = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (inFile > 0 && file < files - 1) {
      bool mustMove = (n - i) == (files - file - 1);
      bool reachedShare =
          static_cast<long double>(done) >= static_cast<long double>(total) * (file + 1) / files;
      if (mustMove || reachedShare) {
        ++file;
        inFile = 0;
      }
    }
    fileOf[i] = file;
    ++inFile;
    done += plan.tensors[i].bytes();
  }
  return fileOf;
}

namespace {

struct WorkItem {
  size_t tensor;
  int64_t firstRow;
  int64_t rowCount;
};

// Rows per work item: about a megabyte of f32 values, so that work spreads
// over threads and memory stays small even for 2 GB expert tensors.
int64_t rowsPerItem(const PlannedTensor &t) {
  constexpr int64_t kTargetElements = int64_t(1) << 18;
  return std::max<int64_t>(1, kTargetElements / t.ne[0]);
}

Status checkFreeSpace(const std::vector<std::string> &paths, uint64_t bytesNeeded) {
  struct statvfs info {};
  std::string directory = directoryOf(paths.front());
  if (::statvfs(directory.c_str(), &info) != 0)
    return Status::success(); // can't tell; a full disk is still reported when a write fails
  uint64_t available = static_cast<uint64_t>(info.f_bavail) * info.f_frsize;
  if (bytesNeeded > available)
    return Status::error("The model needs " + formatByteSize(bytesNeeded) + " but '" + directory +
                         "' has only " + formatByteSize(available) +
                         " free; free some space, write elsewhere, or make the model smaller "
                         "(e.g. --layers).");
  return Status::success();
}

} // namespace

StatusOr<WriteResult> writeModel(const ModelPlan &plan, const WriteOptions &options) {
  if (options.outputPath.empty())
    return Status::error("No output file given; pass one with --output.");
  StatusOr<std::vector<int64_t>> assignment = assignSplits(plan, options);
  if (!assignment.ok())
    return assignment.status();
  const std::vector<int64_t> &fileOf = *assignment;
  const int64_t fileCount = fileOf.empty() ? 1 : fileOf.back() + 1;
  const bool split = fileCount > 1;
  std::vector<std::string> paths =
      split ? splitPaths(options.outputPath, fileCount) : std::vector<std::string>{options.outputPath};

  // Per file: its tensors (indices into plan.tensors) and its writer.
  std::vector<std::vector<size_t>> tensorsOfFile(fileCount);
  std::vector<size_t> indexInFile(plan.tensors.size());
  for (size_t i = 0; i < plan.tensors.size(); ++i) {
    indexInFile[i] = tensorsOfFile[fileOf[i]].size();
    tensorsOfFile[fileOf[i]].push_back(i);
  }
  std::vector<gguf::GgufStreamWriter> writers;
  uint64_t totalFileBytes = 0;
  for (int64_t f = 0; f < fileCount; ++f) {
    std::vector<gguf::KeyValue> metadata;
    if (f == 0)
      metadata = plan.metadata;
    if (split) {
      // As llama.cpp's gguf-split: all metadata in the first part, the split
      // keys in every part.
      metadata.push_back({"split.no", unsignedValue(f, ValueType::UInt16)});
      metadata.push_back({"split.count", unsignedValue(fileCount, ValueType::UInt16)});
      metadata.push_back({"split.tensors.count",
                          signedValue(static_cast<int64_t>(plan.tensors.size()), ValueType::Int32)});
    }
    std::vector<gguf::TensorDeclaration> declarations;
    for (size_t i : tensorsOfFile[f])
      declarations.push_back({plan.tensors[i].name, plan.tensors[i].ne, plan.tensors[i].type});
    StatusOr<gguf::GgufStreamWriter> writer =
        gguf::GgufStreamWriter::create(paths[f], metadata, declarations);
    if (!writer.ok())
      return writer.status();
    totalFileBytes += writer->fileSize();
    writers.push_back(std::move(*writer));
  }
  if (!options.metadataOnly) {
    Status space = checkFreeSpace(paths, totalFileBytes);
    if (!space.ok())
      return space;
  }
  for (int64_t f = 0; f < fileCount; ++f) {
    Status opened = writers[f].open();
    if (!opened.ok())
      return opened; // writers already opened are removed by their destructors
  }

  std::vector<WorkItem> items;
  for (size_t i = 0; i < plan.tensors.size() && !options.metadataOnly; ++i) {
    const PlannedTensor &t = plan.tensors[i];
    int64_t step = rowsPerItem(t);
    for (int64_t row = 0; row < t.rows(); row += step)
      items.push_back({i, row, std::min(step, t.rows() - row)});
  }

  const uint64_t totalBytes = plan.tensorBytes();
  std::atomic<size_t> nextItem{0};
  std::atomic<uint64_t> bytesDone{0};
  std::atomic<bool> failed{false};
  std::mutex errorMutex;
  std::string firstError;
  auto fail = [&](std::string message) {
    std::lock_guard<std::mutex> lock(errorMutex);
    if (firstError.empty())
      firstError = std::move(message);
    failed = true;
  };
  auto cancelled = [&] { return options.cancel && options.cancel->load(); };

  auto work = [&] {
    std::vector<float> values;
    std::vector<uint8_t> encoded;
    while (!failed && !cancelled()) {
      size_t itemIndex = nextItem.fetch_add(1);
      if (itemIndex >= items.size())
        return;
      const WorkItem &item = items[itemIndex];
      const PlannedTensor &t = plan.tensors[item.tensor];
      const int64_t elements = item.rowCount * t.ne[0];
      const uint64_t rowBytes = *gguf::ggmlRowBytes(t.type, t.ne[0]);
      encoded.resize(static_cast<size_t>(rowBytes * item.rowCount));
      if (usesQ4KSynthesis(t, plan.config)) {
        synthesizeQ4KRows(t, item.firstRow, item.rowCount, encoded.data());
      } else {
        values.resize(static_cast<size_t>(elements));
        generateRows(t, plan.config, item.firstRow, item.rowCount, values.data());
        Status quantized = quant::quantize(t.type, values.data(), encoded.data(), elements);
        if (!quantized.ok()) {
          fail("Cannot convert tensor '" + t.name + "' to " + typeName(t.type) + ": " +
               quantized.message());
          return;
        }
      }
      Status written = writers[fileOf[item.tensor]].writeTensorData(
          indexInFile[item.tensor], rowBytes * item.firstRow, encoded.data(), encoded.size());
      if (!written.ok()) {
        fail(written.message());
        return;
      }
      bytesDone += encoded.size();
    }
  };

  int threadCount = options.threads > 0 ? options.threads
                                        : static_cast<int>(std::thread::hardware_concurrency());
  threadCount = std::max(1, std::min<int>(threadCount, static_cast<int>(items.size())));
  std::vector<std::thread> threads;
  std::mutex doneMutex;
  std::condition_variable doneSignal;
  int running = threadCount;
  for (int i = 0; i < threadCount; ++i)
    threads.emplace_back([&] {
      work();
      std::lock_guard<std::mutex> lock(doneMutex);
      --running;
      doneSignal.notify_all();
    });
  {
    std::unique_lock<std::mutex> lock(doneMutex);
    while (running > 0) {
      doneSignal.wait_for(lock, std::chrono::milliseconds(200));
      if (options.progress) {
        lock.unlock();
        options.progress(bytesDone.load(), totalBytes);
        lock.lock();
      }
    }
  }
  for (std::thread &thread : threads)
    thread.join();

  if (cancelled())
    return Status::error("Interrupted; no model was written (the partial files were removed).");
  if (failed)
    return Status::error(firstError);
  if (options.progress)
    options.progress(totalBytes, totalBytes);

  WriteResult result;
  for (int64_t f = 0; f < fileCount; ++f) {
    Status committed = writers[f].commit();
    if (!committed.ok()) {
      // Keep "all or nothing" across the parts of a split model.
      for (int64_t g = 0; g < f; ++g)
        ::unlink(paths[g].c_str());
      return committed;
    }
    result.files.push_back({paths[f], writers[f].fileSize(), tensorsOfFile[f].size()});
    result.totalBytes += writers[f].fileSize();
  }
  result.tensorCount = plan.tensors.size();
  result.parameterCount = plan.parameterCount();
  return result;
}

} // namespace kt::gen
