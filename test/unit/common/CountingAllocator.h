// This binary's operator new, counting its calls: for tests that a warm
// decode step allocates nothing (or only what it returns). Include it in
// one source file of a test binary only: it replaces the global operator
// new and delete. With KT_ALLOC_TRACE=1, each allocation that
// allocationsOf counts also prints its callers on stderr as module+offset,
// for addr2line.
#pragma once

#include <dlfcn.h>
#include <execinfo.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>

namespace kt::test::counting {
inline std::atomic<long> allocations{0};
inline std::atomic<bool> tracing{false};
inline thread_local bool inTrace = false;

inline void trace(std::size_t bytes) {
  inTrace = true;
  void *frames[14];
  const int count = backtrace(frames, 14);
  char line[1024];
  int length = std::snprintf(line, sizeof line, "[ alloc    ] %zu bytes:", bytes);
  for (int i = 1; i < count && length < int(sizeof line) - 96; ++i) {
    Dl_info info;
    if (dladdr(frames[i], &info) && info.dli_fname && info.dli_fbase) {
      const char *name = std::strrchr(info.dli_fname, '/');
      length += std::snprintf(line + length, sizeof line - size_t(length), " %s+0x%lx",
                              name ? name + 1 : info.dli_fname,
                              static_cast<unsigned long>(static_cast<char *>(frames[i]) -
                                                         static_cast<char *>(info.dli_fbase)));
    }
  }
  line[length++] = '\n';
  [[maybe_unused]] const ssize_t written = write(2, line, size_t(length));
  inTrace = false;
}
} // namespace kt::test::counting

void *operator new(std::size_t bytes) {
  using namespace kt::test::counting;
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (tracing.load(std::memory_order_relaxed) && !inTrace)
    trace(bytes);
  if (void *p = std::malloc(bytes ? bytes : 1))
    return p;
  throw std::bad_alloc();
}
void operator delete(void *p) noexcept { std::free(p); }
void operator delete(void *p, std::size_t) noexcept { std::free(p); }

namespace kt::test {
// Allocations made by `step` (traced with KT_ALLOC_TRACE=1).
template <typename Step> long allocationsOf(Step step) {
  static const bool traced = [] {
    const char *trace = std::getenv("KT_ALLOC_TRACE");
    void *warm[1];
    backtrace(warm, 1); // loads what backtrace needs before anything is counted
    return trace && *trace == '1';
  }();
  const long before = counting::allocations.load();
  counting::tracing.store(traced);
  step();
  counting::tracing.store(false);
  return counting::allocations.load() - before;
}
} // namespace kt::test
