// Writes one GGUF v3 file whose tensor data is produced piecewise, possibly
// by several threads at once, so that a model far larger than memory can be
// written. The header (metadata and tensor infos) is fixed up front; data
// goes straight to its final offset with pwrite.
//
// runtime/gguf/GgufWriter holds every tensor's bytes in memory before it
// writes, which is fine for tests but not for a DeepSeek-V3-sized model.
//
// The file is written as `path.tmp-<pid>` and renamed to `path` by commit(),
// so an interrupted or failed run never leaves a half-written model behind.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kt::gen {

struct StreamTensorInfo {
  std::string name;
  std::vector<int64_t> ne; // GGML order
  gguf::GgmlType type = gguf::GgmlType::F32;
};

class GgufStreamWriter {
public:
  // Fails if a tensor's row length does not fit its type's block size, a
  // name or key repeats, or a tensor has more than four dimensions.
  static StatusOr<GgufStreamWriter> create(std::vector<gguf::KeyValue> metadata,
                                           std::vector<StreamTensorInfo> tensors,
                                           uint64_t alignment = 32);

  GgufStreamWriter(GgufStreamWriter &&other) noexcept;
  GgufStreamWriter &operator=(GgufStreamWriter &&other) noexcept;
  GgufStreamWriter(const GgufStreamWriter &) = delete;
  GgufStreamWriter &operator=(const GgufStreamWriter &) = delete;
  // Removes the temporary file unless commit() succeeded.
  ~GgufStreamWriter();

  // Creates the temporary file next to `path`, writes the header and sizes
  // the file to its final length (data regions read as zeros until written).
  Status open(const std::string &path);
  // Writes `size` bytes of tensor `index`'s data starting `offsetInTensor`
  // bytes into it. Safe to call from several threads for disjoint ranges.
  Status writeTensorData(size_t index, uint64_t offsetInTensor, const void *data,
                         uint64_t size) const;
  // Flushes to disk and renames the temporary file to the final path.
  Status commit();
  // Closes and deletes the temporary file (also done by the destructor).
  void abort();

  const std::vector<uint8_t> &header() const { return header_; }
  uint64_t fileSize() const { return fileSize_; }
  uint64_t tensorBytes(size_t index) const { return tensorBytes_[index]; }
  const std::string &path() const { return path_; }
  const std::string &temporaryPath() const { return temporaryPath_; }

  // The serialized form of a metadata value (without its key), as GGUF
  // stores it; exposed for tests.
  static Status appendValue(std::vector<uint8_t> &out, const gguf::Value &value);

private:
  GgufStreamWriter() = default;
  std::vector<uint8_t> header_;          // up to the start of the data section
  std::vector<uint64_t> tensorOffsets_;  // absolute file offsets
  std::vector<uint64_t> tensorBytes_;
  uint64_t fileSize_ = 0;
  std::string path_;
  std::string temporaryPath_;
  int fd_ = -1;
  bool committed_ = false;
};

} // namespace kt::gen
