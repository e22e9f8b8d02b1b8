// kt-opt: runs ktgraph passes on IR, for lit tests and debugging.
#include "compiler/Transforms/Passes.h"
#include "compiler/Transforms/Pipeline.h"
#include "dialects/Graph/IR/GraphDialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::registerTransformsPasses();
  kt::compiler::registerKtTransformsPasses();
  kt::compiler::registerCompilePipeline();
  mlir::DialectRegistry registry;
  registry.insert<kt::graph::KtGraphDialect, mlir::func::FuncDialect>();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "ktgraph pass driver\n", registry));
}
