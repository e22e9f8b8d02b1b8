// The rule files in rules/: each parses without a diagnostic, places every
// module of the model it is written for (strict mode), and places the
// modules the way its comments say.
#include "RulesTestUtil.h"

#include <filesystem>

namespace kt::rules::test {
namespace {

const DeepseekTreeShape kDeepseekV3{61, 3, true, true};
const DeepseekTreeShape kDeepseekV2{60, 1, true, true};
const DeepseekTreeShape kDeepseekV2Lite{27, 1, false, true};

struct ShippedFile {
  std::string name;
  DeepseekTreeShape shape;
  ModelFamily family;
};

const std::vector<ShippedFile> &shippedFiles() {
  static const std::vector<ShippedFile> files = {
      {"DeepSeek-V3-Chat.yaml", kDeepseekV3, ModelFamily::DeepseekV3},
      {"DeepSeek-V3-Chat-cpu-only.yaml", kDeepseekV3, ModelFamily::DeepseekV3},
      {"DeepSeek-V3-Chat-gpu-experts-4-10.yaml", kDeepseekV3, ModelFamily::DeepseekV3},
      {"DeepSeek-V3-Chat-fp8-linear-ggml-experts.yaml", kDeepseekV3, ModelFamily::DeepseekV3},
      {"DeepSeek-V3-Chat-multi-gpu-2.yaml", kDeepseekV3, ModelFamily::DeepseekV3},
      {"DeepSeek-V3-Chat-multi-gpu-4.yaml", kDeepseekV3, ModelFamily::DeepseekV3},
      {"DeepSeek-V3-Chat-multi-gpu-8.yaml", kDeepseekV3, ModelFamily::DeepseekV3},
      {"DeepSeek-V2-Chat.yaml", kDeepseekV2, ModelFamily::DeepseekV2},
      {"DeepSeek-V2-Lite-Chat.yaml", kDeepseekV2Lite, ModelFamily::DeepseekV2},
  };
  return files;
}

std::string rulesDir() { return std::string(KT_SOURCE_DIR) + "/rules/"; }

struct Shipped {
  RuleSet set;
  std::vector<ModuleRef> modules;
  std::vector<Placement> placements;
  std::vector<Diagnostic> diagnostics;
  const Placement &at(const std::string &path) const { return placements[indexOf(modules, path)]; }
};

Shipped load(const std::string &name) {
  Shipped s;
  const ShippedFile *file = nullptr;
  for (const ShippedFile &f : shippedFiles())
    if (f.name == name)
      file = &f;
  if (!file) {
    ADD_FAILURE() << name << " is not in the list of shipped files";
    return s;
  }
  StatusOr<RuleSet> set = parseRuleFile(rulesDir() + name, s.diagnostics);
  if (!set.ok()) {
    ADD_FAILURE() << set.message() << "\n" << dump(s.diagnostics);
    return s;
  }
  s.set = std::move(*set);
  s.modules = buildDeepseekModuleTree(file->shape);
  ApplyOptions options;
  options.strict = true;
  options.family = file->family;
  s.placements = applyRules(s.set, s.modules, options, s.diagnostics);
  return s;
}

std::string layerPath(int layer, const std::string &rest = "") {
  return "model.layers." + std::to_string(layer) + rest;
}

TEST(ShippedRules, EveryFileInRulesIsTested) {
  std::vector<std::string> found;
  for (const auto &entry : std::filesystem::directory_iterator(rulesDir()))
    if (entry.path().extension() == ".yaml")
      found.push_back(entry.path().filename().string());
  std::sort(found.begin(), found.end());
  std::vector<std::string> listed;
  for (const ShippedFile &f : shippedFiles())
    listed.push_back(f.name);
  std::sort(listed.begin(), listed.end());
  EXPECT_EQ(found, listed);
}

TEST(ShippedRules, ParseAndPlaceEveryModuleWithoutDiagnostics) {
  for (const ShippedFile &file : shippedFiles()) {
    SCOPED_TRACE(file.name);
    Shipped s = load(file.name);
    EXPECT_TRUE(s.diagnostics.empty()) << dump(s.diagnostics);
    ASSERT_EQ(s.placements.size(), s.modules.size());
    for (size_t i = 0; i < s.modules.size(); ++i)
      EXPECT_NE(s.placements[i].source, Placement::Source::Unplaced) << s.modules[i].path;
    // The MLA operator absorbs kv_b_proj itself: it stays a plain module on
    // its attention's device.
    for (int layer : {0, file.shape.layers - 1}) {
      const Placement &kvb = s.at(layerPath(layer, ".self_attn.kv_b_proj"));
      EXPECT_EQ(kvb.op, &defaultOperator());
      EXPECT_EQ(kvb.generateDevice, s.at(layerPath(layer, ".self_attn")).generateDevice);
    }
    EXPECT_EQ(s.set.layerwisePrefillThreshold, 0);
  }
}

TEST(ShippedRules, V2FilesDoNotFitV3Models) {
  // The V2 files name modeling_deepseek classes, which a V3 model's modules
  // are not: applied to one, those rules match nothing and say so.
  std::vector<Diagnostic> diagnostics;
  StatusOr<RuleSet> set = parseRuleFile(rulesDir() + "DeepSeek-V2-Chat.yaml", diagnostics);
  ASSERT_TRUE(set.ok());
  ApplyOptions options;
  options.family = ModelFamily::DeepseekV3;
  applyRules(*set, buildDeepseekModuleTree(kDeepseekV3), options, diagnostics);
  EXPECT_EQ(withSeverity(diagnostics, Severity::Warning).size(), 2u) << dump(diagnostics);
}

TEST(ShippedRules, DefaultV3PutsRoutedExpertsOnTheCpu) {
  Shipped s = load("DeepSeek-V3-Chat.yaml");
  EXPECT_TRUE(s.set.transferMap.empty());
  for (int layer = 3; layer < 61; ++layer) {
    const Placement &experts = s.at(layerPath(layer, ".mlp.experts"));
    EXPECT_EQ(experts.op->name, "experts");
    EXPECT_EQ(experts.generateDevice, Device::cpu()) << layer;
    EXPECT_EQ(experts.prefillDevice, Device::cpu()) << layer;
    EXPECT_EQ(experts.generateOp.op->name, "quant");
    EXPECT_EQ(experts.generateOp.written, "KExpertsCPU");
    EXPECT_EQ(*experts.outDevice, Device::cuda(0));
    EXPECT_EQ(s.at(layerPath(layer, ".mlp")).op->name, "moe");
    EXPECT_EQ(s.at(layerPath(layer, ".mlp.gate")).op->name, "moe_gate");
    EXPECT_EQ(s.at(layerPath(layer, ".mlp.gate")).generateDevice, Device::cuda(0));
    EXPECT_EQ(s.at(layerPath(layer, ".mlp.shared_experts.up_proj")).op->name, "linear");
  }
  for (int layer = 0; layer < 61; ++layer) {
    const Placement &attn = s.at(layerPath(layer, ".self_attn"));
    EXPECT_EQ(attn.op->name, "mla_attention");
    EXPECT_EQ(attn.generateDevice, Device::cuda(0));
    EXPECT_EQ(attn.kwargs.at("absorb_for_prefill").text, "False");
    const Placement &q = s.at(layerPath(layer, ".self_attn.q_a_proj"));
    EXPECT_EQ(q.op->name, "linear");
    EXPECT_EQ(q.generateOp.written, "KLinearMarlin");
    EXPECT_EQ(q.generateDevice, Device::cuda(0));
    EXPECT_EQ(s.at(layerPath(layer, ".self_attn.rotary_emb")).op->name, "rotary_embedding");
    EXPECT_EQ(s.at(layerPath(layer, ".input_layernorm")).generateDevice, Device::cuda(0));
  }
  EXPECT_EQ(s.at("model.layers.0.mlp").op, &defaultOperator());
  EXPECT_EQ(s.at("model.layers.0.mlp.down_proj").op->name, "linear");
  EXPECT_EQ(s.at("model.embed_tokens").generateDevice, Device::cpu());
  EXPECT_EQ(s.at("lm_head").op->name, "linear");
  EXPECT_EQ(s.at("lm_head").generateDevice, Device::cuda(0));
  EXPECT_EQ(s.at("model.norm").generateDevice, Device::cuda(0));
  EXPECT_EQ(s.at("model").op->name, "model");
}

TEST(ShippedRules, CpuOnlyPlacesEverythingOnTheCpu) {
  Shipped s = load("DeepSeek-V3-Chat-cpu-only.yaml");
  for (size_t i = 0; i < s.modules.size(); ++i) {
    const Placement &p = s.placements[i];
    EXPECT_EQ(p.generateDevice, Device::cpu()) << s.modules[i].path;
    EXPECT_EQ(p.prefillDevice, Device::cpu()) << s.modules[i].path;
    if (p.outDevice) {
      EXPECT_EQ(*p.outDevice, Device::cpu()) << s.modules[i].path;
    }
    if (p.generateOp.op) {
      EXPECT_TRUE(deviceAllowed(p.generateOp.devices, Device::cpu())) << s.modules[i].path;
      EXPECT_TRUE(deviceAllowed(p.prefillOp.devices, Device::cpu())) << s.modules[i].path;
    }
  }
  EXPECT_EQ(s.at("lm_head").generateOp.written, "KLinearCPUInfer");
  EXPECT_EQ(s.at("model.layers.40.mlp.experts").prefillOp.written, "KExpertsCPU");
}

TEST(ShippedRules, GpuExpertsForLayers4To10) {
  Shipped s = load("DeepSeek-V3-Chat-gpu-experts-4-10.yaml");
  for (int layer = 3; layer < 61; ++layer) {
    const Placement &experts = s.at(layerPath(layer, ".mlp.experts"));
    const bool onGpu = layer >= 4 && layer <= 10;
    EXPECT_EQ(experts.generateDevice, onGpu ? Device::cuda(0) : Device::cpu()) << layer;
    EXPECT_EQ(experts.prefillDevice, onGpu ? Device::cuda(0) : Device::cpu()) << layer;
    EXPECT_EQ(experts.generateOp.written, onGpu ? "KExpertsMarlin" : "KExpertsCPU") << layer;
    EXPECT_EQ(experts.generateOp.op->name, "quant");
  }
}

TEST(ShippedRules, Fp8LinearLayersAndGgufExperts) {
  Shipped s = load("DeepSeek-V3-Chat-fp8-linear-ggml-experts.yaml");
  for (const char *linear : {"model.layers.0.mlp.gate_proj", "model.layers.5.self_attn.q_a_proj",
                             "model.layers.60.self_attn.o_proj",
                             "model.layers.30.mlp.shared_experts.down_proj"}) {
    const Placement &p = s.at(linear);
    EXPECT_EQ(p.generateOp.op->name, "fp8") << linear;
    EXPECT_EQ(p.prefillOp.op->name, "fp8") << linear;
    EXPECT_EQ(p.generateDevice, Device::cuda(0)) << linear;
  }
  EXPECT_EQ(s.at("lm_head").generateOp.op->name, "quant");
  EXPECT_EQ(s.at("model.layers.30.mlp.experts").generateDevice, Device::cpu());
  EXPECT_EQ(s.at("model.layers.30.mlp.experts").generateOp.written, "KExpertsCPU");
}

void checkPipeline(const std::string &file, const std::vector<int> &firstLayers) {
  SCOPED_TRACE(file);
  Shipped s = load(file);
  const int gpus = static_cast<int>(firstLayers.size());
  ASSERT_EQ(s.set.transferMap.size(), static_cast<size_t>(gpus - 1));
  for (int stage = 1; stage < gpus; ++stage) {
    EXPECT_EQ(s.set.transferMap[stage - 1].layer, firstLayers[stage]);
    EXPECT_EQ(s.set.transferMap[stage - 1].device, Device::cuda(stage));
  }
  std::vector<int> modulesPerGpu(gpus, 0);
  for (size_t i = 0; i < s.modules.size(); ++i) {
    const std::string &path = s.modules[i].path;
    const int layer = path.rfind("model.layers.", 0) == 0
                          ? std::stoi(path.substr(std::string("model.layers.").size()))
                          : -1;
    if (layer < 0)
      continue;
    int stage = 0;
    while (stage + 1 < gpus && layer >= firstLayers[stage + 1])
      ++stage;
    const Device gpu = Device::cuda(stage);
    EXPECT_EQ(s.set.stageDevice(layer).value_or(Device::cuda(0)), gpu) << path;
    const Placement &p = s.placements[i];
    if (s.modules[i].kind == ModuleKind::RoutedExperts) {
      EXPECT_EQ(p.generateDevice, Device::cpu()) << path;
      EXPECT_EQ(p.prefillDevice, Device::cpu()) << path;
      EXPECT_EQ(*p.outDevice, gpu) << path;
    } else {
      EXPECT_EQ(p.generateDevice, gpu) << path;
      EXPECT_EQ(p.prefillDevice, gpu) << path;
      ++modulesPerGpu[stage];
    }
  }
  for (int stage = 0; stage < gpus; ++stage)
    EXPECT_GT(modulesPerGpu[stage], 0) << "nothing on cuda:" << stage;
  const Device last = Device::cuda(gpus - 1);
  EXPECT_EQ(s.at("lm_head").generateDevice, last);
  EXPECT_EQ(s.at("lm_head").op->name, "linear");
  EXPECT_EQ(s.at("model.norm").generateDevice, last);
  EXPECT_EQ(s.at("model.embed_tokens").generateDevice, Device::cpu());
  EXPECT_EQ(s.at("model").op->name, "model");
  // Spot checks of operators inside a late stage.
  EXPECT_EQ(s.at("model.layers.60.self_attn").op->name, "mla_attention");
  EXPECT_EQ(s.at("model.layers.60.self_attn.q_b_proj").op->name, "linear");
  EXPECT_EQ(s.at("model.layers.60.self_attn.rotary_emb").op->name, "rotary_embedding");
  EXPECT_EQ(s.at("model.layers.60.mlp.gate").op->name, "moe_gate");
  EXPECT_EQ(s.at("model.layers.60.mlp").op->name, "moe");
  EXPECT_EQ(s.at("model.layers.1.mlp").op, &defaultOperator()); // dense
}

TEST(ShippedRules, MultiGpuPipelines) {
  checkPipeline("DeepSeek-V3-Chat-multi-gpu-2.yaml", {0, 30});
  checkPipeline("DeepSeek-V3-Chat-multi-gpu-4.yaml", {0, 15, 30, 45});
  checkPipeline("DeepSeek-V3-Chat-multi-gpu-8.yaml", {0, 8, 16, 24, 32, 40, 48, 56});
}

TEST(ShippedRules, DeepseekV2Files) {
  for (const char *file : {"DeepSeek-V2-Chat.yaml", "DeepSeek-V2-Lite-Chat.yaml"}) {
    SCOPED_TRACE(file);
    Shipped s = load(file);
    const bool lite = std::string(file).find("Lite") != std::string::npos;
    const int layers = lite ? 27 : 60;
    for (int layer = 1; layer < layers; ++layer) {
      EXPECT_EQ(s.at(layerPath(layer, ".mlp.experts")).generateDevice, Device::cpu());
      EXPECT_EQ(s.at(layerPath(layer, ".mlp")).op->name, "moe");
      // The V2 router (softmax) stays the module as it is.
      EXPECT_EQ(s.at(layerPath(layer, ".mlp.gate")).op, &defaultOperator());
      EXPECT_EQ(s.at(layerPath(layer, ".mlp.gate")).generateDevice, Device::cuda(0));
    }
    EXPECT_EQ(s.at("model.layers.0.self_attn.rotary_emb").op->name, "rotary_embedding");
    EXPECT_EQ(s.at(lite ? "model.layers.3.self_attn.q_proj" : "model.layers.3.self_attn.q_b_proj")
                  .op->name,
              "linear");
  }
}

} // namespace
} // namespace kt::rules::test
