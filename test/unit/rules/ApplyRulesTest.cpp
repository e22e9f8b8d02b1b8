// Applying rules to a module list: first match wins, recursive: false pruning,
// class + name conjunction, re.search semantics, families, unplaced modules
// and the warnings for rules that place nothing.
#include "RulesTestUtil.h"

namespace kt::rules::test {
namespace {

struct Applied {
  RuleSet set;
  std::vector<ModuleRef> modules;
  std::vector<Placement> placements;
  std::vector<Diagnostic> diagnostics;

  const Placement &at(const std::string &path) const { return placements[indexOf(modules, path)]; }
};

Applied applyText(const std::string &text, std::vector<ModuleRef> modules,
              ApplyOptions options = ApplyOptions()) {
  Applied applied;
  Parsed parsed = parse(text);
  EXPECT_TRUE(parsed.set) << dump(parsed.diagnostics);
  if (!parsed.set)
    return applied;
  applied.set = std::move(*parsed.set);
  applied.modules = std::move(modules);
  applied.placements =
      applyRules(applied.set, applied.modules, options, applied.diagnostics);
  return applied;
}

std::vector<ModuleRef> smallV3(int layers = 4) {
  return buildDeepseekModuleTree({layers, /*leadingDenseLayers=*/1, /*qLora=*/true, true});
}

TEST(ModuleTree, DeepseekV3Shape) {
  std::vector<ModuleRef> modules = buildDeepseekModuleTree(DeepseekTreeShape{});
  // model, embed, norm, lm_head; per dense layer 1 + 2 norms + attention (1 +
  // 8 children) + mlp (1 + 3); per MoE layer the same attention and norms +
  // moe (1) + experts + gate + shared experts (1 + 3).
  const size_t dense = 1 + 2 + 9 + 4, moe = 1 + 2 + 9 + 1 + 1 + 1 + 4;
  EXPECT_EQ(modules.size(), 4 + 3 * dense + 58 * moe);
  EXPECT_EQ(modules.front().path, "model");
  EXPECT_EQ(modules.back().path, "lm_head");
  EXPECT_EQ(modules.back().kind, ModuleKind::LmHead);
  EXPECT_EQ(modules[indexOf(modules, "model.layers.2.mlp")].kind, ModuleKind::Mlp);
  EXPECT_EQ(modules[indexOf(modules, "model.layers.3.mlp")].kind, ModuleKind::Moe);
  EXPECT_EQ(modules[indexOf(modules, "model.layers.60.mlp.experts")].kind,
            ModuleKind::RoutedExperts);
  EXPECT_EQ(modules[indexOf(modules, "model.layers.60.mlp.shared_experts.down_proj")].kind,
            ModuleKind::Linear);
  EXPECT_EQ(modules[indexOf(modules, "model.layers.7.self_attn.q_a_layernorm")].kind,
            ModuleKind::RmsNorm);
  std::vector<ModuleRef> lite = buildDeepseekModuleTree({27, 1, false, true});
  EXPECT_EQ(lite[indexOf(lite, "model.layers.26.self_attn.q_proj")].kind, ModuleKind::Linear);
  for (const ModuleRef &m : lite)
    EXPECT_EQ(m.path.find("q_a_proj"), std::string::npos);
}

TEST(ApplyRules, FirstMatchWins) {
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\.1\\.self_attn$"
  replace:
    class: mla_attention
    kwargs:
      generate_device: "cuda:1"
      prefill_device: "cuda:1"
- match:
    name: "self_attn$"
  replace:
    class: mla_attention
    kwargs:
      generate_device: "cpu"
      prefill_device: "cpu"
)",
                    smallV3());
  const Placement &layer1 = a.at("model.layers.1.self_attn");
  EXPECT_EQ(layer1.source, Placement::Source::Rule);
  EXPECT_EQ(layer1.ruleIndex, 0);
  EXPECT_EQ(layer1.generateDevice, Device::cuda(1));
  const Placement &layer2 = a.at("model.layers.2.self_attn");
  EXPECT_EQ(layer2.ruleIndex, 1);
  EXPECT_EQ(layer2.generateDevice, Device::cpu());
  EXPECT_EQ(layer2.op->name, "mla_attention");
  EXPECT_TRUE(withSeverity(a.diagnostics, Severity::Warning).empty()) << dump(a.diagnostics);
}

TEST(ApplyRules, ShadowedRuleWarnsWithTheRuleThatWins) {
  // The FAQ's advice, reversed: a layer-range rule after the general one
  // never applies, because the first matching rule wins.
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\..*\\.mlp\\.experts$"
  replace:
    class: experts
  recursive: False
- match:
    name: "^model\\.layers\\.(?:[4-9]|10)\\.mlp\\.experts$"
  replace:
    class: experts
    kwargs:
      generate_device: "cuda:0"
  recursive: False
)",
                    smallV3(12));
  std::vector<Diagnostic> warnings = withSeverity(a.diagnostics, Severity::Warning);
  ASSERT_EQ(warnings.size(), 1u) << dump(a.diagnostics);
  EXPECT_EQ(warnings[0].str(),
            "rules.yaml:6:3: warning: rule at rules.yaml:6:3 never applies: an earlier rule takes "
            "every module it matches (e.g. model.layers.4.mlp.experts is placed by the rule at "
            "rules.yaml:1:3; the first matching rule wins)");
  EXPECT_EQ(warnings[0].modulePath, "model.layers.4.mlp.experts");
  EXPECT_EQ(a.at("model.layers.4.mlp.experts").generateDevice, Device::cpu());
}

TEST(ApplyRules, RuleThatMatchesNothingWarns) {
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\.99\\."
  replace:
    class: default
)",
                    smallV3());
  std::vector<Diagnostic> warnings = withSeverity(a.diagnostics, Severity::Warning);
  ASSERT_EQ(warnings.size(), 1u) << dump(a.diagnostics);
  EXPECT_EQ(warnings[0].str(),
            "rules.yaml:1:3: warning: rule at rules.yaml:1:3 matches no module");
}

TEST(ApplyRules, RecursiveFalsePrunesChildren) {
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\.1\\.self_attn$"
  replace:
    class: mla_attention
    kwargs:
      generate_device: "cuda:1"
      prefill_device: "cpu"
  recursive: False
- match:
    class: torch.nn.Linear
  replace:
    class: linear
)",
                    smallV3());
  const Placement &attn = a.at("model.layers.1.self_attn");
  EXPECT_EQ(attn.source, Placement::Source::Rule);
  for (const char *child : {"q_a_proj", "q_a_layernorm", "q_b_proj", "kv_a_proj_with_mqa",
                            "kv_a_layernorm", "kv_b_proj", "o_proj", "rotary_emb"}) {
    const Placement &p = a.at(std::string("model.layers.1.self_attn.") + child);
    EXPECT_EQ(p.source, Placement::Source::Inherited) << child;
    EXPECT_EQ(p.inheritedFrom, "model.layers.1.self_attn");
    EXPECT_EQ(p.ruleIndex, 0);
    EXPECT_EQ(p.op, &defaultOperator());
    EXPECT_EQ(p.generateDevice, Device::cuda(1));
    EXPECT_EQ(p.prefillDevice, Device::cpu());
  }
  // Other layers' projections are visited and placed by the linear rule.
  const Placement &other = a.at("model.layers.2.self_attn.q_a_proj");
  EXPECT_EQ(other.source, Placement::Source::Rule);
  EXPECT_EQ(other.ruleIndex, 1);
  EXPECT_EQ(other.op->name, "linear");
}

TEST(ApplyRules, PruningCoversGrandchildrenAndWarnsForRulesInside) {
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\.1$"
  replace:
    class: default
    kwargs:
      generate_device: "cpu"
  recursive: False
- match:
    name: "^model\\.layers\\.1\\.mlp\\.experts$"
  replace:
    class: experts
)",
                    smallV3());
  const Placement &experts = a.at("model.layers.1.mlp.experts");
  EXPECT_EQ(experts.source, Placement::Source::Inherited);
  EXPECT_EQ(experts.inheritedFrom, "model.layers.1");
  EXPECT_EQ(experts.generateDevice, Device::cpu());
  EXPECT_EQ(a.at("model.layers.1.mlp.shared_experts.up_proj").inheritedFrom, "model.layers.1");
  std::vector<Diagnostic> warnings = withSeverity(a.diagnostics, Severity::Warning);
  ASSERT_EQ(warnings.size(), 1u) << dump(a.diagnostics);
  EXPECT_EQ(warnings[0].message,
            "rule at rules.yaml:8:3 never applies: the modules it matches, e.g. "
            "model.layers.1.mlp.experts, are inside model.layers.1, which the rule at "
            "rules.yaml:1:3 places with recursive: false");
}

TEST(ApplyRules, ParentsArePlacedBeforeChildrenWhateverTheInputOrder) {
  std::vector<ModuleRef> modules = smallV3();
  std::reverse(modules.begin(), modules.end());
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\.1\\.self_attn$"
  replace:
    class: mla_attention
  recursive: False
)",
                    modules);
  EXPECT_EQ(a.at("model.layers.1.self_attn.o_proj").source, Placement::Source::Inherited);
  // The result follows the input order.
  EXPECT_EQ(a.placements.size(), modules.size());
  EXPECT_EQ(a.placements.back().source, Placement::Source::Unplaced); // "model"
}

TEST(ApplyRules, ClassAndNameMustBothMatch) {
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\.0\\."
    class: torch.nn.Linear
  replace:
    class: linear
    kwargs:
      generate_device: "cuda:1"
)",
                    smallV3());
  EXPECT_EQ(a.at("model.layers.0.self_attn.q_a_proj").source, Placement::Source::Rule);
  EXPECT_EQ(a.at("model.layers.0.mlp.gate_proj").generateDevice, Device::cuda(1));
  // Right name, wrong class; right class, wrong name.
  EXPECT_EQ(a.at("model.layers.0.self_attn").source, Placement::Source::Unplaced);
  EXPECT_EQ(a.at("model.layers.0.input_layernorm").source, Placement::Source::Unplaced);
  EXPECT_EQ(a.at("model.layers.1.self_attn.q_a_proj").source, Placement::Source::Unplaced);
  EXPECT_EQ(a.at("lm_head").source, Placement::Source::Unplaced);
}

TEST(ApplyRules, TorchLinearMatchesLmHead) {
  Applied a = applyText(R"(- match:
    class: torch.nn.Linear
  replace:
    class: ktransformers.operators.linear.KTransformersLinear
)",
                    smallV3());
  const Placement &head = a.at("lm_head");
  EXPECT_EQ(head.source, Placement::Source::Rule);
  EXPECT_EQ(head.op->name, "linear");
  // Our short name "linear" is the kind itself: it does not include lm_head.
  Applied ours = applyText(R"(- match:
    class: linear
  replace:
    class: linear
)",
                       smallV3());
  EXPECT_EQ(ours.at("lm_head").source, Placement::Source::Unplaced);
  EXPECT_EQ(ours.at("model.layers.0.self_attn.o_proj").source, Placement::Source::Rule);
}

TEST(ApplyRules, HfMlpClassMatchesDenseMlpAndSharedExperts) {
  Applied a = applyText(R"(- match:
    class: ktransformers.models.modeling_deepseek_v3.DeepseekV3MLP
  replace:
    class: ktransformers.operators.mlp.kDeepseekV3MLP
)",
                    smallV3());
  EXPECT_EQ(a.at("model.layers.0.mlp").op->name, "mlp");
  EXPECT_EQ(a.at("model.layers.1.mlp.shared_experts").op->name, "mlp");
  EXPECT_EQ(a.at("model.layers.1.mlp").source, Placement::Source::Unplaced); // the MoE
}

TEST(ApplyRules, NamesAreSearchedNotMatchedAtTheStart) {
  // The anchor uses Python's re.search: a pattern may match anywhere in the
  // path unless anchored with ^ or $.
  Applied a = applyText(R"yaml(- match:
    name: "layers\\.2\\.self_attn$"
  replace:
    class: mla_attention
    kwargs:
      generate_device: "cuda:2"
- match:
    name: "(^model\\.layers\\.3\\.)|(model.norm)"
  replace:
    class: default
    kwargs:
      generate_device: "cuda:3"
- match:
    name: "^model$"
  replace:
    class: model
)yaml",
                    smallV3());
  EXPECT_EQ(a.at("model.layers.2.self_attn").generateDevice, Device::cuda(2));
  EXPECT_EQ(a.at("model.norm").generateDevice, Device::cuda(3));
  // The unanchored "model.norm" (with "." matching any character) also matches
  // inside longer paths; "^model$" matches only the model itself.
  EXPECT_EQ(a.at("model.layers.3.input_layernorm").generateDevice, Device::cuda(3));
  EXPECT_EQ(a.at("model").op->name, "model");
  EXPECT_EQ(a.at("model.layers.0").source, Placement::Source::Unplaced);
  EXPECT_EQ(a.at("model.embed_tokens").source, Placement::Source::Unplaced);
}

TEST(ApplyRules, LookaheadExcludesKvBProj) {
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\.(?!.*self_attn\\.kv_b_proj).*$"
    class: torch.nn.Linear
  replace:
    class: linear
)",
                    smallV3());
  EXPECT_EQ(a.at("model.layers.1.self_attn.kv_a_proj_with_mqa").source, Placement::Source::Rule);
  EXPECT_EQ(a.at("model.layers.1.self_attn.o_proj").source, Placement::Source::Rule);
  EXPECT_EQ(a.at("model.layers.1.self_attn.kv_b_proj").source, Placement::Source::Unplaced);
}

TEST(ApplyRules, ClassesOfTheOtherFamilyDoNotMatch) {
  const char *text = R"(- match:
    class: ktransformers.models.modeling_deepseek.DeepseekV2MoE
  replace:
    class: ktransformers.operators.experts.KDeepseekV2MoE
)";
  ApplyOptions v3;
  v3.family = ModelFamily::DeepseekV3;
  Applied onV3 = applyText(text, smallV3(), v3);
  EXPECT_EQ(onV3.at("model.layers.1.mlp").source, Placement::Source::Unplaced);
  std::vector<Diagnostic> warnings = withSeverity(onV3.diagnostics, Severity::Warning);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_EQ(warnings[0].message, "rule at rules.yaml:1:3 matches no module");
  ApplyOptions v2;
  v2.family = ModelFamily::DeepseekV2;
  EXPECT_EQ(applyText(text, smallV3(), v2).at("model.layers.1.mlp").op->name, "moe");
  // Family unknown: classes of either family match.
  EXPECT_EQ(applyText(text, smallV3()).at("model.layers.1.mlp").op->name, "moe");
}

TEST(ApplyRules, OperatorThatCannotReplaceAMatchedModule) {
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\.0\\.self_attn"
  replace:
    class: ktransformers.operators.linear.KTransformersLinear
)",
                    smallV3());
  std::vector<Diagnostic> errors = withSeverity(a.diagnostics, Severity::Error);
  ASSERT_EQ(errors.size(), 1u) << dump(a.diagnostics);
  // self_attn, its two norms and rotary_emb are not linear modules.
  EXPECT_EQ(errors[0].str(),
            "rules.yaml:1:3: error: the rule matches model.layers.0.self_attn (mla_attention) and "
            "3 more modules it cannot replace, but "
            "\"ktransformers.operators.linear.KTransformersLinear\" replaces only linear and "
            "lm_head modules; narrow its name pattern or add a match class");
  EXPECT_EQ(errors[0].modulePath, "model.layers.0.self_attn");
}

TEST(ApplyRules, UnplacedModulesGetTheDefault) {
  Applied a = applyText(R"(- match:
    name: "mlp\\.experts$"
  replace:
    class: experts
)",
                    smallV3(2));
  const Placement &norm = a.at("model.norm");
  EXPECT_EQ(norm.source, Placement::Source::Unplaced);
  EXPECT_EQ(norm.ruleIndex, -1);
  EXPECT_EQ(norm.op, &defaultOperator());
  EXPECT_EQ(norm.generateDevice, Device::cuda(0));
  EXPECT_EQ(norm.prefillDevice, Device::cuda(0));
  ASSERT_FALSE(hasErrors(a.diagnostics)) << dump(a.diagnostics);
  std::vector<Diagnostic> notes = withSeverity(a.diagnostics, Severity::Note);
  ASSERT_EQ(notes.size(), 1u);
  const size_t unplaced = a.modules.size() - 1;
  EXPECT_EQ(notes[0].str(), "rules.yaml: note: " + std::to_string(unplaced) +
                                " modules are placed by no rule and get the default operator on "
                                "cuda:0 (e.g. model)");

  ApplyOptions cpuDefault;
  cpuDefault.defaultDevice = Device::cpu();
  Applied onCpu = applyText(R"(- match:
    name: "mlp\\.experts$"
  replace:
    class: experts
)",
                        smallV3(2), cpuDefault);
  EXPECT_EQ(onCpu.at("model.norm").generateDevice, Device::cpu());
}

TEST(ApplyRules, StrictModeMakesUnplacedModulesErrors) {
  ApplyOptions strict;
  strict.strict = true;
  strict.maxUnplacedErrors = 3;
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\."
  replace:
    class: default
)",
                    smallV3(2), strict);
  std::vector<Diagnostic> errors = withSeverity(a.diagnostics, Severity::Error);
  ASSERT_EQ(errors.size(), 3u) << dump(a.diagnostics);
  EXPECT_EQ(errors[0].str(),
            "rules.yaml: error: no rule places model (model); add a rule for it (strict mode "
            "does not apply the default operator on cuda:0)");
  EXPECT_EQ(errors[0].modulePath, "model");
  EXPECT_EQ(errors[1].modulePath, "model.embed_tokens");
  EXPECT_EQ(errors[2].modulePath, "model.norm");
  std::vector<Diagnostic> notes = withSeverity(a.diagnostics, Severity::Note);
  ASSERT_EQ(notes.size(), 1u);
  EXPECT_EQ(notes[0].message, "1 more module is placed by no rule"); // lm_head
}

TEST(ApplyRules, TransferMapPastTheLastLayerWarns) {
  Applied a = applyText(R"(- match:
    name: "^model$"
  replace:
    class: ktransformers.operators.models.KDeepseekV2Model
    kwargs:
      transfer_map:
        2: "cuda:1"
        30: "cuda:2"
)",
                    smallV3(4));
  std::vector<Diagnostic> warnings = withSeverity(a.diagnostics, Severity::Warning);
  ASSERT_EQ(warnings.size(), 1u) << dump(a.diagnostics);
  EXPECT_EQ(warnings[0].str(),
            "rules.yaml:8:9: warning: transfer_map layer 30 is past the model's last layer (3); "
            "the entry has no effect");
  EXPECT_EQ(a.set.stageDevice(3), Device::cuda(1));
}

TEST(ApplyRules, PlacementCarriesTheRulesKwargsAndKernels) {
  Applied a = applyText(R"(- match:
    name: "^model\\.layers\\..*\\.mlp\\.experts$"
  replace:
    class: ktransformers.operators.experts.KTransformersExperts
    kwargs:
      generate_device: "cpu"
      generate_op: "KExpertsCPU"
      prefill_device: "cuda:1"
      prefill_op: "KExpertsMarlin"
      out_device: "cuda:1"
      backend: "AMXBF16"
  recursive: False
)",
                    smallV3());
  const Placement &p = a.at("model.layers.3.mlp.experts");
  EXPECT_EQ(p.op->name, "experts");
  EXPECT_EQ(p.generateOp.op->name, "quant");
  EXPECT_EQ(p.generateOp.written, "KExpertsCPU");
  EXPECT_EQ(p.prefillOp.written, "KExpertsMarlin");
  EXPECT_EQ(p.prefillDevice, Device::cuda(1));
  EXPECT_EQ(*p.outDevice, Device::cuda(1));
  EXPECT_EQ(p.kwargs.at("backend").text, "AMXBF16");
  EXPECT_EQ(std::string(placementSourceName(p.source)), "rule");
}

} // namespace
} // namespace kt::rules::test
