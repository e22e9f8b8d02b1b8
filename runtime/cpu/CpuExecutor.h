// Runs an execution plan whose ops are all placed on the CPU: the reference
// path of the project (docs/cpu-execution.md). Weights are used in their GGUF
// storage type straight from the memory-mapped model, decoded row by row
// inside the matrix products; the KV cache holds MLA's compressed latents.
#pragma once

#include "runtime/exec/Executor.h"
#include "runtime/gguf/GgufFile.h"
#include "runtime/plan/Plan.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kt::cpu {

using ExecutorOptions = exec::ExecutorOptions;
using SequenceTokens = exec::SequenceTokens;
using RoutingStats = exec::RoutingStats;

class CpuExecutor : public exec::Executor {
public:
  // Binds every op of `plan` to the weights of `model`, which must outlive
  // the executor, and allocates the KV cache. Fails with a message naming
  // the op for an op not placed on the CPU, an unknown op kind, a missing
  // hyper-parameter, or a weight that the model lacks or whose type or shape
  // differs from the plan.
  static StatusOr<std::unique_ptr<CpuExecutor>> create(const plan::Plan &plan,
                                                       const gguf::GgufModel &model,
                                                       const ExecutorOptions &options);
  ~CpuExecutor();

  // As runtime/exec/Executor.h documents them.
  StatusOr<std::vector<float>> forward(const std::vector<int32_t> &tokens,
                                       bool allPositions = false) override;
  // All rows of the batch run through the matrix products together, so an
  // expert chosen by several sequences is read once for all of them.
  StatusOr<std::vector<float>> forwardBatch(const std::vector<SequenceTokens> &batch) override;

  using Executor::position;
  int64_t position(int sequence) const override;
  int64_t cacheCapacity() const override;
  int sequenceCount() const override;
  int64_t chunkSize() const override;
  int generatedExpertLayers() const override;
  int tileExpertLayers() const override;
  exec::NumaPlacement numaPlacement() const override;
  std::vector<exec::HostBytes> routedExpertBytes() const override;
  // Profiles the CPU experts (by part) against the other steps.
  void setProfiling(bool on) override;
  exec::ExecutionProfile profile() const override;
  using Executor::reset;
  void reset(int sequence) override;
  using Executor::truncate;
  void truncate(int sequence, int64_t tokens) override;
  std::vector<RoutingStats> routingStats() const override;
  void clearRoutingStats() override;
  int64_t vocabSize() const override;
  int threadCount() const override;
  std::string deviceDescription() const override { return "cpu"; }
  exec::WeightConversionStats weightConversions() const override;

  // Which attention computation a forward step uses. Automatic: the
  // expanded keys/values (HF's computation) for steps of several tokens,
  // weight absorption for single-token decode. The others force one path
  // for every step (tests compare them).
  enum class AttentionPath { Automatic, Expanded, Absorbed };
  void setAttentionPath(AttentionPath path);

  class Impl;

private:
  explicit CpuExecutor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace kt::cpu
