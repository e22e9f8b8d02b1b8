// `ktc inspect`: a GGUF model's overview, or one tensor's dequantized values.
#include "tools/ktc/Commands.h"

#include "runtime/safetensors/Safetensors.h"
#include <filesystem>

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
  os << "model: " << model.sourcePath() << "\n";
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
    return reportError(model.sourcePath() + ": no tensor named '" +
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

// A Hugging Face checkpoint (directory with config.json and safetensors, or
// one .safetensors file): its model type, FP8 configuration, files and
// tensor table; with --tensor, the values of rows (FP8 weights times their
// block scales).
bool isSafetensorsPath(const std::string &path) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (fs::is_directory(path, error))
    return fs::exists(fs::path(path) / "model.safetensors", error) ||
           fs::exists(fs::path(path) / "model.safetensors.index.json", error);
  return fs::path(path).extension() == ".safetensors";
}

int inspectCheckpoint(const InspectOptions &options, llvm::raw_ostream &os) {
  StatusOr<std::unique_ptr<safetensors::Checkpoint>> opened =
      safetensors::Checkpoint::open(options.modelPath);
  if (!opened)
    return reportError(opened.message());
  const safetensors::Checkpoint &checkpoint = **opened;
  if (!options.tensorName.empty()) {
    const safetensors::TensorInfo *tensor = checkpoint.findTensor(options.tensorName);
    if (!tensor)
      return reportError(options.modelPath + " has no tensor '" + options.tensorName + "'");
    std::string scaleName = options.tensorName;
    const std::string weight = ".weight";
    if (scaleName.size() > weight.size() &&
        scaleName.compare(scaleName.size() - weight.size(), weight.size(), weight) == 0)
      scaleName += "_scale_inv";
    const int64_t block = checkpoint.fp8() ? checkpoint.fp8()->blockSize[0] : 128;
    std::vector<float> values(static_cast<size_t>(tensor->elements()));
    Status decoded = safetensors::dequantize(*tensor, checkpoint.findTensor(scaleName), block,
                                             values.data());
    if (!decoded.ok())
      return reportError(decoded.message());
    const int64_t cols = tensor->shape.empty() ? 1 : tensor->shape.back();
    const int64_t rows = tensor->elements() / std::max<int64_t>(1, cols);
    int64_t begin = options.rows ? options.rows->first : 0;
    int64_t end = options.rows ? std::min(options.rows->second, rows) : rows;
    for (int64_t r = begin; r < end; ++r) {
      os << "row " << r << ":";
      for (int64_t c = 0; c < cols; ++c)
        os << " " << llvm::format("%.9g", values[static_cast<size_t>(r * cols + c)]);
      os << "\n";
    }
    return EXIT_SUCCESS;
  }
  os << "checkpoint: " << checkpoint.path() << "\n";
  os << "model_type: " << (checkpoint.modelType().empty() ? "(no config.json)" : checkpoint.modelType()) << "\n";
  if (checkpoint.fp8())
    os << "quantization: fp8 " << checkpoint.fp8()->format << ", activations "
       << checkpoint.fp8()->activationScheme << ", blocks " << checkpoint.fp8()->blockSize[0]
       << "x" << checkpoint.fp8()->blockSize[1] << "\n";
  os << "files: " << checkpoint.files().size() << ", tensors: " << checkpoint.tensors().size()
     << ", " << formatByteSize(checkpoint.totalTensorBytes()) << "\n";
  std::map<std::string, int> byType;
  for (const safetensors::TensorInfo *t : checkpoint.tensors())
    ++byType[safetensors::dtypeName(t->dtype)];
  os << "dtypes:";
  for (const auto &[name, count] : byType)
    os << " " << name << "=" << count;
  os << "\n";
  for (const safetensors::TensorInfo *t : checkpoint.tensors()) {
    std::string shape;
    for (size_t i = 0; i < t->shape.size(); ++i)
      shape += (i ? "x" : "") + std::to_string(t->shape[i]);
    os << "  " << t->name << "  " << safetensors::dtypeName(t->dtype) << "  [" << shape << "]  "
       << (t->end - t->begin) << " bytes\n";
  }
  return EXIT_SUCCESS;
}

int runInspect(const InspectOptions &options) {
  if (isSafetensorsPath(options.modelPath))
    return inspectCheckpoint(options, llvm::outs());
  StatusOr<std::unique_ptr<GgufModel>> model = GgufModel::open(options.modelPath);
  if (!model)
    return reportError(model.message());
  if (!options.tensorName.empty())
    return printTensorRows(**model, options, llvm::outs());
  printOverview(**model, llvm::outs());
  return EXIT_SUCCESS;
}

} // namespace kt::tools
