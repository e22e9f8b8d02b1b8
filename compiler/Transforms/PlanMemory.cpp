// kt-plan-memory: bytes per device against each device's budget.
#include "compiler/Transforms/Passes.h"

#include "dialects/Graph/IR/GraphDialect.h"
#include "runtime/support/ByteSize.h"

#include "mlir/IR/Builders.h"
#include "mlir/IR/BuiltinOps.h"
#include "llvm/ADT/StringMap.h"
#include "llvm/Support/Format.h"
#include "llvm/Support/raw_ostream.h"

#include <algorithm>
#include <map>

namespace kt::compiler {
#define GEN_PASS_DEF_PLANMEMORY
#include "compiler/Transforms/Passes.h.inc"
} // namespace kt::compiler

using namespace mlir;
using namespace kt::graph;

namespace kt::compiler {
namespace {

constexpr int64_t kF32 = 4;
// The latent KV cache holds 16-bit floats on a GPU; the CPU executor keeps
// it in f32.
constexpr int64_t kGpuKvCacheElementBytes = 2;
constexpr int64_t kCpuKvCacheElementBytes = 4;

struct DeviceUsage {
  uint64_t weights = 0;
  uint64_t kvCache = 0;
  uint64_t activations = 0; // max over modules: layers run one at a time
  uint64_t staging = 0;     // max over modules: buffers are reused
  uint64_t expertCache = 0; // copies of CPU-placed experts (cuda:0)
  std::optional<uint64_t> budget;
  std::vector<std::pair<uint64_t, std::string>> modules; // weight bytes, path

  uint64_t total() const { return weights + kvCache + activations + staging + expertCache; }
};

// Hidden size of the op's input (or result for the embedding).
int64_t featureSize(Operation *op) {
  Value value = op->getNumOperands() ? op->getOperand(0) : op->getResult(0);
  if (isa<EmbeddingOp>(op))
    value = op->getResult(0);
  auto type = value.getType().cast<RankedTensorType>();
  return type.getDimSize(1);
}

// The widest buffers one prefill chunk needs inside a module, in bytes.
uint64_t activationBytes(Operation *op, int64_t chunk) {
  int64_t hidden = featureSize(op);
  // Input, output and the residual stream around every module.
  int64_t bytes = 3 * chunk * hidden * kF32;
  if (auto attention = dyn_cast<MlaAttentionOp>(op)) {
    int64_t heads = attention.getNumHeads();
    int64_t qk = attention.getQkNopeHeadDim() + attention.getQkRopeHeadDim();
    // Queries, keys and values expanded from the latent for the chunk, and the
    // chunk's attention scores against itself.
    bytes += chunk * heads * (2 * qk + attention.getVHeadDim()) * kF32 +
             chunk * chunk * heads * kF32;
  } else if (auto mlp = dyn_cast<MlpOp>(op)) {
    bytes += 2 * chunk * mlp.getGateProj().getShape()[1] * kF32;
  } else if (auto shared = dyn_cast<SharedExpertsOp>(op)) {
    bytes += 2 * chunk * shared.getGateProj().getShape()[1] * kF32;
  } else if (auto experts = dyn_cast<RoutedExpertsOp>(op)) {
    int64_t topK = experts.getTopkIds().getType().cast<RankedTensorType>().getDimSize(1);
    bytes += 2 * chunk * topK * experts.getGateProj().getShape()[1] * kF32;
  } else if (auto head = dyn_cast<LmHeadOp>(op)) {
    bytes += chunk * head.getWeight().getShape()[1] * kF32;
  } else if (auto gate = dyn_cast<MoeGateOp>(op)) {
    bytes += 2 * chunk * gate.getNumExperts() * kF32;
  }
  return static_cast<uint64_t>(bytes);
}

// Bytes of one expert's three matrices: what one streaming step moves.
uint64_t oneExpertBytes(RoutedExpertsOp experts) {
  uint64_t all = experts.getGateProj().getStorageBytes() +
                 experts.getUpProj().getStorageBytes() +
                 experts.getDownProj().getStorageBytes();
  return all / static_cast<uint64_t>(experts.getGateProj().getShape()[2]);
}

class PlanMemoryPass : public impl::PlanMemoryBase<PlanMemoryPass> {
public:
  using impl::PlanMemoryBase<PlanMemoryPass>::PlanMemoryBase;

  void runOnOperation() override {
    ModuleOp module = getOperation();
    target = module->getAttrOfType<TargetAttr>("ktgraph.target");
    std::map<std::string, DeviceUsage> usage;
    if (failed(setBudgets(module, usage)))
      return signalPassFailure();

    bool missingPlacement = false;
    module.walk([&](ModelModuleOpInterface op) {
      auto placement = op->getAttrOfType<PlacementAttr>("ktgraph.placement");
      if (!placement) {
        op->emitOpError() << "module '" << op.getModulePath()
                          << "' has no placement; run kt-apply-rules first";
        missingPlacement = true;
        return;
      }
      account(op, placement, usage);
    });
    if (missingPlacement)
      return signalPassFailure();
    if (!expertCache.empty()) {
      std::optional<uint64_t> bytes = parseByteSize(expertCache);
      if (!bytes) {
        module.emitError() << "expert-cache '" << expertCache << "' is not a size, e.g. 20GiB";
        return signalPassFailure();
      }
      if (*bytes > 0 && !usage["cuda:0"].budget) {
        module.emitError() << "a GPU expert cache needs a GPU, but the target has none; give "
                              "one with --target-gpu";
        return signalPassFailure();
      }
      usage["cuda:0"].expertCache = *bytes;
    }

    recordPlan(module, usage);
    if (failed(checkBudgets(module, usage)))
      signalPassFailure();
  }

private:
  TargetAttr target;

  LogicalResult setBudgets(ModuleOp module, std::map<std::string, DeviceUsage> &usage) {
    if (auto target = module->getAttrOfType<TargetAttr>("ktgraph.target")) {
      std::optional<uint64_t> reserve = parseByteSize(gpuReserve);
      if (!reserve)
        return module.emitError() << "gpu-reserve '" << gpuReserve << "' is not a size";
      for (unsigned i = 0; i < target.getGpuCount(); ++i) {
        uint64_t memory = target.getGpu(i).getMemory();
        usage["cuda:" + std::to_string(i)].budget = memory > *reserve ? memory - *reserve : 0;
      }
    }
    for (const std::string &entry : gpuMemory) {
      size_t equals = entry.find('=');
      std::optional<uint64_t> bytes;
      if (equals != std::string::npos)
        bytes = parseByteSize(entry.substr(equals + 1));
      std::string device = entry.substr(0, equals);
      if (!bytes || device.rfind("cuda:", 0) != 0)
        return module.emitError() << "--gpu-mem '" << entry
                                  << "' is not DEVICE=SIZE, e.g. cuda:0=24GiB";
      usage[device].budget = *bytes;
    }
    return success();
  }

  // Whether `device` is an sm_90a GPU of the target.
  bool isWgmmaGpu(StringRef device) const {
    unsigned index = 0;
    return target && device.startswith("cuda:") && !device.drop_front(5).getAsInteger(10, index) &&
           index < target.getGpuCount() && target.getGpu(index).getArch() == "sm_90a";
  }

  void account(ModelModuleOpInterface op, PlacementAttr placement,
               std::map<std::string, DeviceUsage> &usage) {
    Operation *operation = op.getOperation();
    std::string decode = placement.getDecode().str();
    std::string prefill = placement.getPrefill().str();
    uint64_t weights = 0;
    for (auto &[role, weight] : op.getWeights()) {
      (void)role;
      // The CPU keeps FP8 weights as the q8_0 copy it makes at load (34
      // bytes per 32 values instead of 32 plus a scale per 128x128), as do
      // GPUs without wgmma for FP8 experts.
      if (weight.getDtype() == kFp8E4m3 &&
          (decode == "cpu" || (isa<RoutedExpertsOp>(operation) && !isWgmmaGpu(decode))))
        weights += static_cast<uint64_t>(weight.getElementCount() / 32 * 34);
      else
        weights += weight.getStorageBytes();
    }
    DeviceUsage &home = usage[decode];
    home.weights += weights;
    home.modules.emplace_back(weights, op.getModulePath().str());

    if (auto attention = dyn_cast<MlaAttentionOp>(operation))
      home.kvCache += static_cast<uint64_t>(cacheLens) *
                      (attention.getKvLoraRank() + attention.getQkRopeHeadDim()) *
                      (decode == "cpu" ? kCpuKvCacheElementBytes : kGpuKvCacheElementBytes);

    uint64_t activations = activationBytes(operation, chunkSize);
    // FP8 projections' GEMM (sm_90a) quantizes its input first: a byte per
    // value and an f32 per 128 of the widest input (an upper bound where the
    // GPU runs another FP8 kernel). The CPU multiplies q8_0 copies instead.
    if (prefill.rfind("cuda:", 0) == 0) {
      int64_t widestFp8Input = 0;
      for (auto &[role, weight] : op.getWeights())
        if (weight.getDtype() == kFp8E4m3 && !weight.getShape().empty())
          widestFp8Input = std::max(widestFp8Input, weight.getShape()[0]);
      // Routed experts quantize each token's top-k assignments.
      int64_t rows = chunkSize;
      if (auto experts = dyn_cast<RoutedExpertsOp>(operation))
        rows *= experts.getTopkIds().getType().cast<RankedTensorType>().getDimSize(1);
      activations += static_cast<uint64_t>(rows * widestFp8Input +
                                           rows * (widestFp8Input / 128) * kF32);
    }
    for (const std::string &device : {prefill, decode})
      usage[device].activations = std::max(usage[device].activations, activations);

    // Weights that live on the CPU but are used by a GPU in prefill stream
    // through two GPU buffers, one expert at a time.
    if (prefill != decode && decode == "cpu") {
      uint64_t step = weights;
      if (auto experts = dyn_cast<RoutedExpertsOp>(operation))
        step = oneExpertBytes(experts);
      usage[prefill].staging = std::max(usage[prefill].staging, 2 * step);
    }
    // Activations crossing between the CPU and a GPU go through pinned host
    // buffers (input and output of a chunk).
    std::string out = placement.getOut().empty() ? decode : placement.getOut().str();
    if ((decode == "cpu") != (out == "cpu") || (prefill == "cpu") != (decode == "cpu")) {
      uint64_t pinned = 2 * static_cast<uint64_t>(chunkSize * featureSize(operation) * kF32);
      usage["cpu"].staging = std::max(usage["cpu"].staging, pinned);
    }
  }

  void recordPlan(ModuleOp module, const std::map<std::string, DeviceUsage> &usage) {
    Builder builder(module.getContext());
    SmallVector<NamedAttribute> devices;
    for (const auto &[device, use] : usage) {
      SmallVector<NamedAttribute> fields = {
          builder.getNamedAttr("weights", builder.getI64IntegerAttr(use.weights)),
          builder.getNamedAttr("kv_cache", builder.getI64IntegerAttr(use.kvCache)),
          builder.getNamedAttr("activations", builder.getI64IntegerAttr(use.activations)),
          builder.getNamedAttr("staging", builder.getI64IntegerAttr(use.staging)),
          builder.getNamedAttr("total", builder.getI64IntegerAttr(use.total()))};
      if (use.expertCache)
        fields.push_back(
            builder.getNamedAttr("expert_cache", builder.getI64IntegerAttr(use.expertCache)));
      if (use.budget)
        fields.push_back(builder.getNamedAttr("budget", builder.getI64IntegerAttr(*use.budget)));
      devices.push_back(builder.getNamedAttr(device, builder.getDictionaryAttr(fields)));
    }
    module->setAttr("ktgraph.memory_plan", builder.getDictionaryAttr(devices));
  }

  LogicalResult checkBudgets(ModuleOp module, std::map<std::string, DeviceUsage> &usage) {
    std::vector<std::string> over;
    for (const auto &[device, use] : usage) {
      if (device != "cpu" && !use.budget && use.total() > 0) {
        module.emitError() << "device " << device
                           << " is used by the placement but the target has no such GPU; "
                              "give its memory with --gpu-mem "
                           << device << "=SIZE or --target-gpu";
        return failure();
      }
      if (use.budget && use.total() > *use.budget)
        over.push_back(device);
    }
    if (over.empty())
      return success();

    std::string table;
    llvm::raw_string_ostream os(table);
    os << "the plan does not fit in memory:\n";
    os << llvm::format("  %-8s %12s %12s %12s %12s %12s %12s %12s\n",
                       static_cast<const char *>("device"), static_cast<const char *>("weights"),
                       static_cast<const char *>("kv cache"),
                       static_cast<const char *>("activations"),
                       static_cast<const char *>("staging"),
                       static_cast<const char *>("expert cache"),
                       static_cast<const char *>("total"), static_cast<const char *>("budget"));
    for (const auto &[device, use] : usage)
      os << llvm::format("  %-8s %12s %12s %12s %12s %12s %12s %12s%s\n", device.c_str(),
                         formatByteSize(use.weights).c_str(), formatByteSize(use.kvCache).c_str(),
                         formatByteSize(use.activations).c_str(),
                         formatByteSize(use.staging).c_str(),
                         formatByteSize(use.expertCache).c_str(),
                         formatByteSize(use.total()).c_str(),
                         use.budget ? formatByteSize(*use.budget).c_str() : "-",
                         use.budget && use.total() > *use.budget ? "  OVER" : "");
    for (const std::string &device : over) {
      DeviceUsage &use = usage[device];
      std::sort(use.modules.rbegin(), use.modules.rend());
      os << "largest modules on " << device << " (move some to \"cpu\" or another GPU with a "
         << "rule, or lower --cache-lens / --chunk-size"
         << (use.expertCache ? " / --gpu-expert-cache" : "") << "):\n";
      for (size_t i = 0; i < std::min<size_t>(5, use.modules.size()); ++i)
        os << "  " << use.modules[i].second << "  " << formatByteSize(use.modules[i].first)
           << "\n";
    }
    module.emitError() << os.str();
    return failure();
  }
};

} // namespace
} // namespace kt::compiler
