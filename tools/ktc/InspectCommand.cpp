// `ktc inspect`: a GGUF model's overview, or one tensor's dequantized values.
#include "tools/ktc/Commands.h"

#include "runtime/gguf/GgufFile.h"
#include "runtime/quant/Quant.h"
#include "runtime/support/ByteSize.h"

#include "llvm/Support/Format.h"
#include "llvm/Support/raw_ostream.h"

#include <map>
#include <vector>

namespace kt::tools {
namespace {

using gguf::GgufModel;
using gguf::TensorInfo;

std::string formatShape(const std::vector<int64_t> &ne) {
  std::string text = "[";
  for (size_t i = 0; i < ne.size(); ++i)
    text += (i ? ", " : "") + std::to_string(ne[i]);
  return text + "]";
}

// Metadata rows that are whole vocabularies are shown abbreviated.
void printMetadata(const GgufModel &model, llvm::raw_ostream &os) {
  os << "metadata:\n";
  for (const gguf::KeyValue &kv : model.metadata())
    os << "  " << kv.key << " = " << kv.value.toString(8) << "\n";
}

void printOverview(const GgufModel &model, llvm::raw_ostream &os) {
  os << "model: " << model.files().front()->path() << "\n";
  for (const auto &file : model.files())
    os << "  file: " << file->path() << " (GGUF v" << file->version() << ", "
       << file->tensors().size() << " tensors, " << formatByteSize(file->fileSize()) << ")\n";
  std::string arch = model.architecture();
  os << "architecture: " << (arch.empty() ? "(none)" : arch) << "\n";
  printMetadata(model, os);

  os << "tensors:\n";
  os << llvm::format("  %-40s %-8s %-24s %14s\n", static_cast<const char *>("name"),
                     static_cast<const char *>("type"), static_cast<const char *>("shape"),
                     static_cast<const char *>("bytes"));
  struct TypeTotal {
    int64_t tensors = 0;
    int64_t elements = 0;
    uint64_t bytes = 0;
  };
  std::map<std::string, TypeTotal> byType;
  TypeTotal total;
  for (const TensorInfo &tensor : model.tensors()) {
    std::string type(gguf::ggmlTypeName(tensor.type));
    os << llvm::format("  %-40s %-8s %-24s %14llu\n", tensor.name.c_str(), type.c_str(),
                       formatShape(tensor.ne).c_str(),
                       static_cast<unsigned long long>(tensor.nbytes));
    for (TypeTotal *t : {&byType[type], &total}) {
      t->tensors += 1;
      t->elements += tensor.elements();
      t->bytes += tensor.nbytes;
    }
  }
  os << "totals:\n";
  for (const auto &[type, t] : byType)
    os << llvm::format("  %-8s %6lld tensors %16lld parameters %14s\n", type.c_str(),
                       static_cast<long long>(t.tensors), static_cast<long long>(t.elements),
                       formatByteSize(t.bytes).c_str());
  os << llvm::format("  %-8s %6lld tensors %16lld parameters %14s\n",
                     static_cast<const char *>("all"),
                     static_cast<long long>(total.tensors),
                     static_cast<long long>(total.elements), formatByteSize(total.bytes).c_str());
}

int printTensorRows(const GgufModel &model, const InspectOptions &options,
                    llvm::raw_ostream &os) {
  const TensorInfo *tensor = model.findTensor(options.tensorName);
  if (!tensor)
    return reportError(model.files().front()->path() + ": no tensor named '" +
                       options.tensorName + "'; `ktc inspect " + options.modelPath +
                       "` lists the tensors");
  const gguf::GgmlTypeTraits &traits = gguf::ggmlTypeTraits(tensor->type);
  if (!traits.dequantizable)
    return reportError("tensor '" + tensor->name + "' has type " + std::string(traits.name) +
                       ", which ktc cannot dequantize");
  int64_t rowCount = tensor->rows();
  int64_t begin = options.rows ? options.rows->first : 0;
  int64_t end = options.rows ? options.rows->second : rowCount;
  if (end > rowCount)
    return reportError("--rows " + std::to_string(begin) + ":" + std::to_string(end) +
                       " is out of range: tensor '" + tensor->name + "' has " +
                       std::to_string(rowCount) + " rows");
  int64_t rowLength = tensor->ne[0];
  uint64_t rowBytes = *gguf::ggmlRowBytes(tensor->type, rowLength);

  os << "tensor: " << tensor->name << "\n";
  os << "type: " << traits.name << "\n";
  os << "shape: " << formatShape(tensor->ne) << "\n";
  os << "rows: " << begin << ":" << end << " of " << rowCount << "\n";
  std::vector<float> values(static_cast<size_t>(rowLength));
  for (int64_t row = begin; row < end; ++row) {
    Status status = quant::dequantize(tensor->type, tensor->data + row * rowBytes,
                                      values.data(), rowLength);
    if (!status.ok())
      return reportError(status.message());
    os << "row " << row << ":";
    for (float value : values)
      os << llvm::format(" %.9g", static_cast<double>(value));
    os << "\n";
  }
  return EXIT_SUCCESS;
}

} // namespace

int reportError(const std::string &message) {
  llvm::errs() << "ktc: error: " << message << "\n";
  return EXIT_FAILURE;
}

int runInspect(const InspectOptions &options) {
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(options.modelPath);
  if (!model)
    return reportError(model.message());
  if (!options.tensorName.empty())
    return printTensorRows(**model, options, llvm::outs());
  printOverview(**model, llvm::outs());
  return EXIT_SUCCESS;
}

} // namespace kt::tools
