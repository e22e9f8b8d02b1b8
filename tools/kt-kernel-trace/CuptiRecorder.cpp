// The kernel-trace recorder: a CUDA injection library (the driver loads it
// when CUDA_INJECTION64_PATH names it and calls InitializeInjection) that
// asks CUPTI for every kernel's and copy's GPU start and end, graph kernels
// included, and writes them to $KT_KERNEL_TRACE in kt-kernel-trace's format
// (KernelTrace.h) when the program exits. CUPTI timestamps kernels as the
// GPU runs them, so a traced decode runs a little slower than an untraced one.
#include "tools/kt-kernel-trace/KernelTrace.h"

#include <cupti.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace {

FILE *traceFile = nullptr;
std::mutex traceLock;
constexpr size_t kBufferBytes = 8 << 20;

void CUPTIAPI giveBuffer(uint8_t **buffer, size_t *size, size_t *maxRecords) {
  *buffer = static_cast<uint8_t *>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *maxRecords = 0;
}

void CUPTIAPI writeBuffer(CUcontext, uint32_t, uint8_t *buffer, size_t, size_t validBytes) {
  std::lock_guard<std::mutex> guard(traceLock);
  CUpti_Activity *record = nullptr;
  while (traceFile && cuptiActivityGetNextRecord(buffer, validBytes, &record) == CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) {
      const auto *k = reinterpret_cast<const CUpti_ActivityKernel10 *>(record);
      std::fprintf(traceFile, "kernel,%llu,%llu,%u,%u,%llu,%d,%d,%d,%d,%s\n",
                   (unsigned long long)k->start, (unsigned long long)k->end, k->streamId,
                   k->graphId, (unsigned long long)k->graphNodeId, k->gridX, k->gridY, k->gridZ,
                   k->blockX, k->name ? k->name : "?");
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto *c = reinterpret_cast<const CUpti_ActivityMemcpy6 *>(record);
      const char *direction = c->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD   ? "to the GPU"
                              : c->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH ? "to the host"
                                                                               : "on the GPU";
      std::fprintf(traceFile, "copy,%llu,%llu,%u,%u,%llu,0,0,0,0,%llu bytes %s\n",
                   (unsigned long long)c->start, (unsigned long long)c->end, c->streamId,
                   c->graphId, (unsigned long long)c->graphNodeId, (unsigned long long)c->bytes,
                   direction);
    }
  }
  std::free(buffer);
}

void finishTrace() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  std::lock_guard<std::mutex> guard(traceLock);
  if (traceFile && std::fclose(traceFile) != 0)
    std::fprintf(stderr, "kt-cupti-trace: could not finish writing the kernel trace\n");
  traceFile = nullptr;
}

} // namespace

extern "C" int InitializeInjection() {
  const char *path = std::getenv("KT_KERNEL_TRACE");
  if (!path || !*path) {
    std::fprintf(stderr, "kt-cupti-trace: set KT_KERNEL_TRACE to the file to write the kernel "
                         "trace to; tracing nothing.\n");
    return 1;
  }
  // Records come in this build's layout; an older CUPTI would write another.
  uint32_t version = 0;
  if (cuptiGetVersion(&version) != CUPTI_SUCCESS || version < CUPTI_API_VERSION) {
    std::fprintf(stderr,
                 "kt-cupti-trace: this CUPTI (API version %u) is older than the one it was "
                 "built with (%u); rebuild kt-cupti-trace against it. Tracing nothing.\n",
                 version, unsigned(CUPTI_API_VERSION));
    return 1;
  }
  traceFile = std::fopen(path, "w");
  if (!traceFile) {
    std::fprintf(stderr, "kt-cupti-trace: cannot write %s; tracing nothing.\n", path);
    return 1;
  }
  std::fprintf(traceFile, "%s\n", kt::kerneltrace::kTraceHeader);
  if (cuptiActivityRegisterCallbacks(giveBuffer, writeBuffer) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS ||
      cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kt-cupti-trace: CUPTI refused kernel tracing; tracing nothing.\n");
    std::fclose(traceFile);
    traceFile = nullptr;
    return 1;
  }
  std::atexit(finishTrace);
  return 1;
}
