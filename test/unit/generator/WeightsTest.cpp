// Generated weights: deterministic, zero-mean, with the intended spread, and
// routing tokens to many different experts.
#include "test/unit/generator/GeneratorTestUtil.h"

#include <algorithm>
#include <numeric>

namespace kt::gen::test {
namespace {

using gguf::GgufModel;

TEST(GeneratorWeights, SameSeedSameBytesDifferentSeedDifferentBytes) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  config.seed = 7;
  writeTiny(config, dir.file("a.gguf"));
  writeTiny(config, dir.file("b.gguf"));
  config.seed = 8;
  writeTiny(config, dir.file("c.gguf"));
  std::vector<uint8_t> a = readBytes(dir.file("a.gguf"));
  std::vector<uint8_t> b = readBytes(dir.file("b.gguf"));
  std::vector<uint8_t> c = readBytes(dir.file("c.gguf"));
  ASSERT_GT(a.size(), 1000000u);
  EXPECT_TRUE(a == b) << "same options and seed gave different files";
  ASSERT_EQ(a.size(), c.size()); // same shapes, so the same layout
  size_t differing = 0;
  for (size_t i = 0; i < a.size(); ++i)
    differing += a[i] != c[i];
  EXPECT_GT(differing, a.size() / 2) << "a different seed changed too few bytes";
}

TEST(GeneratorWeights, ThreadCountDoesNotChangeTheBytes) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  WriteOptions one, four;
  one.threads = 1;
  four.threads = 4;
  writeTiny(config, dir.file("one.gguf"), one);
  writeTiny(config, dir.file("four.gguf"), four);
  EXPECT_TRUE(readBytes(dir.file("one.gguf")) == readBytes(dir.file("four.gguf")));
}

TEST(GeneratorWeights, GeneratedRowsDoNotDependOnChunking) {
  ModelConfig config = tinyConfig();
  StatusOr<ModelPlan> plan = planModel(config, builtinVocabulary());
  ASSERT_TRUE(plan.ok());
  for (const PlannedTensor &t : plan->tensors) {
    if (t.name != "blk.1.attn_k_b.weight" && t.name != "blk.1.attn_v_b.weight" &&
        t.name != "blk.1.ffn_gate_inp.weight")
      continue;
    std::vector<float> whole(static_cast<size_t>(t.elements()));
    generateRows(t, config, 0, t.rows(), whole.data());
    std::vector<float> pieces(whole.size());
    for (int64_t row = 0; row < t.rows(); row += 5) {
      int64_t count = std::min<int64_t>(5, t.rows() - row);
      generateRows(t, config, row, count, pieces.data() + row * t.ne[0]);
    }
    EXPECT_TRUE(whole == pieces) << t.name;
  }
}

struct StatsCase {
  const char *tensor;
  GgmlType expectedType;
  double mean;
  double stddev;
};
void PrintTo(const StatsCase &c, std::ostream *os) { *os << c.tensor; }

class GeneratorWeightStats : public ::testing::TestWithParam<StatsCase> {
protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir;
    ModelConfig config = tinyConfig();
    config.seed = 1234;
    writeTiny(config, dir_->file("tiny.gguf"));
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }
  static TempDir *dir_;
};
TempDir *GeneratorWeightStats::dir_ = nullptr;

TEST_P(GeneratorWeightStats, DequantizesToTheIntendedMeanAndSpread) {
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(dir_->file("tiny.gguf"));
  ASSERT_TRUE(model.ok()) << model.message();
  const StatsCase &c = GetParam();
  const gguf::TensorInfo *tensor = (*model)->findTensor(c.tensor);
  ASSERT_NE(tensor, nullptr) << c.tensor;
  EXPECT_EQ(tensor->type, c.expectedType);
  std::vector<float> values = dequantizeTensor(*tensor);
  Moments m = moments(values);
  // The standard error of the mean is stddev / sqrt(n); allow 5 of them.
  double meanTolerance = 5.0 * c.stddev / std::sqrt(double(values.size())) + 1e-6;
  EXPECT_NEAR(m.mean, c.mean, meanTolerance) << c.tensor;
  EXPECT_NEAR(m.stddev, c.stddev, 0.06 * c.stddev) << c.tensor;
}

// Scales: 1/sqrt(fan_in) for linear weights, 1 +- 0.05 for norms, 0.05 for
// the expert correction bias, 1 for the embedding.
INSTANTIATE_TEST_SUITE_P(
    Tensors, GeneratorWeightStats,
    ::testing::Values(
        StatsCase{"blk.1.ffn_gate_exps.weight", GgmlType::Q4_K, 0.0, 1.0 / 16},
        StatsCase{"blk.2.ffn_down_exps.weight", GgmlType::Q4_K, 0.0, 1.0 / 16},
        StatsCase{"blk.1.ffn_up_shexp.weight", GgmlType::Q8_0, 0.0, 1.0 / 16},
        StatsCase{"blk.0.ffn_down.weight", GgmlType::Q8_0, 0.0, 1.0 / std::sqrt(512.0)},
        StatsCase{"blk.0.attn_q_b.weight", GgmlType::Q8_0, 0.0, 1.0 / 8},
        StatsCase{"blk.2.attn_k_b.weight", GgmlType::Q8_0, 0.0, 1.0 / 8},
        StatsCase{"blk.1.ffn_gate_inp.weight", GgmlType::F32, 0.0, 1.0 / 16},
        StatsCase{"token_embd.weight", GgmlType::Q8_0, 0.0, 1.0},
        StatsCase{"blk.0.attn_norm.weight", GgmlType::F32, 1.0, 0.05},
        StatsCase{"output_norm.weight", GgmlType::F32, 1.0, 0.05}),
    [](const ::testing::TestParamInfo<StatsCase> &param) {
      std::string name = param.param.tensor;
      std::replace(name.begin(), name.end(), '.', '_');
      return name;
    });

TEST(GeneratorWeights, ExpertBiasIsSmallAndZeroMean) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  config.expertCount = 64; // enough values for a meaningful mean
  config.expertGroupCount = 4;
  writeTiny(config, dir.file("bias.gguf"));
  auto model = GgufModel::open(dir.file("bias.gguf"));
  ASSERT_TRUE(model.ok()) << model.message();
  const gguf::TensorInfo *bias = (*model)->findTensor("blk.1.exp_probs_b.bias");
  ASSERT_NE(bias, nullptr);
  Moments m = moments(dequantizeTensor(*bias));
  EXPECT_NEAR(m.mean, 0.0, 0.03);
  EXPECT_GT(m.stddev, 0.02);
  EXPECT_LT(m.stddev, 0.1);
}

TEST(GeneratorWeights, SynthesizedQ4KMatchesQuantizedGaussians) {
  // The synthesized q4_K blocks and the reference quantizer's blocks of the
  // same tensor describe weights with the same mean and spread.
  ModelConfig config = tinyConfig();
  StatusOr<ModelPlan> plan = planModel(config, builtinVocabulary());
  ASSERT_TRUE(plan.ok());
  const PlannedTensor *experts = nullptr;
  for (const PlannedTensor &t : plan->tensors)
    if (t.name == "blk.1.ffn_up_exps.weight")
      experts = &t;
  ASSERT_NE(experts, nullptr);
  ASSERT_TRUE(usesQ4KSynthesis(*experts, config));
  const int64_t rows = experts->rows();
  std::vector<uint8_t> synthesized(experts->bytes()), quantized(experts->bytes());
  synthesizeQ4KRows(*experts, 0, rows, synthesized.data());
  std::vector<float> source(static_cast<size_t>(experts->elements()));
  generateRows(*experts, config, 0, rows, source.data());
  ASSERT_TRUE(quant::quantize(GgmlType::Q4_K, source.data(), quantized.data(), source.size()).ok());
  std::vector<float> a(source.size()), b(source.size());
  ASSERT_TRUE(quant::dequantize(GgmlType::Q4_K, synthesized.data(), a.data(), a.size()).ok());
  ASSERT_TRUE(quant::dequantize(GgmlType::Q4_K, quantized.data(), b.data(), b.size()).ok());
  Moments ma = moments(a), mb = moments(b);
  EXPECT_NEAR(ma.mean, 0.0, 5 * experts->stddev / std::sqrt(double(a.size())));
  EXPECT_NEAR(ma.stddev, mb.stddev, 0.05 * mb.stddev);
  // Every synthesized value is one of the 16 levels d * 2 * (q - 7.5).
  std::set<float> levels(a.begin(), a.end());
  EXPECT_LE(levels.size(), 16u);
  EXPECT_GE(levels.size(), 12u);
  // Without synthesis the file holds the reference quantizer's bytes.
  config.synthesizeQ4K = false;
  EXPECT_FALSE(usesQ4KSynthesis(*experts, config));
}

// Routes the model's own (RMS-normalized) token embeddings through layer 1's
// router as DeepSeek-V3 does (sigmoid scores, correction bias for the choice,
// group-limited top-k) and counts the experts chosen. Random quantized
// weights with a common mean would send every token to the same few experts.
TEST(GeneratorWeights, TokensAreRoutedToManyDifferentExperts) {
  TempDir dir;
  ModelConfig config = tinyConfig();
  writeTiny(config, dir.file("route.gguf"));
  auto model = GgufModel::open(dir.file("route.gguf"));
  ASSERT_TRUE(model.ok()) << model.message();
  std::vector<float> embeddings = dequantizeTensor(*(*model)->findTensor("token_embd.weight"));
  std::vector<float> router = dequantizeTensor(*(*model)->findTensor("blk.1.ffn_gate_inp.weight"));
  std::vector<float> bias = dequantizeTensor(*(*model)->findTensor("blk.1.exp_probs_b.bias"));
  const int64_t hidden = config.hiddenSize, experts = config.expertCount;
  const int64_t groups = config.expertGroupCount, perGroup = experts / groups;
  const int64_t tokens = static_cast<int64_t>(embeddings.size()) / hidden;

  std::vector<int64_t> uses(experts, 0);
  std::set<std::vector<int64_t>> distinctSelections;
  for (int64_t token = 0; token < tokens; ++token) {
    const float *x = embeddings.data() + token * hidden;
    double meanSquare = 0;
    for (int64_t i = 0; i < hidden; ++i)
      meanSquare += double(x[i]) * x[i];
    double inverseRms = 1.0 / std::sqrt(meanSquare / hidden + 1e-6);
    std::vector<double> choice(experts);
    for (int64_t e = 0; e < experts; ++e) {
      double logit = 0;
      for (int64_t i = 0; i < hidden; ++i)
        logit += double(router[e * hidden + i]) * x[i] * inverseRms;
      choice[e] = 1.0 / (1.0 + std::exp(-logit)) + bias[e];
    }
    // Group score: sum of the group's two best choice scores.
    std::vector<std::pair<double, int64_t>> groupScores;
    for (int64_t g = 0; g < groups; ++g) {
      std::vector<double> members(choice.begin() + g * perGroup,
                                  choice.begin() + (g + 1) * perGroup);
      std::sort(members.rbegin(), members.rend());
      groupScores.push_back({members[0] + members[1], g});
    }
    std::sort(groupScores.rbegin(), groupScores.rend());
    std::vector<std::pair<double, int64_t>> candidates;
    for (int64_t k = 0; k < config.expertGroupsUsed; ++k)
      for (int64_t e = groupScores[k].second * perGroup; e < (groupScores[k].second + 1) * perGroup;
           ++e)
        candidates.push_back({choice[e], e});
    std::sort(candidates.rbegin(), candidates.rend());
    std::vector<int64_t> selected;
    for (int64_t k = 0; k < config.expertsUsed; ++k) {
      selected.push_back(candidates[k].second);
      ++uses[candidates[k].second];
    }
    std::sort(selected.begin(), selected.end());
    distinctSelections.insert(selected);
  }
  int64_t usedExperts = std::count_if(uses.begin(), uses.end(), [](int64_t n) { return n > 0; });
  EXPECT_EQ(usedExperts, experts) << "some experts are never chosen";
  // No expert takes a dominant share of the assignments.
  int64_t busiest = *std::max_element(uses.begin(), uses.end());
  EXPECT_LT(busiest, tokens * config.expertsUsed / 4);
  EXPECT_GT(static_cast<int64_t>(distinctSelections.size()), tokens / 3);
}

} // namespace
} // namespace kt::gen::test
