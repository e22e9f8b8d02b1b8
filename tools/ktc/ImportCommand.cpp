// `ktc import`: the model graph as ktgraph IR, with an optional size summary.
#include "tools/ktc/Commands.h"

#include "compiler/Import/GgufImporter.h"
#include "dialects/Graph/IR/GraphDialect.h"
#include "runtime/model/CheckpointModel.h"

#include "mlir/IR/MLIRContext.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/ToolOutputFile.h"

#include <map>

namespace kt::tools {
namespace {

struct KindTotal {
  int64_t ops = 0;
  int64_t parameters = 0;
  uint64_t bytes = 0;
};

// Parameters and storage bytes per module kind, as `//` lines so the output
// stays valid IR.
void printSummary(mlir::ModuleOp module, llvm::raw_ostream &os) {
  std::map<std::string, KindTotal> byKind;
  KindTotal total;
  module.walk([&](graph::ModelModuleOpInterface op) {
    KindTotal &kind = byKind[op.getModuleKind().str()];
    kind.ops += 1;
    total.ops += 1;
    for (auto &[role, weight] : op.getWeights()) {
      (void)role;
      for (KindTotal *t : {&kind, &total}) {
        t->parameters += weight.getElementCount();
        t->bytes += weight.getStorageBytes();
      }
    }
  });
  os << "// size summary\n";
  os << "// module kind         ops       parameters            bytes\n";
  auto row = [&](const std::string &name, const KindTotal &t) {
    os << llvm::format("// %-16s %6lld %16lld %16llu  (%.2f MiB)\n", name.c_str(),
                       static_cast<long long>(t.ops), static_cast<long long>(t.parameters),
                       static_cast<unsigned long long>(t.bytes),
                       static_cast<double>(t.bytes) / (1024.0 * 1024.0));
  };
  for (const auto &[name, t] : byKind)
    row(name, t);
  row("total", total);
}

} // namespace

int runImport(const ImportOptions &options) {
  StatusOr<std::unique_ptr<gguf::GgufModel>> model = kt::model::openModel(options.modelPath);
  if (!model)
    return reportError(model.message());
  mlir::MLIRContext context;
  StatusOr<mlir::OwningOpRef<mlir::ModuleOp>> module =
      compiler::importGgufModel(context, **model, options.modelPath);
  if (!module)
    return reportError(module.message());

  std::string error;
  std::unique_ptr<llvm::ToolOutputFile> output = mlir::openOutputFile(options.outputPath, &error);
  if (!output)
    return reportError(error);
  (*module)->print(output->os());
  output->os() << "\n";
  if (options.summary)
    printSummary(**module, output->os());
  output->keep();
  return EXIT_SUCCESS;
}

} // namespace kt::tools
