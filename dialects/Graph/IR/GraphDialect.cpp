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
  std::optional<kt::gguf::GgmlType> type =
      kt::gguf::parseGgmlType(std::string_view(dtype.data(), dtype.size()));
  // The verifier guarantees a known type whose block size divides a row.
  std::optional<uint64_t> rowBytes = kt::gguf::ggmlRowBytes(*type, getShape()[0]);
  return *rowBytes * static_cast<uint64_t>(getElementCount() / getShape()[0]);
}
