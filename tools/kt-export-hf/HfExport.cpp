#include "tools/kt-export-hf/HfExport.h"

#include "runtime/model/DeepseekConfig.h"
#include "runtime/quant/Quant.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unistd.h>

namespace kt::hfexport {
namespace {

namespace fs = std::filesystem;
using gguf::GgufModel;
using gguf::TensorInfo;
using model::DeepseekConfig;
using Ne = std::vector<int64_t>;    // GGML order, ne[0] first
using Shape = std::vector<int64_t>; // PyTorch order, outermost first
using OrderedJson = nlohmann::ordered_json;

std::string shapeText(const Ne &ne) {
  std::string text = "{";
  for (size_t i = 0; i < ne.size(); ++i)
    text += (i ? ", " : "") + std::to_string(ne[i]);
  return text + "}";
}

// GGUF stores these hyper-parameters as f32; DeepseekConfig hands them back as
// the double nearest that f32. config.json gets the shortest decimal that reads
// back as the same f32 ("1e-06", not "9.999999974752427e-07"), which is what
// the original config.json held before conversion.
double decimalOfStoredFloat(double value) {
  float narrow = static_cast<float>(value);
  if (!std::isfinite(value) || static_cast<double>(narrow) != value)
    return value;
  char buffer[40];
  for (int precision = 1; precision <= 9; ++precision) {
    std::snprintf(buffer, sizeof buffer, "%.*g", precision, static_cast<double>(narrow));
    if (std::strtof(buffer, nullptr) == narrow)
      return std::strtod(buffer, nullptr);
  }
  return value;
}

double roundSignificant(double value, int digits) {
  char buffer[40];
  std::snprintf(buffer, sizeof buffer, "%.*g", digits, value);
  return std::strtod(buffer, nullptr);
}

std::optional<int64_t> metadataInt(const GgufModel &model, const char *key) {
  const gguf::Value *value = model.find(key);
  return value ? value->asInt() : std::nullopt;
}

OrderedJson tokenIdOrNull(const GgufModel &model, const char *key,
                          std::optional<int64_t> fallback) {
  std::optional<int64_t> id = metadataInt(model, key);
  if (!id)
    id = fallback;
  return id ? OrderedJson(*id) : OrderedJson(nullptr);
}

bool hostIsLittleEndian() {
  const uint16_t probe = 1;
  uint8_t first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

// Builds the tensor list, checking every GGUF tensor's shape against the
// hyper-parameters and that every GGUF tensor finds a place. Methods return
// false after recording the first error in error_.
class Planner {
public:
  Planner(const GgufModel &model, const DeepseekConfig &config, const ExportOptions &options,
          HfModelType type)
      : model_(model), c_(config), options_(options), type_(type) {}

  Status planTensors(std::vector<ExportTensor> &out);

private:
  const std::string &file() const { return model_.sourcePath(); }

  bool fail(std::string message) {
    error_ = Status::error(std::move(message));
    return false;
  }

  bool missing(const std::string &name, const std::string &why) {
    return fail(file() + ": tensor '" + name + "' is missing; " + why +
                ". The file is incomplete or not a deepseek2 model: re-convert or regenerate it");
  }

  // The tensor `name` with GGML shape `ne`, or null after recording an error
  // naming both shapes.
  const TensorInfo *require(const std::string &name, const Ne &ne, const std::string &why) {
    const TensorInfo *tensor = model_.findTensor(name);
    if (!tensor) {
      missing(name, why);
      return nullptr;
    }
    if (tensor->ne != ne) {
      fail(file() + ": tensor '" + name + "' has shape " + shapeText(tensor->ne) +
           " (GGML order) but the model's hyper-parameters need " + shapeText(ne) +
           "; the file is inconsistent: re-convert or regenerate it");
      return nullptr;
    }
    if (!gguf::ggmlTypeTraits(tensor->type).dequantizable) {
      fail(file() + ": tensor '" + name + "' has type " +
           std::string(gguf::ggmlTypeName(tensor->type)) +
           ", which this project cannot dequantize; re-quantize the model with a supported "
           "type (f32, f16, bf16, q4_0 ... q8_0, k-quants)");
      return nullptr;
    }
    used_.insert(tensor->name);
    return tensor;
  }

  bool add(std::vector<ExportTensor> &out, std::string hfName, Shape shape, TensorSource source,
           std::vector<const TensorInfo *> inputs, int64_t expert = 0) {
    ExportTensor t;
    t.name = std::move(hfName);
    t.shape = std::move(shape);
    t.source = source;
    t.inputs = std::move(inputs);
    t.expert = expert;
    out.push_back(std::move(t));
    return true;
  }

  // A 1-D or 2-D GGUF tensor exported whole: PyTorch's shape is GGML's reversed.
  bool addWhole(std::vector<ExportTensor> &out, const std::string &hfName,
                const std::string &ggufName, const Ne &ne, const std::string &why) {
    const TensorInfo *tensor = require(ggufName, ne, why);
    return tensor && add(out, hfName, Shape(ne.rbegin(), ne.rend()), TensorSource::Whole, {tensor});
  }

  bool planAttention(std::vector<ExportTensor> &out, int64_t layer);
  bool planKvB(std::vector<ExportTensor> &out, int64_t layer);
  bool planFeedForward(std::vector<ExportTensor> &out, int64_t layer);
  bool planExperts(std::vector<ExportTensor> &out, int64_t layer);
  bool checkAllUsed();

  const GgufModel &model_;
  const DeepseekConfig &c_;
  const ExportOptions &options_;
  HfModelType type_;
  std::set<std::string> used_;
  Status error_ = Status::success();
};

bool Planner::planAttention(std::vector<ExportTensor> &out, int64_t layer) {
  const std::string blk = "blk." + std::to_string(layer) + ".";
  const std::string hf = "model.layers." + std::to_string(layer) + ".self_attn.";
  const int64_t qkHead = c_.qkNopeHeadDim + c_.qkRopeHeadDim;
  const std::string mla = "every MLA layer has it";
  if (c_.qLoraRank > 0) {
    const std::string why =
        "queries are compressed (attention.q_lora_rank " + std::to_string(c_.qLoraRank) + ")";
    if (!addWhole(out, hf + "q_a_proj.weight", blk + "attn_q_a.weight", {c_.hidden, c_.qLoraRank},
                  why) ||
        !addWhole(out, hf + "q_a_layernorm.weight", blk + "attn_q_a_norm.weight", {c_.qLoraRank},
                  why) ||
        !addWhole(out, hf + "q_b_proj.weight", blk + "attn_q_b.weight",
                  {c_.qLoraRank, c_.heads * qkHead}, why))
      return false;
  } else if (!addWhole(out, hf + "q_proj.weight", blk + "attn_q.weight",
                       {c_.hidden, c_.heads * qkHead},
                       "queries are not compressed (attention.q_lora_rank 0)")) {
    return false;
  }
  return addWhole(out, hf + "kv_a_proj_with_mqa.weight", blk + "attn_kv_a_mqa.weight",
                  {c_.hidden, c_.kvLoraRank + c_.qkRopeHeadDim}, mla) &&
         addWhole(out, hf + "kv_a_layernorm.weight", blk + "attn_kv_a_norm.weight", {c_.kvLoraRank},
                  mla) &&
         planKvB(out, layer) &&
         addWhole(out, hf + "o_proj.weight", blk + "attn_output.weight",
                  {c_.heads * c_.vHeadDim, c_.hidden}, mla);
}

// kv_b_proj: the joint tensor, or rebuilt from the split form (see
// materializeTensor). A file with both forms describes one model twice.
bool Planner::planKvB(std::vector<ExportTensor> &out, int64_t layer) {
  const std::string blk = "blk." + std::to_string(layer) + ".";
  const std::string hfName =
      "model.layers." + std::to_string(layer) + ".self_attn.kv_b_proj.weight";
  const std::string jointName = blk + "attn_kv_b.weight";
  const std::string keyName = blk + "attn_k_b.weight";
  const std::string valueName = blk + "attn_v_b.weight";
  const bool hasJoint = model_.findTensor(jointName) != nullptr;
  const bool hasSplit =
      model_.findTensor(keyName) != nullptr || model_.findTensor(valueName) != nullptr;
  const Ne jointNe = {c_.kvLoraRank, c_.heads * (c_.qkNopeHeadDim + c_.vHeadDim)};
  bool useJoint = hasJoint;
  if (options_.kvB == KvBSource::Joint) {
    if (!hasJoint)
      return missing(jointName, "--kv-b joint asks for the joint form of kv_b_proj");
  } else if (options_.kvB == KvBSource::Split) {
    if (!hasSplit)
      return missing(keyName, "--kv-b split asks for the split form of kv_b_proj");
    useJoint = false;
  } else if (!hasJoint && !hasSplit) {
    return missing(jointName, "kv_b_proj needs attn_kv_b or attn_k_b + attn_v_b");
  }
  const Shape shape = {jointNe[1], jointNe[0]};
  if (hasSplit) {
    const std::string why = "the split form has both halves";
    const TensorInfo *key = require(keyName, {c_.qkNopeHeadDim, c_.kvLoraRank, c_.heads}, why);
    const TensorInfo *value =
        key ? require(valueName, {c_.kvLoraRank, c_.vHeadDim, c_.heads}, why) : nullptr;
    if (!value)
      return false;
    if (!useJoint)
      add(out, hfName, shape, TensorSource::KvBFromSplit, {key, value});
  }
  if (hasJoint) {
    const TensorInfo *joint = require(jointName, jointNe, "every MLA layer has it");
    if (!joint)
      return false;
    if (useJoint)
      add(out, hfName, shape, TensorSource::Whole, {joint});
  }
  return true;
}

bool Planner::planFeedForward(std::vector<ExportTensor> &out, int64_t layer) {
  const std::string blk = "blk." + std::to_string(layer) + ".";
  const std::string hf = "model.layers." + std::to_string(layer) + ".mlp.";
  if (!c_.isMoeLayer(layer)) {
    const std::string why = "layer " + std::to_string(layer) + " is a dense layer";
    return addWhole(out, hf + "gate_proj.weight", blk + "ffn_gate.weight", {c_.hidden, c_.denseFfn},
                    why) &&
           addWhole(out, hf + "up_proj.weight", blk + "ffn_up.weight", {c_.hidden, c_.denseFfn},
                    why) &&
           addWhole(out, hf + "down_proj.weight", blk + "ffn_down.weight", {c_.denseFfn, c_.hidden},
                    why);
  }

  const std::string why = "layer " + std::to_string(layer) + " is a MoE layer";
  if (!addWhole(out, hf + "gate.weight", blk + "ffn_gate_inp.weight", {c_.hidden, c_.experts}, why))
    return false;
  const std::string biasName = blk + "exp_probs_b.bias";
  const bool hasBias = model_.findTensor(biasName) != nullptr;
  if (type_ == HfModelType::DeepseekV3) {
    if (hasBias) {
      if (!addWhole(out, hf + "gate.e_score_correction_bias", biasName, {c_.experts}, why))
        return false;
    } else {
      // llama.cpp treats a missing exp_probs_b as no correction, i.e. zeros.
      add(out, hf + "gate.e_score_correction_bias", {c_.experts}, TensorSource::Zeros, {});
    }
  } else if (hasBias) {
    return fail(file() + ": tensor '" + biasName +
                "' biases the expert choice of a softmax-gated model; transformers' DeepseekV2 "
                "has no such bias, so it cannot serve as the reference for this model");
  }
  if (!planExperts(out, layer))
    return false;

  const int64_t sharedFfn = c_.expertFfn * c_.sharedExperts;
  const std::string sharedWhy = "the model has " + std::to_string(c_.sharedExperts) +
                                " shared expert(s) of " + std::to_string(c_.expertFfn);
  return addWhole(out, hf + "shared_experts.gate_proj.weight", blk + "ffn_gate_shexp.weight",
                  {c_.hidden, sharedFfn}, sharedWhy) &&
         addWhole(out, hf + "shared_experts.up_proj.weight", blk + "ffn_up_shexp.weight",
                  {c_.hidden, sharedFfn}, sharedWhy) &&
         addWhole(out, hf + "shared_experts.down_proj.weight", blk + "ffn_down_shexp.weight",
                  {sharedFfn, c_.hidden}, sharedWhy);
}

// GGUF {in, out, experts} is row-major [experts][out][in]: expert e is the
// contiguous block of `out` rows that PyTorch's [out, in] Linear weight holds.
bool Planner::planExperts(std::vector<ExportTensor> &out, int64_t layer) {
  const std::string blk = "blk." + std::to_string(layer) + ".";
  const std::string hf = "model.layers." + std::to_string(layer) + ".mlp.experts.";
  const std::string why = "layer " + std::to_string(layer) + " is a MoE layer";
  struct Part {
    const char *gguf;
    const char *hf;
    Ne ne; // of the 3-D tensor
    const TensorInfo *tensor = nullptr;
  };
  Part parts[] = {
      {"ffn_gate_exps", "gate_proj", {c_.hidden, c_.expertFfn, c_.experts}},
      {"ffn_up_exps", "up_proj", {c_.hidden, c_.expertFfn, c_.experts}},
      {"ffn_down_exps", "down_proj", {c_.expertFfn, c_.hidden, c_.experts}},
  };
  for (Part &part : parts)
    if (!(part.tensor = require(blk + part.gguf + ".weight", part.ne, why)))
      return false;
  for (int64_t e = 0; e < c_.experts; ++e)
    for (const Part &part : parts)
      add(out, hf + std::to_string(e) + "." + part.hf + ".weight", {part.ne[1], part.ne[0]},
          TensorSource::ExpertSlice, {part.tensor}, e);
  return true;
}

bool Planner::checkAllUsed() {
  std::vector<std::string> unused;
  for (const TensorInfo &tensor : model_.tensors())
    if (!used_.count(tensor.name))
      unused.push_back(tensor.name);
  if (unused.empty())
    return true;
  std::string list;
  for (size_t i = 0; i < unused.size() && i < 5; ++i)
    list += (i ? ", '" : "'") + unused[i] + "'";
  if (unused.size() > 5)
    list += " and " + std::to_string(unused.size() - 5) + " more";
  return fail(file() + ": tensor " + list + " has no place in transformers' " +
              std::string(hfArchitectureName(type_)) +
              " with this file's hyper-parameters (block_count " + std::to_string(c_.blockCount) +
              "); kt-export-hf exports only the tensors of a plain DeepSeek model (no "
              "multi-token-prediction layers or other extras)");
}

Status Planner::planTensors(std::vector<ExportTensor> &out) {
  bool ok = addWhole(out, "model.embed_tokens.weight", "token_embd.weight", {c_.hidden, c_.vocab},
                     "every model has a token embedding");
  for (int64_t layer = 0; ok && layer < c_.blockCount; ++layer) {
    const std::string blk = "blk." + std::to_string(layer) + ".";
    const std::string hf = "model.layers." + std::to_string(layer) + ".";
    const std::string why = "every layer has it";
    ok = addWhole(out, hf + "input_layernorm.weight", blk + "attn_norm.weight", {c_.hidden}, why) &&
         planAttention(out, layer) &&
         addWhole(out, hf + "post_attention_layernorm.weight", blk + "ffn_norm.weight", {c_.hidden},
                  why) &&
         planFeedForward(out, layer);
  }
  // Models with tied embeddings have no output tensor; llama.cpp then uses
  // token_embd, so lm_head gets a copy of it (config.json keeps them untied).
  const char *outputName =
      model_.findTensor("output.weight") ? "output.weight" : "token_embd.weight";
  ok =
      ok &&
      addWhole(out, "model.norm.weight", "output_norm.weight", {c_.hidden},
               "every model has a final norm") &&
      addWhole(out, "lm_head.weight", outputName, {c_.hidden, c_.vocab}, "the output projection") &&
      checkAllUsed();
  return ok ? Status::success() : error_;
}

// Checks that transformers' model computes what the GGUF describes; returns
// the model type to export.
StatusOr<HfModelType> chooseModelType(const GgufModel &model, const DeepseekConfig &c) {
  const std::string &file = model.sourcePath();
  const bool yarn = c.ropeScalingFactor > 1.0;
  if (c.experts > 0 && c.sharedExperts <= 0)
    return Status::error(file +
                         ": the model has no shared expert (expert_shared_count 0); "
                         "transformers' DeepSeek models always add one, so they cannot serve "
                         "as its reference");
  if (c.scoring == model::ExpertScoring::Sigmoid) {
    if (c.experts > 0 && c.experts / c.expertGroups < 2)
      return Status::error(
          file + ": each expert group holds " + std::to_string(c.experts / c.expertGroups) +
          " expert(s) (expert_count " + std::to_string(c.experts) + ", expert_group_count " +
          std::to_string(c.expertGroups) +
          "); transformers' DeepseekV3 scores a group by its two best experts and needs at "
          "least two per group: use fewer groups");
    return HfModelType::DeepseekV3;
  }
  // Softmax gating: transformers' DeepseekV2. It computes less than the GGUF
  // can say; refuse what it would compute differently.
  const std::string prefix =
      file + ": the model uses softmax expert gating, whose reference is transformers' "
             "DeepseekV2ForCausalLM (DeepseekV3 implements sigmoid routing only), but ";
  if (c.experts > 0 && c.expertWeightsNorm)
    return Status::error(prefix + "DeepseekV2 never normalizes the top-k weights "
                                  "(expert_weights_norm is true here); regenerate with "
                                  "--norm-topk-prob false");
  if (c.experts > 0 && c.expertGroups > 1)
    return Status::error(prefix +
                         "its group-limited routing ranks groups by their best expert "
                         "where llama.cpp's sums the two best (expert_group_count " +
                         std::to_string(c.expertGroups) +
                         " here); regenerate with --groups 1 --groups-used 1");
  if (yarn)
    return Status::error(prefix + "DeepseekV2 applies no YaRN mscale to the attention scale "
                                  "(rope.scaling.type yarn here); regenerate with "
                                  "--yarn-factor 1");
  return HfModelType::DeepseekV2;
}

OrderedJson buildConfig(const GgufModel &model, const DeepseekConfig &c, HfModelType type) {
  const bool v3 = type == HfModelType::DeepseekV3;
  const bool yarn = c.ropeScalingFactor > 1.0;
  const double ropeTheta = decimalOfStoredFloat(c.ropeTheta);

  OrderedJson ropeScaling = nullptr;
  if (yarn) {
    // The converter writes yarn_log_multiplier = 0.1 * mscale_all_dim and
    // drops mscale; DeepSeek's configs have mscale == mscale_all_dim, which
    // makes transformers' rotary attention factor 1 and folds the whole
    // (0.1 * mscale_all_dim * ln(factor) + 1)^2 into the softmax scale, as
    // llama.cpp does.
    const double mscaleAllDim =
        roundSignificant(decimalOfStoredFloat(c.ropeYarnLogMultiplier) / 0.1, 12);
    ropeScaling = {{"type", "yarn"},
                   {"rope_type", "yarn"},
                   {"factor", decimalOfStoredFloat(c.ropeScalingFactor)},
                   {"original_max_position_embeddings", c.ropeOriginalContextLength},
                   {"beta_fast", 32.0},
                   {"beta_slow", 1.0},
                   {"mscale", mscaleAllDim},
                   {"mscale_all_dim", mscaleAllDim}};
    // Without a multiplier, transformers would fall back to YaRN's default
    // rotary factor 0.1 * ln(factor) + 1, which llama.cpp cancels.
    if (mscaleAllDim == 0.0)
      ropeScaling["attention_factor"] = 1.0;
  }

  OrderedJson j;
  j["architectures"] = {std::string(hfArchitectureName(type))};
  j["model_type"] = std::string(hfModelTypeName(type));
  j["vocab_size"] = c.vocab;
  j["hidden_size"] = c.hidden;
  j["intermediate_size"] = c.denseFfn;
  j["moe_intermediate_size"] = c.expertFfn;
  j["num_hidden_layers"] = c.blockCount;
  j["num_attention_heads"] = c.heads;
  // transformers expands K/V per head (not the latent MQA form GGUF's
  // head_count_kv = 1 describes), so it needs one KV head per query head.
  j["num_key_value_heads"] = c.heads;
  j["n_shared_experts"] = c.sharedExperts;
  j["n_routed_experts"] = c.experts;
  j["routed_scaling_factor"] = decimalOfStoredFloat(c.expertWeightsScale);
  j["kv_lora_rank"] = c.kvLoraRank;
  j["q_lora_rank"] = c.qLoraRank > 0 ? OrderedJson(c.qLoraRank) : OrderedJson(nullptr);
  j["qk_rope_head_dim"] = c.qkRopeHeadDim;
  j["v_head_dim"] = c.vHeadDim;
  j["qk_nope_head_dim"] = c.qkNopeHeadDim;
  j["n_group"] = c.expertGroups;
  j["topk_group"] = c.expertGroupsUsed;
  j["num_experts_per_tok"] = c.expertsUsed;
  j["first_k_dense_replace"] = c.experts > 0 ? c.leadingDenseBlocks : c.blockCount;
  j["norm_topk_prob"] = c.expertWeightsNorm;
  j["topk_method"] = v3 ? "noaux_tc" : "greedy";
  j["scoring_func"] = v3 ? "sigmoid" : "softmax";
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.contextLength;
  j["initializer_range"] = 0.02;
  j["rms_norm_eps"] = decimalOfStoredFloat(c.rmsEps);
  j["use_cache"] = true;
  j["bos_token_id"] = tokenIdOrNull(model, "tokenizer.ggml.bos_token_id", v3 ? 0 : 1);
  j["eos_token_id"] = tokenIdOrNull(model, "tokenizer.ggml.eos_token_id", v3 ? 1 : 2);
  j["pad_token_id"] = tokenIdOrNull(model, "tokenizer.ggml.padding_token_id", std::nullopt);
  j["pretraining_tp"] = 1;
  j["tie_word_embeddings"] = false;
  // The keys of DeepSeek's own config.json; transformers 5 turns them into
  // its rope_parameters.
  j["rope_theta"] = ropeTheta;
  j["rope_scaling"] = ropeScaling;
  // GGUF's deepseek2 rotates adjacent pairs (GGML's normal rope), which is
  // DeepseekV3's interleaved mode; DeepseekV2 always rotates pairs.
  if (v3)
    j["rope_interleave"] = true;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  if (!v3)
    j["mlp_bias"] = false;
  j["torch_dtype"] = "float32";
  return j;
}

Status writeFileAtomically(const std::string &path, const std::string &what,
                           const std::function<Status(std::FILE *)> &body) {
  const std::string temporary = path + ".tmp-" + std::to_string(::getpid());
  std::FILE *out = std::fopen(temporary.c_str(), "wb");
  if (!out)
    return Status::error(path + ": cannot create " + what + " (" + std::strerror(errno) +
                         "); check that the output directory is writable");
  Status status = body(out);
  if (status.ok() && (std::fflush(out) != 0 || std::ferror(out) || ::fsync(fileno(out)) != 0))
    status = Status::error(path + ": writing " + what + " failed (" + std::strerror(errno) +
                           "); check the free disk space");
  if (std::fclose(out) != 0 && status.ok())
    status = Status::error(path + ": closing " + what + " failed (" + std::strerror(errno) + ")");
  if (status.ok() && std::rename(temporary.c_str(), path.c_str()) != 0)
    status = Status::error(path + ": cannot rename the finished " + what + " into place (" +
                           std::strerror(errno) + ")");
  if (!status.ok())
    std::remove(temporary.c_str());
  return status;
}

Status writeTextFile(const std::string &path, const std::string &what, const std::string &text) {
  return writeFileAtomically(path, what, [&](std::FILE *out) {
    return std::fwrite(text.data(), 1, text.size(), out) == text.size()
               ? Status::success()
               : Status::error(path + ": writing failed (" + std::strerror(errno) + ")");
  });
}

// tokenizer.json and tokenizer_config.json, where the model has a vocabulary.
Status writeTokenizerFiles(const ExportPlan &plan, const std::string &directory) {
  if (!plan.tokenizer)
    return Status::success();
  Status status = writeTextFile((fs::path(directory) / "tokenizer.json").string(),
                                "tokenizer.json", plan.tokenizer->tokenizerJson);
  if (!status.ok())
    return status;
  return writeTextFile((fs::path(directory) / "tokenizer_config.json").string(),
                       "tokenizer_config.json", plan.tokenizer->tokenizerConfigJson);
}

} // namespace

std::string_view hfModelTypeName(HfModelType type) {
  return type == HfModelType::DeepseekV3 ? "deepseek_v3" : "deepseek_v2";
}

std::string_view hfArchitectureName(HfModelType type) {
  return type == HfModelType::DeepseekV3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM";
}

int64_t ExportTensor::elements() const {
  int64_t n = 1;
  for (int64_t d : shape)
    n *= d;
  return n;
}

uint64_t ExportPlan::dataBytes() const {
  uint64_t bytes = 0;
  for (const ExportTensor &t : tensors)
    bytes += static_cast<uint64_t>(t.elements()) * sizeof(float);
  return bytes;
}

StatusOr<ExportPlan> planExport(const gguf::GgufModel &model, const ExportOptions &options) {
  StatusOr<DeepseekConfig> config = DeepseekConfig::fromGguf(model);
  if (!config.ok())
    return config.status();
  StatusOr<HfModelType> type = chooseModelType(model, *config);
  if (!type.ok())
    return type.status();

  ExportPlan plan;
  plan.modelType = *type;
  plan.sourcePath = model.sourcePath();
  Planner planner(model, *config, options, *type);
  Status status = planner.planTensors(plan.tensors);
  if (!status.ok())
    return status;
  if (model.find("tokenizer.ggml.model")) {
    StatusOr<tokenizer::TokenizerJsonFiles> files =
        tokenizer::tokenizerJsonFromGgufMetadata(model.metadata(), model.sourcePath());
    if (!files.ok())
      return files.status();
    plan.tokenizer = std::move(*files);
  }
  try {
    plan.configJson = buildConfig(model, *config, *type).dump(2) + "\n";
  } catch (const std::exception &error) {
    return Status::error(plan.sourcePath + ": cannot encode config.json: " + error.what());
  }
  return plan;
}

namespace {

// body(begin, end) over [0, count) in equal ranges, one per hardware
// thread: exporting V3-sized tensors is CPU-bound (decoding GGUF blocks,
// rounding to e4m3).
void parallelRanges(int64_t count, const std::function<void(int64_t, int64_t)> &body) {
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1,
                                              std::max<int64_t>(count, 1));
  if (threads == 1) {
    body(0, count);
    return;
  }
  std::vector<std::thread> workers;
  for (int64_t t = 0; t < threads; ++t)
    workers.emplace_back(body, count * t / threads, count * (t + 1) / threads);
  for (std::thread &worker : workers)
    worker.join();
}

// `n` values of `type` from `data` (whole rows of `rowValues`), rows on
// several threads.
Status dequantizeRows(gguf::GgmlType type, const uint8_t *data, int64_t rowValues, float *out,
                      int64_t n) {
  std::optional<uint64_t> rowBytes = gguf::ggmlRowBytes(type, rowValues);
  if (!rowBytes || rowValues <= 0 || n % rowValues != 0)
    return quant::dequantize(type, data, out, n);
  std::mutex failure;
  Status status = Status::success();
  parallelRanges(n / rowValues, [&](int64_t begin, int64_t end) {
    Status s = quant::dequantize(type, data + uint64_t(begin) * *rowBytes, out + begin * rowValues,
                                 (end - begin) * rowValues);
    std::lock_guard<std::mutex> lock(failure);
    if (!s.ok() && status.ok())
      status = s;
  });
  return status;
}

} // namespace

Status materializeTensor(const ExportTensor &tensor, float *out) {
  const int64_t n = tensor.elements();
  auto failed = [&](const Status &status) {
    return Status::error("tensor '" + tensor.inputs[0]->name + "' (for " + tensor.name +
                         "): " + status.message());
  };
  switch (tensor.source) {
  case TensorSource::Zeros:
    std::fill(out, out + n, 0.0f);
    return Status::success();
  case TensorSource::Whole: {
    Status s = dequantizeRows(tensor.inputs[0]->type, tensor.inputs[0]->data,
                              tensor.inputs[0]->ne[0], out, n);
    return s.ok() ? s : failed(s);
  }
  case TensorSource::ExpertSlice: {
    const TensorInfo &in = *tensor.inputs[0];
    std::optional<uint64_t> rowBytes = gguf::ggmlRowBytes(in.type, in.ne[0]);
    if (!rowBytes)
      return failed(Status::error("rows do not fit the type's blocks"));
    const uint8_t *slice = in.data + static_cast<uint64_t>(tensor.expert) *
                                         static_cast<uint64_t>(in.ne[1]) * *rowBytes;
    Status s = dequantizeRows(in.type, slice, in.ne[0], out, n);
    return s.ok() ? s : failed(s);
  }
  case TensorSource::KvBFromSplit: {
    // llama.cpp's converter views kv_b_proj [heads*(nope+v), kv_lora] as
    // [heads, nope+v, kv_lora] and stores the key part transposed per head
    // (attn_k_b, row-major [heads][kv_lora][nope]) and the value part as is
    // (attn_v_b, row-major [heads][v][kv_lora]); this inverts it.
    const TensorInfo &key = *tensor.inputs[0];
    const TensorInfo &value = *tensor.inputs[1];
    const int64_t nope = key.ne[0], kvLora = key.ne[1], heads = key.ne[2];
    const int64_t vDim = value.ne[1];
    std::vector<float> keys(static_cast<size_t>(key.elements()));
    std::vector<float> values(static_cast<size_t>(value.elements()));
    Status s = quant::dequantize(key.type, key.data, keys.data(), key.elements());
    if (!s.ok())
      return failed(s);
    s = quant::dequantize(value.type, value.data, values.data(), value.elements());
    if (!s.ok())
      return Status::error("tensor '" + value.name + "' (for " + tensor.name + "): " + s.message());
    const int64_t rowsPerHead = nope + vDim;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < nope; ++j)
        for (int64_t c = 0; c < kvLora; ++c)
          out[(h * rowsPerHead + j) * kvLora + c] = keys[(h * kvLora + c) * nope + j];
      for (int64_t j = 0; j < vDim; ++j)
        for (int64_t c = 0; c < kvLora; ++c)
          out[(h * rowsPerHead + nope + j) * kvLora + c] = values[(h * vDim + j) * kvLora + c];
    }
    return Status::success();
  }
  }
  return Status::error("unknown tensor source");
}

std::string safetensorsHeader(const std::vector<ExportTensor> &tensors) {
  OrderedJson header;
  // transformers refuses safetensors files whose format is not a known framework.
  header["__metadata__"] = {{"format", "pt"}, {"producer", "kt-export-hf"}};
  uint64_t offset = 0;
  for (const ExportTensor &t : tensors) {
    const uint64_t bytes = static_cast<uint64_t>(t.elements()) * sizeof(float);
    header[t.name] = {
        {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // The data that follows starts 8-byte aligned, as the format recommends.
  while ((8 + text.size()) % 8 != 0)
    text.push_back(' ');
  std::string out(8, '\0');
  uint64_t length = text.size();
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((length >> (8 * i)) & 0xff);
  return out + text;
}

Status writeExport(const ExportPlan &plan, const std::string &directory) {
  if (!hostIsLittleEndian())
    return Status::error("kt-export-hf writes little-endian safetensors data and runs only on "
                         "little-endian hosts");
  std::error_code error;
  fs::create_directories(directory, error);
  if (error)
    return Status::error(directory + ": cannot create the output directory (" + error.message() +
                         ")");
  const std::string configPath = (fs::path(directory) / "config.json").string();
  const std::string weightsPath = (fs::path(directory) / "model.safetensors").string();

  std::string header;
  try {
    header = safetensorsHeader(plan.tensors);
  } catch (const std::exception &e) {
    return Status::error(weightsPath + ": cannot encode the safetensors header: " + e.what());
  }
  Status status = writeFileAtomically(weightsPath, "the safetensors file", [&](std::FILE *out) {
    if (std::fwrite(header.data(), 1, header.size(), out) != header.size())
      return Status::error(weightsPath + ": writing the header failed (" + std::strerror(errno) +
                           "); check the free disk space");
    std::vector<float> values;
    for (const ExportTensor &t : plan.tensors) {
      values.resize(static_cast<size_t>(t.elements()));
      Status s = materializeTensor(t, values.data());
      if (!s.ok())
        return Status::error(plan.sourcePath + ": " + s.message());
      if (std::fwrite(values.data(), sizeof(float), values.size(), out) != values.size())
        return Status::error(weightsPath + ": writing " + t.name + " failed (" +
                             std::strerror(errno) + "); check the free disk space");
    }
    return Status::success();
  });
  if (!status.ok())
    return status;
  if (Status tokenizer = writeTokenizerFiles(plan, directory); !tokenizer.ok())
    return tokenizer;
  return writeTextFile(configPath, "config.json", plan.configJson);
}

// ------------------------------------------------------------------ FP8

namespace {

enum class StoredAs { Fp8, Bf16, F32 };

// One tensor of the FP8 checkpoint as stored.
struct StoredTensor {
  std::string name;
  std::vector<int64_t> shape;
  StoredAs dtype;
  const ExportTensor *source;
  bool scales = false; // the weight_scale_inv of `source`
  uint64_t bytes = 0;
};

// The linear layers DeepSeek's FP8 release stores in FP8: every projection
// (q_a/q_b/kv_a_proj_with_mqa/kv_b/o_proj, MLP and expert gate/up/down).
bool isFp8Projection(const ExportTensor &t) {
  auto endsWith = [&](const std::string &suffix) {
    return t.name.size() > suffix.size() &&
           t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return t.shape.size() == 2 && (endsWith("_proj.weight") || endsWith("_proj_with_mqa.weight"));
}

const char *storedName(StoredAs dtype) {
  return dtype == StoredAs::Fp8 ? "F8_E4M3" : dtype == StoredAs::Bf16 ? "BF16" : "F32";
}

// The stored bytes of one tensor (after materializing its source).
std::vector<uint8_t> encode(const StoredTensor &t, const std::vector<float> &values, int64_t block) {
  std::vector<uint8_t> out(t.bytes);
  if (t.dtype == StoredAs::Bf16) {
    for (size_t i = 0; i < values.size(); ++i) {
      uint16_t bits = quant::floatToBf16(values[i]);
      std::memcpy(out.data() + 2 * i, &bits, 2);
    }
    return out;
  }
  if (t.dtype == StoredAs::F32 && !t.scales) {
    std::memcpy(out.data(), values.data(), t.bytes);
    return out;
  }
  // FP8 weights and their scales: per block, amax / 448.
  const int64_t rows = t.source->shape[0], cols = t.source->shape[1];
  const int64_t blockCols = (cols + block - 1) / block;
  const int64_t blockRows = (rows + block - 1) / block;
  std::vector<float> scales(static_cast<size_t>(blockRows * blockCols), 0.0f);
  // Each thread takes whole row blocks: their scales, then their codes.
  parallelRanges(blockRows, [&](int64_t firstBlock, int64_t endBlock) {
    const int64_t begin = firstBlock * block, end = std::min(endBlock * block, rows);
    for (int64_t r = begin; r < end; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        float &amax = scales[static_cast<size_t>((r / block) * blockCols + c / block)];
        amax = std::max(amax, std::fabs(values[static_cast<size_t>(r * cols + c)]));
      }
    for (int64_t i = firstBlock * blockCols; i < endBlock * blockCols; ++i)
      scales[size_t(i)] = scales[size_t(i)] > 0 ? scales[size_t(i)] / 448.0f : 1.0f;
    if (t.scales)
      return;
    for (int64_t r = begin; r < end; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const float scale = scales[static_cast<size_t>((r / block) * blockCols + c / block)];
        out[static_cast<size_t>(r * cols + c)] =
            quant::floatToFp8E4m3(values[static_cast<size_t>(r * cols + c)] / scale);
      }
  });
  if (t.scales)
    std::memcpy(out.data(), scales.data(), t.bytes);
  return out;
}

std::string headerFor(const std::vector<const StoredTensor *> &tensors) {
  OrderedJson header;
  header["__metadata__"] = {{"format", "pt"}, {"producer", "kt-export-hf"}};
  uint64_t offset = 0;
  for (const StoredTensor *t : tensors) {
    header[t->name] = {{"dtype", storedName(t->dtype)},
                       {"shape", t->shape},
                       {"data_offsets", {offset, offset + t->bytes}}};
    offset += t->bytes;
  }
  std::string text = header.dump();
  while ((8 + text.size()) % 8 != 0)
    text.push_back(' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[i] = static_cast<char>((uint64_t(text.size()) >> (8 * i)) & 0xff);
  return out + text;
}

} // namespace

Status writeFp8Export(const ExportPlan &plan, const std::string &directory,
                      const Fp8ExportOptions &options) {
  if (!hostIsLittleEndian())
    return Status::error("kt-export-hf writes little-endian safetensors data and runs only on "
                         "little-endian hosts");
  if (options.block <= 0)
    return Status::error("the FP8 block size must be positive");
  std::error_code error;
  fs::create_directories(directory, error);
  if (error)
    return Status::error(directory + ": cannot create the output directory (" + error.message() + ")");

  std::vector<StoredTensor> stored;
  for (const ExportTensor &t : plan.tensors) {
    const uint64_t elements = static_cast<uint64_t>(t.elements());
    if (isFp8Projection(t)) {
      stored.push_back({t.name, t.shape, StoredAs::Fp8, &t, false, elements});
      const int64_t br = (t.shape[0] + options.block - 1) / options.block;
      const int64_t bc = (t.shape[1] + options.block - 1) / options.block;
      std::string scaleName = t.name.substr(0, t.name.size() - std::string("weight").size()) + "weight_scale_inv";
      stored.push_back({scaleName, {br, bc}, StoredAs::F32, &t, true, uint64_t(br * bc) * 4});
    } else if (t.name.find("e_score_correction_bias") != std::string::npos) {
      stored.push_back({t.name, t.shape, StoredAs::F32, &t, false, elements * 4});
    } else {
      stored.push_back({t.name, t.shape, StoredAs::Bf16, &t, false, elements * 2});
    }
  }
  // Shards of whole tensors, in order.
  std::vector<std::vector<const StoredTensor *>> shards(1);
  uint64_t inShard = 0, total = 0;
  for (const StoredTensor &t : stored) {
    if (options.shardBytes > 0 && inShard > 0 && inShard + t.bytes > options.shardBytes) {
      shards.emplace_back();
      inShard = 0;
    }
    shards.back().push_back(&t);
    inShard += t.bytes;
    total += t.bytes;
  }
  const bool single = options.shardBytes == 0;
  OrderedJson weightMap = OrderedJson::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    const std::string file = single ? "model.safetensors" : name;
    const std::string path = (fs::path(directory) / file).string();
    const std::string header = headerFor(shards[i]);
    Status status = writeFileAtomically(path, "a safetensors shard", [&](std::FILE *out) {
      if (std::fwrite(header.data(), 1, header.size(), out) != header.size())
        return Status::error(path + ": writing the header failed (" + std::strerror(errno) + ")");
      std::vector<float> values;
      for (const StoredTensor *t : shards[i]) {
        values.resize(static_cast<size_t>(t->source->elements()));
        if (Status s = materializeTensor(*t->source, values.data()); !s.ok())
          return Status::error(plan.sourcePath + ": " + s.message());
        std::vector<uint8_t> bytes = encode(*t, values, options.block);
        if (std::fwrite(bytes.data(), 1, bytes.size(), out) != bytes.size())
          return Status::error(path + ": writing " + t->name + " failed (" + std::strerror(errno) +
                               "); check the free disk space");
      }
      return Status::success();
    });
    if (!status.ok())
      return status;
    for (const StoredTensor *t : shards[i])
      weightMap[t->name] = file;
  }
  if (!single) {
    const std::string indexPath = (fs::path(directory) / "model.safetensors.index.json").string();
    const std::string index =
        OrderedJson{{"metadata", {{"total_size", total}}}, {"weight_map", weightMap}}.dump(2) + "\n";
    Status status = writeFileAtomically(indexPath, "the index", [&](std::FILE *out) {
      return std::fwrite(index.data(), 1, index.size(), out) == index.size()
                 ? Status::success()
                 : Status::error(indexPath + ": writing failed");
    });
    if (!status.ok())
      return status;
  }
  OrderedJson config = OrderedJson::parse(plan.configJson);
  config["torch_dtype"] = "bfloat16";
  config["quantization_config"] = {{"activation_scheme", "dynamic"},
                                   {"fmt", "e4m3"},
                                   {"quant_method", "fp8"},
                                   {"weight_block_size", {options.block, options.block}}};
  if (Status tokenizer = writeTokenizerFiles(plan, directory); !tokenizer.ok())
    return tokenizer;
  const std::string configPath = (fs::path(directory) / "config.json").string();
  return writeTextFile(configPath, "config.json", config.dump(2) + "\n");
}

} // namespace kt::hfexport
