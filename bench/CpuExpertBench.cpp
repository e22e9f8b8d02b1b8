// cpu_expert_bench: the CPU expert row kernels ktc generates, at DeepSeek-V3
// expert shapes, against the host's memory read bandwidth measured here
// with the same thread count, and against the runtime's reference kernels.
//
//   ktc cpu-kernels --kernel q4_K:7168 --kernel q4_K:2048 ... -o k.so
//   cpu_expert_bench --kernels k.so --threads 16 [--pool-gib 2] [--json]
//
// Decode reads each routed expert's matrices once per token, from memory:
// every iteration here multiplies one token by the next matrix of a pool of
// distinct experts much larger than the caches, rows split over the threads.
// A last row per type times what a decode step does per MoE layer: one token
// through 8 experts' gate/up/down by the runtime's own feed-forward code.
// The compute rate (weights cached) says how far the kernels' instructions
// would let them go past the memory.
// Weights are random blocks with sane f16 scales (never zeros).
#include "bench/RandomBlocks.h"
#include "runtime/cpu/ExpertGemm.h"
#include "runtime/cpu/FeedForward.h"
#include "runtime/cpu/GeneratedKernels.h"
#include "runtime/cpu/Linear.h"
#include "runtime/cpu/ReadBandwidth.h"
#include "runtime/cpu/ThreadPool.h"
#include "runtime/gguf/GgmlType.h"
#include "runtime/support/Statistics.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#ifdef KT_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace kt;
using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Shape {
  const char *name;
  int64_t rows, cols;
};

// What the generated kernels read of one token's activations besides x
// (GeneratedKernels.h): the sums of 32, and x quantized to int8 with its
// scales and sums of 16 (f32 kernels ignore those).
struct KernelInputs {
  std::vector<float> sums, scales;
  std::vector<int8_t> quantized, quantizedNibbleOrder;
  std::vector<int16_t> sums16;
  explicit KernelInputs(int64_t cols)
      : sums(cols / 32), scales(cols / 256), quantized(cols), quantizedNibbleOrder(cols),
        sums16(cols / 16) {}
  // Computed from x (its size is the row width).
  explicit KernelInputs(const std::vector<float> &x)
      : KernelInputs(static_cast<int64_t>(x.size())) {
    const auto cols = static_cast<int64_t>(x.size());
    cpu::sumRunsOf32(x.data(), cols, cols, 1, sums.data());
    cpu::quantizeActivations(x.data(), cols, cols, 1, quantized.data(), scales.data(),
                             sums16.data(), quantizedNibbleOrder.data());
  }
  cpu::KernelInput view() {
    return {sums.data(), quantized.data(), quantizedNibbleOrder.data(), scales.data(),
            sums16.data()};
  }
  // The int8 activations a kernel reads (nibbleOrder: "q8-nibble-order").
  const int8_t *xq(bool nibbleOrder) const {
    return nibbleOrder ? quantizedNibbleOrder.data() : quantized.data();
  }
};

// Whether the object's kernel for `cols`-wide rows of `type` reads its int8
// activations in nibble order (its input record, GeneratedKernels.h).
bool readsNibbleOrder(void *handle, gguf::GgmlType type, int64_t cols) {
  const char *input = cpu::rowKernelInputRecord(handle, type, cols);
  return input && std::string(input) == cpu::kNibbleOrderInput;
}

// `count` activations drawn from N(0, 1).
template <typename Engine> std::vector<float> randomActivations(int64_t count, Engine &random) {
  std::vector<float> x(static_cast<size_t>(count));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float &v : x)
    v = normal(random);
  return x;
}

// The expert bytes the rows cycle through, in the pages the bench chooses
// (--pages). The runtime's experts sit in the model file's mapping, in
// 4 KiB pages, unless it copies them (the NUMA placement or --expert-pages
// huge, into huge pages); the read bandwidth is measured over the same
// bytes, so both sides of each ratio see the same pages.
using PoolBuffer = cpu::AnonymousMemory;

// The transparent huge pages (MiB) of the mapping that holds `address`, from
// /proc/self/smaps; -1 where not known.
double hugePagesMiBAt(const void *address) {
  std::ifstream smaps("/proc/self/smaps");
  const auto at = reinterpret_cast<uintptr_t>(address);
  std::string line;
  bool inside = false;
  while (std::getline(smaps, line)) {
    unsigned long long begin = 0, end = 0;
    char dash = 0;
    if (std::sscanf(line.c_str(), "%llx%c%llx", &begin, &dash, &end) == 3 && dash == '-') {
      inside = begin <= at && at < end;
      continue;
    }
    double kib = 0;
    if (inside && std::sscanf(line.c_str(), "AnonHugePages: %lf kB", &kib) == 1)
      return kib / 1024;
  }
  return -1;
}

struct Result {
  std::string type, shape;
  double matrixMiB = 0;
  double generatedGBs = 0, referenceGBs = 0;
  // The read bandwidth measured beside the generated kernel's runs, and the
  // kernel's share of it (medians over the rounds; pairedWithCeiling).
  double ceilingGBs = 0, ratio = 0;
  int rounds = 0;
};

// Rounds of one pass of the read bandwidth over the pool (plain and
// prefetched, the better), then one pass of the kernel over the same pool
// (`pass()`, bytes/s), for `seconds` and at least `rounds` rounds: the
// kernel's share of the bandwidth in each round. A round takes tens of
// milliseconds, so the swings of a shared host reach both sides of each
// ratio; sides measured a second apart (the kernel timed for a second after
// a short reading of the ceiling) let them land on one. Sets the result's
// medians of the kernel's GB/s, the ceilings and the ratios.
void pairedWithCeiling(cpu::ThreadPool &pool, const PoolBuffer &buffer, double seconds, int rounds,
                       const std::function<double()> &pass, Result &result) {
  std::vector<double> kernel, ceiling, ratio;
  const auto start = Clock::now();
  do {
    ceiling.push_back(cpu::measureReadBandwidth(pool, buffer.data(), buffer.size(), 1));
    kernel.push_back(pass());
    ratio.push_back(kernel.back() / ceiling.back());
  } while (secondsSince(start) < seconds || int(ratio.size()) < rounds);
  result.generatedGBs = kt::median(kernel) / 1e9;
  result.ceilingGBs = kt::median(ceiling) / 1e9;
  result.ratio = kt::median(ratio);
  result.rounds = int(ratio.size());
}

// Decode as the runtime runs it: one token through kTopK distinct experts
// by cpu::runFeedForward (the gate/up rows of all of them over the pool in
// one loop, then their down rows), the experts cycled through the pool.
// Bytes/s of the three matrices of each expert. The pool must hold blocks
// of `type` (the per-matrix runs above made their scales finite).
Result decodeLayer(cpu::ThreadPool &pool, void *handle, gguf::GgmlType type,
                   const std::string &typeName, PoolBuffer &buffer, double seconds, int rounds) {
  constexpr int kTopK = 8;
  constexpr int64_t kHidden = 7168, kFfn = 2048;
  auto kernelFor = [&](int64_t cols) {
    cpu::LoadedKernel kernel;
    kernel.function =
        reinterpret_cast<cpu::RowKernel>(dlsym(handle, cpu::rowKernelSymbol(type, cols).c_str()));
    kernel.quantizedInput = true; // harmless for f32 kernels: they ignore it
    kernel.nibbleOrderInput = readsNibbleOrder(handle, type, cols);
    return kernel;
  };
  const uint64_t hiddenRowBytes = *gguf::ggmlRowBytes(type, kHidden);
  const uint64_t ffnRowBytes = *gguf::ggmlRowBytes(type, kFfn);
  const uint64_t matrixBytes = hiddenRowBytes * kFfn; // = ffnRowBytes * kHidden
  const uint64_t expertBytes = 3 * matrixBytes;
  const size_t experts = std::max<size_t>(kTopK, buffer.size() / expertBytes);

  std::mt19937_64 random(11);
  const std::vector<float> x = randomActivations(kHidden, random);
  std::vector<float> out(kTopK * kHidden), gate(kTopK * kFfn), up(kTopK * kFfn);
  std::vector<KernelInputs> xInputs(kTopK, KernelInputs(kHidden)),
      gateInputs(kTopK, KernelInputs(kFfn));
  std::vector<cpu::FfnBatch> batches(kTopK);
  const cpu::LoadedKernel hiddenKernel = kernelFor(kHidden), ffnKernel = kernelFor(kFfn);
  size_t next = 0;
  auto route = [&](bool generated) {
    const cpu::LoadedKernel hidden = generated ? hiddenKernel : cpu::LoadedKernel{};
    const cpu::LoadedKernel ffn = generated ? ffnKernel : cpu::LoadedKernel{};
    for (int k = 0; k < kTopK; ++k) {
      const uint8_t *expert = buffer.data() + (next++ % experts) * expertBytes;
      cpu::FfnBatch &b = batches[static_cast<size_t>(k)];
      b.w.gate = {type, expert, kFfn, kHidden, hiddenRowBytes, hidden};
      b.w.up = {type, expert + matrixBytes, kFfn, kHidden, hiddenRowBytes, hidden};
      b.w.down = {type, expert + 2 * matrixBytes, kHidden, kFfn, ffnRowBytes, ffn};
      b.x = x.data();
      b.tokens = 1;
      b.out = out.data() + k * kHidden;
      b.gate = gate.data() + k * kFfn;
      b.up = up.data() + k * kFfn;
      b.xInput = xInputs[static_cast<size_t>(k)].view();
      b.gateInput = gateInputs[static_cast<size_t>(k)].view();
    }
  };
  // For `runSeconds`, and at least once over every expert of the pool.
  auto run = [&](bool generated, double runSeconds) {
    size_t done = 0;
    auto start = Clock::now();
    do {
      route(generated);
      cpu::runFeedForward(pool, batches);
      ++done;
    } while (secondsSince(start) < runSeconds || done * kTopK < experts);
    return static_cast<double>(expertBytes * kTopK) * static_cast<double>(done) /
           secondsSince(start);
  };
  run(true, 0); // warm-up
  Result result;
  result.type = typeName;
  result.shape = "decode: 8 experts";
  result.matrixMiB = static_cast<double>(expertBytes * kTopK) / (1 << 20);
  pairedWithCeiling(
      pool, buffer, seconds, rounds, [&] { return run(true, 0); }, result);
  result.referenceGBs = run(false, seconds) / 1e9;
  return result;
}

// The kernel's compute rate: every thread multiplies one token by its own
// `rows`-row slice of a `cols`-wide matrix, again and again, so the weights
// come from its caches instead of memory: L2 with kL2Rows, L1 with kL1Rows.
// Bytes/s of all threads together; where the L2 rate is not well above the
// read bandwidth, the instructions per weight byte, not memory, bound
// decode; where the L1 rate is well above the L2 one, the lines' way from L2
// into the core does.
constexpr int64_t kL2Rows = 256, kL1Rows = 16; // 2048 values: 18-35 KiB in L1
double cacheResidentGBs(cpu::ThreadPool &pool, cpu::RowKernel kernel, bool nibbleOrder,
                        gguf::GgmlType type, int64_t cols, PoolBuffer &buffer, double seconds,
                        int64_t rows) {
  const int64_t callsPerPass = 64 * kL2Rows / rows; // the same bytes a pass either way
  const uint64_t sliceBytes = *gguf::ggmlRowBytes(type, cols) * rows;
  const int threads = pool.threadCount();
  std::mt19937 random(5);
  const std::vector<float> x = randomActivations(cols, random);
  KernelInputs in(x);
  std::vector<float> y(static_cast<size_t>(rows * threads));
  auto pass = [&] {
    pool.parallelFor(threads, [&](int64_t task, int) {
      const uint8_t *slice = buffer.data() + static_cast<uint64_t>(task) * sliceBytes;
      for (int64_t call = 0; call < callsPerPass; ++call)
        kernel(slice, sliceBytes / rows, rows, x.data(), cols, in.sums.data(), in.xq(nibbleOrder),
               in.scales.data(), in.sums16.data(), 1, y.data() + task * rows, rows);
    });
  };
  pass(); // warm-up: the slices into the caches
  size_t passes = 0;
  auto start = Clock::now();
  do {
    pass();
    ++passes;
  } while (secondsSince(start) < seconds);
  return static_cast<double>(sliceBytes * threads * callsPerPass * passes) / secondsSince(start) /
         1e9;
}

// The pool's own cost per loop (fork and join): microseconds per loop of
// `tasksPerThread` empty tasks a thread, the median of 5 runs of 1000
// loops. Each single-matrix row above pays it once per matrix.
double loopMicros(cpu::ThreadPool &pool, int tasksPerThread) {
  constexpr int kLoops = 1000;
  std::vector<double> runs;
  for (int run = 0; run < 5; ++run) {
    auto start = Clock::now();
    for (int loop = 0; loop < kLoops; ++loop)
      pool.parallelFor(int64_t(pool.threadCount()) * tasksPerThread, [](int64_t, int) {});
    runs.push_back(secondsSince(start) * 1e6 / kLoops);
  }
  return kt::median(runs);
}

struct PrefillResult {
  std::string type, shape;
  int64_t tokens = 0;
  double generatedGflops = 0; // row kernels, activation quantization included
  double gemmGflops = 0;      // the runtime's prefill path: dequantize to bf16 + oneDNN
  double tileGflops = 0;   // the generated AMX tile kernels (activation rounding included); 0: none
  double onednnGflops = 0; // the peer: oneDNN alone on bf16 weights; 0: no oneDNN
};

#ifdef KT_HAVE_DNNL
// The peer: oneDNN's bf16 matmul of the same shape (AMX or AVX-512 BF16
// where the host has them), weights already in bf16, best of `repeats`.
double onednnGflops(int64_t tokens, int64_t rows, int64_t cols, int threads, int repeats) {
  using namespace dnnl;
  omp_set_num_threads(threads);
  engine cpu(engine::kind::cpu, 0);
  stream s(cpu);
  using dt = memory::data_type;
  using tag = memory::format_tag;
  memory::desc src({tokens, cols}, dt::bf16, tag::ab);
  memory::desc weights({cols, rows}, dt::bf16, tag::ba); // rows of `cols` values, as GGUF
  memory::desc dst({tokens, rows}, dt::f32, tag::ab);
  matmul::primitive_desc pd(matmul::desc(src, weights, dst), cpu);
  matmul product(pd);
  memory a(src, cpu), b(weights, cpu), c(dst, cpu);
  std::mt19937 random(3);
  for (memory *m : {&a, &b}) {
    auto *data = static_cast<uint16_t *>(m->get_data_handle());
    size_t count = m->get_desc().get_size() / 2;
    for (size_t i = 0; i < count; ++i)
      data[i] = static_cast<uint16_t>(0x3c00 + (random() & 0x3ff)) ^ ((random() & 1) << 15); // +-[1, 2)
  }
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    auto start = Clock::now();
    product.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    s.wait();
    best = std::min(best, secondsSince(start));
  }
  return 2.0 * tokens * rows * cols / best / 1e9;
}
#endif

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"Times the generated CPU expert kernels against memory bandwidth"};
  std::string kernelsPath;
  int threads = 0;
  double poolGiB = 2.0;
  double seconds = 1.0;
  int rounds = 3;
  bool json = false;
  std::vector<std::string> types = {"q4_K", "q5_K", "q6_K", "q8_0"};
  app.add_option("--kernels", kernelsPath,
                 "Shared object from `ktc cpu-kernels` with kt_rows_TYPE_7168 and _2048 for each "
                 "type (compiled for this host's ISA)")
      ->required();
  app.add_option("--threads", threads, "Threads (0: all hardware threads)");
  app.add_option("--pool-gib", poolGiB, "Bytes of distinct expert matrices cycled through (GiB)");
  app.add_option("--seconds", seconds,
                 "Time of each row's rounds, of the reference kernels' run and of each compute "
                 "rate");
  app.add_option("--rounds", rounds,
                 "Least rounds per row, each a pass of the read bandwidth over the pool then a "
                 "pass of the kernel over it (the row reports the medians)")
      ->check(CLI::Range(1, 100));
  app.add_option("--types", types, "Weight types");
  app.add_flag("--json", json, "Print the results as JSON");
  std::vector<int64_t> prefillTokens;
  app.add_option("--prefill", prefillTokens,
                 "Also time prefill expert GEMMs of these token counts (e.g. 512 4096) against "
                 "oneDNN's bf16 matmul of the same shape");
  std::string pagesName = "system";
  app.add_option("--pages", pagesName,
                 "Pages of the expert bytes: system (the kernel's transparent huge page "
                 "setting), small (4 KiB, as in the model file's mapping the runtime reads "
                 "experts from) or huge (transparent huge pages, as in the NUMA placement's "
                 "copies)")
      ->check(CLI::IsMember({"system", "small", "huge"}));
  CLI11_PARSE(app, argc, argv);
  const cpu::PageKind pages = pagesName == "small"  ? cpu::PageKind::Small
                              : pagesName == "huge" ? cpu::PageKind::Huge
                                                    : cpu::PageKind::System;

  void *handle = dlopen(kernelsPath.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    std::fprintf(stderr, "cpu_expert_bench: error: cannot load %s: %s\n", kernelsPath.c_str(), dlerror());
    return 1;
  }
  cpu::ThreadPool pool(threads);
  // At least the 8 experts of a decode step in the largest type (q8_0: 3
  // matrices of 7168 x 2048, 15 MiB each), which the decode row reads.
  const size_t leastBytes = 8 * 3 * *gguf::ggmlRowBytes(gguf::GgmlType::Q8_0, 7168) * 2048;
  const size_t poolBytes =
      std::max<size_t>(static_cast<size_t>(poolGiB * (1ull << 30)), leastBytes);
  PoolBuffer buffer(poolBytes, pages);
  if (!buffer.data()) {
    std::fprintf(stderr,
                 "cpu_expert_bench: error: cannot map %zu bytes for the expert pool: %s; use a "
                 "smaller --pool-gib\n",
                 poolBytes, std::strerror(errno));
    return 1;
  }
  std::mt19937_64 random(7);
  for (size_t i = 0; i < buffer.size(); i += 8) {
    uint64_t word = random();
    std::memcpy(buffer.data() + i, &word, std::min<size_t>(8, buffer.size() - i));
  }
  const double bandwidth = cpu::measureReadBandwidth(pool, buffer.data(), buffer.size(), 5);
  const double hugeMiB = hugePagesMiBAt(buffer.data()); // after the fill placed the pages

  // DeepSeek-V3 experts: gate/up [2048 rows of 7168], down [7168 rows of 2048].
  const Shape shapes[] = {{"7168x2048 (gate/up)", 2048, 7168}, {"2048x7168 (down)", 7168, 2048}};
  std::vector<Result> results;
  struct ComputeRate {
    std::string type;
    double l2GBs = 0, l1GBs = 0;
  };
  std::vector<ComputeRate> computeRates;
  for (const std::string &typeName : types) {
    std::optional<gguf::GgmlType> type = gguf::parseGgmlType(typeName);
    if (!type || !cpu::hasGeneratedRowKernel(*type)) {
      std::fprintf(stderr, "cpu_expert_bench: error: no generated kernels for type '%s'\n", typeName.c_str());
      return 1;
    }
    for (const Shape &shape : shapes) {
      const std::string symbol = cpu::rowKernelSymbol(*type, shape.cols);
      auto kernel = reinterpret_cast<cpu::RowKernel>(dlsym(handle, symbol.c_str()));
      const bool nibbleOrder = readsNibbleOrder(handle, *type, shape.cols);
      if (!kernel) {
        std::fprintf(stderr, "cpu_expert_bench: error: %s lacks %s; build it with ktc cpu-kernels --kernel %s:%lld\n",
                     kernelsPath.c_str(), symbol.c_str(), typeName.c_str(), static_cast<long long>(shape.cols));
        return 1;
      }
      const uint64_t rowBytes = *gguf::ggmlRowBytes(*type, shape.cols);
      const uint64_t matrixBytes = rowBytes * static_cast<uint64_t>(shape.rows);
      const size_t matrices = std::max<size_t>(2, poolBytes / matrixBytes);
      // The pool's bytes as `matrices` expert matrices, scales made finite.
      bench::makeScalesFinite(*type, buffer.data(), matrices * matrixBytes, 0x1800,
                              /*vary=*/true); // ~0.0005..0.001
      const std::vector<float> x = randomActivations(shape.cols, random);
      KernelInputs in(x);
      std::vector<float> y(static_cast<size_t>(shape.rows));
      // A matrix's rows as the runtime splits one matrix (cpu::matmul): 4
      // tasks per thread of row groups, shorter at the end.
      const std::vector<int64_t> starts = cpu::GuidedSplit::taskStarts(
          shape.rows, pool.threadCount(), cpu::kRowGroup, 4, cpu::kRowTailGroup);
      const int64_t tasks = static_cast<int64_t>(starts.size()) - 1;

      // For `runSeconds`, and at least once over every matrix of the pool.
      auto run = [&](bool generated, double runSeconds) {
        size_t next = 0, done = 0;
        auto start = Clock::now();
        do {
          const uint8_t *matrix = buffer.data() + (next++ % matrices) * matrixBytes;
          pool.parallelFor(tasks, [&](int64_t task, int) {
            const int64_t begin = starts[static_cast<size_t>(task)],
                          end = starts[static_cast<size_t>(task) + 1];
            if (generated) {
              kernel(matrix + static_cast<uint64_t>(begin) * rowBytes, rowBytes, end - begin,
                     x.data(), shape.cols, in.sums.data(), in.xq(nibbleOrder), in.scales.data(),
                     in.sums16.data(), 1, y.data() + begin, shape.rows);
            } else {
              cpu::WeightMatrix w{*type, matrix, shape.rows, shape.cols, rowBytes};
              cpu::matmulRows(w, begin, end, x.data(), shape.cols, 1, y.data() + begin, shape.rows,
                              cpu::threadScratch(0, cpu::matmulScratchFloats(w)));
            }
          });
          ++done;
        } while (secondsSince(start) < runSeconds || done < matrices);
        return static_cast<double>(matrixBytes) * static_cast<double>(done) / secondsSince(start);
      };
      run(true, 0); // warm-up: page in the pool
      Result result;
      result.type = typeName;
      result.shape = shape.name;
      result.matrixMiB = static_cast<double>(matrixBytes) / (1 << 20);
      pairedWithCeiling(
          pool, buffer, seconds, rounds, [&] { return run(true, 0); }, result);
      result.referenceGBs = run(false, seconds) / 1e9;
      results.push_back(result);
    }
    results.push_back(decodeLayer(pool, handle, *type, typeName, buffer, seconds, rounds));
    auto computeRate = [&](int64_t rows) {
      return cacheResidentGBs(pool,
                              reinterpret_cast<cpu::RowKernel>(dlsym(
                                  handle, cpu::rowKernelSymbol(*type, shapes[1].cols).c_str())),
                              readsNibbleOrder(handle, *type, shapes[1].cols), *type,
                              shapes[1].cols, buffer, seconds, rows);
    };
    computeRates.push_back({typeName, computeRate(kL2Rows), computeRate(kL1Rows)});
  }

  // Prefill: one expert matrix times many tokens; compute-bound, so one
  // matrix (in the caches after the first pass) is enough.
  std::vector<PrefillResult> prefill;
  for (int64_t tokens : prefillTokens)
    for (const std::string &typeName : types) {
      gguf::GgmlType type = *gguf::parseGgmlType(typeName);
      for (const Shape &shape : shapes) {
        auto kernel = reinterpret_cast<cpu::RowKernel>(
            dlsym(handle, cpu::rowKernelSymbol(type, shape.cols).c_str()));
        const bool nibbleOrder = readsNibbleOrder(handle, type, shape.cols);
        const uint64_t rowBytes = *gguf::ggmlRowBytes(type, shape.cols);
        const std::vector<float> x = randomActivations(tokens * shape.cols, random);
        std::vector<float> xsum(static_cast<size_t>(tokens * shape.cols / 32));
        std::vector<int8_t> xq(static_cast<size_t>(tokens * shape.cols));
        std::vector<float> xqScale(static_cast<size_t>(tokens * shape.cols / 256));
        std::vector<int16_t> xqSum16(static_cast<size_t>(tokens * shape.cols / 16));
        std::vector<float> y(static_cast<size_t>(tokens * shape.rows));
        const int64_t rowTasks = (shape.rows + 15) / 16;
        const int64_t tokenTasks = pool.threadCount();
        auto once = [&] {
          // What the runtime does per expert batch: the inputs once, then
          // 16-row tasks over all tokens.
          pool.parallelFor(tokenTasks, [&](int64_t task, int) {
            const int64_t begin = tokens * task / tokenTasks, end = tokens * (task + 1) / tokenTasks;
            if (begin == end)
              return;
            const float *rowsOfX = x.data() + begin * shape.cols;
            cpu::sumRunsOf32(rowsOfX, shape.cols, shape.cols, end - begin, xsum.data() + begin * shape.cols / 32);
            int8_t *rowsOfXq = xq.data() + begin * shape.cols; // in the kernel's order
            cpu::quantizeActivations(
                rowsOfX, shape.cols, shape.cols, end - begin, nibbleOrder ? nullptr : rowsOfXq,
                xqScale.data() + begin * shape.cols / 256, xqSum16.data() + begin * shape.cols / 16,
                nibbleOrder ? rowsOfXq : nullptr);
          });
          pool.parallelFor(rowTasks, [&](int64_t task, int) {
            const int64_t begin = task * 16, end = std::min(shape.rows, begin + 16);
            kernel(buffer.data() + static_cast<uint64_t>(begin) * rowBytes, rowBytes, end - begin, x.data(),
                   shape.cols, xsum.data(), xq.data(), xqScale.data(), xqSum16.data(), tokens,
                   y.data() + begin, shape.rows);
          });
        };
        once();
        double best = 1e30;
        for (int r = 0; r < 3; ++r) {
          auto start = Clock::now();
          once();
          best = std::min(best, secondsSince(start));
        }
        cpu::WeightMatrix w{type, buffer.data(), shape.rows, shape.cols, rowBytes};
        cpu::ExpertGemm gemm;
        gemm.multiply(pool, w, x.data(), tokens, y.data(), shape.rows);
        double bestGemm = 1e30;
        for (int r = 0; r < 3; ++r) {
          auto start = Clock::now();
          gemm.multiply(pool, w, x.data(), tokens, y.data(), shape.rows);
          bestGemm = std::min(bestGemm, secondsSince(start));
        }
        PrefillResult result;
        if (auto tiles = reinterpret_cast<cpu::TileKernel>(
                dlsym(handle, cpu::tileKernelSymbol(type, shape.cols).c_str()));
            tiles && cpu::enableAmxTiles().empty()) {
          w.kernel.tiles = tiles;
          std::vector<uint16_t> xBf16(
              static_cast<size_t>(cpu::paddedTileTokens(tokens) * shape.cols));
          cpu::tileMatmul(pool, w, x.data(), tokens, xBf16.data(), y.data(), shape.rows);
          double bestTiles = 1e30;
          for (int r = 0; r < 3; ++r) {
            auto start = Clock::now();
            cpu::tileMatmul(pool, w, x.data(), tokens, xBf16.data(), y.data(), shape.rows);
            bestTiles = std::min(bestTiles, secondsSince(start));
          }
          result.tileGflops = 2.0 * tokens * shape.rows * shape.cols / bestTiles / 1e9;
        }
        result.gemmGflops = 2.0 * tokens * shape.rows * shape.cols / bestGemm / 1e9;
        result.type = typeName;
        result.shape = shape.name;
        result.tokens = tokens;
        result.generatedGflops = 2.0 * tokens * shape.rows * shape.cols / best / 1e9;
#ifdef KT_HAVE_DNNL
        if (cpu::haveExpertGemm()) // oneDNN has bf16 matmul on this host
          result.onednnGflops = onednnGflops(tokens, shape.rows, shape.cols, pool.threadCount(), 5);
#endif
        prefill.push_back(result);
      }
    }

  const double loopOneUs = loopMicros(pool, 1), loopFourUs = loopMicros(pool, 4);
  if (json) {
    nlohmann::json out = {
        {"threads", pool.threadCount()},
        {"pool_loop_us", {{"one_task_a_thread", loopOneUs}, {"four_tasks_a_thread", loopFourUs}}},
        {"read_bandwidth_gbs", bandwidth / 1e9},
        {"huge_page_mib", hugeMiB},
        {"kernels", kernelsPath},
        {"results", nlohmann::json::array()}};
    for (const Result &r : results)
      out["results"].push_back({{"type", r.type},
                                {"shape", r.shape},
                                {"matrix_mib", r.matrixMiB},
                                {"generated_gbs", r.generatedGBs},
                                {"reference_gbs", r.referenceGBs},
                                {"ratio_to_bandwidth", r.ratio},
                                {"bandwidth_beside_gbs", r.ceilingGBs},
                                {"rounds", r.rounds},
                                {"speedup_over_reference", r.generatedGBs / r.referenceGBs}});
    out["compute_rate"] = nlohmann::json::array();
    for (const ComputeRate &rate : computeRates)
      out["compute_rate"].push_back({{"type", rate.type},
                                     {"cache_resident_gbs", rate.l2GBs},
                                     {"ratio_to_bandwidth", rate.l2GBs * 1e9 / bandwidth},
                                     {"l1_resident_gbs", rate.l1GBs}});
    out["prefill"] = nlohmann::json::array();
    for (const PrefillResult &r : prefill)
      out["prefill"].push_back({{"type", r.type},
                                {"shape", r.shape},
                                {"tokens", r.tokens},
                                {"generated_gflops", r.generatedGflops},
                                {"gemm_gflops", r.gemmGflops},
                                {"tile_gflops", r.tileGflops},
                                {"onednn_bf16_gflops", r.onednnGflops},
                                {"gemm_ratio_to_onednn", r.onednnGflops > 0 ? r.gemmGflops / r.onednnGflops : 0.0},
                                {"tile_ratio_to_onednn", r.onednnGflops > 0 ? r.tileGflops / r.onednnGflops : 0.0}});
    std::printf("%s\n", out.dump(1).c_str());
    return 0;
  }
  std::printf("memory read bandwidth, %d threads: %.1f GB/s (best of 10 passes over %.1f GiB, half "
              "with software prefetch)\n",
              pool.threadCount(), bandwidth / 1e9, poolGiB);
  if (hugeMiB >= 0)
    std::printf("expert bytes: %.0f of %.0f MiB in transparent huge pages (--pages)\n", hugeMiB,
                static_cast<double>(buffer.size()) / (1 << 20));
  std::printf("rows: rounds of a pass of the read bandwidth over the pool (plain and prefetched, "
              "the better) then a pass of the kernel over it, for %g s a row and at least %d "
              "rounds; medians of each side and of the rounds' ratios ('of bw', target 85%% or "
              "more)\n",
              seconds, rounds);
  std::printf("%-6s %-20s %9s %12s %12s %8s %12s %10s\n", "type", "matrix", "MiB", "generated",
              "bandwidth", "of bw", "reference", "speedup");
  for (const Result &r : results)
    std::printf("%-6s %-20s %9.2f %8.1f GB/s %7.1f GB/s %7.0f%% %7.1f GB/s %9.1fx\n",
                r.type.c_str(), r.shape.c_str(), r.matrixMiB, r.generatedGBs, r.ceilingGBs,
                100 * r.ratio, r.referenceGBs, r.generatedGBs / r.referenceGBs);
  std::printf("\ncompute rate: one token, each thread's 256 rows of 2048 values cached in its L2 "
              "(where not well above the read bandwidth, the instructions bound decode), and "
              "16 rows in its L1 (where well above the L2 rate, the way from L2 does)\n");
  for (const ComputeRate &rate : computeRates)
    std::printf("%-6s %8.1f GB/s %6.2fx the read bandwidth; L1: %8.1f GB/s, %.2fx the L2 rate\n",
                rate.type.c_str(), rate.l2GBs, rate.l2GBs * 1e9 / bandwidth, rate.l1GBs,
                rate.l1GBs / rate.l2GBs);
  std::printf("\nthread pool: a loop of one empty task a thread %.1f us, of four a thread %.1f us "
              "(the fork and join each single matrix above pays once)\n",
              loopOneUs, loopFourUs);
  if (!prefill.empty()) {
    std::printf("\nprefill expert GEMM, GFLOP/s: row kernels; AMX tile kernels (generated, "
                "activations rounded to bf16 included); the GEMM path (dequantize to bf16 + "
                "oneDNN); oneDNN alone on bf16 weights (the peer); ratios to the peer (target "
                "70%% or more)\n");
    std::printf("%-6s %-20s %7s %12s %12s %12s %12s %8s %8s\n", "type", "matrix", "tokens",
                "row kernels", "AMX tiles", "GEMM path", "oneDNN bf16", "tiles", "GEMM");
    // "-": not on this host (no AMX tiles, or no bf16 matmul in oneDNN).
    auto number = [](double value) { return value > 0 ? std::to_string(std::lround(value)) : "-"; };
    auto percent = [&](double part, double peer) {
      return part > 0 && peer > 0 ? number(100 * part / peer) + "%" : std::string("-");
    };
    for (const PrefillResult &r : prefill)
      std::printf("%-6s %-20s %7lld %12s %12s %12s %12s %8s %8s\n", r.type.c_str(), r.shape.c_str(),
                  static_cast<long long>(r.tokens), number(r.generatedGflops).c_str(),
                  number(r.tileGflops).c_str(), number(r.gemmGflops).c_str(),
                  number(r.onednnGflops).c_str(), percent(r.tileGflops, r.onednnGflops).c_str(),
                  percent(r.gemmGflops, r.onednnGflops).c_str());
  }
  return 0;
}
