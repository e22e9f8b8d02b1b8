// `ktc compile` and `ktc explain`: model + rules -> placed, planned graph ->
// plan file, or a table of what was decided for each module and why.
#include "tools/ktc/Commands.h"

#include <algorithm>

#include "compiler/CpuCodegen/RowKernelGenerator.h"
#include "runtime/model/CheckpointModel.h"
#include "runtime/safetensors/Safetensors.h"
#include "compiler/Import/GgufImporter.h"
#include "compiler/Plan/ExportPlan.h"
#include "compiler/Plan/KernelSpecializations.h"
#include "compiler/Target/TargetDescription.h"
#include "compiler/Transforms/Pipeline.h"
#include "dialects/Graph/IR/GraphDialect.h"
#include "runtime/support/ByteSize.h"

#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/Pass/PassManager.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/raw_ostream.h"

#include <chrono>
#include <filesystem>

using namespace mlir;

namespace kt::tools {
namespace {

// "file:line:col: " for a location in a file, "file: " for a whole file.
std::string locationPrefix(Location loc) {
  if (auto file = loc.dyn_cast<FileLineColLoc>()) {
    if (file.getLine() == 0)
      return file.getFilename().str() + ": ";
    return (file.getFilename().getValue() + ":" + llvm::Twine(file.getLine()) + ":" +
            llvm::Twine(file.getColumn()) + ": ")
        .str();
  }
  if (auto name = loc.dyn_cast<NameLoc>())
    return locationPrefix(name.getChildLoc());
  return "ktc: ";
}

const char *severityName(DiagnosticSeverity severity) {
  switch (severity) {
  case DiagnosticSeverity::Error:
    return "error";
  case DiagnosticSeverity::Warning:
    return "warning";
  case DiagnosticSeverity::Note:
    return "note";
  case DiagnosticSeverity::Remark:
    return "remark";
  }
  return "error";
}

// Compiler-style diagnostics: "rules/x.yaml:12:5: error: ..." for rules,
// "model.gguf: error: ..." for the model, notes indented below.
LogicalResult printDiagnostic(Diagnostic &diagnostic) {
  llvm::errs() << locationPrefix(diagnostic.getLocation())
               << severityName(diagnostic.getSeverity()) << ": " << diagnostic << "\n";
  for (Diagnostic &note : diagnostic.getNotes())
    llvm::errs() << "  " << locationPrefix(note.getLocation()) << "note: " << note << "\n";
  return success();
}

// The bytes a sub-module reads: the weight of the same role (norms inside
// attention are the weights q_a_norm / kv_a_norm).
uint64_t subModuleBytes(graph::ModelModuleOpInterface op, StringRef sub) {
  llvm::SmallVector<StringRef, 2> roles = {sub};
  if (sub == "q_a_layernorm")
    roles = {"q_a_norm"};
  else if (sub == "kv_a_layernorm")
    roles = {"kv_a_norm"};
  uint64_t bytes = 0;
  for (auto &[role, weight] : op.getWeights())
    if (llvm::is_contained(roles, role))
      bytes += weight.getStorageBytes();
  // A model in the split MLA form stores kv_b_proj as k_b_proj and v_b_proj.
  if (bytes == 0 && sub == "kv_b_proj")
    for (auto &[role, weight] : op.getWeights())
      if (role == "k_b_proj" || role == "v_b_proj")
        bytes += weight.getStorageBytes();
  return bytes;
}

// "quant.amx/quant.avx512_vnni": the kernels of both phases without the
// module kind they start with.
std::string kernelsOf(DictionaryAttr kernels) {
  if (!kernels)
    return "-";
  auto variant = [&](StringRef phase) -> std::string {
    auto name = kernels.getAs<StringAttr>(phase);
    if (!name)
      return "-";
    return name.getValue().split('.').second.str();
  };
  return variant("prefill") + "/" + variant("decode");
}

void printRow(llvm::raw_ostream &os, const std::string &module, graph::PlacementAttr placement,
              DictionaryAttr kernels, uint64_t bytes) {
  std::string rule = placement.getRule().empty() ? "(default)" : placement.getRule().str();
  os << llvm::format("%-44s %-8s %-8s %-8s %-16s %-34s %11s  %s\n", module.c_str(),
                     placement.getPrefill().str().c_str(), placement.getDecode().str().c_str(),
                     placement.getOut().empty() ? "-" : placement.getOut().str().c_str(),
                     placement.getOp().str().c_str(), kernelsOf(kernels).c_str(),
                     formatByteSize(bytes).c_str(), rule.c_str());
}

void printExplanation(ModuleOp module, llvm::raw_ostream &os) {
  os << llvm::format("%-44s %-8s %-8s %-8s %-16s %-34s %11s  %s\n",
                     static_cast<const char *>("module"), static_cast<const char *>("prefill"),
                     static_cast<const char *>("decode"), static_cast<const char *>("out"),
                     static_cast<const char *>("operator"),
                     static_cast<const char *>("kernels prefill/decode"),
                     static_cast<const char *>("bytes"), static_cast<const char *>("rule"));
  module.walk([&](graph::ModelModuleOpInterface op) {
    auto placement = op->getAttrOfType<graph::PlacementAttr>("ktgraph.placement");
    if (!placement)
      return;
    uint64_t bytes = 0;
    for (auto &[role, weight] : op.getWeights())
      bytes += weight.getStorageBytes();
    printRow(os, op.getModulePath().str(), placement,
             op->getAttrOfType<DictionaryAttr>("ktgraph.kernels"), bytes);
    auto subKernels = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_kernels");
    if (auto subs = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_placements"))
      for (NamedAttribute sub : subs)
        if (auto subPlacement = sub.getValue().dyn_cast<graph::PlacementAttr>())
          printRow(os, "  ." + sub.getName().str(), subPlacement,
                   subKernels ? subKernels.getAs<DictionaryAttr>(sub.getName()) : DictionaryAttr(),
                   subModuleBytes(op, sub.getName().getValue()));
  });
  if (auto memory = module->getAttrOfType<DictionaryAttr>("ktgraph.memory_plan")) {
    os << "\nmemory per device:\n";
    for (NamedAttribute device : memory) {
      auto fields = device.getValue().cast<DictionaryAttr>();
      auto get = [&](StringRef name) -> uint64_t {
        auto value = fields.getAs<IntegerAttr>(name);
        return value ? value.getValue().getZExtValue() : 0;
      };
      os << llvm::format("  %-8s weights %11s  kv cache %11s  activations %11s  staging %11s"
                         "  total %11s  budget %s\n",
                         device.getName().str().c_str(), formatByteSize(get("weights")).c_str(),
                         formatByteSize(get("kv_cache")).c_str(),
                         formatByteSize(get("activations")).c_str(),
                         formatByteSize(get("staging")).c_str(),
                         formatByteSize(get("total")).c_str(),
                         fields.get("budget") ? formatByteSize(get("budget")).c_str() : "-");
    }
  }
  if (auto stages = module->getAttrOfType<ArrayAttr>("ktgraph.stages")) {
    os << "stages:";
    for (Attribute stage : stages)
      os << " " << stage.cast<StringAttr>().getValue();
    os << "\n";
  }
  if (auto regions = module->getAttrOfType<IntegerAttr>("ktgraph.graph_regions"))
    os << "decode graph regions: " << regions.getInt() << "\n";
  int fusedNorms = 0, threeAddends = 0;
  module.walk([&](graph::AddRmsNormOp fused) {
    ++fusedNorms;
    threeAddends += fused.getAddends().size() == 3;
  });
  if (fusedNorms > 0)
    os << "norms fused with the residual add before them (kt-fuse-residual-norm): " << fusedNorms
       << ", " << threeAddends << " of them also adding the experts' outputs\n";
}

} // namespace

int runCompile(const CompileOptions &given) {
  auto start = std::chrono::steady_clock::now();
  CompileOptions options = given;
  // --fp8-path alone: the checkpoint is the whole model.
  if (options.modelPath.empty() && !options.fp8Path.empty())
    std::swap(options.modelPath, options.fp8Path);
  if (options.modelPath.empty())
    return reportError("no model: give --gguf-path MODEL (a .gguf file or a directory), or "
                       "--fp8-path CHECKPOINT for a native FP8 checkpoint alone");
  if (options.rulesPath.empty())
    return reportError("no rules: give --optimize-config-path RULES.yaml (see rules/ for "
                       "ready ones, e.g. rules/DeepSeek-V3-Chat.yaml)");
  if (!options.explain && options.outputPath.empty())
    return reportError("no output: give -o FILE.plan");

  StatusOr<std::unique_ptr<gguf::GgufModel>> model = kt::model::openModel(options.modelPath);
  if (!model)
    return reportError(model.message());
  if ((*model)->view() && !options.fp8Path.empty())
    return reportError(options.modelPath + " is a checkpoint, which holds its FP8 weights "
                       "itself; give it once, without --fp8-path");
  std::unique_ptr<safetensors::Checkpoint> fp8;
  if (!options.fp8Path.empty()) {
    StatusOr<std::unique_ptr<safetensors::Checkpoint>> opened =
        safetensors::Checkpoint::open(options.fp8Path);
    if (!opened)
      return reportError(opened.message());
    fp8 = std::move(*opened);
  }

  MLIRContext context;
  context.printOpOnDiagnostic(false);
  ScopedDiagnosticHandler handler(&context, printDiagnostic);
  StatusOr<OwningOpRef<ModuleOp>> module =
      compiler::importGgufModel(context, **model, options.modelPath, fp8.get());
  if (!module)
    return reportError(module.message());

  compiler::TargetOptions targetOptions;
  targetOptions.cpu = options.target.cpu;
  targetOptions.gpus = options.target.gpus;
  targetOptions.cores = options.target.cores;
  targetOptions.numaNodes = options.target.numaNodes;
  StatusOr<graph::TargetAttr> target = compiler::buildTarget(context, targetOptions);
  if (!target)
    return reportError(target.message());
  (**module)->setAttr("ktgraph.target", *target);

  PassManager pm(&context);
  if (options.printIrAfterAll) {
    // IR printing needs the passes to run one at a time.
    context.disableMultithreading();
    pm.enableIRPrinting(/*shouldPrintBeforePass=*/nullptr,
                        /*shouldPrintAfterPass=*/[](Pass *, Operation *) { return true; },
                        /*printModuleScope=*/true, /*printAfterOnlyOnChange=*/false);
  }
  compiler::CompilePipelineOptions pipeline;
  pipeline.rulesPath = options.rulesPath;
  pipeline.strict = options.strict;
  pipeline.cacheLens = options.cacheLens;
  pipeline.chunkSize = options.chunkSize;
  pipeline.gpuMemory = options.gpuMemory;
  pipeline.gpuExpertCache = options.gpuExpertCache;
  compiler::buildCompilePipeline(pm, pipeline);
  if (failed(pm.run(**module)))
    return EXIT_FAILURE; // the passes printed their diagnostics

  if (options.explain) {
    printExplanation(**module, llvm::outs());
    return EXIT_SUCCESS;
  }
  plan::RuntimeDefaults defaults;
  defaults.cacheLens = options.cacheLens;
  defaults.chunkSize = options.chunkSize;
  StatusOr<plan::Plan> plan =
      compiler::exportPlan(**module, **model, options.modelPath, defaults);
  if (!plan)
    return reportError(plan.message());
  if (fp8) {
    plan::Fp8Checkpoint record;
    record.path = options.fp8Path;
    for (const std::unique_ptr<safetensors::SafetensorsFile> &file : fp8->files())
      record.files.push_back({file->path(), file->fileSize()});
    record.fingerprint = safetensors::fingerprint(*fp8);
    plan->model.fp8 = std::move(record);
  }
  std::string cpuCodeNote;
  if (options.cpuCode) {
    // The CPU expert code goes beside the plan: x.plan -> x.cpu.so.
    std::vector<codegen::RowKernelRequest> requests = codegen::expertKernelRequests(*plan);
    if (!requests.empty()) {
      std::filesystem::path planFile(options.outputPath);
      std::filesystem::path codeFile = planFile;
      codeFile.replace_extension(".cpu.so");
      codegen::CpuCodeTarget codeTarget{plan->target.cpu, plan->target.cpuFeatures};
      codeTarget.int8Activations = !options.f32CpuExperts;
      codeTarget.amxTiles = options.amxTiles;
      StatusOr<plan::CpuCode> code = codegen::buildCpuCode(
          requests, codeTarget, codeFile.string(), planFile.parent_path().string());
      if (!code)
        return reportError(code.message());
      plan->cpuCode = std::move(*code);
      const auto &listed = plan->cpuCode->kernels;
      const size_t tiles =
          std::count_if(listed.begin(), listed.end(),
                        [](const plan::CpuCodeKernel &k) { return k.input == "bf16-tiles"; });
      const size_t kernels = listed.size() - tiles;
      cpuCodeNote = ", " + std::to_string(kernels) + " CPU expert kernel" +
                    (kernels == 1 ? "" : "s") +
                    (tiles ? " (+" + std::to_string(tiles) + " AMX tile)" : std::string()) +
                    " for " + plan->cpuCode->cpu + " (" +
                    std::to_string(plan->cpuCode->vectorBits) + "-bit vectors) in " +
                    codeFile.string();
    }
  }
  if (Status written = plan::writePlan(*plan, options.outputPath); !written.ok())
    return reportError(written.message());
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                  .count();
  llvm::errs() << "ktc: wrote " << options.outputPath << " (" << plan->ops.size() << " ops, "
               << plan->kernelSpecializations.size() << " GPU kernel specializations" << cpuCodeNote
               << ", "
               << llvm::format("%.0f", ms) << " ms)\n";
  if (options.precompile) {
    StatusOr<compiler::PrecompileStats> stats =
        compiler::precompileKernels(plan->kernelSpecializations);
    if (!stats)
      return reportError(stats.message());
    llvm::errs() << "ktc: precompiled " << stats->kernels << " GPU kernels into "
                 << stats->cacheDirectory << ": " << stats->fromCache << " already cached, "
                 << stats->compiled << " compiled in "
                 << llvm::format("%.2f", stats->compileSeconds) << " s\n";
  }
  return EXIT_SUCCESS;
}

} // namespace kt::tools
