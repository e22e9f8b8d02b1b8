// kt-verify-placement: every placement can run on the target.
#include "compiler/Transforms/Passes.h"

#include "compiler/Rules/Operators.h"
#include "dialects/Graph/IR/GraphDialect.h"
#include "runtime/gguf/GgmlType.h"

#include "mlir/IR/BuiltinOps.h"

namespace kt::compiler {
#define GEN_PASS_DEF_VERIFYPLACEMENT
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;
using namespace kt::graph;

namespace kt::compiler {
namespace {

// Storage types the GPU kernels read (dequantizing in registers); the CPU
// path reads every type the GGUF reader dequantizes.
bool gpuReadsType(StringRef dtype) {
  static const StringRef kGpuTypes[] = {"f32",  "f16",  "bf16", "q8_0",
                                        "q4_K", "q5_K", "q6_K", "f8_e4m3"};
  return llvm::is_contained(kGpuTypes, dtype);
}

class VerifyPlacementPass : public impl::VerifyPlacementBase<VerifyPlacementPass> {
public:
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto target = module->getAttrOfType<TargetAttr>("ktgraph.target");
    if (!target) {
      module.emitError() << "the module has no ktgraph.target; compile with ktc compile, or "
                            "give one in the IR";
      return signalPassFailure();
    }
    bool failed = false;
    module.walk([&](ModelModuleOpInterface op) {
      auto placement = op->getAttrOfType<PlacementAttr>("ktgraph.placement");
      if (!placement) {
        op->emitOpError() << "module '" << op.getModulePath()
                          << "' has no placement; run kt-apply-rules first";
        failed = true;
        return;
      }
      // One error per module: later checks assume the earlier ones passed.
      if (!verifyOne(op, placement, target) ||
          !verifyFp8Weights(op, placement, op.getModulePath().str(), "")) {
        failed = true;
        return;
      }
      if (auto subs = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_placements"))
        for (NamedAttribute sub : subs)
          if (auto subPlacement = sub.getValue().dyn_cast<PlacementAttr>()) {
            std::string path = op.getModulePath().str() + "." + sub.getName().str();
            failed |= !verifyDevices(op, subPlacement, target, path);
            failed |= !verifyFp8Weights(op, subPlacement, path, sub.getName().getValue());
          }
    });
    if (failed)
      signalPassFailure();
  }

private:
  static std::string ruleOf(PlacementAttr placement) {
    return placement.getRule().empty() ? std::string("the default placement")
                                       : "the rule at " + placement.getRule().str();
  }

  // The fp8 kernel family computes on FP8 e4m3 weights with block scales,
  // which only native FP8 checkpoints have (their importer names the type
  // "f8_e4m3"); GGUF weights need the quant or dense family. Elsewhere an
  // FP8 weight is converted to q8_0 at load: on the CPU, and for the MLA
  // operator's kv_b_proj, which it splits into its absorbed halves itself.
  bool verifyFp8Weights(ModelModuleOpInterface op, PlacementAttr placement,
                        const std::string &path, StringRef role) {
    DictionaryAttr kwargs = placement.getKwargs();
    // A weight placed on its own (a sub-placement) is checked against that
    // placement.
    auto subs = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_placements");
    const bool onCpu = placement.getPrefill() == "cpu" && placement.getDecode() == "cpu";
    for (auto &[weightRole, weight] : op.getWeights()) {
      if ((!role.empty() && weightRole != role) || weight.getDtype() != "f8_e4m3")
        continue;
      if (role.empty() && subs && subs.get(weightRole))
        continue;
      bool fp8 = false;
      for (StringRef key : {"generate_op", "prefill_op"})
        if (auto family = kwargs ? kwargs.getAs<StringAttr>(key) : StringAttr())
          fp8 = fp8 || family.getValue() == "fp8";
      const bool splitByOperator = isa<MlaAttentionOp>(op.getOperation()) &&
                                   weightRole == "kv_b_proj";
      if (fp8 || onCpu || splitByOperator)
        continue;
      if (isa<RoutedExpertsOp>(op.getOperation())) {
        // On one GPU for both phases: FP8 kernels on sm_90a, q8_0 copies
        // made at load elsewhere.
        if (placement.getPrefill() == placement.getDecode())
          continue;
        op->emitOpError() << "the routed experts '" << path << "' are FP8 and "
                          << ruleOf(placement)
                          << " runs their prefill and decode on different devices; FP8 experts "
                             "run on one GPU for both, or on the CPU (converted to q8_0 at load)";
        return false;
      }
      op->emitOpError() << "weight '" << weight.getName() << "' of module '" << path
                        << "' is FP8 (from a native FP8 checkpoint), but " << ruleOf(placement)
                        << " runs it on a GPU without the fp8 kernel family; use "
                           "generate_op/prefill_op KLinearFP8 there (see "
                           "rules/DeepSeek-V3-Chat-fp8-linear-ggml-experts.yaml), or place it "
                           "on the CPU, which converts it to q8_0 at load";
      return false;
    }
    if (!kwargs)
      return true;
    for (StringRef key : {"generate_op", "prefill_op"}) {
      auto family = kwargs.getAs<StringAttr>(key);
      if (!family || family.getValue() != "fp8")
        continue;
      for (auto &[weightRole, weight] : op.getWeights()) {
        if ((!role.empty() && weightRole != role) || weight.getDtype() == "f8_e4m3")
          continue;
        op->emitOpError() << "module '" << path << "' runs the fp8 kernel family ("
                          << ruleOf(placement) << "), which needs FP8 weights from a native "
                          << "FP8 checkpoint, but weight '" << weight.getName() << "' is "
                          << weight.getDtype()
                          << "; give the model's FP8 checkpoint with --fp8-path, or for a "
                             "GGUF model use the quant family (KLinearMarlin) or the dense one "
                             "(KLinearTorch)";
        return false;
      }
    }
    return true;
  }

  bool verifyDevices(ModelModuleOpInterface op, PlacementAttr placement, TargetAttr target,
                     const std::string &path) {
    for (StringRef device : {placement.getPrefill(), placement.getDecode(), placement.getOut()}) {
      if (device.empty() || device == "cpu")
        continue;
      unsigned index = 0;
      if (device.drop_front(5).getAsInteger(10, index) || index >= target.getGpuCount()) {
        op->emitOpError() << "module '" << path << "' is placed on " << device << " by "
                          << ruleOf(placement) << ", but the target has "
                          << target.getGpuCount()
                          << " GPU(s); change the rule or describe the machine with "
                             "--target-gpu";
        return false;
      }
    }
    return true;
  }

  bool verifyOne(ModelModuleOpInterface op, PlacementAttr placement, TargetAttr target) {
    std::string path = op.getModulePath().str();
    if (!verifyDevices(op, placement, target, path))
      return false;
    const rules::OperatorInfo *info = rules::findOperator(placement.getOp().str());
    if (!info) {
      op->emitOpError() << "module '" << path << "' has unknown operator '" << placement.getOp()
                        << "'";
      return false;
    }
    std::optional<rules::ModuleKind> kind = rules::parseModuleKind(op.getModuleKind().str());
    if (kind && !info->replacesKind(*kind)) {
      op->emitOpError() << "operator '" << info->name << "' chosen by " << ruleOf(placement)
                        << " cannot run module '" << path << "' (a " << op.getModuleKind()
                        << ")";
      return false;
    }
    // Each phase's device must be one the operator (or its kernel family) runs on.
    for (auto [phase, device, kernelKey] :
         {std::tuple<StringRef, StringRef, StringRef>{"prefill", placement.getPrefill(),
                                                      "prefill_op"},
          {"decode", placement.getDecode(), "generate_op"}}) {
      std::optional<rules::Device> parsed = rules::parseDevice(device.str());
      unsigned allowed = info->devices;
      if (DictionaryAttr kwargs = placement.getKwargs())
        if (auto family = kwargs.getAs<StringAttr>(kernelKey))
          if (const rules::KernelOpInfo *kernel = info->findKernelOp(family.getValue().str()))
            allowed = kernel->devices;
      if (parsed && !rules::deviceAllowed(allowed, *parsed)) {
        op->emitOpError() << "module '" << path << "' runs " << phase << " on " << device
                          << " with operator '" << info->name << "', which runs on "
                          << rules::deviceMaskString(allowed) << " only (" << ruleOf(placement)
                          << ")";
        return false;
      }
    }
    // Every weight needs a kernel for its storage type on the devices that read it.
    for (auto &[role, weight] : op.getWeights())
      for (StringRef device : {placement.getPrefill(), placement.getDecode()})
        if (device != "cpu" && !gpuReadsType(weight.getDtype())) {
          op->emitOpError() << "weight '" << weight.getName() << "' of module '" << path
                            << "' has storage type " << weight.getDtype()
                            << ", which the GPU kernels do not read, but " << ruleOf(placement)
                            << " runs it on " << device
                            << "; place the module on cpu or use a model quantized to "
                               "F16, BF16, Q8_0, Q4_K, Q5_K or Q6_K";
          return false;
        }
    return true;
  }
};

} // namespace
} // namespace kt::compiler
