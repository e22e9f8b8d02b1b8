// What the GPU benchmarks share: GPU 0 opened with NVRTC and the kernel
// cache, and timing GPU work from the host (warm-up calls, then timed calls
// between two synchronizations of the device's stream).
#pragma once

#include "runtime/cuda/CudaDevice.h"
#include "runtime/cuda/DeviceQuery.h"
#include "runtime/cuda/KernelCache.h"
#include "runtime/cuda/Nvrtc.h"
#include "runtime/support/Status.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace kt::bench {

struct BenchGpu {
  cuda::GpuInfo info;
  std::unique_ptr<cuda::CudaDevice> device;
  std::unique_ptr<cuda::KernelCache> cache; // $KT_CACHE_DIR or the default
};

// GPU 0, or why there is none to benchmark.
inline StatusOr<BenchGpu> openBenchGpu() {
  std::string whyNone;
  std::vector<cuda::GpuInfo> gpus = cuda::queryGpus(whyNone);
  if (gpus.empty())
    return Status::error("no GPU: " + whyNone);
  StatusOr<const cuda::Nvrtc *> nvrtc = cuda::Nvrtc::instance();
  if (!nvrtc)
    return nvrtc.status();
  StatusOr<std::unique_ptr<cuda::CudaDevice>> device = cuda::CudaDevice::open(0);
  if (!device)
    return device.status();
  StatusOr<std::string> cacheDir = cuda::KernelCache::defaultDirectory();
  if (!cacheDir)
    return cacheDir.status();
  BenchGpu gpu;
  gpu.info = gpus[0];
  gpu.device = std::move(*device);
  gpu.cache = std::make_unique<cuda::KernelCache>(*cacheDir, **nvrtc);
  return gpu;
}

// Seconds per call of `launch` (which queues work on `device`), over
// `launches` calls after `warmups` untimed ones.
inline StatusOr<double> secondsPerLaunch(cuda::CudaDevice &device, int warmups, int launches,
                                         const std::function<Status()> &launch) {
  for (int i = 0; i < warmups; ++i)
    if (Status s = launch(); !s.ok())
      return s;
  if (Status s = device.synchronize(); !s.ok())
    return s;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < launches; ++i)
    if (Status s = launch(); !s.ok())
      return s;
  if (Status s = device.synchronize(); !s.ok())
    return s;
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / launches;
}

// Seconds per call of `launch` in the steady state of sustained work:
// warm-up calls for about `warmSeconds`, then timed calls, at least
// `launches` of them and as many as fill about `timedSeconds` (sized from
// the first 5 calls). Under sustained load a GPU's clock settles at its
// board power limit within a few hundred milliseconds; bursts of a few
// dozen calls run faster than that and favour whichever kernel draws more
// power.
inline StatusOr<double> sustainedSecondsPerLaunch(cuda::CudaDevice &device, int launches,
                                                  double warmSeconds, double timedSeconds,
                                                  const std::function<Status()> &launch) {
  StatusOr<double> first = secondsPerLaunch(device, 0, 5, launch);
  if (!first)
    return first;
  const auto callsFor = [&](double seconds) {
    return *first > 0 ? static_cast<long long>(seconds / *first) : 0;
  };
  for (long long i = 0; i < callsFor(warmSeconds); ++i)
    if (Status s = launch(); !s.ok())
      return s;
  return secondsPerLaunch(device, 0, int(std::max<long long>(launches, callsFor(timedSeconds))),
                          launch);
}

} // namespace kt::bench
