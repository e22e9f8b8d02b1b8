// Reading GGUF files (v2 and v3): metadata, tensor infos and memory-mapped
// tensor data, and models split over several files or given as a directory.
//
// Nothing here throws: every failure is a Status whose message names the file
// and says what to do about it. Any byte sequence is either parsed or refused;
// no input crashes the reader.
#pragma once

#include "runtime/gguf/GgmlType.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kt::gguf {

// Limits the reader enforces and the writer respects. They are far above what
// real models use (the largest tokenizer arrays hold a few 100k entries) and
// stop a corrupt length field from turning into a huge allocation.
inline constexpr uint64_t kGgufDefaultAlignment = 32;
inline constexpr int kGgufMaxDims = 4;
inline constexpr int kGgufMaxArrayNesting = 16;        // arrays inside arrays
inline constexpr uint64_t kGgufMaxArrayElements = 1ull << 24;
inline constexpr uint64_t kGgufMaxStringBytes = 1ull << 28; // 256 MiB

// On-disk ids of metadata value types.
enum class ValueType : uint32_t {
  UInt8 = 0,
  Int8 = 1,
  UInt16 = 2,
  Int16 = 3,
  UInt32 = 4,
  Int32 = 5,
  Float32 = 6,
  Bool = 7,
  String = 8,
  Array = 9,
  UInt64 = 10,
  Int64 = 11,
  Float64 = 12,
};
std::string_view valueTypeName(ValueType type);

// One metadata value. Scalars of every integer width are kept in the widest
// field of their signedness; `type` records the stored width.
struct Value {
  ValueType type = ValueType::UInt8;
  uint64_t u = 0;       // UInt8..UInt64, Bool
  int64_t i = 0;        // Int8..Int64
  double f = 0;         // Float32, Float64
  std::string s;        // String
  ValueType elementType = ValueType::UInt8; // Array: type of the elements
  std::vector<Value> array;                 // Array: elements (may be arrays)

  bool isInteger() const;
  // Integer or bool value as int64 / uint64 (nullopt if not integral or out of range).
  std::optional<int64_t> asInt() const;
  std::optional<uint64_t> asUInt() const;
  // Integer or float value as double.
  std::optional<double> asDouble() const;
  // Human-readable rendering; long arrays are abbreviated after `maxElements`.
  std::string toString(size_t maxElements = 8) const;
};

// Values built in code (generated files, metadata translated from other
// formats), each stored as the reader would store it.
Value stringValue(std::string text);
Value unsignedValue(uint64_t number, ValueType type = ValueType::UInt32);
Value signedValue(int64_t number, ValueType type);
Value realValue(double number, ValueType type = ValueType::Float32); // kept as given
Value boolValue(bool flag);
Value stringArrayValue(const std::vector<std::string> &items);
Value int32ArrayValue(const std::vector<int32_t> &items);

struct KeyValue {
  std::string key;
  Value value;
};

// The data of an F8_E4M3_B128 tensor: per slice of its outermost dimension
// (one for a matrix, one per expert for stacked experts), [rows][cols] e4m3
// bytes and [ceil(rows / 128)][ceil(cols / 128)] f32 block scales. The
// slices need not be contiguous: a checkpoint stores each expert apart.
struct BlockScaledFp8 {
  static constexpr int64_t kBlock = 128;
  std::vector<const uint8_t *> values;
  std::vector<const float *> scales;
};

struct TensorInfo {
  std::string name;
  std::vector<int64_t> ne;   // GGML order: ne[0] is the contiguous (row) dimension
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;       // from the start of the file's data section
  uint64_t nbytes = 0;       // size of the data, from type and shape
  const uint8_t *data = nullptr; // into the mapping; valid while the file lives
  int fileIndex = 0;         // which split holds it (0 for single files)
  // F8_E4M3_B128 only (data is then null): where the values and scales are.
  std::shared_ptr<const BlockScaledFp8> fp8;

  int64_t elements() const;
  int64_t rows() const;      // elements / ne[0]
};

class GgufFile {
public:
  // Maps and parses one file.
  static StatusOr<std::unique_ptr<GgufFile>> open(const std::string &path);
  // Parses a file image already in memory (tests, fuzzing). `data` must stay
  // valid as long as the returned object; `displayName` is used in messages.
  static StatusOr<std::unique_ptr<GgufFile>>
  parse(const uint8_t *data, size_t size, const std::string &displayName);

  ~GgufFile();
  GgufFile(const GgufFile &) = delete;
  GgufFile &operator=(const GgufFile &) = delete;

  const std::string &path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t dataOffset() const { return dataOffset_; }
  uint64_t fileSize() const { return size_; }
  const std::vector<KeyValue> &metadata() const { return metadata_; }
  const std::vector<TensorInfo> &tensors() const { return tensors_; }
  const Value *find(std::string_view key) const;

private:
  GgufFile() = default;
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t dataOffset_ = 0;
  const uint8_t *base_ = nullptr;
  size_t size_ = 0;
  void *mapping_ = nullptr; // owned mmap, or null for parse()
  std::vector<KeyValue> metadata_;
  std::vector<TensorInfo> tensors_;
};

// Where a model that is not a set of GGUF files comes from (a native
// checkpoint seen through GGUF's names and keys): what the plan records.
struct ModelView {
  std::string format;   // "safetensors"
  std::vector<std::pair<std::string, uint64_t>> files; // path, size
  std::string fingerprint;
  std::shared_ptr<const void> owner; // keeps the mapped files alive
};

// A model: one GGUF file, the parts of a split model, or a directory holding
// exactly one model. Metadata comes from the first part (split.* keys
// included); tensors from all parts, in file order. A view (fromView) holds
// no GGUF files: its metadata and tensors were translated from another format.
class GgufModel {
public:
  // `path` is a .gguf file (any part of a split; all parts are opened) or a
  // directory (the --gguf-path convention).
  static StatusOr<std::unique_ptr<GgufModel>> open(const std::string &path);

  // Metadata and tensors translated from another format; tensor names must
  // be unique. `path` names the model in messages.
  static StatusOr<std::unique_ptr<GgufModel>> fromView(std::string path,
                                                       std::vector<KeyValue> metadata,
                                                       std::vector<TensorInfo> tensors,
                                                       ModelView view);

  // Empty for views.
  const std::vector<std::unique_ptr<GgufFile>> &files() const { return files_; }
  // The file (first part) or the view's path, for messages.
  const std::string &sourcePath() const;
  // Set for views only.
  const ModelView *view() const { return view_ ? &*view_ : nullptr; }
  const std::vector<KeyValue> &metadata() const;
  const std::vector<TensorInfo> &tensors() const { return tensors_; }
  const Value *find(std::string_view key) const;
  const TensorInfo *findTensor(std::string_view name) const;
  // `general.architecture`, or empty if missing.
  std::string architecture() const;
  uint64_t totalTensorBytes() const;

private:
  static StatusOr<std::unique_ptr<GgufModel>>
  fromFiles(std::vector<std::unique_ptr<GgufFile>> files);

  std::vector<std::unique_ptr<GgufFile>> files_;
  std::string viewPath_;
  std::vector<KeyValue> viewMetadata_;
  std::optional<ModelView> view_;
  std::vector<TensorInfo> tensors_;
  // Name -> index into tensors_; the views point into tensors_, which is not
  // modified after open().
  std::unordered_map<std::string_view, size_t> tensorIndex_;
};

} // namespace kt::gguf
