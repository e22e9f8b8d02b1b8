#include "runtime/cuda/CudaDevice.h"

#include <dlfcn.h>

namespace kt::cuda {
namespace {
// Driver API types and signatures, declared here so the build needs no CUDA
// headers; they are the driver's stable ABI (the _v2 entry points).
using CUresult = int;
using CUdevice = int;
using CUcontext = void *;
using CUmodule = void *;
using CUfunction = void *;
using CUstream = void *;
using CUdeviceptr = unsigned long long;
constexpr CUresult kSuccess = 0;
// cuLaunchKernelEx's configuration (CUDA 12 and newer), with room for one
// attribute: programmatic stream serialization (id 6), as cuda.h lays them out.
struct LaunchAttribute {
  int id;
  char pad[4];
  union {
    char bytes[64];
    int programmaticStreamSerializationAllowed;
  } value;
};
struct LaunchConfig {
  unsigned gridDimX, gridDimY, gridDimZ;
  unsigned blockDimX, blockDimY, blockDimZ;
  unsigned sharedMemBytes;
  void *hStream;
  LaunchAttribute *attrs;
  unsigned numAttrs;
};
constexpr int kLaunchAttributeProgrammaticStreamSerialization = 6;
} // namespace

struct CudaDevice::Api {
  CUresult (*init)(unsigned) = nullptr;
  CUresult (*deviceGet)(CUdevice *, int) = nullptr;
  CUresult (*primaryCtxRetain)(CUcontext *, CUdevice) = nullptr;
  CUresult (*primaryCtxRelease)(CUdevice) = nullptr;
  CUresult (*ctxSetCurrent)(CUcontext) = nullptr;
  CUresult (*moduleLoadData)(CUmodule *, const void *) = nullptr;
  CUresult (*moduleUnload)(CUmodule) = nullptr;
  CUresult (*moduleGetFunction)(CUfunction *, CUmodule, const char *) = nullptr;
  CUresult (*memAlloc)(CUdeviceptr *, size_t) = nullptr;
  CUresult (*memFree)(CUdeviceptr) = nullptr;
  CUresult (*memcpyHtoD)(CUdeviceptr, const void *, size_t, CUstream) = nullptr;
  CUresult (*memcpyDtoH)(void *, CUdeviceptr, size_t, CUstream) = nullptr;
  CUresult (*memcpyDtoD)(CUdeviceptr, CUdeviceptr, size_t, CUstream) = nullptr;
  CUresult (*streamCreate)(CUstream *, unsigned) = nullptr;
  CUresult (*streamDestroy)(CUstream) = nullptr;
  CUresult (*streamSynchronize)(CUstream) = nullptr;
  CUresult (*streamQuery)(CUstream) = nullptr;
  CUresult (*streamBeginCapture)(CUstream, int) = nullptr;
  CUresult (*streamEndCapture)(CUstream, void **) = nullptr;
  CUresult (*graphInstantiate)(void **, void *, unsigned long long) = nullptr;
  CUresult (*graphLaunch)(void *, CUstream) = nullptr;
  CUresult (*graphExecDestroy)(void *) = nullptr;
  CUresult (*graphDestroy)(void *) = nullptr;
  CUresult (*memAllocHost)(void **, size_t) = nullptr;
  CUresult (*memFreeHost)(void *) = nullptr;
  CUresult (*memHostRegister)(void *, size_t, unsigned) = nullptr;
  CUresult (*memHostUnregister)(void *) = nullptr;
  CUresult (*launchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                           unsigned, unsigned, CUstream, void **, void **) = nullptr;
  CUresult (*getErrorString)(CUresult, const char **) = nullptr;
  CUresult (*launchKernelEx)(const LaunchConfig *, CUfunction, void **, void **) = nullptr;
  CUresult (*eventCreate)(void **, unsigned) = nullptr;
  CUresult (*eventDestroy)(void *) = nullptr;
  CUresult (*eventRecord)(void *, CUstream) = nullptr;
  CUresult (*eventSynchronize)(void *) = nullptr;
  CUresult (*streamWaitEvent)(CUstream, void *, unsigned) = nullptr;
  CUresult (*eventElapsedTime)(float *, void *, void *) = nullptr;
  // cuMemcpyBatchAsync_v2's CUmemcpyAttributes (CUDA 13's cuda.h).
  struct MemcpyAttributes {
    int srcAccessOrder;                 // CUmemcpySrcAccessOrder
    int srcLocationType, srcLocationId; // CUmemLocation hints (ignored for
    int dstLocationType, dstLocationId; // page-locked and device memory)
    unsigned flags;
  };
  CUresult (*memcpyBatch)(CUdeviceptr *, CUdeviceptr *, size_t *, size_t, MemcpyAttributes *,
                          size_t *, size_t, CUstream) = nullptr;
  CUresult (*memcpyPeer)(CUdeviceptr, CUcontext, CUdeviceptr, CUcontext, size_t,
                         CUstream) = nullptr;
  CUresult (*canAccessPeer)(int *, CUdevice, CUdevice) = nullptr;
  CUresult (*enablePeer)(CUcontext, unsigned) = nullptr;
  CUresult (*funcSetAttribute)(CUfunction, int, int) = nullptr;
  CUresult (*deviceGetAttribute)(int *, int, CUdevice) = nullptr;
  CUresult (*deviceGetPciBusId)(char *, int, CUdevice) = nullptr;
  CUresult (*tensorMapEncodeTiled)(void *, int, unsigned, void *, const unsigned long long *,
                                   const unsigned long long *, const unsigned *, const unsigned *,
                                   int, int, int, int) = nullptr;
};

Status CudaDevice::check(int result, std::string_view what) const {
  if (result == kSuccess)
    return Status::success();
  const char *text = nullptr;
  if (api_->getErrorString(result, &text) != kSuccess || !text)
    text = "unknown error";
  return Status::error("CUDA driver call failed on GPU " + std::to_string(index_) + " (" +
                       std::string(what) + "): " + text + " (error " + std::to_string(result) +
                       ").");
}

StatusOr<std::unique_ptr<CudaDevice>> CudaDevice::open(int index) {
  void *library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!library)
    return Status::error("no CUDA driver: libcuda.so.1 could not be loaded; install the NVIDIA "
                         "driver or run on a host with a GPU.");
  std::unique_ptr<CudaDevice> device(new CudaDevice());
  device->index_ = index;
  device->api_ = std::make_unique<Api>();
  Api &api = *device->api_;
  std::string missing;
  auto bind = [&](auto &slot, std::initializer_list<const char *> names) {
    for (const char *name : names)
      if ((slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(library, name))))
        return;
    missing += std::string(missing.empty() ? "" : ", ") + *names.begin();
  };
  bind(api.init, {"cuInit"});
  bind(api.deviceGet, {"cuDeviceGet"});
  bind(api.primaryCtxRetain, {"cuDevicePrimaryCtxRetain"});
  bind(api.primaryCtxRelease, {"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"});
  bind(api.ctxSetCurrent, {"cuCtxSetCurrent"});
  bind(api.moduleLoadData, {"cuModuleLoadData"});
  bind(api.moduleUnload, {"cuModuleUnload"});
  bind(api.moduleGetFunction, {"cuModuleGetFunction"});
  bind(api.memAlloc, {"cuMemAlloc_v2"});
  bind(api.memFree, {"cuMemFree_v2"});
  bind(api.memcpyHtoD, {"cuMemcpyHtoDAsync_v2"});
  bind(api.memcpyDtoD, {"cuMemcpyDtoDAsync_v2"});
  bind(api.memcpyDtoH, {"cuMemcpyDtoHAsync_v2"});
  bind(api.streamCreate, {"cuStreamCreate"});
  bind(api.streamDestroy, {"cuStreamDestroy_v2"});
  bind(api.streamSynchronize, {"cuStreamSynchronize"});
  bind(api.streamQuery, {"cuStreamQuery"});
  bind(api.streamBeginCapture, {"cuStreamBeginCapture_v2"});
  bind(api.streamEndCapture, {"cuStreamEndCapture"});
  bind(api.graphInstantiate, {"cuGraphInstantiateWithFlags"});
  bind(api.graphLaunch, {"cuGraphLaunch"});
  bind(api.graphExecDestroy, {"cuGraphExecDestroy"});
  bind(api.graphDestroy, {"cuGraphDestroy"});
  bind(api.memAllocHost, {"cuMemAllocHost_v2"});
  bind(api.memFreeHost, {"cuMemFreeHost"});
  bind(api.memHostRegister, {"cuMemHostRegister_v2", "cuMemHostRegister"});
  bind(api.memHostUnregister, {"cuMemHostUnregister"});
  bind(api.launchKernel, {"cuLaunchKernel"});
  bind(api.getErrorString, {"cuGetErrorString"});
  bind(api.eventCreate, {"cuEventCreate"});
  bind(api.eventDestroy, {"cuEventDestroy_v2"});
  bind(api.eventRecord, {"cuEventRecord"});
  bind(api.eventSynchronize, {"cuEventSynchronize"});
  bind(api.streamWaitEvent, {"cuStreamWaitEvent"});
  bind(api.eventElapsedTime, {"cuEventElapsedTime_v2", "cuEventElapsedTime"});
  bind(api.memcpyPeer, {"cuMemcpyPeerAsync"});
  bind(api.canAccessPeer, {"cuDeviceCanAccessPeer"});
  bind(api.enablePeer, {"cuCtxEnablePeerAccess"});
  bind(api.funcSetAttribute, {"cuFuncSetAttribute"});
  bind(api.deviceGetAttribute, {"cuDeviceGetAttribute"});
  bind(api.deviceGetPciBusId, {"cuDeviceGetPCIBusId"});
  // Drivers before CUDA 12 lack cuLaunchKernelEx: kernels then launch
  // without overlapping the one before them.
  api.launchKernelEx =
      reinterpret_cast<decltype(api.launchKernelEx)>(dlsym(library, "cuLaunchKernelEx"));
  // Drivers before CUDA 13 lack batched copies (12.8's cuMemcpyBatchAsync
  // takes other arguments): the streamed experts' copies then go one by one.
  api.memcpyBatch =
      reinterpret_cast<decltype(api.memcpyBatch)>(dlsym(library, "cuMemcpyBatchAsync_v2"));
  // Drivers before CUDA 12 lack TMA; only the FP8 GEMM needs it.
  api.tensorMapEncodeTiled = reinterpret_cast<decltype(api.tensorMapEncodeTiled)>(
      dlsym(library, "cuTensorMapEncodeTiled"));
  if (!missing.empty())
    return Status::error("the CUDA driver library lacks " + missing +
                         "; update the NVIDIA driver.");
  if (Status s = device->check(api.init(0), "cuInit"); !s.ok())
    return s;
  if (Status s = device->check(api.deviceGet(&device->device_, index), "cuDeviceGet"); !s.ok())
    return s;
  if (Status s = device->check(api.primaryCtxRetain(&device->context_, device->device_),
                               "cuDevicePrimaryCtxRetain");
      !s.ok())
    return s;
  if (Status s = device->check(api.ctxSetCurrent(device->context_), "cuCtxSetCurrent"); !s.ok())
    return s;
  constexpr unsigned kNonBlocking = 1; // CU_STREAM_NON_BLOCKING
  if (Status s = device->check(api.streamCreate(&device->stream_, kNonBlocking), "cuStreamCreate");
      !s.ok())
    return s;
  constexpr unsigned kDisableTiming = 2; // CU_EVENT_DISABLE_TIMING: cheaper to record
  if (Status s = device->check(api.eventCreate(&device->event_, kDisableTiming), "cuEventCreate");
      !s.ok())
    return s;
  return device;
}

CudaDevice::~CudaDevice() {
  if (!api_ || !context_)
    return;
  if (stream_)
    api_->streamSynchronize(stream_);
  if (sideStream_) {
    api_->streamSynchronize(sideStream_);
    api_->streamDestroy(sideStream_);
  }
  for (void *event : orderEvents_)
    if (event)
      api_->eventDestroy(event);
  for (void *exec : graphExecs_)
    api_->graphExecDestroy(exec);
  for (void *graph : graphs_)
    api_->graphDestroy(graph);
  if (event_)
    api_->eventDestroy(event_);
  for (void *event : timingEvents_)
    api_->eventDestroy(event);
  if (stream_)
    api_->streamDestroy(stream_);
  for (void *module : modules_)
    api_->moduleUnload(module);
  api_->primaryCtxRelease(device_);
}

StatusOr<DevicePointer> CudaDevice::allocate(size_t bytes) {
  CUdeviceptr pointer = 0;
  if (Status s = check(api_->memAlloc(&pointer, bytes),
                       "cuMemAlloc of " + std::to_string(bytes) + " bytes");
      !s.ok())
    return s;
  return static_cast<DevicePointer>(pointer);
}

Status CudaDevice::free(DevicePointer pointer) {
  return check(api_->memFree(pointer), "cuMemFree");
}

StatusOr<size_t> CudaDevice::markTime(Queue queue) {
  if (queue == Queue::Side)
    if (Status s = ensureSideStream(); !s.ok())
      return s;
  if (marksUsed_ == timingEvents_.size()) {
    void *event = nullptr;
    if (Status s = check(api_->eventCreate(&event, 0), "cuEventCreate"); !s.ok())
      return s;
    timingEvents_.push_back(event);
  }
  if (Status s =
          check(api_->eventRecord(timingEvents_[marksUsed_], streamOf(queue)), "cuEventRecord");
      !s.ok())
    return s;
  return marksUsed_++;
}

StatusOr<double> CudaDevice::secondsBetweenMarks(size_t from, size_t to) const {
  if (from >= marksUsed_ || to >= marksUsed_)
    return Status::error("no such time mark on GPU " + std::to_string(index_));
  float milliseconds = 0;
  if (Status s =
          check(api_->eventElapsedTime(&milliseconds, timingEvents_[from], timingEvents_[to]),
                "cuEventElapsedTime");
      !s.ok())
    return s;
  return milliseconds * 1e-3;
}

Status CudaDevice::copyOnDevice(DevicePointer dst, DevicePointer src, size_t bytes) {
  return check(api_->memcpyDtoD(dst, src, bytes, stream_), "cuMemcpyDtoDAsync");
}

Status CudaDevice::copyFromPeer(DevicePointer dst, CudaDevice &from, DevicePointer src,
                                size_t bytes) {
  if (Status s = from.makeCurrent(); !s.ok())
    return s;
  if (Status s = from.check(api_->eventRecord(from.event_, from.stream_), "cuEventRecord"); !s.ok())
    return s;
  if (Status s = makeCurrent(); !s.ok())
    return s;
  if (Status s = check(api_->streamWaitEvent(stream_, from.event_, 0), "cuStreamWaitEvent");
      !s.ok())
    return s;
  if (Status s = check(api_->memcpyPeer(dst, context_, src, from.context_, bytes, stream_),
                       "cuMemcpyPeerAsync from GPU " + std::to_string(from.index_));
      !s.ok())
    return s;
  if (Status s = check(api_->eventRecord(event_, stream_), "cuEventRecord"); !s.ok())
    return s;
  if (Status s = from.makeCurrent(); !s.ok())
    return s;
  if (Status s = from.check(api_->streamWaitEvent(from.stream_, event_, 0), "cuStreamWaitEvent");
      !s.ok())
    return s;
  return makeCurrent();
}

StatusOr<bool> CudaDevice::enablePeerAccess(CudaDevice &peer) {
  int can = 0;
  if (Status s = check(api_->canAccessPeer(&can, device_, peer.device_), "cuDeviceCanAccessPeer");
      !s.ok())
    return s;
  if (!can)
    return false;
  if (Status s = makeCurrent(); !s.ok())
    return s;
  constexpr int kAlreadyEnabled = 704; // CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED
  const int result = api_->enablePeer(peer.context_, 0);
  if (result != kAlreadyEnabled)
    if (Status s = check(result, "cuCtxEnablePeerAccess"); !s.ok())
      return s;
  return true;
}

StatusOr<void *> CudaDevice::allocateHost(size_t bytes) {
  void *pointer = nullptr;
  if (Status s = check(api_->memAllocHost(&pointer, bytes),
                       "cuMemAllocHost of " + std::to_string(bytes) + " bytes");
      !s.ok())
    return s;
  return pointer;
}

Status CudaDevice::freeHost(void *pointer) {
  return check(api_->memFreeHost(pointer), "cuMemFreeHost");
}

Status CudaDevice::registerHostReadOnly(const void *pointer, size_t bytes) {
  // CU_MEMHOSTREGISTER_READ_ONLY: the pages are pinned without write access,
  // so read-only file mappings (the model's weights) can be registered.
  constexpr unsigned kReadOnly = 8;
  return check(api_->memHostRegister(const_cast<void *>(pointer), bytes, kReadOnly),
               "cuMemHostRegister of " + std::to_string(bytes) + " bytes, read-only");
}

Status CudaDevice::unregisterHost(const void *pointer) {
  return check(api_->memHostUnregister(const_cast<void *>(pointer)), "cuMemHostUnregister");
}

Status CudaDevice::copyToDevice(DevicePointer dst, const void *src, size_t bytes) {
  if (Status s = check(api_->memcpyHtoD(dst, src, bytes, stream_), "cuMemcpyHtoDAsync"); !s.ok())
    return s;
  return synchronize(); // the source may be reused at once
}

Status CudaDevice::copyToDeviceAsync(DevicePointer dst, const void *src, size_t bytes) {
  return check(api_->memcpyHtoD(dst, src, bytes, stream_), "cuMemcpyHtoDAsync");
}

Status CudaDevice::copyToHostAsync(void *dst, DevicePointer src, size_t bytes) {
  return check(api_->memcpyDtoH(dst, src, bytes, stream_), "cuMemcpyDtoHAsync");
}

Status CudaDevice::copyToHost(void *dst, DevicePointer src, size_t bytes) {
  if (Status s = check(api_->memcpyDtoH(dst, src, bytes, stream_), "cuMemcpyDtoHAsync"); !s.ok())
    return s;
  return synchronize();
}

StatusOr<LoadedKernel> CudaDevice::load(const CompiledKernel &kernel) {
  CUmodule module = nullptr;
  if (Status s = check(api_->moduleLoadData(&module, kernel.image.data()),
                       "cuModuleLoadData of " + kernel.entry + " for " + kernel.arch);
      !s.ok())
    return s;
  modules_.push_back(module);
  LoadedKernel loaded;
  loaded.entry = kernel.entry;
  if (Status s = check(api_->moduleGetFunction(&loaded.function, module, kernel.entry.c_str()),
                       "cuModuleGetFunction " + kernel.entry);
      !s.ok())
    return s;
  return loaded;
}

Status CudaDevice::launchWith(const LoadedKernel &kernel, const LaunchShape &shape,
                              void *const *arguments, bool overlapPrevious) {
  // The driver reads the parameter pointers only (its argument is not const).
  void **parameters = const_cast<void **>(arguments);
  // The call's name is spelled out only when it fails.
  auto checked = [&](int result, const char *call) {
    return result == kSuccess ? Status::success()
                              : check(result, std::string(call) + " " + kernel.entry);
  };
  if (overlapPrevious && overlapsLaunches()) {
    LaunchAttribute attribute{};
    attribute.id = kLaunchAttributeProgrammaticStreamSerialization;
    attribute.value.programmaticStreamSerializationAllowed = 1;
    const LaunchConfig config{
        shape.gridX,  shape.gridY,       shape.gridZ, shape.blockX, shape.blockY,
        shape.blockZ, shape.sharedBytes, stream_,     &attribute,   1};
    return checked(api_->launchKernelEx(&config, kernel.function, parameters, nullptr),
                   "cuLaunchKernelEx");
  }
  return checked(api_->launchKernel(kernel.function, shape.gridX, shape.gridY, shape.gridZ,
                                    shape.blockX, shape.blockY, shape.blockZ, shape.sharedBytes,
                                    stream_, parameters, nullptr),
                 "cuLaunchKernel");
}

bool CudaDevice::overlapsLaunches() const {
  if (!api_->launchKernelEx)
    return false;
  constexpr int kComputeCapabilityMajor = 75; // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
  int major = 0;
  return api_->deviceGetAttribute(&major, kComputeCapabilityMajor, device_) == kSuccess &&
         major >= 9;
}

StatusOr<int> CudaDevice::multiprocessors() const {
  constexpr int kMultiprocessorCount = 16; // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
  int count = 0;
  if (Status s = check(api_->deviceGetAttribute(&count, kMultiprocessorCount, device_),
                       "cuDeviceGetAttribute(multiprocessor count)");
      !s.ok())
    return s;
  return count;
}

StatusOr<std::string> CudaDevice::pciBusId() const {
  char id[32] = {};
  if (Status s = check(api_->deviceGetPciBusId(id, int(sizeof id), device_), "cuDeviceGetPCIBusId");
      !s.ok())
    return s;
  return std::string(id);
}

Status CudaDevice::allowSharedBytes(const LoadedKernel &kernel, unsigned bytes) {
  constexpr int kMaxDynamicShared = 8; // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
  return check(api_->funcSetAttribute(kernel.function, kMaxDynamicShared, int(bytes)),
               "cuFuncSetAttribute(max dynamic shared memory " + std::to_string(bytes) + ") of " +
                   kernel.entry);
}

namespace {
// CUtensorMapDataType, CUtensorMapSwizzle and the other encoding enums.
constexpr int kTensorMapUint8 = 0, kTensorMapFloat32 = 7, kNoInterleave = 0, kNoSwizzle = 0,
              kSwizzle128 = 3, kL2Promote256 = 3, kZeroFill = 0;
} // namespace

StatusOr<TensorMap> CudaDevice::matrixTensorMap(int dataType, DevicePointer base, uint64_t columns,
                                                uint64_t rows, uint64_t rowBytes,
                                                unsigned boxColumns, unsigned boxRows,
                                                int swizzle) {
  if (!api_->tensorMapEncodeTiled)
    return Status::error("the CUDA driver lacks cuTensorMapEncodeTiled (TMA), which the FP8 "
                         "GEMM needs; update the NVIDIA driver to CUDA 12 or later.");
  TensorMap map;
  const unsigned long long dims[2] = {columns, rows}, strides[1] = {rowBytes};
  const unsigned box[2] = {boxColumns, boxRows}, elementStrides[2] = {1, 1};
  if (Status s = check(api_->tensorMapEncodeTiled(
                           map.words, dataType, 2, reinterpret_cast<void *>(base), dims, strides,
                           box, elementStrides, kNoInterleave, swizzle, kL2Promote256, kZeroFill),
                       "cuTensorMapEncodeTiled of a " + std::to_string(rows) + " x " +
                           std::to_string(columns) + " matrix");
      !s.ok())
    return s;
  return map;
}

StatusOr<TensorMap> CudaDevice::byteMatrixTensorMap(DevicePointer base, uint64_t columns,
                                                    uint64_t rows, uint64_t rowBytes,
                                                    unsigned boxColumns, unsigned boxRows) {
  return matrixTensorMap(kTensorMapUint8, base, columns, rows, rowBytes, boxColumns, boxRows,
                         kSwizzle128);
}

StatusOr<TensorMap> CudaDevice::floatMatrixTensorMap(DevicePointer base, uint64_t columns,
                                                     uint64_t rows, uint64_t rowBytes,
                                                     unsigned boxColumns, unsigned boxRows) {
  return matrixTensorMap(kTensorMapFloat32, base, columns, rows, rowBytes, boxColumns, boxRows,
                         kNoSwizzle);
}

Status CudaDevice::synchronize() {
  return check(api_->streamSynchronize(stream_), "cuStreamSynchronize");
}

Status CudaDevice::ensureSideStream() {
  if (sideStream_)
    return Status::success();
  constexpr unsigned kNonBlocking = 1; // CU_STREAM_NON_BLOCKING
  return check(api_->streamCreate(&sideStream_, kNonBlocking), "cuStreamCreate (side)");
}

Status CudaDevice::copyToDeviceOnSide(DevicePointer dst, const void *src, size_t bytes) {
  if (Status s = ensureSideStream(); !s.ok())
    return s;
  if (const int result = api_->memcpyHtoD(dst, src, bytes, sideStream_); result != kSuccess)
    return check(result, "cuMemcpyHtoDAsync of " + std::to_string(bytes) + " bytes (side stream)");
  return Status::success();
}

Status CudaDevice::copyBatchToDeviceOnSide(const std::vector<HostCopy> &copies) {
  if (Status s = ensureSideStream(); !s.ok())
    return s;
  if (api_->memcpyBatch && batchCopies_ && copies.size() > 1) {
    // The driver's arrays, kept between calls (decode batches every token).
    std::vector<CUdeviceptr> &dsts = batchDestinations_, &srcs = batchSources_;
    std::vector<size_t> &sizes = batchSizes_;
    dsts.clear(), srcs.clear(), sizes.clear();
    for (const HostCopy &c : copies) {
      dsts.push_back(c.dst);
      srcs.push_back(reinterpret_cast<CUdeviceptr>(c.src));
      sizes.push_back(c.bytes);
    }
    constexpr int kStreamOrder = 1; // CU_MEMCPY_SRC_ACCESS_ORDER_STREAM
    Api::MemcpyAttributes attributes = {kStreamOrder, 0, 0, 0, 0, 0};
    size_t firstCopy = 0;
    const int result = api_->memcpyBatch(dsts.data(), srcs.data(), sizes.data(), copies.size(),
                                         &attributes, &firstCopy, 1, sideStream_);
    if (result == kSuccess)
      return Status::success();
    // A driver that lists the call but refuses these copies (a check of its
    // arguments, before anything is queued): one call a copy from now on.
    constexpr int kInvalidValue = 1, kNotSupported = 801;
    if (result != kInvalidValue && result != kNotSupported)
      return check(result, "cuMemcpyBatchAsync of " + std::to_string(copies.size()) +
                               " copies (side stream)");
    batchCopies_ = false;
  }
  for (const HostCopy &c : copies)
    if (Status s = copyToDeviceOnSide(c.dst, c.src, c.bytes); !s.ok())
      return s;
  return Status::success();
}

Status CudaDevice::signal(Queue queue, int event) {
  if (event < 0 || event >= kOrderEvents)
    return Status::error("order event " + std::to_string(event) + " out of range");
  if (queue == Queue::Side && !sideStream_)
    return Status::error("the side stream has no work to signal");
  void *&e = orderEvents_[event];
  constexpr unsigned kDisableTiming = 2; // CU_EVENT_DISABLE_TIMING: cheaper to record
  if (!e)
    if (Status s = check(api_->eventCreate(&e, kDisableTiming), "cuEventCreate"); !s.ok())
      return s;
  return check(api_->eventRecord(e, streamOf(queue)), "cuEventRecord");
}

Status CudaDevice::waitFor(Queue queue, int event) {
  if (event < 0 || event >= kOrderEvents)
    return Status::error("order event " + std::to_string(event) + " out of range");
  void *e = orderEvents_[event];
  if (!e) // never signalled: nothing to wait for
    return Status::success();
  if (queue == Queue::Side)
    if (Status s = ensureSideStream(); !s.ok())
      return s;
  return check(api_->streamWaitEvent(streamOf(queue), e, 0), "cuStreamWaitEvent");
}

Status CudaDevice::waitOnHost(int event) {
  if (event < 0 || event >= kOrderEvents)
    return Status::error("order event " + std::to_string(event) + " out of range");
  if (!orderEvents_[event]) // never signalled: nothing to wait for
    return Status::success();
  return check(api_->eventSynchronize(orderEvents_[event]), "cuEventSynchronize");
}

StatusOr<bool> CudaDevice::finishedQueuedWork() {
  constexpr CUresult kNotReady = 600; // CUDA_ERROR_NOT_READY
  const CUresult result = api_->streamQuery(stream_);
  if (result == kNotReady)
    return false;
  if (Status s = check(result, "cuStreamQuery"); !s.ok())
    return s;
  return true;
}

Status CudaDevice::makeCurrent() {
  return check(api_->ctxSetCurrent(context_), "cuCtxSetCurrent");
}

Status CudaDevice::beginCapture() {
  constexpr int kThreadLocal = 1; // CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
  return check(api_->streamBeginCapture(stream_, kThreadLocal), "cuStreamBeginCapture");
}

StatusOr<CapturedGraph> CudaDevice::endCapture() {
  void *graph = nullptr;
  if (Status s = check(api_->streamEndCapture(stream_, &graph), "cuStreamEndCapture"); !s.ok())
    return s;
  graphs_.push_back(graph);
  CapturedGraph captured;
  if (Status s = check(api_->graphInstantiate(&captured.exec, graph, 0), "cuGraphInstantiate");
      !s.ok())
    return s;
  graphExecs_.push_back(captured.exec);
  return captured;
}

Status CudaDevice::launchGraph(const CapturedGraph &graph) {
  return check(api_->graphLaunch(graph.exec, stream_), "cuGraphLaunch");
}

} // namespace kt::cuda
