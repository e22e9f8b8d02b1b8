#include "runtime/cuda/DeviceQuery.h"

#include <dlfcn.h>

namespace kt::cuda {
namespace {

// The few driver API entry points needed, declared here so the build needs
// no CUDA headers. Values are the driver API's stable ABI.
using CUresult = int;
using CUdevice = int;
constexpr CUresult kCudaSuccess = 0;
constexpr int kAttributeComputeCapabilityMajor = 75;
constexpr int kAttributeComputeCapabilityMinor = 76;

using InitFn = CUresult (*)(unsigned);
using DeviceGetCountFn = CUresult (*)(int *);
using DeviceGetFn = CUresult (*)(CUdevice *, int);
using DeviceGetAttributeFn = CUresult (*)(int *, int, CUdevice);
using DeviceGetNameFn = CUresult (*)(char *, int, CUdevice);
using DeviceTotalMemFn = CUresult (*)(size_t *, CUdevice);

} // namespace

std::string GpuInfo::arch() const {
  std::string arch = "sm_" + std::to_string(computeMajor) + std::to_string(computeMinor);
  // wgmma and the FP8 tensor-core path need the architecture-specific target.
  if (computeMajor == 9 && computeMinor == 0)
    arch += "a";
  return arch;
}

std::vector<GpuInfo> queryGpus(std::string &whyNone) {
  std::vector<GpuInfo> gpus;
  void *library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    whyNone = "no CUDA driver (libcuda.so.1 could not be loaded)";
    return gpus;
  }
  auto init = reinterpret_cast<InitFn>(dlsym(library, "cuInit"));
  auto getCount = reinterpret_cast<DeviceGetCountFn>(dlsym(library, "cuDeviceGetCount"));
  auto get = reinterpret_cast<DeviceGetFn>(dlsym(library, "cuDeviceGet"));
  auto getAttribute =
      reinterpret_cast<DeviceGetAttributeFn>(dlsym(library, "cuDeviceGetAttribute"));
  auto getName = reinterpret_cast<DeviceGetNameFn>(dlsym(library, "cuDeviceGetName"));
  auto totalMem = reinterpret_cast<DeviceTotalMemFn>(dlsym(library, "cuDeviceTotalMem_v2"));
  if (!init || !getCount || !get || !getAttribute || !getName || !totalMem) {
    whyNone = "the CUDA driver library lacks the device query functions";
    return gpus;
  }
  if (init(0) != kCudaSuccess) {
    whyNone = "cuInit failed (no usable GPU or driver)";
    return gpus;
  }
  int count = 0;
  if (getCount(&count) != kCudaSuccess || count == 0) {
    whyNone = "the CUDA driver reports no GPU";
    return gpus;
  }
  for (int i = 0; i < count; ++i) {
    CUdevice device;
    GpuInfo info;
    info.index = i;
    char name[256] = {0};
    size_t memory = 0;
    if (get(&device, i) != kCudaSuccess ||
        getAttribute(&info.computeMajor, kAttributeComputeCapabilityMajor, device) !=
            kCudaSuccess ||
        getAttribute(&info.computeMinor, kAttributeComputeCapabilityMinor, device) !=
            kCudaSuccess ||
        getName(name, sizeof name - 1, device) != kCudaSuccess ||
        totalMem(&memory, device) != kCudaSuccess) {
      whyNone = "querying GPU " + std::to_string(i) + " failed";
      return {};
    }
    info.name = name;
    info.totalMemory = memory;
    gpus.push_back(info);
  }
  return gpus;
}

} // namespace kt::cuda
