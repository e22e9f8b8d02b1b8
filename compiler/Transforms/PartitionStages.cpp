// kt-partition-stages: pipeline stages, one per GPU in turn.
#include "compiler/Transforms/Passes.h"
#include "compiler/Transforms/PlacementUtils.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/StringSet.h"

namespace kt::compiler {
#define GEN_PASS_DEF_PARTITIONSTAGES
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;

namespace kt::compiler {
namespace {

class PartitionStagesPass : public impl::PartitionStagesBase<PartitionStagesPass> {
public:
  void runOnOperation() override {
    ModuleOp module = getOperation();
    Builder builder(module.getContext());
    SmallVector<Attribute> stageDevices;
    llvm::StringSet<> visited;
    std::string current;
    bool failed = false;
    module.walk([&](func::FuncOp function) {
      for (Operation &op : function.getBody().front()) {
        if (op.hasTrait<OpTrait::IsTerminator>())
          continue;
        std::optional<StringRef> decode = runDevice(&op, Phase::Decode);
        if (decode && isGpu(*decode) && *decode != current) {
          if (visited.contains(*decode)) {
            op.emitOpError() << "returns to " << *decode << " after the pipeline left it (stage "
                             << stageDevices.size()
                             << "); a pipeline visits each GPU once: place consecutive layers "
                                "on each GPU";
            failed = true;
            return;
          }
          current = decode->str();
          visited.insert(current);
          stageDevices.push_back(builder.getStringAttr(current));
        }
        // Ops before the first GPU op (a CPU embedding) belong to stage 0.
        int64_t stage = stageDevices.empty() ? 0 : stageDevices.size() - 1;
        op.setAttr("ktgraph.stage", builder.getI64IntegerAttr(stage));
      }
    });
    if (failed)
      return signalPassFailure();
    // A CPU-only plan is one stage on the CPU.
    if (stageDevices.empty())
      stageDevices.push_back(builder.getStringAttr("cpu"));
    module->setAttr("ktgraph.stages", builder.getArrayAttr(stageDevices));
  }
};

} // namespace
} // namespace kt::compiler
