#include "runtime/cpu/ReadBandwidth.h"

#include <algorithm>
#include <chrono>
#include <immintrin.h>
#include <sys/mman.h>
#include <unistd.h>
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

// Best of `passes` passes each without and with software prefetch, task t
// reading `pieceBytes` from pieces[t].
double bestOverPieces(ThreadPool &pool, const std::vector<const uint8_t *> &pieces,
                      size_t pieceBytes, int passes) {
  std::vector<uint64_t> sinks(pieces.size() * 8); // a line per piece: no false sharing
  double best = 0;
  for (int pass = 0; pass < 2 * passes; ++pass) {
    const auto start = Clock::now();
    pool.parallelFor(int64_t(pieces.size()), [&](int64_t t, int) {
      sinks[size_t(t) * 8] = readSlice(pieces[size_t(t)], pieceBytes, pass % 2 == 1);
    });
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    best = std::max(best, double(pieceBytes) * double(pieces.size()) / seconds);
  }
  volatile uint64_t keep = 0; // the sums are used, so the reads stay
  for (size_t s = 0; s < sinks.size(); s += 8)
    keep = keep + sinks[s];
  return best;
}

} // namespace

double measureReadBandwidth(ThreadPool &pool, const std::vector<exec::HostBytes> &ranges,
                            uint64_t sampleBytes, int passes, uint64_t &sampled) {
  constexpr size_t kPieceBytes = size_t{4} << 20;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  std::vector<const uint8_t *> candidates;
  for (const exec::HostBytes &range : ranges) {
    const uintptr_t begin = reinterpret_cast<uintptr_t>(range.data);
    const uintptr_t end = begin + range.bytes;
    for (uintptr_t at = (begin + page - 1) / page * page; at + kPieceBytes <= end;
         at += kPieceBytes)
      candidates.push_back(reinterpret_cast<const uint8_t *>(at));
  }
  const size_t wanted = size_t(sampleBytes / kPieceBytes);
  std::vector<const uint8_t *> pieces;
  if (wanted > 0 && !candidates.empty()) {
    // Evenly spread: the host memory behind one part of the ranges may be
    // faster than behind another.
    const double stride = std::max(1.0, double(candidates.size()) / double(wanted));
    std::vector<unsigned char> resident(kPieceBytes / page);
    for (double at = 0; size_t(at) < candidates.size() && pieces.size() < wanted; at += stride) {
      const uint8_t *piece = candidates[size_t(at)];
      if (mincore(const_cast<uint8_t *>(piece), kPieceBytes, resident.data()) != 0)
        continue;
      if (std::all_of(resident.begin(), resident.end(), [](unsigned char c) { return c & 1; }))
        pieces.push_back(piece);
    }
  }
  sampled = uint64_t(pieces.size()) * kPieceBytes;
  return pieces.empty() ? 0 : bestOverPieces(pool, pieces, kPieceBytes, passes);
}

double measureReadBandwidth(ThreadPool &pool, const uint8_t *data, size_t bytes, int passes) {
  const int64_t slices = int64_t(pool.threadCount()) * 8;
  const size_t slice = bytes / size_t(slices) / 128 * 128;
  if (slice == 0)
    return 0;
  // Passes alternate between plain streaming and streaming with software
  // prefetch (what the kernels do); the best of all is the ceiling.
  std::vector<const uint8_t *> pieces;
  for (int64_t s = 0; s < slices; ++s)
    pieces.push_back(data + size_t(s) * slice);
  return bestOverPieces(pool, pieces, slice, passes);
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
