// `ktc target`: the target description a plan would be compiled for.
#include "tools/ktc/Commands.h"

#include "compiler/Target/TargetDescription.h"
#include "runtime/support/ByteSize.h"

#include "mlir/IR/MLIRContext.h"
#include "llvm/Support/raw_ostream.h"

namespace kt::tools {

int runTarget(const TargetCommandOptions &options) {
  mlir::MLIRContext context;
  compiler::TargetOptions targetOptions;
  targetOptions.cpu = options.cpu;
  targetOptions.gpus = options.gpus;
  targetOptions.cores = options.cores;
  targetOptions.numaNodes = options.numaNodes;
  StatusOr<graph::TargetAttr> target = compiler::buildTarget(context, targetOptions);
  if (!target)
    return reportError(target.message());

  llvm::raw_ostream &os = llvm::outs();
  os << *target << "\n";
  os << "cpu: " << target->getCpu() << ", " << target->getCores() << " cores, "
     << target->getNumaNodes() << " NUMA node" << (target->getNumaNodes() == 1 ? "" : "s")
     << "\n";
  // The instruction sets the CPU expert code is generated for.
  os << "  isa:";
  for (const char *feature : {"avx2", "fma", "avx512f", "avx512bw", "avx512vnni", "avx512bf16",
                              "amx-tile", "amx-int8", "amx-bf16"})
    os << " " << feature << "=" << (target->hasCpuFeature(feature) ? "yes" : "no");
  os << "\n";
  if (target->getGpuCount() == 0)
    os << "gpus: none\n";
  for (unsigned i = 0; i < target->getGpuCount(); ++i) {
    graph::GpuAttr gpu = target->getGpu(i);
    os << "gpu cuda:" << i << ": " << gpu.getArch() << ", " << formatByteSize(gpu.getMemory())
       << "\n";
  }
  return EXIT_SUCCESS;
}

} // namespace kt::tools
