#include "compiler/Target/TargetDescription.h"

#include "runtime/cuda/DeviceQuery.h"
#include "runtime/support/ByteSize.h"

#include "mlir/IR/Builders.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/Threading.h"
#include "llvm/TargetParser/Host.h"
#include "llvm/TargetParser/X86TargetParser.h"

#include <algorithm>

using namespace mlir;

namespace kt::compiler {
namespace {

StatusOr<std::vector<std::string>> cpuFeatures(const std::string &cpu, bool host) {
  std::vector<std::string> features;
  if (host) {
    llvm::StringMap<bool> hostFeatures;
    if (llvm::sys::getHostCPUFeatures(hostFeatures))
      for (const auto &entry : hostFeatures)
        if (entry.second)
          features.push_back(entry.first().str());
  } else {
    if (!llvm::X86::parseArchX86(cpu, /*Only64Bit=*/true) &&
        cpu != "x86-64" /* the generic baseline */)
      return Status::error("--target-cpu '" + cpu +
                           "' is not an x86-64 CPU LLVM knows; use e.g. x86-64, haswell, "
                           "skylake-avx512, icelake-server, sapphirerapids, znver4 or native");
    llvm::SmallVector<llvm::StringRef, 64> implied;
    llvm::X86::getFeaturesForCPU(cpu, implied);
    for (llvm::StringRef feature : implied)
      features.push_back(feature.str());
  }
  std::sort(features.begin(), features.end());
  return features;
}

StatusOr<std::vector<std::pair<std::string, uint64_t>>>
gpuList(const std::vector<std::string> &specs) {
  std::vector<std::pair<std::string, uint64_t>> gpus;
  if (specs.size() == 1 && specs.front() == "none")
    return gpus;
  if (specs.empty()) {
    std::string whyNone;
    for (const cuda::GpuInfo &gpu : cuda::queryGpus(whyNone))
      gpus.emplace_back(gpu.arch(), gpu.totalMemory);
    return gpus;
  }
  for (const std::string &spec : specs) {
    size_t colon = spec.find(':');
    std::optional<uint64_t> memory =
        colon == std::string::npos ? std::nullopt : parseByteSize(spec.substr(colon + 1));
    if (!memory || *memory == 0)
      return Status::error("--target-gpu '" + spec +
                           "' is not ARCH:MEMORY (e.g. sm_90a:80GiB, sm_86:24GiB), or 'none'");
    gpus.emplace_back(spec.substr(0, colon), *memory);
  }
  return gpus;
}

// NUMA nodes of this host: /sys/devices/system/node/nodeN directories.
unsigned hostNumaNodes() {
  std::error_code error;
  unsigned nodes = 0;
  for (llvm::sys::fs::directory_iterator it("/sys/devices/system/node", error), end;
       !error && it != end; it.increment(error)) {
    llvm::StringRef name = llvm::sys::path::filename(it->path());
    unsigned index;
    if (name.consume_front("node") && !name.getAsInteger(10, index))
      ++nodes;
  }
  return nodes > 0 ? nodes : 1;
}

} // namespace

StatusOr<graph::TargetAttr> buildTarget(MLIRContext &context, const TargetOptions &options) {
  context.loadDialect<graph::KtGraphDialect>();
  bool host = options.cpu.empty() || options.cpu == "native";
  std::string cpu = host ? llvm::sys::getHostCPUName().str() : options.cpu;
  StatusOr<std::vector<std::string>> features = cpuFeatures(cpu, host);
  if (!features)
    return features.status();
  StatusOr<std::vector<std::pair<std::string, uint64_t>>> gpus = gpuList(options.gpus);
  if (!gpus)
    return gpus.status();
  unsigned cores = options.cores ? options.cores
                                 : static_cast<unsigned>(llvm::get_physical_cores() > 0
                                                             ? llvm::get_physical_cores()
                                                             : 1);

  Builder builder(&context);
  SmallVector<Attribute> featureAttrs, gpuAttrs;
  for (const std::string &feature : *features)
    featureAttrs.push_back(builder.getStringAttr(feature));
  for (const auto &[arch, memory] : *gpus) {
    // Checked here so a bad --target-gpu is a Status, not an MLIR diagnostic.
    std::optional<unsigned> capability = graph::parseComputeCapability(arch);
    if (!capability || *capability < graph::kMinComputeCapability)
      return Status::error("--target-gpu architecture '" + arch +
                           "' is not sm_NN or compute_NN with NN >= 75 (e.g. sm_75, sm_80, "
                           "sm_89, sm_90a; compute_80 for PTX that newer GPUs run too)");
    gpuAttrs.push_back(graph::GpuAttr::get(&context, arch, memory));
  }
  unsigned numaNodes = options.numaNodes ? options.numaNodes : host ? hostNumaNodes() : 1;
  if (numaNodes > cores)
    return Status::error("--target-numa " + std::to_string(numaNodes) + " exceeds the " +
                         std::to_string(cores) + " cores of the target");
  return graph::TargetAttr::get(&context, cpu, builder.getArrayAttr(featureAttrs), cores,
                                numaNodes, builder.getArrayAttr(gpuAttrs));
}

} // namespace kt::compiler
