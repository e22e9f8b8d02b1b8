// kt-partition-stages: pipeline stages, one per GPU in turn.
#include "compiler/Transforms/Passes.h"
#include "compiler/Transforms/PlacementUtils.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/StringSet.h"

#include <map>

namespace kt::compiler {
#define GEN_PASS_DEF_PARTITIONSTAGES
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;

namespace kt::compiler {
namespace {

// "model.layers.12.mlp" -> 12.
std::optional<int64_t> layerOf(StringRef path) {
  if (!path.consume_front("model.layers."))
    return std::nullopt;
  int64_t layer = 0;
  if (path.consumeInteger(10, layer))
    return std::nullopt;
  return layer;
}

class PartitionStagesPass : public impl::PartitionStagesBase<PartitionStagesPass> {
  static bool failed(LogicalResult result) { return mlir::failed(result); }

  // The rules' transfer_map says on which GPU each layer's hidden states are;
  // the layer's own placement must agree, or the pipeline would run a layer
  // on one GPU with its activations on another.
  LogicalResult checkTransferMap(ModuleOp module) {
    auto map = module->getAttrOfType<DictionaryAttr>("ktgraph.transfer_map");
    if (!map)
      return success();
    std::map<int64_t, std::string> entries;
    for (NamedAttribute entry : map) {
      int64_t layer = 0;
      if (entry.getName().getValue().getAsInteger(10, layer))
        continue;
      entries[layer] = entry.getValue().cast<StringAttr>().getValue().str();
    }
    LogicalResult result = success();
    module.walk([&](graph::ModelModuleOpInterface op) {
      std::optional<int64_t> layer = layerOf(op.getModulePath());
      std::optional<StringRef> decode = runDevice(op.getOperation(), Phase::Decode);
      if (!layer || !decode || !isGpu(*decode) || failed(result))
        return;
      auto it = entries.upper_bound(*layer);
      if (it == entries.begin())
        return;
      const std::string &expected = std::prev(it)->second;
      if (expected != *decode) {
        op->emitOpError() << "module '" << op.getModulePath() << "' decodes on " << *decode
                          << ", but the rules' transfer_map moves layer " << *layer
                          << " to " << expected
                          << "; make the layer's rules and the transfer_map agree";
        result = failure();
      }
    });
    return result;
  }

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
    if (failed || this->failed(checkTransferMap(module)))
      return signalPassFailure();
    // A CPU-only plan is one stage on the CPU.
    if (stageDevices.empty())
      stageDevices.push_back(builder.getStringAttr("cpu"));
    module->setAttr("ktgraph.stages", builder.getArrayAttr(stageDevices));
  }
};

} // namespace
} // namespace kt::compiler
