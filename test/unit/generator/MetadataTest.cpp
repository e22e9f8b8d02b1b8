// The metadata of generated models, read back with the project's GGUF reader.
#include "test/unit/generator/GeneratorTestUtil.h"

namespace kt::gen::test {
namespace {

using gguf::GgufModel;
using gguf::Value;
using gguf::ValueType;

std::unique_ptr<GgufModel> openModel(const std::string &path) {
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(path);
  EXPECT_TRUE(model.ok()) << (model.ok() ? "" : model.message());
  return model.ok() ? std::move(*model) : nullptr;
}

void expectUInt32(const GgufModel &model, const std::string &key, uint64_t expected) {
  const Value *value = model.find(key);
  ASSERT_NE(value, nullptr) << "missing key " << key;
  EXPECT_EQ(value->type, ValueType::UInt32) << key;
  EXPECT_EQ(value->u, expected) << key;
}

void expectFloat32(const GgufModel &model, const std::string &key, double expected) {
  const Value *value = model.find(key);
  ASSERT_NE(value, nullptr) << "missing key " << key;
  EXPECT_EQ(value->type, ValueType::Float32) << key;
  EXPECT_FLOAT_EQ(static_cast<float>(value->f), static_cast<float>(expected)) << key;
}

void expectString(const GgufModel &model, const std::string &key, const std::string &expected) {
  const Value *value = model.find(key);
  ASSERT_NE(value, nullptr) << "missing key " << key;
  EXPECT_EQ(value->type, ValueType::String) << key;
  EXPECT_EQ(value->s, expected) << key;
}

void expectBool(const GgufModel &model, const std::string &key, bool expected) {
  const Value *value = model.find(key);
  ASSERT_NE(value, nullptr) << "missing key " << key;
  EXPECT_EQ(value->type, ValueType::Bool) << key;
  EXPECT_EQ(value->u != 0, expected) << key;
}

TEST(GeneratorMetadata, TinyModelHasEveryDeepseek2Key) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  writeTiny(config, dir.file("tiny.gguf"));
  auto model = openModel(dir.file("tiny.gguf"));
  ASSERT_NE(model, nullptr);
  const int64_t vocab = builtinVocabulary().size();

  EXPECT_EQ(model->architecture(), "deepseek2");
  expectString(*model, "general.architecture", "deepseek2");
  expectString(*model, "general.name", "kt-tiny-deepseek-v3");
  expectUInt32(*model, "general.file_type", 15); // mostly q4_K (experts)
  expectUInt32(*model, "general.quantization_version", 2);

  expectUInt32(*model, "deepseek2.block_count", 3);
  expectUInt32(*model, "deepseek2.context_length", 163840);
  expectUInt32(*model, "deepseek2.embedding_length", 256);
  expectUInt32(*model, "deepseek2.feed_forward_length", 512);
  expectUInt32(*model, "deepseek2.attention.head_count", 4);
  expectUInt32(*model, "deepseek2.attention.head_count_kv", 1);
  expectUInt32(*model, "deepseek2.attention.q_lora_rank", 64);
  expectUInt32(*model, "deepseek2.attention.kv_lora_rank", 64);
  // Split layout: key/value_length describe the latent, *_mla the heads.
  expectUInt32(*model, "deepseek2.attention.key_length", 64 + 16);
  expectUInt32(*model, "deepseek2.attention.value_length", 64);
  expectUInt32(*model, "deepseek2.attention.key_length_mla", 32 + 16);
  expectUInt32(*model, "deepseek2.attention.value_length_mla", 32);
  expectFloat32(*model, "deepseek2.attention.layer_norm_rms_epsilon", 1e-6);
  expectUInt32(*model, "deepseek2.rope.dimension_count", 16);
  expectFloat32(*model, "deepseek2.rope.freq_base", 10000.0);
  expectString(*model, "deepseek2.rope.scaling.type", "yarn");
  expectFloat32(*model, "deepseek2.rope.scaling.factor", 40.0);
  expectUInt32(*model, "deepseek2.rope.scaling.original_context_length", 4096);
  expectFloat32(*model, "deepseek2.rope.scaling.yarn_log_multiplier", 0.1);
  expectUInt32(*model, "deepseek2.leading_dense_block_count", 1);
  expectUInt32(*model, "deepseek2.expert_count", 16);
  expectUInt32(*model, "deepseek2.expert_used_count", 4);
  expectUInt32(*model, "deepseek2.expert_shared_count", 1);
  expectUInt32(*model, "deepseek2.expert_feed_forward_length", 256);
  expectFloat32(*model, "deepseek2.expert_weights_scale", 2.5);
  expectBool(*model, "deepseek2.expert_weights_norm", true);
  expectUInt32(*model, "deepseek2.expert_gating_func", 2); // sigmoid
  expectUInt32(*model, "deepseek2.expert_group_count", 4);
  expectUInt32(*model, "deepseek2.expert_group_used_count", 2);
  expectUInt32(*model, "deepseek2.vocab_size", static_cast<uint64_t>(vocab));

  expectString(*model, "tokenizer.ggml.model", "gpt2");
  expectString(*model, "tokenizer.ggml.pre", "deepseek-v3");
  const Value *tokens = model->find("tokenizer.ggml.tokens");
  ASSERT_NE(tokens, nullptr);
  EXPECT_EQ(tokens->elementType, ValueType::String);
  EXPECT_EQ(static_cast<int64_t>(tokens->array.size()), vocab);
  const Value *types = model->find("tokenizer.ggml.token_type");
  ASSERT_NE(types, nullptr);
  EXPECT_EQ(types->elementType, ValueType::Int32);
  EXPECT_EQ(static_cast<int64_t>(types->array.size()), vocab);
  EXPECT_NE(model->find("tokenizer.ggml.merges"), nullptr);
  expectUInt32(*model, "tokenizer.ggml.bos_token_id", 0);
  expectUInt32(*model, "tokenizer.ggml.eos_token_id", 1);
  expectUInt32(*model, "tokenizer.ggml.padding_token_id", 1);
  expectBool(*model, "tokenizer.ggml.add_bos_token", true);
  expectBool(*model, "tokenizer.ggml.add_eos_token", false);
  const Value *chatTemplate = model->find("tokenizer.chat_template");
  ASSERT_NE(chatTemplate, nullptr);
  // llama.cpp detects the DeepSeek-V3 template family by this expression.
  EXPECT_NE(chatTemplate->s.find(
                "'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'"),
            std::string::npos);
  // A single file carries no split keys.
  EXPECT_EQ(model->find("split.count"), nullptr);
}

TEST(GeneratorMetadata, JointLayoutDescribesDecompressedHeads) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  config.attention = AttentionLayout::Joint;
  writeTiny(config, dir.file("joint.gguf"));
  auto model = openModel(dir.file("joint.gguf"));
  ASSERT_NE(model, nullptr);
  // Files from before the attn_k_b/attn_v_b split: no *_mla keys, and
  // key/value_length are the per-head sizes.
  expectUInt32(*model, "deepseek2.attention.key_length", 32 + 16);
  expectUInt32(*model, "deepseek2.attention.value_length", 32);
  expectUInt32(*model, "deepseek2.attention.head_count_kv", 4);
  EXPECT_EQ(model->find("deepseek2.attention.key_length_mla"), nullptr);
  EXPECT_EQ(model->find("deepseek2.attention.value_length_mla"), nullptr);
}

TEST(GeneratorMetadata, V2StyleOptionsChangeTheirKeys) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  config.gating = GatingFunction::Softmax;
  config.normTopkProb = false;
  config.routedScalingFactor = 16.0;
  config.qLoraRank = 0;
  config.yarnFactor = 1.0;
  config.contextLength = 32768;
  config.name = "v2-like";
  writeTiny(config, dir.file("v2.gguf"));
  auto model = openModel(dir.file("v2.gguf"));
  ASSERT_NE(model, nullptr);
  expectUInt32(*model, "deepseek2.expert_gating_func", 1); // softmax
  expectBool(*model, "deepseek2.expert_weights_norm", false);
  expectFloat32(*model, "deepseek2.expert_weights_scale", 16.0);
  expectUInt32(*model, "deepseek2.attention.q_lora_rank", 0);
  expectUInt32(*model, "deepseek2.context_length", 32768);
  expectString(*model, "general.name", "v2-like");
  // No YaRN: no rope.scaling keys at all.
  EXPECT_EQ(model->find("deepseek2.rope.scaling.type"), nullptr);
  EXPECT_EQ(model->find("deepseek2.rope.scaling.factor"), nullptr);
}

TEST(GeneratorMetadata, FileTypeFollowsTheExpertType) {
  ModelConfig config = tinyConfig();
  Vocabulary vocab = builtinVocabulary();
  auto fileType = [&](GgmlType type) -> uint64_t {
    config.types.experts = type;
    for (const gguf::KeyValue &kv : buildMetadata(config, vocab))
      if (kv.key == "general.file_type")
        return kv.value.u;
    return 9999;
  };
  EXPECT_EQ(fileType(GgmlType::F32), 0u);
  EXPECT_EQ(fileType(GgmlType::F16), 1u);
  EXPECT_EQ(fileType(GgmlType::Q8_0), 7u);
  EXPECT_EQ(fileType(GgmlType::Q4_K), 15u);
  EXPECT_EQ(fileType(GgmlType::Q6_K), 18u);
  EXPECT_EQ(fileType(GgmlType::BF16), 32u);
}

TEST(GeneratorMetadata, MetadataKeysAreUnique) {
  ModelConfig config = tinyConfig();
  for (AttentionLayout layout :
       {AttentionLayout::Joint, AttentionLayout::Split, AttentionLayout::Both}) {
    config.attention = layout;
    std::vector<gguf::KeyValue> metadata = buildMetadata(config, builtinVocabulary());
    std::set<std::string> keys;
    for (const gguf::KeyValue &kv : metadata)
      EXPECT_TRUE(keys.insert(kv.key).second) << "duplicate key " << kv.key;
  }
}

} // namespace
} // namespace kt::gen::test
