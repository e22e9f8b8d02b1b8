#include "runtime/exec/CreateExecutor.h"

#include "runtime/cpu/CpuExecutor.h"
#ifdef KT_HAVE_GPU_EXECUTOR
#include "runtime/cuda/HybridExecutor.h"
#endif

#include <cstdio>

namespace kt::exec {

StatusOr<std::unique_ptr<Executor>> createExecutor(const plan::Plan &plan,
                                                   const gguf::GgufModel &model,
                                                   const ExecutorOptions &options) {
  if (!plan::usesGpu(plan)) {
    const std::string planName =
        options.planPath.empty() ? std::string("The plan") : "Plan " + options.planPath;
    if (options.gpuExpertCacheBytes > 0)
      return Status::error(planName + " runs on the CPU only; a GPU expert cache needs a GPU plan "
                                      "compiled with ktc compile --gpu-expert-cache.");
    if (options.streamedExperts > 0 || options.streamedGateUps > 0 ||
        options.streamedGateUpShare >= 0 || options.moveStreamedExperts)
      return Status::error(planName + " runs on the CPU only; streaming experts to the GPU needs "
                                      "a GPU plan compiled with ktc compile --gpu-expert-cache.");
    StatusOr<std::unique_ptr<cpu::CpuExecutor>> executor =
        cpu::CpuExecutor::create(plan, model, options);
    if (!executor)
      return executor.status();
    return std::unique_ptr<Executor>(std::move(*executor));
  }
#ifdef KT_HAVE_GPU_EXECUTOR
  StatusOr<std::unique_ptr<cuda::HybridExecutor>> executor =
      cuda::HybridExecutor::create(plan, model, options);
  if (!executor)
    return executor.status();
  return std::unique_ptr<Executor>(std::move(*executor));
#else
  const std::string planName =
      options.planPath.empty() ? std::string("The plan") : "Plan " + options.planPath;
  return Status::error(planName +
                       " runs ops on a GPU, but this build has no GPU executor (it was built "
                       "without the CUDA toolkit's nvrtc.h). Rebuild with CUDA, or compile a "
                       "CPU plan: ktc compile --target-gpu none --optimize-config-path "
                       "rules/DeepSeek-V3-Chat-cpu-only.yaml.");
#endif
}

std::string kernelLoadSummary(const Executor &executor) {
#ifdef KT_HAVE_GPU_EXECUTOR
  if (const auto *hybrid = dynamic_cast<const cuda::HybridExecutor *>(&executor)) {
    const cuda::KernelLoadStats &s = hybrid->kernelLoadStats();
    char text[512];
    std::snprintf(text, sizeof text,
                  "%zu GPU kernels: %zu from the cache (%s), %zu compiled with NVRTC in %.2f s; "
                  "ready in %.2f s",
                  s.kernels, s.fromCache, s.cacheDirectory.c_str(), s.compiled, s.compileSeconds,
                  s.loadSeconds);
    return text;
  }
#endif
  (void)executor;
  return {};
}

} // namespace kt::exec
