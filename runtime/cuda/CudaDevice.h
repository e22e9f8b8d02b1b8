// One GPU through the CUDA driver API, loaded at run time (libcuda.so.1):
// device memory, modules from NVRTC output (CUBIN, or PTX the driver JITs),
// kernel launches, page-locked host memory, CUDA graphs. Work goes to one
// stream of the device, so launches and copies run in the order they are
// issued; the copies to and from the host return once their data has moved.
#pragma once

#include "runtime/cuda/KernelSpec.h"
#include "runtime/support/Status.h"

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kt::cuda {

using DevicePointer = uint64_t; // CUdeviceptr

struct LoadedKernel {
  std::string entry;
  void *function = nullptr; // CUfunction, owned by the device's module list
};

// An instantiated CUDA graph (CUgraphExec), owned by the device.
struct CapturedGraph {
  void *exec = nullptr;
};

struct LaunchShape {
  unsigned gridX = 1, gridY = 1, gridZ = 1;
  unsigned blockX = 1, blockY = 1, blockZ = 1;
  unsigned sharedBytes = 0;
};

// A TMA descriptor (CUtensorMap) as the driver encodes it; kernels take it
// by value as a __grid_constant__ parameter.
struct alignas(64) TensorMap {
  unsigned long long words[16] = {};
};

class CudaDevice {
public:
  // Retains GPU `index`'s primary context and makes it current on this thread.
  static StatusOr<std::unique_ptr<CudaDevice>> open(int index);
  ~CudaDevice();
  CudaDevice(const CudaDevice &) = delete;
  CudaDevice &operator=(const CudaDevice &) = delete;

  StatusOr<DevicePointer> allocate(size_t bytes);
  Status free(DevicePointer pointer);
  Status copyToDevice(DevicePointer dst, const void *src, size_t bytes);
  Status copyToHost(void *dst, DevicePointer src, size_t bytes);
  // Queues a copy from page-locked host memory and returns at once: `src`
  // must stay unchanged until the stream has passed the copy.
  Status copyToDeviceAsync(DevicePointer dst, const void *src, size_t bytes);
  // Queues a copy into page-locked host memory and returns at once: `dst`
  // holds the bytes once the stream has passed the copy (synchronize()).
  Status copyToHostAsync(void *dst, DevicePointer src, size_t bytes);
  // Device memory to device memory (the bandwidth ceiling benchmarks compare with).
  Status copyOnDevice(DevicePointer dst, DevicePointer src, size_t bytes);
  // `bytes` from `src` on GPU `from` to `dst` here, in order with both GPUs'
  // queued work and without the host waiting: the copy starts after the
  // work `from` has queued, and work queued on `from` later waits for the
  // copy (it may overwrite the source).
  Status copyFromPeer(DevicePointer dst, CudaDevice &from, DevicePointer src, size_t bytes);
  // Lets this GPU reach `peer`'s memory directly (NVLink or PCIe) where the
  // hardware allows; false where copies between them go through the host.
  StatusOr<bool> enablePeerAccess(CudaDevice &peer);
  // Page-locked host memory: copies from and to it run at full link speed.
  StatusOr<void *> allocateHost(size_t bytes);
  Status freeHost(void *pointer);
  // Page-locks existing host memory that the GPU only reads (such as a
  // read-only file mapping), so that copies from it are queued without the
  // host waiting and run at full link speed; unregisterHost() undoes it.
  Status registerHostReadOnly(const void *pointer, size_t bytes);
  Status unregisterHost(const void *pointer);

  // Loads the module and finds its entry; the module lives as long as the device.
  StatusOr<LoadedKernel> load(const CompiledKernel &kernel);
  // `arguments` point at each kernel parameter's value, as cuLaunchKernel
  // takes them (a braced list on the caller's stack: a launch allocates
  // nothing).
  // `overlapPrevious`: the kernel may start before the one queued ahead of it
  // has finished (programmatic dependent launch, where overlapsLaunches());
  // it must then wait for it first thing (KT_WAIT_FOR_PRIOR_GRID).
  Status launch(const LoadedKernel &kernel, const LaunchShape &shape,
                std::initializer_list<void *> arguments, bool overlapPrevious = false) {
    return launchWith(kernel, shape, arguments.begin(), overlapPrevious);
  }
  Status launch(const LoadedKernel &kernel, const LaunchShape &shape,
                const std::vector<void *> &arguments, bool overlapPrevious = false) {
    return launchWith(kernel, shape, arguments.data(), overlapPrevious);
  }
  // Whether the GPU (sm_90 and newer) and the driver (cuLaunchKernelEx) let
  // kernels overlap the one before them.
  bool overlapsLaunches() const;
  StatusOr<int> multiprocessors() const;
  // The GPU's PCI address, "domain:bus:device.function" (NVML finds it by that).
  StatusOr<std::string> pciBusId() const;
  // Lets `kernel` use `bytes` of dynamic shared memory (past the default 48 KiB).
  Status allowSharedBytes(const LoadedKernel &kernel, unsigned bytes);
  // A tensor map over a row-major matrix of bytes at `base` (`rows` x
  // `columns`, rows `rowBytes` apart, a multiple of 16) that copies boxes of
  // `boxRows` x `boxColumns` (at most 128 columns) into shared memory with
  // the 128-byte swizzle wgmma reads; rows past the end read as zeros.
  StatusOr<TensorMap> byteMatrixTensorMap(DevicePointer base, uint64_t columns, uint64_t rows,
                                          uint64_t rowBytes, unsigned boxColumns,
                                          unsigned boxRows);
  // A tensor map over a row-major f32 matrix (rows `rowBytes` apart, a
  // multiple of 16) that copies boxes of `boxRows` x `boxColumns` (at most
  // 256 columns, a multiple of 4) unswizzled; columns and rows past the end
  // read as zeros.
  StatusOr<TensorMap> floatMatrixTensorMap(DevicePointer base, uint64_t columns, uint64_t rows,
                                           uint64_t rowBytes, unsigned boxColumns,
                                           unsigned boxRows);
  // The CUstream the device's work goes to (for libraries such as cuBLASLt).
  void *nativeStream() const { return stream_; }
  Status synchronize();
  // Whether the stream has run everything queued so far (without waiting).
  StatusOr<bool> finishedQueuedWork();

  // A side stream for copies that overlap the stream's kernels, ordered
  // against it by kOrderEvents events: signal(stream, e) records event e
  // after the work queued on `stream` so far; waitFor(stream, e) makes
  // `stream`'s later work wait for e's last signal (a later signal does not
  // change a wait already queued). The stream's synchronize() covers side
  // work only where the stream waited for it.
  enum class Queue { Main, Side };
  static constexpr int kOrderEvents = 7;
  Status copyToDeviceOnSide(DevicePointer dst, const void *src, size_t bytes);
  // Several host-to-device copies on the side stream, in any order among
  // themselves: one driver call where the driver has batched copies (CUDA
  // 13: cuMemcpyBatchAsync_v2), else one call each.
  struct HostCopy {
    DevicePointer dst;
    const void *src;
    size_t bytes;
  };
  Status copyBatchToDeviceOnSide(const std::vector<HostCopy> &copies);
  Status signal(Queue queue, int event);
  Status waitFor(Queue queue, int event);
  // Blocks the calling thread until event e's last signal has passed.
  Status waitOnHost(int event);
  // GPU-side time marks: markTime() records a timing event on the stream
  // (or the side stream) and returns its number; once the streams have
  // passed two marks, secondsBetweenMarks gives the GPU time between them.
  // clearTimeMarks() lets the next marks reuse the events.
  StatusOr<size_t> markTime(Queue queue = Queue::Main);
  StatusOr<double> secondsBetweenMarks(size_t from, size_t to) const;
  void clearTimeMarks() { marksUsed_ = 0; }
  // Makes the device's context current on the calling thread (open() does
  // it for the opening thread; a server steps the model on another one).
  Status makeCurrent();

  // Records the launches and device copies issued until endCapture() into a
  // graph instead of running them; the graph then replays them with the
  // same arguments (the pointers' contents may change between replays).
  Status beginCapture();
  StatusOr<CapturedGraph> endCapture();
  Status launchGraph(const CapturedGraph &graph);

  struct Api;

private:
  CudaDevice() = default;
  Status launchWith(const LoadedKernel &kernel, const LaunchShape &shape, void *const *arguments,
                    bool overlapPrevious);
  // The error for a failed driver call (`what` names it); success costs nothing.
  Status check(int result, std::string_view what) const;
  Status ensureSideStream();
  void *streamOf(Queue queue) const { return queue == Queue::Main ? stream_ : sideStream_; }
  // A 2-D tensor map of CUtensorMapDataType `dataType` with `swizzle`.
  StatusOr<TensorMap> matrixTensorMap(int dataType, DevicePointer base, uint64_t columns,
                                      uint64_t rows, uint64_t rowBytes, unsigned boxColumns,
                                      unsigned boxRows, int swizzle);
  std::unique_ptr<Api> api_;
  int device_ = 0;
  int index_ = 0;
  void *context_ = nullptr;
  std::vector<void *> modules_;
  void *stream_ = nullptr;
  void *event_ = nullptr; // marks queued work for another GPU's stream to wait for
  void *sideStream_ = nullptr; // created on first use
  bool batchCopies_ = true;    // false once the driver refused a batch
  std::vector<unsigned long long> batchDestinations_, batchSources_; // CUdeviceptrs
  std::vector<size_t> batchSizes_;
  void *orderEvents_[kOrderEvents] = {};
  std::vector<void *> timingEvents_; // markTime's events, reused after clearTimeMarks()
  size_t marksUsed_ = 0;
  std::vector<void *> graphs_, graphExecs_;
};

} // namespace kt::cuda
