// The CUDA GPUs of this host, found through the driver library loaded at run
// time, so that binaries run (and report "no GPU") on hosts without a driver.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kt::cuda {

struct GpuInfo {
  int index = 0;
  std::string name;
  int computeMajor = 0;
  int computeMinor = 0;
  uint64_t totalMemory = 0;
  // NVRTC's architecture for the fast path: sm_90a on Hopper, else sm_XY.
  std::string arch() const;
};

// The GPUs, or an empty list with `whyNone` saying why (no driver library,
// cuInit failed, no device).
std::vector<GpuInfo> queryGpus(std::string &whyNone);

} // namespace kt::cuda
