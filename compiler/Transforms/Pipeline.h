// The compile pipeline: placement, verification, memory planning, stages,
// transfers, norm-quantize fusion and graph regions, in the order DESIGN.md
// gives (fusion, which DESIGN.md does not list, just before the regions).
#pragma once

#include "mlir/Pass/PassManager.h"

#include <string>
#include <vector>

namespace kt::compiler {

struct CompilePipelineOptions {
  std::string rulesPath;
  bool strict = false;
  int64_t cacheLens = 4096;
  int64_t chunkSize = 512;
  std::vector<std::string> gpuMemory; // "cuda:0=24GiB"
  std::string gpuExpertCache;         // "20GiB": reserved on cuda:0 for cached experts
};

void buildCompilePipeline(mlir::OpPassManager &pm, const CompilePipelineOptions &options);

// Registers it as `kt-compile` for kt-opt (--pass-pipeline or -kt-compile).
void registerCompilePipeline();

} // namespace kt::compiler
