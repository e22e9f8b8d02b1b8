// The ktgraph dialect: one op per module of a DeepSeek-class model.
#pragma once

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinTypes.h"
#include "mlir/IR/Dialect.h"
#include "mlir/IR/OpDefinition.h"
#include "mlir/IR/OpImplementation.h"
#include "mlir/Interfaces/InferTypeOpInterface.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"

#include "dialects/Graph/IR/GraphDialect.h.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/Graph/IR/GraphAttrs.h.inc"

#include "dialects/Graph/IR/GraphInterfaces.h.inc"

#define GET_OP_CLASSES
#include "dialects/Graph/IR/GraphOps.h.inc"

namespace kt::graph {
// The storage type of weights from a native FP8 checkpoint (e4m3 with f32
// scales per kFp8Block x kFp8Block block), beside the GGML type names.
inline constexpr llvm::StringLiteral kFp8E4m3 = "f8_e4m3";
inline constexpr uint64_t kFp8Block = 128;
// The oldest GPU architecture the project compiles for (Turing).
constexpr unsigned kMinComputeCapability = 75;
// 90 for "sm_90a", 80 for "sm_80" or "compute_80" (PTX, which the driver
// compiles for that GPU or a newer one); nullopt if `arch` is neither.
std::optional<unsigned> parseComputeCapability(llvm::StringRef arch);
} // namespace kt::graph
