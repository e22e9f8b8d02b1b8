// libFuzzer target: GgufFile::parse must refuse or accept any byte sequence
// without undefined behaviour, and what it accepts must be self-consistent:
// tensor data inside the input, and a parse -> write -> parse round trip that
// reproduces the metadata and tensors.
#include "runtime/gguf/GgufFile.h"
#include "runtime/gguf/GgufWriter.h"

#include <cstdint>
#include <cstring>

using namespace kt::gguf;

namespace {

// Violations of the reader's own guarantees; the sanitizers catch the rest.
void check(bool condition) {
  if (!condition)
    __builtin_trap();
}

// `enclosingArrays` counts the arrays around `value`; at most
// kGgufMaxArrayNesting arrays may nest, so an array has fewer around it.
uint64_t touchValue(const Value &value, int enclosingArrays) {
  check(value.type != ValueType::Array || enclosingArrays < kGgufMaxArrayNesting);
  uint64_t sum = static_cast<uint64_t>(value.type);
  sum += value.toString().size();
  if (std::optional<int64_t> i = value.asInt())
    sum += static_cast<uint64_t>(*i);
  if (std::optional<uint64_t> u = value.asUInt())
    sum += *u;
  if (std::optional<double> d = value.asDouble())
    sum += *d == *d ? 1 : 0;
  sum += value.s.size();
  if (value.type == ValueType::Array) {
    check(value.array.size() <= kGgufMaxArrayElements);
    for (const Value &element : value.array) {
      check(element.type == value.elementType);
      sum += touchValue(element, enclosingArrays + 1);
    }
  }
  return sum;
}

uint64_t touchFile(const GgufFile &file, const uint8_t *data, size_t size) {
  uint64_t sum = file.version() + file.fileSize();
  check(file.version() == 2 || file.version() == 3);
  check(file.fileSize() == size);
  uint64_t alignment = file.alignment();
  check(alignment != 0 && (alignment & (alignment - 1)) == 0);
  check(file.dataOffset() % alignment == 0);
  for (const KeyValue &entry : file.metadata()) {
    sum += entry.key.size() + touchValue(entry.value, 0);
    check(file.find(entry.key) == &entry.value); // keys are unique
  }
  for (const TensorInfo &tensor : file.tensors()) {
    check(!tensor.ne.empty() && tensor.ne.size() <= static_cast<size_t>(kGgufMaxDims));
    for (int64_t extent : tensor.ne)
      check(extent >= 0);
    sum += tensor.name.size() + static_cast<uint64_t>(tensor.elements()) +
           static_cast<uint64_t>(tensor.rows()) + static_cast<uint64_t>(tensor.type);
    check(tensor.offset % alignment == 0);
    check(tensor.data >= data && tensor.nbytes <= size &&
          tensor.data - data <= static_cast<ptrdiff_t>(size - tensor.nbytes));
    std::optional<uint64_t> rowBytes = ggmlRowBytes(tensor.type, tensor.ne[0]);
    check(rowBytes.has_value());
    check(tensor.nbytes == *rowBytes * static_cast<uint64_t>(tensor.rows()) || tensor.ne[0] == 0);
    for (uint64_t i = 0; i < tensor.nbytes; ++i) // in bounds, or ASan reports it
      sum += tensor.data[i];
    check(tensor.fileIndex == 0);
  }
  return sum;
}

// What the reader accepted, the writer must write and the reader read back.
void checkRoundTrip(const GgufFile &file) {
  GgufWriter writer(file.alignment());
  for (const KeyValue &entry : file.metadata())
    writer.addValue(entry.key, entry.value);
  for (const TensorInfo &tensor : file.tensors())
    writer.addTensor(tensor.name, tensor.ne, tensor.type,
                     std::vector<uint8_t>(tensor.data, tensor.data + tensor.nbytes));
  kt::StatusOr<std::vector<uint8_t>> image = writer.serialize();
  check(image.ok());
  kt::StatusOr<std::unique_ptr<GgufFile>> again =
      GgufFile::parse(image->data(), image->size(), "round-trip.gguf");
  check(again.ok());
  const GgufFile &copy = **again;
  check(copy.alignment() == file.alignment());
  size_t addedAlignmentKey = copy.metadata().size() - file.metadata().size();
  check(addedAlignmentKey <= 1);
  for (size_t i = 0; i < file.metadata().size(); ++i) {
    check(copy.metadata()[i].key == file.metadata()[i].key);
    check(copy.metadata()[i].value.toString(SIZE_MAX) ==
          file.metadata()[i].value.toString(SIZE_MAX));
  }
  check(copy.tensors().size() == file.tensors().size());
  for (size_t i = 0; i < file.tensors().size(); ++i) {
    const TensorInfo &a = file.tensors()[i];
    const TensorInfo &b = copy.tensors()[i];
    check(a.name == b.name && a.ne == b.ne && a.type == b.type && a.nbytes == b.nbytes);
    check(a.nbytes == 0 || std::memcmp(a.data, b.data, a.nbytes) == 0);
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kt::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::parse(data, size, "fuzz.gguf");
  if (!file.ok()) {
    // Every refusal explains itself and names the file.
    check(file.message().find("'fuzz.gguf'") != std::string::npos);
    return 0;
  }
  volatile uint64_t sink = touchFile(**file, data, size);
  (void)sink;
  // A file without tensors may declare an alignment of up to 2^31; writing it
  // back would pad to that size, which tests nothing but the allocator.
  if ((**file).alignment() <= (1u << 16))
    checkRoundTrip(**file);
  return 0;
}
