#include "runtime/cpu/ReadBandwidth.h"

#include <algorithm>
#include <chrono>
#include <immintrin.h>
#include <vector>

namespace kt::cpu {

namespace {

using Clock = std::chrono::steady_clock;

// How far ahead the prefetching pass asks for lines: the expert kernels'
// default distance (RowKernelGenerator.h), so that the ceiling is at least
// what they can reach that way.
constexpr size_t kPrefetchBytes = 3072;

// Sum of a slice of 64-byte lines, four 32-byte loads per iteration so that
// the core keeps many lines in flight; with `prefetch`, software prefetches
// kPrefetchBytes ahead as well.
template <bool prefetch>
__attribute__((target("avx2"))) uint64_t readSliceAvx2(const uint8_t *data, size_t bytes) {
  __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
  for (size_t i = 0; i + 128 <= bytes; i += 128) {
    if (prefetch) {
      _mm_prefetch(reinterpret_cast<const char *>(data + i + kPrefetchBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char *>(data + i + kPrefetchBytes + 64), _MM_HINT_T0);
    }
    a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(data + i)));
    b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(data + i + 32)));
    c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(data + i + 64)));
    d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i *>(data + i + 96)));
  }
  __m256i sum = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i *>(lanes), sum);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

uint64_t readSlice(const uint8_t *data, size_t bytes, bool prefetch) {
  if (__builtin_cpu_supports("avx2"))
    return prefetch ? readSliceAvx2<true>(data, bytes) : readSliceAvx2<false>(data, bytes);
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (size_t i = 0; i + 32 <= bytes; i += 32) {
    uint64_t words[4];
    std::copy_n(data + i, 32, reinterpret_cast<uint8_t *>(words));
    a += words[0];
    b += words[1];
    c += words[2];
    d += words[3];
  }
  return a + b + c + d;
}

} // namespace

double measureReadBandwidth(ThreadPool &pool, const uint8_t *data, size_t bytes, int passes) {
  const int64_t slices = int64_t(pool.threadCount()) * 8;
  const size_t slice = bytes / size_t(slices) / 128 * 128;
  if (slice == 0)
    return 0;
  std::vector<uint64_t> sinks(size_t(slices) * 8); // a line per slice: no false sharing
  double best = 0;
  // Passes alternate between plain streaming and streaming with software
  // prefetch (what the kernels do); the best of all is the ceiling.
  for (int pass = 0; pass < 2 * passes; ++pass) {
    const auto start = Clock::now();
    pool.parallelFor(slices, [&](int64_t s, int) {
      sinks[size_t(s) * 8] = readSlice(data + size_t(s) * slice, slice, pass % 2 == 1);
    });
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::max(best, double(slice) * double(slices) / seconds);
  }
  volatile uint64_t keep = 0; // the sums are used, so the reads stay
  for (size_t s = 0; s < sinks.size(); s += 8)
    keep = keep + sinks[s];
  return best;
}

double measureReadBandwidth(ThreadPool &pool, size_t bytes, int passes, PageKind pages) {
  AnonymousMemory memory(bytes, pages);
  uint8_t *buffer = memory.data();
  if (!buffer)
    return 0;
  // Written in parallel (first touch by the threads that read it).
  const int64_t chunks = int64_t(pool.threadCount()) * 8;
  pool.parallelFor(chunks, [&](int64_t c, int) {
    const size_t begin = bytes * size_t(c) / size_t(chunks),
                 end = bytes * size_t(c + 1) / size_t(chunks);
    for (size_t i = begin; i < end; ++i)
      buffer[i] = uint8_t(i * 131 + 7);
  });
  return measureReadBandwidth(pool, buffer, bytes, passes);
}

} // namespace kt::cpu
