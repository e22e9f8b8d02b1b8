// The executor a plan needs, chosen by its placement.
#pragma once

#include "runtime/exec/Executor.h"
#include "runtime/gguf/GgufFile.h"
#include "runtime/plan/Plan.h"

#include <memory>
#include <string>

namespace kt::exec {

// The CPU executor for a plan whose ops all run on the CPU; the hybrid
// GPU/CPU executor for one with GPU ops (an error that says what to do in a
// build without the CUDA toolkit).
StatusOr<std::unique_ptr<Executor>> createExecutor(const plan::Plan &plan,
                                                   const gguf::GgufModel &model,
                                                   const ExecutorOptions &options);

// What loading the plan's GPU kernels took ("12 GPU kernels: 12 from the
// cache (...), 0 compiled, 0.1 s"), empty for a CPU executor.
std::string kernelLoadSummary(const Executor &executor);

} // namespace kt::exec
