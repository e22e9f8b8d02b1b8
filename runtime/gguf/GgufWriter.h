// Writing small GGUF v3 files whose tensors are all in memory: used by tests
// and small tools. The header is encoded by GgufLayout and the file written by
// GgufStreamWriter (runtime/gguf/GgufStreamWriter.h), which also writes models
// larger than memory.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/gguf/GgufStreamWriter.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kt::gguf {

class GgufWriter {
public:
  // `alignment` must be a power of two; a value other than 32 is recorded as
  // general.alignment (uint32) unless that key was added with the same value.
  explicit GgufWriter(uint64_t alignment = 32) : alignment_(alignment) {}

  // Metadata, written in the order added. A key added twice is an error at write().
  void addValue(std::string key, Value value);
  void addString(std::string key, std::string value);
  void addUInt32(std::string key, uint32_t value);
  void addInt32(std::string key, int32_t value);
  void addUInt64(std::string key, uint64_t value);
  void addFloat32(std::string key, float value);
  void addBool(std::string key, bool value);
  void addStringArray(std::string key, const std::vector<std::string> &values);
  void addInt32Array(std::string key, const std::vector<int32_t> &values);
  void addFloat32Array(std::string key, const std::vector<float> &values);

  // A tensor whose bytes are already encoded in `type` (size must match the
  // shape). `ne` is in GGML order (ne[0] = row length).
  void addTensor(std::string name, std::vector<int64_t> ne, GgmlType type,
                 std::vector<uint8_t> bytes);

  // Writes the file atomically: to `path + ".tmp-<pid>"`, then renamed, so a
  // failed or interrupted write never leaves a half-written model behind.
  Status write(const std::string &path) const;
  // The file image in memory (tests, fuzz corpora).
  StatusOr<std::vector<uint8_t>> serialize() const;

private:
  // The layout of the file, after checking everything write() and
  // serialize() would refuse; `target` names the output in messages.
  StatusOr<GgufLayout> layOut(const std::string &target) const;

  uint64_t alignment_;
  std::vector<KeyValue> metadata_;
  std::vector<TensorDeclaration> tensors_;
  std::vector<std::vector<uint8_t>> tensorData_; // parallel to tensors_
};

} // namespace kt::gguf
