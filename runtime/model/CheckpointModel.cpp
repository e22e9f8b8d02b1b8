#include "runtime/model/CheckpointModel.h"

#include "runtime/quant/Quant.h"
#include "runtime/safetensors/Safetensors.h"
#include "runtime/tokenizer/Tokenizer.h"

#include <nlohmann/json.hpp>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <thread>

namespace kt::model {
namespace {

namespace fs = std::filesystem;
using gguf::GgmlType;
using gguf::KeyValue;
using gguf::TensorInfo;
using gguf::Value;
using gguf::ValueType;
using nlohmann::json;

using gguf::boolValue;
using gguf::realValue;
using gguf::stringValue;
Value integerValue(int64_t number) { return gguf::unsignedValue(uint64_t(number)); }

// Reads config.json keys without exceptions; the first problem is kept.
class ConfigReader {
public:
  ConfigReader(const json &root, std::string file) : root_(root), file_(std::move(file)) {}

  std::optional<int64_t> integer(const char *key, std::optional<int64_t> fallback) {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null()) {
      if (!fallback)
        fail(std::string("has no '") + key + "'; it is not a DeepSeek config.json");
      return fallback;
    }
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      fail(std::string("'") + key + "' is " + it->dump() + ", not a non-negative integer");
      return fallback;
    }
    return it->get<int64_t>();
  }
  double real(const json &object, const char *key, double fallback) {
    auto it = object.find(key);
    if (it == object.end() || it->is_null())
      return fallback;
    if (!it->is_number()) {
      fail(std::string("'") + key + "' is " + it->dump() + ", not a number");
      return fallback;
    }
    return it->get<double>();
  }
  bool boolean(const char *key, bool fallback) {
    auto it = root_.find(key);
    if (it == root_.end() || it->is_null())
      return fallback;
    if (!it->is_boolean()) {
      fail(std::string("'") + key + "' is " + it->dump() + ", not true or false");
      return fallback;
    }
    return it->get<bool>();
  }
  std::string string(const char *key) {
    auto it = root_.find(key);
    return it != root_.end() && it->is_string() ? it->get<std::string>() : std::string();
  }
  void fail(const std::string &what) {
    if (error_.empty())
      error_ = file_ + ": " + what + ".";
  }
  const std::string &error() const { return error_; }

private:
  const json &root_;
  std::string file_;
  std::string error_;
};

// config.json as the deepseek2.* keys llama.cpp's converter writes.
StatusOr<std::vector<KeyValue>> configMetadata(const std::string &text, const std::string &file,
                                               const std::string &name) {
  json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object())
    return Status::error(file + " is not a JSON object; restore the checkpoint's config.json.");
  ConfigReader config(root, file);
  const std::string modelType = config.string("model_type");
  if (modelType != "deepseek_v3" && modelType != "deepseek_v2")
    return Status::error(file + ": model_type is '" + modelType +
                         "'; only DeepSeek-V2/V3/R1 checkpoints (deepseek_v2, deepseek_v3) "
                         "can be opened.");
  const bool v3 = modelType == "deepseek_v3";
  std::vector<KeyValue> out;
  auto put = [&](const std::string &key, Value value) {
    out.push_back({"deepseek2." + key, std::move(value)});
  };
  auto putInteger = [&](const std::string &key, const char *configKey,
                        std::optional<int64_t> fallback = std::nullopt) {
    std::optional<int64_t> value = config.integer(configKey, fallback);
    if (value)
      put(key, integerValue(*value));
    return value.value_or(0);
  };
  const int64_t layers = putInteger("block_count", "num_hidden_layers");
  putInteger("context_length", "max_position_embeddings");
  putInteger("embedding_length", "hidden_size");
  putInteger("feed_forward_length", "intermediate_size");
  putInteger("vocab_size", "vocab_size");
  const int64_t heads = putInteger("attention.head_count", "num_attention_heads");
  put("attention.head_count_kv", integerValue(heads));
  putInteger("attention.q_lora_rank", "q_lora_rank", int64_t{0});
  putInteger("attention.kv_lora_rank", "kv_lora_rank");
  const int64_t nope = config.integer("qk_nope_head_dim", std::nullopt).value_or(0);
  const int64_t rope = config.integer("qk_rope_head_dim", std::nullopt).value_or(0);
  put("attention.key_length", integerValue(nope + rope));
  put("rope.dimension_count", integerValue(rope));
  putInteger("attention.value_length", "v_head_dim");
  put("attention.layer_norm_rms_epsilon", realValue(config.real(root, "rms_norm_eps", 1e-6)));
  put("rope.freq_base", realValue(config.real(root, "rope_theta", 10000.0)));
  const int64_t experts = putInteger("expert_count", "n_routed_experts", int64_t{0});
  putInteger("leading_dense_block_count", "first_k_dense_replace", experts ? int64_t{0} : layers);
  putInteger("expert_used_count", "num_experts_per_tok", int64_t{0});
  putInteger("expert_shared_count", "n_shared_experts", int64_t{0});
  putInteger("expert_feed_forward_length", "moe_intermediate_size", int64_t{0});
  putInteger("expert_group_count", "n_group", int64_t{1});
  putInteger("expert_group_used_count", "topk_group", int64_t{1});
  put("expert_weights_scale", realValue(config.real(root, "routed_scaling_factor", 1.0)));
  put("expert_weights_norm", boolValue(config.boolean("norm_topk_prob", false)));
  const std::string scoring = config.string("scoring_func");
  const bool sigmoid = scoring.empty() ? v3 : scoring == "sigmoid";
  if (!scoring.empty() && scoring != "sigmoid" && scoring != "softmax")
    config.fail("scoring_func '" + scoring + "' is neither sigmoid nor softmax");
  put("expert_gating_func", integerValue(sigmoid ? 2 : 1));
  if (std::optional<int64_t> frequency = config.integer("moe_layer_freq", int64_t{1});
      frequency && *frequency != 1)
    config.fail("moe_layer_freq " + std::to_string(*frequency) +
                " is not supported (DeepSeek's models have a MoE layer after every dense one)");
  // GGUF's deepseek2 rotates adjacent pairs: DeepSeek's own layout, which
  // transformers calls rope_interleave. Weights for rotate-half would need
  // their rows permuted.
  if (!config.boolean("rope_interleave", true))
    config.fail("rope_interleave is false: the query and key weights are permuted for "
                "rotate-half RoPE, which is not DeepSeek's published layout");
  auto scaling = root.find("rope_scaling");
  if (scaling != root.end() && scaling->is_object()) {
    std::string type;
    for (const char *key : {"type", "rope_type"})
      if (scaling->contains(key) && (*scaling)[key].is_string())
        type = (*scaling)[key].get<std::string>();
    if (type == "yarn") {
      const double mscale = config.real(*scaling, "mscale", 0.0);
      const double mscaleAllDim = config.real(*scaling, "mscale_all_dim", 0.0);
      // The converter keeps 0.1 * mscale_all_dim; the attention then matches
      // transformers only where mscale equals mscale_all_dim (DeepSeek's).
      if (mscale != mscaleAllDim)
        config.fail("rope_scaling.mscale differs from mscale_all_dim, which GGUF's YaRN "
                    "cannot express");
      out.push_back({"deepseek2.rope.scaling.type", stringValue("yarn")});
      put("rope.scaling.factor", realValue(config.real(*scaling, "factor", 1.0)));
      auto original = scaling->find("original_max_position_embeddings");
      if (original == scaling->end() || !original->is_number_integer())
        config.fail("rope_scaling has no integer original_max_position_embeddings");
      else
        put("rope.scaling.original_context_length", integerValue(original->get<int64_t>()));
      put("rope.scaling.yarn_log_multiplier", realValue(0.1 * mscaleAllDim));
    } else if (!type.empty() && type != "default") {
      config.fail("rope_scaling type '" + type + "' is not supported (DeepSeek uses yarn)");
    }
  }
  if (!config.error().empty())
    return Status::error(config.error());
  out.insert(out.begin(), {"general.name", stringValue(name)});
  out.insert(out.begin(), {"general.architecture", stringValue("deepseek2")});
  return out;
}

// The GGUF name of a non-expert tensor, or "" if the name is not one.
std::string ggufName(const std::string &hf) {
  static const std::map<std::string, std::string> kGlobal = {
      {"model.embed_tokens.weight", "token_embd.weight"},
      {"model.norm.weight", "output_norm.weight"},
      {"lm_head.weight", "output.weight"}};
  if (auto it = kGlobal.find(hf); it != kGlobal.end())
    return it->second;
  static const std::map<std::string, std::string> kLayer = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.q_a_proj.weight", "attn_q_a.weight"},
      {"self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"},
      {"self_attn.q_b_proj.weight", "attn_q_b.weight"},
      {"self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"},
      {"self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"},
      {"self_attn.kv_b_proj.weight", "attn_kv_b.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      {"mlp.gate.weight", "ffn_gate_inp.weight"},
      {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"},
      {"mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"},
      {"mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"},
      {"mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"}};
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) != 0)
    return {};
  const size_t dot = hf.find('.', prefix.size());
  if (dot == std::string::npos)
    return {};
  auto it = kLayer.find(hf.substr(dot + 1));
  return it == kLayer.end()
             ? std::string()
             : "blk." + hf.substr(prefix.size(), dot - prefix.size()) + "." + it->second;
}

// "model.layers.<L>.<rest>" -> L, or -1.
int64_t layerOf(const std::string &hf) {
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) != 0)
    return -1;
  size_t end = hf.find('.', prefix.size());
  const std::string digits = hf.substr(prefix.size(), end - prefix.size());
  if (digits.empty() || digits.size() > 9 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}

struct ExpertName {
  int64_t layer = -1, expert = -1;
  std::string matrix; // "gate", "up", "down"
};
std::optional<ExpertName> expertName(const std::string &hf) {
  ExpertName name;
  name.layer = layerOf(hf);
  const std::string infix = ".mlp.experts.";
  const size_t at = hf.find(infix);
  if (name.layer < 0 || at == std::string::npos)
    return std::nullopt;
  const size_t start = at + infix.size(), dot = hf.find('.', start);
  if (dot == std::string::npos)
    return std::nullopt;
  const std::string digits = hf.substr(start, dot - start);
  if (digits.empty() || digits.size() > 9 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  name.expert = std::stoll(digits);
  const std::string rest = hf.substr(dot + 1);
  for (const char *matrix : {"gate", "up", "down"})
    if (rest == std::string(matrix) + "_proj.weight")
      name.matrix = matrix;
  if (name.matrix.empty())
    return std::nullopt;
  return name;
}

std::optional<GgmlType> ggmlTypeOf(safetensors::Dtype dtype) {
  switch (dtype) {
  case safetensors::Dtype::F32:
    return GgmlType::F32;
  case safetensors::Dtype::F16:
    return GgmlType::F16;
  case safetensors::Dtype::BF16:
    return GgmlType::BF16;
  case safetensors::Dtype::F8_E4M3:
    return GgmlType::F8_E4M3_B128;
  default:
    return std::nullopt;
  }
}

class ViewBuilder {
public:
  ViewBuilder(const safetensors::Checkpoint &checkpoint, int64_t layers)
      : checkpoint_(checkpoint), layers_(layers) {}

  Status build(std::vector<TensorInfo> &tensors) {
    std::map<std::string, std::map<int64_t, const safetensors::TensorInfo *>> experts;
    for (const safetensors::TensorInfo *tensor : checkpoint_.tensors()) {
      const std::string &name = tensor->name;
      const int64_t layer = layerOf(name);
      // Scales go with their weights; later layers are V3's multi-token
      // prediction module, which decoding does not use.
      if (endsWith(name, "_scale_inv") || layer >= layers_)
        continue;
      if (std::optional<ExpertName> expert = expertName(name)) {
        const std::string gguf =
            "blk." + std::to_string(expert->layer) + ".ffn_" + expert->matrix + "_exps.weight";
        if (!experts[gguf].emplace(expert->expert, tensor).second)
          return error(name, "is listed twice");
        continue;
      }
      const std::string gguf = ggufName(name);
      if (gguf.empty())
        return error(name, "is not a tensor of a DeepSeek model this version knows (a newer "
                           "or another architecture?)");
      StatusOr<TensorInfo> info = single(*tensor, gguf);
      if (!info.ok())
        return info.status();
      tensors.push_back(std::move(*info));
    }
    for (auto &[gguf, byExpert] : experts) {
      StatusOr<TensorInfo> info = stacked(gguf, byExpert);
      if (!info.ok())
        return info.status();
      tensors.push_back(std::move(*info));
    }
    return Status::success();
  }

private:
  static bool endsWith(const std::string &text, const std::string &suffix) {
    return text.size() >= suffix.size() &&
           text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
  }
  Status error(const std::string &tensor, const std::string &what) const {
    return Status::error(checkpoint_.path() + ": tensor '" + tensor + "' " + what + ".");
  }

  // The block scales of an e4m3 matrix [rows, cols].
  StatusOr<const float *> scalesOf(const safetensors::TensorInfo &weight) const {
    const safetensors::TensorInfo *scale = checkpoint_.findTensor(weight.name + "_scale_inv");
    const int64_t block = gguf::BlockScaledFp8::kBlock;
    if (weight.shape.size() != 2)
      return error(weight.name, "is F8_E4M3 but not a matrix");
    const std::vector<int64_t> expected = {(weight.shape[0] + block - 1) / block,
                                           (weight.shape[1] + block - 1) / block};
    if (!scale || scale->dtype != safetensors::Dtype::F32 || scale->shape != expected)
      return error(weight.name, "is F8_E4M3 but has no F32 weight_scale_inv of shape [" +
                                    std::to_string(expected[0]) + ", " +
                                    std::to_string(expected[1]) +
                                    "] (one per 128x128 block); the checkpoint is incomplete");
    return reinterpret_cast<const float *>(scale->data);
  }

  StatusOr<TensorInfo> single(const safetensors::TensorInfo &tensor, const std::string &gguf) {
    std::optional<GgmlType> type = ggmlTypeOf(tensor.dtype);
    if (!type || tensor.shape.empty() || tensor.shape.size() > 2)
      return error(tensor.name, std::string("is ") + safetensors::dtypeName(tensor.dtype) +
                                    " of rank " + std::to_string(tensor.shape.size()) +
                                    "; weights must be F32, F16, BF16 or F8_E4M3 vectors or "
                                    "matrices");
    TensorInfo info;
    info.name = gguf;
    info.type = *type;
    info.ne.assign(tensor.shape.rbegin(), tensor.shape.rend());
    info.nbytes = tensor.end - tensor.begin;
    if (*type == GgmlType::F8_E4M3_B128) {
      StatusOr<const float *> scales = scalesOf(tensor);
      if (!scales.ok())
        return scales.status();
      auto fp8 = std::make_shared<gguf::BlockScaledFp8>();
      fp8->values.push_back(tensor.data);
      fp8->scales.push_back(*scales);
      info.fp8 = std::move(fp8);
    } else {
      info.data = tensor.data;
    }
    return info;
  }

  // Routed experts 0..N-1 of one matrix as one [cols, rows, N] tensor.
  StatusOr<TensorInfo> stacked(const std::string &gguf,
                               const std::map<int64_t, const safetensors::TensorInfo *> &byExpert) {
    const safetensors::TensorInfo &first = *byExpert.begin()->second;
    auto fp8 = std::make_shared<gguf::BlockScaledFp8>();
    int64_t expected = 0;
    for (const auto &[expert, tensor] : byExpert) {
      if (expert != expected++)
        return error(tensor->name, "follows expert " + std::to_string(expected - 2) +
                                       ": experts must be numbered 0, 1, ... without gaps");
      if (tensor->dtype != safetensors::Dtype::F8_E4M3)
        return error(tensor->name,
                     std::string("is ") + safetensors::dtypeName(tensor->dtype) +
                         "; routed experts are read from FP8 (F8_E4M3) checkpoints only, "
                         "such as DeepSeek's release");
      if (tensor->shape != first.shape)
        return error(tensor->name, "has another shape than " + first.name);
      StatusOr<const float *> scales = scalesOf(*tensor);
      if (!scales.ok())
        return scales.status();
      fp8->values.push_back(tensor->data);
      fp8->scales.push_back(*scales);
    }
    TensorInfo info;
    info.name = gguf;
    info.type = GgmlType::F8_E4M3_B128;
    info.ne = {first.shape[1], first.shape[0], static_cast<int64_t>(byExpert.size())};
    info.nbytes = static_cast<uint64_t>(info.elements());
    info.fp8 = std::move(fp8);
    return info;
  }

  const safetensors::Checkpoint &checkpoint_;
  int64_t layers_;
};

StatusOr<std::string> readText(const fs::path &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error("cannot read " + path.string());
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

} // namespace

bool isCheckpointDirectory(const std::string &path) {
  std::error_code error;
  if (!fs::is_directory(path, error) || !fs::is_regular_file(fs::path(path) / "config.json", error))
    return false;
  for (fs::directory_iterator it(path, error), end; !error && it != end; it.increment(error))
    if (it->path().extension() == ".gguf")
      return false;
  return true;
}

StatusOr<std::unique_ptr<gguf::GgufModel>> openCheckpointModel(const std::string &path) {
  StatusOr<std::unique_ptr<safetensors::Checkpoint>> opened = safetensors::Checkpoint::open(path);
  if (!opened.ok())
    return opened.status();
  std::shared_ptr<const safetensors::Checkpoint> checkpoint = std::move(*opened);
  const fs::path directory(path);
  if (checkpoint->fp8() && (checkpoint->fp8()->blockSize != std::vector<int64_t>{128, 128} ||
                            checkpoint->fp8()->format != "e4m3"))
    return Status::error((directory / "config.json").string() +
                         ": the quantization_config is not e4m3 with 128x128 weight blocks, "
                         "the only FP8 form supported (DeepSeek's).");
  std::string name = fs::absolute(directory).lexically_normal().filename().string();
  if (name.empty())
    name = fs::absolute(directory).lexically_normal().parent_path().filename().string();
  StatusOr<std::vector<KeyValue>> metadata =
      configMetadata(checkpoint->configJson(), (directory / "config.json").string(), name);
  if (!metadata.ok())
    return metadata.status();

  const fs::path tokenizerJson = directory / "tokenizer.json";
  std::error_code error;
  if (!fs::is_regular_file(tokenizerJson, error))
    return Status::error(path + " has no tokenizer.json; copy the model's tokenizer.json and "
                                "tokenizer_config.json (from its Hugging Face release) into it.");
  StatusOr<std::vector<KeyValue>> tokenizer =
      tokenizer::ggufMetadataFromTokenizerJson(tokenizerJson.string());
  if (!tokenizer.ok())
    return tokenizer.status();
  metadata->insert(metadata->end(), std::make_move_iterator(tokenizer->begin()),
                   std::make_move_iterator(tokenizer->end()));

  int64_t layers = 0;
  for (const KeyValue &entry : *metadata)
    if (entry.key == "deepseek2.block_count")
      layers = entry.value.asInt().value_or(0);
  std::vector<TensorInfo> tensors;
  if (Status built = ViewBuilder(*checkpoint, layers).build(tensors); !built.ok())
    return built;

  // The plan's fingerprint covers the shards and the files that set the
  // hyper-parameters and the vocabulary.
  gguf::ModelView view;
  view.format = "safetensors";
  XXH3_state_t *state = XXH3_createState();
  if (!state)
    return Status::error("out of memory while fingerprinting " + path);
  XXH3_64bits_reset(state);
  const std::string shards = safetensors::fingerprint(*checkpoint);
  XXH3_64bits_update(state, shards.data(), shards.size());
  for (const char *file : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    const fs::path filePath = directory / file;
    if (!fs::is_regular_file(filePath, error))
      continue;
    StatusOr<std::string> text = readText(filePath);
    if (!text.ok()) {
      XXH3_freeState(state);
      return text.status();
    }
    XXH3_64bits_update(state, file, std::char_traits<char>::length(file));
    XXH3_64bits_update(state, text->data(), text->size());
    view.files.push_back({filePath.string(), text->size()});
  }
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits_digest(state)));
  XXH3_freeState(state);
  view.fingerprint = hash;
  for (const std::unique_ptr<safetensors::SafetensorsFile> &file : checkpoint->files())
    view.files.push_back({file->path(), file->fileSize()});
  view.owner = checkpoint;
  return gguf::GgufModel::fromView(path, std::move(*metadata), std::move(tensors), std::move(view));
}

StatusOr<std::unique_ptr<gguf::GgufModel>> openModel(const std::string &path) {
  if (isCheckpointDirectory(path))
    return openCheckpointModel(path);
  return gguf::GgufModel::open(path);
}

Status convertFp8ToQ8_0(const TensorInfo &tensor, uint8_t *out, unsigned threads) {
  if (tensor.type != GgmlType::F8_E4M3_B128 || !tensor.fp8 || tensor.ne.size() < 2 ||
      tensor.ne[0] % 32 != 0)
    return Status::error("'" + tensor.name +
                         "' is not a block-scaled FP8 tensor with rows of whole 32-value "
                         "blocks; it cannot be converted to q8_0");
  const gguf::BlockScaledFp8 &fp8 = *tensor.fp8;
  const int64_t cols = tensor.ne[0], rows = tensor.ne[1];
  const int64_t slices = tensor.ne.size() > 2 ? tensor.ne[2] : 1;
  if (static_cast<int64_t>(fp8.values.size()) != slices ||
      static_cast<int64_t>(fp8.scales.size()) != slices)
    return Status::error("'" + tensor.name + "' has " + std::to_string(fp8.values.size()) +
                         " FP8 slices for " + std::to_string(slices) + " in its shape");
  const int64_t block = gguf::BlockScaledFp8::kBlock;
  const int64_t scaleCols = (cols + block - 1) / block;
  const uint64_t rowBytes = static_cast<uint64_t>(cols / 32) * 34;
  const int64_t totalRows = rows * slices;
  if (threads == 0)
    threads = std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::min<int64_t>(threads, std::max<int64_t>(1, totalRows / 64)));
  // GGML's q8_0 (quantize_row_q8_0_ref, as quant::quantize writes it) of the
  // values, with e4m3 decoded through a table: 10x faster than a call per
  // value, which matters for the 650 billion expert weights of V3.
  static const std::array<float, 256> kE4m3 = [] {
    std::array<float, 256> table{};
    for (int bits = 0; bits < 256; ++bits)
      table[size_t(bits)] = quant::fp8E4m3ToFloat(uint8_t(bits));
    return table;
  }();
  auto work = [&](unsigned worker) {
    float group[32];
    for (int64_t r = totalRows * worker / threads; r < totalRows * (worker + 1) / threads; ++r) {
      const int64_t slice = r / rows, inSlice = r % rows;
      const uint8_t *values = fp8.values[size_t(slice)] + inSlice * cols;
      const float *scales = fp8.scales[size_t(slice)] + (inSlice / block) * scaleCols;
      uint8_t *outRow = out + uint64_t(r) * rowBytes;
      for (int64_t c = 0; c < cols; c += 32) {
        const float scale = scales[c / block];
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) {
          group[j] = kE4m3[values[c + j]] * scale;
          amax = std::max(amax, std::fabs(group[j]));
        }
        const float d = amax / 127.0f;
        const float id = d != 0 ? 1.0f / d : 0.0f;
        uint8_t *blockOut = outRow + (c / 32) * 34;
        const uint16_t half = quant::floatToHalf(d);
        std::memcpy(blockOut, &half, 2);
        int8_t *qs = reinterpret_cast<int8_t *>(blockOut + 2);
        if (!std::isfinite(id)) { // as quant::quantize: no information left
          std::memset(qs, 0, 32);
          continue;
        }
        // roundf (ties away from zero) without a libm call, so the loop
        // vectorizes: |x| <= 127.x, truncated exactly by the int conversion.
        for (int j = 0; j < 32; ++j) {
          const float x = group[j] * id;
          const int truncated = int(x);
          const float rest = x - float(truncated);
          qs[j] = int8_t(truncated + (rest >= 0.5f) - (rest <= -0.5f));
        }
      }
    }
  };
  std::vector<std::thread> pool;
  for (unsigned worker = 1; worker < threads; ++worker)
    pool.emplace_back(work, worker);
  work(0);
  for (std::thread &thread : pool)
    thread.join();
  return Status::success();
}

} // namespace kt::model
