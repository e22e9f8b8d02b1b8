#include "runtime/cpu/WeightConversions.h"

#include "runtime/model/CheckpointModel.h"
#include "runtime/plan/Plan.h"
#include "runtime/safetensors/Safetensors.h"

#include "runtime/support/ByteSize.h"

#include <chrono>
#include <cstdio>

namespace kt::cpu {

StatusOr<std::unique_ptr<safetensors::Checkpoint>>
openPlanFp8Checkpoint(const plan::Plan &plan, const std::string &planName) {
  if (!plan.model.fp8)
    return std::unique_ptr<safetensors::Checkpoint>();
  StatusOr<std::unique_ptr<safetensors::Checkpoint>> opened =
      safetensors::Checkpoint::open(plan.model.fp8->path);
  if (!opened)
    return Status::error(planName + ": its FP8 checkpoint: " + opened.message());
  if (safetensors::fingerprint(**opened) != plan.model.fp8->fingerprint)
    return Status::error(planName + ": the FP8 checkpoint " + plan.model.fp8->path +
                         " is not the one the plan was compiled with (its files changed); "
                         "recompile the plan with ktc compile --fp8-path.");
  return opened;
}

const gguf::TensorInfo *WeightConversions::checkpointTensor(const std::string &name) {
  if (auto it = checkpointTensors_.find(name); it != checkpointTensors_.end())
    return &it->second;
  if (!checkpoint_)
    return nullptr;
  const safetensors::TensorInfo *weight = checkpoint_->findTensor(name);
  const safetensors::TensorInfo *scale = checkpoint_->findTensor(name + "_scale_inv");
  const int64_t block = gguf::BlockScaledFp8::kBlock;
  if (!weight || weight->dtype != safetensors::Dtype::F8_E4M3 || weight->shape.size() != 2 ||
      !scale || scale->dtype != safetensors::Dtype::F32 ||
      scale->shape != std::vector<int64_t>{(weight->shape[0] + block - 1) / block,
                                           (weight->shape[1] + block - 1) / block})
    return nullptr;
  gguf::TensorInfo info;
  info.name = name;
  info.type = gguf::GgmlType::F8_E4M3_B128;
  info.ne = {weight->shape[1], weight->shape[0]};
  info.nbytes = weight->end - weight->begin;
  auto fp8 = std::make_shared<gguf::BlockScaledFp8>();
  fp8->values.push_back(weight->data);
  fp8->scales.push_back(reinterpret_cast<const float *>(scale->data));
  info.fp8 = std::move(fp8);
  return &checkpointTensors_.emplace(name, std::move(info)).first->second;
}

WeightConversions::~WeightConversions() { finishProgress(); }

void WeightConversions::finishProgress() {
  if (progressShown_)
    std::fprintf(stderr, "\n");
  progressShown_ = false;
}

StatusOr<const gguf::TensorInfo *> WeightConversions::q8_0(const gguf::TensorInfo &fp8) {
  if (auto it = converted_.find(fp8.name); it != converted_.end())
    return &it->second.info;
  const auto start = std::chrono::steady_clock::now();
  std::optional<uint64_t> rowBytes =
      gguf::ggmlRowBytes(gguf::GgmlType::Q8_0, fp8.ne.empty() ? 0 : fp8.ne[0]);
  if (!rowBytes || fp8.ne.size() < 2)
    return Status::error("'" + fp8.name + "' cannot be converted to q8_0: its rows of " +
                         std::to_string(fp8.ne.empty() ? 0 : fp8.ne[0]) +
                         " values are not whole 32-value blocks");
  const uint64_t bytes = *rowBytes * static_cast<uint64_t>(fp8.rows());
  Converted converted;
  converted.data.reset(new (std::nothrow) uint8_t[bytes]);
  if (!converted.data)
    return Status::error("out of memory converting '" + fp8.name + "' to q8_0 (" +
                         std::to_string(bytes) + " bytes)");
  if (Status status = model::convertFp8ToQ8_0(fp8, converted.data.get()); !status.ok())
    return status;
  converted.info = fp8;
  converted.info.type = gguf::GgmlType::Q8_0;
  converted.info.fp8.reset();
  converted.info.data = converted.data.get();
  converted.info.nbytes = bytes;
  convertedBytes_ += bytes;
  convertSeconds_ +=
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (progress_) {
    std::fprintf(stderr, "\rconverting FP8 weights to q8_0: %zu tensors, %s, %.1f s",
                 converted_.size() + 1, formatByteSize(convertedBytes_).c_str(), convertSeconds_);
    progressShown_ = true;
  }
  return &converted_.emplace(fp8.name, std::move(converted)).first->second.info;
}

} // namespace kt::cpu
