#include "runtime/gguf/GgufWriter.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <unistd.h>
#include <unordered_set>

namespace kt::gguf {
namespace detail {

// Receives the bytes of the file in order; returns false once a write failed.
class GgufSink {
public:
  virtual ~GgufSink() = default;
  virtual bool write(const void *data, size_t size) = 0;
  uint64_t written = 0;

  bool bytes(const void *data, size_t size) {
    written += size;
    return write(data, size);
  }
  template <typename T> bool scalar(T value) { return bytes(&value, sizeof(value)); }
  bool string(const std::string &text) {
    return scalar<uint64_t>(text.size()) && bytes(text.data(), text.size());
  }
  bool zeros(uint64_t count) {
    static const uint8_t kZeros[256] = {};
    while (count > 0) {
      size_t chunk = count < sizeof(kZeros) ? static_cast<size_t>(count) : sizeof(kZeros);
      if (!bytes(kZeros, chunk))
        return false;
      count -= chunk;
    }
    return true;
  }
};

class MemorySink : public GgufSink {
public:
  std::vector<uint8_t> image;
  bool write(const void *data, size_t size) override {
    const uint8_t *begin = static_cast<const uint8_t *>(data);
    image.insert(image.end(), begin, begin + size);
    return true;
  }
};

class FileSink : public GgufSink {
public:
  explicit FileSink(FILE *file) : file_(file) {}
  bool write(const void *data, size_t size) override {
    return size == 0 || std::fwrite(data, 1, size, file_) == size;
  }

private:
  FILE *file_;
};

} // namespace detail

namespace {
using detail::GgufSink;
using detail::MemorySink;
using detail::FileSink;

constexpr uint32_t kVersion = 3;
constexpr uint32_t kMaxValueTypeId = static_cast<uint32_t>(ValueType::Float64);

bool isPowerOfTwo(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

uint64_t alignUp(uint64_t value, uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

bool emitValue(GgufSink &sink, const Value &value) {
  switch (value.type) {
  case ValueType::UInt8:
    return sink.scalar(static_cast<uint8_t>(value.u));
  case ValueType::Int8:
    return sink.scalar(static_cast<int8_t>(value.i));
  case ValueType::UInt16:
    return sink.scalar(static_cast<uint16_t>(value.u));
  case ValueType::Int16:
    return sink.scalar(static_cast<int16_t>(value.i));
  case ValueType::UInt32:
    return sink.scalar(static_cast<uint32_t>(value.u));
  case ValueType::Int32:
    return sink.scalar(static_cast<int32_t>(value.i));
  case ValueType::UInt64:
    return sink.scalar(static_cast<uint64_t>(value.u));
  case ValueType::Int64:
    return sink.scalar(static_cast<int64_t>(value.i));
  case ValueType::Float32:
    return sink.scalar(static_cast<float>(value.f));
  case ValueType::Float64:
    return sink.scalar(static_cast<double>(value.f));
  case ValueType::Bool:
    return sink.scalar(static_cast<uint8_t>(value.u != 0));
  case ValueType::String:
    return sink.string(value.s);
  case ValueType::Array:
    if (!sink.scalar(static_cast<uint32_t>(value.elementType)) ||
        !sink.scalar<uint64_t>(value.array.size()))
      return false;
    for (const Value &element : value.array)
      if (!emitValue(sink, element))
        return false;
    return true;
  }
  return false;
}

} // namespace

void GgufWriter::addValue(std::string key, Value value) {
  metadata_.push_back({std::move(key), std::move(value)});
}

void GgufWriter::addString(std::string key, std::string value) {
  Value v;
  v.type = ValueType::String;
  v.s = std::move(value);
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addUInt32(std::string key, uint32_t value) {
  Value v;
  v.type = ValueType::UInt32;
  v.u = value;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addInt32(std::string key, int32_t value) {
  Value v;
  v.type = ValueType::Int32;
  v.i = value;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addUInt64(std::string key, uint64_t value) {
  Value v;
  v.type = ValueType::UInt64;
  v.u = value;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addFloat32(std::string key, float value) {
  Value v;
  v.type = ValueType::Float32;
  v.f = value;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addBool(std::string key, bool value) {
  Value v;
  v.type = ValueType::Bool;
  v.u = value ? 1 : 0;
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addStringArray(std::string key, const std::vector<std::string> &values) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = ValueType::String;
  v.array.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    v.array[i].type = ValueType::String;
    v.array[i].s = values[i];
  }
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addInt32Array(std::string key, const std::vector<int32_t> &values) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = ValueType::Int32;
  v.array.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    v.array[i].type = ValueType::Int32;
    v.array[i].i = values[i];
  }
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addFloat32Array(std::string key, const std::vector<float> &values) {
  Value v;
  v.type = ValueType::Array;
  v.elementType = ValueType::Float32;
  v.array.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    v.array[i].type = ValueType::Float32;
    v.array[i].f = values[i];
  }
  addValue(std::move(key), std::move(v));
}

void GgufWriter::addTensor(std::string name, std::vector<int64_t> ne, GgmlType type,
                           std::vector<uint8_t> bytes) {
  tensors_.push_back({std::move(name), std::move(ne), type, std::move(bytes)});
}

static Status validateValue(const Value &value, const std::string &where, int depth) {
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

Status GgufWriter::validate(const std::string &target) const {
  auto fail = [&](const std::string &problem) {
    return Status::error("Cannot write " + target + ": " + problem);
  };
  if (!isPowerOfTwo(alignment_) || alignment_ > UINT32_MAX)
    return fail("the alignment " + std::to_string(alignment_) +
                " is not a power of two that fits general.alignment (uint32). Use 32 (the "
                "default) or another power of two.");

  std::unordered_set<std::string_view> keys;
  for (const KeyValue &entry : metadata_) {
    if (!keys.insert(entry.key).second)
      return fail("the metadata key '" + entry.key +
                  "' was added twice. Add each key once.");
    if (Status status = validateValue(entry.value, "key '" + entry.key + "'", 0); !status.ok())
      return fail(status.message());
    if (entry.key == "general.alignment") {
      std::optional<uint64_t> declared =
          entry.value.isInteger() ? entry.value.asUInt() : std::nullopt;
      if (!declared || *declared != alignment_)
        return fail("general.alignment is set to " + entry.value.toString() +
                    ", but the writer aligns tensor data to " + std::to_string(alignment_) +
                    ". Pass the alignment to the GgufWriter constructor instead of adding the "
                    "key.");
    }
  }

  std::unordered_set<std::string_view> names;
  for (const PendingTensor &tensor : tensors_) {
    const std::string label = "tensor '" + tensor.name + "'";
    if (!names.insert(tensor.name).second)
      return fail(label + " was added twice. Give each tensor a unique name.");
    std::optional<GgmlTypeTraits> traits = ggmlTypeTraits(static_cast<uint32_t>(tensor.type));
    if (!traits)
      return fail(label + " has the unknown GGML type id " +
                  std::to_string(static_cast<uint32_t>(tensor.type)) + ".");
    if (tensor.ne.empty() || tensor.ne.size() > static_cast<size_t>(kGgufMaxDims))
      return fail(label + " has " + std::to_string(tensor.ne.size()) +
                  " dimensions; GGUF tensors have 1 to " + std::to_string(kGgufMaxDims) + ".");
    uint64_t elements = 1;
    for (int64_t extent : tensor.ne) {
      if (extent < 0)
        return fail(label + " has the negative dimension " + std::to_string(extent) + ".");
      if (__builtin_mul_overflow(elements, static_cast<uint64_t>(extent), &elements) ||
          elements > static_cast<uint64_t>(INT64_MAX))
        return fail(label + " has more elements than a 64-bit count holds.");
    }
    if (tensor.ne[0] % traits->blockSize != 0)
      return fail(label + " has a row length of " + std::to_string(tensor.ne[0]) +
                  ", which is not a multiple of the block size " +
                  std::to_string(traits->blockSize) + " of " + std::string(traits->name) + ".");
    uint64_t expected;
    if (__builtin_mul_overflow(elements / traits->blockSize,
                               static_cast<uint64_t>(traits->blockBytes), &expected))
      return fail(label + " is larger than a 64-bit byte count holds.");
    if (tensor.bytes.size() != expected) {
      std::string shape;
      for (int64_t extent : tensor.ne)
        shape += (shape.empty() ? "" : ", ") + std::to_string(extent);
      return fail(label + " has " + std::to_string(tensor.bytes.size()) +
                  " bytes of data, but its shape [" + shape + "] in type " +
                  std::string(traits->name) + " needs " + std::to_string(expected) + " bytes.");
    }
  }
  return Status::success();
}

// Writes the validated file: header, metadata (with general.alignment added
// when it is not the default), tensor infos, and the tensor data, each tensor
// starting on an alignment boundary.
bool GgufWriter::emit(detail::GgufSink &sink) const {
  bool hasAlignmentKey = false;
  for (const KeyValue &entry : metadata_)
    hasAlignmentKey |= entry.key == "general.alignment";
  bool addAlignmentKey = !hasAlignmentKey && alignment_ != kGgufDefaultAlignment;

  if (!sink.bytes("GGUF", 4) || !sink.scalar(kVersion) ||
      !sink.scalar<uint64_t>(tensors_.size()) ||
      !sink.scalar<uint64_t>(metadata_.size() + (addAlignmentKey ? 1 : 0)))
    return false;
  for (const KeyValue &entry : metadata_)
    if (!sink.string(entry.key) || !sink.scalar(static_cast<uint32_t>(entry.value.type)) ||
        !emitValue(sink, entry.value))
      return false;
  if (addAlignmentKey &&
      (!sink.string("general.alignment") ||
       !sink.scalar(static_cast<uint32_t>(ValueType::UInt32)) ||
       !sink.scalar(static_cast<uint32_t>(alignment_))))
    return false;

  uint64_t offset = 0;
  for (const PendingTensor &tensor : tensors_) {
    if (!sink.string(tensor.name) || !sink.scalar<uint32_t>(tensor.ne.size()))
      return false;
    for (int64_t extent : tensor.ne)
      if (!sink.scalar<uint64_t>(static_cast<uint64_t>(extent)))
        return false;
    if (!sink.scalar(static_cast<uint32_t>(tensor.type)) || !sink.scalar<uint64_t>(offset))
      return false;
    offset = alignUp(offset + tensor.bytes.size(), alignment_);
  }
  if (!sink.zeros(alignUp(sink.written, alignment_) - sink.written))
    return false;
  for (const PendingTensor &tensor : tensors_)
    if (!sink.bytes(tensor.bytes.data(), tensor.bytes.size()) ||
        !sink.zeros(alignUp(tensor.bytes.size(), alignment_) - tensor.bytes.size()))
      return false;
  return true;
}

StatusOr<std::vector<uint8_t>> GgufWriter::serialize() const {
  if (Status status = validate("the GGUF image"); !status.ok())
    return status;
  MemorySink sink;
  emit(sink); // writing to memory cannot fail
  return std::move(sink.image);
}

Status GgufWriter::write(const std::string &path) const {
  const std::string target = "the GGUF file '" + path + "'";
  if (Status status = validate(target); !status.ok())
    return status;

  const std::string temporary = path + ".tmp-" + std::to_string(::getpid());
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return Status::error("Cannot write " + target + ": creating '" + temporary +
                         "' failed: " + std::strerror(errno) +
                         ". Check that the directory exists and is writable.");
  FILE *file = fdopen(fd, "wb");
  if (!file) {
    int error = errno;
    ::close(fd);
    ::unlink(temporary.c_str());
    return Status::error("Cannot write " + target + ": " + std::strerror(error) +
                         ".");
  }

  FileSink sink(file);
  bool written = emit(sink);
  int error = written ? 0 : errno;
  if (written && std::fflush(file) != 0) {
    written = false;
    error = errno;
  }
  // The data must be on disk before the rename makes the file visible.
  if (written && ::fsync(fileno(file)) != 0) {
    written = false;
    error = errno;
  }
  if (std::fclose(file) != 0 && written) {
    written = false;
    error = errno;
  }
  if (!written) {
    ::unlink(temporary.c_str());
    return Status::error("Cannot write " + target + ": writing '" + temporary +
                         "' failed: " + std::strerror(error) +
                         ". Check the free space of the target file system.");
  }
  if (::rename(temporary.c_str(), path.c_str()) != 0) {
    error = errno;
    ::unlink(temporary.c_str());
    return Status::error("Cannot write " + target + ": renaming '" + temporary +
                         "' to it failed: " + std::strerror(error) + ".");
  }
  return Status::success();
}

} // namespace kt::gguf
