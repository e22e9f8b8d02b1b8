// Rule file parsing: typed values and one test per diagnostic (message text
// and line:column).
#include "RulesTestUtil.h"

#include <fstream>

namespace kt::rules::test {
namespace {

// Expects exactly one error, at line:col, whose message contains every part.
void expectSingleError(const Parsed &parsed, int line, int column,
                       const std::vector<std::string> &parts) {
  std::vector<Diagnostic> errors = withSeverity(parsed.diagnostics, Severity::Error);
  ASSERT_EQ(errors.size(), 1u) << dump(parsed.diagnostics);
  EXPECT_FALSE(parsed.set.has_value());
  EXPECT_EQ(parsed.status, "rules.yaml: 1 error in the rule file; fix the diagnostics above and "
                           "compile again.");
  const Diagnostic &d = errors.front();
  EXPECT_EQ(d.location.file, "rules.yaml");
  EXPECT_EQ(d.location.line, line) << d.str();
  EXPECT_EQ(d.location.column, column) << d.str();
  for (const std::string &part : parts)
    EXPECT_NE(d.message.find(part), std::string::npos) << "missing \"" << part << "\" in\n"
                                                       << d.str();
}

const Diagnostic *findError(const Parsed &parsed, int line, int column) {
  for (const Diagnostic &d : parsed.diagnostics)
    if (d.severity == Severity::Error && d.location.line == line && d.location.column == column)
      return &d;
  ADD_FAILURE() << "no error at " << line << ":" << column << " in\n" << dump(parsed.diagnostics);
  return nullptr;
}

TEST(ParseDevice, AcceptsCpuCudaAndCudaN) {
  EXPECT_EQ(parseDevice("cpu"), Device::cpu());
  EXPECT_EQ(parseDevice("cuda"), Device::cuda(0));
  EXPECT_EQ(parseDevice("cuda:0"), Device::cuda(0));
  EXPECT_EQ(parseDevice("cuda:7"), Device::cuda(7));
  EXPECT_EQ(parseDevice("cuda:12"), Device::cuda(12));
  for (const char *bad : {"CPU", "Cuda", "gpu", "xpu", "npu:0", "cuda:", "cuda:-1", "cuda:x",
                          "cuda:1.0", "cuda:99999", " cpu", "cuda 0", ""})
    EXPECT_FALSE(parseDevice(bad).has_value()) << bad;
  EXPECT_EQ(Device::cuda(3).str(), "cuda:3");
  EXPECT_EQ(Device::cpu().str(), "cpu");
}

TEST(RuleParser, ResolvesAnchorExpertsRule) {
  Parsed parsed = parse(R"(- match:
    name: "^model\\.layers\\..*\\.mlp\\.experts$"
  replace:
    class: ktransformers.operators.experts.KTransformersExperts
    kwargs:
      prefill_device: "cuda"
      prefill_op: "KExpertsTorch"
      generate_device: "cpu"
      generate_op: "KExpertsCPU"
      out_device: "cuda"
  recursive: False
)");
  ASSERT_TRUE(parsed.set) << dump(parsed.diagnostics);
  EXPECT_TRUE(parsed.diagnostics.empty()) << dump(parsed.diagnostics);
  ASSERT_EQ(parsed.set->rules.size(), 1u);
  const Rule &rule = parsed.set->rules[0];
  EXPECT_EQ(rule.location.str(), "rules.yaml:1:3");
  EXPECT_EQ(*rule.namePattern, "^model\\.layers\\..*\\.mlp\\.experts$");
  EXPECT_EQ(rule.nameLocation.str(), "rules.yaml:2:11");
  EXPECT_FALSE(rule.matchClass);
  EXPECT_TRUE(rule.matchKinds.empty());
  ASSERT_NE(rule.op, nullptr);
  EXPECT_EQ(rule.op->name, "experts");
  EXPECT_EQ(rule.generateDevice, Device::cpu());
  EXPECT_EQ(rule.prefillDevice, Device::cuda(0));
  ASSERT_TRUE(rule.outDevice);
  EXPECT_EQ(*rule.outDevice, Device::cuda(0));
  ASSERT_NE(rule.generateOp.op, nullptr);
  EXPECT_EQ(rule.generateOp.op->name, "quant");
  EXPECT_EQ(rule.generateOp.written, "KExpertsCPU");
  EXPECT_EQ(rule.generateOp.devices, unsigned(kCpuDevices));
  EXPECT_EQ(rule.prefillOp.op->name, "dense");
  EXPECT_EQ(rule.prefillOp.written, "KExpertsTorch");
  EXPECT_FALSE(rule.recursive);
  EXPECT_EQ(rule.kwargs.size(), 5u);
  EXPECT_EQ(rule.kwargs.at("generate_op").text, "KExpertsCPU");
  EXPECT_TRUE(rule.kwargs.at("generate_op").quoted);
  EXPECT_EQ(rule.kwargs.at("generate_op").location.str(), "rules.yaml:9:20");
}

TEST(RuleParser, AppliesOperatorDefaults) {
  // Without kwargs the anchor's defaults apply: linear on cuda with its
  // default kernels; experts decode on the CPU, prefill on cuda:0.
  Parsed parsed = parse(R"(- match:
    class: torch.nn.Linear
  replace:
    class: ktransformers.operators.linear.KTransformersLinear
- match:
    name: "experts$"
  replace:
    class: experts
- match:
    name: "^model$"
  replace:
    class: ktransformers.operators.models.KDeepseekV2Model
- match:
    name: "^lm_head$"
  replace:
    kwargs:
      generate_device: cpu
)");
  ASSERT_TRUE(parsed.set) << dump(parsed.diagnostics);
  const Rule &linear = parsed.set->rules[0];
  EXPECT_EQ(linear.op->name, "linear");
  EXPECT_EQ(linear.generateDevice, Device::cuda(0));
  EXPECT_EQ(linear.prefillDevice, Device::cuda(0));
  EXPECT_EQ(linear.generateOp.op->name, "quant");
  EXPECT_TRUE(linear.generateOp.written.empty());
  EXPECT_EQ(linear.prefillOp.op->name, "dense");
  EXPECT_FALSE(linear.outDevice);
  EXPECT_TRUE(linear.recursive);
  EXPECT_EQ(linear.matchKinds, (std::vector<ModuleKind>{ModuleKind::Linear, ModuleKind::LmHead}));
  const Rule &experts = parsed.set->rules[1];
  EXPECT_EQ(experts.op->name, "experts");
  EXPECT_EQ(experts.generateDevice, Device::cpu());
  EXPECT_EQ(experts.prefillDevice, Device::cuda(0));
  EXPECT_EQ(*experts.outDevice, Device::cuda(0));
  // A model rule without per_layer_prefill_intput_threshold gets the anchor's 30000.
  EXPECT_EQ(parsed.set->layerwisePrefillThreshold, 30000);
  // replace without class is "default", as in the anchor.
  const Rule &head = parsed.set->rules[3];
  EXPECT_EQ(head.replaceClass, "default");
  EXPECT_EQ(head.op, &defaultOperator());
  EXPECT_EQ(head.generateDevice, Device::cpu());
  EXPECT_EQ(head.prefillDevice, Device::cuda(0));
}

TEST(RuleParser, AcceptsEveryAnchorConstruct) {
  std::vector<Diagnostic> diagnostics;
  StatusOr<RuleSet> set = parseRuleFile(
      std::string(KT_SOURCE_DIR) + "/test/unit/rules/inputs/anchor-constructs.yaml", diagnostics);
  ASSERT_TRUE(set.ok()) << dump(diagnostics);
  EXPECT_TRUE(diagnostics.empty()) << dump(diagnostics);
  std::vector<std::string> operators;
  for (const Rule &rule : set->rules)
    operators.push_back(rule.op->name);
  EXPECT_EQ(operators,
            (std::vector<std::string>{
                "rotary_embedding", "rotary_embedding", "linear", "linear", "linear", "linear",
                "linear", "moe", "moe", "moe", "moe_gate", "experts", "experts", "experts",
                "mla_attention", "mla_attention", "rms_norm", "default", "mlp", "model", "default",
                "default", "default"}));
  const Rule &lmHead = set->rules[2];
  EXPECT_EQ(lmHead.generateDevice, Device::cpu());
  EXPECT_EQ(lmHead.generateOp.written, "KLinearCPUInfer");
  EXPECT_EQ(lmHead.generateOp.op->name, "quant");
  EXPECT_EQ(set->rules[5].generateOp.op->name, "fp8");
  EXPECT_EQ(set->rules[6].generateOp.written, "KLinearQ8");
  EXPECT_EQ(*set->rules[6].outDevice, Device::cpu());
  EXPECT_EQ(set->rules[11].generateDevice, Device::cuda(0));
  EXPECT_EQ(set->rules[11].generateOp.written, "KExpertsMarlin");
  EXPECT_EQ(set->rules[12].kwargs.at("backend").text, "AMXInt8");
  EXPECT_EQ(set->rules[13].generateOp.written, "KSFTExpertsCPU");
  EXPECT_EQ(set->rules[17].matchFamily, ModelFamily::DeepseekV2);
  EXPECT_EQ(set->rules[18].matchKinds,
            (std::vector<ModuleKind>{ModuleKind::Mlp, ModuleKind::SharedExperts}));
  ASSERT_EQ(set->transferMap.size(), 1u);
  EXPECT_EQ(set->transferMap[0].layer, 30);
  EXPECT_EQ(set->transferMap[0].device, Device::cuda(1));
  EXPECT_EQ(set->transferMapRule, 19);
  EXPECT_EQ(set->layerwisePrefillThreshold, 0);
  EXPECT_EQ(set->rules[20].generateDevice, Device::cpu());
}

TEST(RuleParser, YamlSyntaxError) {
  Parsed parsed = parse("- match:\n    name: \"^model$\"\n  replace: [class\n");
  expectSingleError(parsed, 4, 1, {"YAML syntax error: end of sequence flow not found"});
}

TEST(RuleParser, EmptyFile) {
  expectSingleError(parse("# nothing here\n"), 1, 1,
                    {"the rule file is empty: write a YAML list of rules"});
}

TEST(RuleParser, TopLevelMustBeAList) {
  expectSingleError(parse("match:\n  name: x\n"), 1, 1,
                    {"a rule file is a YAML list of rules", "not a mapping"});
}

TEST(RuleParser, EmptyListWarns) {
  Parsed parsed = parse("[]\n");
  ASSERT_TRUE(parsed.set);
  ASSERT_EQ(parsed.diagnostics.size(), 1u);
  EXPECT_EQ(parsed.diagnostics[0].str(),
            "rules.yaml:1:1: warning: the rule file has no rules; every module gets the default "
            "placement");
}

TEST(RuleParser, RuleMustBeAMapping) {
  expectSingleError(parse("- match\n"), 1, 3,
                    {"a rule is a mapping with the keys match, replace and recursive, not the "
                     "scalar \"match\""});
}

TEST(RuleParser, UnknownRuleKeySuggestsTheKnownOne) {
  Parsed parsed = parse(R"(- match:
    name: "^model$"
  replcae:
    class: default
)");
  ASSERT_EQ(withSeverity(parsed.diagnostics, Severity::Error).size(), 2u) << dump(parsed.diagnostics);
  const Diagnostic *unknown = findError(parsed, 3, 3);
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->message, "unknown key \"replcae\" in a rule (did you mean \"replace\"?); a "
                              "rule takes match, replace and recursive");
  const Diagnostic *missing = findError(parsed, 1, 3);
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->message, "the rule has no replace: give replace: with class: and kwargs:");
}

TEST(RuleParser, UnknownMatchKey) {
  expectSingleError(parse(R"(- match:
    nmae: "^model$"
  replace:
    class: default
)"),
                    2, 5,
                    {"unknown key \"nmae\" in match (did you mean \"name\"?); match takes name "
                     "and class"});
}

TEST(RuleParser, UnknownReplaceKey) {
  expectSingleError(parse(R"(- match:
    name: "^model$"
  replace:
    class: default
    kwarg:
      generate_device: cpu
)"),
                    5, 5,
                    {"unknown key \"kwarg\" in replace (did you mean \"kwargs\"?); replace takes "
                     "class and kwargs"});
}

TEST(RuleParser, MissingMatchAndEmptyMatch) {
  Parsed parsed = parse(R"(- replace:
    class: default
- match: {}
  replace:
    class: default
)");
  ASSERT_EQ(withSeverity(parsed.diagnostics, Severity::Error).size(), 2u) << dump(parsed.diagnostics);
  EXPECT_EQ(findError(parsed, 1, 3)->message,
            "the rule has no match: give match: with name: (a regular expression over module "
            "paths), class: or both");
  EXPECT_EQ(findError(parsed, 3, 10)->message,
            "match must give name: (a regular expression over module paths), class: or both");
}

TEST(RuleParser, DuplicateKey) {
  expectSingleError(parse(R"(- match:
    name: "^model$"
    name: "^lm_head$"
  replace:
    class: default
)"),
                    3, 5, {"duplicate key \"name\" in match (first given at rules.yaml:2:5)"});
}

TEST(RuleParser, KwargWithTypoSuggestsTheKnownOne) {
  expectSingleError(parse(R"(- match:
    class: ktransformers.models.modeling_deepseek_v3.MoEGate
  replace:
    class: ktransformers.operators.gate.KMoEGate
    kwargs:
      generate_devcie: "cuda:0"
)"),
                    6, 7,
                    {"kwarg \"generate_devcie\" is not taken by "
                     "\"ktransformers.operators.gate.KMoEGate\" (our moe_gate) (did you mean "
                     "\"generate_device\"?); it takes generate_device and prefill_device"});
}

TEST(RuleParser, KwargTheOperatorDoesNotTake) {
  expectSingleError(parse(R"(- match:
    name: "^model\\.embed_tokens$"
  replace:
    class: "default"
    kwargs:
      generate_device: "cpu"
      generate_op: "KLinearTorch"
)"),
                    7, 7,
                    {"kwarg \"generate_op\" is not taken by \"default\"; it takes generate_device "
                     "and prefill_device"});
}

TEST(RuleParser, TheFaqRegexIsAnInvalidCharacterClass) {
  // The anchor's FAQ example, verbatim: [4-10] is a reversed character range,
  // rejected by Python's re and by ECMAScript alike.
  Parsed parsed = parse(R"(- match:
    name: "^model\\.layers\\.([4-10])\\.mlp\\.experts$"
  replace:
    class: ktransformers.operators.experts.KTransformersExperts
    kwargs:
      generate_device: "cuda:0"
      generate_op: "KExpertsMarlin"
  recursive: False
)");
  std::string engineMessage;
  try {
    std::regex bad("[4-10]", std::regex::ECMAScript);
  } catch (const std::regex_error &e) {
    engineMessage = e.what();
  }
  ASSERT_FALSE(engineMessage.empty());
  expectSingleError(parsed, 2, 11,
                    {"invalid regular expression \"^model\\.layers\\.([4-10])\\.mlp\\.experts$\": " +
                         engineMessage,
                     "; [4-10] is a character class (one character), not the numbers 4 to 10; "
                     "write (?:[4-9]|10) to match those layer numbers"});
}

TEST(RuleParser, NumberLikeCharacterClassWarns) {
  Parsed parsed = parse(R"(- match:
    name: "^model\\.layers\\.[1-15]\\.mlp\\.experts$"
  replace:
    class: experts
)");
  ASSERT_TRUE(parsed.set) << dump(parsed.diagnostics);
  ASSERT_EQ(parsed.diagnostics.size(), 1u);
  EXPECT_EQ(parsed.diagnostics[0].str(),
            "rules.yaml:2:11: warning: [1-15] is a character class (one character), not the "
            "numbers 1 to 15; write (?:[1-9]|1[0-5]) to match those layer numbers");
  // What the class really matches: the single characters 1 and 5.
  const Rule &rule = parsed.set->rules[0];
  EXPECT_TRUE(rule.matches("model.layers.1.mlp.experts", ModuleKind::RoutedExperts));
  EXPECT_TRUE(rule.matches("model.layers.5.mlp.experts", ModuleKind::RoutedExperts));
  EXPECT_FALSE(rule.matches("model.layers.3.mlp.experts", ModuleKind::RoutedExperts));
  EXPECT_FALSE(rule.matches("model.layers.15.mlp.experts", ModuleKind::RoutedExperts));
}

TEST(RuleParser, PythonOnlyRegexSyntax) {
  expectSingleError(parse(R"(- match:
    name: "^model\\.layers\\.(?P<layer>[0-9]+)\\.mlp$"
  replace:
    class: default
)"),
                    2, 11,
                    {"invalid regular expression", "patterns are ECMAScript regular "
                                                   "expressions, which have no named groups"});
}

TEST(RuleParser, UnknownDevices) {
  Parsed parsed = parse(R"(- match:
    name: "^model\\.layers\\.0\\.self_attn$"
  replace:
    class: ktransformers.operators.attention.KDeepseekV2Attention
    kwargs:
      generate_device: "xpu"
      prefill_device: cuda:x
- match:
    name: "^lm_head$"
  replace:
    class: default
    kwargs:
      generate_device: "GPU"
- match:
    name: "experts$"
  replace:
    class: experts
    kwargs:
      out_device: "cuda:-1"
)");
  ASSERT_EQ(withSeverity(parsed.diagnostics, Severity::Error).size(), 4u) << dump(parsed.diagnostics);
  EXPECT_EQ(findError(parsed, 6, 24)->message,
            "unknown device \"xpu\" for generate_device: valid devices are cpu, cuda and cuda:N "
            "(N = 0, 1, ...); xpu devices are not supported, only CPUs and CUDA GPUs");
  EXPECT_EQ(findError(parsed, 7, 23)->message,
            "unknown device \"cuda:x\" for prefill_device: valid devices are cpu, cuda and cuda:N "
            "(N = 0, 1, ...)");
  EXPECT_NE(findError(parsed, 13, 24)->message.find("unknown device \"GPU\" for generate_device"),
            std::string::npos);
  EXPECT_NE(findError(parsed, 19, 19)->message.find("unknown device \"cuda:-1\" for out_device"),
            std::string::npos);
}

TEST(RuleParser, GpuOnlyKernelOnCpu) {
  expectSingleError(parse(R"(- match:
    name: "^model\\.layers\\.(?:[4-9]|10)\\.mlp\\.experts$"
  replace:
    class: ktransformers.operators.experts.KTransformersExperts
    kwargs:
      generate_device: "cpu"
      generate_op: "KExpertsMarlin"
  recursive: False
)"),
                    6, 24,
                    {"generate_op \"KExpertsMarlin\" runs only on cuda, but generate_device is cpu; "
                     "choose a generate_op that runs on cpu or another generate_device"});
}

TEST(RuleParser, CpuOnlyKernelOnCuda) {
  expectSingleError(parse(R"(- match:
    name: "experts$"
  replace:
    class: ktransformers.operators.experts.KTransformersExperts
    kwargs:
      generate_device: "cuda:1"
      generate_op: "KExpertsCPU"
)"),
                    6, 24, {"generate_op \"KExpertsCPU\" runs only on cpu, but generate_device is cuda:1"});
}

TEST(RuleParser, KernelOnTheDefaultDevice) {
  // prefill_device defaults to cuda:0 for linear, where KLinearCPUInfer cannot
  // run: the error points at the op and says the device is the default.
  expectSingleError(parse(R"(- match:
    class: torch.nn.Linear
  replace:
    class: ktransformers.operators.linear.KTransformersLinear
    kwargs:
      prefill_op: "KLinearCPUInfer"
)"),
                    6, 19,
                    {"prefill_op \"KLinearCPUInfer\" runs only on cpu, but prefill_device is "
                     "cuda:0 (the default)"});
}

TEST(RuleParser, FamilyDevicesAreWiderThanAnchorAliases) {
  // Our own family name "quant" runs on both devices; the anchor's Marlin
  // spelling of it is GPU-only.
  Parsed ok = parse(R"(- match:
    class: linear
  replace:
    class: linear
    kwargs:
      generate_device: cpu
      generate_op: quant
      prefill_device: cpu
      prefill_op: dense
)");
  EXPECT_TRUE(ok.set) << dump(ok.diagnostics);
  EXPECT_TRUE(ok.diagnostics.empty()) << dump(ok.diagnostics);
  Parsed fp8 = parse(R"(- match:
    class: linear
  replace:
    class: linear
    kwargs:
      prefill_device: cpu
      prefill_op: fp8
)");
  expectSingleError(fp8, 6, 23, {"prefill_op \"fp8\" runs only on cuda, but prefill_device is cpu"});
}

TEST(RuleParser, UnknownReplaceClass) {
  expectSingleError(parse(R"(- match:
    name: "experts$"
  replace:
    class: ktransformers.operators.experts.KTransformersExpert
)"),
                    4, 12,
                    {"unknown replace class \"ktransformers.operators.experts.KTransformersExpert\" "
                     "(did you mean \"ktransformers.operators.experts.KTransformersExperts\"?); "
                     "accepted: ktransformers.operators.linear.KTransformersLinear; "
                     "ktransformers.operators.experts.{KTransformersExperts, KTransformersExpertsV2, "
                     "KDeepseekV3MoE, KDeepseekV2MoE, KDeepseekV3MoEV2}; ",
                     "; ktransformers.operators.models.KDeepseekV2Model; default, linear, experts, "
                     "moe, moe_gate, mla_attention, rotary_embedding, rms_norm, mlp, model"});
}

TEST(RuleParser, ClassWithoutModulePathSuggestsTheFullName) {
  expectSingleError(parse(R"(- match:
    name: "experts$"
  replace:
    class: KTransformersExperts
)"),
                    4, 12,
                    {"(did you mean \"ktransformers.operators.experts.KTransformersExperts\"?)"});
}

TEST(RuleParser, UnsupportedXpuClass) {
  expectSingleError(parse(R"(- match:
    class: ktransformers.models.modeling_deepseek_v3.DeepseekV3RMSNorm
  replace:
    class: ktransformers.operators.layernorm.KDeepseekRMSNormIPEXLLM
    kwargs:
      generate_device: "cuda"
      prefill_device: "cuda"
)"),
                    4, 12,
                    {"ktransformers.operators.layernorm.KDeepseekRMSNormIPEXLLM is an Intel XPU "
                     "(IPEX-LLM) operator; this project runs on cpu and CUDA devices: use "
                     "ktransformers.operators.layernorm.RMSNorm or \"default\""});
}

TEST(RuleParser, UnknownMatchClass) {
  expectSingleError(parse(R"(- match:
    class: ktransformers.models.modeling_deepseek_v3.DeepseekV3RMSNorms
  replace:
    class: default
)"),
                    2, 12,
                    {"unknown match class "
                     "\"ktransformers.models.modeling_deepseek_v3.DeepseekV3RMSNorms\" (did you "
                     "mean \"ktransformers.models.modeling_deepseek_v3.DeepseekV3RMSNorm\"?); "
                     "accepted: torch.nn.{Linear, Embedding, ModuleList, Module}; "
                     "ktransformers.models.modeling_deepseek.{DeepseekV2RMSNorm,",
                     "; embedding, rms_norm, mla_attention"});
}

TEST(RuleParser, UnknownKernelOp) {
  expectSingleError(parse(R"(- match:
    class: torch.nn.Linear
  replace:
    class: ktransformers.operators.linear.KTransformersLinear
    kwargs:
      generate_op: "KLinearMarln"
)"),
                    6, 20,
                    {"unknown generate_op \"KLinearMarln\" for "
                     "\"ktransformers.operators.linear.KTransformersLinear\" (did you mean "
                     "\"KLinearMarlin\"?); accepted: quant, dense, fp8, KLinearMarlin, "
                     "VLinearMarlin, KLinearCPUInfer, KLinearQ8, KLinearTorch and KLinearFP8"});
}

TEST(RuleParser, UnsupportedKernelOp) {
  expectSingleError(parse(R"(- match:
    class: torch.nn.Linear
  replace:
    class: ktransformers.operators.linear.KTransformersLinear
    kwargs:
      generate_op: "KLinearIPEXLLM"
)"),
                    6, 20, {"KLinearIPEXLLM is an Intel XPU (IPEX-LLM) operator"});
}

TEST(RuleParser, KernelOpOfAnotherOperator) {
  expectSingleError(parse(R"(- match:
    name: "experts$"
  replace:
    class: ktransformers.operators.experts.KTransformersExperts
    kwargs:
      generate_op: "KLinearMarlin"
)"),
                    6, 20,
                    {"unknown generate_op \"KLinearMarlin\"", "accepted: quant, dense, KExpertsCPU, "
                                                              "KSFTExpertsCPU, KExpertsMarlin and "
                                                              "KExpertsTorch"});
}

TEST(RuleParser, RecursiveMustBeABool) {
  Parsed parsed = parse(R"(- match:
    name: "a"
  replace:
    class: default
  recursive: "False"
- match:
    name: "b"
  replace:
    class: default
  recursive: 0
- match:
    name: "c"
  replace:
    class: default
  recursive: false
)");
  ASSERT_EQ(withSeverity(parsed.diagnostics, Severity::Error).size(), 2u) << dump(parsed.diagnostics);
  EXPECT_EQ(findError(parsed, 5, 14)->message,
            "recursive must be true or false, not the string \"False\" (remove the quotes: "
            "Python's bool() of any non-empty string is True)");
  EXPECT_EQ(findError(parsed, 10, 14)->message,
            "recursive must be true or false, not the scalar \"0\"");
}

TEST(RuleParser, KwargValueTypes) {
  Parsed parsed = parse(R"(- match:
    name: "self_attn$"
  replace:
    class: ktransformers.operators.attention.KDeepseekV2Attention
    kwargs:
      absorb_for_prefill: "yes"
- match:
    name: "^model$"
  replace:
    class: ktransformers.operators.models.KDeepseekV2Model
    kwargs:
      per_layer_prefill_intput_threshold: -1
- match:
    name: "experts$"
  replace:
    class: experts
    kwargs:
      backend: "amx"
      generate_device: [cpu]
)");
  ASSERT_EQ(withSeverity(parsed.diagnostics, Severity::Error).size(), 4u) << dump(parsed.diagnostics);
  EXPECT_EQ(findError(parsed, 6, 27)->message,
            "absorb_for_prefill must be true or false, not the string \"yes\"");
  EXPECT_EQ(findError(parsed, 12, 43)->message,
            "per_layer_prefill_intput_threshold must be a whole number >= 0, not the scalar \"-1\"");
  EXPECT_EQ(findError(parsed, 18, 16)->message,
            "unknown backend \"amx\"; accepted: llamafile, AMXInt8 or AMXBF16");
  EXPECT_EQ(findError(parsed, 19, 24)->message, "generate_device must be a single value, not a list");
}

TEST(RuleParser, StructureValueTypes) {
  Parsed parsed = parse(R"(- match:
    name: ["^model$"]
  replace:
    class: default
- match: "^lm_head$"
  replace:
    class: {name: default}
- match:
    name: "^lm_head$"
  replace:
    class: default
    kwargs: [generate_device, cpu]
)");
  ASSERT_EQ(withSeverity(parsed.diagnostics, Severity::Error).size(), 4u) << dump(parsed.diagnostics);
  EXPECT_EQ(findError(parsed, 2, 11)->message, "match name must be a string, not a list");
  EXPECT_EQ(findError(parsed, 5, 10)->message,
            "match must be a mapping with name:, class: or both, not the scalar \"^lm_head$\"");
  EXPECT_EQ(findError(parsed, 7, 12)->message, "replace class must be a string, not a mapping");
  EXPECT_EQ(findError(parsed, 12, 13)->message,
            "kwargs must be a mapping of names to values, not a list");
}

TEST(RuleParser, OperatorCannotReplaceTheMatchedClass) {
  expectSingleError(parse(R"(- match:
    class: ktransformers.models.modeling_deepseek_v3.MoEGate
  replace:
    class: ktransformers.operators.linear.KTransformersLinear
)"),
                    4, 12,
                    {"\"ktransformers.operators.linear.KTransformersLinear\" replaces only linear "
                     "and lm_head modules, but match class "
                     "\"ktransformers.models.modeling_deepseek_v3.MoEGate\" names moe_gate modules"});
}

const char *kModelRuleHead = R"(- match:
    name: "^model$"
  replace:
    class: "ktransformers.operators.models.KDeepseekV2Model"
    kwargs:
)";

TEST(TransferMap, ParsesLayersAndDevices) {
  Parsed parsed = parse(std::string(kModelRuleHead) + R"(      transfer_map:
        15: "cuda:1"
        30: cuda:2
        45: "cpu"
)");
  ASSERT_TRUE(parsed.set) << dump(parsed.diagnostics);
  EXPECT_TRUE(parsed.diagnostics.empty()) << dump(parsed.diagnostics);
  const RuleSet &set = *parsed.set;
  ASSERT_EQ(set.transferMap.size(), 3u);
  EXPECT_EQ(set.transferMap[0].layer, 15);
  EXPECT_EQ(set.transferMap[0].device, Device::cuda(1));
  EXPECT_EQ(set.transferMap[0].location.str(), "rules.yaml:7:9");
  EXPECT_EQ(set.transferMap[1].device, Device::cuda(2));
  EXPECT_EQ(set.transferMap[2].device, Device::cpu());
  EXPECT_EQ(set.transferMapRule, 0);
  EXPECT_EQ(set.rules[0].transferMap.size(), 3u);
  EXPECT_EQ(set.rules[0].kwargs.at("transfer_map").kind, KwargValue::Kind::Mapping);
  EXPECT_FALSE(set.stageDevice(0));
  EXPECT_FALSE(set.stageDevice(14));
  EXPECT_EQ(set.stageDevice(15), Device::cuda(1));
  EXPECT_EQ(set.stageDevice(29), Device::cuda(1));
  EXPECT_EQ(set.stageDevice(30), Device::cuda(2));
  EXPECT_EQ(set.stageDevice(60), Device::cpu());
}

TEST(TransferMap, LayersMustIncrease) {
  expectSingleError(parse(std::string(kModelRuleHead) + R"(      transfer_map:
        30: "cuda:2"
        15: "cuda:1"
)"),
                    8, 9,
                    {"transfer_map layers must increase: layer 15 comes after layer 30 (at "
                     "rules.yaml:7:9)"});
}

TEST(TransferMap, RepeatedLayer) {
  expectSingleError(parse(std::string(kModelRuleHead) + R"(      transfer_map:
        30: "cuda:1"
        30: "cuda:2"
)"),
                    8, 9, {"transfer_map layers must increase: layer 30 comes after layer 30"});
}

TEST(TransferMap, BadDevice) {
  expectSingleError(parse(std::string(kModelRuleHead) + R"(      transfer_map:
        30: "cuda:one"
)"),
                    7, 13,
                    {"unknown device \"cuda:one\" for transfer_map layer 30: valid devices are cpu, "
                     "cuda and cuda:N"});
}

TEST(TransferMap, QuotedLayer) {
  // PyYAML reads "30" as a string, which the anchor's `i in transfer_map`
  // never finds: the entry would be silently ignored.
  expectSingleError(parse(std::string(kModelRuleHead) + R"(      transfer_map:
        "30": "cuda:1"
)"),
                    7, 9,
                    {"a transfer_map key must be a layer number (a whole number >= 0, unquoted), "
                     "not the string \"30\""});
}

TEST(TransferMap, MustBeAMapping) {
  expectSingleError(parse(std::string(kModelRuleHead) + R"(      transfer_map: [30, "cuda:1"]
)"),
                    6, 21, {"transfer_map must be a mapping of layer numbers to devices"});
}

TEST(TransferMap, OnlyTheModelOperatorTakesIt) {
  expectSingleError(parse(R"(- match:
    name: "^model\\.layers\\.30$"
  replace:
    class: default
    kwargs:
      transfer_map:
        30: "cuda:1"
)"),
                    6, 7,
                    {"kwarg \"transfer_map\" is not taken by \"default\"; it takes generate_device "
                     "and prefill_device"});
}

TEST(TransferMap, GivenTwice) {
  expectSingleError(parse(std::string(kModelRuleHead) + R"(      transfer_map:
        30: "cuda:1"
- match:
    class: model
  replace:
    class: model
    kwargs:
      transfer_map:
        20: "cuda:1"
)"),
                    13, 7,
                    {"transfer_map is given twice: the rule at rules.yaml:1:3 already has one; keep "
                     "a single transfer_map"});
}

TEST(RuleParser, ErrorsAreCountedInTheStatus) {
  Parsed parsed = parse(R"(- match:
    name: "("
  replace:
    class: nothing
)");
  ASSERT_FALSE(parsed.set);
  EXPECT_EQ(parsed.status,
            "rules.yaml: 2 errors in the rule file; fix the diagnostics above and compile again.");
}

TEST(RuleParser, MissingFile) {
  std::vector<Diagnostic> diagnostics;
  StatusOr<RuleSet> set = parseRuleFile("/nonexistent/rules.yaml", diagnostics);
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.message(), "cannot open the rule file /nonexistent/rules.yaml: No such file or "
                           "directory; check the path given with --optimize-config-path.");
  StatusOr<RuleSet> dir = parseRuleFile(std::string(KT_SOURCE_DIR) + "/rules", diagnostics);
  ASSERT_FALSE(dir.ok());
  EXPECT_EQ(dir.message(), "the rule file " + std::string(KT_SOURCE_DIR) +
                               "/rules is a directory; give the path of a .yaml rule file.");
  EXPECT_TRUE(diagnostics.empty());
}

} // namespace
} // namespace kt::rules::test
