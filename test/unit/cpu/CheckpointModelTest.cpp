// A native FP8 checkpoint as the whole model (runtime/model/CheckpointModel.h):
// its view under GGUF names and keys, the q8_0 conversion of its e4m3
// weights, and a CPU plan of it against the same model on its dequantized
// weights (the reference DESIGN names for FP8 checkpoints).
#include "runtime/model/CheckpointModel.h"
#include "runtime/model/DeepseekConfig.h"
#include "runtime/quant/Quant.h"
#include "runtime/tokenizer/Tokenizer.h"
#include "test/unit/cpu/TestModels.h"
#include "tools/kt-export-hf/HfExport.h"
#include "tools/kt-gen-model/Vocabulary.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>

namespace kt::cpu::test {
namespace {

namespace fs = std::filesystem;
using gguf::GgmlType;
using gguf::TensorInfo;

// The tiny model with f32 weights, exported as an FP8 checkpoint (once).
struct Exported {
  std::string gguf, checkpoint;
};
const Exported &exported() {
  static const Exported paths = [] {
    Exported out;
    out.gguf = testDirectory() + "/ckpt-source.gguf";
    out.checkpoint = testDirectory() + "/ckpt";
    StatusOr<gen::ModelPlan> plan = gen::planModel(tinyF32Config(), gen::builtinVocabulary());
    EXPECT_TRUE(plan.ok()) << plan.message();
    gen::WriteOptions write;
    write.outputPath = out.gguf;
    write.threads = 2;
    StatusOr<gen::WriteResult> written = gen::writeModel(*plan, write);
    EXPECT_TRUE(written.ok()) << written.message();
    StatusOr<std::unique_ptr<gguf::GgufModel>> model = gguf::GgufModel::open(out.gguf);
    EXPECT_TRUE(model.ok()) << model.message();
    StatusOr<hfexport::ExportPlan> exportPlan = hfexport::planExport(**model);
    EXPECT_TRUE(exportPlan.ok()) << exportPlan.message();
    hfexport::Fp8ExportOptions options;
    options.shardBytes = 1 << 20;
    Status status = hfexport::writeFp8Export(*exportPlan, out.checkpoint, options);
    EXPECT_TRUE(status.ok()) << status.message();
    return out;
  }();
  return paths;
}

std::unique_ptr<gguf::GgufModel> openView(const std::string &path) {
  StatusOr<std::unique_ptr<gguf::GgufModel>> view = model::openModel(path);
  EXPECT_TRUE(view.ok()) << view.message();
  return view.ok() ? std::move(*view) : nullptr;
}

TEST(CheckpointModel, ViewsAnFp8CheckpointUnderGgufNamesAndKeys) {
  const Exported &paths = exported();
  ASSERT_TRUE(model::isCheckpointDirectory(paths.checkpoint));
  EXPECT_FALSE(model::isCheckpointDirectory(testDirectory())); // holds .gguf files
  std::unique_ptr<gguf::GgufModel> view = openView(paths.checkpoint);
  StatusOr<std::unique_ptr<gguf::GgufModel>> source = gguf::GgufModel::open(paths.gguf);
  ASSERT_TRUE(view && source.ok());
  ASSERT_NE(view->view(), nullptr);
  EXPECT_EQ(view->view()->format, "safetensors");
  EXPECT_TRUE(view->files().empty());

  // The hyper-parameters come back through config.json.
  StatusOr<model::DeepseekConfig> a = model::DeepseekConfig::fromGguf(*view);
  StatusOr<model::DeepseekConfig> b = model::DeepseekConfig::fromGguf(**source);
  ASSERT_TRUE(a.ok()) << a.message();
  ASSERT_TRUE(b.ok()) << b.message();
  EXPECT_EQ(a->blockCount, b->blockCount);
  EXPECT_EQ(a->hidden, b->hidden);
  EXPECT_EQ(a->denseFfn, b->denseFfn);
  EXPECT_EQ(a->vocab, b->vocab);
  EXPECT_EQ(a->heads, b->heads);
  EXPECT_EQ(a->qLoraRank, b->qLoraRank);
  EXPECT_EQ(a->kvLoraRank, b->kvLoraRank);
  EXPECT_EQ(a->qkNopeHeadDim, b->qkNopeHeadDim);
  EXPECT_EQ(a->qkRopeHeadDim, b->qkRopeHeadDim);
  EXPECT_EQ(a->vHeadDim, b->vHeadDim);
  EXPECT_FLOAT_EQ(a->rmsEps, b->rmsEps);
  EXPECT_DOUBLE_EQ(a->ropeTheta, b->ropeTheta);
  EXPECT_DOUBLE_EQ(a->ropeScalingFactor, b->ropeScalingFactor);
  EXPECT_EQ(a->ropeOriginalContextLength, b->ropeOriginalContextLength);
  EXPECT_NEAR(a->ropeYarnLogMultiplier, b->ropeYarnLogMultiplier, 1e-6);
  EXPECT_EQ(a->leadingDenseBlocks, b->leadingDenseBlocks);
  EXPECT_EQ(a->experts, b->experts);
  EXPECT_EQ(a->expertsUsed, b->expertsUsed);
  EXPECT_EQ(a->sharedExperts, b->sharedExperts);
  EXPECT_EQ(a->expertFfn, b->expertFfn);
  EXPECT_NEAR(a->expertWeightsScale, b->expertWeightsScale, 1e-6);
  EXPECT_EQ(a->expertWeightsNorm, b->expertWeightsNorm);
  EXPECT_EQ(a->scoring, b->scoring);
  EXPECT_EQ(a->expertGroups, b->expertGroups);
  EXPECT_EQ(a->expertGroupsUsed, b->expertGroupsUsed);

  // Every GGUF tensor has its namesake, of the same shape; projections are
  // e4m3, experts one stack of per-expert slices.
  int fp8 = 0;
  size_t splitKvB = 0;
  for (const TensorInfo &tensor : (*source)->tensors()) {
    // The checkpoint has kv_b_proj whole; the GGUF file has its halves.
    if (tensor.name.find("attn_k_b") != std::string::npos ||
        tensor.name.find("attn_v_b") != std::string::npos) {
      const std::string joint =
          tensor.name.substr(0, tensor.name.find("attn_")) + "attn_kv_b.weight";
      EXPECT_NE(view->findTensor(joint), nullptr) << joint;
      ++splitKvB;
      continue;
    }
    const TensorInfo *mirrored = view->findTensor(tensor.name);
    ASSERT_NE(mirrored, nullptr) << tensor.name;
    EXPECT_EQ(mirrored->ne, tensor.ne) << tensor.name;
    const bool matrix = tensor.ne.size() >= 2 && tensor.name.find("_norm") == std::string::npos;
    const bool highPrecision = tensor.name == "token_embd.weight" ||
                               tensor.name == "output.weight" ||
                               tensor.name.find("ffn_gate_inp") != std::string::npos;
    if (matrix && !highPrecision) {
      EXPECT_EQ(mirrored->type, GgmlType::F8_E4M3_B128) << tensor.name;
      ASSERT_NE(mirrored->fp8, nullptr) << tensor.name;
      EXPECT_EQ(mirrored->fp8->values.size(), size_t(tensor.ne.size() > 2 ? tensor.ne[2] : 1))
          << tensor.name;
      EXPECT_EQ(mirrored->data, nullptr);
      ++fp8;
    } else if (tensor.name.find("exp_probs_b") != std::string::npos) {
      EXPECT_EQ(mirrored->type, GgmlType::F32) << tensor.name;
    } else {
      EXPECT_EQ(mirrored->type, GgmlType::BF16) << tensor.name;
    }
  }
  EXPECT_EQ(view->tensors().size(), (*source)->tensors().size() - splitKvB / 2);
  EXPECT_GT(fp8, 10);

  // And the vocabulary, through tokenizer.json.
  StatusOr<tokenizer::Tokenizer> viewTokenizer = tokenizer::Tokenizer::fromGguf(*view);
  StatusOr<tokenizer::Tokenizer> sourceTokenizer = tokenizer::Tokenizer::fromGguf(**source);
  ASSERT_TRUE(viewTokenizer.ok()) << viewTokenizer.message();
  ASSERT_TRUE(sourceTokenizer.ok());
  const std::string text = "<｜User｜>Hello world, 123 tokens<｜Assistant｜>";
  EXPECT_EQ(*viewTokenizer->encode(text, {true, true}),
            *sourceTokenizer->encode(text, {true, true}));
  EXPECT_EQ(viewTokenizer->vocabSize(), sourceTokenizer->vocabSize());
}

// The CPU's q8_0 copy is GGML's q8_0 of the exact FP8 values, within q8_0's
// own error of them.
TEST(CheckpointModel, ConvertsFp8WeightsToGgmlQ8_0OfTheirValues) {
  std::unique_ptr<gguf::GgufModel> view = openView(exported().checkpoint);
  ASSERT_TRUE(view);
  for (const char *name : {"blk.1.ffn_down_exps.weight", "blk.0.attn_kv_b.weight"}) {
    const TensorInfo *tensor = view->findTensor(name);
    ASSERT_NE(tensor, nullptr) << name;
    const std::vector<float> exact = checkpointTensorValues(*tensor);
    const size_t bytes = size_t(tensor->elements() / 32 * 34);
    std::vector<uint8_t> converted(bytes), expected(bytes);
    ASSERT_TRUE(model::convertFp8ToQ8_0(*tensor, converted.data(), 3).ok());
    ASSERT_TRUE(
        quant::quantize(GgmlType::Q8_0, exact.data(), expected.data(), tensor->elements()).ok());
    EXPECT_EQ(converted, expected) << name;
    std::vector<float> back(exact.size());
    ASSERT_TRUE(
        quant::dequantize(GgmlType::Q8_0, converted.data(), back.data(), tensor->elements()).ok());
    const double error = relativeL2(back, exact);
    EXPECT_GT(error, 0.0) << name;
    EXPECT_LT(error, 6e-3) << name;
  }
  // What is not an FP8 tensor is refused.
  const TensorInfo *embedding = view->findTensor("token_embd.weight");
  ASSERT_NE(embedding, nullptr);
  std::vector<uint8_t> out(size_t(embedding->elements()));
  Status refused = model::convertFp8ToQ8_0(*embedding, out.data());
  EXPECT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("not a block-scaled FP8 tensor"), std::string::npos);
}

// Logits at every position of `tokens`.
std::vector<float> allLogits(TestModel &m, const std::vector<int32_t> &tokens) {
  std::unique_ptr<CpuExecutor> executor = makeExecutor(m);
  if (!executor)
    return {};
  StatusOr<std::vector<float>> logits = executor->forward(tokens, /*allPositions=*/true);
  EXPECT_TRUE(logits.ok()) << logits.message();
  return logits.ok() ? *logits : std::vector<float>{};
}

// A GGUF model written by `write` and compiled for the CPU.
void buildGgufReference(const std::string &name, TestModel &m,
                        const std::function<std::string(const std::string &)> &write) {
  m.ggufPath = write(testDirectory() + "/" + name + ".gguf");
  m.planPath = testDirectory() + "/" + name + ".plan";
  ASSERT_NO_FATAL_FAILURE(compilePlan("--gguf-path '" + m.ggufPath + "'", m.planPath));
  StatusOr<std::unique_ptr<gguf::GgufModel>> model = gguf::GgufModel::open(m.ggufPath);
  ASSERT_TRUE(model.ok()) << model.message();
  m.model = std::move(*model);
  StatusOr<plan::Plan> plan = plan::readPlan(m.planPath);
  ASSERT_TRUE(plan.ok()) << plan.message();
  m.plan = std::move(*plan);
}

TEST(CheckpointModel, CpuPlanRunsLikeTheModelOnItsDequantizedWeights) {
  KT_REQUIRE_COMPILER();
  const Exported &paths = exported();
  TestModel checkpoint, copies, exact;
  checkpoint.model = openView(paths.checkpoint);
  ASSERT_TRUE(checkpoint.model);
  checkpoint.planPath = testDirectory() + "/ckpt.plan";
  ASSERT_NO_FATAL_FAILURE(
      compilePlan("--fp8-path '" + paths.checkpoint + "'", checkpoint.planPath));
  StatusOr<plan::Plan> plan = plan::readPlan(checkpoint.planPath);
  ASSERT_TRUE(plan.ok()) << plan.message();
  checkpoint.plan = std::move(*plan);
  const gguf::GgufModel &view = *checkpoint.model;
  ASSERT_NO_FATAL_FAILURE(buildGgufReference("ckpt-q8_0", copies, [&](const std::string &path) {
    return writeCheckpointAsGguf(view, path, CheckpointWeights::Q8_0Copies);
  }));
  ASSERT_NO_FATAL_FAILURE(buildGgufReference("ckpt-exact", exact, [&](const std::string &path) {
    return writeCheckpointAsGguf(view, path, CheckpointWeights::ExactF32);
  }));

  const std::vector<int32_t> tokens = sampleTokens(40, 3);
  const std::vector<float> got = allLogits(checkpoint, tokens);
  ASSERT_FALSE(got.empty());
  // Bit for bit the model whose e4m3 weights were stored as q8_0 of their
  // values: the same weights through the same kernels.
  EXPECT_EQ(got, allLogits(copies, tokens));

  // Against the exact values: q8_0's rounding, which this tiny random model
  // amplifies (a GGUF q8_0 model of it differs from its f32 model alike).
  const std::vector<float> want = allLogits(exact, tokens);
  const double error = relativeL2(got, want);
  std::printf("checkpoint plan (q8_0 copies) vs exact f32 weights: relative L2 %.3g\n", error);
  EXPECT_GT(error, 0.0);
  EXPECT_LT(error, 0.15);
  const int64_t vocab = int64_t(got.size() / tokens.size());
  int agree = 0;
  for (size_t t = 0; t < tokens.size(); ++t) {
    auto argmax = [&](const std::vector<float> &logits) {
      return std::max_element(logits.begin() + t * vocab, logits.begin() + (t + 1) * vocab) -
             logits.begin();
    };
    agree += argmax(got) == argmax(want);
  }
  std::printf("same most likely token at %d of %zu positions\n", agree, tokens.size());
  EXPECT_GE(agree, int(tokens.size()) * 8 / 10);
}

// config.json settings a GGUF view cannot express are refused by name.
TEST(CheckpointModel, RefusesConfigsItCannotExpress) {
  const Exported &paths = exported();
  std::ifstream in(paths.checkpoint + "/config.json");
  std::stringstream text;
  text << in.rdbuf();
  const std::string config = text.str();
  struct Case {
    std::string from, to, message;
  };
  const std::vector<Case> cases = {
      {"\"rope_interleave\": true", "\"rope_interleave\": false", "rope_interleave is false"},
      {"\"first_k_dense_replace\"", "\"moe_layer_freq\": 2, \"first_k_dense_replace\"",
       "moe_layer_freq 2 is not supported"},
      {"\"hidden_size\"", "\"hidden_size_\"", "has no 'hidden_size'"},
      {"\"scoring_func\": \"sigmoid\"", "\"scoring_func\": \"relu\"", "scoring_func 'relu'"}};
  for (const Case &c : cases) {
    const size_t at = config.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    const fs::path copy = fs::path(testDirectory()) / "ckpt-broken";
    fs::remove_all(copy);
    fs::copy(paths.checkpoint, copy);
    std::ofstream(copy / "config.json")
        << config.substr(0, at) + c.to + config.substr(at + c.from.size());
    StatusOr<std::unique_ptr<gguf::GgufModel>> opened = model::openModel(copy.string());
    ASSERT_FALSE(opened.ok()) << c.to;
    EXPECT_NE(opened.message().find(c.message), std::string::npos) << opened.message();
    EXPECT_NE(opened.message().find("config.json"), std::string::npos) << opened.message();
  }
}

} // namespace
} // namespace kt::cpu::test
