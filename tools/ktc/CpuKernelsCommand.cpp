// `ktc cpu-kernels`: the CPU expert row kernels for chosen weight types and
// row widths, compiled for a target CPU (benchmarks, disassembly tests).
#include "tools/ktc/Commands.h"

#include "compiler/CpuCodegen/RowKernelGenerator.h"
#include "compiler/Target/TargetDescription.h"

#include "mlir/IR/MLIRContext.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdlib>
#include <filesystem>

namespace kt::tools {

int runCpuKernels(const CpuKernelsOptions &options) {
  if (options.kernels.empty())
    return reportError("name the kernels with --kernel TYPE:COLS (e.g. --kernel q4_K:7168)");
  std::vector<codegen::RowKernelRequest> requests;
  for (const std::string &kernel : options.kernels) {
    size_t colon = kernel.find(':');
    std::optional<gguf::GgmlType> type =
        gguf::parseGgmlType(kernel.substr(0, colon == std::string::npos ? kernel.size() : colon));
    char *end = nullptr;
    long long cols = colon == std::string::npos ? 0 : std::strtoll(kernel.c_str() + colon + 1, &end, 10);
    if (!type || cols <= 0 || !end || *end != '\0')
      return reportError("--kernel " + kernel + ": expected TYPE:COLS, e.g. q4_K:7168");
    codegen::RowKernelRequest request{*type, cols};
    if (std::string reason = codegen::unsupportedReason(request); !reason.empty())
      return reportError("--kernel " + kernel + ": " + reason);
    requests.push_back(request);
  }

  mlir::MLIRContext context;
  compiler::TargetOptions targetOptions;
  targetOptions.cpu = options.cpu;
  targetOptions.gpus = {"none"};
  StatusOr<graph::TargetAttr> target = compiler::buildTarget(context, targetOptions);
  if (!target)
    return reportError(target.message());
  codegen::CpuCodeTarget codeTarget;
  codeTarget.cpu = target->getCpu().str();
  codeTarget.int8Activations = !options.f32Activations;
  codeTarget.amxTiles = options.amxTiles;
  if (options.prefetchBytes >= 0)
    codeTarget.prefetchBytes = options.prefetchBytes;
  if (options.nearPrefetchBytes >= 0)
    codeTarget.nearPrefetchBytes = options.nearPrefetchBytes;
  for (mlir::Attribute feature : target->getCpuFeatures())
    codeTarget.features.push_back(feature.cast<mlir::StringAttr>().str());

  if (options.printIr) {
    StatusOr<std::string> ir = codegen::rowKernelIr(requests, codeTarget);
    if (!ir)
      return reportError(ir.message());
    llvm::outs() << *ir;
    return EXIT_SUCCESS;
  }
  if (options.outputPath.empty())
    return reportError("give the shared object to write with -o FILE.so (or --print-ir)");
  StatusOr<plan::CpuCode> code = codegen::buildCpuCode(
      requests, codeTarget, options.outputPath,
      std::filesystem::path(options.outputPath).parent_path().string());
  if (!code)
    return reportError(code.message());
  llvm::errs() << "ktc: wrote " << options.outputPath << ": " << code->kernels.size()
               << " kernels for " << code->cpu << ", " << code->vectorBits << "-bit vectors\n";
  for (const plan::CpuCodeKernel &kernel : code->kernels)
    llvm::outs() << kernel.symbol << " (" << kernel.input << " activations)\n";
  return EXIT_SUCCESS;
}

} // namespace kt::tools
