// gpu_kernel_bench: the decode GEMV kernels at DeepSeek-V3 shapes against the
// GPU's memory bandwidth measured in the same run (a large device-to-device
// copy, bytes read plus written).
//
//   gpu_kernel_bench [--json]
//
// Each kernel is timed over many launches (host clock around a synchronize,
// after a warm-up), rotating among enough distinct weight buffers that they
// cannot sit in L2; bytes = the matrix plus x and y. Weights are random
// blocks with small finite scales (never zeros).
#include "bench/GpuBench.h"
#include "bench/RandomBlocks.h"
#include "runtime/cuda/CudaDevice.h"
#include "runtime/cuda/DeviceQuery.h"
#include "runtime/cuda/KernelCache.h"
#include "runtime/cuda/KernelCatalog.h"
#include "runtime/cuda/Nvrtc.h"
#include "runtime/gguf/GgmlType.h"
#include "runtime/quant/Quant.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace kt;
using Clock = std::chrono::steady_clock;

double secondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

int fail(const std::string &message) {
  std::fprintf(stderr, "gpu_kernel_bench: error: %s\n", message.c_str());
  return 1;
}

struct Shape {
  const char *name;
  int64_t out, in;
};

struct Result {
  std::string type, shape;
  double mib = 0, gbs = 0, microseconds = 0;
};

// Seconds per launch of `kernel` over `launches` launches after 20 warm-up
// ones, launch i reading weights[i % size]; `arguments` gives the kernel's
// argument pointers for one weight buffer.
StatusOr<double>
timeLaunches(cuda::CudaDevice &device, const cuda::LoadedKernel &kernel,
             const cuda::LaunchShape &launch, std::vector<cuda::DevicePointer> weights,
             int launches,
             const std::function<std::vector<void *>(cuda::DevicePointer &)> &arguments) {
  auto run = [&](int count) -> Status {
    for (int i = 0; i < count; ++i)
      if (Status s = device.launch(kernel, launch, arguments(weights[size_t(i) % weights.size()]));
          !s.ok())
        return s;
    return device.synchronize();
  };
  if (Status s = run(20); !s.ok())
    return s;
  auto start = Clock::now();
  if (Status s = run(launches); !s.ok())
    return s;
  return secondsSince(start) / launches;
}

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"Times the GPU kernels: decode GEMVs, RMSNorm, MLA decode, the expert choice and "
               "RoPE against the GPU's memory bandwidth; prefill GEMVs (token tiles, grouped "
               "experts) and MLA prefill against its f32 FMA ceiling, all measured in the run"};
  bool json = false;
  int launches = 200;
  double ringMiB = 1024;
  bool gemvSweep = false;
  app.add_flag("--json", json, "Print the results as JSON");
  app.add_flag(
      "--gemv-sweep", gemvSweep,
      "Also time the q8_0, q4_K, q6_K and f32 decode GEMVs with 1 to 16 warps per row (K_SPLIT), "
      "marking the kernel catalog's choice: the data behind gemvColumnSplit");
  app.add_option("--launches", launches, "Timed launches per kernel")->check(CLI::PositiveNumber);
  app.add_option("--ring-mib", ringMiB, "Bytes of distinct weight buffers cycled through (MiB)");
  CLI11_PARSE(app, argc, argv);

  StatusOr<bench::BenchGpu> gpu = bench::openBenchGpu();
  if (!gpu)
    return fail(gpu.message());
  cuda::CudaDevice &device = *gpu->device;
  cuda::KernelCache &cache = *gpu->cache;
  const std::vector<cuda::GpuInfo> gpus = {gpu->info};
  const std::string arch = gpus[0].arch();

  // The ceiling: a 1 GiB device-to-device copy, best of 10.
  const size_t copyBytes = size_t(1) << 30;
  StatusOr<cuda::DevicePointer> a = device.allocate(copyBytes), b = device.allocate(copyBytes);
  if (!a || !b)
    return fail("cannot allocate the copy buffers");
  double bestCopy = 1e30;
  for (int i = 0; i < 11; ++i) {
    auto start = Clock::now();
    if (Status s = device.copyOnDevice(*b, *a, copyBytes); !s.ok())
      return fail(s.message());
    if (Status s = device.synchronize(); !s.ok())
      return fail(s.message());
    if (i > 0)
      bestCopy = std::min(bestCopy, secondsSince(start));
  }
  const double bandwidth = 2.0 * copyBytes / bestCopy;
  (void)device.free(*a);
  (void)device.free(*b);

  const Shape shapes[] = {
      {"q_a_proj 1536x7168", 1536, 7168},     {"q_b_proj 24576x1536", 24576, 1536},
      {"kv_a 576x7168", 576, 7168},           {"o_proj 7168x16384", 7168, 16384},
      {"shared gate 2048x7168", 2048, 7168},  {"shared down 7168x2048", 7168, 2048},
      {"lm_head 129280x7168", 129280, 7168},  {"dense gate 18432x7168", 18432, 7168},
      {"dense down 7168x18432", 7168, 18432}, {"router 256x7168", 256, 7168}};
  std::mt19937_64 random(9);
  std::vector<Result> results;
  auto compileAndLoad =
      [&](const StatusOr<cuda::KernelSpec> &spec) -> StatusOr<cuda::LoadedKernel> {
    if (!spec)
      return spec.status();
    StatusOr<cuda::CompiledKernel> compiled = cache.getOrCompile(*spec, arch);
    if (!compiled)
      return compiled.status();
    return device.load(*compiled);
  };
  // One decode GEMV of `type` at `shape` with `spec`, `gridX` blocks;
  // `planes`: the split-row q8_0 GEMV over x quantized into planes (once,
  // before the timed launches; quantize_planes is timed on its own).
  auto timeDecodeGemv = [&](gguf::GgmlType type, const Shape &shape,
                            const StatusOr<cuda::KernelSpec> &spec, unsigned gridX,
                            bool planes = false) -> StatusOr<Result> {
    StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec);
    if (!kernel)
      return kernel.status();
    const size_t matrixBytes = *gguf::ggmlRowBytes(type, shape.in) * size_t(shape.out);
    const size_t copies = std::max<size_t>(2, size_t(ringMiB * (1 << 20)) / matrixBytes);
    std::vector<uint8_t> host(matrixBytes);
    if (type == gguf::GgmlType::F32) {
      std::normal_distribution<float> normal(0.0f, 0.05f);
      for (size_t i = 0; i + 4 <= host.size(); i += 4) {
        const float value = normal(random);
        std::memcpy(host.data() + i, &value, 4);
      }
    } else {
      for (size_t i = 0; i + 8 <= host.size(); i += 8) {
        uint64_t word = random();
        std::memcpy(host.data() + i, &word, 8);
      }
      bench::makeScalesFinite(type, host.data(), host.size(), 0x1800); // 2^-9
    }
    if (planes) {
      std::vector<uint8_t> split(host.size());
      if (Status st = quant::splitQ8_0Rows(host.data(), split.data(), shape.out, shape.in);
          !st.ok())
        return st;
      host = std::move(split);
    }
    std::vector<cuda::DevicePointer> weights;
    auto release = [&] {
      for (cuda::DevicePointer w : weights)
        (void)device.free(w);
    };
    for (size_t c = 0; c < copies; ++c) {
      StatusOr<cuda::DevicePointer> p = device.allocate(matrixBytes);
      if (!p) {
        release();
        return p.status();
      }
      weights.push_back(*p);
      if (Status st = device.copyToDevice(*p, host.data(), host.size()); !st.ok()) {
        release();
        return st;
      }
    }
    std::vector<float> xHost(static_cast<size_t>(shape.in));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float &v : xHost)
      v = normal(random);
    StatusOr<cuda::DevicePointer> x = device.allocate(xHost.size() * 4),
                                  y = device.allocate(size_t(shape.out) * 4);
    if (!x || !y) {
      release();
      return Status::error("cannot allocate x or y");
    }
    (void)device.copyToDevice(*x, xHost.data(), xHost.size() * 4);
    cuda::DevicePointer xPlanes = 0, xScales = 0; // the planes GEMV's x
    if (planes) {
      StatusOr<cuda::DevicePointer> p = device.allocate(size_t(cuda::planesBytes(shape.in))),
                                    s = device.allocate(size_t(cuda::planeScalesBytes(shape.in)));
      if (!p || !s) {
        release();
        return Status::error("cannot allocate the planes");
      }
      xPlanes = *p;
      xScales = *s;
      StatusOr<cuda::LoadedKernel> quantize = compileAndLoad(cuda::quantizePlanesSpec(shape.in));
      if (!quantize) {
        release();
        return quantize.status();
      }
      cuda::LaunchShape quantizeLaunch;
      quantizeLaunch.gridX = cuda::quantizePlanesGridBlocks(shape.in);
      quantizeLaunch.blockX = cuda::kQuantizePlanesThreads;
      if (Status st = device.launch(*quantize, quantizeLaunch, {&*x, &xPlanes, &xScales});
          !st.ok()) {
        release();
        return st;
      }
    }
    cuda::LaunchShape launch;
    launch.gridX = gridX;
    launch.blockX = spec->blockThreads;
    cuda::GemvLayout layout{int(shape.in), int(shape.out), 0, 0};
    StatusOr<double> timed =
        timeLaunches(device, *kernel, launch, weights, launches, [&](cuda::DevicePointer &w) {
          if (planes)
            return std::vector<void *>{&w, &xPlanes, &xScales, &*y};
          return std::vector<void *>{&w, &*x, &*y, &layout};
        });
    release();
    if (planes) {
      (void)device.free(xPlanes);
      (void)device.free(xScales);
    }
    (void)device.free(*x);
    (void)device.free(*y);
    if (!timed)
      return timed.status();
    Result result;
    result.type = std::string(gguf::ggmlTypeTraits(type).name) + (planes ? " planes" : "");
    result.shape = shape.name;
    result.mib = double(matrixBytes) / (1 << 20);
    result.microseconds = *timed * 1e6;
    result.gbs = double(matrixBytes + 4 * (shape.in + shape.out)) / *timed / 1e9;
    return result;
  };
  const Shape &router = shapes[std::size(shapes) - 1]; // f32 only
  for (gguf::GgmlType type :
       {gguf::GgmlType::Q8_0, gguf::GgmlType::Q4_K, gguf::GgmlType::Q6_K, gguf::GgmlType::F32}) {
    for (const Shape &shape : shapes) {
      if ((type == gguf::GgmlType::F32) != (&shape == &router))
        continue;
      StatusOr<Result> result =
          timeDecodeGemv(type, shape, cuda::gemvSpec(type, shape.out, shape.in),
                         cuda::gemvGridBlocks(type, shape.out, shape.in));
      if (!result)
        return fail(result.message());
      results.push_back(*result);
      // Dense q8_0 matrices run decode as split rows over x's planes (the
      // row above: the GGUF layout over f32 x, their peer in this run).
      if (cuda::denseGemvVariant(type, shape.in) == cuda::GemvVariant::SplitRows) {
        result = timeDecodeGemv(type, shape, cuda::gemvQ8_0PlanesSpec(shape.out, shape.in),
                                cuda::gemvQ8_0PlanesGridBlocks(shape.out, shape.in), true);
        if (!result)
          return fail(result.message());
        results.push_back(*result);
      }
    }
  }
  // The planes' quantization of each q8_0 matrix's x (one token), alone.
  for (int64_t in : {int64_t(7168), int64_t(1536), int64_t(16384), int64_t(2048)}) {
    StatusOr<cuda::LoadedKernel> quantize = compileAndLoad(cuda::quantizePlanesSpec(in));
    StatusOr<cuda::DevicePointer> x = device.allocate(size_t(in) * 4),
                                  xPlanes = device.allocate(size_t(cuda::planesBytes(in))),
                                  xScales = device.allocate(size_t(cuda::planeScalesBytes(in)));
    if (!quantize || !x || !xPlanes || !xScales)
      return fail("cannot set up quantize_planes of " + std::to_string(in) + " values");
    std::vector<float> xHost(static_cast<size_t>(in));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float &v : xHost)
      v = normal(random);
    (void)device.copyToDevice(*x, xHost.data(), xHost.size() * 4);
    cuda::LaunchShape launch;
    launch.gridX = cuda::quantizePlanesGridBlocks(in);
    launch.blockX = cuda::kQuantizePlanesThreads;
    StatusOr<double> timed =
        timeLaunches(device, *quantize, launch, {*x}, launches, [&](cuda::DevicePointer &from) {
          return std::vector<void *>{&from, &*xPlanes, &*xScales};
        });
    for (cuda::DevicePointer p : {*x, *xPlanes, *xScales})
      (void)device.free(p);
    if (!timed)
      return fail(timed.message());
    const double bytes =
        double(in) * 4 + double(cuda::planesBytes(in) + cuda::planeScalesBytes(in));
    results.push_back({"planes", "quantize x of " + std::to_string(in), bytes / (1 << 20),
                       bytes / *timed / 1e9, *timed * 1e6});
  }

  // --gemv-sweep: the q8_0, k-quant and f32 decode GEMVs with each column split
  // (warps per row), against the catalog's choice.
  struct SweepRow {
    std::string type, shape;
    unsigned split, rowsPerWarp;
    bool chosen;
    double microseconds, gbs;
  };
  std::vector<SweepRow> sweep;
  for (gguf::GgmlType type :
       {gguf::GgmlType::Q8_0, gguf::GgmlType::Q4_K, gguf::GgmlType::Q6_K, gguf::GgmlType::F32}) {
    if (!gemvSweep)
      break;
    for (const Shape &shape : shapes) {
      if ((type == gguf::GgmlType::F32) != (&shape == &router))
        continue;
      const unsigned chosen = cuda::gemvColumnSplit(type, shape.out, shape.in);
      // A warp's 16-byte steps along a row (as gemvColumnSplit counts them).
      const int64_t warpSteps = shape.in / (type == gguf::GgmlType::Q8_0  ? 8 * 32
                                            : type == gguf::GgmlType::F32 ? 4 * 32
                                                                          : 4 * 256);
      for (unsigned split = 1; split <= cuda::kGemvMaxColumnSplit; split *= 2) {
        if (warpSteps < int64_t(split) || (shape.out > 100000 && split > 2))
          continue; // one step a warp at least; lm_head has rows enough
        StatusOr<cuda::KernelSpec> spec = cuda::gemvSpec(type, shape.out, shape.in);
        if (!spec)
          return fail(spec.message());
        std::map<std::string, std::string> defines = spec->defines;
        const unsigned threads = cuda::gemvSetColumnSplit(defines, split);
        StatusOr<cuda::KernelSpec> variant =
            cuda::makeKernelSpec(spec->file, spec->entry, defines, threads);
        const bool kQuant = type == gguf::GgmlType::Q4_K || type == gguf::GgmlType::Q6_K;
        const int64_t blockRows =
            int64_t(cuda::gemvSplitRowsPerBlock(split)) *
            (kQuant                         ? cuda::gemvKQuantRowsPerWarp(shape.out)
             : type == gguf::GgmlType::Q8_0 ? cuda::gemvQ8_0RowsPerWarp(shape.in, 1)
                                            : 1);
        StatusOr<Result> result =
            timeDecodeGemv(type, shape, variant, unsigned((shape.out + blockRows - 1) / blockRows));
        if (!result)
          return fail(result.message());
        sweep.push_back({result->type, shape.name, split,
                         unsigned(blockRows / cuda::gemvSplitRowsPerBlock(split)), split == chosen,
                         result->microseconds, result->gbs});
      }
    }
  }
  // Short q8_0 rows (MLA's k_b: 128 heads x 512 rows of 128 values, timed as
  // one matrix of their rows) with 1 to 16 rows a warp: the data behind
  // gemvQ8_0RowsPerWarp.
  if (gemvSweep) {
    const Shape kB = {"k_b 65536x128", 65536, 128};
    const unsigned chosen = cuda::gemvQ8_0RowsPerWarp(kB.in, 1);
    for (unsigned rows = 1; rows <= 16; rows *= 2) {
      StatusOr<cuda::KernelSpec> spec = cuda::gemvSpec(gguf::GgmlType::Q8_0, kB.out, kB.in);
      if (!spec)
        return fail(spec.message());
      std::map<std::string, std::string> defines = spec->defines;
      defines["ROWS_PER_WARP"] = std::to_string(rows);
      StatusOr<cuda::KernelSpec> variant =
          cuda::makeKernelSpec(spec->file, spec->entry, defines, spec->blockThreads);
      const int64_t blockRows = int64_t(spec->blockThreads / 32) * rows;
      StatusOr<Result> result = timeDecodeGemv(gguf::GgmlType::Q8_0, kB, variant,
                                               unsigned((kB.out + blockRows - 1) / blockRows));
      if (!result)
        return fail(result.message());
      sweep.push_back(
          {result->type, kB.name, 1, rows, rows == chosen, result->microseconds, result->gbs});
    }
  }

  // FP8 (e4m3 with 128x128 block scales): random non-NaN bytes.
  for (const Shape &shape : shapes) {
    if (&shape == &router)
      continue;
    StatusOr<cuda::KernelSpec> spec = cuda::gemvFp8Spec(shape.out, shape.in);
    StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec);
    if (!kernel)
      return fail(kernel.message());
    const size_t matrixBytes = size_t(shape.out) * size_t(shape.in);
    const size_t scaleCount = size_t((shape.out + 127) / 128) * size_t((shape.in + 127) / 128);
    const size_t copies = std::max<size_t>(2, size_t(ringMiB * (1 << 20)) / matrixBytes);
    std::vector<uint8_t> host(matrixBytes);
    for (uint8_t &b : host) {
      b = static_cast<uint8_t>(random());
      if ((b & 0x7f) == 0x7f)
        b ^= 1;
    }
    std::vector<float> scales(scaleCount, 1e-3f);
    std::vector<cuda::DevicePointer> weights;
    for (size_t c = 0; c < copies; ++c) {
      StatusOr<cuda::DevicePointer> p = device.allocate(matrixBytes);
      if (!p)
        return fail(p.message());
      (void)device.copyToDevice(*p, host.data(), host.size());
      weights.push_back(*p);
    }
    std::vector<float> xHost(static_cast<size_t>(shape.in), 0.5f);
    StatusOr<cuda::DevicePointer> s = device.allocate(scales.size() * 4),
                                  x = device.allocate(xHost.size() * 4),
                                  y = device.allocate(size_t(shape.out) * 4);
    if (!s || !x || !y)
      return fail("cannot allocate scales, x or y");
    (void)device.copyToDevice(*s, scales.data(), scales.size() * 4);
    (void)device.copyToDevice(*x, xHost.data(), xHost.size() * 4);
    cuda::LaunchShape launch;
    launch.gridX = unsigned((shape.out + cuda::kGemvRowsPerBlock - 1) / cuda::kGemvRowsPerBlock);
    launch.blockX = spec->blockThreads;
    cuda::GemvLayout layout{int(shape.in), int(shape.out), 0, 0};
    StatusOr<double> timed =
        timeLaunches(device, *kernel, launch, weights, launches, [&](cuda::DevicePointer &w) {
          return std::vector<void *>{&w, &*s, &*x, &*y, &layout};
        });
    if (!timed)
      return fail(timed.message());
    const double seconds = *timed;
    results.push_back({"f8_e4m3", shape.name, double(matrixBytes) / (1 << 20),
                       double(matrixBytes + 4 * (shape.in + shape.out)) / seconds / 1e9,
                       seconds * 1e6});
    for (cuda::DevicePointer w : weights)
      (void)device.free(w);
    (void)device.free(*s);
    (void)device.free(*x);
    (void)device.free(*y);
  }

  // Beyond the GEMVs: RMSNorm over prefill rows, and MLA decode attention
  // (split over the executor's pieces, then combined) at V3's widths over
  // cached contexts of several lengths; bytes are what each must read and
  // write at least (the cache once, not once per head; the pieces used).
  auto timeRepeated = [&](const std::function<Status()> &launchOnce) {
    return bench::secondsPerLaunch(device, 20, launches, launchOnce);
  };
  auto randomBuffer = [&](size_t floats) -> StatusOr<cuda::DevicePointer> {
    std::vector<float> host(floats);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float &v : host)
      v = normal(random);
    StatusOr<cuda::DevicePointer> p = device.allocate(floats * 4);
    if (p)
      if (Status s = device.copyToDevice(*p, host.data(), floats * 4); !s.ok())
        return s;
    return p;
  };
  {
    const int64_t hidden = 7168, rows = 512;
    StatusOr<cuda::KernelSpec> spec = cuda::rmsNormSpec(hidden, 1e-6f);
    StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec);
    StatusOr<cuda::DevicePointer> x = randomBuffer(size_t(rows * hidden)),
                                  w = randomBuffer(size_t(hidden));
    StatusOr<cuda::DevicePointer> y = device.allocate(size_t(rows * hidden) * 4);
    if (!kernel || !x || !w || !y)
      return fail("cannot set up rms_norm");
    int rowCount = int(rows), stride = int(hidden);
    cuda::LaunchShape shape;
    shape.gridX = unsigned(rows);
    shape.blockX = spec->blockThreads;
    StatusOr<double> timed = timeRepeated([&] {
      return device.launch(*kernel, shape, {&*x, &*w, &*y, &rowCount, &stride, &stride});
    });
    if (!timed)
      return fail(timed.message());
    const double bytes = 2.0 * rows * hidden * 4 + hidden * 4;
    results.push_back(
        {"f32", "rms_norm 512x7168", bytes / (1 << 20), bytes / *timed / 1e9, *timed * 1e6});
    // The residual sum of three addends and its norm (kt-fuse-residual-norm):
    // three rows read, the sum and the norm written.
    StatusOr<cuda::KernelSpec> addSpec = cuda::addRmsNormSpec(hidden, 1e-6f, 3);
    StatusOr<cuda::LoadedKernel> add = compileAndLoad(addSpec);
    StatusOr<cuda::DevicePointer> b = randomBuffer(size_t(rows * hidden)),
                                  c = randomBuffer(size_t(rows * hidden));
    StatusOr<cuda::DevicePointer> sum = device.allocate(size_t(rows * hidden) * 4);
    if (!add || !b || !c || !sum)
      return fail("cannot set up add_rms_norm");
    shape.blockX = addSpec->blockThreads;
    timed = timeRepeated([&] {
      return device.launch(*add, shape, {&*x, &*b, &*c, &*w, &*sum, &*y, &rowCount});
    });
    if (!timed)
      return fail(timed.message());
    const double addBytes = 5.0 * rows * hidden * 4 + hidden * 4;
    results.push_back({"f32", "add_rms_norm 512x7168, 3 addends", addBytes / (1 << 20),
                       addBytes / *timed / 1e9, *timed * 1e6});
  }
  for (int positions : {576, 4096, 32768}) {
    const int64_t heads = 128, kvLora = 512, rope = 64;
    const float scale = 0.1352f;
    StatusOr<cuda::KernelSpec> splitSpec =
        cuda::mlaDecodeSplitSpec(kvLora, rope, scale, heads, "mla_decode_split");
    StatusOr<cuda::KernelSpec> combineSpec =
        cuda::mlaDecodeSplitSpec(kvLora, rope, scale, heads, "mla_combine");
    StatusOr<cuda::LoadedKernel> split = compileAndLoad(splitSpec),
                                 combine = compileAndLoad(combineSpec);
    if (!split || !combine)
      return fail(!split ? split.message() : combine.message());
    int chunks = int(cuda::kMlaDecodePieces);
    StatusOr<cuda::DevicePointer> q = randomBuffer(size_t(heads * kvLora)),
                                  qRope = randomBuffer(size_t(heads * rope)),
                                  latent = randomBuffer(size_t(positions) * kvLora),
                                  ropeKey = randomBuffer(size_t(positions) * rope),
                                  pieces =
                                      device.allocate(size_t(heads * chunks * (kvLora + 2)) * 4),
                                  context = device.allocate(size_t(heads * kvLora) * 4),
                                  position = device.allocate(4);
    if (!q || !qRope || !latent || !ropeKey || !pieces || !context || !position)
      return fail("cannot set up mla decode");
    int last = positions - 1, headStride = int(rope);
    (void)device.copyToDevice(*position, &last, 4);
    cuda::LaunchShape splitShape, combineShape;
    splitShape.gridX = unsigned(heads / cuda::mlaHeadsPerBlock(heads));
    splitShape.gridY = unsigned(chunks);
    splitShape.blockX = splitSpec->blockThreads;
    combineShape.gridX = unsigned(heads);
    combineShape.blockX = combineSpec->blockThreads;
    // The f32 split core (mmaFrom past every position), then the tensor
    // cores with blocks of 16, 32 and 64 heads (mmaFrom 0: the split core
    // exits), as the executor launches them.
    for (int rowGroups : {0, 1, 2, 4}) {
      std::optional<cuda::LoadedKernel> mma;
      cuda::LaunchShape mmaShape;
      if (rowGroups > 0) {
        StatusOr<cuda::KernelSpec> mmaSpec =
            cuda::mlaDecodeMmaSpec(kvLora, rope, scale, heads, rowGroups);
        StatusOr<cuda::LoadedKernel> loaded = compileAndLoad(mmaSpec);
        if (!loaded)
          return fail(loaded.message());
        mma = *loaded;
        mmaShape.gridX = unsigned((heads + 16 * rowGroups - 1) / (16 * rowGroups));
        mmaShape.gridY = unsigned(chunks);
        mmaShape.blockX = mmaSpec->blockThreads;
        mmaShape.sharedBytes = cuda::mlaDecodeMmaSharedBytes(kvLora, rope, rowGroups);
        if (Status s = device.allowSharedBytes(*mma, mmaShape.sharedBytes); !s.ok())
          return fail(s.message());
      }
      int mmaFrom = mma ? 0 : std::numeric_limits<int>::max();
      StatusOr<double> timed = timeRepeated([&]() -> Status {
        if (Status s = device.launch(
                *split, splitShape,
                {&*q, &*qRope, &headStride, &*latent, &*ropeKey, &*position, &mmaFrom, &*pieces});
            !s.ok())
          return s;
        if (mma)
          if (Status s = device.launch(
                  *mma, mmaShape,
                  {&*q, &*qRope, &headStride, &*latent, &*ropeKey, &*position, &mmaFrom, &*pieces});
              !s.ok())
            return s;
        return device.launch(*combine, combineShape, {&*pieces, &*position, &chunks, &*context});
      });
      if (!timed)
        return fail(timed.message());
      // kernels/mla_pieces.cuh's chunks: at least positions / pieces, whole 32s.
      const int chunk = ((positions + chunks - 1) / chunks + 31) / 32 * 32;
      const int used = (positions + chunk - 1) / chunk;
      const double bytes = double(positions) * (kvLora + rope) * 4 +
                           2.0 * heads * used * (kvLora + 2) * 4 + heads * kvLora * 4;
      results.push_back({mma ? "bf16" : "f32",
                         "mla decode " + std::to_string(positions) + " pos" +
                             (mma ? " (mma, " + std::to_string(16 * rowGroups) + " heads)" : ""),
                         bytes / (1 << 20), bytes / *timed / 1e9, *timed * 1e6});
    }
    for (cuda::DevicePointer p : {*q, *qRope, *latent, *ropeKey, *pieces, *context, *position})
      (void)device.free(p);
  }

  // The small memory-bound kernels of a 4096-token prefill step: the expert
  // choice (router logits in, ids and weights out) and RoPE over the
  // queries' rope parts (read and written in place).
  const int64_t stepTokens = 4096;
  {
    cuda::MoeGateShape gate{256, 8, 8, 4, true, true, true, 2.5f};
    StatusOr<cuda::KernelSpec> spec = cuda::moeGateSpec(gate);
    StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec);
    StatusOr<cuda::DevicePointer> logits = randomBuffer(size_t(stepTokens * gate.experts)),
                                  bias = randomBuffer(size_t(gate.experts)),
                                  ids = device.allocate(size_t(stepTokens * gate.topK) * 4),
                                  weights = device.allocate(size_t(stepTokens * gate.topK) * 4);
    if (!kernel || !logits || !bias || !ids || !weights)
      return fail("cannot set up moe_gate");
    cuda::LaunchShape shape;
    shape.gridX = unsigned(stepTokens);
    shape.blockX = spec->blockThreads;
    StatusOr<double> timed = timeRepeated([&] {
      return device.launch(*kernel, shape, {&*logits, &*bias, &*ids, &*weights});
    });
    if (!timed)
      return fail(timed.message());
    const double bytes = double(stepTokens) * (gate.experts + 2 * gate.topK) * 4;
    results.push_back(
        {"f32", "moe_gate 4096x256", bytes / (1 << 20), bytes / *timed / 1e9, *timed * 1e6});
    for (cuda::DevicePointer p : {*logits, *bias, *ids, *weights})
      (void)device.free(p);
  }
  {
    const int64_t heads = 128, nope = 128, dims = 64;
    StatusOr<cuda::KernelSpec> spec = cuda::ropeSpec({dims, heads, nope + dims, nope, 1.0f});
    StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec);
    std::vector<int32_t> positionsHost(static_cast<size_t>(stepTokens));
    for (size_t i = 0; i < positionsHost.size(); ++i)
      positionsHost[i] = int32_t(i);
    StatusOr<cuda::DevicePointer> q = randomBuffer(size_t(stepTokens * heads * (nope + dims))),
                                  frequencies = randomBuffer(size_t(dims / 2)),
                                  positions = device.allocate(positionsHost.size() * 4);
    if (!kernel || !q || !frequencies || !positions)
      return fail("cannot set up rope");
    (void)device.copyToDevice(*positions, positionsHost.data(), positionsHost.size() * 4);
    int tokens = int(stepTokens);
    cuda::LaunchShape shape;
    shape.gridX =
        unsigned((stepTokens * heads * (dims / 2) + spec->blockThreads - 1) / spec->blockThreads);
    shape.blockX = spec->blockThreads;
    StatusOr<double> timed = timeRepeated([&] {
      return device.launch(*kernel, shape, {&*q, &*positions, &*frequencies, &tokens});
    });
    if (!timed)
      return fail(timed.message());
    const double bytes = 2.0 * stepTokens * heads * dims * 4 + stepTokens * 4;
    results.push_back(
        {"f32", "rope 4096x128 heads", bytes / (1 << 20), bytes / *timed / 1e9, *timed * 1e6});
    for (cuda::DevicePointer p : {*q, *frequencies, *positions})
      (void)device.free(p);
  }

  // Compute-bound kernels against the f32 FMA ceiling measured here: the
  // prefill GEMVs (tiles of 8 tokens, and tiles of 8 choices of one routed
  // expert, beside the experts' grouped tensor-core GEMM, which can pass
  // it) and MLA prefill attention.
  struct Computed {
    std::string name;
    double gflop, microseconds;
  };
  std::vector<Computed> computed;
  double ceiling = 0; // FLOP/s
  {
    const int64_t iterations = 4096;
    const unsigned blocks = 8192;
    StatusOr<cuda::KernelSpec> spec = cuda::fmaCeilingSpec(iterations);
    StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec);
    StatusOr<cuda::DevicePointer> out = device.allocate(size_t(blocks) * spec->blockThreads * 4);
    if (!kernel || !out)
      return fail("cannot set up the FMA ceiling");
    float seed = 1.0f;
    cuda::LaunchShape shape;
    shape.gridX = blocks;
    shape.blockX = spec->blockThreads;
    StatusOr<double> timed = timeRepeated([&] {
      return device.launch(*kernel, shape, {&*out, &seed});
    });
    if (!timed)
      return fail(timed.message());
    ceiling = 2.0 * blocks * spec->blockThreads * iterations * cuda::kFmaCeilingChains / *timed;
    (void)device.free(*out);
  }
  // A random matrix stack of `type` in GPU memory (`count` matrices of out x in).
  auto randomWeights = [&](gguf::GgmlType type, int64_t out, int64_t in,
                           int64_t count) -> StatusOr<cuda::DevicePointer> {
    const size_t bytes = *gguf::ggmlRowBytes(type, in) * size_t(out);
    std::vector<uint8_t> host(bytes);
    for (size_t i = 0; i + 8 <= host.size(); i += 8) {
      uint64_t word = random();
      std::memcpy(host.data() + i, &word, 8);
    }
    bench::makeScalesFinite(type, host.data(), host.size(), 0x1800);
    StatusOr<cuda::DevicePointer> p = device.allocate(bytes * size_t(count));
    if (!p)
      return p;
    for (int64_t c = 0; c < count; ++c)
      if (Status s = device.copyToDevice(*p + c * bytes, host.data(), bytes); !s.ok())
        return s;
    return p;
  };
  const int64_t prefillTokens = 512;
  for (gguf::GgmlType type : {gguf::GgmlType::Q8_0, gguf::GgmlType::Q4_K, gguf::GgmlType::Q6_K})
    for (const Shape &shape : {shapes[3], shapes[4]}) { // o_proj, shared gate
      StatusOr<cuda::KernelSpec> spec =
          cuda::gemvSpec(type, shape.out, shape.in, cuda::kGemvPrefillTokenTile);
      StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec);
      StatusOr<cuda::DevicePointer> w = randomWeights(type, shape.out, shape.in, 1),
                                    x = randomBuffer(size_t(prefillTokens * shape.in)),
                                    y = device.allocate(size_t(prefillTokens * shape.out) * 4);
      if (!kernel || !w || !x || !y)
        return fail("cannot set up the prefill GEMV");
      cuda::GemvLayout layout{int(shape.in), int(shape.out), 0, 0, int(prefillTokens)};
      cuda::LaunchShape launch;
      launch.gridX = cuda::gemvGridBlocks(type, shape.out, shape.in, cuda::kGemvPrefillTokenTile);
      launch.gridY = unsigned(prefillTokens / cuda::kGemvPrefillTokenTile);
      launch.blockX = spec->blockThreads;
      StatusOr<double> timed = timeRepeated([&] {
        return device.launch(*kernel, launch, {&*w, &*x, &*y, &layout});
      });
      if (!timed)
        return fail(timed.message());
      computed.push_back({std::string(gguf::ggmlTypeName(type)) + " prefill " + shape.name,
                          2.0 * prefillTokens * shape.out * shape.in / 1e9, *timed * 1e6});
      // The tensor-core GEMM of the same product.
      StatusOr<cuda::KernelSpec> mmaSpec = cuda::gemmMmaSpec(type, shape.out, shape.in);
      StatusOr<cuda::LoadedKernel> mma = compileAndLoad(mmaSpec);
      if (!mma)
        return fail("cannot set up the prefill GEMM");
      cuda::LaunchShape mmaLaunch;
      mmaLaunch.gridX = unsigned(shape.out / 64);
      mmaLaunch.gridY = unsigned(prefillTokens / 64);
      mmaLaunch.blockX = mmaSpec->blockThreads;
      int xStride = int(shape.in), yStride = int(shape.out), rows = int(prefillTokens);
      cuda::DevicePointer ungrouped = 0;
      timed = timeRepeated([&] {
        return device.launch(
            *mma, mmaLaunch,
            {&*w, &*x, &xStride, &*y, &yStride, &rows, &ungrouped, &ungrouped, &ungrouped});
      });
      if (!timed)
        return fail(timed.message());
      computed.push_back({std::string(gguf::ggmlTypeName(type)) + " prefill mma GEMM " + shape.name,
                          2.0 * prefillTokens * shape.out * shape.in / 1e9, *timed * 1e6});
      for (cuda::DevicePointer p : {*w, *x, *y})
        (void)device.free(p);
    }
  {
    // 512 and 4096 tokens choosing 8 of 256 Q4_K experts (2048 x 7168 each)
    // at random: the grouped GEMV (tiles of 8 choices of one expert) and the
    // grouped tensor-core GEMM (tiles of up to 64 rows of one expert, the
    // choices' x rows gathered) on the same choices.
    const int64_t experts = 256, topK = 8, out = 2048, in = 7168, mostTokens = 4096;
    StatusOr<cuda::KernelSpec> spec = cuda::gemvSpec(
        gguf::GgmlType::Q4_K, out, in, cuda::kGemvPrefillTokenTile, cuda::GemvVariant::Grouped);
    StatusOr<cuda::KernelSpec> mmaSpec = cuda::gemmMmaSpec(gguf::GgmlType::Q4_K, out, in);
    StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec), mma = compileAndLoad(mmaSpec);
    StatusOr<cuda::DevicePointer> w = randomWeights(gguf::GgmlType::Q4_K, out, in, experts),
                                  x = randomBuffer(size_t(mostTokens * in)),
                                  y = device.allocate(size_t(mostTokens * topK * out) * 4),
                                  groups = device.allocate(
                                      size_t(mostTokens * topK * (1 + cuda::kGemvPrefillTokenTile) +
                                             3 * (mostTokens * topK + experts)) *
                                      4),
                                  rowIndex = device.allocate(size_t(mostTokens * topK) * 4);
    if (!kernel || !mma || !w || !x || !y || !groups || !rowIndex)
      return fail("cannot set up the grouped expert products");
    for (int64_t tokens : {prefillTokens, mostTokens}) {
      const int64_t assignments = tokens * topK;
      std::vector<int32_t> chosen(static_cast<size_t>(assignments));
      std::uniform_int_distribution<int32_t> expert(0, int32_t(experts - 1));
      for (int32_t &e : chosen)
        e = expert(random);
      std::vector<int32_t> tiles(size_t(assignments * (1 + cuda::kGemvPrefillTokenTile)));
      const int64_t tileCount = cuda::groupAssignments(chosen.data(), assignments, tiles.data());
      (void)device.copyToDevice(*groups, tiles.data(),
                                size_t(tileCount) * (tiles.size() / assignments) * 4);
      cuda::GemvLayout layout{int(in), int(out), 0, 0, 0};
      layout.groups = *groups;
      layout.assignmentsPerX = int(topK);
      cuda::LaunchShape launch;
      launch.gridX =
          cuda::gemvGridBlocks(gguf::GgmlType::Q4_K, out, in, cuda::kGemvPrefillTokenTile);
      launch.gridY = unsigned(tileCount);
      launch.blockX = spec->blockThreads;
      StatusOr<double> timed = timeRepeated([&] {
        return device.launch(*kernel, launch, {&*w, &*x, &*y, &layout});
      });
      if (!timed)
        return fail(timed.message());
      const std::string what = " " + std::to_string(tokens) + " tok x 8 of 256, 2048x7168";
      computed.push_back(
          {"q4_K grouped GEMV" + what, 2.0 * assignments * out * in / 1e9, *timed * 1e6});
      // The same choices grouped by expert for the GEMM: rows in expert
      // order, each reading its token's x row.
      std::vector<int64_t> sizes, next;
      std::vector<int32_t> rows(static_cast<size_t>(assignments)),
          outRows(static_cast<size_t>(assignments));
      (void)cuda::orderAssignmentsByExpert(chosen.data(), assignments, topK, experts, sizes, next,
                                           rows.data(), outRows.data());
      const std::vector<int32_t> mmaTiles = cuda::expertRowTiles(sizes, cuda::kMmaGemmTileRows);
      (void)device.copyToDevice(*groups, mmaTiles.data(), mmaTiles.size() * 4);
      (void)device.copyToDevice(*rowIndex, rows.data(), rows.size() * 4);
      cuda::LaunchShape mmaLaunch;
      mmaLaunch.gridX = unsigned(out / 64);
      mmaLaunch.gridY = unsigned(mmaTiles.size() / 3);
      mmaLaunch.blockX = mmaSpec->blockThreads;
      int xStride = int(in), yStride = int(out), rowCount = 0;
      cuda::DevicePointer inOrder = 0;
      timed = timeRepeated([&] {
        return device.launch(
            *mma, mmaLaunch,
            {&*w, &*x, &xStride, &*y, &yStride, &rowCount, &*groups, &*rowIndex, &inOrder});
      });
      if (!timed)
        return fail(timed.message());
      computed.push_back(
          {"q4_K grouped mma GEMM" + what, 2.0 * assignments * out * in / 1e9, *timed * 1e6});
    }
    for (cuda::DevicePointer p : {*w, *x, *y, *groups, *rowIndex})
      (void)device.free(p);
  }
  {
    // MLA prefill of 512 tokens at positions 0..511, V3's 128 heads.
    const int64_t heads = 128, kvLora = 512, rope = 64, tokens = prefillTokens;
    StatusOr<cuda::KernelSpec> spec = cuda::mlaPrefillSpec(kvLora, rope, 0.1352f, heads);
    StatusOr<cuda::LoadedKernel> kernel = compileAndLoad(spec);
    StatusOr<cuda::DevicePointer> qLatent = randomBuffer(size_t(tokens * heads * kvLora)),
                                  qRope = randomBuffer(size_t(tokens * heads * rope)),
                                  latent = randomBuffer(size_t(tokens * kvLora)),
                                  ropeKey = randomBuffer(size_t(tokens * rope)),
                                  context = device.allocate(size_t(tokens * heads * kvLora) * 4);
    if (!kernel || !qLatent || !qRope || !latent || !ropeKey || !context)
      return fail("cannot set up mla_prefill");
    int headStride = int(rope), tokenStride = int(heads * rope), firstPositions = 1;
    cuda::LaunchShape launch;
    launch.gridX = unsigned(heads / cuda::mlaHeadsPerBlock(heads));
    launch.gridY = unsigned(tokens);
    launch.blockX = spec->blockThreads;
    StatusOr<double> timed = timeRepeated([&] {
      return device.launch(*kernel, launch,
                           {&*qLatent, &*qRope, &headStride, &tokenStride, &*latent, &*ropeKey,
                            &firstPositions, &*context});
    });
    if (!timed)
      return fail(timed.message());
    // Scores over latent and rope parts, then the weighted latent sum.
    const double pairs = double(tokens) * double(tokens + 1) / 2 * heads;
    computed.push_back({"mla_prefill 512 tok, 128 heads",
                        pairs * (2.0 * (kvLora + rope) + 2.0 * kvLora) / 1e9, *timed * 1e6});
    for (cuda::DevicePointer p : {*qLatent, *qRope, *latent, *ropeKey, *context})
      (void)device.free(p);
  }

  if (json) {
    nlohmann::json out = {{"gpu", gpus[0].name},
                          {"arch", arch},
                          {"copy_bandwidth_gbs", bandwidth / 1e9},
                          {"results", nlohmann::json::array()}};
    for (const Result &r : results)
      out["results"].push_back({{"type", r.type},
                                {"shape", r.shape},
                                {"mib", r.mib},
                                {"microseconds", r.microseconds},
                                {"gbs", r.gbs},
                                {"ratio_to_copy", r.gbs * 1e9 / bandwidth}});
    if (gemvSweep) {
      out["gemv_sweep"] = nlohmann::json::array();
      for (const SweepRow &r : sweep)
        out["gemv_sweep"].push_back({{"type", r.type},
                                     {"shape", r.shape},
                                     {"k_split", r.split},
                                     {"rows_per_warp", r.rowsPerWarp},
                                     {"chosen", r.chosen},
                                     {"microseconds", r.microseconds},
                                     {"gbs", r.gbs},
                                     {"ratio_to_copy", r.gbs * 1e9 / bandwidth}});
    }
    out["fma_ceiling_tflops"] = ceiling / 1e12;
    out["compute"] = nlohmann::json::array();
    for (const Computed &c : computed)
      out["compute"].push_back(
          {{"kernel", c.name},
           {"gflop", c.gflop},
           {"microseconds", c.microseconds},
           {"tflops", c.gflop / c.microseconds / 1e3},
           {"ratio_to_fma_ceiling", c.gflop * 1e9 / (c.microseconds * 1e-6) / ceiling}});
    std::printf("%s\n", out.dump(1).c_str());
    return 0;
  }
  std::printf("%s (%s): device copy %.0f GB/s (read + write, 1 GiB, best of 10)\n",
              gpus[0].name.c_str(), arch.c_str(), bandwidth / 1e9);
  std::printf("%-6s %-24s %9s %10s %10s %8s\n", "type", "matrix", "MiB", "us", "GB/s", "of copy");
  for (const Result &r : results)
    std::printf("%-6s %-24s %9.1f %10.1f %10.0f %7.0f%%\n", r.type.c_str(), r.shape.c_str(), r.mib,
                r.microseconds, r.gbs, 100 * r.gbs * 1e9 / bandwidth);
  if (gemvSweep) {
    std::printf("decode GEMV sweep (* the kernel catalog's choice)\n%-6s %-24s %7s %9s %10s "
                "%10s %8s\n",
                "type", "matrix", "K_SPLIT", "rows/warp", "us", "GB/s", "of copy");
    for (const SweepRow &r : sweep)
      std::printf("%-6s %-24s %7u %9u %10.1f %10.0f %7.0f%%%s\n", r.type.c_str(), r.shape.c_str(),
                  r.split, r.rowsPerWarp, r.microseconds, r.gbs, 100 * r.gbs * 1e9 / bandwidth,
                  r.chosen ? " *" : "");
  }
  std::printf("f32 FMA ceiling %.1f TFLOP/s (independent FMA chains)\n", ceiling / 1e12);
  std::printf("%-52s %8s %10s %9s %8s\n", "kernel", "GFLOP", "us", "TFLOP/s", "of FMA");
  for (const Computed &c : computed) {
    const double flops = c.gflop * 1e9 / (c.microseconds * 1e-6);
    std::printf("%-52s %8.1f %10.1f %9.2f %7.0f%%\n", c.name.c_str(), c.gflop, c.microseconds,
                flops / 1e12, 100 * flops / ceiling);
  }
  return 0;
}
