// kt-insert-transfers: a ktgraph.transfer wherever a value changes device.
#include "compiler/Transforms/Passes.h"
#include "compiler/Transforms/PlacementUtils.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

#include <map>
#include <tuple>

namespace kt::compiler {
#define GEN_PASS_DEF_INSERTTRANSFERS
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;

namespace kt::compiler {
namespace {

class InsertTransfersPass : public impl::InsertTransfersBase<InsertTransfersPass> {
public:
  void runOnOperation() override {
    bool failed = false;
    getOperation().walk([&](Operation *op) {
      if (isa<graph::TransferOp>(op) || !op->getDialect() ||
          op->getDialect()->getNamespace() != "ktgraph")
        return;
      std::optional<StringRef> prefill = runDevice(op, Phase::Prefill);
      std::optional<StringRef> decode = runDevice(op, Phase::Decode);
      if (!prefill || !decode) {
        op->emitOpError() << "has no placement; run kt-apply-rules first";
        failed = true;
        return;
      }
      for (OpOperand &operand : op->getOpOperands()) {
        Value value = operand.get();
        std::optional<StringRef> fromPrefill = valueDevice(value, Phase::Prefill);
        std::optional<StringRef> fromDecode = valueDevice(value, Phase::Decode);
        if (!fromPrefill || !fromDecode)
          continue;
        if (*fromPrefill == *prefill && *fromDecode == *decode)
          continue;
        operand.set(transferFor(value, *fromPrefill, *prefill, *fromDecode, *decode, op));
      }
    });
    if (failed)
      signalPassFailure();
  }

private:
  // One transfer per value and destination pair, placed right after the
  // value's producer so every consumer on those devices can share it.
  Value transferFor(Value value, StringRef fromPrefill, StringRef toPrefill,
                    StringRef fromDecode, StringRef toDecode, Operation *consumer) {
    auto key = std::make_tuple(value.getAsOpaquePointer(), toPrefill.str(), toDecode.str());
    auto it = transfers_.find(key);
    if (it != transfers_.end())
      return it->second;
    OpBuilder builder(consumer->getContext());
    builder.setInsertionPointAfterValue(value);
    Value moved = builder.create<graph::TransferOp>(
        value.getLoc(), value.getType(), value, builder.getStringAttr(fromPrefill),
        builder.getStringAttr(toPrefill), builder.getStringAttr(fromDecode),
        builder.getStringAttr(toDecode));
    transfers_[key] = moved;
    return moved;
  }

  std::map<std::tuple<const void *, std::string, std::string>, Value> transfers_;
};

} // namespace
} // namespace kt::compiler
