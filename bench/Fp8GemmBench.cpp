// fp8_gemm_bench: the FP8 prefill GEMM (kernels/gemm_fp8.cu) at DeepSeek-V3's
// projection shapes and 128, 512 and 4096 tokens, against cuBLASLt's FP8
// matmul of the same shapes in the same run.
//
//   fp8_gemm_bench [--json] [--cublaslt PATH] [--save-cubin DIR] [--rounds N]
//                  [--warm-ms MS] [--timed-ms MS]
//
// cuBLASLt is loaded at run time (libcublasLt.so from the CUDA toolkit);
// it runs block-scaled (1x128 activation and 128x128 weight scales, as our
// kernel) where this cuBLASLt offers it for the GPU, else per-tensor scaled
// (less work: a ceiling). Both multiply the same random e4m3 operands with
// unit scales, so their results are compared too. Times are host clock
// around many launches after a warm-up, in sustained work (100 ms of
// warm-up, then at least 200 ms timed: the board's power limit sets the
// clock, as in a prefill; NVML's clock and power readings are printed
// beside), ours and theirs in turn over a few rounds (medians reported);
// the activation quantization our path runs first is timed on its own.
#include "bench/GpuBench.h"
#include "bench/GpuClocks.h"
#include "runtime/cuda/CudaDevice.h"
#include "runtime/cuda/DeviceQuery.h"
#include "runtime/cuda/Fp8Gemm.h"
#include "runtime/cuda/KernelCache.h"
#include "runtime/cuda/KernelCatalog.h"
#include "runtime/cuda/Nvrtc.h"
#include "runtime/support/Statistics.h"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace kt;

int fail(const std::string &message) {
  std::fprintf(stderr, "fp8_gemm_bench: error: %s\n", message.c_str());
  return 1;
}

// The part of cuBLASLt's C API used here (cublasLt.h, CUDA 12.9 and later);
// the library is opened at run time so the build needs no CUDA headers.
struct CublasLt {
  // cudaDataType_t, cublasComputeType_t and attribute values.
  static constexpr int kR32F = 0, kR16BF = 14, kR8FE4M3 = 28, kCompute32F = 68;
  static constexpr int kTransA = 3, kTransB = 4, kAScalePointer = 17, kBScalePointer = 18,
                       kAScaleMode = 31, kBScaleMode = 32;
  static constexpr int kScaleVec128 = 1, kScaleBlock128x128 = 2;
  static constexpr int kPreferenceMaxWorkspace = 1;
  static constexpr int kOpN = 0, kOpT = 1;
  struct Heuristic {
    uint64_t algo[8];
    size_t workspaceSize;
    int state;
    float wavesCount;
    int reserved[4];
  };
  int (*create)(void **) = nullptr;
  int (*descCreate)(void **, int, int) = nullptr;
  int (*descDestroy)(void *) = nullptr;
  int (*descSet)(void *, int, const void *, size_t) = nullptr;
  int (*layoutCreate)(void **, int, uint64_t, uint64_t, int64_t) = nullptr;
  int (*layoutDestroy)(void *) = nullptr;
  int (*preferenceCreate)(void **) = nullptr;
  int (*preferenceSet)(void *, int, const void *, size_t) = nullptr;
  int (*heuristic)(void *, void *, void *, void *, void *, void *, void *, int, Heuristic *,
                   int *) = nullptr;
  int (*matmul)(void *, void *, const void *, const void *, void *, const void *, void *,
                const void *, const void *, void *, void *, void *, const void *, void *, size_t,
                void *) = nullptr;
  void *handle = nullptr;

  std::string open(const std::string &path) {
    std::vector<std::string> candidates = {path};
    if (path.empty())
      candidates = {"libcublasLt.so", "libcublasLt.so.13", "libcublasLt.so.12"};
    void *library = nullptr;
    for (const std::string &name : candidates)
      if ((library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL)))
        break;
    if (!library)
      return "cuBLASLt could not be loaded (" + candidates[0] + "); give its path with --cublaslt";
    std::string missing;
    auto bind = [&](auto &slot, const char *name) {
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(library, name));
      if (!slot)
        missing += std::string(" ") + name;
    };
    bind(create, "cublasLtCreate");
    bind(descCreate, "cublasLtMatmulDescCreate");
    bind(descDestroy, "cublasLtMatmulDescDestroy");
    bind(descSet, "cublasLtMatmulDescSetAttribute");
    bind(layoutCreate, "cublasLtMatrixLayoutCreate");
    bind(layoutDestroy, "cublasLtMatrixLayoutDestroy");
    bind(preferenceCreate, "cublasLtMatmulPreferenceCreate");
    bind(preferenceSet, "cublasLtMatmulPreferenceSetAttribute");
    bind(heuristic, "cublasLtMatmulAlgoGetHeuristic");
    bind(matmul, "cublasLtMatmul");
    if (!missing.empty())
      return "cuBLASLt lacks" + missing;
    if (int status = create(&handle); status != 0)
      return "cublasLtCreate failed (status " + std::to_string(status) + ")";
    return "";
  }
};

// One cuBLASLt FP8 matmul set up for D[tokens][out] = x[tokens][in] W^T.
struct CublasLtGemm {
  void *desc = nullptr, *a = nullptr, *b = nullptr, *c = nullptr, *pref = nullptr;
  CublasLt::Heuristic algo{};
  std::string mode; // what ran: "block-scaled" or "per-tensor", and the output type
  int outType = CublasLt::kR32F;
  bool weightsFirst = true; // W is cuBLAS's A (D = W x^T, out x tokens), else x is

  // cuBLAS is column-major: D (out x tokens) = op(A) op(B) with A = W stored
  // K x out (transposed), B = x stored K x tokens; FP8 needs this "TN" form.
  // Or the other way round (x as A, D tokens x out): block scaling on sm_90
  // may take its 1x128 and 128x128 scales only in one order.
  bool setUp(CublasLt &lt, int64_t tokens, int64_t out, int64_t in, bool blockScaled,
             bool weightsAsFirst, int outputType, cuda::DevicePointer firstScales,
             cuda::DevicePointer secondScales, size_t workspaceBytes) {
    if (lt.descCreate(&desc, CublasLt::kCompute32F, CublasLt::kR32F) != 0)
      return false;
    const int t = CublasLt::kOpT, n = CublasLt::kOpN;
    lt.descSet(desc, CublasLt::kTransA, &t, sizeof t);
    lt.descSet(desc, CublasLt::kTransB, &n, sizeof n);
    if (blockScaled) {
      const int weightMode = CublasLt::kScaleBlock128x128, activationMode = CublasLt::kScaleVec128;
      const int &first = weightsAsFirst ? weightMode : activationMode,
                &second = weightsAsFirst ? activationMode : weightMode;
      if (lt.descSet(desc, CublasLt::kAScaleMode, &first, sizeof first) != 0 ||
          lt.descSet(desc, CublasLt::kBScaleMode, &second, sizeof second) != 0)
        return false;
    }
    void *aPointer = reinterpret_cast<void *>(firstScales),
         *bPointer = reinterpret_cast<void *>(secondScales);
    lt.descSet(desc, CublasLt::kAScalePointer, &aPointer, sizeof aPointer);
    lt.descSet(desc, CublasLt::kBScalePointer, &bPointer, sizeof bPointer);
    outType = outputType;
    weightsFirst = weightsAsFirst;
    const int64_t m = weightsAsFirst ? out : tokens, ncols = weightsAsFirst ? tokens : out;
    if (lt.layoutCreate(&a, CublasLt::kR8FE4M3, uint64_t(in), uint64_t(m), in) != 0 ||
        lt.layoutCreate(&b, CublasLt::kR8FE4M3, uint64_t(in), uint64_t(ncols), in) != 0 ||
        lt.layoutCreate(&c, outputType, uint64_t(m), uint64_t(ncols), m) != 0 ||
        lt.preferenceCreate(&pref) != 0)
      return false;
    lt.preferenceSet(pref, CublasLt::kPreferenceMaxWorkspace, &workspaceBytes,
                     sizeof workspaceBytes);
    int found = 0;
    if (lt.heuristic(lt.handle, desc, a, b, c, c, pref, 1, &algo, &found) != 0 || found < 1)
      return false;
    mode = std::string(blockScaled ? "block-scaled" : "per-tensor") +
           (outputType == CublasLt::kR32F ? " f32" : " bf16") +
           (weightsAsFirst ? ", weights as A" : ", activations as A");
    return true;
  }
};

float bf16ToFloat(uint16_t bits) {
  uint32_t word = uint32_t(bits) << 16;
  float value;
  std::memcpy(&value, &word, 4);
  return value;
}

} // namespace

int main(int argc, char **argv) {
  CLI::App app{"Times the FP8 prefill GEMM (wgmma, block-scaled) at DeepSeek-V3 shapes against "
               "cuBLASLt's FP8 matmul in the same run"};
  bool json = false;
  std::string cublasPath, cubinDirectory;
  int launches = 50;
  app.add_flag("--json", json, "Print the results as JSON");
  app.add_option("--cublaslt", cublasPath, "Path of libcublasLt.so (default: the loader's search)");
  app.add_option("--save-cubin", cubinDirectory,
                 "Write each GEMM's CUBIN to this directory (to read its SASS)");
  app.add_option("--launches", launches, "Timed launches per GEMM, at least")
      ->check(CLI::PositiveNumber);
  double warmMilliseconds = 100, timedMilliseconds = 200;
  app.add_option("--warm-ms", warmMilliseconds,
                 "Warm-up per timing, in milliseconds of launches (sustained work runs at the "
                 "board's power limit, as a prefill does; 0 for bursts)")
      ->check(CLI::Range(0.0, 10000.0));
  app.add_option("--timed-ms", timedMilliseconds,
                 "Timed launches per timing fill at least this many milliseconds")
      ->check(CLI::Range(0.0, 10000.0));
  int rounds = 3;
  app.add_option("--rounds", rounds,
                 "Rounds per matrix and token count: each of our tile widths, then cuBLASLt, "
                 "timed in turn this many times (the row reports the medians: cuBLASLt's small "
                 "steps alone move by a third between runs)")
      ->check(CLI::Range(1, 20));
  std::string onlyShape;
  int64_t onlyTokens = 0;
  bool splitSweep = false;
  app.add_flag("--split-sweep", splitSweep,
               "Also time each matrix at 128 and 512 tokens split 1 to 16 ways along K (to tune "
               "the executor's choice)");
  app.add_option("--shape", onlyShape,
                 "Only this matrix (q_a_proj, q_b_proj, kv_a_proj, o_proj, dense gate/up, dense "
                 "down, shared gate/up, shared down), e.g. to profile its kernels");
  app.add_option("--tokens", onlyTokens,
                 "Only this token count (default: 128, 512 and 4096; at most 4096)")
      ->check(CLI::Range(1, 4096));
  CLI11_PARSE(app, argc, argv);

  StatusOr<bench::BenchGpu> gpu = bench::openBenchGpu();
  if (!gpu)
    return fail(gpu.message());
  const std::vector<cuda::GpuInfo> gpus = {gpu->info};
  const std::string arch = gpus[0].arch();
  if (arch != "sm_90a")
    return fail("the FP8 GEMM needs an sm_90 GPU (wgmma); this one is " + arch + ".");
  cuda::CudaDevice &device = *gpu->device;
  cuda::KernelCache &cache = *gpu->cache;
  StatusOr<int> multiprocessors = device.multiprocessors();
  if (!multiprocessors)
    return fail(multiprocessors.message());
  CublasLt lt;
  if (std::string error = lt.open(cublasPath); !error.empty())
    return fail(error);
  std::unique_ptr<bench::GpuClocks> clocks;
  std::string whyNoClocks = "the GPU's PCI address is unknown";
  if (StatusOr<std::string> busId = device.pciBusId(); busId)
    clocks = bench::GpuClocks::open(*busId, whyNoClocks);

  auto compileAndLoad = [&](const StatusOr<cuda::KernelSpec> &spec,
                            const std::string &saveAs) -> StatusOr<cuda::LoadedKernel> {
    if (!spec)
      return spec.status();
    StatusOr<cuda::CompiledKernel> compiled = cache.getOrCompile(*spec, arch);
    if (!compiled)
      return compiled.status();
    if (!saveAs.empty() && !cubinDirectory.empty())
      std::ofstream(cubinDirectory + "/" + saveAs, std::ios::binary) << compiled->image;
    return device.load(*compiled);
  };
  std::vector<cuda::DevicePointer> allocations;
  auto allocate = [&](size_t bytes) -> cuda::DevicePointer {
    StatusOr<cuda::DevicePointer> p = device.allocate(bytes);
    if (!p) {
      std::fprintf(stderr, "fp8_gemm_bench: error: %s\n", p.message().c_str());
      std::exit(1);
    }
    allocations.push_back(*p);
    return *p;
  };
  auto upload = [&](const void *data, size_t bytes) {
    cuda::DevicePointer p = allocate(bytes);
    if (Status s = device.copyToDevice(p, data, bytes); !s.ok())
      std::exit(fail(s.message()));
    return p;
  };
  // Seconds per call of `launch` in sustained work: after --warm-ms of
  // warm-up, over at least `launches` calls and --timed-ms.
  auto timeIt = [&](const std::function<Status()> &launch) {
    return bench::sustainedSecondsPerLaunch(device, launches, warmMilliseconds / 1000,
                                            timedMilliseconds / 1000, launch);
  };

  struct Shape {
    const char *name;
    int64_t out, in;
  };
  const Shape shapes[] = {{"q_a_proj", 1536, 7168},       {"q_b_proj", 24576, 1536},
                          {"kv_a_proj", 576, 7168},       {"o_proj", 7168, 16384},
                          {"dense gate/up", 18432, 7168}, {"dense down", 7168, 18432},
                          {"shared gate/up", 2048, 7168}, {"shared down", 7168, 2048}};
  const int64_t tokenCounts[] = {128, 512, 4096};
  const int64_t maxTokens = 4096, maxIn = 18432, maxOut = 24576;
  const size_t workspaceBytes = size_t(32) << 20;

  // Operands: random e4m3 codes without NaN, unit scales; activations as
  // f32 too, for timing the quantization.
  std::mt19937_64 random(7);
  auto randomCodes = [&](size_t count) {
    std::vector<uint8_t> codes(count);
    for (uint8_t &c : codes) {
      c = uint8_t(random());
      c = uint8_t((c & 0x80) | (c & 0x3f)); // exponents up to 7: magnitudes below 2
    }
    return codes;
  };
  const cuda::DevicePointer weights =
      upload(randomCodes(size_t(maxOut * maxIn)).data(), size_t(maxOut * maxIn));
  const cuda::DevicePointer activations =
      upload(randomCodes(size_t(maxTokens * maxIn)).data(), size_t(maxTokens * maxIn));
  std::vector<float> ones(size_t(maxTokens * maxIn / 128), 1.0f);
  const cuda::DevicePointer unitScales = upload(ones.data(), ones.size() * 4);
  // The random weight of `out` x `in` for a GEMM kernel of `config`.
  auto gemmWeight = [&](const cuda::LoadedKernel &gemm, const cuda::Fp8GemmConfig &config,
                        int64_t out, int64_t in) -> StatusOr<cuda::Fp8GemmWeight> {
    if (Status s = cuda::allowFp8GemmSharedBytes(device, gemm, config); !s.ok())
      return s;
    return cuda::prepareFp8GemmWeight(device, weights, unitScales, out, in, config);
  };
  std::vector<float> xHost(size_t(maxTokens * maxIn));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float &v : xHost)
    v = normal(random);
  const cuda::DevicePointer x = upload(xHost.data(), xHost.size() * 4);
  const cuda::DevicePointer ours = allocate(size_t(maxTokens * maxOut) * 4),
                            theirs = allocate(size_t(maxTokens * maxOut) * 4),
                            workspace = allocate(workspaceBytes);
  cuda::Fp8GemmScratch scratch;
  scratch.rows = maxTokens;
  scratch.in = maxIn;
  scratch.activations = allocate(cuda::fp8GemmActivationBytes(maxTokens, maxIn));
  scratch.scales = allocate(cuda::fp8GemmScaleBytes(maxTokens, maxIn));
  scratch.partialFloats = size_t(16) << 20;
  scratch.partials = allocate(scratch.partialFloats * 4);

  // Our tile configurations: columns per block (the narrow ones take 64
  // where the rows are not whole 128s; 144 only where they divide into it).
  struct Variant {
    const char *name;
    unsigned blockN;
    bool promoteBehind;
  };
  const Variant variants[] = {{"n64pb", 64, true},
                              {"n128", 128, false},
                              {"n128pb", 128, true},
                              {"n144", 144, false},
                              {"n256", 256, false}};
  constexpr size_t kVariants = sizeof variants / sizeof variants[0];
  struct Row {
    std::string shape, blockMode, tensorMode;
    int64_t tokens, out, in;
    unsigned splits = 1;
    double seconds[kVariants] = {};        // ours per variant (0: does not tile this shape)
    double chosen = 0;                     // ours, the executor's configuration
    double blockScaled = 0, perTensor = 0; // cuBLASLt (0: not offered)
    double quantize = 0, difference = 0;
    // SM clock (MHz) and board power (W) while the executor's choice and the
    // peer ran (medians over the rounds; 0: NVML not available).
    double ourMegahertz = 0, theirMegahertz = 0, ourWatts = 0, theirWatts = 0;
    double ours() const { return chosen; }
    double peer() const { return blockScaled > 0 ? blockScaled : perTensor; }
  };
  std::vector<Row> rows;
  struct SweepRow {
    std::string shape;
    int64_t tokens;
    unsigned blockN;
    std::vector<double> seconds; // split 1, 2, ...
  };
  std::vector<SweepRow> sweeps;
  const float alpha = 1.0f, beta = 0.0f;
  for (const Shape &shape : shapes) {
    if (!onlyShape.empty() && onlyShape != shape.name)
      continue;
    const std::string tag = std::to_string(shape.out) + "x" + std::to_string(shape.in);
    StatusOr<cuda::LoadedKernel> sum =
        compileAndLoad(cuda::gemmFp8SumSpec(shape.out, shape.in), "");
    StatusOr<cuda::LoadedKernel> quantize = compileAndLoad(cuda::fp8QuantizeSpec(shape.in), "");
    if (!sum || !quantize)
      return fail(!sum ? sum.message() : quantize.message());
    // Each variant that tiles the shape (kv_a's 576 rows: n64 or n144).
    struct Loaded {
      size_t variant;
      cuda::Fp8GemmConfig config;
      cuda::LoadedKernel kernel;
      cuda::Fp8GemmWeight weight;
    };
    std::vector<Loaded> loaded;
    for (size_t v = 0; v < kVariants; ++v) {
      const unsigned blockN = shape.out % variants[v].blockN == 0 ? variants[v].blockN : 64;
      StatusOr<cuda::Fp8GemmConfig> config = cuda::fp8GemmConfig(shape.out, blockN);
      if (!config || (blockN != variants[v].blockN && variants[v].blockN > 128))
        continue;
      config->promoteBehind = variants[v].promoteBehind;
      StatusOr<cuda::LoadedKernel> gemm =
          compileAndLoad(cuda::gemmFp8Spec(shape.out, shape.in, *config),
                         "gemm_fp8_" + tag + "_" + variants[v].name + ".cubin");
      if (!gemm)
        return fail(gemm.message());
      StatusOr<cuda::Fp8GemmWeight> weight = gemmWeight(*gemm, *config, shape.out, shape.in);
      if (!weight)
        return fail(weight.message());
      loaded.push_back({v, *config, *gemm, *weight});
    }
    for (int64_t tokens :
         onlyTokens > 0 ? std::vector<int64_t>{onlyTokens}
                        : std::vector<int64_t>(std::begin(tokenCounts), std::end(tokenCounts))) {
      Row row;
      row.shape = shape.name;
      row.tokens = tokens;
      row.out = shape.out;
      row.in = shape.in;
      const cuda::Fp8GemmTiling tiling =
          cuda::fp8GemmTiling(tokens, shape.out, shape.in, *multiprocessors);
      row.splits = tiling.splits;
      const cuda::Fp8GemmConfig chosen = *cuda::fp8GemmConfig(shape.out, tiling.blockN);
      // Our path: quantize, then the GEMM; timed apart, the GEMM on the
      // random codes with unit scales (what cuBLASLt multiplies).
      StatusOr<double> quantizeTime = timeIt([&] {
        int xs = int(shape.in), count = int(tokens), stride = int(scratch.rows);
        cuda::DevicePointer q = scratch.activations, s = scratch.scales, xp = x, inOrder = 0;
        cuda::LaunchShape launch;
        launch.gridX = unsigned((tokens * (shape.in / 128) * 32 + 255) / 256);
        launch.blockX = 256;
        return device.launch(*quantize, launch, {&xp, &xs, &count, &q, &s, &stride, &inOrder});
      });
      if (!quantizeTime)
        return fail(quantizeTime.message());
      row.quantize = *quantizeTime;
      // Seconds per GEMM (and split sum) of `variant` split `splits` ways.
      auto timeVariant = [&](const Loaded &variant, unsigned splits) {
        cuda::Fp8GemmOperands operands;
        operands.activations = activations;
        operands.scales = unitScales;
        operands.scaleStride = maxTokens;
        operands.rows = tokens;
        operands.outFeatures = shape.out;
        operands.out = splits > 1 ? scratch.partials : ours;
        operands.outStride = shape.out;
        operands.splits = splits;
        return timeIt([&]() -> Status {
          if (Status s = cuda::launchFp8GemmKernel(device, variant.kernel, variant.config,
                                                   variant.weight, operands);
              !s.ok() || splits == 1)
            return s;
          cuda::DevicePointer partials = scratch.partials, out = ours;
          int splitCount = int(splits), outStride = int(shape.out), count = int(tokens);
          cuda::LaunchShape sumLaunch;
          sumLaunch.gridX = unsigned(std::min<int64_t>((tokens * shape.out + 255) / 256, 2048));
          sumLaunch.blockX = 256;
          return device.launch(*sum, sumLaunch, {&partials, &splitCount, &out, &outStride, &count});
        });
      };
      // cuBLASLt's matmuls of this step: block-scaled (either operand order)
      // where offered, and per-tensor.
      struct Theirs {
        CublasLtGemm gemm;
        bool blockScaled;
      };
      std::vector<Theirs> theirModes;
      for (bool blockScaled : {true, false}) {
        CublasLtGemm theirsGemm;
        bool ready = false;
        for (bool weightsFirst : {true, false})
          for (int outputType : {CublasLt::kR32F, CublasLt::kR16BF})
            if (!ready && (weightsFirst || blockScaled))
              ready = (theirsGemm = CublasLtGemm{},
                       theirsGemm.setUp(lt, tokens, shape.out, shape.in, blockScaled, weightsFirst,
                                        outputType, unitScales, unitScales, workspaceBytes));
        if (ready)
          theirModes.push_back({theirsGemm, blockScaled});
      }
      auto runTheirs = [&](const CublasLtGemm &theirsGemm) -> Status {
        const void *first =
                       reinterpret_cast<void *>(theirsGemm.weightsFirst ? weights : activations),
                   *second =
                       reinterpret_cast<void *>(theirsGemm.weightsFirst ? activations : weights);
        int status =
            lt.matmul(lt.handle, theirsGemm.desc, &alpha, first, theirsGemm.a, second, theirsGemm.b,
                      &beta, reinterpret_cast<void *>(theirs), theirsGemm.c,
                      reinterpret_cast<void *>(theirs), theirsGemm.c, theirsGemm.algo.algo,
                      reinterpret_cast<void *>(workspace), workspaceBytes, device.nativeStream());
        return status == 0
                   ? Status::success()
                   : Status::error("cublasLtMatmul failed (status " + std::to_string(status) + ")");
      };
      // Frees the matmuls' descriptors (an error ends the program, so only the
      // path that goes on calls this).
      auto destroyTheirs = [&] {
        for (Theirs &mode : theirModes) {
          lt.descDestroy(mode.gemm.desc);
          for (void *layout : {mode.gemm.a, mode.gemm.b, mode.gemm.c})
            lt.layoutDestroy(layout);
        }
      };
      // Rounds of ours in each width, then theirs; the medians.
      std::vector<std::vector<double>> ourSamples(loaded.size()), theirSamples(theirModes.size());
      std::vector<unsigned> splitsOf;
      for (const Loaded &variant : loaded)
        splitsOf.push_back(cuda::fp8GemmSplits(tokens, shape.out, shape.in, *multiprocessors,
                                               variant.config.blockN));
      // Each timing with the clock and power read beside it where NVML is there.
      auto sampled = [&](const std::function<StatusOr<double>()> &timing,
                         std::vector<double> &megahertz, std::vector<double> &watts) {
        if (!clocks)
          return timing();
        bench::GpuClocks::Reading reading;
        StatusOr<double> timed = clocks->during(timing, reading);
        if (reading.samples > 0) {
          megahertz.push_back(reading.megahertz);
          watts.push_back(reading.watts);
        }
        return timed;
      };
      const bool peerIsBlockScaled = std::any_of(theirModes.begin(), theirModes.end(),
                                                 [](const Theirs &t) { return t.blockScaled; });
      // Which of our variants is the executor's choice.
      std::vector<bool> isChosen;
      for (const Loaded &variant : loaded)
        isChosen.push_back(variant.config.blockN == chosen.blockN &&
                           variant.config.promoteBehind == chosen.promoteBehind);
      std::vector<double> ourMegahertz, ourWatts, theirMegahertz, theirWatts, unused;
      for (int round = 0; round < rounds; ++round) {
        for (size_t l = 0; l < loaded.size(); ++l) {
          StatusOr<double> timed =
              sampled([&] { return timeVariant(loaded[l], splitsOf[l]); },
                      isChosen[l] ? ourMegahertz : unused, isChosen[l] ? ourWatts : unused);
          if (!timed)
            return fail(timed.message());
          ourSamples[l].push_back(*timed);
        }
        for (size_t m = 0; m < theirModes.size(); ++m) {
          const bool isPeer = theirModes[m].blockScaled == peerIsBlockScaled;
          StatusOr<double> timed =
              sampled([&] { return timeIt([&] { return runTheirs(theirModes[m].gemm); }); },
                      isPeer ? theirMegahertz : unused, isPeer ? theirWatts : unused);
          if (!timed)
            return fail(timed.message());
          theirSamples[m].push_back(*timed);
        }
      }
      if (!ourMegahertz.empty() && !theirMegahertz.empty()) {
        row.ourMegahertz = kt::median(ourMegahertz);
        row.ourWatts = kt::median(ourWatts);
        row.theirMegahertz = kt::median(theirMegahertz);
        row.theirWatts = kt::median(theirWatts);
      }
      for (size_t l = 0; l < loaded.size(); ++l) {
        const double seconds = kt::median(ourSamples[l]);
        row.seconds[loaded[l].variant] = seconds;
        if (isChosen[l])
          row.chosen = seconds;
      }
      for (size_t m = 0; m < theirModes.size(); ++m) {
        (theirModes[m].blockScaled ? row.blockScaled : row.perTensor) = kt::median(theirSamples[m]);
        (theirModes[m].blockScaled ? row.blockMode : row.tensorMode) = theirModes[m].gemm.mode;
      }
      // The split sweep: the executor's tiles (and the wide ones) split 1
      // to 16 ways, where the parts keep at least 2 slices.
      for (const Loaded &variant : loaded) {
        if (!splitSweep || tokens > 512 ||
            variant.config.promoteBehind != (variant.config.blockN <= 128))
          continue;
        SweepRow sweep{shape.name, tokens, variant.config.blockN, {}};
        for (unsigned splits = 1; splits <= 16; ++splits) {
          if (splits * 2 > unsigned(shape.in / 128) ||
              splits * size_t(tokens * shape.out) > scratch.partialFloats)
            break;
          StatusOr<double> timed = timeVariant(variant, splits);
          if (!timed)
            return fail(timed.message());
          sweep.seconds.push_back(*timed);
        }
        sweeps.push_back(sweep);
      }
      std::vector<float> mine(size_t(tokens * shape.out));
      if (Status s = device.copyToHost(mine.data(), ours, mine.size() * 4); !s.ok())
        return fail(s.message());

      // Their result against ours (relative L2 of the difference), from the
      // block-scaled matmul where offered.
      if (!theirModes.empty()) {
        const CublasLtGemm &reference = theirModes[0].gemm;
        if (Status s = runTheirs(reference); !s.ok())
          return fail(s.message());
        std::vector<float> other(mine.size());
        if (reference.outType == CublasLt::kR32F) {
          if (Status s = device.copyToHost(other.data(), theirs, other.size() * 4); !s.ok())
            return fail(s.message());
        } else {
          std::vector<uint16_t> half(other.size());
          if (Status s = device.copyToHost(half.data(), theirs, half.size() * 2); !s.ok())
            return fail(s.message());
          for (size_t i = 0; i < other.size(); ++i)
            other[i] = bf16ToFloat(half[i]);
        }
        double diff = 0, norm = 0;
        for (int64_t t = 0; t < tokens; ++t)
          for (int64_t o = 0; o < shape.out; ++o) {
            // Ours: [tokens][out]; theirs column-major out x tokens, or tokens x out.
            const double
                a = mine[size_t(t * shape.out + o)],
                b = other[size_t(reference.weightsFirst ? t * shape.out + o : o * tokens + t)];
            diff += (a - b) * (a - b);
            norm += b * b;
          }
        row.difference = std::sqrt(diff / std::max(norm, 1e-30));
      }
      destroyTheirs();
      if (row.peer() == 0)
        return fail("cuBLASLt offers no FP8 matmul for " + tag + " at " + std::to_string(tokens) +
                    " tokens");
      rows.push_back(row);
    }
  }

  // The FP8 GEMV (one token per block) against the GEMM at a few tokens:
  // where the executor switches from one to the other; and the bf16 mma
  // GEMM of GPUs without FP8 tensor cores, compiled as compute_80 PTX (the
  // GEMV only up to 32 tokens: it reads the weight once per token).
  struct Crossover {
    std::string shape;
    int64_t tokens;
    double gemv, gemm, bf16;
  };
  std::vector<Crossover> crossovers;
  const bool filtered = !onlyShape.empty() || onlyTokens > 0;
  if (rows.empty())
    return fail("no matrix and token count match --shape and --tokens");
  for (const Shape &shape : {shapes[0], shapes[3]}) {
    if (filtered)
      break;
    StatusOr<cuda::KernelSpec> gemvSpec = cuda::gemvFp8Spec(shape.out, shape.in);
    StatusOr<cuda::LoadedKernel> gemv = compileAndLoad(gemvSpec, "");
    StatusOr<cuda::LoadedKernel> sum =
        compileAndLoad(cuda::gemmFp8SumSpec(shape.out, shape.in), "");
    StatusOr<cuda::LoadedKernel> quantize = compileAndLoad(cuda::fp8QuantizeSpec(shape.in), "");
    StatusOr<cuda::KernelSpec> bf16Spec = cuda::gemmFp8Bf16Spec(shape.out, shape.in);
    StatusOr<cuda::CompiledKernel> bf16Ptx =
        bf16Spec ? cache.getOrCompile(*bf16Spec, "compute_80")
                 : StatusOr<cuda::CompiledKernel>(bf16Spec.status());
    StatusOr<cuda::LoadedKernel> bf16 =
        bf16Ptx ? device.load(*bf16Ptx) : StatusOr<cuda::LoadedKernel>(bf16Ptx.status());
    if (!gemv || !sum || !quantize || !bf16)
      return fail("cannot load the crossover kernels");
    // The GEMM in each tile width, as the executor picks them per step.
    std::map<unsigned, std::pair<cuda::LoadedKernel, cuda::Fp8GemmWeight>> gemms;
    for (unsigned blockN : {64u, 128u, 256u}) {
      StatusOr<cuda::Fp8GemmConfig> config = cuda::fp8GemmConfig(shape.out, blockN);
      if (!config)
        continue;
      StatusOr<cuda::LoadedKernel> gemm =
          compileAndLoad(cuda::gemmFp8Spec(shape.out, shape.in, *config), "");
      StatusOr<cuda::Fp8GemmWeight> weight = gemm ? gemmWeight(*gemm, *config, shape.out, shape.in)
                                                  : StatusOr<cuda::Fp8GemmWeight>(gemm.status());
      if (!weight)
        return fail(weight.message());
      gemms.emplace(blockN, std::make_pair(*gemm, *weight));
    }
    for (int64_t tokens : {1, 2, 4, 8, 16, 32, 512, 4096}) {
      cuda::DevicePointer w = weights, scales = unitScales, xp = x, y = ours;
      cuda::GemvLayout layout{int(shape.in), int(shape.out), 0, 0, int(tokens)};
      cuda::LaunchShape launch;
      launch.gridX = unsigned((shape.out + cuda::kGemvRowsPerBlock - 1) / cuda::kGemvRowsPerBlock);
      launch.gridY = unsigned(tokens);
      launch.blockX = gemvSpec->blockThreads;
      StatusOr<double> gemvTime = tokens > 32 ? StatusOr<double>(0.0) : timeIt([&] {
        return device.launch(*gemv, launch, {&w, &scales, &xp, &y, &layout});
      });
      int xs = int(shape.in), ys = int(shape.out), count = int(tokens);
      cuda::LaunchShape bf16Launch;
      bf16Launch.gridX = unsigned(shape.out / 64);
      bf16Launch.gridY = unsigned((tokens + 63) / 64);
      bf16Launch.blockX = bf16Spec->blockThreads;
      StatusOr<double> bf16Time = timeIt([&] {
        return device.launch(*bf16, bf16Launch, {&w, &scales, &xp, &xs, &y, &ys, &count});
      });
      const cuda::Fp8GemmTiling tiling =
          cuda::fp8GemmTiling(tokens, shape.out, shape.in, *multiprocessors);
      const auto &[gemm, weight] = gemms.at(tiling.blockN);
      const cuda::Fp8GemmKernels kernels{&*quantize, &gemm, &*sum,
                                         *cuda::fp8GemmConfig(shape.out, tiling.blockN)};
      StatusOr<double> gemmTime = timeIt([&] {
        return cuda::runFp8Gemm(device, kernels, weight, x, shape.in, tokens, ours, shape.out,
                                scratch, tiling.splits);
      });
      if (!gemvTime || !gemmTime || !bf16Time)
        return fail(!gemvTime   ? gemvTime.message()
                    : !gemmTime ? gemmTime.message()
                                : bf16Time.message());
      crossovers.push_back({shape.name, tokens, *gemvTime, *gemmTime, *bf16Time});
    }
  }

  // The routed experts' grouped GEMM at V3's expert shapes: 256 experts,
  // top-8 of uniformly random routing, against the same rows as one group
  // of one weight (its ceiling: full tiles, one weight).
  struct Grouped {
    std::string shape;
    int64_t tokens, rows, tiles, out, in, usedExperts;
    double grouped, dense;
  };
  std::vector<Grouped> groupedRows;
  const int64_t kExperts = 256, kTopK = 8;
  cuda::DevicePointer expertWeights = 0;
  for (const Shape &shape : {Shape{"expert gate/up", 2048, 7168}, Shape{"expert down", 7168, 2048}}) {
    if (filtered)
      break;
    if (!expertWeights) { // every expert's weight apart, as in a model (3.8 GB)
      const size_t bytes = size_t(kExperts * 2048 * 7168), chunk = size_t(64) << 20;
      expertWeights = allocate(bytes);
      const std::vector<uint8_t> codes = randomCodes(chunk);
      for (size_t at = 0; at < bytes; at += chunk)
        if (Status s = device.copyToDevice(expertWeights + at, codes.data(), std::min(chunk, bytes - at));
            !s.ok())
          return fail(s.message());
    }
    std::vector<float> expertScales(size_t(kExperts * (shape.out / 128) * (shape.in / 128)), 1.0f);
    const cuda::DevicePointer scales = upload(expertScales.data(), expertScales.size() * 4);
    StatusOr<cuda::Fp8GemmConfig> config = cuda::fp8GemmConfig(shape.out);
    StatusOr<cuda::LoadedKernel> grouped =
        config ? compileAndLoad(cuda::gemmFp8GroupedSpec(shape.out, shape.in, *config), "")
               : StatusOr<cuda::LoadedKernel>(config.status());
    StatusOr<cuda::LoadedKernel> sum = compileAndLoad(cuda::gemmFp8SumSpec(shape.out, shape.in), "");
    StatusOr<cuda::LoadedKernel> quantize = compileAndLoad(cuda::fp8QuantizeSpec(shape.in), "");
    if (!config || !grouped || !sum || !quantize)
      return fail("cannot load the grouped GEMM kernels");
    if (Status s = cuda::allowFp8GemmSharedBytes(device, *grouped, *config); !s.ok())
      return fail(s.message());
    StatusOr<cuda::Fp8GemmWeight> stacked = cuda::prepareFp8GemmWeight(
        device, expertWeights, scales, kExperts * shape.out, shape.in, *config);
    StatusOr<cuda::Fp8GemmWeight> single =
        cuda::prepareFp8GemmWeight(device, expertWeights, scales, shape.out, shape.in, *config);
    if (!stacked || !single)
      return fail(!stacked ? stacked.message() : single.message());
    for (int64_t tokens : {int64_t(512), int64_t(4096)}) {
      // Uniform routing: token t's k-th expert is a random distinct one.
      std::vector<int64_t> sizes(static_cast<size_t>(kExperts), 0);
      std::vector<int32_t> rowIndex;
      std::vector<std::vector<int32_t>> byExpert(static_cast<size_t>(kExperts));
      for (int64_t t = 0; t < tokens; ++t) {
        std::vector<int64_t> chosen;
        while (int64_t(chosen.size()) < kTopK) {
          const int64_t e = int64_t(random() % uint64_t(kExperts));
          if (std::find(chosen.begin(), chosen.end(), e) == chosen.end())
            chosen.push_back(e);
        }
        for (int64_t e : chosen)
          byExpert[size_t(e)].push_back(int32_t(t % maxTokens));
      }
      for (int64_t e = 0; e < kExperts; ++e) {
        sizes[size_t(e)] = int64_t(byExpert[size_t(e)].size());
        rowIndex.insert(rowIndex.end(), byExpert[size_t(e)].begin(), byExpert[size_t(e)].end());
      }
      const int64_t rowCount = int64_t(rowIndex.size());
      const std::vector<int32_t> tiles = cuda::expertRowTiles(sizes, cuda::kFp8GemmTileRows);
      const cuda::DevicePointer dIndex = upload(rowIndex.data(), rowIndex.size() * 4),
                                dTiles = upload(tiles.data(), tiles.size() * 4);
      cuda::Fp8GemmScratch big = scratch;
      big.rows = rowCount;
      big.activations = allocate(cuda::fp8GemmActivationBytes(rowCount, shape.in));
      big.scales = allocate(cuda::fp8GemmScaleBytes(rowCount, shape.in));
      const cuda::DevicePointer y = allocate(size_t(rowCount * shape.out) * 4);
      cuda::Fp8GemmKernels groupedKernels{&*quantize, &*grouped, &*sum, *config};
      // x rows of the real tokens (rowIndex), as the executor gathers them.
      StatusOr<double> groupedTime = timeIt([&] {
        return cuda::runFp8GroupedGemm(device, groupedKernels, *stacked, shape.out, x, shape.in,
                                       dIndex, rowCount, dTiles, int64_t(tiles.size() / 3), y,
                                       shape.out, big);
      });
      // The peer: the same rows as one group against one weight.
      const std::vector<int32_t> oneGroup =
          cuda::expertRowTiles({rowCount}, cuda::kFp8GemmTileRows);
      const cuda::DevicePointer dOneGroup = upload(oneGroup.data(), oneGroup.size() * 4);
      StatusOr<double> denseTime = timeIt([&] {
        return cuda::runFp8GroupedGemm(device, groupedKernels, *single, shape.out, x, shape.in,
                                       dIndex, rowCount, dOneGroup, int64_t(oneGroup.size() / 3), y,
                                       shape.out, big);
      });
      if (!groupedTime || !denseTime)
        return fail(!groupedTime ? groupedTime.message() : denseTime.message());
      const int64_t used =
          std::count_if(sizes.begin(), sizes.end(), [](int64_t n) { return n > 0; });
      groupedRows.push_back({shape.name, tokens, rowCount, int64_t(tiles.size() / 3), shape.out,
                             shape.in, used, *groupedTime, *denseTime});
    }
  }

  auto tflops = [](const Row &r, double seconds) {
    return seconds > 0 ? 2.0 * double(r.tokens) * double(r.out) * double(r.in) / seconds / 1e12
                       : 0.0;
  };
  double logSum = 0, logSumBlock = 0;
  int blockCount = 0;
  for (const Row &r : rows) {
    logSum += std::log(r.peer() / r.ours());
    if (r.blockScaled > 0) {
      logSumBlock += std::log(r.blockScaled / r.ours());
      ++blockCount;
    }
  }
  const double geometricMean = std::exp(logSum / double(rows.size()));
  if (json) {
    nlohmann::json out = {{"gpu", gpus[0].name},
                          {"arch", arch},
                          {"multiprocessors", *multiprocessors},
                          {"rounds", rounds},
                          {"geomean_ratio_to_cublaslt", geometricMean},
                          {"results", nlohmann::json::array()},
                          {"gemv_crossover", nlohmann::json::array()}};
    for (const Row &r : rows)
      out["results"].push_back({{"shape", r.shape},
                                {"tokens", r.tokens},
                                {"out", r.out},
                                {"in", r.in},
                                {"splits", r.splits},
                                {"ours_us", r.ours() * 1e6},
                                {"ours_tflops", tflops(r, r.ours())},
                                {"cublaslt_block_scaled_us", r.blockScaled * 1e6},
                                {"cublaslt_block_scaled_mode", r.blockMode},
                                {"cublaslt_per_tensor_us", r.perTensor * 1e6},
                                {"cublaslt_per_tensor_mode", r.tensorMode},
                                {"ratio_to_cublaslt", r.peer() / r.ours()},
                                {"quantize_us", r.quantize * 1e6},
                                {"relative_difference", r.difference},
                                {"ours_sm_mhz", r.ourMegahertz},
                                {"ours_board_watts", r.ourWatts},
                                {"cublaslt_sm_mhz", r.theirMegahertz},
                                {"cublaslt_board_watts", r.theirWatts}});
    for (size_t i = 0; i < rows.size(); ++i)
      for (size_t v = 0; v < kVariants; ++v)
        out["results"][i]["variants_us"][variants[v].name] = rows[i].seconds[v] * 1e6;
    for (const Crossover &c : crossovers)
      out["gemv_crossover"].push_back({{"shape", c.shape},
                                       {"tokens", c.tokens},
                                       {"gemv_us", c.gemv * 1e6},
                                       {"gemm_us", c.gemm * 1e6},
                                       {"bf16_mma_compute_80_us", c.bf16 * 1e6}});
    for (const Grouped &g : groupedRows)
      out["grouped_experts"].push_back(
          {{"shape", g.shape}, {"tokens", g.tokens}, {"rows", g.rows}, {"tiles", g.tiles},
           {"grouped_us", g.grouped * 1e6}, {"dense_same_rows_us", g.dense * 1e6},
           {"grouped_tflops", 2.0 * double(g.rows * g.out * g.in) / g.grouped / 1e12},
           {"expert_weight_gb_per_s", double(g.usedExperts * g.out * g.in) / g.grouped / 1e9}});
    std::printf("%s\n", out.dump(1).c_str());
    return 0;
  }
  std::printf("%s (%s), %d SMs; cuBLASLt FP8 in the same run, medians of %d rounds of ours then "
              "theirs. Ours in us per tile width: n64/n128/n144/n256 columns per block, pb: "
              "promoted behind the next products (* = the executor's; where the rows are not "
              "whole 128s, n128 runs 64); ratio: cuBLASLt's time over ours, against its "
              "block-scaled matmul where offered, else per-tensor\n",
              gpus[0].name.c_str(), arch.c_str(), *multiprocessors, rounds);
  std::printf("%-15s %6s %-11s %3s", "matrix", "tokens", "out x in", "spl");
  for (const Variant &v : variants)
    std::printf(" %8s", v.name);
  std::printf(" %8s %8s %8s %8s %6s %8s %8s %9s %7s\n", "TFLOP/s", "cuB blk", "cuB ten", "TFLOP/s",
              "ratio", "quant us", "rel diff", "MHz o/t", "W o/t");
  for (const Row &r : rows) {
    const std::string dims = std::to_string(r.out) + "x" + std::to_string(r.in);
    auto cell = [](double seconds, bool chosen) {
      char text[32];
      if (seconds <= 0)
        std::snprintf(text, sizeof text, "-");
      else
        std::snprintf(text, sizeof text, "%.1f%s", seconds * 1e6, chosen ? "*" : "");
      return std::string(text);
    };
    std::printf("%-15s %6lld %-11s %3u", r.shape.c_str(), (long long)r.tokens, dims.c_str(),
                r.splits);
    for (double seconds : r.seconds)
      std::printf(" %8s", cell(seconds, seconds == r.chosen).c_str());
    std::printf(" %8.0f %8s %8s %8.0f %5.0f%% %8.1f %8.1e", tflops(r, r.ours()),
                cell(r.blockScaled, false).c_str(), cell(r.perTensor, false).c_str(),
                tflops(r, r.peer()), 100 * r.peer() / r.ours(), r.quantize * 1e6, r.difference);
    if (r.ourMegahertz > 0)
      std::printf(" %4.0f/%-4.0f %3.0f/%-3.0f\n", r.ourMegahertz, r.theirMegahertz, r.ourWatts,
                  r.theirWatts);
    else
      std::printf(" %9s %7s\n", "-", "-");
  }
  if (!rows.empty()) {
    std::printf("cuBLASLt modes: block-scaled %s; per-tensor %s\n",
                rows[0].blockMode.empty() ? "not offered" : rows[0].blockMode.c_str(),
                rows[0].tensorMode.c_str());
  }
  if (!clocks) {
    std::printf("No clock readings: %s.\n", whyNoClocks.c_str());
  } else {
    // Geometric means of our clock and power over cuBLASLt's, row by row.
    double logMegahertz = 0, logWatts = 0, counted = 0;
    for (const Row &r : rows)
      if (r.ourMegahertz > 0 && r.theirMegahertz > 0 && r.ourWatts > 0 && r.theirWatts > 0) {
        logMegahertz += std::log(r.ourMegahertz / r.theirMegahertz);
        logWatts += std::log(r.ourWatts / r.theirWatts);
        ++counted;
      }
    if (counted > 0)
      std::printf("While timed (NVML, every ms): our SM clock %.3fx cuBLASLt's, our board power "
                  "%.3fx (geometric means over %.0f rows; MHz o/t, W o/t per row)\n",
                  std::exp(logMegahertz / counted), std::exp(logWatts / counted), counted);
  }
  std::printf("geometric mean of ours against cuBLASLt: %.0f%% (target >= 90%%)",
              100 * geometricMean);
  if (blockCount > 0)
    std::printf("; against its block-scaled matmul alone: %.0f%% over %d shapes",
                100 * std::exp(logSumBlock / blockCount), blockCount);
  if (!sweeps.empty())
    std::printf("\n\nSplit sweep: us per GEMM (and split sum) split 1, 2, ... ways along K; "
                "* = the executor's split:");
  for (const SweepRow &sweep : sweeps) {
    const Shape &shape = *std::find_if(std::begin(shapes), std::end(shapes),
                                       [&](const Shape &s) { return sweep.shape == s.name; });
    const unsigned chosen =
        cuda::fp8GemmSplits(sweep.tokens, shape.out, shape.in, *multiprocessors, sweep.blockN);
    std::printf("\n%-15s %5lld n%-4u", sweep.shape.c_str(), (long long)sweep.tokens, sweep.blockN);
    for (size_t i = 0; i < sweep.seconds.size(); ++i)
      std::printf(" %6.1f%s", sweep.seconds[i] * 1e6, i + 1 == chosen ? "*" : " ");
  }
  std::printf("\n\nFP8 GEMV (f32 activations, a block per token) against the GEMM (quantize + "
              "wgmma), and the bf16 mma GEMM of sm_80-sm_89 run as compute_80 PTX:\n"
              "%-10s %6s %9s %9s %9s %9s\n",
              "matrix", "tokens", "GEMV us", "GEMM us", "bf16 us", "TFLOP/s");
  for (const Crossover &c : crossovers) {
    const Shape &shape = c.shape == shapes[0].name ? shapes[0] : shapes[3];
    std::printf("%-10s %6lld %9s %9.1f %9.1f %9.0f\n", c.shape.c_str(), (long long)c.tokens,
                c.gemv > 0 ? std::to_string(int64_t(c.gemv * 1e6 + 0.5)).c_str() : "-",
                c.gemm * 1e6, c.bf16 * 1e6,
                2.0 * double(c.tokens) * double(shape.out) * double(shape.in) / c.bf16 / 1e12);
  }
  if (!groupedRows.empty())
    std::printf("\nRouted experts, grouped GEMM (256 experts, top-8 uniform routing; quantize + "
                "gather + wgmma) against the same kernel on the same rows as one group of one weight:\n"
                "%-15s %6s %6s %6s %10s %8s %9s %10s %8s %6s\n",
                "matrix", "tokens", "rows", "tiles", "grouped us", "TFLOP/s", "wt GB/s",
                "dense us", "TFLOP/s", "ratio");
  for (const Grouped &g : groupedRows) {
    const double flops = 2.0 * double(g.rows * g.out * g.in);
    std::printf("%-15s %6lld %6lld %6lld %10.1f %8.0f %9.0f %10.1f %8.0f %5.0f%%\n",
                g.shape.c_str(), (long long)g.tokens, (long long)g.rows, (long long)g.tiles,
                g.grouped * 1e6, flops / g.grouped / 1e12,
                double(g.usedExperts * g.out * g.in) / g.grouped / 1e9, g.dense * 1e6,
                flops / g.dense / 1e12, 100 * g.dense / g.grouped);
  }
  return 0;
}
