#include "runtime/gguf/GgufStreamWriter.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>
#include <unordered_set>

namespace kt::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747; // "GGUF" read as a little-endian uint32
constexpr uint32_t kVersion = 3;
constexpr uint32_t kMaxValueTypeId = static_cast<uint32_t>(ValueType::Float64);
constexpr const char *kAlignmentKey = "general.alignment";
// Far beyond any model, and low enough that no offset or padding overflows off_t.
constexpr uint64_t kMaxDataBytes = 1ull << 62;

bool isPowerOfTwo(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

uint64_t alignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

// Appends GGUF's little-endian encoding (the byte order of every host this
// project targets) to a header under construction.
class HeaderEncoder {
public:
  explicit HeaderEncoder(std::vector<uint8_t> &out) : out_(out) {}

  template <typename T> void scalar(T value) {
    const auto *bytes = reinterpret_cast<const uint8_t *>(&value);
    out_.insert(out_.end(), bytes, bytes + sizeof(T));
  }
  void string(const std::string &text) {
    scalar<uint64_t>(text.size());
    out_.insert(out_.end(), text.begin(), text.end());
  }
  // A validated value, without its type id.
  void value(const Value &value) {
    switch (value.type) {
    case ValueType::UInt8:
      return scalar(static_cast<uint8_t>(value.u));
    case ValueType::Int8:
      return scalar(static_cast<int8_t>(value.i));
    case ValueType::UInt16:
      return scalar(static_cast<uint16_t>(value.u));
    case ValueType::Int16:
      return scalar(static_cast<int16_t>(value.i));
    case ValueType::UInt32:
      return scalar(static_cast<uint32_t>(value.u));
    case ValueType::Int32:
      return scalar(static_cast<int32_t>(value.i));
    case ValueType::UInt64:
      return scalar(static_cast<uint64_t>(value.u));
    case ValueType::Int64:
      return scalar(static_cast<int64_t>(value.i));
    case ValueType::Float32:
      return scalar(static_cast<float>(value.f));
    case ValueType::Float64:
      return scalar(static_cast<double>(value.f));
    case ValueType::Bool:
      return scalar(static_cast<uint8_t>(value.u != 0));
    case ValueType::String:
      return string(value.s);
    case ValueType::Array:
      scalar(static_cast<uint32_t>(value.elementType));
      scalar<uint64_t>(value.array.size());
      for (const Value &element : value.array)
        this->value(element);
      return;
    }
  }
  void keyValue(const std::string &key, const Value &value) {
    string(key);
    scalar(static_cast<uint32_t>(value.type));
    this->value(value);
  }

private:
  std::vector<uint8_t> &out_;
};

// Writes all of `size` bytes at `position`; returns 0 or the errno.
int writeFully(int fd, const uint8_t *bytes, uint64_t size, uint64_t position) {
  uint64_t written = 0;
  while (written < size) {
    ssize_t n = ::pwrite(fd, bytes + written, size - written,
                         static_cast<off_t>(position + written));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return n < 0 ? errno : EIO;
    written += static_cast<uint64_t>(n);
  }
  return 0;
}

// Returns the problem with a metadata value, in words that start with `where`.
Status validateValue(const Value &value, const std::string &where, int depth) {
  if (static_cast<uint32_t>(value.type) > kMaxValueTypeId)
    return Status::error(where + " has the invalid value type id " +
                         std::to_string(static_cast<uint32_t>(value.type)) + ".");
  if (value.type == ValueType::String && value.s.size() > kGgufMaxStringBytes)
    return Status::error(where + " holds a string of " + std::to_string(value.s.size()) +
                         " bytes, more than GGUF readers accept (" +
                         std::to_string(kGgufMaxStringBytes) + ").");
  if (value.type == ValueType::Bool && value.u > 1)
    return Status::error(where + " is a bool holding " + std::to_string(value.u) +
                         "; use 0 or 1.");
  if (value.type != ValueType::Array)
    return Status::success();
  if (static_cast<uint32_t>(value.elementType) > kMaxValueTypeId)
    return Status::error(where + " is an array with the invalid element type id " +
                         std::to_string(static_cast<uint32_t>(value.elementType)) + ".");
  if (value.elementType == ValueType::Array && depth + 1 >= kGgufMaxArrayNesting)
    return Status::error(where + " nests arrays more than " +
                         std::to_string(kGgufMaxArrayNesting) + " levels deep.");
  if (value.array.size() > kGgufMaxArrayElements)
    return Status::error(where + " is an array of " + std::to_string(value.array.size()) +
                         " elements, more than GGUF readers accept (" +
                         std::to_string(kGgufMaxArrayElements) + ").");
  for (size_t i = 0; i < value.array.size(); ++i) {
    const Value &element = value.array[i];
    std::string elementWhere = "element " + std::to_string(i) + " of " + where;
    if (element.type != value.elementType)
      return Status::error(elementWhere + " is a " + std::string(valueTypeName(element.type)) +
                           ", but the array holds " +
                           std::string(valueTypeName(value.elementType)) +
                           " elements; all elements of an array have one type.");
    if (Status status = validateValue(element, elementWhere, depth + 1); !status.ok())
      return status;
  }
  return Status::success();
}

// Returns the problem with the metadata, or success.
Status validateMetadata(const std::vector<KeyValue> &metadata, uint64_t alignment) {
  std::unordered_set<std::string_view> keys;
  for (const KeyValue &entry : metadata) {
    if (!keys.insert(entry.key).second)
      return Status::error("the metadata key '" + entry.key +
                           "' was added twice. Add each key once.");
    if (Status status = validateValue(entry.value, "key '" + entry.key + "'", 0); !status.ok())
      return status;
    if (entry.key == kAlignmentKey) {
      std::optional<uint64_t> declared =
          entry.value.isInteger() ? entry.value.asUInt() : std::nullopt;
      if (!declared || *declared != alignment)
        return Status::error(
            "general.alignment is set to " + entry.value.toString() +
            ", but the writer aligns tensor data to " + std::to_string(alignment) +
            ". Pass the alignment to the GgufWriter constructor (or GgufStreamWriter::create) "
            "instead of adding the key.");
    }
  }
  return Status::success();
}

// The data size of a tensor, or the problem with its declaration.
StatusOr<uint64_t> tensorDataBytes(const TensorDeclaration &tensor) {
  const std::string label = "tensor '" + tensor.name + "'";
  std::optional<GgmlTypeTraits> traits = ggmlTypeTraits(static_cast<uint32_t>(tensor.type));
  if (!traits)
    return Status::error(label + " has the unknown GGML type id " +
                         std::to_string(static_cast<uint32_t>(tensor.type)) + ".");
  if (tensor.ne.empty() || tensor.ne.size() > static_cast<size_t>(kGgufMaxDims))
    return Status::error(label + " has " + std::to_string(tensor.ne.size()) +
                         " dimensions; GGUF tensors have 1 to " + std::to_string(kGgufMaxDims) +
                         ".");
  uint64_t elements = 1;
  for (int64_t extent : tensor.ne) {
    if (extent < 0)
      return Status::error(label + " has the negative dimension " + std::to_string(extent) + ".");
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(extent), &elements) ||
        elements > static_cast<uint64_t>(INT64_MAX))
      return Status::error(label + " has more elements than a 64-bit count holds.");
  }
  if (tensor.ne[0] % traits->blockSize != 0)
    return Status::error(label + " has a row length of " + std::to_string(tensor.ne[0]) +
                         ", which is not a multiple of the block size " +
                         std::to_string(traits->blockSize) + " of " + std::string(traits->name) +
                         ".");
  uint64_t bytes;
  if (__builtin_mul_overflow(elements / traits->blockSize,
                             static_cast<uint64_t>(traits->blockBytes), &bytes))
    return Status::error(label + " is larger than a 64-bit byte count holds.");
  return bytes;
}

} // namespace

std::string ggufFileTarget(const std::string &path) { return "the GGUF file '" + path + "'"; }

StatusOr<GgufLayout> GgufLayout::create(const std::vector<KeyValue> &metadata,
                                        const std::vector<TensorDeclaration> &tensors,
                                        uint64_t alignment, const std::string &target) {
  auto fail = [&](const std::string &problem) {
    return Status::error("Cannot write " + target + ": " + problem);
  };
  if (!isPowerOfTwo(alignment) || alignment > UINT32_MAX)
    return fail("the alignment " + std::to_string(alignment) +
                " is not a power of two that fits general.alignment (uint32). Use 32 (the "
                "default) or another power of two.");
  if (Status status = validateMetadata(metadata, alignment); !status.ok())
    return fail(status.message());

  GgufLayout layout;
  std::unordered_set<std::string_view> names;
  std::vector<uint64_t> dataOffsets; // from the start of the data section
  uint64_t dataSize = 0;
  for (const TensorDeclaration &tensor : tensors) {
    if (!names.insert(tensor.name).second)
      return fail("tensor '" + tensor.name + "' was added twice. Give each tensor a unique name.");
    StatusOr<uint64_t> bytes = tensorDataBytes(tensor);
    if (!bytes.ok())
      return fail(bytes.message());
    dataOffsets.push_back(dataSize);
    layout.tensorBytes.push_back(*bytes);
    uint64_t end;
    if (__builtin_add_overflow(dataSize, *bytes, &end) || end > kMaxDataBytes)
      return fail("the tensor data adds up to more than a file can hold.");
    dataSize = alignUp(end, alignment);
  }

  bool hasAlignmentKey = false;
  for (const KeyValue &entry : metadata)
    hasAlignmentKey |= entry.key == kAlignmentKey;
  const bool addAlignmentKey = !hasAlignmentKey && alignment != kGgufDefaultAlignment;

  HeaderEncoder encoder(layout.header);
  encoder.scalar(kMagic);
  encoder.scalar(kVersion);
  encoder.scalar<uint64_t>(tensors.size());
  encoder.scalar<uint64_t>(metadata.size() + (addAlignmentKey ? 1 : 0));
  for (const KeyValue &entry : metadata)
    encoder.keyValue(entry.key, entry.value);
  if (addAlignmentKey) {
    Value declared;
    declared.type = ValueType::UInt32;
    declared.u = alignment;
    encoder.keyValue(kAlignmentKey, declared);
  }
  for (size_t i = 0; i < tensors.size(); ++i) {
    encoder.string(tensors[i].name);
    encoder.scalar<uint32_t>(tensors[i].ne.size());
    for (int64_t extent : tensors[i].ne)
      encoder.scalar<uint64_t>(static_cast<uint64_t>(extent));
    encoder.scalar(static_cast<uint32_t>(tensors[i].type));
    encoder.scalar<uint64_t>(dataOffsets[i]);
  }
  layout.header.resize(alignUp(layout.header.size(), alignment), 0);

  const uint64_t dataStart = layout.header.size();
  for (uint64_t offset : dataOffsets)
    layout.tensorOffsets.push_back(dataStart + offset);
  layout.fileSize = dataStart + dataSize;
  return layout;
}

StatusOr<GgufStreamWriter> GgufStreamWriter::create(std::string path,
                                                    const std::vector<KeyValue> &metadata,
                                                    const std::vector<TensorDeclaration> &tensors,
                                                    uint64_t alignment) {
  StatusOr<GgufLayout> layout =
      GgufLayout::create(metadata, tensors, alignment, ggufFileTarget(path));
  if (!layout.ok())
    return layout.status();
  return GgufStreamWriter(std::move(path), std::move(*layout));
}

GgufStreamWriter::GgufStreamWriter(std::string path, GgufLayout layout)
    : layout_(std::move(layout)), path_(std::move(path)) {}

GgufStreamWriter::GgufStreamWriter(GgufStreamWriter &&other) noexcept { *this = std::move(other); }

GgufStreamWriter &GgufStreamWriter::operator=(GgufStreamWriter &&other) noexcept {
  if (this != &other) {
    abort();
    layout_ = std::move(other.layout_);
    path_ = std::move(other.path_);
    temporaryPath_ = std::move(other.temporaryPath_);
    fd_ = other.fd_;
    committed_ = other.committed_;
    other.fd_ = -1;
    other.temporaryPath_.clear();
  }
  return *this;
}

GgufStreamWriter::~GgufStreamWriter() { abort(); }

Status GgufStreamWriter::ioError(const std::string &action, int error,
                                 const std::string &advice) const {
  return Status::error("Cannot write " + ggufFileTarget(path_) + ": " + action +
                       " failed: " + std::strerror(error) + "." + advice);
}

Status GgufStreamWriter::open() {
  abort();
  committed_ = false;
  const std::string temporary = path_ + ".tmp-" + std::to_string(::getpid());
  fd_ = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    int error = errno;
    return ioError("creating '" + temporary + "'", error,
                   " Check that the directory exists and is writable.");
  }
  temporaryPath_ = temporary;
  Status failure = Status::success();
  if (::ftruncate(fd_, static_cast<off_t>(layout_.fileSize)) != 0) {
    int error = errno;
    failure = ioError("sizing '" + temporary + "' to " + std::to_string(layout_.fileSize) +
                          " bytes",
                      error, " Check the free space of the target file system.");
  } else if (int error = writeFully(fd_, layout_.header.data(), layout_.header.size(), 0))
    failure = ioError("writing the header to '" + temporary + "'", error,
                      " Check the free space of the target file system.");
  if (!failure.ok())
    abort();
  return failure;
}

Status GgufStreamWriter::writeTensorData(size_t index, uint64_t offsetInTensor, const void *data,
                                         uint64_t size) const {
  if (fd_ < 0)
    return Status::error("Internal error: tensor data written to '" + path_ +
                         "' before open() or after commit().");
  if (index >= layout_.tensorOffsets.size() || offsetInTensor > layout_.tensorBytes[index] ||
      size > layout_.tensorBytes[index] - offsetInTensor)
    return Status::error("Internal error: a write of " + std::to_string(size) +
                         " bytes at offset " + std::to_string(offsetInTensor) +
                         " runs past tensor " + std::to_string(index) + " of '" + path_ + "'.");
  if (int error = writeFully(fd_, static_cast<const uint8_t *>(data), size,
                             layout_.tensorOffsets[index] + offsetInTensor))
    return ioError("writing '" + temporaryPath_ + "'", error,
                   " Check the free space of the target file system.");
  return Status::success();
}

Status GgufStreamWriter::commit() {
  if (fd_ < 0)
    return Status::error("Internal error: commit() of '" + path_ + "' without open().");
  Status failure = Status::success();
  // The data must be on disk before the rename makes the file visible.
  if (::fsync(fd_) != 0) {
    int error = errno;
    failure = ioError("flushing '" + temporaryPath_ + "' to disk", error,
                      " Check the free space of the target file system.");
  }
  int closed = ::close(fd_);
  int closeError = errno;
  fd_ = -1;
  if (failure.ok() && closed != 0)
    failure = ioError("closing '" + temporaryPath_ + "'", closeError,
                      " Check the free space of the target file system.");
  if (failure.ok() && ::rename(temporaryPath_.c_str(), path_.c_str()) != 0) {
    int error = errno;
    failure = ioError("renaming '" + temporaryPath_ + "' to it", error);
  }
  if (!failure.ok()) {
    abort();
    return failure;
  }
  committed_ = true;
  temporaryPath_.clear();
  return Status::success();
}

void GgufStreamWriter::abort() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!committed_ && !temporaryPath_.empty())
    ::unlink(temporaryPath_.c_str());
  temporaryPath_.clear();
}

} // namespace kt::gguf
