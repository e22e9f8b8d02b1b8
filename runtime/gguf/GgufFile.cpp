// GGUF layout (all little-endian), versions 2 and 3 being identical on disk:
//   "GGUF" u32 version, u64 tensor_count, u64 kv_count
//   kv_count x { string key, u32 value_type, value }
//   tensor_count x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset }
//   padding to general.alignment, then the data section (offsets are relative to it)
// A string is u64 length + bytes; an array is u32 element_type, u64 count, elements.
#include "runtime/gguf/GgufFile.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_set>

namespace kt::gguf {
namespace {

constexpr uint32_t kMaxValueTypeId = static_cast<uint32_t>(ValueType::Float64);
constexpr size_t kHeaderBytes = 4 + 4 + 8 + 8;
// Counts read from the file are only trusted this far before elements arrive.
constexpr uint64_t kInitialReserve = 4096;

const char kChecksumAdvice[] =
    " Compare the file's sha256 with the checksum its publisher lists and "
    "download it again if they differ.";

std::string quoted(std::string_view text) {
  std::string out = "'";
  out.append(text);
  out += "'";
  return out;
}

Status truncatedError(const std::string &file, const std::string &what,
                      uint64_t neededSize, uint64_t actualSize) {
  return Status::error("The GGUF file " + quoted(file) + " is truncated: " + what +
                       " needs the file to be at least " + std::to_string(neededSize) +
                       " bytes, but it has " + std::to_string(actualSize) + " bytes." +
                       kChecksumAdvice);
}

Status corruptError(const std::string &file, const std::string &detail) {
  return Status::error("The GGUF file " + quoted(file) + " is corrupt: " + detail + "." +
                       kChecksumAdvice);
}

bool isPowerOfTwo(uint64_t value) { return value != 0 && (value & (value - 1)) == 0; }

bool checkedAdd(uint64_t a, uint64_t b, uint64_t &out) {
  return !__builtin_add_overflow(a, b, &out);
}
bool checkedMul(uint64_t a, uint64_t b, uint64_t &out) {
  return !__builtin_mul_overflow(a, b, &out);
}

// Smallest encoding of one value of `type`, to bound element counts by the
// bytes that remain before anything is allocated.
uint64_t minEncodedBytes(ValueType type) {
  switch (type) {
  case ValueType::UInt8:
  case ValueType::Int8:
  case ValueType::Bool:
    return 1;
  case ValueType::UInt16:
  case ValueType::Int16:
    return 2;
  case ValueType::UInt32:
  case ValueType::Int32:
  case ValueType::Float32:
    return 4;
  case ValueType::UInt64:
  case ValueType::Int64:
  case ValueType::Float64:
  case ValueType::String:
    return 8;
  case ValueType::Array:
    return 12;
  }
  return 1;
}

// Where a value sits, rendered only when an error needs it: "element 3 of
// the value of key 'tokenizer.ggml.tokens'".
struct ValuePath {
  const ValuePath *parent = nullptr;
  std::string_view key;
  uint64_t index = 0;

  std::string describe() const {
    if (!parent)
      return "the value of key " + quoted(key);
    return "element " + std::to_string(index) + " of " + parent->describe();
  }
};

class Parser {
public:
  Parser(const uint8_t *data, size_t size, const std::string &name)
      : data_(data), size_(size), name_(name) {}

  struct Result {
    uint32_t version = 0;
    uint64_t alignment = kGgufDefaultAlignment;
    uint64_t dataOffset = 0;
    std::vector<KeyValue> metadata;
    std::vector<TensorInfo> tensors;
  };

  Status run(Result &result);

private:
  // Fails with a "truncated" message unless `count` more bytes are available;
  // `what` renders the item being read and is called only on failure.
  template <typename Describe> Status require(uint64_t count, const Describe &what) const {
    if (count <= size_ - pos_)
      return Status::success();
    return truncated(pos_, count, what);
  }

  // The error for an item of `count` bytes at `start` that runs past the end.
  template <typename Describe>
  Status truncated(uint64_t start, uint64_t count, const Describe &what) const {
    uint64_t needed;
    if (!checkedAdd(start, count, needed))
      needed = UINT64_MAX;
    return truncatedError(name_, what() + " at byte offset " + std::to_string(start), needed,
                          size_);
  }

  static uint64_t saturatingMul(uint64_t a, uint64_t b) {
    uint64_t product;
    return checkedMul(a, b, product) ? product : UINT64_MAX;
  }

  template <typename T, typename Describe> Status read(T &out, const Describe &what) {
    if (Status status = require(sizeof(T), what); !status.ok())
      return status;
    std::memcpy(&out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::success();
  }

  template <typename Describe> Status readString(std::string &out, const Describe &what) {
    uint64_t length;
    if (Status status = read(length, what); !status.ok())
      return status;
    if (length > size_ - pos_)
      return truncated(pos_ - sizeof(length), sizeof(length) + std::min(length, UINT64_MAX - 8),
                       [&] { return what() + " (a string of " + std::to_string(length) + " bytes)"; });
    if (length > kGgufMaxStringBytes)
      return corruptError(name_, what() + " claims a string of " + std::to_string(length) +
                                     " bytes, more than the " +
                                     std::to_string(kGgufMaxStringBytes) +
                                     " bytes this reader accepts");
    out.assign(reinterpret_cast<const char *>(data_ + pos_), length);
    pos_ += length;
    return Status::success();
  }

  Status readValue(ValueType type, Value &value, const ValuePath &path, int depth);
  Status readScalar(ValueType type, Value &value, const ValuePath &path);
  Status readHeader(Result &result, uint64_t &tensorCount, uint64_t &kvCount);
  Status readMetadata(Result &result, uint64_t kvCount);
  Status readAlignment(Result &result);
  Status readTensorInfos(Result &result, uint64_t tensorCount);
  Status checkTensors(Result &result);

  const uint8_t *data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const std::string &name_;
};

Status Parser::readScalar(ValueType type, Value &value, const ValuePath &path) {
  auto what = [&] { return path.describe(); };
  auto readInto = [&](auto raw, auto store) -> Status {
    if (Status status = read(raw, what); !status.ok())
      return status;
    store(raw);
    return Status::success();
  };
  switch (type) {
  case ValueType::UInt8:
    return readInto(uint8_t{}, [&](uint8_t v) { value.u = v; });
  case ValueType::Int8:
    return readInto(int8_t{}, [&](int8_t v) { value.i = v; });
  case ValueType::UInt16:
    return readInto(uint16_t{}, [&](uint16_t v) { value.u = v; });
  case ValueType::Int16:
    return readInto(int16_t{}, [&](int16_t v) { value.i = v; });
  case ValueType::UInt32:
    return readInto(uint32_t{}, [&](uint32_t v) { value.u = v; });
  case ValueType::Int32:
    return readInto(int32_t{}, [&](int32_t v) { value.i = v; });
  case ValueType::UInt64:
    return readInto(uint64_t{}, [&](uint64_t v) { value.u = v; });
  case ValueType::Int64:
    return readInto(int64_t{}, [&](int64_t v) { value.i = v; });
  case ValueType::Float32:
    return readInto(float{}, [&](float v) { value.f = v; });
  case ValueType::Float64:
    return readInto(double{}, [&](double v) { value.f = v; });
  case ValueType::Bool: {
    uint8_t raw;
    if (Status status = read(raw, what); !status.ok())
      return status;
    if (raw > 1)
      return corruptError(name_, path.describe() + " is a bool stored as " +
                                     std::to_string(raw) + " (only 0 and 1 are valid)");
    value.u = raw;
    return Status::success();
  }
  case ValueType::String:
    return readString(value.s, what);
  case ValueType::Array:
    break;
  }
  return corruptError(name_, path.describe() + " has an unreadable type");
}

Status Parser::readValue(ValueType type, Value &value, const ValuePath &path, int depth) {
  value.type = type;
  if (type != ValueType::Array)
    return readScalar(type, value, path);

  auto what = [&] { return "the array header of " + path.describe(); };
  uint32_t elementTypeId;
  uint64_t count;
  if (Status status = read(elementTypeId, what); !status.ok())
    return status;
  if (elementTypeId > kMaxValueTypeId)
    return corruptError(name_, path.describe() + " is an array whose element type id is " +
                                   std::to_string(elementTypeId) +
                                   ", which GGUF does not define (valid ids are 0 to " +
                                   std::to_string(kMaxValueTypeId) + ")");
  ValueType elementType = static_cast<ValueType>(elementTypeId);
  if (elementType == ValueType::Array && depth + 1 >= kGgufMaxArrayNesting)
    return corruptError(name_, path.describe() + " nests arrays more than " +
                                   std::to_string(kGgufMaxArrayNesting) +
                                   " levels deep, more than this reader accepts");
  if (Status status = read(count, what); !status.ok())
    return status;
  uint64_t elementBytes = minEncodedBytes(elementType);
  if (count > (size_ - pos_) / elementBytes) {
    return truncated(pos_, saturatingMul(count, elementBytes), [&] {
      return path.describe() + " (an array of " + std::to_string(count) + " " +
             std::string(valueTypeName(elementType)) + " elements)";
    });
  }
  if (count > kGgufMaxArrayElements)
    return corruptError(name_, path.describe() + " claims an array of " +
                                   std::to_string(count) + " elements, more than the " +
                                   std::to_string(kGgufMaxArrayElements) +
                                   " this reader accepts");
  value.elementType = elementType;
  // Grow as elements are read, so a corrupt count fails before it costs memory.
  value.array.reserve(std::min<uint64_t>(count, kInitialReserve));
  for (uint64_t index = 0; index < count; ++index) {
    ValuePath elementPath{&path, {}, index};
    if (Status status =
            readValue(elementType, value.array.emplace_back(), elementPath, depth + 1);
        !status.ok())
      return status;
  }
  return Status::success();
}

Status Parser::readHeader(Result &result, uint64_t &tensorCount, uint64_t &kvCount) {
  if (size_ < 4 || std::memcmp(data_, "GGUF", 4) != 0) {
    std::string_view start(reinterpret_cast<const char *>(data_), std::min<size_t>(size_, 64));
    if (start.rfind("version https://git-lfs", 0) == 0)
      return Status::error("The file " + quoted(name_) +
                           " is a Git LFS pointer, not the GGUF file itself. Download the "
                           "real file (for example with 'git lfs pull' or from the "
                           "publisher's download link).");
    if (size_ == 0)
      return truncatedError(name_, "the GGUF header", kHeaderBytes, 0);
    if (size_ < 4 && std::memcmp(data_, "GGUF", size_) == 0)
      return truncatedError(name_, "the GGUF header", kHeaderBytes, size_);
    std::string hex;
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < std::min<size_t>(size_, 4); ++i) {
      if (i)
        hex += ' ';
      hex += digits[data_[i] >> 4];
      hex += digits[data_[i] & 15];
    }
    return Status::error("The file " + quoted(name_) +
                         " is not a GGUF file: it starts with the bytes " + hex +
                         " instead of 'GGUF'. Pass a .gguf model file; if this should be "
                         "one, it is damaged." + kChecksumAdvice);
  }
  pos_ = 4;
  auto headerWhat = [] { return std::string("the GGUF header"); };
  uint32_t version;
  if (Status status = read(version, headerWhat); !status.ok())
    return status;
  // A big-endian file has its small version number in the high bytes.
  uint32_t swapped = __builtin_bswap32(version);
  if ((version & 0xFFFF) == 0 && swapped != 0 && swapped <= 0xFFFF)
    return Status::error("The GGUF file " + quoted(name_) + " is stored big-endian (version " +
                         std::to_string(swapped) +
                         " in swapped byte order); this reader supports only little-endian "
                         "GGUF files. Download the little-endian release of the model or "
                         "convert it with llama.cpp's gguf-py/gguf/scripts/"
                         "gguf_convert_endian.py.");
  if (version == 1)
    return Status::error("The GGUF file " + quoted(name_) +
                         " is GGUF version 1, an early format from before the format was "
                         "finalized that this reader does not support (it reads versions 2 "
                         "and 3). Download a current version of the model or convert it "
                         "again with a recent llama.cpp.");
  if (version != 2 && version != 3)
    return Status::error("The GGUF file " + quoted(name_) + " has GGUF version " +
                         std::to_string(version) +
                         ", which this reader does not support (it reads versions 2 and 3)." +
                         (version > 3 ? " The file may come from a newer tool; convert it "
                                        "with a tool that writes version 3."
                                      : std::string(" The file is probably corrupt.") +
                                            kChecksumAdvice));
  result.version = version;
  if (Status status = read(tensorCount, headerWhat); !status.ok())
    return status;
  return read(kvCount, headerWhat);
}

Status Parser::readMetadata(Result &result, uint64_t kvCount) {
  // Each entry takes at least a key length, a type id and a one-byte value.
  constexpr uint64_t kMinEntryBytes = 8 + 4 + 1;
  if (kvCount > (size_ - pos_) / kMinEntryBytes)
    return truncated(pos_, saturatingMul(kvCount, kMinEntryBytes), [&] {
      return "the metadata (" + std::to_string(kvCount) + " entries)";
    });
  result.metadata.reserve(std::min<uint64_t>(kvCount, kInitialReserve));
  for (uint64_t index = 0; index < kvCount; ++index) {
    KeyValue &entry = result.metadata.emplace_back();
    if (Status status = readString(entry.key, [&] {
          return "the key of metadata entry #" + std::to_string(index);
        });
        !status.ok())
      return status;
    uint32_t typeId;
    if (Status status =
            read(typeId, [&] { return "the value type of key " + quoted(entry.key); });
        !status.ok())
      return status;
    if (typeId > kMaxValueTypeId)
      return corruptError(name_, "key " + quoted(entry.key) + " has value type id " +
                                     std::to_string(typeId) +
                                     ", which GGUF does not define (valid ids are 0 to " +
                                     std::to_string(kMaxValueTypeId) + ")");
    ValuePath path{nullptr, entry.key, 0};
    if (Status status = readValue(static_cast<ValueType>(typeId), entry.value, path, 0);
        !status.ok())
      return status;
  }

  std::unordered_set<std::string_view> keys;
  for (const KeyValue &entry : result.metadata)
    if (!keys.insert(entry.key).second)
      return corruptError(name_, "the metadata key " + quoted(entry.key) +
                                     " appears more than once (duplicate key)");
  return Status::success();
}

Status Parser::readAlignment(Result &result) {
  for (const KeyValue &entry : result.metadata) {
    if (entry.key != "general.alignment")
      continue;
    std::optional<uint64_t> alignment =
        entry.value.isInteger() ? entry.value.asUInt() : std::nullopt;
    if (!alignment)
      return corruptError(name_, "general.alignment must be an unsigned integer, but it is " +
                                     std::string(valueTypeName(entry.value.type)) + " " +
                                     entry.value.toString());
    // GGML stores the alignment as a uint32.
    if (!isPowerOfTwo(*alignment) || *alignment > UINT32_MAX)
      return corruptError(name_, "general.alignment is " + std::to_string(*alignment) +
                                     ", but it must be a non-zero power of two that fits in "
                                     "32 bits");
    result.alignment = *alignment;
  }
  return Status::success();
}

Status Parser::readTensorInfos(Result &result, uint64_t tensorCount) {
  // Name length, n_dims, one dimension, type and offset.
  constexpr uint64_t kMinInfoBytes = 8 + 4 + 8 + 4 + 8;
  if (tensorCount > (size_ - pos_) / kMinInfoBytes)
    return truncated(pos_, saturatingMul(tensorCount, kMinInfoBytes), [&] {
      return "the tensor infos (" + std::to_string(tensorCount) + " tensors)";
    });
  result.tensors.reserve(std::min<uint64_t>(tensorCount, kInitialReserve));
  for (uint64_t index = 0; index < tensorCount; ++index) {
    TensorInfo &tensor = result.tensors.emplace_back();
    if (Status status = readString(tensor.name, [&] {
          return "the name of tensor #" + std::to_string(index);
        });
        !status.ok())
      return status;
    auto what = [&] { return "the info of tensor " + quoted(tensor.name); };
    uint32_t dims;
    if (Status status = read(dims, what); !status.ok())
      return status;
    if (dims < 1 || dims > static_cast<uint32_t>(kGgufMaxDims))
      return corruptError(name_, "tensor " + quoted(tensor.name) + " has " +
                                     std::to_string(dims) +
                                     " dimensions, but GGUF tensors have 1 to " +
                                     std::to_string(kGgufMaxDims));
    tensor.ne.resize(dims);
    for (uint32_t d = 0; d < dims; ++d) {
      uint64_t extent;
      if (Status status = read(extent, what); !status.ok())
        return status;
      if (extent > static_cast<uint64_t>(INT64_MAX))
        return corruptError(name_, "dimension " + std::to_string(d) + " of tensor " +
                                       quoted(tensor.name) + " is negative (" +
                                       std::to_string(static_cast<int64_t>(extent)) + ")");
      tensor.ne[d] = static_cast<int64_t>(extent);
    }
    uint32_t typeId;
    if (Status status = read(typeId, what); !status.ok())
      return status;
    std::optional<GgmlTypeTraits> traits = ggmlTypeTraits(typeId);
    if (!traits)
      return corruptError(name_, "tensor " + quoted(tensor.name) + " has type id " +
                                     std::to_string(typeId) +
                                     ", which is not a GGML type this reader knows (it may be "
                                     "a retired type or one newer than this reader)");
    tensor.type = traits->type;
    if (Status status = read(tensor.offset, what); !status.ok())
      return status;
  }
  return Status::success();
}

Status Parser::checkTensors(Result &result) {
  uint64_t dataOffset;
  if (!checkedAdd(pos_, result.alignment - 1, dataOffset))
    return corruptError(name_, "general.alignment " + std::to_string(result.alignment) +
                                   " places the data section beyond any possible file size");
  dataOffset &= ~(result.alignment - 1);
  result.dataOffset = dataOffset;
  // Files without tensors may end before the padding; others need their data section.
  if (!result.tensors.empty() && dataOffset > size_)
    return truncatedError(name_,
                          "the data section (after the tensor infos, padded to "
                          "general.alignment " +
                              std::to_string(result.alignment) + ")",
                          dataOffset, size_);

  uint64_t largestEnd = 0;
  const TensorInfo *largestEndTensor = nullptr;
  for (TensorInfo &tensor : result.tensors) {
    const GgmlTypeTraits &traits = ggmlTypeTraits(tensor.type);
    const std::string label = "tensor " + quoted(tensor.name);
    if (tensor.ne[0] % traits.blockSize != 0)
      return corruptError(name_, label + " has a row length of " + std::to_string(tensor.ne[0]) +
                                     ", which is not a multiple of the block size " +
                                     std::to_string(traits.blockSize) + " of its type " +
                                     std::string(traits.name));
    uint64_t elements = 1;
    for (int64_t extent : tensor.ne)
      if (!checkedMul(elements, static_cast<uint64_t>(extent), elements) ||
          elements > static_cast<uint64_t>(INT64_MAX))
        return corruptError(name_, label + " has a shape whose element count overflows a "
                                           "64-bit integer");
    uint64_t nbytes;
    if (!checkedMul(elements / traits.blockSize, static_cast<uint64_t>(traits.blockBytes),
                    nbytes))
      return corruptError(name_, label + " has a byte size that overflows a 64-bit integer");
    tensor.nbytes = nbytes;
    if (tensor.offset % result.alignment != 0)
      return corruptError(name_, label + " starts at data offset " +
                                     std::to_string(tensor.offset) +
                                     ", which is not a multiple of the alignment " +
                                     std::to_string(result.alignment));
    uint64_t start, end;
    if (!checkedAdd(dataOffset, tensor.offset, start) || !checkedAdd(start, nbytes, end))
      return corruptError(name_, label + " has a data offset (" + std::to_string(tensor.offset) +
                                     ") beyond any possible file size");
    if (end > largestEnd) {
      largestEnd = end;
      largestEndTensor = &tensor;
    }
  }
  if (largestEnd > size_)
    return truncatedError(name_,
                          "the data of tensor " + quoted(largestEndTensor->name) +
                              " (ending at byte " + std::to_string(largestEnd) + ")",
                          largestEnd, size_);
  for (TensorInfo &tensor : result.tensors)
    tensor.data = data_ + dataOffset + tensor.offset;

  std::unordered_set<std::string_view> names;
  for (const TensorInfo &tensor : result.tensors)
    if (!names.insert(tensor.name).second)
      return corruptError(name_, "the tensor name " + quoted(tensor.name) +
                                     " appears more than once (duplicate tensor)");

  std::vector<const TensorInfo *> byOffset;
  for (const TensorInfo &tensor : result.tensors)
    if (tensor.nbytes > 0)
      byOffset.push_back(&tensor);
  std::sort(byOffset.begin(), byOffset.end(),
            [](const TensorInfo *a, const TensorInfo *b) { return a->offset < b->offset; });
  for (size_t i = 1; i < byOffset.size(); ++i) {
    const TensorInfo &previous = *byOffset[i - 1];
    const TensorInfo &current = *byOffset[i];
    if (previous.offset + previous.nbytes > current.offset)
      return corruptError(name_, "the data of tensors " + quoted(previous.name) + " (bytes " +
                                     std::to_string(previous.offset) + " to " +
                                     std::to_string(previous.offset + previous.nbytes) +
                                     ") and " + quoted(current.name) + " (from byte " +
                                     std::to_string(current.offset) + ") overlap");
  }
  return Status::success();
}

Status Parser::run(Result &result) {
  uint64_t tensorCount = 0, kvCount = 0;
  if (Status status = readHeader(result, tensorCount, kvCount); !status.ok())
    return status;
  if (Status status = readMetadata(result, kvCount); !status.ok())
    return status;
  if (Status status = readAlignment(result); !status.ok())
    return status;
  if (Status status = readTensorInfos(result, tensorCount); !status.ok())
    return status;
  return checkTensors(result);
}

std::string formatFloat(double value, bool single) {
  if (std::isnan(value))
    return "nan";
  if (std::isinf(value))
    return value < 0 ? "-inf" : "inf";
  char buffer[64];
  std::to_chars_result result =
      single ? std::to_chars(buffer, buffer + sizeof(buffer), static_cast<float>(value))
             : std::to_chars(buffer, buffer + sizeof(buffer), value);
  std::string text(buffer, result.ptr);
  // Keep floats recognisable as floats: "1.0", not "1".
  if (text.find_first_of(".e") == std::string::npos)
    text += ".0";
  return text;
}

void appendQuoted(std::string &out, const std::string &text) {
  static const char digits[] = "0123456789abcdef";
  out += '"';
  for (unsigned char c : text) {
    switch (c) {
    case '"':
      out += "\\\"";
      break;
    case '\\':
      out += "\\\\";
      break;
    case '\n':
      out += "\\n";
      break;
    case '\r':
      out += "\\r";
      break;
    case '\t':
      out += "\\t";
      break;
    default:
      if (c < 0x20 || c == 0x7f) {
        out += "\\x";
        out += digits[c >> 4];
        out += digits[c & 15];
      } else {
        out += static_cast<char>(c);
      }
    }
  }
  out += '"';
}

void appendValue(std::string &out, const Value &value, size_t maxElements) {
  switch (value.type) {
  case ValueType::UInt8:
  case ValueType::UInt16:
  case ValueType::UInt32:
  case ValueType::UInt64:
    out += std::to_string(value.u);
    return;
  case ValueType::Int8:
  case ValueType::Int16:
  case ValueType::Int32:
  case ValueType::Int64:
    out += std::to_string(value.i);
    return;
  case ValueType::Float32:
    out += formatFloat(value.f, true);
    return;
  case ValueType::Float64:
    out += formatFloat(value.f, false);
    return;
  case ValueType::Bool:
    out += value.u ? "true" : "false";
    return;
  case ValueType::String:
    appendQuoted(out, value.s);
    return;
  case ValueType::Array: {
    out += '[';
    size_t shown = std::min(maxElements, value.array.size());
    for (size_t i = 0; i < shown; ++i) {
      if (i)
        out += ", ";
      appendValue(out, value.array[i], maxElements);
    }
    if (shown < value.array.size()) {
      if (shown)
        out += ", ";
      out += "... " + std::to_string(value.array.size() - shown) + " more";
    }
    out += ']';
    return;
  }
  }
  out += "<invalid value type " + std::to_string(static_cast<uint32_t>(value.type)) + ">";
}

} // namespace

std::string_view valueTypeName(ValueType type) {
  switch (type) {
  case ValueType::UInt8:
    return "uint8";
  case ValueType::Int8:
    return "int8";
  case ValueType::UInt16:
    return "uint16";
  case ValueType::Int16:
    return "int16";
  case ValueType::UInt32:
    return "uint32";
  case ValueType::Int32:
    return "int32";
  case ValueType::Float32:
    return "float32";
  case ValueType::Bool:
    return "bool";
  case ValueType::String:
    return "string";
  case ValueType::Array:
    return "array";
  case ValueType::UInt64:
    return "uint64";
  case ValueType::Int64:
    return "int64";
  case ValueType::Float64:
    return "float64";
  }
  return "unknown";
}

Value stringValue(std::string text) {
  Value value;
  value.type = ValueType::String;
  value.s = std::move(text);
  return value;
}
Value unsignedValue(uint64_t number, ValueType type) {
  Value value;
  value.type = type;
  value.u = number;
  return value;
}
Value signedValue(int64_t number, ValueType type) {
  Value value;
  value.type = type;
  value.i = number;
  return value;
}
Value realValue(double number, ValueType type) {
  Value value;
  value.type = type;
  value.f = number;
  return value;
}
Value boolValue(bool flag) { return unsignedValue(flag ? 1 : 0, ValueType::Bool); }
Value stringArrayValue(const std::vector<std::string> &items) {
  Value value;
  value.type = ValueType::Array;
  value.elementType = ValueType::String;
  value.array.reserve(items.size());
  for (const std::string &item : items)
    value.array.push_back(stringValue(item));
  return value;
}
Value int32ArrayValue(const std::vector<int32_t> &items) {
  Value value;
  value.type = ValueType::Array;
  value.elementType = ValueType::Int32;
  value.array.reserve(items.size());
  for (int32_t item : items)
    value.array.push_back(signedValue(item, ValueType::Int32));
  return value;
}

bool Value::isInteger() const {
  switch (type) {
  case ValueType::UInt8:
  case ValueType::Int8:
  case ValueType::UInt16:
  case ValueType::Int16:
  case ValueType::UInt32:
  case ValueType::Int32:
  case ValueType::UInt64:
  case ValueType::Int64:
    return true;
  default:
    return false;
  }
}

static bool isUnsignedStorage(ValueType type) {
  return type == ValueType::UInt8 || type == ValueType::UInt16 || type == ValueType::UInt32 ||
         type == ValueType::UInt64 || type == ValueType::Bool;
}

std::optional<int64_t> Value::asInt() const {
  if (isUnsignedStorage(type)) {
    if (u > static_cast<uint64_t>(INT64_MAX))
      return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (isInteger())
    return i;
  return std::nullopt;
}

std::optional<uint64_t> Value::asUInt() const {
  if (isUnsignedStorage(type))
    return u;
  if (isInteger()) {
    if (i < 0)
      return std::nullopt;
    return static_cast<uint64_t>(i);
  }
  return std::nullopt;
}

std::optional<double> Value::asDouble() const {
  if (type == ValueType::Float32 || type == ValueType::Float64)
    return f;
  if (!isInteger())
    return std::nullopt;
  if (isUnsignedStorage(type))
    return static_cast<double>(u);
  return static_cast<double>(i);
}

std::string Value::toString(size_t maxElements) const {
  std::string out;
  appendValue(out, *this, maxElements);
  return out;
}

int64_t TensorInfo::elements() const {
  int64_t count = 1;
  for (int64_t extent : ne)
    count *= extent;
  return count;
}

int64_t TensorInfo::rows() const {
  if (ne.empty() || ne[0] == 0)
    return 0;
  return elements() / ne[0];
}

StatusOr<std::unique_ptr<GgufFile>> GgufFile::parse(const uint8_t *data, size_t size,
                                                    const std::string &displayName) {
  Parser::Result result;
  Parser parser(data, size, displayName);
  if (Status status = parser.run(result); !status.ok())
    return status;
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = displayName;
  file->version_ = result.version;
  file->alignment_ = result.alignment;
  file->dataOffset_ = result.dataOffset;
  file->base_ = data;
  file->size_ = size;
  file->metadata_ = std::move(result.metadata);
  file->tensors_ = std::move(result.tensors);
  return file;
}

StatusOr<std::unique_ptr<GgufFile>> GgufFile::open(const std::string &path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int error = errno;
    if (error == ENOENT)
      return Status::error("The GGUF file " + quoted(path) +
                           " does not exist. Check the path and the file name.");
    return Status::error("Cannot open the GGUF file " + quoted(path) + ": " +
                         std::strerror(error) +
                         (error == EACCES ? ". Make the file readable for this user." : "."));
  }
  struct stat info;
  if (fstat(fd, &info) != 0) {
    int error = errno;
    ::close(fd);
    return Status::error("Cannot read the size of the GGUF file " + quoted(path) + ": " +
                         std::strerror(error) + ".");
  }
  if (S_ISDIR(info.st_mode)) {
    ::close(fd);
    return Status::error(quoted(path) +
                         " is a directory, not a GGUF file. Pass the .gguf file itself, or "
                         "open the directory as a model (it is then searched for the model's "
                         ".gguf files).");
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    return Status::error(quoted(path) +
                         " is not a regular file, so it cannot be mapped as a GGUF file. Pass "
                         "the path of a .gguf file.");
  }
  size_t size = static_cast<size_t>(info.st_size);
  void *mapping = nullptr;
  if (size > 0) {
    mapping = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping == MAP_FAILED) {
      int error = errno;
      ::close(fd);
      return Status::error("Cannot memory-map the GGUF file " + quoted(path) + " (" +
                           std::to_string(size) + " bytes): " + std::strerror(error) + ".");
    }
  }
  ::close(fd); // the mapping keeps the file's data reachable

  static const uint8_t kEmpty = 0;
  const uint8_t *base = mapping ? static_cast<const uint8_t *>(mapping) : &kEmpty;
  StatusOr<std::unique_ptr<GgufFile>> parsed = parse(base, size, path);
  if (!parsed.ok()) {
    if (mapping)
      munmap(mapping, size);
    return parsed.status();
  }
  parsed.value()->mapping_ = mapping;
  return parsed;
}

GgufFile::~GgufFile() {
  if (mapping_)
    munmap(mapping_, size_);
}

const Value *GgufFile::find(std::string_view key) const {
  for (const KeyValue &entry : metadata_)
    if (entry.key == key)
      return &entry.value;
  return nullptr;
}

} // namespace kt::gguf
