#include "compiler/Transforms/Pipeline.h"

#include "compiler/Transforms/Passes.h"

#include "mlir/Pass/PassRegistry.h"

namespace kt::compiler {

void buildCompilePipeline(mlir::OpPassManager &pm, const CompilePipelineOptions &options) {
  ApplyRulesOptions rules;
  rules.rulesPath = options.rulesPath;
  rules.strict = options.strict;
  pm.addPass(createApplyRules(rules));
  pm.addPass(createVerifyPlacement());
  pm.addPass(createSelectKernels());
  PlanMemoryOptions memory;
  memory.cacheLens = options.cacheLens;
  memory.chunkSize = options.chunkSize;
  memory.gpuMemory = options.gpuMemory;
  memory.expertCache = options.gpuExpertCache;
  pm.addPass(createPlanMemory(memory));
  pm.addPass(createPartitionStages());
  pm.addPass(createInsertTransfers());
  pm.addPass(createFuseNormQuantize());
  pm.addPass(createFuseResidualNorm());
  pm.addPass(createMarkGraphRegions());
}

namespace {
struct CompilePipelineCliOptions
    : public mlir::PassPipelineOptions<CompilePipelineCliOptions> {
  Option<std::string> rules{*this, "rules", llvm::cl::desc("The rule file (YAML)")};
  Option<bool> strict{*this, "strict", llvm::cl::desc("A module no rule places is an error"),
                      llvm::cl::init(false)};
  Option<int64_t> cacheLens{*this, "cache-lens", llvm::cl::desc("KV cache tokens"),
                            llvm::cl::init(4096)};
  Option<int64_t> chunkSize{*this, "chunk-size", llvm::cl::desc("Prefill chunk tokens"),
                            llvm::cl::init(512)};
  ListOption<std::string> gpuMemory{*this, "gpu-mem",
                                    llvm::cl::desc("GPU budgets as cuda:N=SIZE")};
  Option<std::string> expertCache{*this, "expert-cache",
                                  llvm::cl::desc("GPU expert cache on cuda:0, a size")};
};
} // namespace

void registerCompilePipeline() {
  mlir::PassPipelineRegistration<CompilePipelineCliOptions>(
      "kt-compile",
      "Placement, verification, memory plan, stages, transfers, norm-quantize and residual-norm "
      "fusions, graph regions",
      [](mlir::OpPassManager &pm, const CompilePipelineCliOptions &cli) {
        CompilePipelineOptions options;
        options.rulesPath = cli.rules;
        options.strict = cli.strict;
        options.cacheLens = cli.cacheLens;
        options.chunkSize = cli.chunkSize;
        options.gpuMemory.assign(cli.gpuMemory.begin(), cli.gpuMemory.end());
        options.gpuExpertCache = cli.expertCache;
        buildCompilePipeline(pm, options);
      });
}

} // namespace kt::compiler
