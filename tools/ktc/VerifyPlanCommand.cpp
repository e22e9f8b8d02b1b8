// `ktc verify-plan`: reads a plan back as the runtime does and checks it
// still belongs to its model.
#include "tools/ktc/Commands.h"

#include "runtime/model/CheckpointModel.h"
#include "runtime/cpu/GeneratedKernels.h"
#include "runtime/plan/Plan.h"
#include "runtime/safetensors/Safetensors.h"
#include "runtime/support/ByteSize.h"

#include "llvm/Support/raw_ostream.h"

namespace kt::tools {

int runVerifyPlan(const std::string &planPath, const std::string &modelPath) {
  StatusOr<plan::Plan> loaded = plan::readPlan(planPath);
  if (!loaded)
    return reportError(loaded.message());
  std::string path = modelPath.empty() ? loaded->model.path : modelPath;
  StatusOr<std::unique_ptr<gguf::GgufModel>> model = kt::model::openModel(path);
  if (!model)
    return reportError(model.message());
  if (Status matches = plan::checkModelMatches(*loaded, **model); !matches.ok())
    return reportError(planPath + ": " + matches.message());
  std::string codeNote;
  if (loaded->model.fp8) {
    StatusOr<std::unique_ptr<safetensors::Checkpoint>> fp8 =
        safetensors::Checkpoint::open(loaded->model.fp8->path);
    if (!fp8)
      return reportError(planPath + ": its FP8 checkpoint: " + fp8.message());
    if (safetensors::fingerprint(**fp8) != loaded->model.fp8->fingerprint)
      return reportError(planPath + ": the FP8 checkpoint " + loaded->model.fp8->path +
                         " is not the one the plan was compiled with (its files differ); "
                         "recompile the plan with `ktc compile --fp8-path`");
    codeNote += ", FP8 checkpoint " + loaded->model.fp8->path + " matches";
  }
  if (loaded->cpuCode) {
    // The file and its kernels; not the ISA, since the plan may be meant for
    // another machine (ktrun checks that on the host that runs it).
    StatusOr<std::unique_ptr<cpu::GeneratedKernels>> code =
        cpu::GeneratedKernels::load(*loaded->cpuCode, planPath, loaded->cpuCode->features);
    if (!code)
      return reportError(code.message());
    codeNote += ", CPU expert code " + (*code)->path() + " (" +
               std::to_string(loaded->cpuCode->kernels.size()) + " kernels for " +
               loaded->cpuCode->cpu + ") intact";
  }
  llvm::outs() << planPath << ": plan format " << loaded->version << " (" << loaded->compiler
               << "), " << loaded->ops.size() << " ops, model " << path << " ("
               << formatByteSize(loaded->model.tensorBytes) << ") matches" << codeNote << "\n";
  return EXIT_SUCCESS;
}

} // namespace kt::tools
