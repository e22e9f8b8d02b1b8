// Tensor names, shapes (GGML order, as llama.cpp's deepseek2 loader expects
// them) and types of generated models.
#include "test/unit/generator/GeneratorTestUtil.h"

#include <map>

namespace kt::gen::test {
namespace {

using gguf::GgufModel;
using Shape = std::vector<int64_t>;

struct Expected {
  Shape ne;
  GgmlType type;
};

// The tiny preset's tensors, written out by hand from llama.cpp's
// llama_model_deepseek2::load_arch_tensors (n_embd 256, 4 heads, q_lora 64,
// kv_lora 64, nope 32, rope 16, v 32, dense ffn 512, 16 experts of 256, 1
// shared expert, 1 dense layer of 3).
std::map<std::string, Expected> expectedTinyTensors(AttentionLayout layout, bool qLora,
                                                    int64_t vocab) {
  const GgmlType f32 = GgmlType::F32, q8 = GgmlType::Q8_0, q4k = GgmlType::Q4_K;
  std::map<std::string, Expected> t;
  t["token_embd.weight"] = {{256, vocab}, q8};
  t["output_norm.weight"] = {{256}, f32};
  t["output.weight"] = {{256, vocab}, q8};
  for (int layer = 0; layer < 3; ++layer) {
    std::string p = "blk." + std::to_string(layer) + ".";
    t[p + "attn_norm.weight"] = {{256}, f32};
    if (qLora) {
      t[p + "attn_q_a_norm.weight"] = {{64}, f32};
      t[p + "attn_q_a.weight"] = {{256, 64}, q8};
      t[p + "attn_q_b.weight"] = {{64, 4 * 48}, q8};
    } else {
      t[p + "attn_q.weight"] = {{256, 4 * 48}, q8};
    }
    t[p + "attn_kv_a_norm.weight"] = {{64}, f32};
    t[p + "attn_kv_a_mqa.weight"] = {{256, 64 + 16}, q8};
    if (layout != AttentionLayout::Split)
      t[p + "attn_kv_b.weight"] = {{64, 4 * (32 + 32)}, q8};
    if (layout != AttentionLayout::Joint) {
      t[p + "attn_k_b.weight"] = {{32, 64, 4}, q8};
      t[p + "attn_v_b.weight"] = {{64, 32, 4}, q8};
    }
    t[p + "attn_output.weight"] = {{4 * 32, 256}, q8};
    t[p + "ffn_norm.weight"] = {{256}, f32};
    if (layer == 0) {
      t[p + "ffn_gate.weight"] = {{256, 512}, q8};
      t[p + "ffn_up.weight"] = {{256, 512}, q8};
      t[p + "ffn_down.weight"] = {{512, 256}, q8};
    } else {
      t[p + "ffn_gate_inp.weight"] = {{256, 16}, f32};
      t[p + "exp_probs_b.bias"] = {{16}, f32};
      t[p + "ffn_gate_exps.weight"] = {{256, 256, 16}, q4k};
      t[p + "ffn_up_exps.weight"] = {{256, 256, 16}, q4k};
      t[p + "ffn_down_exps.weight"] = {{256, 256, 16}, q4k};
      t[p + "ffn_gate_shexp.weight"] = {{256, 256}, q8};
      t[p + "ffn_up_shexp.weight"] = {{256, 256}, q8};
      t[p + "ffn_down_shexp.weight"] = {{256, 256}, q8};
    }
  }
  return t;
}

void expectTensors(const std::string &path, const std::map<std::string, Expected> &expected) {
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(path);
  ASSERT_TRUE(model.ok()) << model.message();
  std::set<std::string> seen;
  for (const gguf::TensorInfo &tensor : (*model)->tensors()) {
    seen.insert(tensor.name);
    auto it = expected.find(tensor.name);
    if (it == expected.end()) {
      ADD_FAILURE() << "unexpected tensor " << tensor.name;
      continue;
    }
    EXPECT_EQ(tensor.ne, it->second.ne) << tensor.name;
    EXPECT_EQ(tensor.type, it->second.type)
        << tensor.name << " is " << gguf::ggmlTypeName(tensor.type);
    EXPECT_EQ(tensor.offset % 32, 0u) << tensor.name << " is not 32-byte aligned";
  }
  for (const auto &[name, shape] : expected)
    EXPECT_TRUE(seen.count(name)) << "missing tensor " << name;
}

struct LayoutCase {
  AttentionLayout layout;
  bool qLora;
};
void PrintTo(const LayoutCase &c, std::ostream *os) { *os << attentionLayoutName(c.layout) << (c.qLora ? " with q_lora" : " without q_lora"); }

class GeneratorTensorLayout : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(GeneratorTensorLayout, TensorsMatchLlamaCppShapes) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  config.attention = GetParam().layout;
  if (!GetParam().qLora)
    config.qLoraRank = 0;
  writeTiny(config, dir.file("model.gguf"));
  expectTensors(dir.file("model.gguf"),
                expectedTinyTensors(GetParam().layout, GetParam().qLora,
                                    builtinVocabulary().size()));
}

INSTANTIATE_TEST_SUITE_P(
    Layouts, GeneratorTensorLayout,
    ::testing::Values(LayoutCase{AttentionLayout::Split, true},
                      LayoutCase{AttentionLayout::Joint, true},
                      LayoutCase{AttentionLayout::Both, true},
                      LayoutCase{AttentionLayout::Split, false},
                      LayoutCase{AttentionLayout::Joint, false}),
    [](const ::testing::TestParamInfo<LayoutCase> &param) {
      return std::string(attentionLayoutName(param.param.layout)) +
             (param.param.qLora ? "_qlora" : "_no_qlora");
    });

TEST(GeneratorTensorLayout, TheDefaultLayoutIsSplit) {
  EXPECT_EQ(tinyConfig().attention, AttentionLayout::Split);
  EXPECT_EQ(ModelConfig().attention, AttentionLayout::Split);
}

TEST(GeneratorTensorLayout, SplitKvBHoldsExactlyTheJointValues) {
  // With f32 attention both forms are exact, so the converter's relation
  // holds value for value: k_b[h][c][j] = kv_b[h*(nope+v) + j][c] and
  // v_b[h][j][c] = kv_b[h*(nope+v) + nope + j][c].
  TempDir dir;
  ModelConfig config = tinyConfig();
  config.attention = AttentionLayout::Both;
  config.types.attention = GgmlType::F32;
  writeTiny(config, dir.file("both.gguf"));
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(dir.file("both.gguf"));
  ASSERT_TRUE(model.ok()) << model.message();
  const int64_t nope = 32, v = 32, kvLora = 64, heads = 4;
  for (int layer = 0; layer < 3; ++layer) {
    std::string p = "blk." + std::to_string(layer) + ".";
    const gguf::TensorInfo *kvB = (*model)->findTensor(p + "attn_kv_b.weight");
    const gguf::TensorInfo *kB = (*model)->findTensor(p + "attn_k_b.weight");
    const gguf::TensorInfo *vB = (*model)->findTensor(p + "attn_v_b.weight");
    ASSERT_TRUE(kvB && kB && vB);
    ASSERT_EQ(kvB->type, GgmlType::F32);
    const float *joint = reinterpret_cast<const float *>(kvB->data);
    const float *keys = reinterpret_cast<const float *>(kB->data);
    const float *values = reinterpret_cast<const float *>(vB->data);
    int64_t mismatches = 0;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t c = 0; c < kvLora; ++c)
        for (int64_t j = 0; j < nope; ++j)
          mismatches += keys[(h * kvLora + c) * nope + j] !=
                        joint[(h * (nope + v) + j) * kvLora + c];
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t j = 0; j < v; ++j)
        for (int64_t c = 0; c < kvLora; ++c)
          mismatches += values[(h * v + j) * kvLora + c] !=
                        joint[(h * (nope + v) + nope + j) * kvLora + c];
    EXPECT_EQ(mismatches, 0) << "layer " << layer;
  }
}

TEST(GeneratorTensorLayout, SplitValuesDoNotDependOnTheLayout) {
  // The split tensors of a split-only file equal those of a "both" file.
  TempDir dir;
  ModelConfig config = tinyConfig();
  config.types.attention = GgmlType::F32;
  writeTiny(config, dir.file("split.gguf"));
  config.attention = AttentionLayout::Both;
  writeTiny(config, dir.file("both.gguf"));
  auto split = GgufModel::open(dir.file("split.gguf"));
  auto both = GgufModel::open(dir.file("both.gguf"));
  ASSERT_TRUE(split.ok() && both.ok());
  for (const char *name : {"blk.1.attn_k_b.weight", "blk.2.attn_v_b.weight"}) {
    const gguf::TensorInfo *a = (*split)->findTensor(name);
    const gguf::TensorInfo *b = (*both)->findTensor(name);
    ASSERT_TRUE(a && b);
    ASSERT_EQ(a->nbytes, b->nbytes);
    EXPECT_EQ(std::memcmp(a->data, b->data, a->nbytes), 0) << name;
  }
}

TEST(GeneratorTensorLayout, RowsThatDontFitTheTypeFallBackToQ8_0) {
  ModelConfig config = tinyConfig();
  config.types.attention = GgmlType::Q4_K;
  StatusOr<ModelPlan> plan = planModel(config, builtinVocabulary());
  ASSERT_TRUE(plan.ok()) << plan.message();
  std::map<std::string, const PlannedTensor *> byName;
  for (const PlannedTensor &t : plan->tensors)
    byName[t.name] = &t;
  // attn_q_a rows hold 256 values: q4_K fits.
  EXPECT_EQ(byName["blk.0.attn_q_a.weight"]->type, GgmlType::Q4_K);
  // attn_k_b rows hold nope = 32 values, attn_q_b rows q_lora = 64: q8_0.
  EXPECT_EQ(byName["blk.0.attn_k_b.weight"]->type, GgmlType::Q8_0);
  EXPECT_EQ(byName["blk.0.attn_k_b.weight"]->requestedType, GgmlType::Q4_K);
  EXPECT_EQ(byName["blk.0.attn_q_b.weight"]->type, GgmlType::Q8_0);

  config.hiddenSize = 200; // not a multiple of 32
  config.types.attention = GgmlType::Q8_0;
  plan = planModel(config, builtinVocabulary());
  ASSERT_TRUE(plan.ok()) << plan.message();
  for (const PlannedTensor &t : plan->tensors) {
    if (t.name == "blk.0.attn_q_a.weight") {
      EXPECT_EQ(t.type, GgmlType::F16);
    }
  }
}

TEST(GeneratorTensorLayout, V3PresetHasDeepSeekV3Shapes) {
  StatusOr<ModelConfig> config = presetConfig("v3");
  ASSERT_TRUE(config.ok());
  config->layerCount = 4;
  Vocabulary vocab = builtinVocabulary();
  config->vocabSize = 129280;
  StatusOr<ModelPlan> plan = planModel(*config, vocab);
  ASSERT_TRUE(plan.ok()) << plan.message();
  std::map<std::string, Shape> shapes;
  for (const PlannedTensor &t : plan->tensors)
    shapes[t.name] = t.ne;
  EXPECT_EQ(shapes["token_embd.weight"], (Shape{7168, 129280}));
  EXPECT_EQ(shapes["blk.0.ffn_gate.weight"], (Shape{7168, 18432}));
  EXPECT_EQ(shapes["blk.2.ffn_down.weight"], (Shape{18432, 7168}));
  EXPECT_EQ(shapes.count("blk.2.ffn_gate_exps.weight"), 0u); // 3 dense layers
  EXPECT_EQ(shapes["blk.3.attn_q_a.weight"], (Shape{7168, 1536}));
  EXPECT_EQ(shapes["blk.3.attn_q_b.weight"], (Shape{1536, 128 * 192}));
  EXPECT_EQ(shapes["blk.3.attn_kv_a_mqa.weight"], (Shape{7168, 576}));
  EXPECT_EQ(shapes["blk.3.attn_k_b.weight"], (Shape{128, 512, 128}));
  EXPECT_EQ(shapes["blk.3.attn_v_b.weight"], (Shape{512, 128, 128}));
  EXPECT_EQ(shapes["blk.3.attn_output.weight"], (Shape{16384, 7168}));
  EXPECT_EQ(shapes["blk.3.ffn_gate_inp.weight"], (Shape{7168, 256}));
  EXPECT_EQ(shapes["blk.3.exp_probs_b.bias"], (Shape{256}));
  EXPECT_EQ(shapes["blk.3.ffn_gate_exps.weight"], (Shape{7168, 2048, 256}));
  EXPECT_EQ(shapes["blk.3.ffn_down_exps.weight"], (Shape{2048, 7168, 256}));
  EXPECT_EQ(shapes["blk.3.ffn_up_shexp.weight"], (Shape{7168, 2048}));
  // About 11.3 G parameters per MoE layer in the routed experts alone.
  EXPECT_GT(plan->parameterCount(), 13'000'000'000ull);
}

TEST(GeneratorTensorLayout, SoftmaxGatingHasNoCorrectionBias) {
  ModelConfig config = tinyConfig();
  config.gating = GatingFunction::Softmax;
  StatusOr<ModelPlan> plan = planModel(config, builtinVocabulary());
  ASSERT_TRUE(plan.ok());
  for (const PlannedTensor &t : plan->tensors)
    EXPECT_EQ(t.name.find("exp_probs_b"), std::string::npos) << t.name;
}

} // namespace
} // namespace kt::gen::test
