#include "tools/kt-gen-model/GgufStreamWriter.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <set>
#include <sys/stat.h>
#include <unistd.h>

namespace kt::gen {
namespace {

using gguf::ValueType;

template <typename T> void appendScalar(std::vector<uint8_t> &out, T value) {
  // GGUF is little-endian, as is every host this project targets.
  const auto *bytes = reinterpret_cast<const uint8_t *>(&value);
  out.insert(out.end(), bytes, bytes + sizeof(T));
}

void appendString(std::vector<uint8_t> &out, const std::string &s) {
  appendScalar<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

uint64_t alignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

std::string errnoText() { return std::strerror(errno); }

} // namespace

Status GgufStreamWriter::appendValue(std::vector<uint8_t> &out, const gguf::Value &value) {
  switch (value.type) {
  case ValueType::UInt8:
    appendScalar<uint8_t>(out, static_cast<uint8_t>(value.u));
    break;
  case ValueType::Int8:
    appendScalar<int8_t>(out, static_cast<int8_t>(value.i));
    break;
  case ValueType::UInt16:
    appendScalar<uint16_t>(out, static_cast<uint16_t>(value.u));
    break;
  case ValueType::Int16:
    appendScalar<int16_t>(out, static_cast<int16_t>(value.i));
    break;
  case ValueType::UInt32:
    appendScalar<uint32_t>(out, static_cast<uint32_t>(value.u));
    break;
  case ValueType::Int32:
    appendScalar<int32_t>(out, static_cast<int32_t>(value.i));
    break;
  case ValueType::Float32:
    appendScalar<float>(out, static_cast<float>(value.f));
    break;
  case ValueType::Bool:
    appendScalar<uint8_t>(out, value.u ? 1 : 0);
    break;
  case ValueType::String:
    appendString(out, value.s);
    break;
  case ValueType::UInt64:
    appendScalar<uint64_t>(out, value.u);
    break;
  case ValueType::Int64:
    appendScalar<int64_t>(out, value.i);
    break;
  case ValueType::Float64:
    appendScalar<double>(out, value.f);
    break;
  case ValueType::Array:
    appendScalar<uint32_t>(out, static_cast<uint32_t>(value.elementType));
    appendScalar<uint64_t>(out, value.array.size());
    for (const gguf::Value &element : value.array) {
      if (element.type != value.elementType)
        return Status::error("A metadata array declared as " +
                             std::string(gguf::valueTypeName(value.elementType)) +
                             " holds an element of type " +
                             std::string(gguf::valueTypeName(element.type)) +
                             "; GGUF arrays are homogeneous.");
      Status status = appendValue(out, element);
      if (!status.ok())
        return status;
    }
    break;
  default:
    return Status::error("Metadata value type id " +
                         std::to_string(static_cast<uint32_t>(value.type)) +
                         " is not a GGUF value type.");
  }
  return Status::success();
}

StatusOr<GgufStreamWriter> GgufStreamWriter::create(std::vector<gguf::KeyValue> metadata,
                                                    std::vector<StreamTensorInfo> tensors,
                                                    uint64_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    return Status::error("GGUF alignment " + std::to_string(alignment) +
                         " is not a power of two.");
  GgufStreamWriter writer;
  std::vector<uint8_t> &out = writer.header_;
  appendScalar<uint32_t>(out, 0x46554747); // "GGUF"
  appendScalar<uint32_t>(out, 3);
  appendScalar<uint64_t>(out, tensors.size());
  appendScalar<uint64_t>(out, metadata.size());

  std::set<std::string> keys;
  for (const gguf::KeyValue &kv : metadata) {
    if (!keys.insert(kv.key).second)
      return Status::error("Metadata key '" + kv.key + "' is set twice.");
    appendString(out, kv.key);
    appendScalar<uint32_t>(out, static_cast<uint32_t>(kv.value.type));
    Status status = appendValue(out, kv.value);
    if (!status.ok())
      return Status::error("Metadata key '" + kv.key + "': " + status.message());
  }

  std::set<std::string> names;
  uint64_t dataSize = 0;
  std::vector<uint64_t> relativeOffsets;
  for (const StreamTensorInfo &tensor : tensors) {
    if (!names.insert(tensor.name).second)
      return Status::error("Tensor '" + tensor.name + "' is added twice.");
    if (tensor.ne.empty() || tensor.ne.size() > 4)
      return Status::error("Tensor '" + tensor.name + "' has " +
                           std::to_string(tensor.ne.size()) +
                           " dimensions; GGUF tensors have 1 to 4.");
    int64_t elements = 1;
    for (int64_t n : tensor.ne) {
      if (n <= 0)
        return Status::error("Tensor '" + tensor.name + "' has a dimension of " +
                             std::to_string(n) + "; every dimension must be positive.");
      elements *= n;
    }
    std::optional<uint64_t> rowBytes = gguf::ggmlRowBytes(tensor.type, tensor.ne[0]);
    if (!rowBytes)
      return Status::error("Tensor '" + tensor.name + "' has rows of " +
                           std::to_string(tensor.ne[0]) + " elements, not a multiple of " +
                           std::to_string(gguf::ggmlTypeTraits(tensor.type).blockSize) +
                           " as type " + std::string(gguf::ggmlTypeName(tensor.type)) +
                           " needs.");
    uint64_t bytes = *rowBytes * static_cast<uint64_t>(elements / tensor.ne[0]);
    appendString(out, tensor.name);
    appendScalar<uint32_t>(out, static_cast<uint32_t>(tensor.ne.size()));
    for (int64_t n : tensor.ne)
      appendScalar<uint64_t>(out, static_cast<uint64_t>(n));
    appendScalar<uint32_t>(out, static_cast<uint32_t>(tensor.type));
    appendScalar<uint64_t>(out, dataSize);
    relativeOffsets.push_back(dataSize);
    writer.tensorBytes_.push_back(bytes);
    dataSize = alignUp(dataSize + bytes, alignment);
  }
  out.resize(alignUp(out.size(), alignment), 0);
  for (uint64_t offset : relativeOffsets)
    writer.tensorOffsets_.push_back(out.size() + offset);
  writer.fileSize_ = out.size() + dataSize;
  return writer;
}

GgufStreamWriter::GgufStreamWriter(GgufStreamWriter &&other) noexcept { *this = std::move(other); }

GgufStreamWriter &GgufStreamWriter::operator=(GgufStreamWriter &&other) noexcept {
  if (this != &other) {
    abort();
    header_ = std::move(other.header_);
    tensorOffsets_ = std::move(other.tensorOffsets_);
    tensorBytes_ = std::move(other.tensorBytes_);
    fileSize_ = other.fileSize_;
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

Status GgufStreamWriter::open(const std::string &path) {
  abort();
  path_ = path;
  temporaryPath_ = path + ".tmp-" + std::to_string(::getpid());
  committed_ = false;
  fd_ = ::open(temporaryPath_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    std::string message = "Cannot create '" + temporaryPath_ + "': " + errnoText() +
                          ". Check that the output directory exists and is writable.";
    temporaryPath_.clear();
    return Status::error(message);
  }
  if (::ftruncate(fd_, static_cast<off_t>(fileSize_)) != 0) {
    std::string message = "Cannot size '" + temporaryPath_ + "' to " +
                          std::to_string(fileSize_) + " bytes: " + errnoText() + ".";
    abort();
    return Status::error(message);
  }
  uint64_t written = 0;
  while (written < header_.size()) {
    ssize_t n = ::pwrite(fd_, header_.data() + written, header_.size() - written,
                         static_cast<off_t>(written));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0) {
      std::string message = "Cannot write the header of '" + temporaryPath_ + "': " +
                            errnoText() + ".";
      abort();
      return Status::error(message);
    }
    written += static_cast<uint64_t>(n);
  }
  return Status::success();
}

Status GgufStreamWriter::writeTensorData(size_t index, uint64_t offsetInTensor, const void *data,
                                         uint64_t size) const {
  if (fd_ < 0)
    return Status::error("Internal error: tensor data written to '" + path_ +
                         "' before open() or after commit().");
  if (index >= tensorOffsets_.size() || offsetInTensor + size > tensorBytes_[index])
    return Status::error("Internal error: a write of " + std::to_string(size) +
                         " bytes at offset " + std::to_string(offsetInTensor) +
                         " runs past tensor " + std::to_string(index) + " of '" + path_ + "'.");
  const auto *bytes = static_cast<const uint8_t *>(data);
  uint64_t position = tensorOffsets_[index] + offsetInTensor;
  uint64_t written = 0;
  while (written < size) {
    ssize_t n = ::pwrite(fd_, bytes + written, size - written,
                         static_cast<off_t>(position + written));
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return Status::error("Cannot write to '" + temporaryPath_ + "': " + errnoText() +
                           ". Is the disk full?");
    written += static_cast<uint64_t>(n);
  }
  return Status::success();
}

Status GgufStreamWriter::commit() {
  if (fd_ < 0)
    return Status::error("Internal error: commit() of '" + path_ + "' without open().");
  if (::fsync(fd_) != 0) {
    std::string message = "Cannot flush '" + temporaryPath_ + "' to disk: " + errnoText() + ".";
    abort();
    return Status::error(message);
  }
  if (::close(fd_) != 0) {
    fd_ = -1;
    std::string message = "Cannot close '" + temporaryPath_ + "': " + errnoText() + ".";
    abort();
    return Status::error(message);
  }
  fd_ = -1;
  if (::rename(temporaryPath_.c_str(), path_.c_str()) != 0) {
    std::string message = "Cannot rename '" + temporaryPath_ + "' to '" + path_ + "': " +
                          errnoText() + ".";
    abort();
    return Status::error(message);
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

} // namespace kt::gen
