// kt-apply-rules: placement of every module by the rule file.
#include "compiler/Transforms/Passes.h"
#include "compiler/Transforms/PlacementUtils.h"

#include "compiler/Rules/Operators.h"
#include "compiler/Rules/RuleSet.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/ADT/StringSet.h"

#include <set>

namespace kt::compiler {
#define GEN_PASS_DEF_APPLYRULES
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;
using namespace kt::graph;

namespace kt::compiler {
namespace {

using rules::ModuleKind;

// Sub-modules an op stands for in the Hugging Face module tree.
struct SubModule {
  const char *name;
  ModuleKind kind;
};

std::vector<SubModule> subModulesOf(Operation *op) {
  if (auto attention = dyn_cast<MlaAttentionOp>(op)) {
    std::vector<SubModule> subs;
    if (attention.getQLoraRank() > 0)
      subs = {{"q_a_proj", ModuleKind::Linear},
              {"q_a_layernorm", ModuleKind::RmsNorm},
              {"q_b_proj", ModuleKind::Linear}};
    else
      subs = {{"q_proj", ModuleKind::Linear}};
    subs.insert(subs.end(), {{"kv_a_proj_with_mqa", ModuleKind::Linear},
                             {"kv_a_layernorm", ModuleKind::RmsNorm},
                             {"kv_b_proj", ModuleKind::Linear},
                             {"o_proj", ModuleKind::Linear},
                             {"rotary_emb", ModuleKind::RotaryEmbedding}});
    return subs;
  }
  if (isa<MlpOp, SharedExpertsOp>(op))
    return {{"gate_proj", ModuleKind::Linear},
            {"up_proj", ModuleKind::Linear},
            {"down_proj", ModuleKind::Linear}};
  return {};
}

std::optional<ModuleKind> kindOf(ModelModuleOpInterface op) {
  return rules::parseModuleKind(op.getModuleKind().str());
}

// "model.layers.12.self_attn" -> 12.
std::optional<int> layerOf(StringRef path) {
  if (!path.consume_front("model.layers."))
    return std::nullopt;
  int layer = 0;
  if (path.consumeInteger(10, layer))
    return std::nullopt;
  return layer;
}

Location ruleLocation(MLIRContext *context, const rules::SourceLocation &location) {
  // A diagnostic about the whole file (an unplaced module) is at line 0.
  return FileLineColLoc::get(context, location.file, location.line, location.column);
}

void emitDiagnostic(MLIRContext *context, const rules::Diagnostic &diagnostic) {
  Location loc = ruleLocation(context, diagnostic.location);
  switch (diagnostic.severity) {
  case rules::Severity::Error:
    emitError(loc) << diagnostic.message;
    break;
  case rules::Severity::Warning:
    emitWarning(loc) << diagnostic.message;
    break;
  case rules::Severity::Note:
    emitRemark(loc) << diagnostic.message;
    break;
  }
}

class ApplyRulesPass : public impl::ApplyRulesBase<ApplyRulesPass> {
public:
  using impl::ApplyRulesBase<ApplyRulesPass>::ApplyRulesBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    MLIRContext *context = &getContext();
    if (rulesPath.empty()) {
      module.emitError() << "kt-apply-rules needs a rule file (rules=PATH)";
      return signalPassFailure();
    }
    std::vector<rules::Diagnostic> diagnostics;
    StatusOr<rules::RuleSet> ruleSet = rules::parseRuleFile(rulesPath, diagnostics);
    for (const rules::Diagnostic &diagnostic : diagnostics)
      emitDiagnostic(context, diagnostic);
    if (!ruleSet) {
      if (diagnostics.empty())
        module.emitError() << ruleSet.message();
      return signalPassFailure();
    }

    std::optional<rules::Device> fallback = defaultDeviceFor(module);
    if (!fallback)
      return signalPassFailure();

    // The module tree: containers, graph ops and their sub-modules.
    std::vector<rules::ModuleRef> modules = {{"model", ModuleKind::Model}};
    std::vector<Operation *> owners = {nullptr};
    std::vector<std::string> roles = {""};
    std::set<int> layers;
    bool v3 = false;
    module.walk([&](ModelModuleOpInterface op) {
      std::string path = op.getModulePath().str();
      if (std::optional<int> layer = layerOf(path); layer && layers.insert(*layer).second) {
        modules.push_back({"model.layers." + std::to_string(*layer), ModuleKind::DecoderLayer});
        owners.push_back(nullptr);
        roles.push_back("");
      }
      if (auto gate = dyn_cast<MoeGateOp>(op.getOperation())) {
        // The MoE block (DeepseekV3MoE) holds the gate, experts and shared experts.
        v3 |= gate.getScoringFunc() == "sigmoid";
        modules.push_back({path.substr(0, path.rfind('.')), ModuleKind::Moe});
        owners.push_back(nullptr);
        roles.push_back("");
      }
      std::optional<ModuleKind> kind = kindOf(op);
      if (!kind)
        return;
      modules.push_back({path, *kind});
      owners.push_back(op.getOperation());
      roles.push_back("");
      for (const SubModule &sub : subModulesOf(op.getOperation())) {
        modules.push_back({path + "." + sub.name, sub.kind});
        owners.push_back(op.getOperation());
        roles.push_back(sub.name);
      }
    });

    rules::ApplyOptions options;
    options.strict = strict;
    options.defaultDevice = *fallback;
    // The anchor picks its modeling file by architecture; GGUF files of both
    // generations say deepseek2, so sigmoid routing marks DeepSeek-V3/R1.
    options.family = v3 ? rules::ModelFamily::DeepseekV3 : rules::ModelFamily::DeepseekV2;
    diagnostics.clear();
    std::vector<rules::Placement> placements =
        rules::applyRules(*ruleSet, modules, options, diagnostics);
    for (const rules::Diagnostic &diagnostic : diagnostics)
      emitDiagnostic(context, diagnostic);
    if (rules::hasErrors(diagnostics))
      return signalPassFailure();

    OpBuilder builder(context);
    llvm::DenseMap<Operation *, SmallVector<NamedAttribute>> subPlacements;
    for (size_t i = 0; i < modules.size(); ++i) {
      Operation *owner = owners[i];
      if (!owner)
        continue;
      PlacementAttr placement = toAttr(builder, *ruleSet, placements[i]);
      if (roles[i].empty())
        owner->setAttr("ktgraph.placement", placement);
      else
        subPlacements[owner].push_back(builder.getNamedAttr(roles[i], placement));
    }
    for (auto &[op, subs] : subPlacements)
      op->setAttr("ktgraph.sub_placements", builder.getDictionaryAttr(subs));
    placeValueOps(module, builder);

    module->setAttr("ktgraph.rules", builder.getStringAttr(ruleSet->file));
    if (!ruleSet->transferMap.empty()) {
      SmallVector<NamedAttribute> entries;
      for (const rules::TransferMapEntry &entry : ruleSet->transferMap)
        entries.push_back(builder.getNamedAttr(std::to_string(entry.layer),
                                               builder.getStringAttr(entry.device.str())));
      module->setAttr("ktgraph.transfer_map", builder.getDictionaryAttr(entries));
    }
  }

private:
  std::optional<rules::Device> defaultDeviceFor(ModuleOp module) {
    if (!defaultDevice.empty()) {
      std::optional<rules::Device> device = rules::parseDevice(defaultDevice);
      if (!device)
        module.emitError() << "default-device '" << defaultDevice
                           << "' is not cpu, cuda or cuda:N";
      return device;
    }
    auto target = module->getAttrOfType<TargetAttr>("ktgraph.target");
    if (target && target.getGpuCount() == 0)
      return rules::Device::cpu();
    return rules::Device::cuda(0);
  }

  PlacementAttr toAttr(OpBuilder &builder, const rules::RuleSet &ruleSet,
                       const rules::Placement &placement) {
    SmallVector<NamedAttribute> kwargs;
    auto addKernel = [&](const char *name, const rules::KernelChoice &choice) {
      if (choice.op)
        kwargs.push_back(builder.getNamedAttr(name, builder.getStringAttr(choice.op->name)));
    };
    addKernel("generate_op", placement.generateOp);
    addKernel("prefill_op", placement.prefillOp);
    static const llvm::StringSet<> structural = {"generate_device", "prefill_device",
                                                 "out_device",      "generate_op",
                                                 "prefill_op",      "transfer_map"};
    for (const auto &[key, value] : placement.kwargs)
      if (!structural.contains(key))
        kwargs.push_back(builder.getNamedAttr(key, builder.getStringAttr(value.text)));
    std::string rule;
    if (placement.ruleIndex >= 0)
      rule = ruleSet.rules[placement.ruleIndex].location.str();
    return PlacementAttr::get(
        builder.getContext(), placement.prefillDevice.str(), placement.generateDevice.str(),
        placement.op ? placement.op->name : "default",
        placement.outDevice ? placement.outDevice->str() : "", rule,
        kwargs.empty() ? DictionaryAttr() : builder.getDictionaryAttr(kwargs));
  }

  // Ops that are not modules (residual adds) run where their last operand
  // lives: the output of the module they add in, so the residual stream
  // follows the computation (from a CPU embedding onto the GPU, say).
  void placeValueOps(ModuleOp module, OpBuilder &builder) {
    module.walk([&](Operation *op) {
      if (isa<ModelModuleOpInterface, TransferOp>(op) || op->getNumOperands() == 0 ||
          !op->getDialect() || op->getDialect()->getNamespace() != "ktgraph")
        return;
      Value last = op->getOperand(op->getNumOperands() - 1);
      std::optional<StringRef> prefill = valueDevice(last, Phase::Prefill);
      std::optional<StringRef> decode = valueDevice(last, Phase::Decode);
      if (!prefill || !decode)
        return;
      op->setAttr("ktgraph.placement",
                  PlacementAttr::get(builder.getContext(), *prefill, *decode,
                                     op->getName().stripDialect(), "", "", DictionaryAttr()));
    });
  }
};

} // namespace
} // namespace kt::compiler
