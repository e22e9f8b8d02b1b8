// Passes over the ktgraph dialect.
#pragma once

#include "mlir/Pass/Pass.h"

#include <memory>

namespace kt::compiler {

#define GEN_PASS_DECL
#include "compiler/Transforms/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "compiler/Transforms/Passes.h.inc"

} // namespace kt::compiler
