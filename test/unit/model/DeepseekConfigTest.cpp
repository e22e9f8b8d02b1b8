#include "runtime/model/DeepseekConfig.h"

#include "runtime/gguf/GgufWriter.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <unistd.h>

namespace kt::model {
namespace {

namespace fs = std::filesystem;

// Writes a GGUF file with the given metadata (and a token embedding so the
// vocabulary size can be derived) and opens it as a model.
class DeepseekConfigTest : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = fs::path(KT_BINARY_DIR) / "test-tmp" /
           ("deepseek-config-" + std::to_string(getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The V3-style keys of a small model; tests drop or change some.
  // `overrides` replaces the value of integer keys.
  static void addV3Keys(gguf::GgufWriter &writer,
                        const std::map<std::string, uint32_t> &overrides = {}) {
    auto addUInt32 = [&](const std::string &key, uint32_t value) {
      auto it = overrides.find(key);
      writer.addUInt32(key, it == overrides.end() ? value : it->second);
    };
    writer.addString("general.architecture", "deepseek2");
    writer.addString("general.name", "tiny");
    addUInt32("deepseek2.block_count", 3);
    addUInt32("deepseek2.context_length", 4096);
    addUInt32("deepseek2.embedding_length", 64);
    addUInt32("deepseek2.feed_forward_length", 96);
    addUInt32("deepseek2.attention.head_count", 4);
    addUInt32("deepseek2.attention.q_lora_rank", 32);
    addUInt32("deepseek2.attention.kv_lora_rank", 32);
    // Absorbed (MQA) sizes in key/value_length; the originals in *_mla.
    addUInt32("deepseek2.attention.key_length", 40);
    addUInt32("deepseek2.attention.value_length", 32);
    addUInt32("deepseek2.attention.key_length_mla", 24);
    addUInt32("deepseek2.attention.value_length_mla", 16);
    addUInt32("deepseek2.rope.dimension_count", 8);
    writer.addFloat32("deepseek2.attention.layer_norm_rms_epsilon", 1e-6f);
    writer.addFloat32("deepseek2.rope.freq_base", 10000.0f);
    addUInt32("deepseek2.leading_dense_block_count", 1);
    addUInt32("deepseek2.expert_count", 8);
    addUInt32("deepseek2.expert_used_count", 2);
    addUInt32("deepseek2.expert_shared_count", 1);
    addUInt32("deepseek2.expert_feed_forward_length", 32);
    writer.addFloat32("deepseek2.expert_weights_scale", 2.5f);
    writer.addBool("deepseek2.expert_weights_norm", true);
    addUInt32("deepseek2.expert_gating_func", 2);
    addUInt32("deepseek2.expert_group_count", 4);
    addUInt32("deepseek2.expert_group_used_count", 2);
    writer.addString("deepseek2.rope.scaling.type", "yarn");
    writer.addFloat32("deepseek2.rope.scaling.factor", 40.0f);
    addUInt32("deepseek2.rope.scaling.original_context_length", 4096);
    writer.addFloat32("deepseek2.rope.scaling.yarn_log_multiplier", 0.1f);
  }

  StatusOr<DeepseekConfig> load(const gguf::GgufWriter &writer) {
    std::vector<uint8_t> embedding(64 * 100 * sizeof(float), 0);
    gguf::GgufWriter withTensor = writer;
    withTensor.addTensor("token_embd.weight", {64, 100}, gguf::GgmlType::F32, embedding);
    std::string path = (dir_ / "model.gguf").string();
    Status written = withTensor.write(path);
    EXPECT_TRUE(written.ok()) << (written.ok() ? "" : written.message());
    auto model = gguf::GgufModel::open(path);
    EXPECT_TRUE(model.ok()) << (model.ok() ? "" : model.message());
    if (!model.ok())
      return model.status();
    return DeepseekConfig::fromGguf(**model);
  }

  fs::path dir_;
};

TEST_F(DeepseekConfigTest, ReadsV3HyperParameters) {
  gguf::GgufWriter writer;
  addV3Keys(writer);
  StatusOr<DeepseekConfig> config = load(writer);
  ASSERT_TRUE(config.ok()) << config.message();
  EXPECT_EQ(config->name, "tiny");
  EXPECT_EQ(config->blockCount, 3);
  EXPECT_EQ(config->hidden, 64);
  EXPECT_EQ(config->vocab, 100); // from token_embd.weight: no vocab_size key
  EXPECT_EQ(config->qLoraRank, 32);
  // The *_mla keys win over the absorbed key/value lengths.
  EXPECT_EQ(config->qkNopeHeadDim, 16);
  EXPECT_EQ(config->qkRopeHeadDim, 8);
  EXPECT_EQ(config->vHeadDim, 16);
  EXPECT_EQ(config->scoring, ExpertScoring::Sigmoid);
  EXPECT_TRUE(config->expertWeightsNorm);
  EXPECT_DOUBLE_EQ(config->expertWeightsScale, 2.5);
  EXPECT_EQ(config->expertGroups, 4);
  EXPECT_EQ(config->expertGroupsUsed, 2);
  EXPECT_DOUBLE_EQ(config->ropeScalingFactor, 40.0);
  EXPECT_EQ(config->ropeOriginalContextLength, 4096);
  EXPECT_FALSE(config->isMoeLayer(0));
  EXPECT_TRUE(config->isMoeLayer(1));
}

TEST_F(DeepseekConfigTest, OlderFilesGetV2Defaults) {
  gguf::GgufWriter writer;
  writer.addString("general.architecture", "deepseek2");
  writer.addUInt32("deepseek2.block_count", 2);
  writer.addUInt32("deepseek2.context_length", 4096);
  writer.addUInt32("deepseek2.embedding_length", 64);
  writer.addUInt32("deepseek2.feed_forward_length", 96);
  writer.addUInt32("deepseek2.attention.head_count", 4);
  writer.addUInt32("deepseek2.attention.kv_lora_rank", 32);
  writer.addUInt32("deepseek2.attention.key_length", 24);
  writer.addUInt32("deepseek2.attention.value_length", 16);
  writer.addUInt32("deepseek2.rope.dimension_count", 8);
  writer.addUInt32("deepseek2.vocab_size", 100);
  StatusOr<DeepseekConfig> config = load(writer);
  ASSERT_TRUE(config.ok()) << config.message();
  EXPECT_EQ(config->qLoraRank, 0);
  EXPECT_EQ(config->qkNopeHeadDim, 16);
  EXPECT_EQ(config->vHeadDim, 16);
  EXPECT_EQ(config->scoring, ExpertScoring::Softmax);
  EXPECT_EQ(config->expertGroups, 1);
  EXPECT_DOUBLE_EQ(config->ropeScalingFactor, 1.0);
  EXPECT_EQ(config->experts, 0);
}

TEST_F(DeepseekConfigTest, UnknownArchitectureIsNamed) {
  gguf::GgufWriter writer;
  writer.addString("general.architecture", "llama");
  StatusOr<DeepseekConfig> config = load(writer);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.message().find("architecture 'llama' is not supported"), std::string::npos)
      << config.message();
  EXPECT_NE(config.message().find("model.gguf"), std::string::npos);
}

TEST_F(DeepseekConfigTest, MissingKeyIsNamed) {
  gguf::GgufWriter writer;
  writer.addString("general.architecture", "deepseek2");
  writer.addUInt32("deepseek2.block_count", 2);
  StatusOr<DeepseekConfig> config = load(writer);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.message().find("'deepseek2.context_length' is missing"), std::string::npos)
      << config.message();
}

TEST_F(DeepseekConfigTest, GroupsThatDoNotDivideExpertsAreRefused) {
  gguf::GgufWriter writer;
  addV3Keys(writer, {{"deepseek2.expert_group_count", 3}});
  StatusOr<DeepseekConfig> config = load(writer);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.message().find("expert_group_count must divide expert_count"),
            std::string::npos)
      << config.message();
}

TEST_F(DeepseekConfigTest, TopKAboveExpertCountIsRefused) {
  gguf::GgufWriter writer;
  addV3Keys(writer, {{"deepseek2.expert_used_count", 9}});
  StatusOr<DeepseekConfig> config = load(writer);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.message().find("expert_used_count"), std::string::npos) << config.message();
}

TEST_F(DeepseekConfigTest, UnknownGatingFunctionIsRefused) {
  gguf::GgufWriter writer;
  addV3Keys(writer, {{"deepseek2.expert_gating_func", 7}});
  StatusOr<DeepseekConfig> config = load(writer);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.message().find("unknown value 7"), std::string::npos) << config.message();
}

} // namespace
} // namespace kt::model
