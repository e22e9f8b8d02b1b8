// The GPU kernel specializations a placed graph runs, for the plan file and
// for `ktc compile --precompile`.
#pragma once

#include "runtime/plan/Plan.h"
#include "runtime/support/Status.h"

#include "mlir/IR/BuiltinOps.h"

#include <string>
#include <vector>

namespace kt::compiler {

// Every specialization of a kernel in kernels/ that a module placed on a GPU
// uses (the kernel kt-select-kernels chose has a source), once per kernel,
// constants and architecture, with the modules that use it. Cache keys are
// filled in when NVRTC can be loaded (its version is part of the key).
// Empty when this ktc was built without the CUDA toolkit.
StatusOr<std::vector<plan::KernelSpecialization>> collectKernelSpecializations(mlir::ModuleOp module);

struct PrecompileStats {
  size_t kernels = 0, fromCache = 0, compiled = 0;
  double compileSeconds = 0;
  std::string cacheDirectory;
};
// Compiles every specialization into the on-disk kernel cache
// ($KT_CACHE_DIR, ...), so the first prefill does not wait for NVRTC.
StatusOr<PrecompileStats> precompileKernels(const std::vector<plan::KernelSpecialization> &kernels);

} // namespace kt::compiler
