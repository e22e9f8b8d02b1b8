// FP8 weights where the executors need another form: the block-scaled e4m3
// tensors of a checkpoint model (runtime/model/CheckpointModel.h) or of the
// plan's --fp8-path checkpoint, converted once at load to q8_0 for the CPU
// kernels (and for the MLA operator, which splits kv_b_proj itself). The
// copies live as long as this object, which the executor owns.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace kt::plan {
struct Plan;
}
namespace kt::safetensors {
class Checkpoint;
}

namespace kt::cpu {

// The plan's --fp8-path checkpoint (null when it names none), refused if its
// files changed since the plan was compiled.
StatusOr<std::unique_ptr<safetensors::Checkpoint>>
openPlanFp8Checkpoint(const plan::Plan &plan, const std::string &planName);

class WeightConversions {
public:
  // `checkpoint`: the plan's --fp8-path checkpoint, or null.
  // `progress`: a running count on stderr while converting (ended by
  // finishProgress()).
  explicit WeightConversions(const safetensors::Checkpoint *checkpoint = nullptr,
                             bool progress = false)
      : checkpoint_(checkpoint), progress_(progress) {}
  ~WeightConversions();

  // An e4m3 matrix of the --fp8-path checkpoint (named as there, with its
  // weight_scale_inv) as an F8_E4M3_B128 tensor; null if it has none.
  const gguf::TensorInfo *checkpointTensor(const std::string &name);

  // The q8_0 copy of an F8_E4M3_B128 tensor, made on first use.
  StatusOr<const gguf::TensorInfo *> q8_0(const gguf::TensorInfo &fp8);

  // Ends the progress line, if one was shown.
  void finishProgress();

  int convertedTensors() const { return int(converted_.size()); }
  uint64_t convertedBytes() const { return convertedBytes_; }
  double convertSeconds() const { return convertSeconds_; }

private:
  struct Converted {
    gguf::TensorInfo info;
    std::unique_ptr<uint8_t[]> data;
  };
  const safetensors::Checkpoint *checkpoint_;
  bool progress_;
  bool progressShown_ = false;
  std::map<std::string, gguf::TensorInfo> checkpointTensors_;
  std::map<std::string, Converted> converted_;
  uint64_t convertedBytes_ = 0;
  double convertSeconds_ = 0;
};

} // namespace kt::cpu
