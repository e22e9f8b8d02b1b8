#include "dialects/Graph/IR/GraphDialect.h"

#include "runtime/gguf/GgmlType.h"

#include "mlir/IR/DialectImplementation.h"
#include "llvm/ADT/TypeSwitch.h"

using namespace mlir;
using namespace kt::graph;

#include "dialects/Graph/IR/GraphDialect.cpp.inc"

#define GET_ATTRDEF_CLASSES
#include "dialects/Graph/IR/GraphAttrs.cpp.inc"

void KtGraphDialect::initialize() {
  addAttributes<
#define GET_ATTRDEF_LIST
#include "dialects/Graph/IR/GraphAttrs.cpp.inc"
      >();
  addOperations<
#define GET_OP_LIST
#include "dialects/Graph/IR/GraphOps.cpp.inc"
      >();
}

LogicalResult WeightAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                                 StringRef name, StringRef dtype,
                                 ArrayRef<int64_t> shape) {
  if (name.empty())
    return emitError() << "weight has an empty tensor name";
  if (dtype == kt::graph::kFp8E4m3) {
    // A native FP8 checkpoint's matrix: e4m3 values plus one f32 scale per
    // 128x128 block (`<name>_scale_inv`), shape in GGML order [cols, rows];
    // routed experts stack one per expert: [cols, rows, experts].
    if (shape.size() < 2 || shape.size() > 3 ||
        llvm::any_of(shape, [](int64_t dim) { return dim <= 0; }))
      return emitError() << "FP8 weight '" << name << "' must be a matrix or a stack of "
                            "matrices with positive dimensions";
    return success();
  }
  std::optional<kt::gguf::GgmlType> type =
      kt::gguf::parseGgmlType(std::string_view(dtype.data(), dtype.size()));
  if (!type)
    return emitError() << "weight '" << name << "' has unknown storage type '"
                       << dtype << "'";
  if (shape.empty() || shape.size() > 4)
    return emitError() << "weight '" << name << "' has rank " << shape.size()
                       << "; expected 1 to 4 dimensions";
  for (int64_t dim : shape)
    if (dim <= 0)
      return emitError() << "weight '" << name
                         << "' has a non-positive dimension " << dim;
  const kt::gguf::GgmlTypeTraits &traits = kt::gguf::ggmlTypeTraits(*type);
  if (shape[0] % traits.blockSize != 0)
    return emitError() << "weight '" << name << "' of type " << dtype
                       << " has rows of " << shape[0]
                       << " values, not a multiple of the block size "
                       << traits.blockSize;
  return success();
}

int64_t WeightAttr::getElementCount() const {
  int64_t count = 1;
  for (int64_t dim : getShape())
    count *= dim;
  return count;
}

uint64_t WeightAttr::getStorageBytes() const {
  StringRef dtype = getDtype();
  if (dtype == kt::graph::kFp8E4m3) {
    const uint64_t cols = static_cast<uint64_t>(getShape()[0]),
                   rows = static_cast<uint64_t>(getShape()[1]),
                   stack = getShape().size() > 2 ? static_cast<uint64_t>(getShape()[2]) : 1;
    const uint64_t blocks = ((rows + kt::graph::kFp8Block - 1) / kt::graph::kFp8Block) *
                            ((cols + kt::graph::kFp8Block - 1) / kt::graph::kFp8Block);
    return stack * (rows * cols + blocks * 4);
  }
  std::optional<kt::gguf::GgmlType> type =
      kt::gguf::parseGgmlType(std::string_view(dtype.data(), dtype.size()));
  // The verifier guarantees a known type whose block size divides a row.
  std::optional<uint64_t> rowBytes = kt::gguf::ggmlRowBytes(*type, getShape()[0]);
  return *rowBytes * static_cast<uint64_t>(getElementCount() / getShape()[0]);
}

namespace {
// "cpu" or "cuda:N".
bool isDeviceName(StringRef device) {
  if (device == "cpu")
    return true;
  if (!device.consume_front("cuda:") || device.empty())
    return false;
  unsigned index;
  return !device.getAsInteger(10, index);
}
} // namespace

LogicalResult PlacementAttr::verify(function_ref<InFlightDiagnostic()> emitError,
                                    StringRef prefill, StringRef decode, StringRef op,
                                    StringRef out, StringRef rule, DictionaryAttr kwargs) {
  for (auto [role, device] : {std::pair<StringRef, StringRef>{"prefill", prefill},
                              {"decode", decode}, {"out", out}}) {
    if (role == "out" && device.empty())
      continue;
    if (!isDeviceName(device))
      return emitError() << "placement " << role << " device '" << device
                         << "' is not \"cpu\" or \"cuda:N\"";
  }
  if (op.empty())
    return emitError() << "placement has an empty operator";
  return success();
}

LogicalResult GpuAttr::verify(function_ref<InFlightDiagnostic()> emitError, StringRef arch,
                              uint64_t memory) {
  std::optional<unsigned> capability = parseComputeCapability(arch);
  if (!capability || *capability < kMinComputeCapability)
    return emitError() << "GPU architecture '" << arch
                       << "' is not sm_NN or compute_NN with NN >= 75 (e.g. sm_80, sm_90a, "
                          "compute_80)";
  if (memory == 0)
    return emitError() << "GPU memory must be positive";
  return success();
}

unsigned GpuAttr::getComputeCapability() const {
  // The verifier guarantees a well-formed architecture.
  return parseComputeCapability(getArch()).value_or(0);
}

std::optional<unsigned> kt::graph::parseComputeCapability(StringRef arch) {
  unsigned capability = 0;
  if (!arch.consume_front("sm_") && !arch.consume_front("compute_"))
    return std::nullopt;
  arch.consume_back("a"); // the architecture-specific variant (wgmma, FP8)
  if (arch.getAsInteger(10, capability))
    return std::nullopt;
  return capability;
}

LogicalResult TargetAttr::verify(function_ref<InFlightDiagnostic()> emitError, StringRef cpu,
                                 ArrayAttr cpuFeatures, unsigned cores, unsigned numaNodes,
                                 ArrayAttr gpus) {
  if (cpu.empty())
    return emitError() << "target CPU name is empty";
  if (cores == 0)
    return emitError() << "target must have at least one CPU core";
  if (numaNodes == 0 || numaNodes > cores)
    return emitError() << "target must have between 1 and " << cores << " NUMA nodes";
  for (Attribute feature : cpuFeatures)
    if (!feature.isa<StringAttr>())
      return emitError() << "target cpu_features must be strings";
  for (Attribute gpu : gpus)
    if (!gpu.isa<GpuAttr>())
      return emitError() << "target gpus must be #ktgraph.gpu attributes";
  return success();
}

bool TargetAttr::hasCpuFeature(StringRef feature) const {
  return llvm::any_of(getCpuFeatures(), [&](Attribute attr) {
    return attr.cast<StringAttr>().getValue() == feature;
  });
}

GpuAttr TargetAttr::getGpu(unsigned index) const { return getGpus()[index].cast<GpuAttr>(); }
