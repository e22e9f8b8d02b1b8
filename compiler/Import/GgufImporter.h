// Import of a GGUF model into the ktgraph dialect.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OwningOpRef.h"

namespace kt::compiler {

// Builds `func.func @forward(%tokens: tensor<?xi32>) -> tensor<?x<vocab>xf32>`
// holding one ktgraph op per model module, and verifies it. The module carries
// `ktgraph.source` (the model path) and `ktgraph.architecture`. Fails with a
// message naming the file and the tensor or key for anything the graph cannot
// be built from: unknown architecture, a missing tensor, a shape the
// hyper-parameters contradict, a storage type ktc cannot run.
kt::StatusOr<mlir::OwningOpRef<mlir::ModuleOp>>
importGgufModel(mlir::MLIRContext &context, const kt::gguf::GgufModel &model,
                const std::string &sourcePath);

} // namespace kt::compiler
