// kt-fuse-residual-norm: a residual add (and the add of expert outputs
// feeding it) and the RMSNorm reading the sum, as one op on a GPU.
#include "compiler/Transforms/Passes.h"
#include "compiler/Transforms/PlacementUtils.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"

namespace kt::compiler {
#define GEN_PASS_DEF_FUSERESIDUALNORM
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;
using namespace kt::graph;

namespace kt::compiler {
namespace {

// Whether `a` and `b` run on the same GPU in both phases, in the same stage,
// and leave their results there.
bool sameGpu(Operation *a, Operation *b) {
  for (Phase phase : {Phase::Prefill, Phase::Decode}) {
    std::optional<StringRef> deviceA = runDevice(a, phase), deviceB = runDevice(b, phase);
    if (!deviceA || !deviceB || *deviceA != *deviceB || !isGpu(*deviceA))
      return false;
  }
  for (Operation *op : {a, b})
    if (auto placement = op->getAttrOfType<PlacementAttr>("ktgraph.placement");
        !placement.getOut().empty() && placement.getOut() != placement.getDecode())
      return false;
  return a->getAttr("ktgraph.stage") == b->getAttr("ktgraph.stage");
}

// An add that only `user` reads, on `user`'s GPU: its sum can be taken in.
AddOp innerAdd(Value value, AddOp user) {
  auto add = value.getDefiningOp<AddOp>();
  if (!add || !add->hasOneUse() || !sameGpu(add, user))
    return {};
  return add;
}

class FuseResidualNormPass : public impl::FuseResidualNormBase<FuseResidualNormPass> {
public:
  void runOnOperation() override {
    SmallVector<RmsNormOp> norms;
    getOperation().walk([&](RmsNormOp norm) { norms.push_back(norm); });
    for (RmsNormOp norm : norms) {
      auto outer = norm.getInput().getDefiningOp<AddOp>();
      if (!outer || !sameGpu(outer, norm))
        continue;
      // a + (b + c), the order of the two adds: the sum of routed and shared
      // experts, then the residual.
      SmallVector<Value, 3> addends{outer.getLhs(), outer.getRhs()};
      AddOp inner = innerAdd(outer.getRhs(), outer);
      if (inner) {
        addends = {outer.getLhs(), inner.getLhs(), inner.getRhs()};
      } else if ((inner = innerAdd(outer.getLhs(), outer))) {
        addends = {outer.getRhs(), inner.getLhs(), inner.getRhs()};
      }
      // At the add: every addend is defined before it, and whatever reads
      // the sum or the norm comes after it.
      OpBuilder builder(outer);
      Type type = norm.getType();
      auto fused =
          builder.create<AddRmsNormOp>(builder.getFusedLoc({outer.getLoc(), norm.getLoc()}),
                                       TypeRange{type, type}, addends, norm->getAttrs());
      outer.getResult().replaceAllUsesWith(fused.getSum());
      norm.getResult().replaceAllUsesWith(fused.getResult());
      norm.erase();
      outer.erase();
      if (inner)
        inner.erase();
    }
  }
};

} // namespace
} // namespace kt::compiler
