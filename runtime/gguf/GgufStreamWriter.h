// Writing GGUF v3 files whose tensor data is produced piecewise, possibly by
// several threads at once, so that a model far larger than memory can be
// written. This is the one place a GGUF header is encoded: GgufLayout fixes
// and encodes the header up front; GgufStreamWriter writes it and then puts
// each piece of tensor data straight at its final offset with pwrite.
// GgufWriter (every tensor in memory) is built on top of both.
//
// The file is written as `path.tmp-<pid>` and renamed to `path` by commit(),
// so an interrupted or failed run never leaves a half-written model behind.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kt::gguf {

// A tensor as the header declares it; its data is written separately.
struct TensorDeclaration {
  std::string name;
  std::vector<int64_t> ne; // GGML order: ne[0] is the row length
  GgmlType type = GgmlType::F32;
};

// The encoded header of a GGUF v3 file and where each tensor's data goes.
// Tensor data starts on an alignment boundary and is zero-padded to the next
// one, the last tensor included.
struct GgufLayout {
  // Checks the metadata and tensors and encodes the header. A key or tensor
  // name that repeats, a malformed value, a shape that does not fit its type
  // or an alignment that is not a power of two is an error reading
  // "Cannot write <target>: ...", so `target` names the output
  // ("the GGUF file 'x.gguf'"). An alignment other than 32 is recorded as
  // general.alignment (uint32) unless that key is present with the same value.
  static StatusOr<GgufLayout> create(const std::vector<KeyValue> &metadata,
                                     const std::vector<TensorDeclaration> &tensors,
                                     uint64_t alignment, const std::string &target);

  std::vector<uint8_t> header;         // from the magic to the start of the data section
  std::vector<uint64_t> tensorOffsets; // absolute file offsets, in declaration order
  std::vector<uint64_t> tensorBytes;   // data size of each tensor, from type and shape
  uint64_t fileSize = 0;
};

// How error messages name the file at `path`.
std::string ggufFileTarget(const std::string &path);

class GgufStreamWriter {
public:
  // Lays out the file that commit() will put at `path` (see GgufLayout::create).
  static StatusOr<GgufStreamWriter> create(std::string path, const std::vector<KeyValue> &metadata,
                                           const std::vector<TensorDeclaration> &tensors,
                                           uint64_t alignment = kGgufDefaultAlignment);
  GgufStreamWriter(std::string path, GgufLayout layout);

  GgufStreamWriter(GgufStreamWriter &&other) noexcept;
  GgufStreamWriter &operator=(GgufStreamWriter &&other) noexcept;
  GgufStreamWriter(const GgufStreamWriter &) = delete;
  GgufStreamWriter &operator=(const GgufStreamWriter &) = delete;
  // Removes the temporary file unless commit() succeeded.
  ~GgufStreamWriter();

  // Creates the temporary file next to the path, writes the header and sizes
  // the file to its final length (data regions read as zeros until written).
  Status open();
  // Writes `size` bytes of tensor `index`'s data starting `offsetInTensor`
  // bytes into it. Safe to call from several threads for disjoint ranges.
  Status writeTensorData(size_t index, uint64_t offsetInTensor, const void *data,
                         uint64_t size) const;
  // Flushes to disk and renames the temporary file to the final path.
  Status commit();
  // Closes and deletes the temporary file (also done by the destructor).
  void abort();

  const GgufLayout &layout() const { return layout_; }
  uint64_t fileSize() const { return layout_.fileSize; }
  uint64_t tensorBytes(size_t index) const { return layout_.tensorBytes[index]; }
  const std::string &path() const { return path_; }
  // Empty unless a temporary file exists.
  const std::string &temporaryPath() const { return temporaryPath_; }

private:
  // "Cannot write <file>: <action> failed: <errno text>.<advice>"
  Status ioError(const std::string &action, int error, const std::string &advice = "") const;

  GgufLayout layout_;
  std::string path_;
  std::string temporaryPath_;
  int fd_ = -1;
  bool committed_ = false;
};

} // namespace kt::gguf
