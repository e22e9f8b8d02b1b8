// kt-export-hf: Hugging Face names, shapes and values of exported DeepSeek
// models, config.json, the kv_b_proj rebuilt from the split MLA form, the
// models transformers cannot represent, and the command line.
#include "runtime/gguf/GgufFile.h"
#include "runtime/quant/Quant.h"
#include "runtime/safetensors/Safetensors.h"
#include "test/unit/common/RunCommand.h"
#include "test/unit/common/TempDir.h"
#include "tools/kt-export-hf/HfExport.h"
#include "tools/kt-gen-model/ModelGenerator.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <unistd.h>

namespace kt::hfexport::test {
namespace {

namespace fs = std::filesystem;
using gen::AttentionLayout;
using gen::ModelConfig;
using gguf::GgmlType;
using gguf::GgufModel;
using nlohmann::json;
using Shape = std::vector<int64_t>;

using TempDir = ::kt::test::TempDir;

// The tiny preset cut down: 3 layers (1 dense), 8 experts of 128 in 4 groups
// (2 used), top-2; q8_0 attention, q4_K experts (their down projections fall
// back to q8_0: rows of 128), f32 norms and router.
ModelConfig smallConfig() {
  StatusOr<ModelConfig> config = gen::presetConfig("tiny");
  EXPECT_TRUE(config.ok());
  ModelConfig c = *config;
  c.expertCount = 8;
  c.expertFfnSize = 128;
  c.expertsUsed = 2;
  c.seed = 7;
  return c;
}

// Plans the model, lets `edit` change the plan (drop or alter tensors), writes it.
void writeModel(const ModelConfig &config, const std::string &path,
                const std::function<void(gen::ModelPlan &)> &edit = nullptr) {
  StatusOr<gen::ModelPlan> plan = gen::planModel(config, gen::builtinVocabulary());
  ASSERT_TRUE(plan.ok()) << plan.message();
  if (edit)
    edit(*plan);
  gen::WriteOptions options;
  options.outputPath = path;
  options.threads = 2;
  StatusOr<gen::WriteResult> result = gen::writeModel(*plan, options);
  ASSERT_TRUE(result.ok()) << result.message();
}

std::unique_ptr<GgufModel> openModel(const std::string &path) {
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(path);
  EXPECT_TRUE(model.ok()) << model.message();
  return model.ok() ? std::move(*model) : nullptr;
}

// Exports `gguf` into `dir` through the library; fails the test on error.
void exportModel(const std::string &gguf, const std::string &dir, ExportOptions options = {}) {
  std::unique_ptr<GgufModel> model = openModel(gguf);
  ASSERT_TRUE(model);
  StatusOr<ExportPlan> plan = planExport(*model, options);
  ASSERT_TRUE(plan.ok()) << plan.message();
  Status written = writeExport(*plan, dir);
  ASSERT_TRUE(written.ok()) << written.message();
}

std::string exportError(const std::string &gguf) {
  std::unique_ptr<GgufModel> model = openModel(gguf);
  if (!model)
    return "cannot open";
  StatusOr<ExportPlan> plan = planExport(*model);
  return plan.ok() ? std::string() : plan.message();
}

std::vector<uint8_t> readBytes(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

json readJson(const std::string &path) {
  std::ifstream in(path);
  return json::parse(in);
}

// A safetensors file parsed independently of the exporter, checking the
// format's rules: little-endian header length, JSON header, F32 tensors whose
// data ranges tile the data section exactly.
struct Safetensors {
  json header;
  std::map<std::string, Shape> shapes;
  std::map<std::string, std::vector<float>> values;
  uint64_t headerLength = 0;
};

Safetensors parseSafetensors(const std::string &path) {
  Safetensors file;
  std::vector<uint8_t> bytes = readBytes(path);
  EXPECT_GE(bytes.size(), 8u);
  if (bytes.size() < 8)
    return file;
  for (int i = 7; i >= 0; --i)
    file.headerLength = (file.headerLength << 8) | bytes[i];
  EXPECT_LE(8 + file.headerLength, bytes.size());
  std::string text(bytes.begin() + 8, bytes.begin() + 8 + file.headerLength);
  EXPECT_EQ(text.front(), '{');
  file.header = json::parse(text);
  const uint64_t dataStart = 8 + file.headerLength;
  const uint64_t dataSize = bytes.size() - dataStart;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto &[name, entry] : file.header.items()) {
    if (name == "__metadata__")
      continue;
    EXPECT_EQ(entry.at("dtype"), "F32") << name;
    Shape shape = entry.at("shape").get<Shape>();
    uint64_t begin = entry.at("data_offsets")[0], end = entry.at("data_offsets")[1];
    int64_t elements = 1;
    for (int64_t d : shape)
      elements *= d;
    EXPECT_EQ(end - begin, static_cast<uint64_t>(elements) * 4) << name;
    EXPECT_LE(end, dataSize) << name;
    if (end > dataSize || end - begin != static_cast<uint64_t>(elements) * 4)
      continue;
    std::vector<float> values(static_cast<size_t>(elements));
    std::memcpy(values.data(), bytes.data() + dataStart + begin, end - begin);
    file.shapes[name] = shape;
    file.values[name] = std::move(values);
    ranges.push_back({begin, end});
  }
  std::sort(ranges.begin(), ranges.end());
  uint64_t expectedBegin = 0;
  for (const auto &[begin, end] : ranges) {
    EXPECT_EQ(begin, expectedBegin) << "tensor data ranges must tile the data section";
    expectedBegin = end;
  }
  EXPECT_EQ(expectedBegin, dataSize);
  return file;
}

std::vector<float> dequantize(const gguf::TensorInfo &tensor) {
  std::vector<float> values(static_cast<size_t>(tensor.elements()));
  Status s = quant::dequantize(tensor.type, tensor.data, values.data(), tensor.elements());
  EXPECT_TRUE(s.ok()) << tensor.name;
  return values;
}

const gguf::TensorInfo &tensorOf(const GgufModel &model, const std::string &name) {
  const gguf::TensorInfo *tensor = model.findTensor(name);
  if (!tensor)
    ADD_FAILURE() << "missing GGUF tensor " << name;
  static gguf::TensorInfo empty;
  return tensor ? *tensor : empty;
}

// What a Hugging Face tensor must hold, computed from the GGUF with GGML's
// indexing (element (i0, i1, i2) at i0 + ne0 * (i1 + ne1 * i2)).
std::vector<float> expectedValues(const GgufModel &model, const std::string &hfName,
                                  const ModelConfig &c) {
  static const std::map<std::string, std::string> direct = {
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_a_proj.weight", "attn_q_a.weight"},
      {"self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"},
      {"self_attn.q_b_proj.weight", "attn_q_b.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight"},
      {"self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      {"mlp.gate.weight", "ffn_gate_inp.weight"},
      {"mlp.gate.e_score_correction_bias", "exp_probs_b.bias"},
      {"mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight"},
      {"mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"},
      {"mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight"},
  };
  if (hfName == "model.embed_tokens.weight")
    return dequantize(tensorOf(model, "token_embd.weight"));
  if (hfName == "model.norm.weight")
    return dequantize(tensorOf(model, "output_norm.weight"));
  if (hfName == "lm_head.weight")
    return dequantize(tensorOf(model, "output.weight"));
  std::smatch m;
  static const std::regex expert(
      R"(model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)_proj\.weight)");
  if (std::regex_match(hfName, m, expert)) {
    const gguf::TensorInfo &all =
        tensorOf(model, "blk." + m[1].str() + ".ffn_" + m[3].str() + "_exps.weight");
    std::vector<float> values = dequantize(all);
    const int64_t e = std::stoll(m[2].str());
    const int64_t perExpert = all.ne[0] * all.ne[1];
    return std::vector<float>(values.begin() + e * perExpert, values.begin() + (e + 1) * perExpert);
  }
  static const std::regex kvB(R"(model\.layers\.(\d+)\.self_attn\.kv_b_proj\.weight)");
  if (std::regex_match(hfName, m, kvB)) {
    const std::string blk = "blk." + m[1].str() + ".";
    if (const gguf::TensorInfo *joint = model.findTensor(blk + "attn_kv_b.weight"))
      return dequantize(*joint);
    // kv_b_proj row h * (nope + v) + j, column c is attn_k_b(j, c, h) for
    // j < nope and attn_v_b(c, j - nope, h) after.
    const gguf::TensorInfo &kb = tensorOf(model, blk + "attn_k_b.weight");
    const gguf::TensorInfo &vb = tensorOf(model, blk + "attn_v_b.weight");
    std::vector<float> k = dequantize(kb), v = dequantize(vb);
    const int64_t nope = c.qkNopeHeadDim, vDim = c.vHeadDim, lora = c.kvLoraRank;
    std::vector<float> out;
    for (int64_t row = 0; row < c.headCount * (nope + vDim); ++row) {
      const int64_t h = row / (nope + vDim), j = row % (nope + vDim);
      for (int64_t col = 0; col < lora; ++col)
        out.push_back(j < nope ? k[j + kb.ne[0] * (col + kb.ne[1] * h)]
                               : v[col + vb.ne[0] * ((j - nope) + vb.ne[1] * h)]);
    }
    return out;
  }
  static const std::regex layer(R"(model\.layers\.(\d+)\.(.+))");
  if (std::regex_match(hfName, m, layer)) {
    auto it = direct.find(m[2].str());
    if (it != direct.end())
      return dequantize(tensorOf(model, "blk." + m[1].str() + "." + it->second));
  }
  ADD_FAILURE() << "no expectation for " << hfName;
  return {};
}

// Names and PyTorch shapes of a DeepseekV3 state dict, written out by hand.
std::map<std::string, Shape> expectedShapes(const ModelConfig &c, bool v3 = true) {
  const int64_t h = c.hiddenSize, qk = c.qkNopeHeadDim + c.qkRopeHeadDim;
  std::map<std::string, Shape> s;
  s["model.embed_tokens.weight"] = {408, h};
  s["model.norm.weight"] = {h};
  s["lm_head.weight"] = {408, h};
  for (int64_t l = 0; l < c.layerCount; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    s[p + "input_layernorm.weight"] = {h};
    s[p + "post_attention_layernorm.weight"] = {h};
    if (c.qLoraRank > 0) {
      s[p + "self_attn.q_a_proj.weight"] = {c.qLoraRank, h};
      s[p + "self_attn.q_a_layernorm.weight"] = {c.qLoraRank};
      s[p + "self_attn.q_b_proj.weight"] = {c.headCount * qk, c.qLoraRank};
    } else {
      s[p + "self_attn.q_proj.weight"] = {c.headCount * qk, h};
    }
    s[p + "self_attn.kv_a_proj_with_mqa.weight"] = {c.kvLoraRank + c.qkRopeHeadDim, h};
    s[p + "self_attn.kv_a_layernorm.weight"] = {c.kvLoraRank};
    s[p + "self_attn.kv_b_proj.weight"] = {c.headCount * (c.qkNopeHeadDim + c.vHeadDim),
                                           c.kvLoraRank};
    s[p + "self_attn.o_proj.weight"] = {h, c.headCount * c.vHeadDim};
    if (l < c.denseLayerCount) {
      s[p + "mlp.gate_proj.weight"] = {c.denseFfnSize, h};
      s[p + "mlp.up_proj.weight"] = {c.denseFfnSize, h};
      s[p + "mlp.down_proj.weight"] = {h, c.denseFfnSize};
      continue;
    }
    s[p + "mlp.gate.weight"] = {c.expertCount, h};
    if (v3)
      s[p + "mlp.gate.e_score_correction_bias"] = {c.expertCount};
    for (int64_t e = 0; e < c.expertCount; ++e) {
      const std::string x = p + "mlp.experts." + std::to_string(e) + ".";
      s[x + "gate_proj.weight"] = {c.expertFfnSize, h};
      s[x + "up_proj.weight"] = {c.expertFfnSize, h};
      s[x + "down_proj.weight"] = {h, c.expertFfnSize};
    }
    const int64_t shared = c.expertFfnSize * c.sharedExpertCount;
    s[p + "mlp.shared_experts.gate_proj.weight"] = {shared, h};
    s[p + "mlp.shared_experts.up_proj.weight"] = {shared, h};
    s[p + "mlp.shared_experts.down_proj.weight"] = {h, shared};
  }
  return s;
}

void expectNamesAndShapes(const Safetensors &file, const std::map<std::string, Shape> &expected) {
  for (const auto &[name, shape] : expected) {
    auto it = file.shapes.find(name);
    if (it == file.shapes.end()) {
      ADD_FAILURE() << "missing " << name;
      continue;
    }
    EXPECT_EQ(it->second, shape) << name;
  }
  for (const auto &[name, shape] : file.shapes)
    EXPECT_TRUE(expected.count(name)) << "unexpected " << name;
}

void expectValuesMatchGguf(const Safetensors &file, const GgufModel &model, const ModelConfig &c) {
  for (const auto &[name, values] : file.values) {
    std::vector<float> expected = expectedValues(model, name, c);
    ASSERT_EQ(values.size(), expected.size()) << name;
    EXPECT_EQ(std::memcmp(values.data(), expected.data(), values.size() * sizeof(float)), 0)
        << name << " differs from the dequantized GGUF tensor";
  }
}

TEST(ExportTest, NamesShapesAndValuesMatchTheDequantizedGguf) {
  TempDir dir;
  ModelConfig c = smallConfig();
  writeModel(c, dir.file("m.gguf"));
  exportModel(dir.file("m.gguf"), dir.file("hf"));
  Safetensors file = parseSafetensors(dir.file("hf/model.safetensors"));
  EXPECT_EQ(file.header["__metadata__"]["format"], "pt");
  EXPECT_EQ((8 + file.headerLength) % 8, 0u) << "tensor data must start 8-byte aligned";
  expectNamesAndShapes(file, expectedShapes(c));
  std::unique_ptr<GgufModel> model = openModel(dir.file("m.gguf"));
  ASSERT_TRUE(model);
  expectValuesMatchGguf(file, *model, c);
  // The quantized types really are in play (so the values above went through
  // q4_K and q8_0 decoding, not a copy of f32 data).
  EXPECT_EQ(model->findTensor("blk.1.ffn_gate_exps.weight")->type, GgmlType::Q4_K);
  EXPECT_EQ(model->findTensor("blk.1.attn_k_b.weight")->type, GgmlType::Q8_0);
  // Nothing but the weights, config and tokenizer files (no temporaries) is
  // left in the directory.
  std::set<std::string> names;
  for (const auto &entry : fs::directory_iterator(dir.file("hf")))
    names.insert(entry.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"config.json", "model.safetensors", "tokenizer.json",
                                          "tokenizer_config.json"}));
}

TEST(ExportTest, ModelWithoutQueryCompressionUsesQProjAndJointKvB) {
  TempDir dir;
  ModelConfig c = smallConfig();
  c.qLoraRank = 0;
  c.attention = AttentionLayout::Joint;
  c.types.attention = GgmlType::Q6_K;
  writeModel(c, dir.file("m.gguf"));
  exportModel(dir.file("m.gguf"), dir.file("hf"));
  Safetensors file = parseSafetensors(dir.file("hf/model.safetensors"));
  expectNamesAndShapes(file, expectedShapes(c));
  std::unique_ptr<GgufModel> model = openModel(dir.file("m.gguf"));
  ASSERT_TRUE(model);
  expectValuesMatchGguf(file, *model, c);
  json config = readJson(dir.file("hf/config.json"));
  EXPECT_TRUE(config["q_lora_rank"].is_null());
}

TEST(ExportTest, KvBRebuiltFromTheSplitFormEqualsTheJointForm) {
  // With f32 attention the generator's split tensors hold exactly the joint
  // tensor's values, so every export of the same seed must be identical.
  TempDir dir;
  ModelConfig c = smallConfig();
  c.types.attention = GgmlType::F32;
  std::map<std::string, Safetensors> exports;
  for (auto [layout, name] :
       {std::pair{AttentionLayout::Joint, "joint"}, std::pair{AttentionLayout::Split, "split"},
        std::pair{AttentionLayout::Both, "both"}}) {
    c.attention = layout;
    writeModel(c, dir.file(std::string(name) + ".gguf"));
  }
  exportModel(dir.file("joint.gguf"), dir.file("joint"));
  exportModel(dir.file("split.gguf"), dir.file("split"));
  exportModel(dir.file("both.gguf"), dir.file("both-joint"), {KvBSource::Joint});
  exportModel(dir.file("both.gguf"), dir.file("both-split"), {KvBSource::Split});
  for (const char *name : {"joint", "split", "both-joint", "both-split"})
    exports[name] = parseSafetensors(dir.file(std::string(name) + "/model.safetensors"));

  const std::vector<float> &joint =
      exports["joint"].values["model.layers.1.self_attn.kv_b_proj.weight"];
  ASSERT_EQ(joint.size(), size_t(4 * 64 * 64));
  EXPECT_GT(std::count_if(joint.begin(), joint.end(), [](float v) { return v != 0.0f; }), 1000);
  for (const char *name : {"split", "both-joint", "both-split"}) {
    EXPECT_EQ(exports[name].shapes, exports["joint"].shapes) << name;
    for (const auto &[tensor, values] : exports["joint"].values)
      EXPECT_EQ(exports[name].values[tensor], values) << name << ": " << tensor;
  }
  // And the split export agrees with the joint GGUF tensor itself.
  std::unique_ptr<GgufModel> jointModel = openModel(dir.file("joint.gguf"));
  ASSERT_TRUE(jointModel);
  EXPECT_EQ(exports["split"].values["model.layers.2.self_attn.kv_b_proj.weight"],
            dequantize(tensorOf(*jointModel, "blk.2.attn_kv_b.weight")));
}

TEST(ExportTest, KvBSourceOptionNeedsTheFormItNames) {
  TempDir dir;
  ModelConfig c = smallConfig();
  c.attention = AttentionLayout::Split;
  writeModel(c, dir.file("split.gguf"));
  std::unique_ptr<GgufModel> model = openModel(dir.file("split.gguf"));
  ASSERT_TRUE(model);
  StatusOr<ExportPlan> plan = planExport(*model, {KvBSource::Joint});
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.message().find("blk.0.attn_kv_b.weight"), std::string::npos) << plan.message();
}

TEST(ExportTest, ConfigJsonDescribesTheModelForDeepseekV3) {
  TempDir dir;
  ModelConfig c = smallConfig();
  writeModel(c, dir.file("m.gguf"));
  exportModel(dir.file("m.gguf"), dir.file("hf"));
  json j = readJson(dir.file("hf/config.json"));
  EXPECT_EQ(j["architectures"], json::array({"DeepseekV3ForCausalLM"}));
  EXPECT_EQ(j["model_type"], "deepseek_v3");
  EXPECT_EQ(j["vocab_size"], 408);
  EXPECT_EQ(j["hidden_size"], 256);
  EXPECT_EQ(j["intermediate_size"], 512);
  EXPECT_EQ(j["moe_intermediate_size"], 128);
  EXPECT_EQ(j["num_hidden_layers"], 3);
  EXPECT_EQ(j["num_attention_heads"], 4);
  // The split-form GGUF says head_count_kv 1 (latent MQA); transformers needs 4.
  EXPECT_EQ(j["num_key_value_heads"], 4);
  EXPECT_EQ(j["n_shared_experts"], 1);
  EXPECT_EQ(j["n_routed_experts"], 8);
  EXPECT_EQ(j["num_experts_per_tok"], 2);
  EXPECT_EQ(j["n_group"], 4);
  EXPECT_EQ(j["topk_group"], 2);
  EXPECT_EQ(j["first_k_dense_replace"], 1);
  EXPECT_EQ(j["norm_topk_prob"], true);
  EXPECT_TRUE(j["routed_scaling_factor"].is_number_float());
  EXPECT_EQ(j["routed_scaling_factor"].get<double>(), 2.5);
  EXPECT_EQ(j["kv_lora_rank"], 64);
  EXPECT_EQ(j["q_lora_rank"], 64);
  EXPECT_EQ(j["qk_nope_head_dim"], 32);
  EXPECT_EQ(j["qk_rope_head_dim"], 16);
  EXPECT_EQ(j["v_head_dim"], 32);
  EXPECT_EQ(j["rms_norm_eps"].get<double>(), 1e-6); // the decimal, not the f32's double
  EXPECT_EQ(j["rope_theta"].get<double>(), 10000.0);
  EXPECT_EQ(j["max_position_embeddings"], 163840);
  EXPECT_EQ(j["tie_word_embeddings"], false);
  EXPECT_EQ(j["attention_bias"], false);
  EXPECT_EQ(j["rope_interleave"], true);
  EXPECT_EQ(j["bos_token_id"], 0);
  EXPECT_EQ(j["eos_token_id"], 1);
  EXPECT_EQ(j["torch_dtype"], "float32");
  const json &yarn = j["rope_scaling"];
  EXPECT_EQ(yarn["type"], "yarn");
  EXPECT_EQ(yarn["rope_type"], "yarn");
  EXPECT_EQ(yarn["factor"].get<double>(), 40.0);
  EXPECT_EQ(yarn["original_max_position_embeddings"], 4096);
  EXPECT_EQ(yarn["beta_fast"].get<double>(), 32.0);
  EXPECT_EQ(yarn["beta_slow"].get<double>(), 1.0);
  // yarn_log_multiplier 0.1 = 0.1 * mscale_all_dim.
  EXPECT_EQ(yarn["mscale_all_dim"].get<double>(), 1.0);
  EXPECT_EQ(yarn["mscale"].get<double>(), 1.0);
  EXPECT_FALSE(yarn.contains("attention_factor"));
}

TEST(ExportTest, YarnMultiplierBecomesMscaleAllDim) {
  TempDir dir;
  ModelConfig c = smallConfig();
  c.yarnLogMultiplier = 0.0707; // DeepSeek-V2's mscale_all_dim 0.707
  c.yarnFactor = 16;
  c.yarnOriginalContext = 2048;
  writeModel(c, dir.file("m.gguf"));
  exportModel(dir.file("m.gguf"), dir.file("hf"));
  json yarn = readJson(dir.file("hf/config.json"))["rope_scaling"];
  EXPECT_EQ(yarn["mscale_all_dim"].get<double>(), 0.707);
  EXPECT_EQ(yarn["mscale"].get<double>(), 0.707);
  EXPECT_EQ(yarn["factor"].get<double>(), 16.0);
  EXPECT_EQ(yarn["original_max_position_embeddings"], 2048);

  // No multiplier: llama.cpp leaves the rotation unscaled, so transformers
  // must not apply YaRN's default 0.1 * ln(factor) + 1 either.
  c.yarnLogMultiplier = 0.0;
  writeModel(c, dir.file("zero.gguf"));
  exportModel(dir.file("zero.gguf"), dir.file("zero"));
  yarn = readJson(dir.file("zero/config.json"))["rope_scaling"];
  EXPECT_EQ(yarn["mscale_all_dim"].get<double>(), 0.0);
  EXPECT_EQ(yarn["attention_factor"].get<double>(), 1.0);
}

TEST(ExportTest, NoYarnMeansNoRopeScaling) {
  TempDir dir;
  ModelConfig c = smallConfig();
  c.yarnFactor = 1;
  writeModel(c, dir.file("m.gguf"));
  exportModel(dir.file("m.gguf"), dir.file("hf"));
  json j = readJson(dir.file("hf/config.json"));
  EXPECT_TRUE(j["rope_scaling"].is_null());
  EXPECT_EQ(j["rope_theta"].get<double>(), 10000.0);
}

ModelConfig softmaxConfig() {
  ModelConfig c = smallConfig();
  c.gating = gen::GatingFunction::Softmax;
  c.normTopkProb = false;
  c.routedScalingFactor = 1.0;
  c.expertGroupCount = 1;
  c.expertGroupsUsed = 1;
  c.yarnFactor = 1;
  return c;
}

TEST(ExportTest, SoftmaxGatingExportsDeepseekV2) {
  TempDir dir;
  ModelConfig c = softmaxConfig();
  writeModel(c, dir.file("m.gguf"));
  exportModel(dir.file("m.gguf"), dir.file("hf"));
  json j = readJson(dir.file("hf/config.json"));
  EXPECT_EQ(j["model_type"], "deepseek_v2");
  EXPECT_EQ(j["architectures"], json::array({"DeepseekV2ForCausalLM"}));
  EXPECT_EQ(j["topk_method"], "greedy");
  EXPECT_EQ(j["norm_topk_prob"], false);
  EXPECT_EQ(j["routed_scaling_factor"].get<double>(), 1.0);
  EXPECT_FALSE(j.contains("rope_interleave"));
  Safetensors file = parseSafetensors(dir.file("hf/model.safetensors"));
  expectNamesAndShapes(file, expectedShapes(c, /*v3=*/false));
  std::unique_ptr<GgufModel> model = openModel(dir.file("m.gguf"));
  ASSERT_TRUE(model);
  expectValuesMatchGguf(file, *model, c);
}

TEST(ExportTest, RefusesWhatTransformersWouldComputeDifferently) {
  TempDir dir;
  struct Case {
    const char *name;
    std::function<void(ModelConfig &)> edit;
    const char *mentions;
  };
  const std::vector<Case> cases = {
      {"norm", [](ModelConfig &c) { c.normTopkProb = true; }, "--norm-topk-prob false"},
      {"groups",
       [](ModelConfig &c) {
         c.expertGroupCount = 4;
         c.expertGroupsUsed = 2;
       },
       "--groups 1"},
      {"yarn", [](ModelConfig &c) { c.yarnFactor = 40; }, "--yarn-factor 1"},
  };
  for (const Case &test : cases) {
    ModelConfig c = softmaxConfig();
    test.edit(c);
    const std::string path = dir.file(std::string(test.name) + ".gguf");
    writeModel(c, path);
    std::string error = exportError(path);
    EXPECT_NE(error.find("DeepseekV2"), std::string::npos) << test.name << ": " << error;
    EXPECT_NE(error.find(test.mentions), std::string::npos) << test.name << ": " << error;
    EXPECT_NE(error.find(path), std::string::npos) << test.name << ": " << error;
  }
  // DeepseekV3 scores a group by its two best experts.
  ModelConfig oneExpertPerGroup = smallConfig();
  oneExpertPerGroup.expertGroupCount = 8;
  oneExpertPerGroup.expertGroupsUsed = 4;
  writeModel(oneExpertPerGroup, dir.file("groups.gguf"));
  EXPECT_NE(exportError(dir.file("groups.gguf")).find("at least two per group"), std::string::npos);
}

TEST(ExportTest, MissingCorrectionBiasIsExportedAsZeros) {
  TempDir dir;
  ModelConfig c = smallConfig();
  writeModel(c, dir.file("m.gguf"), [](gen::ModelPlan &plan) {
    auto &t = plan.tensors;
    t.erase(std::remove_if(
                t.begin(), t.end(),
                [](const gen::PlannedTensor &x) { return x.name == "blk.1.exp_probs_b.bias"; }),
            t.end());
  });
  exportModel(dir.file("m.gguf"), dir.file("hf"));
  Safetensors file = parseSafetensors(dir.file("hf/model.safetensors"));
  EXPECT_EQ(file.values["model.layers.1.mlp.gate.e_score_correction_bias"],
            std::vector<float>(8, 0.0f));
  const std::vector<float> &kept = file.values["model.layers.2.mlp.gate.e_score_correction_bias"];
  EXPECT_NE(kept, std::vector<float>(8, 0.0f));
}

TEST(ExportTest, TiedOutputTakesTheEmbedding) {
  TempDir dir;
  ModelConfig c = smallConfig();
  writeModel(c, dir.file("m.gguf"), [](gen::ModelPlan &plan) {
    auto &t = plan.tensors;
    t.erase(std::remove_if(t.begin(), t.end(),
                           [](const gen::PlannedTensor &x) { return x.name == "output.weight"; }),
            t.end());
  });
  exportModel(dir.file("m.gguf"), dir.file("hf"));
  Safetensors file = parseSafetensors(dir.file("hf/model.safetensors"));
  EXPECT_EQ(file.values["lm_head.weight"], file.values["model.embed_tokens.weight"]);
  EXPECT_EQ(readJson(dir.file("hf/config.json"))["tie_word_embeddings"], false);
}

TEST(ExportTest, UnknownAndMisshapenTensorsAreRefused) {
  TempDir dir;
  ModelConfig c = smallConfig();
  writeModel(c, dir.file("extra.gguf"), [](gen::ModelPlan &plan) {
    gen::PlannedTensor extra = plan.tensors.back();
    extra.name = "blk.0.nextn.extra.weight";
    plan.tensors.push_back(extra);
  });
  std::string error = exportError(dir.file("extra.gguf"));
  EXPECT_NE(error.find("'blk.0.nextn.extra.weight'"), std::string::npos) << error;

  writeModel(c, dir.file("shape.gguf"), [](gen::ModelPlan &plan) {
    for (gen::PlannedTensor &t : plan.tensors)
      if (t.name == "blk.2.attn_kv_a_norm.weight")
        t.ne = {32};
  });
  error = exportError(dir.file("shape.gguf"));
  EXPECT_NE(error.find("'blk.2.attn_kv_a_norm.weight' has shape {32}"), std::string::npos) << error;
  EXPECT_NE(error.find("need {64}"), std::string::npos) << error;

  writeModel(c, dir.file("missing.gguf"), [](gen::ModelPlan &plan) {
    auto &t = plan.tensors;
    t.erase(std::remove_if(
                t.begin(), t.end(),
                [](const gen::PlannedTensor &x) { return x.name == "blk.1.ffn_up_exps.weight"; }),
            t.end());
  });
  error = exportError(dir.file("missing.gguf"));
  EXPECT_NE(error.find("'blk.1.ffn_up_exps.weight' is missing"), std::string::npos) << error;
}

using kt::test::CommandResult;

CommandResult runExporter(const std::string &arguments) {
  return kt::test::runCommand(std::string(KT_BINARY_DIR) + "/bin/kt-export-hf " + arguments +
                              " 2>&1");
}

TEST(ExportCliTest, ExportsAndReportsErrors) {
  TempDir dir;
  ModelConfig c = smallConfig();
  writeModel(c, dir.file("m.gguf"));

  CommandResult ok = runExporter(dir.file("m.gguf") + " -o " + dir.file("out/nested"));
  EXPECT_EQ(ok.exitCode, 0) << ok.output;
  EXPECT_NE(ok.output.find("deepseek_v3"), std::string::npos) << ok.output;
  EXPECT_TRUE(fs::exists(dir.file("out/nested/config.json")));
  // The command writes what the library writes.
  exportModel(dir.file("m.gguf"), dir.file("lib"));
  EXPECT_EQ(readBytes(dir.file("out/nested/model.safetensors")),
            readBytes(dir.file("lib/model.safetensors")));
  EXPECT_EQ(readBytes(dir.file("out/nested/config.json")), readBytes(dir.file("lib/config.json")));

  CommandResult missing = runExporter(dir.file("absent.gguf") + " -o " + dir.file("x"));
  EXPECT_EQ(missing.exitCode, 1);
  EXPECT_NE(missing.output.find("kt-export-hf: error:"), std::string::npos) << missing.output;

  CommandResult badOption =
      runExporter(dir.file("m.gguf") + " -o " + dir.file("y") + " --kv-b sideways");
  EXPECT_EQ(badOption.exitCode, 2) << badOption.output;
  EXPECT_NE(badOption.output.find("--kv-b"), std::string::npos) << badOption.output;
  EXPECT_FALSE(fs::exists(dir.file("y")));

  ModelConfig refused = softmaxConfig();
  refused.normTopkProb = true;
  writeModel(refused, dir.file("refused.gguf"));
  CommandResult refusal = runExporter(dir.file("refused.gguf") + " -o " + dir.file("z"));
  EXPECT_EQ(refusal.exitCode, 1);
  EXPECT_NE(refusal.output.find("norm-topk-prob"), std::string::npos) << refusal.output;
  EXPECT_FALSE(fs::exists(dir.file("z")));
}

} // namespace
} // namespace kt::hfexport::test

namespace kt::hfexport::test {
namespace {

// The FP8 checkpoint read back with the runtime's safetensors reader: the
// projections are F8_E4M3 with per-block scales and dequantize to the
// exported f32 values within e4m3's precision; the rest is BF16 (F32 for the
// correction bias); shards, index and config are consistent.
TEST(ExportTest, Fp8CheckpointReadsBackWithinE4m3Precision) {
  TempDir dir;
  ModelConfig c = smallConfig();
  writeModel(c, dir.file("m.gguf"));
  std::unique_ptr<GgufModel> model = openModel(dir.file("m.gguf"));
  ASSERT_TRUE(model);
  StatusOr<ExportPlan> plan = planExport(*model);
  ASSERT_TRUE(plan.ok()) << plan.message();
  Fp8ExportOptions options;
  options.block = 64; // several blocks per matrix at these sizes
  options.shardBytes = 100 * 1024;
  ASSERT_TRUE(writeFp8Export(*plan, dir.file("fp8"), options).ok());

  StatusOr<std::unique_ptr<safetensors::Checkpoint>> checkpoint =
      safetensors::Checkpoint::open(dir.file("fp8"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.message();
  EXPECT_GT((*checkpoint)->files().size(), 1u);
  ASSERT_TRUE((*checkpoint)->fp8().has_value());
  EXPECT_EQ((*checkpoint)->fp8()->blockSize, (std::vector<int64_t>{64, 64}));
  EXPECT_EQ((*checkpoint)->modelType(), "deepseek_v3");

  int fp8Tensors = 0;
  for (const ExportTensor &t : plan->tensors) {
    SCOPED_TRACE(t.name);
    const safetensors::TensorInfo *stored = (*checkpoint)->findTensor(t.name);
    ASSERT_NE(stored, nullptr);
    EXPECT_EQ(stored->shape, t.shape);
    std::vector<float> expected(static_cast<size_t>(t.elements())), got(expected.size());
    ASSERT_TRUE(materializeTensor(t, expected.data()).ok());
    const safetensors::TensorInfo *scales = (*checkpoint)->findTensor(t.name + "_scale_inv");
    ASSERT_TRUE(safetensors::dequantize(*stored, scales, 64, got.data()).ok());
    double diff = 0, norm = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      diff += (double(got[i]) - expected[i]) * (double(got[i]) - expected[i]);
      norm += double(expected[i]) * expected[i];
    }
    const double error = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
    if (stored->dtype == safetensors::Dtype::F8_E4M3) {
      ++fp8Tensors;
      EXPECT_LT(t.name.find("_proj"), std::string::npos);
      EXPECT_LE(error, 0.05);  // 3 mantissa bits
      EXPECT_GT(error, 1e-4);  // really quantized
    } else if (stored->dtype == safetensors::Dtype::BF16) {
      EXPECT_LE(error, 4e-3);
    } else {
      EXPECT_EQ(stored->dtype, safetensors::Dtype::F32);
      EXPECT_EQ(error, 0.0);
    }
  }
  EXPECT_GT(fp8Tensors, 10);
}

} // namespace
} // namespace kt::hfexport::test
