// Reading Hugging Face checkpoints: safetensors files (an 8-byte
// little-endian header length, a JSON header naming each tensor's dtype,
// shape and byte range, then the data, memory-mapped here) and checkpoint
// directories (config.json, model.safetensors or shards listed by
// model.safetensors.index.json). DeepSeek-V3/R1 publish FP8 checkpoints in
// this form: e4m3 weights with one f32 `weight_scale_inv` per 128x128 block.
//
// Nothing here throws; every failure is a Status naming the file (and the
// tensor or key) and what to do.
#pragma once

#include "runtime/support/Status.h"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kt::safetensors {

enum class Dtype { F64, F32, F16, BF16, F8_E4M3, F8_E5M2, I64, I32, I16, I8, U8, Bool };
const char *dtypeName(Dtype dtype); // as the header spells it: "F8_E4M3"
std::optional<Dtype> parseDtype(const std::string &name);
int dtypeBytes(Dtype dtype);

struct TensorInfo {
  std::string name;
  Dtype dtype = Dtype::F32;
  std::vector<int64_t> shape; // PyTorch order, outermost first
  uint64_t begin = 0, end = 0; // byte range within the data section
  const uint8_t *data = nullptr; // into the mapping
  const class SafetensorsFile *file = nullptr;

  int64_t elements() const;
};

class SafetensorsFile {
public:
  // Maps `path` and validates its header: its length within the file, JSON
  // of objects with a known dtype, a shape of non-negative dimensions, and
  // data_offsets that match dtype x shape, lie within the file and do not
  // overlap.
  static StatusOr<std::unique_ptr<SafetensorsFile>> open(const std::string &path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile &) = delete;
  SafetensorsFile &operator=(const SafetensorsFile &) = delete;

  const std::string &path() const { return path_; }
  const std::vector<TensorInfo> &tensors() const { return tensors_; }
  const std::map<std::string, std::string> &metadata() const { return metadata_; }
  uint64_t fileSize() const { return size_; }
  // The JSON header's bytes.
  std::string_view header() const;

private:
  SafetensorsFile() = default;
  std::string path_;
  void *mapping_ = nullptr;
  uint64_t size_ = 0;
  uint64_t headerBytes_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_; // "__metadata__"
};

// The FP8 quantization a DeepSeek config.json declares.
struct Fp8Config {
  std::string format;                 // "e4m3"
  std::string activationScheme;       // "dynamic"
  std::vector<int64_t> blockSize;     // weight_block_size, [128, 128]
};

// A checkpoint directory (or one .safetensors file).
class Checkpoint {
public:
  // `path`: a directory with config.json and model.safetensors or
  // model.safetensors.index.json plus the shards it names; or a single
  // .safetensors file (no config). Every shard is opened and validated; a
  // tensor the index maps to a shard that lacks it, or a tensor in two
  // shards, is an error.
  static StatusOr<std::unique_ptr<Checkpoint>> open(const std::string &path);

  const std::string &path() const { return path_; }
  // config.json as text (empty when there is none) and its FP8 section.
  const std::string &configJson() const { return configJson_; }
  const std::optional<Fp8Config> &fp8() const { return fp8_; }
  std::string modelType() const { return modelType_; }
  const std::vector<std::unique_ptr<SafetensorsFile>> &files() const { return files_; }
  const TensorInfo *findTensor(const std::string &name) const;
  std::vector<const TensorInfo *> tensors() const; // by name
  uint64_t totalTensorBytes() const;

private:
  std::string path_, configJson_, modelType_;
  std::optional<Fp8Config> fp8_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo *> byName_;
};

// A hash of the checkpoint's files: each one's name, size, header and the
// first and last 4 KiB of its data (32 hex digits). A re-converted,
// truncated or other checkpoint changes it.
std::string fingerprint(const Checkpoint &checkpoint);

// The f32 values of `weight` (F32, F16, BF16 or F8_E4M3). An F8_E4M3 matrix
// [rows, cols] is multiplied by `scaleInv` (F32, [ceil(rows / block),
// ceil(cols / block)]): DeepSeek's weight_scale_inv, one factor per block.
Status dequantize(const TensorInfo &weight, const TensorInfo *scaleInv, int64_t block,
                  float *out);

} // namespace kt::safetensors
