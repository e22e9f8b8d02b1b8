// Where ops run and where their results live, per phase, from placements.
#pragma once

#include "dialects/Graph/IR/GraphDialect.h"

#include "llvm/ADT/StringRef.h"

#include <optional>

namespace kt::compiler {

enum class Phase { Prefill, Decode };

// The device that runs `op` in `phase`; nullopt for an op without placement
// (a transfer, or an op kt-apply-rules did not reach).
inline std::optional<llvm::StringRef> runDevice(mlir::Operation *op, Phase phase) {
  if (auto transfer = llvm::dyn_cast<graph::TransferOp>(op))
    return phase == Phase::Prefill ? transfer.getPrefillTo() : transfer.getDecodeTo();
  auto placement = op->getAttrOfType<graph::PlacementAttr>("ktgraph.placement");
  if (!placement)
    return std::nullopt;
  return phase == Phase::Prefill ? placement.getPrefill() : placement.getDecode();
}

// The device a value lives on in `phase`: its producer's out device, else the
// producer's device. nullopt for function arguments, which the runtime
// uploads to whoever reads them.
inline std::optional<llvm::StringRef> valueDevice(mlir::Value value, Phase phase) {
  mlir::Operation *producer = value.getDefiningOp();
  if (!producer)
    return std::nullopt;
  if (auto placement = producer->getAttrOfType<graph::PlacementAttr>("ktgraph.placement"))
    if (!placement.getOut().empty())
      return placement.getOut();
  return runDevice(producer, phase);
}

inline bool isGpu(llvm::StringRef device) { return device.startswith("cuda:"); }

} // namespace kt::compiler
