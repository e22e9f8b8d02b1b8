// The machine a plan is compiled for: detected on this host, or described on
// the command line so a plan for another machine can be compiled here.
#pragma once

#include "dialects/Graph/IR/GraphDialect.h"
#include "runtime/support/Status.h"

#include <string>
#include <vector>

namespace kt::compiler {

struct TargetOptions {
  // LLVM CPU name ("haswell", "skylake-avx512", "sapphirerapids"); empty or
  // "native" means this host's CPU and its real features.
  std::string cpu;
  // "ARCH:MEMORY" per GPU ("sm_90a:80GiB"), cuda:0 first; "none" for a
  // CPU-only target. Empty means the GPUs of this host.
  std::vector<std::string> gpus;
  // CPU cores the plan may use; 0 means this host's.
  unsigned cores = 0;
  // NUMA nodes of the host; 0 means this host's.
  unsigned numaNodes = 0;
};

// Builds the #ktgraph.target attribute; fails with a message naming the bad
// flag value.
StatusOr<graph::TargetAttr> buildTarget(mlir::MLIRContext &context,
                                        const TargetOptions &options);

} // namespace kt::compiler
