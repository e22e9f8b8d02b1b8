#include "compiler/Plan/ExportPlan.h"

#include "compiler/Plan/KernelSpecializations.h"
#include "compiler/Transforms/PlacementUtils.h"

#include "dialects/Graph/IR/GraphDialect.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/DenseMap.h"

using namespace mlir;
using namespace kt::graph;

namespace kt::compiler {
namespace {

// Attributes that are not hyper-parameters of the module (stage and graph
// region are exported as params: the runtime needs them).
bool isStructural(StringRef name) {
  return name == "path" || name == "ktgraph.placement" || name == "ktgraph.sub_placements" ||
         name == "ktgraph.kernels" || name == "ktgraph.sub_kernels";
}

void exportKernels(Operation *operation, std::map<std::string, std::string> &out) {
  auto add = [&](DictionaryAttr phases, const std::string &prefix) {
    for (NamedAttribute phase : phases)
      if (auto name = phase.getValue().dyn_cast<StringAttr>())
        out[prefix + phase.getName().str()] = name.getValue().str();
  };
  if (auto kernels = operation->getAttrOfType<DictionaryAttr>("ktgraph.kernels"))
    add(kernels, "");
  if (auto subs = operation->getAttrOfType<DictionaryAttr>("ktgraph.sub_kernels"))
    for (NamedAttribute sub : subs)
      if (auto phases = sub.getValue().dyn_cast<DictionaryAttr>())
        add(phases, sub.getName().str() + ".");
}

std::optional<plan::Param> toParam(Attribute attr) {
  if (auto integer = attr.dyn_cast<IntegerAttr>()) {
    if (integer.getType().isInteger(1))
      return plan::Param(integer.getValue().getBoolValue());
    return plan::Param(static_cast<int64_t>(integer.getInt()));
  }
  if (auto real = attr.dyn_cast<FloatAttr>())
    return plan::Param(real.getValueAsDouble());
  if (auto boolean = attr.dyn_cast<BoolAttr>())
    return plan::Param(boolean.getValue());
  if (auto string = attr.dyn_cast<StringAttr>())
    return plan::Param(string.getValue().str());
  return std::nullopt;
}

void exportTarget(TargetAttr target, plan::Target &out) {
  out.cpu = target.getCpu().str();
  for (Attribute feature : target.getCpuFeatures())
    out.cpuFeatures.push_back(feature.cast<StringAttr>().getValue().str());
  out.cores = target.getCores();
  out.numaNodes = target.getNumaNodes();
  for (unsigned i = 0; i < target.getGpuCount(); ++i)
    out.gpus.push_back({target.getGpu(i).getArch().str(), target.getGpu(i).getMemory()});
}

void exportMemory(DictionaryAttr memoryPlan, std::vector<plan::DeviceMemory> &out) {
  for (NamedAttribute device : memoryPlan) {
    auto fields = device.getValue().cast<DictionaryAttr>();
    auto get = [&](StringRef name) -> uint64_t {
      auto value = fields.getAs<IntegerAttr>(name);
      return value ? value.getValue().getZExtValue() : 0;
    };
    plan::DeviceMemory memory;
    memory.device = device.getName().str();
    memory.weights = get("weights");
    memory.kvCache = get("kv_cache");
    memory.activations = get("activations");
    memory.staging = get("staging");
    memory.total = get("total");
    if (fields.get("budget"))
      memory.budget = get("budget");
    memory.expertCache = get("expert_cache");
    out.push_back(memory);
  }
}

} // namespace

StatusOr<plan::Plan> exportPlan(ModuleOp module, const gguf::GgufModel &model,
                                const std::string &modelPath,
                                const plan::RuntimeDefaults &defaults) {
  plan::Plan result;
  result.compiler = "ktc " KT_VERSION;
  result.defaults = defaults;
  result.model = plan::describeModel(model, modelPath);
  StatusOr<std::string> fingerprint = plan::modelFingerprint(model);
  if (!fingerprint)
    return fingerprint.status();
  result.model.fingerprint = *fingerprint;

  auto target = module->getAttrOfType<TargetAttr>("ktgraph.target");
  auto memoryPlan = module->getAttrOfType<DictionaryAttr>("ktgraph.memory_plan");
  if (!target || !memoryPlan)
    return Status::error("internal: the module has no target or memory plan; "
                         "kt-plan-memory must run before the plan is written");
  exportTarget(target, result.target);
  exportMemory(memoryPlan, result.memory);

  auto forward = module.lookupSymbol<func::FuncOp>("forward");
  if (!forward || forward.getNumArguments() != 1)
    return Status::error("internal: the module has no @forward(tokens) function");
  llvm::DenseMap<Value, int> valueIds;
  valueIds[forward.getArgument(0)] = 0;
  result.buffers.push_back({0, "i32", 1, "host", "host"});
  int nextValue = 1;
  for (Operation &operation : forward.getBody().front()) {
    if (auto ret = dyn_cast<func::ReturnOp>(operation)) {
      result.outputValue = valueIds.lookup(ret.getOperand(0));
      continue;
    }
    plan::Op op;
    op.kind = operation.getName().stripDialect().str();
    for (Value operand : operation.getOperands())
      op.inputs.push_back(valueIds.lookup(operand));
    for (Value output : operation.getResults()) {
      valueIds[output] = nextValue;
      auto type = output.getType().cast<RankedTensorType>();
      plan::Buffer buffer;
      buffer.value = nextValue;
      buffer.dtype = type.getElementType().isInteger(32) ? "i32" : "f32";
      buffer.width = type.getRank() == 2 ? type.getDimSize(1) : 1;
      buffer.prefillDevice = valueDevice(output, Phase::Prefill).value_or("host").str();
      buffer.decodeDevice = valueDevice(output, Phase::Decode).value_or("host").str();
      result.buffers.push_back(buffer);
      op.outputs.push_back(nextValue++);
    }
    if (auto transfer = dyn_cast<TransferOp>(operation)) {
      // Runs on its destination; the sources are in params.
      op.prefillDevice = transfer.getPrefillTo().str();
      op.decodeDevice = transfer.getDecodeTo().str();
      op.op = "transfer";
    } else {
      auto placement = operation.getAttrOfType<PlacementAttr>("ktgraph.placement");
      if (!placement)
        return Status::error("internal: op '" + op.kind + "' has no placement");
      op.prefillDevice = placement.getPrefill().str();
      op.decodeDevice = placement.getDecode().str();
      op.outDevice = placement.getOut().str();
      op.op = placement.getOp().str();
      op.rule = placement.getRule().str();
    }
    if (auto module = dyn_cast<ModelModuleOpInterface>(operation)) {
      op.path = module.getModulePath().str();
      for (auto &[role, weight] : module.getWeights())
        op.weights.push_back({role.str(), weight.getName().str(), weight.getDtype().str(),
                              std::vector<int64_t>(weight.getShape().begin(),
                                                   weight.getShape().end()),
                              weight.getStorageBytes()});
    }
    exportKernels(&operation, op.kernels);
    for (NamedAttribute attr : operation.getAttrs()) {
      if (isStructural(attr.getName().getValue()) || attr.getValue().isa<WeightAttr>())
        continue;
      // ktgraph.stage -> stage, ktgraph.graph_region -> graph_region.
      StringRef name = attr.getName().getValue();
      name.consume_front("ktgraph.");
      if (std::optional<plan::Param> param = toParam(attr.getValue()))
        op.params[name.str()] = *param;
    }
    result.ops.push_back(std::move(op));
  }
  StatusOr<std::vector<plan::KernelSpecialization>> kernels = collectKernelSpecializations(module);
  if (!kernels)
    return kernels.status();
  result.kernelSpecializations = std::move(*kernels);
  return result;
}

} // namespace kt::compiler
