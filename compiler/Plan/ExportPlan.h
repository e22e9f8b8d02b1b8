// Turns a placed and planned ktgraph module into the execution plan file.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/plan/Plan.h"
#include "runtime/support/Status.h"

#include "mlir/IR/BuiltinOps.h"

namespace kt::compiler {

// Every module op must carry #ktgraph.placement (kt-apply-rules) and the
// module #ktgraph.target and ktgraph.memory_plan (kt-plan-memory). `model` is
// the model the graph was imported from; its fingerprint goes into the plan.
StatusOr<plan::Plan> exportPlan(mlir::ModuleOp module, const gguf::GgufModel &model,
                                const std::string &modelPath,
                                const plan::RuntimeDefaults &defaults);

} // namespace kt::compiler
