// kt-fuse-norm-quantize: RMSNorms (and SiLU-gated products) that quantize
// their results for the FP8 GEMMs reading them.
#include "compiler/Transforms/Passes.h"
#include "compiler/Transforms/PlacementUtils.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

namespace kt::compiler {
#define GEN_PASS_DEF_FUSENORMQUANTIZE
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;
using namespace kt::graph;

namespace kt::compiler {
namespace {

// Whether `op`'s linear sub-module `role` (weight [in, out]) runs the FP8
// wgmma GEMM in prefill on `device` over `in` values.
bool runsFp8Gemm(Operation *op, StringRef role, StringRef device, int64_t in) {
  auto placements = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_placements");
  auto kernels = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_kernels");
  auto weight = op->getAttrOfType<WeightAttr>(role);
  if (!placements || !kernels || !weight || weight.getShape().size() != 2 ||
      weight.getShape()[0] != in)
    return false;
  auto placement = placements.getAs<PlacementAttr>(role);
  auto chosen = kernels.getAs<DictionaryAttr>(role);
  auto prefill = chosen ? chosen.getAs<StringAttr>("prefill") : StringAttr();
  return placement && placement.getPrefill() == device && prefill &&
         prefill.getValue().endswith(".fp8_wgmma");
}

// Marks `op` with `flag` where its own sub-module `role` runs the FP8 wgmma
// GEMM on the op's prefill GPU over `width` values (whole 128-value slices):
// the op's step before that GEMM then quantizes for it.
void markOwnFp8Gemm(Operation *op, StringRef role, int64_t width, StringRef flag,
                    Builder &builder) {
  std::optional<StringRef> device = runDevice(op, Phase::Prefill);
  if (device && isGpu(*device) && width > 0 && width % 128 == 0 &&
      runsFp8Gemm(op, role, *device, width))
    op->setAttr(flag, builder.getBoolAttr(true));
}

// Whether `user` multiplies its input first by an FP8 GEMM on `device`.
bool startsWithFp8Gemm(Operation *user, StringRef device, int64_t width) {
  if (auto attention = dyn_cast<MlaAttentionOp>(user))
    return runsFp8Gemm(user, attention.getQLoraRank() > 0 ? "q_a_proj" : "q_proj", device, width);
  if (isa<MlpOp, SharedExpertsOp>(user))
    return runsFp8Gemm(user, "gate_proj", device, width);
  return false;
}

class FuseNormQuantizePass : public impl::FuseNormQuantizeBase<FuseNormQuantizePass> {
public:
  void runOnOperation() override {
    ModuleOp module = getOperation();
    Builder builder(module.getContext());
    module.walk([&](RmsNormOp norm) {
      std::optional<StringRef> device = runDevice(norm, Phase::Prefill);
      const int64_t width = norm.getWeight().getShape()[0];
      if (!device || !isGpu(*device) || width % 128 != 0)
        return;
      if (llvm::any_of(norm->getUsers(),
                       [&](Operation *user) { return startsWithFp8Gemm(user, *device, width); }))
        norm->setAttr("ktgraph.quantize_fp8", builder.getBoolAttr(true));
    });
    module.walk([&](MlaAttentionOp attention) {
      markOwnFp8Gemm(attention, "q_b_proj", attention.getQLoraRank(), "ktgraph.quantize_fp8_q_norm",
                     builder);
    });
    module.walk([&](Operation *op) {
      if (!isa<MlpOp, SharedExpertsOp>(op))
        return;
      auto down = op->getAttrOfType<WeightAttr>("down_proj");
      const int64_t ffn = down && down.getShape().size() == 2 ? down.getShape()[0] : 0;
      markOwnFp8Gemm(op, "down_proj", ffn, "ktgraph.quantize_fp8_act", builder);
    });
  }
};

} // namespace
} // namespace kt::compiler
