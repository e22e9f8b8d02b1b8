#include "runtime/model/DeepseekConfig.h"

#include <sstream>

namespace kt::model {
namespace {

constexpr const char *kArch = "deepseek2";

// GGUF's expert_gating_func values.
constexpr int64_t kGatingSoftmax = 1;
constexpr int64_t kGatingSigmoid = 2;

class MetadataReader {
public:
  explicit MetadataReader(const gguf::GgufModel &model) : model_(model) {}

  const std::string &file() const { return model_.sourcePath(); }

  Status missing(const std::string &key) const {
    return Status::error(file() + ": required metadata key '" + key +
                         "' is missing; the file may come from an incomplete or too old "
                         "converter: re-convert the model with a current GGUF converter");
  }
  Status invalid(const std::string &key, const std::string &why) const {
    return Status::error(file() + ": metadata key '" + key + "' " + why);
  }

  // Reads `<arch>.<suffix>` as an integer (non-negative), a real or a bool;
  // `fallback` when absent (nullopt: required).
  Status integer(const std::string &suffix, int64_t &out,
                 std::optional<int64_t> fallback = std::nullopt) const {
    Status status = read(suffix, out, fallback, &gguf::Value::asInt, "an integer");
    if (status.ok() && out < 0)
      return invalid(std::string(kArch) + "." + suffix,
                     "must not be negative, found " + std::to_string(out));
    return status;
  }
  Status real(const std::string &suffix, double &out, std::optional<double> fallback) const {
    return read(suffix, out, fallback, &gguf::Value::asDouble, "a number");
  }
  Status boolean(const std::string &suffix, bool &out, bool fallback) const {
    int64_t number = 0;
    Status status = read(suffix, number, std::optional<int64_t>(fallback ? 1 : 0),
                         &gguf::Value::asInt, "a bool");
    out = number != 0;
    return status;
  }

  std::string string(const std::string &key) const {
    const gguf::Value *value = model_.find(key);
    return value && value->type == gguf::ValueType::String ? value->s : std::string();
  }

private:
  template <typename T>
  Status read(const std::string &suffix, T &out, std::optional<T> fallback,
              std::optional<T> (gguf::Value::*convert)() const, const char *what) const {
    std::string key = std::string(kArch) + "." + suffix;
    const gguf::Value *value = model_.find(key);
    if (!value) {
      if (!fallback)
        return missing(key);
      out = *fallback;
      return Status::success();
    }
    std::optional<T> number = (value->*convert)();
    if (!number)
      return invalid(key, std::string("must be ") + what + ", found " +
                              std::string(gguf::valueTypeName(value->type)));
    out = *number;
    return Status::success();
  }

  const gguf::GgufModel &model_;
};

} // namespace

const char *expertScoringName(ExpertScoring scoring) {
  return scoring == ExpertScoring::Sigmoid ? "sigmoid" : "softmax";
}

StatusOr<DeepseekConfig> DeepseekConfig::fromGguf(const gguf::GgufModel &model) {
  MetadataReader meta(model);
  std::string arch = model.architecture();
  if (arch.empty())
    return Status::error(meta.file() +
                         ": metadata key 'general.architecture' is missing; this is not a "
                         "model file a GGUF converter wrote");
  if (arch != kArch)
    return Status::error(meta.file() + ": architecture '" + arch +
                         "' is not supported; ktc runs DeepSeek-V2, V2-Lite, V3 and R1 "
                         "models (GGUF architecture 'deepseek2')");

  DeepseekConfig c;
  c.name = meta.string("general.name");
  int64_t keyLength = 0, valueLength = 0, keyLengthMla = 0, valueLengthMla = 0;
  int64_t headsKv = 0, gating = 0;
  double rmsEps = 0;
  Status status = Status::success();
  auto run = [&](Status s) {
    if (status.ok() && !s.ok())
      status = std::move(s);
  };
  run(meta.integer("block_count", c.blockCount));
  run(meta.integer("context_length", c.contextLength));
  run(meta.integer("embedding_length", c.hidden));
  run(meta.integer("feed_forward_length", c.denseFfn));
  run(meta.integer("attention.head_count", c.heads));
  run(meta.integer("attention.head_count_kv", headsKv, int64_t{0}));
  run(meta.integer("attention.q_lora_rank", c.qLoraRank, int64_t{0}));
  run(meta.integer("attention.kv_lora_rank", c.kvLoraRank));
  run(meta.integer("attention.key_length", keyLength));
  run(meta.integer("attention.value_length", valueLength));
  run(meta.integer("attention.key_length_mla", keyLengthMla, int64_t{0}));
  run(meta.integer("attention.value_length_mla", valueLengthMla, int64_t{0}));
  run(meta.integer("rope.dimension_count", c.qkRopeHeadDim));
  run(meta.real("attention.layer_norm_rms_epsilon", rmsEps, 1e-6));
  run(meta.real("rope.freq_base", c.ropeTheta, 10000.0));
  run(meta.integer("leading_dense_block_count", c.leadingDenseBlocks, int64_t{0}));
  run(meta.integer("expert_count", c.experts, int64_t{0}));
  run(meta.integer("expert_used_count", c.expertsUsed, int64_t{0}));
  run(meta.integer("expert_shared_count", c.sharedExperts, int64_t{0}));
  run(meta.integer("expert_feed_forward_length", c.expertFfn, int64_t{0}));
  run(meta.real("expert_weights_scale", c.expertWeightsScale, 1.0));
  run(meta.boolean("expert_weights_norm", c.expertWeightsNorm, false));
  // Files converted before the key existed are DeepSeek-V2, which uses softmax.
  run(meta.integer("expert_gating_func", gating, kGatingSoftmax));
  run(meta.integer("expert_group_count", c.expertGroups, int64_t{1}));
  run(meta.integer("expert_group_used_count", c.expertGroupsUsed, int64_t{1}));
  if (!status.ok())
    return status;

  // Files written for MLA decoding store the absorbed (MQA) head sizes in
  // key_length/value_length and the original ones in the *_mla keys.
  int64_t qkHeadDim = keyLengthMla > 0 ? keyLengthMla : keyLength;
  c.vHeadDim = valueLengthMla > 0 ? valueLengthMla : valueLength;
  c.qkNopeHeadDim = qkHeadDim - c.qkRopeHeadDim;
  c.rmsEps = static_cast<float>(rmsEps);

  if (gating == kGatingSigmoid)
    c.scoring = ExpertScoring::Sigmoid;
  else if (gating == kGatingSoftmax)
    c.scoring = ExpertScoring::Softmax;
  else
    return meta.invalid("deepseek2.expert_gating_func",
                        "has unknown value " + std::to_string(gating) +
                            " (1 = softmax, 2 = sigmoid)");

  std::string scalingType = meta.string("deepseek2.rope.scaling.type");
  if (scalingType == "yarn") {
    run(meta.real("rope.scaling.factor", c.ropeScalingFactor, std::nullopt));
    run(meta.integer("rope.scaling.original_context_length", c.ropeOriginalContextLength));
    run(meta.real("rope.scaling.yarn_log_multiplier", c.ropeYarnLogMultiplier, 0.0));
    if (!status.ok())
      return status;
  } else if (!scalingType.empty() && scalingType != "none") {
    return meta.invalid("deepseek2.rope.scaling.type",
                        "is '" + scalingType + "'; DeepSeek models use 'yarn' or none");
  }

  // Vocabulary size: the key, else the embedding's second dimension.
  const gguf::Value *vocabKey = model.find("deepseek2.vocab_size");
  if (vocabKey && vocabKey->asInt())
    c.vocab = *vocabKey->asInt();
  else if (const gguf::TensorInfo *embd = model.findTensor("token_embd.weight");
           embd && embd->ne.size() == 2)
    c.vocab = embd->ne[1];

  auto require = [&](bool ok, const std::string &what) {
    if (status.ok() && !ok)
      status = Status::error(meta.file() + ": inconsistent hyper-parameters: " + what);
  };
  require(c.blockCount > 0, "deepseek2.block_count must be positive");
  require(c.hidden > 0, "deepseek2.embedding_length must be positive");
  require(c.heads > 0, "deepseek2.attention.head_count must be positive");
  require(c.kvLoraRank > 0, "deepseek2.attention.kv_lora_rank must be positive");
  require(c.qkRopeHeadDim > 0 && c.qkRopeHeadDim % 2 == 0,
          "deepseek2.rope.dimension_count must be positive and even");
  require(c.qkNopeHeadDim > 0, "the key length must exceed rope.dimension_count");
  require(c.vHeadDim > 0, "the value length must be positive");
  require(c.vocab > 0, "the vocabulary size is unknown (no deepseek2.vocab_size and no "
                       "token_embd.weight)");
  require(c.leadingDenseBlocks <= c.blockCount,
          "leading_dense_block_count exceeds block_count");
  if (c.experts > 0) {
    require(c.expertsUsed > 0 && c.expertsUsed <= c.experts,
            "expert_used_count must be between 1 and expert_count");
    require(c.expertFfn > 0, "expert_feed_forward_length must be positive");
    require(c.expertGroups > 0 && c.experts % c.expertGroups == 0,
            "expert_group_count must divide expert_count");
    require(c.expertGroupsUsed > 0 && c.expertGroupsUsed <= c.expertGroups,
            "expert_group_used_count must be between 1 and expert_group_count");
  }
  if (c.leadingDenseBlocks > 0 || c.experts == 0)
    require(c.denseFfn > 0, "feed_forward_length must be positive for dense layers");
  if (c.ropeScalingFactor > 1.0)
    require(c.ropeOriginalContextLength > 0,
            "YaRN scaling needs rope.scaling.original_context_length");
  if (!status.ok())
    return status;
  return c;
}

} // namespace kt::model
