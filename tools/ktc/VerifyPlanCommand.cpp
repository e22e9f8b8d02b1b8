// `ktc verify-plan`: reads a plan back as the runtime does and checks it
// still belongs to its model.
#include "tools/ktc/Commands.h"

#include "runtime/plan/Plan.h"
#include "runtime/support/ByteSize.h"

#include "llvm/Support/raw_ostream.h"

namespace kt::tools {

int runVerifyPlan(const std::string &planPath, const std::string &modelPath) {
  StatusOr<plan::Plan> loaded = plan::readPlan(planPath);
  if (!loaded)
    return reportError(loaded.message());
  std::string path = modelPath.empty() ? loaded->model.path : modelPath;
  StatusOr<std::unique_ptr<gguf::GgufModel>> model = gguf::GgufModel::open(path);
  if (!model)
    return reportError(model.message());
  if (Status matches = plan::checkModelMatches(*loaded, **model); !matches.ok())
    return reportError(planPath + ": " + matches.message());
  llvm::outs() << planPath << ": plan format " << loaded->version << " (" << loaded->compiler
               << "), " << loaded->ops.size() << " ops, model " << path << " ("
               << formatByteSize(loaded->model.tensorBytes) << ") matches\n";
  return EXIT_SUCCESS;
}

} // namespace kt::tools
