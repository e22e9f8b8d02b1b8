// The operator and match-class tables, name suggestions, and that
// docs/rules.md documents every accepted name.
#include "RulesTestUtil.h"

#include <fstream>
#include <set>
#include <sstream>

namespace kt::rules::test {
namespace {

TEST(Operators, AnchorClassesMapToOurOperators) {
  const std::vector<std::pair<std::string, std::string>> expected = {
      {"default", "default"},
      {"ktransformers.operators.linear.KTransformersLinear", "linear"},
      {"ktransformers.operators.experts.KTransformersExperts", "experts"},
      {"ktransformers.operators.experts.KTransformersExpertsV2", "experts"},
      {"ktransformers.operators.experts.KDeepseekV3MoE", "moe"},
      {"ktransformers.operators.experts.KDeepseekV2MoE", "moe"},
      {"ktransformers.operators.experts.KDeepseekV3MoEV2", "moe"},
      {"ktransformers.operators.gate.KMoEGate", "moe_gate"},
      {"ktransformers.operators.attention.KDeepseekV2Attention", "mla_attention"},
      {"ktransformers.operators.balance_serve_attention.flashinfer_attn", "mla_attention"},
      {"ktransformers.operators.RoPE.YarnRotaryEmbeddingV3", "rotary_embedding"},
      {"ktransformers.operators.RoPE.YarnRotaryEmbedding", "rotary_embedding"},
      {"ktransformers.operators.RoPE.RotaryEmbedding", "rotary_embedding"},
      {"ktransformers.operators.layernorm.RMSNorm", "rms_norm"},
      {"ktransformers.operators.mlp.kDeepseekV3MLP", "mlp"},
      {"ktransformers.operators.models.KDeepseekV2Model", "model"},
  };
  for (const auto &[cls, ours] : expected) {
    const OperatorInfo *op = findOperator(cls);
    ASSERT_NE(op, nullptr) << cls;
    EXPECT_EQ(op->name, ours) << cls;
    EXPECT_EQ(findOperator(ours), op) << ours;
  }
  EXPECT_EQ(findOperator("KTransformersLinear"), nullptr); // the full path is required
  EXPECT_EQ(findOperator("ktransformers.operators.experts.KExpertsCPU"), nullptr);
  EXPECT_EQ(&defaultOperator(), findOperator("default"));
}

TEST(Operators, OperatorNamesAndAnchorClassesAreUnique) {
  std::set<std::string> seen;
  for (const OperatorInfo &op : operatorTable()) {
    EXPECT_TRUE(seen.insert(op.name).second) << op.name;
    for (const std::string &cls : op.anchorClasses) {
      if (cls != op.name) {
        EXPECT_TRUE(seen.insert(cls).second) << cls;
      }
    }
  }
}

TEST(Operators, KernelSpellingsKeepTheAnchorsDeviceLimits) {
  const OperatorInfo &linear = *findOperator("linear");
  const std::vector<std::tuple<std::string, std::string, unsigned>> linearOps = {
      {"KLinearMarlin", "quant", kCudaDevices}, {"VLinearMarlin", "quant", kCudaDevices},
      {"KLinearCPUInfer", "quant", kCpuDevices}, {"KLinearQ8", "quant", kAllDevices},
      {"KLinearTorch", "dense", kAllDevices},    {"KLinearFP8", "fp8", kCudaDevices},
      {"quant", "quant", kAllDevices},           {"dense", "dense", kAllDevices},
      {"fp8", "fp8", kCudaDevices},
  };
  for (const auto &[written, family, devices] : linearOps) {
    std::optional<KernelChoice> choice = linear.resolveKernelOp(written);
    ASSERT_TRUE(choice) << written;
    EXPECT_EQ(choice->op->name, family) << written;
    EXPECT_EQ(choice->devices, devices) << written;
    EXPECT_EQ(choice->written, written);
  }
  const OperatorInfo &experts = *findOperator("experts");
  const std::vector<std::tuple<std::string, std::string, unsigned>> expertOps = {
      {"KExpertsCPU", "quant", kCpuDevices},    {"KSFTExpertsCPU", "quant", kCpuDevices},
      {"KExpertsMarlin", "quant", kCudaDevices}, {"KExpertsTorch", "dense", kAllDevices},
  };
  for (const auto &[written, family, devices] : expertOps) {
    std::optional<KernelChoice> choice = experts.resolveKernelOp(written);
    ASSERT_TRUE(choice) << written;
    EXPECT_EQ(choice->op->name, family) << written;
    EXPECT_EQ(choice->devices, devices) << written;
  }
  EXPECT_FALSE(experts.resolveKernelOp("KLinearMarlin"));
  EXPECT_FALSE(linear.resolveKernelOp("KExpertsCPU"));
  EXPECT_FALSE(findOperator("moe")->resolveKernelOp("quant")); // no kernel families
}

TEST(Operators, DefaultsFollowTheAnchor) {
  const OperatorInfo &experts = *findOperator("experts");
  EXPECT_EQ(experts.defaultGenerateDevice, Device::cpu());
  EXPECT_EQ(experts.defaultPrefillDevice, Device::cuda(0));
  EXPECT_EQ(experts.defaultOutDevice, Device::cuda(0));
  const OperatorInfo &linear = *findOperator("linear");
  EXPECT_EQ(linear.defaultGenerateDevice, Device::cuda(0));
  EXPECT_EQ(linear.defaultGenerateOp, "quant");
  EXPECT_EQ(linear.defaultPrefillOp, "dense");
  EXPECT_FALSE(linear.defaultOutDevice);
}

TEST(Operators, KindsEachOperatorReplaces) {
  EXPECT_TRUE(defaultOperator().replacesKind(ModuleKind::DecoderLayer));
  EXPECT_TRUE(findOperator("linear")->replacesKind(ModuleKind::LmHead));
  EXPECT_FALSE(findOperator("linear")->replacesKind(ModuleKind::Mlp));
  EXPECT_TRUE(findOperator("mlp")->replacesKind(ModuleKind::SharedExperts));
  EXPECT_FALSE(findOperator("experts")->replacesKind(ModuleKind::Moe));
}

TEST(MatchClasses, HfClassesMapToModuleKinds) {
  auto kinds = [](const char *name) {
    const MatchClassInfo *info = findMatchClass(name);
    EXPECT_NE(info, nullptr) << name;
    return info ? info->kinds : std::vector<ModuleKind>{};
  };
  EXPECT_EQ(kinds("torch.nn.Linear"), (std::vector<ModuleKind>{ModuleKind::Linear, ModuleKind::LmHead}));
  EXPECT_EQ(kinds("torch.nn.ModuleList"), (std::vector<ModuleKind>{ModuleKind::RoutedExperts}));
  EXPECT_EQ(kinds("torch.nn.Module").size(), size_t(kModuleKindCount));
  EXPECT_EQ(kinds("ktransformers.models.modeling_deepseek_v3.DeepseekV3MLP"),
            (std::vector<ModuleKind>{ModuleKind::Mlp, ModuleKind::SharedExperts}));
  EXPECT_EQ(kinds("ktransformers.models.modeling_deepseek_v3.MoEGate"),
            (std::vector<ModuleKind>{ModuleKind::MoeGate}));
  EXPECT_EQ(kinds("ktransformers.models.modeling_deepseek.DeepseekV2YarnRotaryEmbedding"),
            (std::vector<ModuleKind>{ModuleKind::RotaryEmbedding}));
  EXPECT_EQ(findMatchClass("ktransformers.models.modeling_deepseek.MoEGate")->family,
            ModelFamily::DeepseekV2);
  EXPECT_EQ(findMatchClass("ktransformers.models.modeling_deepseek_v3.DeepseekV3MoE")->family,
            ModelFamily::DeepseekV3);
  for (int k = 0; k < kModuleKindCount; ++k) {
    auto kind = static_cast<ModuleKind>(k);
    EXPECT_EQ(kinds(moduleKindName(kind)), std::vector<ModuleKind>{kind});
    EXPECT_EQ(parseModuleKind(moduleKindName(kind)), kind);
  }
  EXPECT_EQ(findMatchClass("DeepseekV3MoE"), nullptr);
}

TEST(MatchClasses, KindNamesAreTheGraphs) {
  // getModuleKind() of the ktgraph ops returns these strings.
  EXPECT_STREQ(moduleKindName(ModuleKind::Embedding), "embedding");
  EXPECT_STREQ(moduleKindName(ModuleKind::RmsNorm), "rms_norm");
  EXPECT_STREQ(moduleKindName(ModuleKind::MlaAttention), "mla_attention");
  EXPECT_STREQ(moduleKindName(ModuleKind::Mlp), "mlp");
  EXPECT_STREQ(moduleKindName(ModuleKind::SharedExperts), "shared_experts");
  EXPECT_STREQ(moduleKindName(ModuleKind::MoeGate), "moe_gate");
  EXPECT_STREQ(moduleKindName(ModuleKind::RoutedExperts), "routed_experts");
  EXPECT_STREQ(moduleKindName(ModuleKind::LmHead), "lm_head");
}

TEST(Unsupported, XpuAndAscendNamesSayWhatToUse) {
  std::optional<UnsupportedName> xpu = findUnsupportedName("ktransformers.operators.gate.KMoEGateIPEXLLM");
  ASSERT_TRUE(xpu);
  EXPECT_NE(xpu->reason.find("use ktransformers.operators.gate.KMoEGate"), std::string::npos);
  std::optional<UnsupportedName> ascend =
      findUnsupportedName("ktransformers.operators.ascend.ascend_attention.KDeepseekV2AttentionW8A8A2");
  ASSERT_TRUE(ascend);
  EXPECT_NE(ascend->reason.find("is an Ascend NPU operator"), std::string::npos);
  EXPECT_FALSE(findUnsupportedName("ktransformers.operators.gate.KMoEGate"));
}

TEST(Suggestions, EditDistanceCountsTranspositionsOnce) {
  EXPECT_EQ(editDistance("device", "device"), 0u);
  EXPECT_EQ(editDistance("devcie", "device"), 1u);
  EXPECT_EQ(editDistance("kwarg", "kwargs"), 1u);
  EXPECT_EQ(editDistance("", "abc"), 3u);
  EXPECT_EQ(editDistance("cpu", "cuda"), 3u);
}

TEST(Suggestions, ClosestNames) {
  const std::vector<std::string> kwargs = {"generate_device", "prefill_device", "generate_op",
                                           "prefill_op", "out_device"};
  EXPECT_EQ(closestNames("generate_devcie", kwargs), std::vector<std::string>{"generate_device"});
  EXPECT_EQ(closestNames("prefil_op", kwargs), std::vector<std::string>{"prefill_op"});
  EXPECT_TRUE(closestNames("temperature", kwargs).empty());
  EXPECT_EQ(closestNames("GENERATE_OP", kwargs), std::vector<std::string>{"generate_op"});
  // A class given without its module path finds the full name.
  EXPECT_EQ(closestNames("KMoEGate", {"ktransformers.operators.gate.KMoEGate", "default"}),
            std::vector<std::string>{"ktransformers.operators.gate.KMoEGate"});
}

// docs/rules.md must document every name the tables accept.
TEST(Documentation, RulesMdListsEveryAcceptedName) {
  std::ifstream in(std::string(KT_SOURCE_DIR) + "/docs/rules.md");
  ASSERT_TRUE(in) << "docs/rules.md is missing";
  std::stringstream text;
  text << in.rdbuf();
  const std::string doc = text.str();
  auto documented = [&](const std::string &name) {
    EXPECT_NE(doc.find("`" + name + "`"), std::string::npos)
        << "docs/rules.md does not mention `" << name << "`";
  };
  for (const OperatorInfo &op : operatorTable()) {
    documented(op.name);
    for (const std::string &cls : op.anchorClasses)
      documented(cls);
    for (const KwargSpec &kwarg : op.kwargs) {
      documented(kwarg.name);
      for (const std::string &choice : kwarg.choices)
        documented(choice);
    }
    for (const KernelOpInfo &kernel : op.kernelOps) {
      documented(kernel.name);
      for (const KernelOpAlias &alias : kernel.aliases)
        documented(alias.anchorName);
    }
  }
  for (const MatchClassInfo &info : matchClassTable())
    documented(info.name);
}

} // namespace
} // namespace kt::rules::test
