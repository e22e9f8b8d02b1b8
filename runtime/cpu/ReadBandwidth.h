// The host's memory read bandwidth as the expert kernels meet it: the
// threads of a pool streaming slices of a buffer far larger than the caches.
// The decode benchmarks (cpu_expert_bench, ktrun --bench) divide the expert
// bytes they read by it.
#pragma once

#include "runtime/cpu/AnonymousMemory.h"
#include "runtime/cpu/ThreadPool.h"
#include "runtime/exec/Executor.h"

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kt::cpu {

// Best of `passes` passes over `bytes` of `data` each with and without
// software prefetch, split into 8 slices per thread of `pool` (64-byte
// lines, several loads in flight per thread).
double measureReadBandwidth(ThreadPool &pool, const uint8_t *data, size_t bytes, int passes);

// The same over a buffer of `bytes` in `pages`, allocated and written here
// (so that every page is real memory, not the shared zero page); 0 if it
// cannot be allocated.
double measureReadBandwidth(ThreadPool &pool, size_t bytes = size_t{1} << 30, int passes = 5,
                            PageKind pages = PageKind::System);

// The same over memory that is already there (the routed experts where the
// kernels read them: the host memory behind a mapping, and so its speed,
// differs from one buffer to the next on some hosts): pieces of 4 MiB spread
// evenly over `ranges`, up to `sampleBytes` of them, each taken only if all
// its pages are resident (mincore), so that none is read from disk. Sets
// `sampled` to the bytes read per pass; 0 (and 0 bytes/s) if none qualify.
double measureReadBandwidth(ThreadPool &pool, const std::vector<exec::HostBytes> &ranges,
                            uint64_t sampleBytes, int passes, uint64_t &sampled);

} // namespace kt::cpu
