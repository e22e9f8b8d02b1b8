// kt-select-kernels: the kernel variant of every module for each phase.
#include "compiler/Transforms/Passes.h"

#include "dialects/Graph/IR/GraphDialect.h"
#include "runtime/cpu/IsaVariants.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

namespace kt::compiler {
#define GEN_PASS_DEF_SELECTKERNELS
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;
using namespace kt::graph;

namespace kt::compiler {
namespace {

// The best CPU variant (runtime/cpu/IsaVariants.h, best first) whose
// features the target has and that suits `family` in this phase: AMX tiles
// for prefill GEMMs, VNNI int8 dot products for quantized weights, AVX-512
// BF16 for the dense (bf16) family.
std::string cpuVariant(TargetAttr target, StringRef family, bool prefill) {
  for (const cpu::IsaVariant &variant : cpu::isaVariants()) {
    bool suits = variant.name == "amx"           ? prefill && (family == "quant" || family == "dense")
                 : variant.name == "avx512_bf16" ? family == "dense"
                 : variant.name == "avx512_vnni" ? family == "quant"
                                                 : true;
    if (suits && llvm::all_of(variant.features,
                              [&](const std::string &f) { return target.hasCpuFeature(f); }))
      return variant.name;
  }
  return "generic";
}

std::string gpuVariant(TargetAttr target, StringRef device, StringRef family, StringRef dtype,
                       bool prefill) {
  unsigned index = 0;
  (void)device.drop_front(5).getAsInteger(10, index); // verify-placement checked it
  unsigned capability = target.getGpu(index).getComputeCapability();
  bool bf16 = capability >= 80;
  if (family == "quant")
    return prefill ? (bf16 ? "mma_bf16_" : "mma_f16_") + dtype.str() : "gemv_" + dtype.str();
  if (family == "dense")
    return bf16 ? "cublaslt_bf16" : "cublaslt_f16";
  if (family == "fp8") {
    if (target.getGpu(index).getArch() == "sm_90a")
      return "fp8_wgmma";
    if (capability >= 89)
      return "fp8_mma";
    return bf16 ? "fp8_dequant_bf16" : "fp8_dequant_f16";
  }
  return bf16 ? "cuda" : "cuda_f16";
}

// The storage type that decides the kernel: the module's largest weight.
StringRef mainDtype(ArrayRef<WeightAttr> weights) {
  WeightAttr largest;
  for (WeightAttr weight : weights)
    if (!largest || weight.getStorageBytes() > largest.getStorageBytes())
      largest = weight;
  return largest ? largest.getDtype() : StringRef("f32");
}

class SelectKernelsPass : public impl::SelectKernelsBase<SelectKernelsPass> {
public:
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto target = module->getAttrOfType<TargetAttr>("ktgraph.target");
    if (!target) {
      module.emitError() << "the module has no ktgraph.target; kernels are chosen for a target";
      return signalPassFailure();
    }
    Builder builder(&getContext());
    bool failed = false;
    module.walk([&](ModelModuleOpInterface op) {
      auto placement = op->getAttrOfType<PlacementAttr>("ktgraph.placement");
      if (!placement) {
        op->emitOpError() << "module '" << op.getModulePath()
                          << "' has no placement; run kt-apply-rules first";
        failed = true;
        return;
      }
      SmallVector<WeightAttr> weights;
      for (auto &[role, weight] : op.getWeights())
        weights.push_back(weight);
      std::optional<DictionaryAttr> kernels =
          select(op, op.getModuleKind(), placement, mainDtype(weights), target);
      if (!kernels) {
        failed = true;
        return;
      }
      op->setAttr("ktgraph.kernels", *kernels);

      auto subs = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_placements");
      if (!subs)
        return;
      SmallVector<NamedAttribute> subKernels;
      for (NamedAttribute sub : subs) {
        auto subPlacement = sub.getValue().dyn_cast<PlacementAttr>();
        if (!subPlacement || subPlacement.getOp() != "linear")
          continue;
        SmallVector<WeightAttr> subWeights;
        for (auto &[role, weight] : op.getWeights())
          if (role == sub.getName().getValue())
            subWeights.push_back(weight);
        std::optional<DictionaryAttr> selected =
            select(op, "linear", subPlacement, mainDtype(subWeights), target);
        if (!selected) {
          failed = true;
          return;
        }
        subKernels.push_back(builder.getNamedAttr(sub.getName(), *selected));
      }
      if (!subKernels.empty())
        op->setAttr("ktgraph.sub_kernels", builder.getDictionaryAttr(subKernels));
    });
    if (failed)
      signalPassFailure();
  }

private:
  std::optional<DictionaryAttr> select(ModelModuleOpInterface op, StringRef kind,
                                       PlacementAttr placement, StringRef dtype,
                                       TargetAttr target) {
    DictionaryAttr kwargs = placement.getKwargs();
    auto kwarg = [&](StringRef name) -> StringRef {
      auto value = kwargs ? kwargs.getAs<StringAttr>(name) : StringAttr();
      return value ? value.getValue() : StringRef();
    };
    StringRef backend = kwarg("backend");
    bool wantsAmx = backend == "AMXInt8" || backend == "AMXBF16";
    Builder builder(op.getContext());
    SmallVector<NamedAttribute> phases;
    for (auto [phase, device, family] :
         {std::tuple<StringRef, StringRef, StringRef>{"prefill", placement.getPrefill(),
                                                      kwarg("prefill_op")},
          {"decode", placement.getDecode(), kwarg("generate_op")}}) {
      bool prefill = phase == "prefill";
      std::string variant;
      if (device == "cpu") {
        variant = cpuVariant(target, family, prefill);
        if (wantsAmx) {
          if (!target.hasCpuFeature("amx-tile")) {
            op->emitOpError() << "module '" << op.getModulePath() << "' asks for backend "
                              << backend << " (" << placement.getRule()
                              << "), but the target CPU " << target.getCpu()
                              << " has no AMX; remove the backend kwarg or compile for an AMX "
                                 "host with --target-cpu sapphirerapids";
            return std::nullopt;
          }
          variant = "amx";
        }
      } else {
        variant = gpuVariant(target, device, family, dtype, prefill);
      }
      std::string name = kind.str() + "." + (family.empty() ? "" : family.str() + ".") + variant;
      phases.push_back(builder.getNamedAttr(phase, builder.getStringAttr(name)));
    }
    return builder.getDictionaryAttr(phases);
  }
};

} // namespace
} // namespace kt::compiler
