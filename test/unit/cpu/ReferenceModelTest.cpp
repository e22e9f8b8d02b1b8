// The executor against a plain, slow transcription of Hugging Face's
// DeepseekV3ForCausalLM forward pass (modeling_deepseek_v3.py and
// modeling_rope_utils.py), computed in double precision on the fully
// dequantized tensors of the same GGUF file, reading the hyper-parameters
// from the GGUF metadata rather than from the plan.
#include "test/unit/cpu/TestModels.h"

#include "runtime/cpu/GeneratedKernels.h"
#include "runtime/model/DeepseekConfig.h"
#include "runtime/quant/Quant.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace kt::cpu::test {
namespace {

using Vec = std::vector<double>;

// A tensor dequantized to a row-major matrix of rows of ne[0] values.
struct Mat {
  int64_t rows = 0, cols = 0;
  Vec v;
  const double *row(int64_t r) const { return v.data() + r * cols; }
};

class ReferenceModel {
public:
  explicit ReferenceModel(const gguf::GgufModel &model) : model_(model) {
    StatusOr<model::DeepseekConfig> config = model::DeepseekConfig::fromGguf(model);
    EXPECT_TRUE(config.ok()) << config.message();
    c_ = *config;
  }

  // Logits of every position: [tokens][vocab].
  std::vector<float> forward(const std::vector<int32_t> &tokens) {
    const int64_t T = static_cast<int64_t>(tokens.size());
    Mat embed = tensor("token_embd.weight");
    std::vector<Vec> h(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t)
      h[t].assign(embed.row(tokens[t]), embed.row(tokens[t]) + embed.cols);
    for (int64_t layer = 0; layer < c_.blockCount; ++layer) {
      const std::string p = "blk." + std::to_string(layer) + ".";
      std::vector<Vec> x = norm(h, vector(p + "attn_norm.weight"));
      std::vector<Vec> a = attention(p, x);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < c_.hidden; ++i)
          h[t][i] += a[t][i];
      x = norm(h, vector(p + "ffn_norm.weight"));
      std::vector<Vec> f = c_.isMoeLayer(layer) ? moe(p, x) : mlp(p, "", x);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t i = 0; i < c_.hidden; ++i)
          h[t][i] += f[t][i];
    }
    std::vector<Vec> logits = linear(tensor("output.weight"), norm(h, vector("output_norm.weight")));
    std::vector<float> out;
    for (const Vec &row : logits)
      out.insert(out.end(), row.begin(), row.end());
    return out;
  }

private:
  Mat tensor(const std::string &name, int64_t slice = -1) const {
    const gguf::TensorInfo *info = model_.findTensor(name);
    EXPECT_NE(info, nullptr) << name;
    std::vector<float> values(static_cast<size_t>(info->elements()));
    EXPECT_TRUE(quant::dequantize(info->type, info->data, values.data(), info->elements()).ok());
    Mat m;
    m.cols = info->ne[0];
    m.rows = info->elements() / m.cols;
    m.v.assign(values.begin(), values.end());
    if (slice >= 0) { // matrix `slice` of a 3-D tensor
      const int64_t rows = info->ne[1];
      m.v = Vec(m.v.begin() + slice * rows * m.cols, m.v.begin() + (slice + 1) * rows * m.cols);
      m.rows = rows;
    }
    return m;
  }
  Vec vector(const std::string &name) const { return tensor(name).v; }
  bool has(const std::string &name) const { return model_.findTensor(name) != nullptr; }

  static std::vector<Vec> linear(const Mat &w, const std::vector<Vec> &x) {
    std::vector<Vec> y(x.size(), Vec(static_cast<size_t>(w.rows)));
    for (size_t t = 0; t < x.size(); ++t)
      for (int64_t r = 0; r < w.rows; ++r)
        y[t][r] = std::inner_product(x[t].begin(), x[t].end(), w.row(r), 0.0);
    return y;
  }
  Vec rmsNorm(const Vec &x, const Vec &w) const {
    double mean = 0;
    for (double v : x)
      mean += v * v;
    mean /= static_cast<double>(x.size());
    Vec y(x.size());
    for (size_t i = 0; i < x.size(); ++i)
      y[i] = w[i] * (x[i] / std::sqrt(mean + c_.rmsEps));
    return y;
  }
  std::vector<Vec> norm(const std::vector<Vec> &x, const Vec &w) const {
    std::vector<Vec> y;
    for (const Vec &row : x)
      y.push_back(rmsNorm(row, w));
    return y;
  }

  static double getMscale(double scale, double mscale) {
    return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
  }

  // _compute_yarn_parameters / _compute_default_rope_parameters.
  Vec inverseFrequencies(double &attentionFactor) const {
    const double dim = static_cast<double>(c_.qkRopeHeadDim), base = c_.ropeTheta;
    const double factor = c_.ropeScalingFactor;
    Vec inv(static_cast<size_t>(c_.qkRopeHeadDim / 2));
    attentionFactor = 1.0;
    if (factor <= 1.0) {
      for (size_t i = 0; i < inv.size(); ++i)
        inv[i] = 1.0 / std::pow(base, 2.0 * i / dim);
      return inv;
    }
    // The converter writes yarn_log_multiplier = 0.1 * mscale_all_dim;
    // DeepSeek's configs have mscale == mscale_all_dim.
    const double mscaleAllDim = c_.ropeYarnLogMultiplier / 0.1, mscale = mscaleAllDim;
    // Without mscale_all_dim, kt-export-hf writes rope_scaling.attention_factor
    // = 1 (llama.cpp's reading of GGUF) instead of HF's default getMscale(factor).
    attentionFactor = (mscale != 0 && mscaleAllDim != 0)
                          ? getMscale(factor, mscale) / getMscale(factor, mscaleAllDim)
                          : 1.0;
    const double orig = static_cast<double>(c_.ropeOriginalContextLength);
    auto correctionDim = [&](double rotations) {
      return dim * std::log(orig / (rotations * 2 * M_PI)) / (2 * std::log(base));
    };
    double low = std::max(std::floor(correctionDim(32)), 0.0);
    double high = std::min(std::ceil(correctionDim(1)), dim - 1);
    if (low == high)
      high += 0.001;
    for (size_t i = 0; i < inv.size(); ++i) {
      const double pos = std::pow(base, 2.0 * i / dim);
      const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
      const double extrapolationFactor = 1 - ramp;
      inv[i] = 1.0 / (factor * pos) * (1 - extrapolationFactor) + 1.0 / pos * extrapolationFactor;
    }
    return inv;
  }

  // apply_rotary_pos_emb_interleave for one vector at `position`.
  Vec rotate(const Vec &x, int64_t position) const {
    double attentionFactor = 1;
    Vec inv = inverseFrequencies(attentionFactor);
    const size_t d = x.size(), half = d / 2;
    Vec permuted(d), cos(d), sin(d), out(d);
    for (size_t i = 0; i < half; ++i) {
      permuted[i] = x[2 * i];
      permuted[i + half] = x[2 * i + 1];
      cos[i] = cos[i + half] = std::cos(position * inv[i]) * attentionFactor;
      sin[i] = sin[i + half] = std::sin(position * inv[i]) * attentionFactor;
    }
    for (size_t i = 0; i < d; ++i) {
      const double rotatedHalf = i < half ? -permuted[i + half] : permuted[i - half];
      out[i] = permuted[i] * cos[i] + rotatedHalf * sin[i];
    }
    return out;
  }

  // kv_b_proj [heads * (nope + v)][kv_lora], rebuilt from k_b / v_b when the
  // model has only the split form.
  Mat kvB(const std::string &p) const {
    if (has(p + "attn_kv_b.weight"))
      return tensor(p + "attn_kv_b.weight");
    const int64_t nope = c_.qkNopeHeadDim, v = c_.vHeadDim, r = c_.kvLoraRank;
    Mat k = tensor(p + "attn_k_b.weight"), vb = tensor(p + "attn_v_b.weight");
    Mat m;
    m.rows = c_.heads * (nope + v);
    m.cols = r;
    m.v.resize(static_cast<size_t>(m.rows * m.cols));
    for (int64_t h = 0; h < c_.heads; ++h)
      for (int64_t c = 0; c < r; ++c) {
        for (int64_t j = 0; j < nope; ++j)
          m.v[(h * (nope + v) + j) * r + c] = k.v[(h * r + c) * nope + j];
        for (int64_t j = 0; j < v; ++j)
          m.v[(h * (nope + v) + nope + j) * r + c] = vb.v[(h * v + j) * r + c];
      }
    return m;
  }

  std::vector<Vec> attention(const std::string &p, const std::vector<Vec> &x) const {
    const int64_t T = static_cast<int64_t>(x.size()), H = c_.heads;
    const int64_t nope = c_.qkNopeHeadDim, rope = c_.qkRopeHeadDim, v = c_.vHeadDim;
    const int64_t qk = nope + rope, r = c_.kvLoraRank;
    std::vector<Vec> q;
    if (c_.qLoraRank > 0)
      q = linear(tensor(p + "attn_q_b.weight"),
                 norm(linear(tensor(p + "attn_q_a.weight"), x), vector(p + "attn_q_a_norm.weight")));
    else
      q = linear(tensor(p + "attn_q.weight"), x);
    std::vector<Vec> compressed = linear(tensor(p + "attn_kv_a_mqa.weight"), x);
    Vec kvNorm = vector(p + "attn_kv_a_norm.weight");
    Mat up = kvB(p);
    std::vector<Vec> kv, kRot;
    for (int64_t t = 0; t < T; ++t) {
      Vec latent = rmsNorm(Vec(compressed[t].begin(), compressed[t].begin() + r), kvNorm);
      kv.push_back(linear(up, {latent})[0]);
      kRot.push_back(rotate(Vec(compressed[t].begin() + r, compressed[t].end()), t));
    }
    double scaling = 1.0 / std::sqrt(static_cast<double>(qk));
    const double mscaleAllDim = c_.ropeYarnLogMultiplier / 0.1;
    if (c_.ropeScalingFactor > 1.0 && mscaleAllDim != 0) {
      const double m = getMscale(c_.ropeScalingFactor, mscaleAllDim);
      scaling *= m * m;
    }
    std::vector<Vec> out(static_cast<size_t>(T), Vec(static_cast<size_t>(H * v), 0.0));
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < T; ++t) {
        const double *qh = q[t].data() + h * qk;
        Vec qRot = rotate(Vec(qh + nope, qh + qk), t);
        Vec scores;
        for (int64_t s = 0; s <= t; ++s) {
          const double *k = kv[s].data() + h * (nope + v);
          double score = 0;
          for (int64_t j = 0; j < nope; ++j)
            score += qh[j] * k[j];
          for (int64_t j = 0; j < rope; ++j)
            score += qRot[j] * kRot[s][j];
          scores.push_back(score * scaling);
        }
        const double maxScore = *std::max_element(scores.begin(), scores.end());
        double sum = 0;
        for (double &s : scores)
          sum += (s = std::exp(s - maxScore));
        for (int64_t s = 0; s <= t; ++s)
          for (int64_t j = 0; j < v; ++j)
            out[t][h * v + j] += scores[s] / sum * kv[s][h * (nope + v) + nope + j];
      }
    return linear(tensor(p + "attn_output.weight"), out);
  }

  // DeepseekV3MLP; `suffix` "" (dense), "_shexp", or an expert slice.
  std::vector<Vec> mlp(const std::string &p, const std::string &suffix, const std::vector<Vec> &x,
                       int64_t expert = -1) const {
    Mat gate = tensor(p + "ffn_gate" + suffix + ".weight", expert);
    Mat up = tensor(p + "ffn_up" + suffix + ".weight", expert);
    Mat down = tensor(p + "ffn_down" + suffix + ".weight", expert);
    std::vector<Vec> g = linear(gate, x), u = linear(up, x);
    for (size_t t = 0; t < g.size(); ++t)
      for (size_t i = 0; i < g[t].size(); ++i)
        g[t][i] = g[t][i] / (1 + std::exp(-g[t][i])) * u[t][i];
    return linear(down, g);
  }

  // DeepseekV3MoE with DeepseekV3TopkRouter (sigmoid) or V2's softmax gate.
  std::vector<Vec> moe(const std::string &p, const std::vector<Vec> &x) const {
    const int64_t E = c_.experts, perGroup = E / c_.expertGroups;
    std::vector<Vec> logits = linear(tensor(p + "ffn_gate_inp.weight"), x);
    Vec bias(static_cast<size_t>(E), 0.0);
    if (has(p + "exp_probs_b.bias"))
      bias = vector(p + "exp_probs_b.bias");
    std::vector<Vec> out = mlp(p, "_shexp", x);
    for (size_t t = 0; t < x.size(); ++t) {
      Vec scores(static_cast<size_t>(E));
      if (c_.scoring == model::ExpertScoring::Sigmoid) {
        for (int64_t e = 0; e < E; ++e)
          scores[e] = 1 / (1 + std::exp(-logits[t][e]));
      } else {
        const double m = *std::max_element(logits[t].begin(), logits[t].end());
        double sum = 0;
        for (int64_t e = 0; e < E; ++e)
          sum += (scores[e] = std::exp(logits[t][e] - m));
        for (double &s : scores)
          s /= sum;
      }
      Vec choice(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e)
        choice[e] = scores[e] + bias[e];
      std::vector<std::pair<double, int64_t>> groups;
      for (int64_t g = 0; g < c_.expertGroups; ++g) {
        Vec member(choice.begin() + g * perGroup, choice.begin() + (g + 1) * perGroup);
        std::sort(member.rbegin(), member.rend());
        const double score = c_.scoring == model::ExpertScoring::Sigmoid
                                 ? member[0] + (member.size() > 1 ? member[1] : 0)
                                 : member[0];
        groups.push_back({score, g});
      }
      std::sort(groups.rbegin(), groups.rend());
      Vec masked(static_cast<size_t>(E), 0.0); // HF's masked_fill(~mask, 0.0)
      for (int64_t i = 0; i < c_.expertGroupsUsed; ++i)
        for (int64_t e = groups[i].second * perGroup; e < (groups[i].second + 1) * perGroup; ++e)
          masked[e] = choice[e];
      std::vector<int64_t> order(static_cast<size_t>(E));
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return masked[a] > masked[b]; });
      order.resize(static_cast<size_t>(c_.expertsUsed));
      double sum = 0;
      for (int64_t e : order)
        sum += scores[e];
      std::sort(order.begin(), order.end()); // HF sums experts in index order
      for (int64_t e : order) {
        double weight = scores[e];
        if (c_.expertWeightsNorm)
          weight /= sum + 1e-20;
        weight *= c_.expertWeightsScale;
        Vec y = mlp(p, "_exps", {x[t]}, e)[0];
        for (int64_t i = 0; i < c_.hidden; ++i)
          out[t][i] += weight * y[i];
      }
    }
    return out;
  }

  const gguf::GgufModel &model_;
  model::DeepseekConfig c_;
};

void expectMatchesReference(const std::string &name, const gen::ModelConfig &config,
                            double tolerance, const std::string &ktcFlags = "") {
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(
      buildModel(name, config, m, "rules/DeepSeek-V3-Chat-cpu-only.yaml", "none", ktcFlags));
  const std::vector<int32_t> tokens = sampleTokens(7, 12);
  std::vector<float> expected = ReferenceModel(*m.model).forward(tokens);

  auto executor = makeExecutor(m);
  ASSERT_TRUE(executor);
  StatusOr<std::vector<float>> prefill = executor->forward(tokens, true);
  ASSERT_TRUE(prefill.ok()) << prefill.message();
  EXPECT_LE(relativeL2(*prefill, expected), tolerance) << "prefill";

  executor->reset();
  std::vector<float> decoded;
  for (int32_t token : tokens) {
    StatusOr<std::vector<float>> step = executor->forward({token});
    ASSERT_TRUE(step.ok()) << step.message();
    decoded.insert(decoded.end(), step->begin(), step->end());
  }
  EXPECT_LE(relativeL2(decoded, expected), tolerance) << "decode";
}

TEST(CpuExecutorReference, V3FormF32) {
  KT_REQUIRE_COMPILER();
  // q_lora, split k_b/v_b, YaRN, sigmoid routing with groups and bias.
  expectMatchesReference("ref-v3", tinyF32Config(), 1e-5);
}

TEST(CpuExecutorReference, V2LiteFormF32) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig config = tinyF32Config();
  config.qLoraRank = 0;
  config.attention = gen::AttentionLayout::Joint;
  config.gating = gen::GatingFunction::Softmax;
  config.normTopkProb = false;
  config.routedScalingFactor = 1.0;
  config.yarnFactor = 1.0;
  config.layerCount = 4;
  config.denseLayerCount = 2;
  expectMatchesReference("ref-v2lite", config, 1e-5);
}

TEST(CpuExecutorReference, YarnWithoutMscaleAllDim) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig config = tinyF32Config();
  config.yarnLogMultiplier = 0.0;
  config.yarnFactor = 4.0;
  config.attention = gen::AttentionLayout::Both;
  expectMatchesReference("ref-yarn-no-mscale", config, 1e-5);
}

TEST(CpuExecutorReference, QuantizedWeights) {
  KT_REQUIRE_COMPILER();
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.types.dense = gguf::GgmlType::Q6_K;
  config.types.output = gguf::GgmlType::Q4_K;
  config.types.norm = gguf::GgmlType::F16;
  expectMatchesReference("ref-quant", config, 1e-5, "--reference-cpu-kernels");
}

// The same model with the expert code generated for this host: f32 kernels
// stay at f32 rounding; int8 kernels (AVX-512 VNNI hosts) quantize the
// activations and are held to the tolerance for quantized inference.
// The tiny model with quantized weights and rows of whole 256-value runs
// (the int8 kernels apply).
gen::ModelConfig quantizedRunsConfig() {
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.hiddenSize = 256;
  config.types.dense = gguf::GgmlType::Q6_K;
  config.types.output = gguf::GgmlType::Q4_K;
  config.types.norm = gguf::GgmlType::F16;
  return config;
}

TEST(CpuExecutorReference, QuantizedWeightsGeneratedCode) {
  KT_REQUIRE_COMPILER();
  const gen::ModelConfig config = quantizedRunsConfig();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("ref-generated", config, m));
  ASSERT_TRUE(m.plan.cpuCode.has_value());
  const bool int8 =
      std::any_of(m.plan.cpuCode->kernels.begin(), m.plan.cpuCode->kernels.end(),
                  [](const plan::CpuCodeKernel &k) { return k.input.rfind("q8", 0) == 0; });
  auto executor = makeExecutor(m);
  ASSERT_TRUE(executor);
  EXPECT_GT(executor->generatedExpertLayers(), 0);
  expectMatchesReference("ref-generated", config, int8 ? 1e-2 : 1e-5);
  // Forcing f32 activations gives f32 rounding on any host.
  expectMatchesReference("ref-generated-f32", config, 1e-5, "--f32-cpu-experts");
}

// Plans compiled for an AMX host also carry tile kernels: experts with at
// least ExecutorOptions::expertTileTokens tokens (here every one) run their
// products on bf16 AMX tiles, held to the tolerance for quantized inference
// against the double-precision reference; 45 tokens give experts partial
// and whole token blocks.
TEST(CpuExecutorReference, QuantizedWeightsTileKernels) {
  KT_REQUIRE_COMPILER();
  TestModel m;
  ASSERT_NO_FATAL_FAILURE(buildModel("ref-tiles", quantizedRunsConfig(), m));
  ASSERT_TRUE(m.plan.cpuCode.has_value());
  const bool tiles =
      std::any_of(m.plan.cpuCode->kernels.begin(), m.plan.cpuCode->kernels.end(),
                  [](const plan::CpuCodeKernel &k) { return k.input == "bf16-tiles"; });
  if (!tiles)
    GTEST_SKIP() << "this host has no AMX-BF16: its plans carry no tile kernels";
  if (std::string refusal = enableAmxTiles(); !refusal.empty())
    GTEST_SKIP() << refusal;
  ExecutorOptions options;
  options.expertTileTokens = 1;
  auto executor = makeExecutor(m, options);
  ASSERT_TRUE(executor);
  EXPECT_EQ(executor->tileExpertLayers(), executor->generatedExpertLayers());
  EXPECT_GT(executor->tileExpertLayers(), 0);
  const std::vector<int32_t> tokens = sampleTokens(45, 5);
  StatusOr<std::vector<float>> prefill = executor->forward(tokens, true);
  ASSERT_TRUE(prefill.ok()) << prefill.message();
  std::vector<float> expected = ReferenceModel(*m.model).forward(tokens);
  const double onTiles = relativeL2(*prefill, expected);
  EXPECT_LE(onTiles, 1e-2);

  // Without tiles the same plan runs its row kernels (int8 activations on
  // this host: 3.3e-2 here, which is why the bound above is not theirs).
  options.expertTileTokens = 0;
  auto rows = makeExecutor(m, options);
  ASSERT_TRUE(rows);
  EXPECT_EQ(rows->tileExpertLayers(), 0);
  StatusOr<std::vector<float>> rowPrefill = rows->forward(tokens, true);
  ASSERT_TRUE(rowPrefill.ok()) << rowPrefill.message();
  EXPECT_NE(*rowPrefill, *prefill);
  std::printf("tile kernels: rel L2 %.2e to the reference (row kernels %.2e)\n", onTiles,
              relativeL2(*rowPrefill, expected));
}

} // namespace
} // namespace kt::cpu::test
