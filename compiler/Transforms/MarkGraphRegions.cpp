// kt-mark-graph-regions: decode regions replayed as CUDA graphs.
#include "compiler/Transforms/Passes.h"
#include "compiler/Transforms/PlacementUtils.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

namespace kt::compiler {
#define GEN_PASS_DEF_MARKGRAPHREGIONS
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;

namespace kt::compiler {
namespace {

// Whether the op runs entirely on a GPU in decode, so a graph can hold it.
bool isCapturable(Operation *op) {
  if (auto transfer = dyn_cast<graph::TransferOp>(op))
    return isGpu(transfer.getDecodeFrom()) && isGpu(transfer.getDecodeTo());
  std::optional<StringRef> decode = runDevice(op, Phase::Decode);
  return decode && isGpu(*decode);
}

class MarkGraphRegionsPass : public impl::MarkGraphRegionsBase<MarkGraphRegionsPass> {
public:
  void runOnOperation() override {
    ModuleOp module = getOperation();
    Builder builder(module.getContext());
    int64_t regions = 0;
    module.walk([&](func::FuncOp function) {
      bool open = false;
      int64_t stage = -1;
      for (Operation &op : function.getBody().front()) {
        auto opStage = op.getAttrOfType<IntegerAttr>("ktgraph.stage");
        int64_t thisStage = opStage ? opStage.getInt() : 0;
        if (op.hasTrait<OpTrait::IsTerminator>() || !isCapturable(&op)) {
          open = false;
          continue;
        }
        // One graph per stage: a new stage starts a new region.
        if (!open || thisStage != stage) {
          ++regions;
          open = true;
          stage = thisStage;
        }
        op.setAttr("ktgraph.graph_region", builder.getI64IntegerAttr(regions - 1));
      }
    });
    module->setAttr("ktgraph.graph_regions", builder.getI64IntegerAttr(regions));
  }
};

} // namespace
} // namespace kt::compiler
