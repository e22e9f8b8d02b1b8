// Runs an execution plan whose ops are placed on a GPU and the CPU (the
// default deployment: attention, dense MLPs, shared experts, gate, norms and
// lm_head on cuda:0, routed experts on the CPU; docs/gpu-execution.md).
// GPU ops run the NVRTC kernels of kernels/, specialized as the plan records
// them and loaded through the on-disk kernel cache; their weights are copied
// to the GPU in their GGUF storage type and dequantized in registers. Routed
// experts run on the CPU with the plan's generated code (or the reference
// kernels), reading and writing page-locked staging buffers; the shared
// expert's kernels are queued before the CPU experts start, so the GPU works
// on it meanwhile. The MLA latent cache lives on the GPU; prefill and decode
// both use the absorbed attention (each prompt token over its causal prefix).
#pragma once

#include "runtime/cuda/KernelSpec.h"
#include "runtime/exec/Executor.h"
#include "runtime/gguf/GgufFile.h"
#include "runtime/plan/Plan.h"
#include "runtime/support/Status.h"

#include <memory>
#include <string>
#include <vector>

namespace kt::cuda {

// Kernels the executor loaded when it was created.
struct KernelLoadStats {
  size_t kernels = 0;   // distinct specializations
  size_t fromCache = 0; // found in the on-disk cache
  size_t compiled = 0;  // compiled by NVRTC (and stored)
  double compileSeconds = 0;
  double loadSeconds = 0; // all of it, cache reads and module loads included
  std::string cacheDirectory;
};

// Whether `plan` lists `spec`'s kernel (file and entry) for `arch` with the
// same values of `sameDefines` (absent ones included) but other constants:
// the plan of another ktc version, whose specialization of an optional
// kernel changed. The executor refuses such a plan rather than silently
// taking the slower path the kernel would have replaced.
bool planListsOtherVersionOf(const plan::Plan &plan, const KernelSpec &spec,
                             const std::string &arch, const std::vector<std::string> &sameDefines);

class HybridExecutor : public exec::Executor {
public:
  // Opens GPU 0, loads every kernel the plan's GPU ops need, copies their
  // weights to the GPU and allocates the latent caches. Fails with a
  // message saying what to do for a host without a GPU, a GPU of another
  // architecture than the plan's, a kernel the plan does not list (another
  // ktc version), an op placement this executor cannot run yet, or any
  // mismatch between plan and model that the CPU executor also refuses.
  static StatusOr<std::unique_ptr<HybridExecutor>> create(const plan::Plan &plan,
                                                          const gguf::GgufModel &model,
                                                          const exec::ExecutorOptions &options);
  ~HybridExecutor() override;

  StatusOr<std::vector<float>> forward(const std::vector<int32_t> &tokens,
                                       bool allPositions = false) override;
  // Entries share steps of at most chunkSize rows: every matrix product and
  // the routed experts run once for all of them, attention per sequence.
  StatusOr<std::vector<float>>
  forwardBatch(const std::vector<exec::SequenceTokens> &batch) override;
  StatusOr<std::vector<int32_t>>
  forwardGreedy(const std::vector<exec::SequenceTokens> &batch) override;
  StatusOr<std::vector<int32_t>>
  forwardSampled(const std::vector<exec::SequenceTokens> &batch,
                 const std::vector<exec::TokenSampling> &sampling) override;

  using Executor::position;
  int64_t position(int sequence) const override;
  int64_t cacheCapacity() const override;
  int sequenceCount() const override;
  int64_t chunkSize() const override;
  int generatedExpertLayers() const override;
  int tileExpertLayers() const override;
  exec::NumaPlacement numaPlacement() const override;
  std::vector<exec::HostBytes> routedExpertBytes() const override;
  using Executor::reset;
  void reset(int sequence) override;
  using Executor::truncate;
  void truncate(int sequence, int64_t tokens) override;
  std::vector<exec::RoutingStats> routingStats() const override;
  exec::MoeLayerTiming moeLayerTiming() const override;
  void clearMoeLayerTiming() override;
  void setMoeLayerGpuClock(bool on) override;
  void clearRoutingStats() override;
  int64_t vocabSize() const override;
  int threadCount() const override;
  std::string deviceDescription() const override;
  void setProfiling(bool on) override;
  exec::ExecutionProfile profile() const override;
  exec::ExpertCacheStats expertCacheStats() const override;
  double streamLinkBandwidth() override;
  void finishLoading() override;
  exec::WeightConversionStats weightConversions() const override;

  const KernelLoadStats &kernelLoadStats() const;
  // CUDA graphs captured (one per decode region and sequence) and replayed.
  struct GraphStats {
    size_t captured = 0, launched = 0;
  };
  GraphStats graphStats() const;
  // Runs of norms and SiLU products that quantized their results for an
  // FP8 GEMM (rms_norm_fp8, silu_mul_fp8) since the executor was made.
  // The plan's ops in the order a step queues them (planBuffers moves GPU
  // work ahead of host steps that do not need it).
  std::vector<size_t> queueOrder() const;
  uint64_t fusedNormQuantizations() const;
  // Bytes of GPU memory the executor allocated: weights, caches, activations.
  uint64_t gpuWeightBytes() const;
  uint64_t gpuBufferBytes() const;

  class Impl;

private:
  explicit HybridExecutor(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

} // namespace kt::cuda
