// The kernels on a real GPU against CPU references, both as CUBIN for the
// device's arch and as PTX the driver compiles. Skips without a GPU.
// On the GPU machine: cuda_tests --gtest_filter='GpuKernels*'
#include "runtime/cpu/Math.h"
#include "runtime/cpu/MoeRouting.h"
#include "runtime/cpu/Rope.h"
#include "runtime/cuda/CudaDevice.h"
#include "runtime/cuda/DeviceQuery.h"
#include "runtime/cuda/Fp8Gemm.h"
#include "runtime/cuda/KernelCache.h"
#include "runtime/cuda/KernelCatalog.h"
#include "runtime/exec/TokenSampling.h"
#include "runtime/gguf/GgmlType.h"
#include "runtime/quant/Quant.h"
#include "test/unit/cuda/CudaTestSupport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <regex>

namespace kt::cuda {
namespace {

double relativeL2(const std::vector<float> &actual, const std::vector<double> &expected) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    diff += (actual[i] - expected[i]) * (actual[i] - expected[i]);
    norm += expected[i] * expected[i];
  }
  return std::sqrt(diff / norm);
}

std::vector<float> randomFloats(size_t count, float low, float high, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(low, high);
  std::vector<float> values(count);
  for (auto &v : values)
    v = dist(rng);
  return values;
}

// Random e4m3 codes without the NaN ones (weights hold none).
std::vector<uint8_t> randomE4m3(size_t count, std::mt19937 &random) {
  std::vector<uint8_t> codes(count);
  for (uint8_t &b : codes) {
    b = static_cast<uint8_t>(random());
    if ((b & 0x7f) == 0x7f)
      b ^= 1;
  }
  return codes;
}

// y = x W^T in double for a weight of `out` rows of `in` e4m3 codes with
// 128x128 block scales: per 128-column slice, the sum of activation(r, i)
// x weight, times activationScale(r, slice) and the weight's block scale.
std::vector<double> blockScaledProduct(int64_t rows, int64_t out, int64_t in,
                                       const std::function<double(int64_t, int64_t)> &activation,
                                       const std::function<double(int64_t, int64_t)> &activationScale,
                                       const std::vector<uint8_t> &w,
                                       const std::vector<float> &wScales) {
  const int64_t slices = in / 128;
  // Both operands decoded once (the cases reach billions of products).
  std::vector<double> a(size_t(rows * in)), b(size_t(out * in)), aScales(size_t(rows * slices));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < in; ++i)
      a[size_t(r * in + i)] = activation(r, i);
    for (int64_t slice = 0; slice < slices; ++slice)
      aScales[size_t(r * slices + slice)] = activationScale(r, slice);
  }
  for (size_t i = 0; i < b.size(); ++i)
    b[i] = quant::fp8E4m3ToFloat(w[i]);
  std::vector<double> product(size_t(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      const double *x = &a[size_t(r * in)], *y = &b[size_t(o * in)];
      double total = 0;
      for (int64_t slice = 0; slice < slices; ++slice) {
        double part = 0;
        for (int64_t i = slice * 128; i < slice * 128 + 128; ++i)
          part += x[i] * y[i];
        total += part * aScales[size_t(r * slices + slice)] *
                 wScales[size_t((o / 128) * slices + slice)];
      }
      product[size_t(r * out + o)] = total;
    }
  return product;
}

// `rows` rows of `width` floats from rows `stride` apart.
std::vector<float> packRows(const std::vector<float> &strided, int64_t rows, int64_t width,
                            int64_t stride) {
  std::vector<float> packed(size_t(rows * width));
  for (int64_t r = 0; r < rows; ++r)
    std::copy_n(strided.begin() + r * stride, width, packed.begin() + r * width);
  return packed;
}

// Parameter: true = CUBIN for the GPU's own arch, false = PTX (compute_XY).
// An MLA case's queries, cache and context on the GPU.
struct MlaBuffers {
  DevicePointer qLatent = 0, qRope = 0, latent = 0, ropeKey = 0, context = 0;
  size_t contextFloats = 0;
};

// f32 rounded to bf16, to nearest even, as the mma GEMMs round activations.
float bf16Rounded(float value) { return quant::bf16ToFloat(quant::floatToBf16(value)); }

class GpuKernels : public ::testing::TestWithParam<bool> {
public: // shared check helpers call the fixture
  void SetUp() override {
    std::string whyNone;
    auto gpus = queryGpus(whyNone);
    if (gpus.empty())
      GTEST_SKIP() << "no GPU: " << whyNone;
    auto nvrtc = Nvrtc::instance();
    if (!nvrtc.ok())
      GTEST_SKIP() << nvrtc.message();
    arch = GetParam() ? gpus[0].arch()
                      : "compute_" + std::to_string(gpus[0].computeMajor) +
                            std::to_string(gpus[0].computeMinor);
    auto opened = CudaDevice::open(0);
    ASSERT_TRUE(opened.ok()) << opened.message();
    device = std::move(*opened);
    cache = std::make_unique<KernelCache>(cacheDir.path(), **nvrtc);
    std::printf("[ gpu      ] %s (%s)\n", gpus[0].name.c_str(), arch.c_str());
  }
  void TearDown() override {
    if (device)
      for (DevicePointer p : allocations)
        (void)device->free(p);
  }

  LoadedKernel load(const StatusOr<KernelSpec> &spec) {
    EXPECT_TRUE(spec.ok()) << spec.message();
    auto compiled = cache->getOrCompile(*spec, arch);
    EXPECT_TRUE(compiled.ok()) << compiled.message();
    auto loaded = device->load(*compiled);
    EXPECT_TRUE(loaded.ok()) << loaded.message();
    return loaded.ok() ? *loaded : LoadedKernel{};
  }
  DevicePointer upload(const void *data, size_t bytes) {
    auto p = device->allocate(bytes);
    EXPECT_TRUE(p.ok()) << p.message();
    allocations.push_back(*p);
    Status s = device->copyToDevice(*p, data, bytes);
    EXPECT_TRUE(s.ok()) << s.message();
    return *p;
  }
  DevicePointer allocate(size_t bytes) {
    auto p = device->allocate(bytes);
    EXPECT_TRUE(p.ok()) << p.message();
    allocations.push_back(*p);
    return *p;
  }
  // MlaCase's vectors uploaded, and room for `tokens` tokens' context.
  template <typename MlaCase> MlaBuffers uploadMla(const MlaCase &c, int tokens) {
    MlaBuffers m;
    m.qLatent = upload(c.qLatent.data(), c.qLatent.size() * 4);
    m.qRope = upload(c.qRope.data(), c.qRope.size() * 4);
    m.latent = upload(c.latent.data(), c.latent.size() * 4);
    m.ropeKey = upload(c.ropeKey.data(), c.ropeKey.size() * 4);
    m.contextFloats = size_t(tokens * c.heads * c.kvLora);
    m.context = allocate(m.contextFloats * 4);
    return m;
  }
  std::vector<float> download(DevicePointer p, size_t count) {
    std::vector<float> out(count);
    Status s = device->copyToHost(out.data(), p, count * sizeof(float));
    EXPECT_TRUE(s.ok()) << s.message();
    return out;
  }
  void run(const LoadedKernel &kernel, LaunchShape shape, std::vector<void *> args) {
    Status s = device->launch(kernel, shape, std::move(args));
    ASSERT_TRUE(s.ok()) << s.message();
    s = device->synchronize();
    ASSERT_TRUE(s.ok()) << s.message();
  }

  std::string arch;
  test::TempDir cacheDir;
  std::unique_ptr<CudaDevice> device;
  std::unique_ptr<KernelCache> cache;
  std::vector<DevicePointer> allocations;
};

// The streamed experts' copies: one batch on the side stream (one driver
// call where the driver has batched copies) lands every slice where it was
// sent, the main stream seeing them after it waits for the side's signal.
TEST_P(GpuKernels, SideStreamBatchCopiesLandInPlace) {
  const size_t sizes[] = {4096, 1000, 65536, 3, 20000};
  size_t total = 0;
  for (size_t size : sizes)
    total += size;
  StatusOr<void *> pinned = device->allocateHost(total);
  ASSERT_TRUE(pinned.ok()) << pinned.message();
  auto *host = static_cast<uint8_t *>(*pinned);
  for (size_t i = 0; i < total; ++i)
    host[i] = uint8_t(i * 7 + i / 251);
  // Sent in reverse order of the host bytes, so each copy's place differs
  // from its source's offset.
  DevicePointer target = allocate(total);
  std::vector<CudaDevice::HostCopy> copies;
  std::vector<uint8_t> expected(total);
  size_t from = 0, to = total;
  for (size_t size : sizes) {
    to -= size;
    copies.push_back({target + to, host + from, size});
    std::memcpy(expected.data() + to, host + from, size);
    from += size;
  }
  ASSERT_TRUE(device->copyBatchToDeviceOnSide(copies).ok());
  ASSERT_TRUE(device->signal(CudaDevice::Queue::Side, 0).ok());
  ASSERT_TRUE(device->waitFor(CudaDevice::Queue::Main, 0).ok());
  ASSERT_TRUE(device->synchronize().ok());
  std::vector<uint8_t> landed(total);
  ASSERT_TRUE(device->copyToHost(landed.data(), target, total).ok());
  EXPECT_EQ(landed, expected);
  ASSERT_TRUE(device->freeHost(*pinned).ok());
}

// The PCI address NVML finds the GPU by (fp8_gemm_bench's clock readings):
// domain:bus:device.function in hex, the same on every call.
TEST_P(GpuKernels, PciBusIdNamesTheGpu) {
  StatusOr<std::string> id = device->pciBusId();
  ASSERT_TRUE(id.ok()) << id.message();
  EXPECT_TRUE(
      std::regex_match(*id, std::regex("[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\\.[0-7]")))
      << *id;
  EXPECT_EQ(device->pciBusId().value(), *id);
}

// RMSNorm of `rows` rows of `hidden` values in double precision.
std::vector<double> referenceRmsNorm(const std::vector<float> &x, const std::vector<float> &weight,
                                     int rows, int64_t hidden, float eps) {
  std::vector<double> y(size_t(rows * hidden));
  for (int r = 0; r < rows; ++r) {
    const float *row = x.data() + r * hidden;
    double squares = 0;
    for (int64_t i = 0; i < hidden; ++i)
      squares += double(row[i]) * row[i];
    const double scale = 1.0 / std::sqrt(squares / double(hidden) + eps);
    for (int64_t i = 0; i < hidden; ++i)
      y[size_t(r * hidden + i)] = row[i] * scale * weight[size_t(i)];
  }
  return y;
}

TEST_P(GpuKernels, RmsNormMatchesTheCpuReference) {
  for (int64_t hidden : {7168, 1536, 512, 100}) {
    SCOPED_TRACE(hidden);
    const int rows = 5;
    const float eps = 1e-6f;
    auto x = randomFloats(rows * hidden, -3, 3, 1);
    auto weight = randomFloats(hidden, 0.5f, 1.5f, 2);
    const std::vector<double> expected = referenceRmsNorm(x, weight, rows, hidden, eps);
    auto spec = rmsNormSpec(hidden, eps);
    LoadedKernel kernel = load(spec);
    ASSERT_NE(kernel.function, nullptr);
    DevicePointer dx = upload(x.data(), x.size() * 4), dw = upload(weight.data(), hidden * 4);
    DevicePointer dy = allocate(x.size() * 4);
    int rowCount = rows, stride = int(hidden);
    run(kernel, {unsigned(rows), 1, 1, spec->blockThreads, 1, 1, 0},
        {&dx, &dw, &dy, &rowCount, &stride, &stride});
    const double error = relativeL2(download(dy, x.size()), expected);
    EXPECT_LE(error, 1e-5);
    std::printf("[ gpu      ] rms_norm %lld: relative L2 %.2e\n", (long long)hidden, error);
  }
}

// add_rms_norm (kt-fuse-residual-norm's) writes the sum a + b, or a + (b + c),
// as the host's f32 adds make it, and that sum's norm as rms_norm writes it,
// bit for bit; rows of widths that do and do not fill the block's threads.
TEST_P(GpuKernels, AddRmsNormWritesTheSumAndTheNormRmsNormWrites) {
  for (int addends : {2, 3})
    for (int64_t hidden : {7168, 512, 100}) {
      SCOPED_TRACE(testing::Message() << addends << " addends, " << hidden);
      const int rows = 5;
      const float eps = 1e-6f;
      const size_t count = size_t(rows * hidden);
      auto a = randomFloats(count, -3, 3, 11), b = randomFloats(count, -3, 3, 12),
           c = randomFloats(count, -3, 3, 13);
      auto weight = randomFloats(hidden, 0.5f, 1.5f, 14);
      std::vector<float> sum(count);
      for (size_t i = 0; i < count; ++i)
        sum[i] = a[i] + (addends == 3 ? b[i] + c[i] : b[i]);
      auto fusedSpec = addRmsNormSpec(hidden, eps, addends), normSpec = rmsNormSpec(hidden, eps);
      ASSERT_TRUE(fusedSpec.ok()) << fusedSpec.message();
      LoadedKernel fused = load(fusedSpec), norm = load(normSpec);
      ASSERT_NE(fused.function, nullptr);
      DevicePointer da = upload(a.data(), count * 4), db = upload(b.data(), count * 4),
                    dc = upload(c.data(), count * 4), dw = upload(weight.data(), hidden * 4),
                    dsum = allocate(count * 4), dy = allocate(count * 4),
                    hostSum = upload(sum.data(), count * 4), dyNorm = allocate(count * 4);
      int rowCount = rows, stride = int(hidden);
      run(fused, {unsigned(rows), 1, 1, fusedSpec->blockThreads, 1, 1, 0},
          {&da, &db, &dc, &dw, &dsum, &dy, &rowCount});
      run(norm, {unsigned(rows), 1, 1, normSpec->blockThreads, 1, 1, 0},
          {&hostSum, &dw, &dyNorm, &rowCount, &stride, &stride});
      const std::vector<float> gotSum = download(dsum, count), got = download(dy, count),
                               expected = download(dyNorm, count);
      EXPECT_EQ(std::memcmp(gotSum.data(), sum.data(), count * 4), 0) << "sums differ";
      EXPECT_EQ(std::memcmp(got.data(), expected.data(), count * 4), 0) << "norms differ";
      // And near the double-precision norm of the sum.
      EXPECT_LE(relativeL2(got, referenceRmsNorm(sum, weight, rows, hidden, eps)), 1e-5);
    }
}

// rms_norm_fp8 and silu_mul_fp8 (kt-fuse-norm-quantize's) write what
// rms_norm or silu_mul and then fp8_quantize write, bit for bit: the
// normalized rows (the norm), the e4m3 codes and the per-slice scales (a
// zero row gives scale 1, tiny values subnormals).
TEST_P(GpuKernels, FusedQuantizationWritesWhatTheProducerThenFp8QuantizeWrite) {
  if (std::atoi(arch.c_str() + arch.find('_') + 1) < 89)
    GTEST_SKIP() << "e4m3 conversion needs sm_89, not " << arch;
  for (int64_t hidden : {7168, 1536, 256}) {
    SCOPED_TRACE(hidden);
    const int rows = 6;
    const float eps = 1e-6f;
    auto x = randomFloats(rows * hidden, -3, 3, 5);
    auto weight = randomFloats(hidden, 0.5f, 1.5f, 6);
    for (int64_t i = 0; i < hidden; ++i) {
      x[size_t(hidden + i)] = 0.0f;
      x[size_t(2 * hidden + i)] *= i < 128 ? 1e-30f : 1.0f;
    }
    auto plainSpec = rmsNormSpec(hidden, eps), fusedSpec = rmsNormFp8Spec(hidden, eps);
    ASSERT_TRUE(fusedSpec.ok()) << fusedSpec.message();
    LoadedKernel plain = load(plainSpec), fused = load(fusedSpec),
                 quantize = load(fp8QuantizeSpec(hidden));
    ASSERT_NE(fused.function, nullptr);
    const int scaleStride = 8, slices = int(hidden / 128);
    DevicePointer dx = upload(x.data(), x.size() * 4), dw = upload(weight.data(), hidden * 4);
    DevicePointer y1 = allocate(x.size() * 4), y2 = allocate(x.size() * 4), q1 = allocate(x.size()),
                  q2 = allocate(x.size()), s1 = allocate(size_t(slices * scaleStride) * 4),
                  s2 = allocate(size_t(slices * scaleStride) * 4), none = 0;
    int rowCount = rows, stride = int(hidden), scaleStrideArg = scaleStride;
    run(plain, {unsigned(rows), 1, 1, plainSpec->blockThreads, 1, 1, 0},
        {&dx, &dw, &y1, &rowCount, &stride, &stride});
    run(quantize, {unsigned(rows * slices * 32 / 256 + 1), 1, 1, 256, 1, 1, 0},
        {&y1, &stride, &rowCount, &q1, &s1, &scaleStrideArg, &none});
    run(fused, {unsigned(rows), 1, 1, fusedSpec->blockThreads, 1, 1, 0},
        {&dx, &dw, &y2, &rowCount, &stride, &stride, &q2, &s2, &scaleStrideArg});
    const std::vector<float> a = download(y1, x.size()), b = download(y2, x.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << "normalized rows differ";
    // The codes and the rows' scales of both quantizations are the same,
    // and not all zeros (the quantization ran).
    auto expectSameQuantization = [&](const char *producer) {
      std::vector<uint8_t> codes1(x.size()), codes2(x.size());
      ASSERT_TRUE(device->copyToHost(codes1.data(), q1, codes1.size()).ok());
      ASSERT_TRUE(device->copyToHost(codes2.data(), q2, codes2.size()).ok());
      EXPECT_EQ(codes1, codes2) << producer;
      EXPECT_NE(std::count(codes2.begin(), codes2.end(), uint8_t(0)), std::ptrdiff_t(codes2.size()))
          << producer;
      const std::vector<float> scales1 = download(s1, size_t(slices * scaleStride)),
                               scales2 = download(s2, size_t(slices * scaleStride));
      for (int slice = 0; slice < slices; ++slice)
        for (int r = 0; r < rows; ++r)
          ASSERT_EQ(scales1[size_t(slice * scaleStride + r)],
                    scales2[size_t(slice * scaleStride + r)])
              << producer << ": row " << r << " slice " << slice;
    };
    expectSameQuantization("rms_norm_fp8");
    EXPECT_EQ(download(s2, size_t(slices * scaleStride))[size_t(scaleStride + 1)],
              1.0f); // zero row

    // silu(gate) * up with x as the gates and its reverse as the ups.
    auto siluSpec = elementwiseSpec("silu_mul", hidden),
         siluFp8Spec = elementwiseSpec("silu_mul_fp8", hidden);
    ASSERT_TRUE(siluFp8Spec.ok()) << siluFp8Spec.message();
    LoadedKernel silu = load(siluSpec), siluFp8 = load(siluFp8Spec);
    ASSERT_NE(siluFp8.function, nullptr);
    std::vector<float> ups(x.rbegin(), x.rend());
    DevicePointer du = upload(ups.data(), ups.size() * 4);
    run(silu, {unsigned(rows * hidden / 256 + 1), 1, 1, 256, 1, 1, 0}, {&dx, &du, &y1, &rowCount});
    run(quantize, {unsigned(rows * slices * 32 / 256 + 1), 1, 1, 256, 1, 1, 0},
        {&y1, &stride, &rowCount, &q1, &s1, &scaleStrideArg, &none});
    run(siluFp8, {unsigned(rows * slices * 32 / 256 + 1), 1, 1, 256, 1, 1, 0},
        {&dx, &du, &q2, &s2, &scaleStrideArg, &rowCount});
    expectSameQuantization("silu_mul_fp8");
  }
}

TEST_P(GpuKernels, EmbeddingMatchesTheCpuReferenceForEveryTableType) {
  const int64_t hidden = 512, vocab = 300;
  auto values = randomFloats(hidden * vocab, -1, 1, 3);
  std::vector<int> tokens = {0, 299, 17, 17, 150, 300 /* out of range */, -1};
  for (auto type :
       {gguf::GgmlType::F32, gguf::GgmlType::F16, gguf::GgmlType::BF16, gguf::GgmlType::Q8_0}) {
    SCOPED_TRACE(static_cast<int>(type));
    const size_t rowBytes = *gguf::ggmlRowBytes(type, hidden);
    std::vector<uint8_t> table(rowBytes * vocab);
    ASSERT_TRUE(quant::quantize(type, values.data(), table.data(), hidden * vocab).ok());
    std::vector<float> row(hidden);
    auto spec = embeddingSpec(hidden, vocab, type);
    LoadedKernel kernel = load(spec);
    ASSERT_NE(kernel.function, nullptr);
    DevicePointer dTable = upload(table.data(), table.size());
    DevicePointer dTokens = upload(tokens.data(), tokens.size() * 4);
    DevicePointer dOut = allocate(tokens.size() * hidden * 4);
    int count = static_cast<int>(tokens.size());
    run(kernel, {unsigned(count), 1, 1, spec->blockThreads, 1, 1, 0},
        {&dTable, &dTokens, &dOut, &count});
    auto out = download(dOut, tokens.size() * hidden);
    for (size_t t = 0; t < tokens.size(); ++t) {
      if (tokens[t] < 0 || tokens[t] >= vocab) {
        for (int64_t i = 0; i < hidden; ++i)
          ASSERT_TRUE(std::isnan(out[t * hidden + i])) << "token " << tokens[t];
        continue;
      }
      ASSERT_TRUE(
          quant::dequantize(type, table.data() + tokens[t] * rowBytes, row.data(), hidden).ok());
      std::vector<double> expected(row.begin(), row.end());
      std::vector<float> actual(out.begin() + t * hidden, out.begin() + (t + 1) * hidden);
      EXPECT_LE(relativeL2(actual, expected), 1e-5) << "token " << tokens[t];
      EXPECT_EQ(actual, row) << "dequantization is exact";
    }
  }
}

// W x in double, W the `out` x `in` matrix `q` of `type` dequantized.
std::vector<double> dequantizedProduct(gguf::GgmlType type, const std::vector<uint8_t> &q,
                                       const std::vector<float> &x, int64_t out, int64_t in) {
  std::vector<float> dequantized(static_cast<size_t>(out * in));
  EXPECT_TRUE(quant::dequantize(type, q.data(), dequantized.data(), out * in).ok());
  std::vector<double> product(static_cast<size_t>(out));
  for (int64_t o = 0; o < out; ++o) {
    double sum = 0;
    for (int64_t i = 0; i < in; ++i)
      sum += double(dequantized[size_t(o * in + i)]) * x[size_t(i)];
    product[size_t(o)] = sum;
  }
  return product;
}

TEST_P(GpuKernels, GemvQ8_0MatchesTheCpuReference) {
  struct Shape {
    int64_t out, in;
  } shapes[] = {{1001, 7168},
                {576, 7168},
                {7168, 2048},
                {33, 64},
                // Short rows, several a warp (the last warp's partly past the end).
                {512, 128},
                {37, 160},
                {13, 512},
                // Rows of one block, eight side by side in a warp's step; of
                // three blocks, one a step.
                {19, 32},
                {45, 96},
                // Rows of 8 blocks or more whose last step is partial (pairs
                // of lanes past the row's end), one warp a row and split.
                {29, 320},
                {100, 7200}};
  for (const auto &shape : shapes) {
    SCOPED_TRACE(std::to_string(shape.out) + "x" + std::to_string(shape.in));
    if (shape.in <= 256)
      EXPECT_GT(gemvQ8_0RowsPerWarp(shape.in, 1), 1u);
    auto w = randomFloats(shape.out * shape.in, -1, 1, 4);
    auto x = randomFloats(shape.in, -1, 1, 5);
    const size_t rowBytes = *gguf::ggmlRowBytes(gguf::GgmlType::Q8_0, shape.in);
    std::vector<uint8_t> q(rowBytes * shape.out);
    ASSERT_TRUE(quant::quantize(gguf::GgmlType::Q8_0, w.data(), q.data(), w.size()).ok());
    const std::vector<double> expected =
        dequantizedProduct(gguf::GgmlType::Q8_0, q, x, shape.out, shape.in);
    auto spec = gemvQ8_0Spec(shape.out, shape.in);
    LoadedKernel kernel = load(spec);
    ASSERT_NE(kernel.function, nullptr);
    DevicePointer dw = upload(q.data(), q.size()), dx = upload(x.data(), x.size() * 4);
    DevicePointer dy = allocate(shape.out * 4);
    const unsigned blocks = gemvGridBlocks(gguf::GgmlType::Q8_0, shape.out, shape.in);
    GemvLayout layout{int(shape.in), int(shape.out), 0, 0};
    run(kernel, {blocks, 1, 1, spec->blockThreads, 1, 1, 0}, {&dw, &dx, &dy, &layout});
    const double error = relativeL2(download(dy, shape.out), expected);
    EXPECT_LE(error, 1e-4);
    std::printf("[ gpu      ] gemv_q8_0 %lldx%lld: relative L2 %.2e\n", (long long)shape.out,
                (long long)shape.in, error);
  }
}

// The prefill GEMV `spec` (a tile of kGemvPrefillTokenTile tokens a block)
// over the matrix at `dw` on 11 tokens, each x: every token's row must be
// `expected` within `tolerance`.
void expectTiledGemvMatches(GpuKernels &t, const StatusOr<KernelSpec> &spec, gguf::GgmlType type,
                            int64_t out, int64_t in, DevicePointer dw, const std::vector<float> &x,
                            const std::vector<double> &expected, double tolerance) {
  const int64_t tokens = 11;
  std::vector<float> xs;
  for (int64_t token = 0; token < tokens; ++token)
    xs.insert(xs.end(), x.begin(), x.end());
  LoadedKernel tiled = t.load(spec);
  ASSERT_NE(tiled.function, nullptr);
  DevicePointer dxs = t.upload(xs.data(), xs.size() * 4), dys = t.allocate(tokens * out * 4);
  GemvLayout tiledLayout{int(in), int(out), 0, 0, int(tokens)};
  t.run(tiled,
        {gemvGridBlocks(type, out, in, kGemvPrefillTokenTile),
         unsigned((tokens + kGemvPrefillTokenTile - 1) / kGemvPrefillTokenTile), 1,
         spec->blockThreads, 1, 1, 0},
        {&dw, &dxs, &dys, &tiledLayout});
  const std::vector<float> rows = t.download(dys, tokens * out);
  for (int64_t token = 0; token < tokens; ++token)
    EXPECT_LE(
        relativeL2(std::vector<float>(rows.begin() + token * out, rows.begin() + (token + 1) * out),
                   expected),
        tolerance)
        << "token " << token << " of the tiled GEMV";
}

// Dense q8_0 matrices of split rows (quant::splitQ8_0Rows): decode
// quantizes x into three int8 planes and multiplies them with dp4a, within
// about f32's rounding of the product; the f32 decode GEMV and the prefill
// tiles read the same rows. Against the double product of the dequantized
// weights; x has blocks 1000x apart in size and a block of zeros.
TEST_P(GpuKernels, SplitRowQ8_0GemvsMatchTheCpuReference) {
  struct Shape {
    int64_t out, in;
  } shapes[] = {{1536, 7168}, {576, 7168}, {7168, 2048}, {100, 16384}, {33, 256}};
  for (const auto &shape : shapes) {
    SCOPED_TRACE(std::to_string(shape.out) + "x" + std::to_string(shape.in));
    auto w = randomFloats(shape.out * shape.in, -1, 1, 41);
    auto x = randomFloats(shape.in, -1, 1, 42);
    for (int64_t i = 0; i < shape.in; ++i)
      x[i] *= (i / 32 % 3 == 1) ? 1000.0f : 1.0f;
    std::fill(x.begin() + 64, x.begin() + 96, 0.0f);
    const size_t rowBytes = *gguf::ggmlRowBytes(gguf::GgmlType::Q8_0, shape.in);
    std::vector<uint8_t> q(rowBytes * shape.out), split(q.size());
    ASSERT_TRUE(quant::quantize(gguf::GgmlType::Q8_0, w.data(), q.data(), w.size()).ok());
    ASSERT_TRUE(quant::splitQ8_0Rows(q.data(), split.data(), shape.out, shape.in).ok());
    const std::vector<double> expected =
        dequantizedProduct(gguf::GgmlType::Q8_0, q, x, shape.out, shape.in);
    DevicePointer dw = upload(split.data(), split.size()), dx = upload(x.data(), x.size() * 4);
    DevicePointer dy = allocate(shape.out * 4);
    DevicePointer planes = allocate(size_t(planesBytes(shape.in))),
                  scales = allocate(size_t(planeScalesBytes(shape.in)));
    auto quantizeSpec = quantizePlanesSpec(shape.in);
    LoadedKernel quantize = load(quantizeSpec);
    ASSERT_NE(quantize.function, nullptr);
    run(quantize, {quantizePlanesGridBlocks(shape.in), 1, 1, quantizeSpec->blockThreads, 1, 1, 0},
        {&dx, &planes, &scales});
    // The planes give x back to within 2e-7 of each block's largest value.
    std::vector<int8_t> q123(size_t(planesBytes(shape.in)));
    ASSERT_TRUE(device->copyToHost(q123.data(), planes, q123.size()).ok());
    const std::vector<float> d = download(scales, size_t(shape.in / 32));
    for (int64_t b = 0; b < shape.in / 32; ++b) {
      float largest = 0;
      for (int j = 0; j < 32; ++j)
        largest = std::max(largest, std::fabs(x[size_t(b * 32 + j)]));
      ASSERT_FLOAT_EQ(d[size_t(b)], largest / 127.0f) << "block " << b;
      for (int j = 0; j < 32; ++j) {
        const size_t i = size_t(b * 32 + j), n = size_t(shape.in);
        const double value = double(d[size_t(b)]) *
                             (q123[i] + q123[n + i] / 254.0 + q123[2 * n + i] / (254.0 * 254.0));
        ASSERT_LE(std::fabs(value - x[i]), 2e-7 * largest) << "value " << i;
      }
    }
    auto planesSpec = gemvQ8_0PlanesSpec(shape.out, shape.in);
    LoadedKernel gemv = load(planesSpec);
    ASSERT_NE(gemv.function, nullptr);
    std::vector<float> poison(size_t(shape.out), std::nanf(""));
    ASSERT_TRUE(device->copyToDevice(dy, poison.data(), poison.size() * 4).ok());
    run(gemv,
        {gemvQ8_0PlanesGridBlocks(shape.out, shape.in), 1, 1, planesSpec->blockThreads, 1, 1, 0},
        {&dw, &planes, &scales, &dy});
    const double planesError = relativeL2(download(dy, shape.out), expected);
    EXPECT_LE(planesError, 1e-6);
    // The f32 GEMVs over the same rows: decode, and the prefill tiles on 11 tokens.
    auto decodeSpec =
        gemvSpec(gguf::GgmlType::Q8_0, shape.out, shape.in, 1, GemvVariant::SplitRows);
    LoadedKernel decode = load(decodeSpec);
    ASSERT_NE(decode.function, nullptr);
    GemvLayout layout{int(shape.in), int(shape.out), 0, 0};
    run(decode,
        {gemvGridBlocks(gguf::GgmlType::Q8_0, shape.out, shape.in), 1, 1, decodeSpec->blockThreads,
         1, 1, 0},
        {&dw, &dx, &dy, &layout});
    const double decodeError = relativeL2(download(dy, shape.out), expected);
    EXPECT_LE(decodeError, 1e-6);
    expectTiledGemvMatches(*this,
                           gemvSpec(gguf::GgmlType::Q8_0, shape.out, shape.in,
                                    kGemvPrefillTokenTile, GemvVariant::SplitRows),
                           gguf::GgmlType::Q8_0, shape.out, shape.in, dw, x, expected, 1e-6);
    std::printf("[ gpu      ] split-row q8_0 %lldx%lld: relative L2 %.2e (planes), %.2e (f32)\n",
                (long long)shape.out, (long long)shape.in, planesError, decodeError);
  }
  EXPECT_FALSE(gemvQ8_0PlanesSpec(64, 160).ok()) << "rows of five blocks are not split";
}

// K-quant and float GEMVs (f32: the router; f16/bf16: unquantized
// projections), one token and the prefill tiles.
TEST_P(GpuKernels, GemvKQuantAndFloatMatchTheCpuReference) {
  struct Shape {
    int64_t out, in;
  } shapes[] = {{1001, 7168}, {576, 2048}, {33, 256}, {3000, 1024}, {7, 1100}};
  for (gguf::GgmlType type : {gguf::GgmlType::Q4_K, gguf::GgmlType::Q5_K, gguf::GgmlType::Q6_K,
                              gguf::GgmlType::F32, gguf::GgmlType::F16, gguf::GgmlType::BF16})
    for (const auto &shape : shapes) {
      if (shape.in % gguf::ggmlTypeTraits(type).blockSize != 0)
        continue; // rows of whole blocks
      const std::string name(gguf::ggmlTypeName(type));
      SCOPED_TRACE(name + " " + std::to_string(shape.out) + "x" + std::to_string(shape.in));
      auto w = randomFloats(shape.out * shape.in, -1, 1, 6);
      auto x = randomFloats(shape.in, -0.5, 1.5, 7); // a mean, so the minimums matter
      const size_t rowBytes = *gguf::ggmlRowBytes(type, shape.in);
      std::vector<uint8_t> q(rowBytes * shape.out);
      ASSERT_TRUE(quant::quantize(type, w.data(), q.data(), w.size()).ok());
      const std::vector<double> expected = dequantizedProduct(type, q, x, shape.out, shape.in);
      auto spec = gemvSpec(type, shape.out, shape.in);
      LoadedKernel kernel = load(spec);
      ASSERT_NE(kernel.function, nullptr);
      DevicePointer dw = upload(q.data(), q.size()), dx = upload(x.data(), x.size() * 4);
      DevicePointer dy = allocate(shape.out * 4);
      const unsigned blocks = gemvGridBlocks(type, shape.out, shape.in);
      GemvLayout layout{int(shape.in), int(shape.out), 0, 0};
      run(kernel, {blocks, 1, 1, spec->blockThreads, 1, 1, 0}, {&dw, &dx, &dy, &layout});
      const double error = relativeL2(download(dy, shape.out), expected);
      EXPECT_LE(error, 1e-4);
      std::printf("[ gpu      ] gemv_%s %lldx%lld: relative L2 %.2e\n", name.c_str(),
                  (long long)shape.out, (long long)shape.in, error);
      // The prefill variant (weights decoded once per tile) on 11 tokens: the
      // same x for each, so each token's row is the decode result.
      expectTiledGemvMatches(*this, gemvSpec(type, shape.out, shape.in, kGemvPrefillTokenTile),
                             type, shape.out, shape.in, dw, x, expected, 1e-4);
    }
}

// Prefill's grouped expert GEMVs: tiles of the assignments of one expert
// (groupAssignments) against each assignment's product in double; rows of
// assignments without an expert (-1) are left as they were.
TEST_P(GpuKernels, GroupedExpertGemvMatchesEachAssignment) {
  const int64_t experts = 5, out = 96, in = 512, tokens = 23, topK = 3;
  const int64_t assignments = tokens * topK;
  for (gguf::GgmlType type : {gguf::GgmlType::Q4_K, gguf::GgmlType::Q5_K, gguf::GgmlType::Q6_K,
                              gguf::GgmlType::Q8_0, gguf::GgmlType::BF16}) {
    const std::string name(gguf::ggmlTypeName(type));
    SCOPED_TRACE(name);
    auto w = randomFloats(experts * out * in, -1, 1, 21);
    auto x = randomFloats(tokens * in, -0.5, 1.5, 22);
    const size_t rowBytes = *gguf::ggmlRowBytes(type, in);
    std::vector<uint8_t> q(rowBytes * experts * out);
    ASSERT_TRUE(quant::quantize(type, w.data(), q.data(), w.size()).ok());
    std::vector<float> dequantized(w.size());
    ASSERT_TRUE(quant::dequantize(type, q.data(), dequantized.data(), w.size()).ok());
    // Expert 4 is chosen by no one; every seventh choice by none (-1).
    std::vector<int32_t> matrixOf(assignments);
    for (int64_t a = 0; a < assignments; ++a)
      matrixOf[a] = a % 7 == 3 ? -1 : int32_t((a * 5 + a / topK) % 4);
    std::vector<int32_t> tiles(size_t(assignments * (1 + kGemvPrefillTokenTile)));
    const int64_t tileCount = groupAssignments(matrixOf.data(), assignments, tiles.data());

    auto spec = gemvSpec(type, out, in, kGemvPrefillTokenTile, GemvVariant::Grouped);
    LoadedKernel kernel = load(spec);
    ASSERT_NE(kernel.function, nullptr);
    DevicePointer dw = upload(q.data(), q.size()), dx = upload(x.data(), x.size() * 4),
                  dTiles = upload(tiles.data(), tiles.size() * 4);
    const std::vector<float> sentinel(size_t(assignments * out), -7.0f);
    DevicePointer dy = upload(sentinel.data(), sentinel.size() * 4);
    GemvLayout layout{int(in), int(out), 0, 0, 0};
    layout.groups = dTiles;
    layout.assignmentsPerX = int(topK);
    run(kernel,
        {gemvGridBlocks(type, out, in, kGemvPrefillTokenTile), unsigned(tileCount), 1,
         spec->blockThreads, 1, 1, 0},
        {&dw, &dx, &dy, &layout});
    const std::vector<float> y = download(dy, size_t(assignments * out));
    std::vector<double> expected;
    std::vector<float> got;
    for (int64_t a = 0; a < assignments; ++a) {
      if (matrixOf[a] < 0) {
        for (int64_t o = 0; o < out; ++o)
          ASSERT_EQ(y[a * out + o], -7.0f) << "wrote the row of an assignment without an expert";
        continue;
      }
      for (int64_t o = 0; o < out; ++o) {
        double sum = 0;
        const float *row = dequantized.data() + (matrixOf[a] * out + o) * in;
        for (int64_t i = 0; i < in; ++i)
          sum += double(row[i]) * x[(a / topK) * in + i];
        expected.push_back(sum);
        got.push_back(y[a * out + o]);
      }
    }
    const double error = relativeL2(got, expected);
    EXPECT_LE(error, 1e-4);
    std::printf("[ gpu      ] grouped gemv_%s, %lld tiles for %lld assignments: relative L2 "
                "%.2e\n",
                name.c_str(), (long long)tileCount, (long long)assignments, error);
  }
}

// Decode's fused gate and up GEMV of routed experts: silu(gate x) * (up x)
// of each token's chosen experts (matrix ids, -1 skipped) against double;
// rows of 4096 split their columns between warps (gemvColumnSplit).
TEST_P(GpuKernels, FusedGateUpGemvMatchesSiluOfTheTwoProducts) {
  const int64_t experts = 4, ffn = 64, tokens = 3, topK = 2;
  // 256: q8_0 takes 4 rows a warp (gemvQ8_0RowsPerWarp); 4096: split columns.
  for (int64_t hidden : {256, 512, 4096})
    for (gguf::GgmlType type :
         {gguf::GgmlType::Q4_K, gguf::GgmlType::Q6_K, gguf::GgmlType::Q8_0, gguf::GgmlType::BF16}) {
      const std::string name(gguf::ggmlTypeName(type));
      SCOPED_TRACE(name + " " + std::to_string(hidden));
      if (hidden == 4096)
        EXPECT_GT(gemvColumnSplit(type, ffn, hidden), 1u);
      const size_t rowBytes = *gguf::ggmlRowBytes(type, hidden);
      std::vector<std::vector<uint8_t>> quantized(2);
      std::vector<std::vector<float>> dequantized(2);
      for (int m = 0; m < 2; ++m) { // gate, up
        auto w = randomFloats(experts * ffn * hidden, -1, 1, 31 + m);
        quantized[m].resize(rowBytes * experts * ffn);
        dequantized[m].resize(w.size());
        ASSERT_TRUE(quant::quantize(type, w.data(), quantized[m].data(), w.size()).ok());
        ASSERT_TRUE(
            quant::dequantize(type, quantized[m].data(), dequantized[m].data(), w.size()).ok());
      }
      auto x = randomFloats(tokens * hidden, -0.5, 1.5, 33);
      const std::vector<int32_t> ids = {2, 0, 1, -1, 3, 2}; // token 1's second slot: none
      auto spec = gemvSpec(type, ffn, hidden, 1, GemvVariant::GateUp);
      LoadedKernel kernel = load(spec);
      ASSERT_NE(kernel.function, nullptr);
      DevicePointer gate = upload(quantized[0].data(), quantized[0].size()),
                    up = upload(quantized[1].data(), quantized[1].size()),
                    dx = upload(x.data(), x.size() * 4), dIds = upload(ids.data(), ids.size() * 4);
      const std::vector<float> sentinel(size_t(tokens * topK * ffn), -7.0f);
      DevicePointer dy = upload(sentinel.data(), sentinel.size() * 4);
      GemvLayout layout{int(hidden), int(topK * ffn), 0, int(ffn), int(tokens), dIds};
      layout.upWeight = up;
      run(kernel,
          {gemvGridBlocks(type, ffn, hidden), unsigned(tokens), unsigned(topK), spec->blockThreads,
           1, 1, 0},
          {&gate, &dx, &dy, &layout});
      const std::vector<float> y = download(dy, sentinel.size());
      std::vector<double> expected;
      std::vector<float> got;
      for (int64_t a = 0; a < tokens * topK; ++a)
        for (int64_t o = 0; o < ffn; ++o) {
          if (ids[a] < 0) {
            ASSERT_EQ(y[a * ffn + o], -7.0f) << "wrote a slot without an expert";
            continue;
          }
          double products[2] = {0, 0};
          for (int m = 0; m < 2; ++m)
            for (int64_t i = 0; i < hidden; ++i)
              products[m] += double(dequantized[m][(ids[a] * ffn + o) * hidden + i]) *
                             x[(a / topK) * hidden + i];
          expected.push_back(products[0] / (1 + std::exp(-products[0])) * products[1]);
          got.push_back(y[a * ffn + o]);
        }
      const double error = relativeL2(got, expected);
      EXPECT_LE(error, 1e-4);
      std::printf("[ gpu      ] fused gate/up gemv_%s x%lld: relative L2 %.2e\n", name.c_str(),
                  (long long)hidden, error);
    }
}

// The expert choice against runtime/cpu/MoeRouting on random logits:
// V3's sigmoid with bias and groups, V2's softmax, V2-Lite's small softmax.
TEST_P(GpuKernels, MoeGateMatchesTheCpuRouting) {
  struct Case {
    const char *name;
    MoeGateShape shape;
  } cases[] = {{"v3", {256, 8, 8, 4, true, true, true, 2.5f}},
               {"v2", {160, 6, 1, 1, false, false, false, 16.0f}},
               {"v2-lite", {64, 6, 1, 1, false, false, false, 1.0f}},
               {"tiny", {16, 4, 4, 2, true, true, true, 2.5f}}};
  const int64_t tokens = 97;
  for (const Case &c : cases)
    for (bool ties : {false, true}) {
      SCOPED_TRACE(std::string(c.name) + (ties ? ", ties" : ""));
      const MoeGateShape &g = c.shape;
      auto logits = randomFloats(tokens * g.experts, -4, 4, 11);
      auto bias = randomFloats(g.experts, -0.5, 0.5, 12);
      // Whole logits and biases of quarters: many experts and groups score
      // alike, so the tie rules (the lower index wins, in the groups too) decide.
      if (ties) {
        for (float &v : logits)
          v = std::round(v);
        for (float &v : bias)
          v = std::round(4 * v) / 4;
      }
      cpu::RoutingParams p;
      p.experts = g.experts;
      p.topK = g.topK;
      p.groups = g.groups;
      p.groupsUsed = g.groupsUsed;
      p.scoring = g.sigmoid ? cpu::GateScoring::Sigmoid : cpu::GateScoring::Softmax;
      p.normalize = g.normalize;
      p.scale = g.scale;
      std::vector<int32_t> expectedIds(tokens * g.topK);
      std::vector<float> expectedWeights(tokens * g.topK), scratch(2 * g.experts + g.groups);
      for (int64_t t = 0; t < tokens; ++t)
        cpu::routeToken(p, logits.data() + t * g.experts, g.hasBias ? bias.data() : nullptr,
                        expectedIds.data() + t * g.topK, expectedWeights.data() + t * g.topK,
                        scratch.data());
      auto spec = moeGateSpec(g);
      LoadedKernel kernel = load(spec);
      ASSERT_NE(kernel.function, nullptr);
      DevicePointer dl = upload(logits.data(), logits.size() * 4),
                    db = upload(bias.data(), bias.size() * 4);
      DevicePointer di = allocate(tokens * g.topK * 4), dw = allocate(tokens * g.topK * 4);
      run(kernel, {unsigned(tokens), 1, 1, spec->blockThreads, 1, 1, 0}, {&dl, &db, &di, &dw});
      std::vector<int32_t> ids(tokens * g.topK);
      ASSERT_TRUE(device->copyToHost(ids.data(), di, ids.size() * 4).ok());
      std::vector<float> weights = download(dw, tokens * g.topK);
      EXPECT_EQ(ids, expectedIds);
      double worst = 0;
      for (size_t i = 0; i < weights.size(); ++i)
        worst = std::max(worst, std::fabs(double(weights[i]) - expectedWeights[i]) /
                                    std::max(1e-12, std::fabs(double(expectedWeights[i]))));
      EXPECT_LE(worst, 1e-5);
      std::printf("[ gpu      ] moe_gate %s%s: %lld tokens, ids %s, weights max relative error "
                  "%.1e\n",
                  c.name, ties ? " (ties)" : "", (long long)tokens,
                  ids == expectedIds ? "identical" : "DIFFER", worst);
    }
}

// RoPE against runtime/cpu/Rope (YaRN as DeepSeek-V3 configures it, and
// plain): queries with the rope part after the nope part, and single keys.
TEST_P(GpuKernels, RopeMatchesTheCpuReference) {
  cpu::RopeConfig yarn;
  yarn.dims = 64;
  yarn.theta = 10000.0;
  yarn.factor = 40.0;
  yarn.originalContext = 4096;
  yarn.yarnLogMultiplier = 0.1;
  cpu::RopeConfig plain = yarn;
  plain.factor = 1.0;
  struct Case {
    const char *name;
    cpu::RopeConfig config;
    RopeShape shape;
  } cases[] = {{"yarn query", yarn, {64, 16, 192, 128, 0}},
               {"yarn key", yarn, {64, 1, 64, 0, 0}},
               {"plain query", plain, {64, 4, 96, 32, 0}}};
  for (Case &c : cases) {
    SCOPED_TRACE(c.name);
    cpu::Rope rope(c.config);
    c.shape.cosSinScale = static_cast<float>(cpu::ropeCosSinScale(c.config));
    const int tokens = 37;
    std::vector<int> positions(tokens);
    for (int t = 0; t < tokens; ++t)
      positions[t] = t * 997 % 160000; // far beyond the original context too
    auto x = randomFloats(size_t(tokens) * c.shape.heads * c.shape.headStride, -2, 2, 13);
    std::vector<float> expected = x;
    std::vector<float> cosines(32), sines(32);
    for (int t = 0; t < tokens; ++t) {
      rope.angles(positions[t], cosines.data(), sines.data());
      for (int64_t h = 0; h < c.shape.heads; ++h)
        rope.rotate(expected.data() + (t * c.shape.heads + h) * c.shape.headStride +
                        c.shape.ropeOffset,
                    cosines.data(), sines.data());
    }
    auto spec = ropeSpec(c.shape);
    LoadedKernel kernel = load(spec);
    ASSERT_NE(kernel.function, nullptr);
    DevicePointer dx = upload(x.data(), x.size() * 4);
    DevicePointer dp = upload(positions.data(), positions.size() * 4);
    DevicePointer df =
        upload(rope.inverseFrequencies().data(), rope.inverseFrequencies().size() * 4);
    int count = tokens;
    const long long items = (long long)tokens * c.shape.heads * (c.shape.dims / 2);
    const unsigned blocks = unsigned((items + spec->blockThreads - 1) / spec->blockThreads);
    run(kernel, {blocks, 1, 1, spec->blockThreads, 1, 1, 0}, {&dx, &dp, &df, &count});
    std::vector<float> got = download(dx, x.size());
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::fabs(double(got[i]) - expected[i]));
    EXPECT_LE(worst, 1e-5);
    std::printf("[ gpu      ] rope %s: %d tokens x %lld heads, max abs error %.1e\n", c.name,
                tokens, (long long)c.shape.heads, worst);
  }
}

// The MLA attention cores against a double-precision computation of the
// same formula at DeepSeek-V3's widths: the prefill kernel for several
// tokens over their causal prefixes, and the split decode kernel with its
// combine for one token, at cache lengths within one chunk and across many.
namespace {
struct MlaCase {
  int64_t heads = 16, kvLora = 512, ropeDims = 64;
  float scale = 0.1352f;
  std::vector<float> qLatent, qRope, latent, ropeKey;
  // Random queries for `tokens` tokens and a cache for the last of them
  // (firstPositions + tokens - 1 positions), from seeds seed .. seed + 3.
  void randomize(int tokens, int firstPositions, uint32_t seed) {
    const size_t cached = size_t(firstPositions + tokens - 1);
    qLatent = randomFloats(size_t(tokens * heads * kvLora), -0.2f, 0.2f, seed);
    qRope = randomFloats(size_t(tokens * heads * ropeDims), -1, 1, seed + 1);
    latent = randomFloats(cached * size_t(kvLora), -1, 1, seed + 2);
    ropeKey = randomFloats(cached * size_t(ropeDims), -1, 1, seed + 3);
  }
  // context[t][h] for token t seeing firstPositions + t positions.
  std::vector<double> expected(int tokens, int firstPositions) const {
    std::vector<double> out(size_t(tokens * heads * kvLora), 0.0);
    for (int t = 0; t < tokens; ++t)
      for (int64_t h = 0; h < heads; ++h) {
        const int positions = firstPositions + t;
        const size_t slot = size_t(t * heads + h);
        std::vector<double> scores(positions);
        double maximum = -1e300;
        for (int p = 0; p < positions; ++p) {
          double dot = 0;
          for (int64_t i = 0; i < kvLora; ++i)
            dot += double(qLatent[slot * kvLora + i]) * latent[p * kvLora + i];
          for (int64_t i = 0; i < ropeDims; ++i)
            dot += double(qRope[slot * ropeDims + i]) * ropeKey[p * ropeDims + i];
          scores[p] = dot * scale;
          maximum = std::max(maximum, scores[p]);
        }
        double sum = 0;
        for (double &s : scores)
          sum += s = std::exp(s - maximum);
        for (int p = 0; p < positions; ++p)
          for (int64_t i = 0; i < kvLora; ++i)
            out[slot * kvLora + i] += scores[p] / sum * latent[p * kvLora + i];
      }
    return out;
  }
};
} // namespace

TEST_P(GpuKernels, MlaPrefillAndSplitDecodeMatchTheDoubleReference) {
  struct Shape {
    int tokens, firstPositions;
    int64_t heads = 16; // two a warp in the split decode core
  } shapes[] = {{1, 1},
                {5, 3},
                {7, 300},
                {1, 4096},
                {3, 1000},
                {1, 700},
                // One head a warp (an odd count), and blocks of a single warp.
                {1, 700, 3},
                {1, 300, 6}};
  for (const Shape &shape : shapes) {
    SCOPED_TRACE(std::to_string(shape.tokens) + " tokens from " +
                 std::to_string(shape.firstPositions) + ", " + std::to_string(shape.heads) +
                 " heads");
    MlaCase c;
    c.heads = shape.heads;
    const int cached = shape.firstPositions + shape.tokens - 1;
    c.randomize(shape.tokens, shape.firstPositions, 21);
    const std::vector<double> expected = c.expected(shape.tokens, shape.firstPositions);
    MlaBuffers m = uploadMla(c, shape.tokens);
    DevicePointer dq = m.qLatent, dr = m.qRope, dl = m.latent, dk = m.ropeKey, dc = m.context;
    const size_t contextFloats = m.contextFloats;
    int headStride = int(c.ropeDims), tokenStride = int(c.heads * c.ropeDims);

    auto prefill = mlaPrefillSpec(c.kvLora, c.ropeDims, c.scale, c.heads);
    LoadedKernel kernel = load(prefill);
    ASSERT_NE(kernel.function, nullptr);
    int first = shape.firstPositions;
    const unsigned groups = unsigned(c.heads / mlaHeadsPerBlock(c.heads));
    run(kernel, {groups, unsigned(shape.tokens), 1, prefill->blockThreads, 1, 1, 0},
        {&dq, &dr, &headStride, &tokenStride, &dl, &dk, &first, &dc});
    const double prefillError = relativeL2(download(dc, contextFloats), expected);
    EXPECT_LE(prefillError, 1e-5);

    double decodeError = 0;
    // The executor's pieces, and few pieces, so chunks span more than one
    // 32-position tile and the last one is partly filled.
    for (int pieces : {int(kMlaDecodePieces), 3}) {
      if (shape.tokens != 1)
        break;
      SCOPED_TRACE(std::to_string(pieces) + " pieces");
      auto split = mlaDecodeSplitSpec(c.kvLora, c.ropeDims, c.scale, c.heads, "mla_decode_split");
      auto combine = mlaDecodeSplitSpec(c.kvLora, c.ropeDims, c.scale, c.heads, "mla_combine");
      LoadedKernel splitKernel = load(split), combineKernel = load(combine);
      ASSERT_NE(splitKernel.function, nullptr);
      DevicePointer piecesBuffer = allocate(size_t(c.heads * pieces * (c.kvLora + 2)) * 4);
      // Pieces a previous step wrote must not leak into this one.
      const std::vector<float> stale(size_t(c.heads * pieces * (c.kvLora + 2)), 1e30f);
      ASSERT_TRUE(device->copyToDevice(piecesBuffer, stale.data(), stale.size() * 4).ok());
      int position = shape.firstPositions - 1;
      DevicePointer dp = upload(&position, 4);
      int mmaFrom = std::numeric_limits<int>::max(); // the split core for every position
      run(splitKernel, {groups, unsigned(pieces), 1, split->blockThreads, 1, 1, 0},
          {&dq, &dr, &headStride, &dl, &dk, &dp, &mmaFrom, &piecesBuffer});
      run(combineKernel, {unsigned(c.heads), 1, 1, combine->blockThreads, 1, 1, 0},
          {&piecesBuffer, &dp, &pieces, &dc});
      decodeError = relativeL2(download(dc, contextFloats), expected);
      EXPECT_LE(decodeError, 1e-5);
      // With mmaFrom at or below the token's positions the split core
      // leaves every chunk alone (run after the tensor-core one, it would
      // otherwise overwrite its pieces with f32 ones).
      std::string whyNone;
      if (queryGpus(whyNone)[0].computeMajor >= 8 && c.heads == 16) {
        for (int rowGroups : {1, 2, 4}) {
          auto mmaSpec = mlaDecodeMmaSpec(c.kvLora, c.ropeDims, c.scale, c.heads, rowGroups);
          ASSERT_TRUE(mmaSpec.ok()) << mmaSpec.message();
          LoadedKernel mma = load(mmaSpec);
          ASSERT_NE(mma.function, nullptr);
          const unsigned shared = mlaDecodeMmaSharedBytes(c.kvLora, c.ropeDims, rowGroups);
          ASSERT_TRUE(device->allowSharedBytes(mma, shared).ok());
          const unsigned headBlocks = unsigned((c.heads + 16 * rowGroups - 1) / (16 * rowGroups));
          for (int from : {std::numeric_limits<int>::max(), shape.firstPositions}) {
            // Below mmaFrom the tensor-core core must leave the split's pieces.
            run(splitKernel, {groups, unsigned(pieces), 1, split->blockThreads, 1, 1, 0},
                {&dq, &dr, &headStride, &dl, &dk, &dp, &from, &piecesBuffer});
            run(mma, {headBlocks, unsigned(pieces), 1, mmaSpec->blockThreads, 1, 1, shared},
                {&dq, &dr, &headStride, &dl, &dk, &dp, &from, &piecesBuffer});
            if (from != std::numeric_limits<int>::max()) // tensor cores first, then the split
              run(splitKernel, {groups, unsigned(pieces), 1, split->blockThreads, 1, 1, 0},
                  {&dq, &dr, &headStride, &dl, &dk, &dp, &from, &piecesBuffer});
            run(combineKernel, {unsigned(c.heads), 1, 1, combine->blockThreads, 1, 1, 0},
                {&piecesBuffer, &dp, &pieces, &dc});
            const double error = relativeL2(download(dc, contextFloats), expected);
            if (from == std::numeric_limits<int>::max()) {
              EXPECT_LE(error, 1e-5) << "the tensor-core core ran below mmaFrom";
            } else {
              EXPECT_LE(error, 5e-3);
              EXPECT_GT(error, 1e-6) << "the split core ran from mmaFrom on";
              std::printf("[ gpu      ] mla_decode_mma (%d heads a block, %d pieces) from %d "
                          "positions: relative L2 %.2e\n",
                          16 * rowGroups, pieces, shape.firstPositions, error);
            }
          }
        }
      }
    }
    std::printf("[ gpu      ] mla %d tokens from %d positions, %lld heads: prefill relative L2 "
                "%.2e, split decode %.2e\n",
                shape.tokens, shape.firstPositions, (long long)c.heads, prefillError, decodeError);
  }
}

// MLA prefill on tensor cores against the same double reference: bf16
// products (about 1e-3), V3's latent (512 + 64, 16 heads here) and the tiny
// model's (64 + 16, 4 heads, so one block spans 16 tokens), causal limits
// inside a block, 1 to 130 tokens after 0 to 700 cached positions.
TEST_P(GpuKernels, MlaPrefillOnTensorCoresMatchesTheDoubleReference) {
  std::string whyNone;
  if (queryGpus(whyNone)[0].computeMajor < 8)
    GTEST_SKIP() << "mma.sync on bf16 needs sm_80";
  struct Shape {
    int64_t heads, kvLora, ropeDims;
    int tokens, firstPositions;
  } shapes[] = {{16, 512, 64, 5, 3}, {16, 512, 64, 130, 700}, {4, 64, 16, 37, 1},
                {4, 64, 16, 1, 90}};
  for (const Shape &shape : shapes) {
    SCOPED_TRACE(std::to_string(shape.tokens) + " tokens from " +
                 std::to_string(shape.firstPositions) + ", " + std::to_string(shape.heads) +
                 " heads of " + std::to_string(shape.kvLora));
    MlaCase c;
    c.heads = shape.heads;
    c.kvLora = shape.kvLora;
    c.ropeDims = shape.ropeDims;
    c.randomize(shape.tokens, shape.firstPositions, 25);
    const std::vector<double> expected = c.expected(shape.tokens, shape.firstPositions);
    MlaBuffers m = uploadMla(c, shape.tokens);
    DevicePointer dq = m.qLatent, dr = m.qRope, dl = m.latent, dk = m.ropeKey, dc = m.context;
    const size_t contextFloats = m.contextFloats;
    int headStride = int(c.ropeDims), tokenStride = int(c.heads * c.ropeDims);
    auto spec = mlaPrefillMmaSpec(c.kvLora, c.ropeDims, c.scale, c.heads);
    ASSERT_TRUE(spec.ok()) << spec.message();
    LoadedKernel kernel = load(spec);
    ASSERT_NE(kernel.function, nullptr);
    const unsigned shared = mlaPrefillMmaSharedBytes(c.kvLora, c.ropeDims);
    ASSERT_TRUE(device->allowSharedBytes(kernel, shared).ok());
    int first = shape.firstPositions, tokens = shape.tokens;
    const unsigned blocks =
        unsigned((shape.tokens * c.heads + kMlaPrefillMmaRows - 1) / kMlaPrefillMmaRows);
    run(kernel, {blocks, 1, 1, spec->blockThreads, 1, 1, shared},
        {&dq, &dr, &headStride, &tokenStride, &dl, &dk, &first, &tokens, &dc});
    const double error = relativeL2(download(dc, contextFloats), expected);
    EXPECT_LE(error, 5e-3);
    EXPECT_GT(error, 1e-6); // bf16 rounded: the tensor cores ran
    std::printf("[ gpu      ] mla_prefill_mma %d tokens from %d positions (%lld heads of %lld + "
                "%lld): relative L2 %.2e\n",
                shape.tokens, shape.firstPositions, (long long)c.heads, (long long)c.kvLora,
                (long long)c.ropeDims, error);
  }
}

TEST_P(GpuKernels, ElementwiseAndArgmaxMatchTheCpu) {
  const int tokens = 5;
  const int64_t count = 2048;
  auto g = randomFloats(tokens * count, -8, 8, 31), u = randomFloats(tokens * count, -2, 2, 32);
  for (const char *entry : {"silu_mul", "add"}) {
    SCOPED_TRACE(entry);
    std::vector<double> expected(g.size());
    for (size_t i = 0; i < g.size(); ++i)
      expected[i] =
          std::string(entry) == "add" ? double(g[i]) + u[i] : double(cpu::silu(g[i])) * u[i];
    auto spec = elementwiseSpec(entry, count);
    LoadedKernel kernel = load(spec);
    ASSERT_NE(kernel.function, nullptr);
    DevicePointer dg = upload(g.data(), g.size() * 4), du = upload(u.data(), u.size() * 4);
    DevicePointer dout = allocate(g.size() * 4);
    int n = tokens;
    run(kernel, {7, 1, 1, spec->blockThreads, 1, 1, 0}, {&dg, &du, &dout, &n});
    const double error = relativeL2(download(dout, g.size()), expected);
    EXPECT_LE(error, 1e-6);
    std::printf("[ gpu      ] %s %d x %lld: relative L2 %.2e\n", entry, tokens, (long long)count,
                error);
  }
  // argmax: ties go to the lower index, as std::max_element.
  const int64_t vocab = 129280;
  auto logits = randomFloats(tokens * vocab, -10, 10, 33);
  logits[1 * vocab + 500] = logits[1 * vocab + 90000] = 50.0f; // a tie
  std::vector<int> expectedIds(tokens);
  for (int t = 0; t < tokens; ++t)
    expectedIds[t] =
        int(std::max_element(logits.begin() + t * vocab, logits.begin() + (t + 1) * vocab) -
            (logits.begin() + t * vocab));
  auto spec = argmaxSpec(vocab);
  LoadedKernel kernel = load(spec);
  ASSERT_NE(kernel.function, nullptr);
  DevicePointer dl = upload(logits.data(), logits.size() * 4), di = allocate(tokens * 4);
  run(kernel, {unsigned(tokens), 1, 1, spec->blockThreads, 1, 1, 0}, {&dl, &di});
  std::vector<int> ids(tokens);
  ASSERT_TRUE(device->copyToHost(ids.data(), di, tokens * 4).ok());
  EXPECT_EQ(ids, expectedIds);
  EXPECT_EQ(ids[1], 500);
  std::printf("[ gpu      ] argmax %d x %lld: ids %s\n", tokens, (long long)vocab,
              ids == expectedIds ? "identical" : "DIFFER");
}

// Sampling where the logits are: the kernel draws the token the host rule
// (exec::sampleToken) draws from the same logits and draw, across greedy,
// temperature, top-k and top-p settings; and repeated draws of one row
// follow the exact renormalized softmax.
TEST_P(GpuKernels, SampleDrawsWhatTheHostRuleDraws) {
  const int64_t vocab = 129280;
  const int rows = 48;
  auto logits = randomFloats(size_t(rows * vocab), -12, 12, 51);
  const exec::TokenSampling settings[] = {
      {0.0f, 0, 1.0f}, {0.7f, 0, 1.0f}, {1.0f, 50, 1.0f}, {0.8f, 0, 0.9f},
      {1.2f, 40, 0.8f}, {0.6f, 1, 1.0f}, {2.0f, 0, 0.5f}, {1.0f, 1000, 0.95f}};
  std::vector<exec::TokenSampling> draws(rows);
  std::vector<uint8_t> packed(size_t(rows) * kSampleParamsBytes);
  std::vector<int> expected(rows);
  for (int r = 0; r < rows; ++r) {
    draws[size_t(r)] = settings[r % 8];
    draws[size_t(r)].seed = 1234 + uint64_t(r / 8);
    draws[size_t(r)].draw = uint64_t(r);
    packSampleParams(draws[size_t(r)], packed.data() + size_t(r) * kSampleParamsBytes);
    expected[size_t(r)] = exec::sampleToken(logits.data() + size_t(r) * size_t(vocab), vocab,
                                            draws[size_t(r)]);
  }
  auto spec = sampleSpec(vocab);
  LoadedKernel kernel = load(spec);
  ASSERT_NE(kernel.function, nullptr);
  DevicePointer dl = upload(logits.data(), logits.size() * 4);
  DevicePointer dp = upload(packed.data(), packed.size()), di = allocate(size_t(rows) * 4);
  run(kernel, {unsigned(rows), 1, 1, spec->blockThreads, 1, 1, 0}, {&dl, &dp, &di});
  std::vector<int> ids(rows);
  ASSERT_TRUE(device->copyToHost(ids.data(), di, size_t(rows) * 4).ok());
  int same = 0;
  for (int r = 0; r < rows; ++r)
    same += ids[size_t(r)] == expected[size_t(r)];
  std::printf("[ gpu      ] sample %d x %lld: %d of %d draws as the host rule's\n", rows,
              (long long)vocab, same, rows);
  // expf/logf may differ from the host's in the last bit, which can only
  // move a draw between nearly tied candidates.
  EXPECT_GE(same, rows - 1);

  // One row drawn 8192 times: frequencies of the renormalized softmax.
  const int64_t small = 1000;
  std::vector<float> row(size_t(small), -20.0f);
  const float peaks[] = {3.0f, 2.6f, 2.5f, 1.0f, 0.2f, -1.0f};
  for (int i = 0; i < 6; ++i)
    row[size_t(100 * i + 7)] = peaks[i];
  const exec::TokenSampling setting{0.9f, 5, 0.9f, 77, 0};
  // Exact: top-5, then the smallest prefix reaching 0.9 of their mass.
  std::vector<double> weights;
  double total = 0;
  for (int i = 0; i < 5; ++i)
    total += weights.emplace_back(std::exp((peaks[i] - peaks[0]) / 0.9));
  std::vector<double> probability(6, 0.0);
  double mass = 0;
  for (int i = 0; i < 5 && mass < 0.9 * total; ++i)
    mass += probability[size_t(i)] = weights[size_t(i)];
  for (double &p : probability)
    p /= mass;
  const int repeats = 8192;
  std::vector<float> repeated;
  std::vector<uint8_t> repeatedParams(size_t(repeats) * kSampleParamsBytes);
  for (int i = 0; i < repeats; ++i) {
    repeated.insert(repeated.end(), row.begin(), row.end());
    exec::TokenSampling draw = setting;
    draw.draw = uint64_t(i);
    packSampleParams(draw, repeatedParams.data() + size_t(i) * kSampleParamsBytes);
  }
  auto smallSpec = sampleSpec(small);
  LoadedKernel smallKernel = load(smallSpec);
  ASSERT_NE(smallKernel.function, nullptr);
  DevicePointer rl = upload(repeated.data(), repeated.size() * 4);
  DevicePointer rp = upload(repeatedParams.data(), repeatedParams.size());
  DevicePointer ri = allocate(size_t(repeats) * 4);
  run(smallKernel, {unsigned(repeats), 1, 1, smallSpec->blockThreads, 1, 1, 0}, {&rl, &rp, &ri});
  std::vector<int> drawn(repeats);
  ASSERT_TRUE(device->copyToHost(drawn.data(), ri, size_t(repeats) * 4).ok());
  std::vector<int> counts(6, 0);
  for (int id : drawn) {
    ASSERT_EQ(id % 100, 7) << "token " << id << " is not a peak";
    ASSERT_LT(id / 100, 6);
    ++counts[size_t(id / 100)];
  }
  for (int i = 0; i < 6; ++i) // within 4 standard deviations
    EXPECT_NEAR(double(counts[size_t(i)]) / repeats, probability[size_t(i)], 0.022) << "peak " << i;
  std::printf("[ gpu      ] sample frequencies %.3f %.3f %.3f %.3f %.3f %.3f, exact %.3f %.3f "
              "%.3f %.3f %.3f %.3f\n",
              counts[0] / double(repeats), counts[1] / double(repeats),
              counts[2] / double(repeats), counts[3] / double(repeats),
              counts[4] / double(repeats), counts[5] / double(repeats), probability[0],
              probability[1], probability[2], probability[3], probability[4], probability[5]);
}

// The FP8 decode GEMV against e4m3 decoded on the CPU times the block scales.
TEST_P(GpuKernels, GemvFp8MatchesTheCpuReference) {
  struct Shape {
    int64_t out, in;
  } shapes[] = {{1001, 7168}, {576, 1536}, {130, 272}};
  std::mt19937 random(41);
  for (const auto &shape : shapes) {
    SCOPED_TRACE(std::to_string(shape.out) + "x" + std::to_string(shape.in));
    const std::vector<uint8_t> w = randomE4m3(size_t(shape.out * shape.in), random);
    const int64_t blockRows = (shape.out + 127) / 128, blockCols = (shape.in + 127) / 128;
    auto scales = randomFloats(blockRows * blockCols, 1e-4f, 4e-3f, 42);
    auto x = randomFloats(shape.in, -1, 1, 43);
    std::vector<double> expected(shape.out);
    for (int64_t o = 0; o < shape.out; ++o) {
      double sum = 0;
      for (int64_t i = 0; i < shape.in; ++i)
        sum += double(quant::fp8E4m3ToFloat(w[o * shape.in + i])) *
               scales[(o / 128) * blockCols + i / 128] * x[i];
      expected[o] = sum;
    }
    auto spec = gemvFp8Spec(shape.out, shape.in);
    LoadedKernel kernel = load(spec);
    ASSERT_NE(kernel.function, nullptr);
    DevicePointer dw = upload(w.data(), w.size()), ds = upload(scales.data(), scales.size() * 4);
    DevicePointer dx = upload(x.data(), x.size() * 4), dy = allocate(shape.out * 4);
    const unsigned blocks = unsigned((shape.out + kGemvRowsPerBlock - 1) / kGemvRowsPerBlock);
    GemvLayout layout{int(shape.in), int(shape.out), 0, 0, 1};
    run(kernel, {blocks, 1, 1, spec->blockThreads, 1, 1, 0}, {&dw, &ds, &dx, &dy, &layout});
    const double error = relativeL2(download(dy, shape.out), expected);
    EXPECT_LE(error, 1e-5);
    std::printf("[ gpu      ] gemv_fp8 %lldx%lld: relative L2 %.2e\n", (long long)shape.out,
                (long long)shape.in, error);
  }

  // Routed experts: 3 stacked 256x512 matrices, 2 tokens x 2 slots picking
  // them by id (slot id -1: nothing written), as decode runs them.
  const int64_t out = 256, in = 512, matrices = 3, slots = 2, tokens = 2;
  const std::vector<uint8_t> w = randomE4m3(size_t(matrices * out * in), random);
  auto scales = randomFloats(size_t(matrices * (out / 128) * (in / 128)), 1e-4f, 4e-3f, 44);
  auto x = randomFloats(size_t(tokens * in), -1, 1, 45);
  const std::vector<int32_t> ids = {2, 0, -1, 1};
  std::vector<double> expected(size_t(tokens * slots * out), 7.0); // 7: left alone
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t slot = 0; slot < slots; ++slot) {
      const int32_t m = ids[size_t(t * slots + slot)];
      if (m < 0)
        continue;
      for (int64_t o = 0; o < out; ++o) {
        double sum = 0;
        for (int64_t i = 0; i < in; ++i)
          sum += double(quant::fp8E4m3ToFloat(w[size_t((m * out + o) * in + i)])) *
                 scales[size_t((m * out + o) / 128 * (in / 128) + i / 128)] * x[size_t(t * in + i)];
        expected[size_t((t * slots + slot) * out + o)] = sum;
      }
    }
  auto spec = gemvFp8Spec(out, in);
  LoadedKernel kernel = load(spec);
  ASSERT_NE(kernel.function, nullptr);
  const std::vector<float> sevens(expected.size(), 7.0f);
  DevicePointer dw = upload(w.data(), w.size()), ds = upload(scales.data(), scales.size() * 4),
                dx = upload(x.data(), x.size() * 4), di = upload(ids.data(), ids.size() * 4),
                dy = upload(sevens.data(), sevens.size() * 4);
  GemvLayout layout{int(in), int(slots * out), 0, int(out), int(tokens), di};
  run(kernel,
      {unsigned((out + kGemvRowsPerBlock - 1) / kGemvRowsPerBlock), unsigned(tokens),
       unsigned(slots), spec->blockThreads, 1, 1, 0},
      {&dw, &ds, &dx, &dy, &layout});
  const double error = relativeL2(download(dy, expected.size()), expected);
  EXPECT_LE(error, 1e-5);
  std::printf("[ gpu      ] gemv_fp8 by matrix id (3 stacked 256x512, 2 tokens x 2 slots): "
              "relative L2 %.2e\n",
              error);
}

// The FP8 prefill path on sm_90a: activations quantized per token and 128
// columns (scales max|x| / 448, values within e4m3's rounding), then the
// wgmma GEMM against a double product of the same e4m3 values and scales;
// a rerun on the scratch's quantization of x (runFp8Gemm's xUnchanged);
// one and several K splits, odd and even slice counts, tiles of 64, 128,
// 144 (straddling B's scale blocks at each of the 8 offsets 1152 rows
// give) and 256 columns, partial row tiles, strided x and y (y's rows a
// multiple of 4 floats apart: stores staged through shared memory, 16 bytes
// a thread; or not).
TEST_P(GpuKernels, Fp8GemmMatchesTheDoubleReference) {
  if (arch != "sm_90a")
    GTEST_SKIP() << "the FP8 GEMM runs on sm_90a (wgmma), not " << arch;
  struct Case {
    int64_t rows, out, in;
    unsigned splits, blockN;
    bool promoteBehind = false;
    int64_t yPad = 64; // y's row stride past its columns (not a multiple of 4: unstaged stores)
  } cases[] = {{200, 576, 1536, 1, 64},
               {200, 576, 1536, 5, 64},
               {1, 1024, 512, 1, 128},
               {1100, 256, 1152, 1, 128},
               {129, 2048, 2048, 3, 128},
               {129, 2048, 2048, 1, 128},
               {300, 768, 1024, 1, 256},
               {129, 2048, 2048, 2, 256},
               {200, 576, 1536, 5, 64, true},
               {1100, 256, 1152, 1, 128, true},
               {129, 2048, 2048, 3, 128, true},
               {5, 256, 128, 1, 128, true},
               {130, 512, 256, 1, 128, true},
               {300, 576, 1536, 1, 144},
               {129, 1152, 512, 3, 144},
               {300, 768, 1024, 1, 256, false, 2},
               {129, 2048, 2048, 1, 128, true, 6}};
  std::mt19937 random(51);
  for (const Case &c : cases) {
    SCOPED_TRACE(std::to_string(c.rows) + " x " + std::to_string(c.out) + "x" +
                 std::to_string(c.in) + ", " + std::to_string(c.splits) + " splits, " +
                 std::to_string(c.blockN) + " columns" +
                 (c.promoteBehind ? ", promoted behind" : "") + ", y stride " +
                 std::to_string(c.out + c.yPad));
    const int64_t xStride = c.in + 128, yStride = c.out + c.yPad, slices = c.in / 128;
    const std::vector<uint8_t> w = randomE4m3(size_t(c.out * c.in), random);
    const int64_t blockRows = (c.out + 127) / 128;
    auto wScales = randomFloats(size_t(blockRows * slices), 1e-4f, 4e-3f, 52);
    auto x = randomFloats(size_t(c.rows * xStride), -2, 2, 53);
    // A slice of zeros and one of tiny values: scale 1, and subnormal codes.
    for (int64_t i = 0; i < 128; ++i) {
      x[size_t(i)] = 0.0f;
      if (c.rows > 1)
        x[size_t(xStride + 128 + i)] *= 1e-6f;
    }
    StatusOr<Fp8GemmConfig> config = fp8GemmConfig(c.out, c.blockN);
    ASSERT_TRUE(config.ok()) << config.message();
    config->promoteBehind = c.promoteBehind;
    LoadedKernel quantize = load(fp8QuantizeSpec(c.in)),
                 gemm = load(gemmFp8Spec(c.out, c.in, *config)),
                 sum = load(gemmFp8SumSpec(c.out, c.in));
    ASSERT_NE(gemm.function, nullptr);
    ASSERT_TRUE(allowFp8GemmSharedBytes(*device, gemm, *config).ok());
    DevicePointer dw = upload(w.data(), w.size()),
                  dws = upload(wScales.data(), wScales.size() * 4),
                  dx = upload(x.data(), x.size() * 4), dy = allocate(size_t(c.rows * yStride) * 4);
    Fp8GemmScratch scratch;
    scratch.rows = c.rows + 3; // a scale stride other than the row count (padded to 4)
    scratch.in = c.in;
    scratch.activations = allocate(fp8GemmActivationBytes(scratch.rows, c.in));
    scratch.scales = allocate(fp8GemmScaleBytes(scratch.rows, c.in));
    scratch.partialFloats = size_t(c.splits * c.rows * c.out);
    scratch.partials = allocate(std::max<size_t>(scratch.partialFloats, 1) * 4);
    auto weight = prepareFp8GemmWeight(*device, dw, dws, c.out, c.in, *config);
    ASSERT_TRUE(weight.ok()) << weight.message();
    Status s = runFp8Gemm(*device, {&quantize, &gemm, &sum, *config}, *weight, dx, xStride,
                          c.rows, dy, yStride, scratch, c.splits);
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_TRUE(device->synchronize().ok());

    std::vector<uint8_t> q(size_t(c.rows * c.in));
    ASSERT_TRUE(device->copyToHost(q.data(), scratch.activations, q.size()).ok());
    const int64_t scaleStride = fp8GemmScaleStride(scratch.rows);
    std::vector<float> qScales = download(scratch.scales, size_t(slices * scaleStride));
    for (int64_t r = 0; r < c.rows; ++r)
      for (int64_t slice = 0; slice < slices; ++slice) {
        float largest = 0;
        for (int64_t i = 0; i < 128; ++i)
          largest = std::max(largest, std::fabs(x[size_t(r * xStride + slice * 128 + i)]));
        const float scale = qScales[size_t(slice * scaleStride + r)];
        ASSERT_EQ(scale, largest > 0 ? largest / 448.0f : 1.0f) << "row " << r << " slice " << slice;
        for (int64_t i = 0; i < 128; ++i) {
          const float value = x[size_t(r * xStride + slice * 128 + i)];
          const float decoded = quant::fp8E4m3ToFloat(q[size_t(r * c.in + slice * 128 + i)]) * scale;
          // Half a step of e4m3: 2^-4 relative, or 2^-10 x scale below the normals.
          ASSERT_LE(std::fabs(decoded - value),
                    std::max(std::fabs(value) / 16, scale * 0.0009765625f) * 1.0001f)
              << "row " << r << " column " << slice * 128 + i;
        }
      }
    const std::vector<double> expected = blockScaledProduct(
        c.rows, c.out, c.in,
        [&](int64_t r, int64_t i) { return quant::fp8E4m3ToFloat(q[size_t(r * c.in + i)]); },
        [&](int64_t r, int64_t slice) { return qScales[size_t(slice * scaleStride + r)]; }, w,
        wScales);
    const std::vector<float> packed =
        packRows(download(dy, size_t(c.rows * yStride)), c.rows, c.out, yStride);
    // FP8 wgmma adds its products with fewer mantissa bits than f32 (which
    // is why the GEMM promotes every 128 columns): 2.3e-4 on the H200.
    const double error = relativeL2(packed, expected);
    EXPECT_LE(error, 5e-4);
    // Again: the split sum adds in split order, so the same bits.
    ASSERT_TRUE(runFp8Gemm(*device, {&quantize, &gemm, &sum, *config}, *weight, dx, xStride, c.rows,
                           dy, yStride, scratch, c.splits)
                    .ok());
    EXPECT_EQ(packRows(download(dy, size_t(c.rows * yStride)), c.rows, c.out, yStride), packed);
    // With x "unchanged" the scratch's quantization is used again: x zeroed
    // behind the GEMM's back still gives the same bits; without the promise
    // x is quantized anew (all zeros).
    const std::vector<float> zeros(x.size(), 0.0f);
    ASSERT_TRUE(device->copyToDevice(dx, zeros.data(), zeros.size() * 4).ok());
    ASSERT_TRUE(runFp8Gemm(*device, {&quantize, &gemm, &sum, *config}, *weight, dx, xStride, c.rows,
                           dy, yStride, scratch, c.splits, true)
                    .ok());
    EXPECT_EQ(packRows(download(dy, size_t(c.rows * yStride)), c.rows, c.out, yStride), packed);
    ASSERT_TRUE(runFp8Gemm(*device, {&quantize, &gemm, &sum, *config}, *weight, dx, xStride, c.rows,
                           dy, yStride, scratch, c.splits)
                    .ok());
    const std::vector<float> requantized =
        packRows(download(dy, size_t(c.rows * yStride)), c.rows, c.out, yStride);
    EXPECT_EQ(requantized, std::vector<float>(requantized.size(), 0.0f));
    std::printf("[ gpu      ] gemm_fp8 %lld tokens x %lldx%lld, %u splits, %u columns%s, y "
                "stride %lld: relative L2 %.2e\n",
                (long long)c.rows, (long long)c.out, (long long)c.in, c.splits, c.blockN,
                c.promoteBehind ? ", promoted behind" : "", (long long)yStride, error);
    // The GEMM stores pairs of floats: an odd row stride is refused.
    if (c.splits == 1) {
      Status odd = runFp8Gemm(*device, {&quantize, &gemm, &sum, *config}, *weight, dx, xStride,
                              c.rows, dy, yStride - 1, scratch, 1);
      EXPECT_FALSE(odd.ok());
      EXPECT_NE(odd.message().find("even"), std::string::npos) << odd.message();
    }
  }
}

// The routed experts' grouped FP8 GEMM: assignments (token, expert) grouped
// by expert, their rows gathered as they are quantized, each group against
// its expert's weight; against a double product per group of the same e4m3
// values and scales. Groups of 0 to 300 rows, tiles that end inside a group
// and at its end, all three tile widths.
TEST_P(GpuKernels, Fp8GroupedGemmMatchesTheDoubleReference) {
  if (arch != "sm_90a")
    GTEST_SKIP() << "the FP8 GEMM runs on sm_90a (wgmma), not " << arch;
  struct Case {
    int64_t experts, tokens, topK, out, in;
    unsigned blockN;
    bool promoteBehind = false;
  } cases[] = {{6, 150, 2, 256, 384, 128},
               {4, 300, 3, 512, 256, 256},
               {9, 40, 2, 128, 1024, 64},
               {6, 150, 2, 256, 384, 128, true}};
  std::mt19937 random(71);
  for (const Case &c : cases) {
    SCOPED_TRACE(std::to_string(c.experts) + " experts of " + std::to_string(c.out) + "x" +
                 std::to_string(c.in) + ", " + std::to_string(c.tokens) + " tokens x top-" +
                 std::to_string(c.topK) + ", " + std::to_string(c.blockN) + " columns");
    const int64_t xStride = c.in + 128, yStride = c.out + 64, slices = c.in / 128;
    // Distinct experts per token; expert 1 is never chosen (an empty group).
    std::vector<std::vector<int32_t>> byExpert(size_t(c.experts));
    for (int64_t t = 0; t < c.tokens; ++t) {
      std::vector<int32_t> choices;
      while (int64_t(choices.size()) < c.topK) {
        const int32_t e = int32_t(random() % uint32_t(c.experts));
        if (e != 1 && std::find(choices.begin(), choices.end(), e) == choices.end())
          choices.push_back(e);
      }
      for (int32_t e : choices)
        byExpert[size_t(e)].push_back(int32_t(t));
    }
    std::vector<int32_t> rowIndex, expertOfRow;
    std::vector<int64_t> sizes;
    for (int64_t e = 0; e < c.experts; ++e) {
      sizes.push_back(int64_t(byExpert[size_t(e)].size()));
      for (int32_t t : byExpert[size_t(e)]) {
        rowIndex.push_back(t);
        expertOfRow.push_back(int32_t(e));
      }
    }
    const int64_t rows = int64_t(rowIndex.size());
    const std::vector<int32_t> tiles = expertRowTiles(sizes, kFp8GemmTileRows);
    const std::vector<uint8_t> w = randomE4m3(size_t(c.experts * c.out * c.in), random);
    auto wScales = randomFloats(size_t(c.experts * (c.out / 128) * slices), 1e-4f, 4e-3f, 72);
    auto x = randomFloats(size_t(c.tokens * xStride), -2, 2, 73);
    StatusOr<Fp8GemmConfig> config = fp8GemmConfig(c.out, c.blockN);
    ASSERT_TRUE(config.ok()) << config.message();
    config->promoteBehind = c.promoteBehind;
    LoadedKernel quantize = load(fp8QuantizeSpec(c.in)),
                 gemm = load(gemmFp8GroupedSpec(c.out, c.in, *config));
    ASSERT_NE(gemm.function, nullptr);
    ASSERT_TRUE(allowFp8GemmSharedBytes(*device, gemm, *config).ok());
    DevicePointer dw = upload(w.data(), w.size()),
                  dws = upload(wScales.data(), wScales.size() * 4),
                  dx = upload(x.data(), x.size() * 4),
                  dIndex = upload(rowIndex.data(), rowIndex.size() * 4),
                  dTiles = upload(tiles.data(), tiles.size() * 4),
                  dy = allocate(size_t(rows * yStride) * 4);
    Fp8GemmScratch scratch;
    scratch.rows = rows + 5;
    scratch.in = c.in;
    scratch.activations = allocate(fp8GemmActivationBytes(scratch.rows, c.in));
    scratch.scales = allocate(fp8GemmScaleBytes(scratch.rows, c.in));
    auto weight = prepareFp8GemmWeight(*device, dw, dws, c.experts * c.out, c.in, *config);
    ASSERT_TRUE(weight.ok()) << weight.message();
    Status s = runFp8GroupedGemm(*device, {&quantize, &gemm, nullptr, *config}, *weight, c.out, dx,
                                 xStride, dIndex, rows, dTiles, int64_t(tiles.size() / 3), dy,
                                 yStride, scratch);
    ASSERT_TRUE(s.ok()) << s.message();
    ASSERT_TRUE(device->synchronize().ok());

    std::vector<uint8_t> q(size_t(rows * c.in));
    ASSERT_TRUE(device->copyToHost(q.data(), scratch.activations, q.size()).ok());
    const int64_t scaleStride = fp8GemmScaleStride(scratch.rows);
    std::vector<float> qScales = download(scratch.scales, size_t(slices * scaleStride));
    // The gather: row j quantizes x row rowIndex[j].
    for (int64_t j = 0; j < rows; ++j)
      for (int64_t slice = 0; slice < slices; ++slice) {
        float largest = 0;
        for (int64_t i = 0; i < 128; ++i)
          largest = std::max(
              largest, std::fabs(x[size_t(rowIndex[size_t(j)] * xStride + slice * 128 + i)]));
        ASSERT_EQ(qScales[size_t(slice * scaleStride + j)], largest / 448.0f) << "row " << j;
      }
    std::vector<double> expected(size_t(rows * c.out));
    int64_t first = 0;
    for (int64_t e = 0; e < c.experts; ++e) {
      const int64_t n = sizes[size_t(e)];
      if (n == 0)
        continue;
      const std::vector<uint8_t> we(w.begin() + e * c.out * c.in,
                                    w.begin() + (e + 1) * c.out * c.in);
      const std::vector<float> se(wScales.begin() + e * (c.out / 128) * slices,
                                  wScales.begin() + (e + 1) * (c.out / 128) * slices);
      const std::vector<double> part = blockScaledProduct(
          n, c.out, c.in,
          [&](int64_t r, int64_t i) {
            return quant::fp8E4m3ToFloat(q[size_t((first + r) * c.in + i)]);
          },
          [&](int64_t r, int64_t slice) {
            return qScales[size_t(slice * scaleStride + first + r)];
          },
          we, se);
      std::copy(part.begin(), part.end(), expected.begin() + first * c.out);
      first += n;
    }
    const std::vector<float> packed =
        packRows(download(dy, size_t(rows * yStride)), rows, c.out, yStride);
    const double error = relativeL2(packed, expected);
    EXPECT_LE(error, 5e-4);
    std::printf("[ gpu      ] gemm_fp8 grouped: %lld experts of %lldx%lld, %lld rows in %zu "
                "tiles, %u columns%s: relative L2 %.2e\n",
                (long long)c.experts, (long long)c.out, (long long)c.in, (long long)rows,
                tiles.size() / 3, c.blockN, c.promoteBehind ? ", promoted behind" : "", error);
  }
}

// The FP8 prefill GEMM of GPUs without FP8 tensor cores (sm_80 to sm_89),
// run here as compute_80 PTX that the driver compiles for this GPU: against
// a double product of the same e4m3 weights and block scales with the
// activations rounded to bf16 (the products are exact, the sums f32).
TEST_P(GpuKernels, Fp8Bf16GemmMatchesTheDoubleReference) {
  if (!GetParam())
    GTEST_SKIP() << "one run: the kernel is compiled as compute_80 PTX either way";
  std::string whyNone;
  if (queryGpus(whyNone)[0].computeMajor < 8)
    GTEST_SKIP() << "mma.sync on bf16 needs sm_80";
  struct Case {
    int64_t rows, out, in;
  } cases[] = {{100, 576, 1536}, {1, 128, 256}, {130, 1024, 2048}};
  std::mt19937 random(61);
  for (const Case &c : cases) {
    SCOPED_TRACE(std::to_string(c.rows) + " x " + std::to_string(c.out) + "x" +
                 std::to_string(c.in));
    const int64_t xStride = c.in + 64, yStride = c.out + 32, slices = c.in / 128;
    const std::vector<uint8_t> w = randomE4m3(size_t(c.out * c.in), random);
    auto scales = randomFloats(size_t((c.out + 127) / 128 * slices), 1e-4f, 4e-3f, 62);
    auto x = randomFloats(size_t(c.rows * xStride), -2, 2, 63);
    StatusOr<KernelSpec> spec = gemmFp8Bf16Spec(c.out, c.in);
    ASSERT_TRUE(spec.ok()) << spec.message();
    auto compiled = cache->getOrCompile(*spec, "compute_80");
    ASSERT_TRUE(compiled.ok()) << compiled.message();
    auto kernel = device->load(*compiled);
    ASSERT_TRUE(kernel.ok()) << kernel.message();
    DevicePointer dw = upload(w.data(), w.size()), ds = upload(scales.data(), scales.size() * 4),
                  dx = upload(x.data(), x.size() * 4), dy = allocate(size_t(c.rows * yStride) * 4);
    int xs = int(xStride), ys = int(yStride), rows = int(c.rows);
    run(*kernel, {unsigned(c.out / 64), unsigned((c.rows + 63) / 64), 1, 128, 1, 1, 0},
        {&dw, &ds, &dx, &xs, &dy, &ys, &rows});
    const std::vector<double> expected = blockScaledProduct(
        c.rows, c.out, c.in,
        [&](int64_t r, int64_t i) { return bf16Rounded(x[size_t(r * xStride + i)]); },
        [](int64_t, int64_t) { return 1.0; }, w, scales);
    const std::vector<float> packed =
        packRows(download(dy, size_t(c.rows * yStride)), c.rows, c.out, yStride);
    const double error = relativeL2(packed, expected);
    EXPECT_LE(error, 1e-5);
    std::printf("[ gpu      ] gemm_fp8_bf16 (compute_80) %lld tokens x %lldx%lld: relative L2 "
                "%.2e\n",
                (long long)c.rows, (long long)c.out, (long long)c.in, error);
  }
}

// The GGUF prefill GEMMs on tensor cores (sm_80 and newer; cubin and PTX):
// against a double product of the dequantized weights with the activations
// rounded to bf16, and for k-quants the weights too (Q8_0's int8 values are
// exact in bf16, each block's sums scaled in f32).
struct GgufMmaCase {
  gguf::GgmlType type;
  int64_t rows, out, in;
  bool splitRows = false; // q8_0 rows split as the executor uploads dense matrices
};

void expectGgufMmaGemmMatchesDouble(GpuKernels &t, const GgufMmaCase &c, double tolerance) {
  SCOPED_TRACE(std::string(gguf::ggmlTypeName(c.type)) + " " + std::to_string(c.rows) + " x " +
               std::to_string(c.out) + "x" + std::to_string(c.in) +
               (c.splitRows ? " (split rows)" : ""));
  const int64_t xStride = c.in + 64, yStride = c.out + 32;
  auto w = randomFloats(size_t(c.out * c.in), -1, 1, 71);
  const size_t rowBytes = *gguf::ggmlRowBytes(c.type, c.in);
  std::vector<uint8_t> q(rowBytes * size_t(c.out));
  ASSERT_TRUE(quant::quantize(c.type, w.data(), q.data(), w.size()).ok());
  std::vector<float> weights(w.size());
  ASSERT_TRUE(quant::dequantize(c.type, q.data(), weights.data(), w.size()).ok());
  if (c.type != gguf::GgmlType::Q8_0)
    for (float &v : weights)
      v = bf16Rounded(v);
  auto x = randomFloats(size_t(c.rows * xStride), -2, 2, 72);
  std::vector<double> expected(size_t(c.rows * c.out));
  for (int64_t r = 0; r < c.rows; ++r)
    for (int64_t o = 0; o < c.out; ++o) {
      double sum = 0;
      for (int64_t i = 0; i < c.in; ++i)
        sum += double(weights[size_t(o * c.in + i)]) * bf16Rounded(x[size_t(r * xStride + i)]);
      expected[size_t(r * c.out + o)] = sum;
    }
  LoadedKernel kernel = t.load(gemmMmaSpec(c.type, c.out, c.in, c.splitRows));
  ASSERT_NE(kernel.function, nullptr);
  if (c.splitRows) {
    std::vector<uint8_t> split(q.size());
    ASSERT_TRUE(quant::splitQ8_0Rows(q.data(), split.data(), c.out, c.in).ok());
    q = std::move(split);
  }
  DevicePointer dw = t.upload(q.data(), q.size()), dx = t.upload(x.data(), x.size() * 4),
                dy = t.allocate(size_t(c.rows * yStride) * 4);
  int xs = int(xStride), ys = int(yStride), rows = int(c.rows);
  DevicePointer ungrouped = 0;
  t.run(kernel, {unsigned(c.out / 64), unsigned((c.rows + 63) / 64), 1, 128, 1, 1, 0},
        {&dw, &dx, &xs, &dy, &ys, &rows, &ungrouped, &ungrouped, &ungrouped});
  const std::vector<float> packed =
      packRows(t.download(dy, size_t(c.rows * yStride)), c.rows, c.out, yStride);
  const double error = relativeL2(packed, expected);
  EXPECT_LE(error, tolerance);
  std::printf("[ gpu      ] %s %s (%s) %lld tokens x %lldx%lld: relative L2 %.2e\n",
              c.type == gguf::GgmlType::Q8_0 ? "gemm_q8_0_mma" : "gemm_kquant_mma",
              gguf::ggmlTypeName(c.type).data(), t.arch.c_str(), (long long)c.rows,
              (long long)c.out, (long long)c.in, error);
}

TEST_P(GpuKernels, GgufMmaGemmsMatchTheDoubleReference) {
  std::string whyNone;
  if (queryGpus(whyNone)[0].computeMajor < 8)
    GTEST_SKIP() << "mma.sync on bf16 needs sm_80";
  using gguf::GgmlType;
  for (const GgufMmaCase &c :
       {GgufMmaCase{GgmlType::Q8_0, 100, 576, 7168}, GgufMmaCase{GgmlType::Q8_0, 32, 128, 96},
        GgufMmaCase{GgmlType::Q8_0, 130, 7168, 2048}, GgufMmaCase{GgmlType::Q8_0, 64, 1536, 1536},
        GgufMmaCase{GgmlType::Q8_0, 100, 576, 7168, true},
        GgufMmaCase{GgmlType::Q8_0, 130, 7168, 2048, true}})
    expectGgufMmaGemmMatchesDouble(*this, c, 1e-5);
  // A k-quant weight decoded one f32 ulp off may round to the neighbouring bf16.
  for (const GgufMmaCase &c :
       {GgufMmaCase{GgmlType::Q4_K, 100, 576, 7168}, GgufMmaCase{GgmlType::Q5_K, 33, 128, 512},
        GgufMmaCase{GgmlType::Q6_K, 130, 7168, 2048}, GgufMmaCase{GgmlType::Q6_K, 64, 192, 256}})
    expectGgufMmaGemmMatchesDouble(*this, c, 1e-4);
  EXPECT_FALSE(gemmMmaSpec(GgmlType::Q8_0, 100, 7168).ok()) << "rows fill 64-row tiles";
}

// The grouped form of the same kernels (routed experts in prefill): every
// expert's matrix stacked, assignment rows grouped by expert in tiles of up
// to 64 (a group of 70 ends inside its second tile, an empty one has none),
// x rows gathered by a row index, results scattered to the assignments'
// rows; against a double product of each assignment with its expert.
void expectGroupedGgufMmaGemmMatchesDouble(GpuKernels &t, gguf::GgmlType type, int64_t out,
                                           int64_t in, double tolerance) {
  SCOPED_TRACE(std::string(gguf::ggmlTypeName(type)) + " grouped " + std::to_string(out) + "x" +
               std::to_string(in));
  const std::vector<int64_t> sizes = {70, 0, 5, 64};
  const int64_t experts = int64_t(sizes.size()), tokens = 50, xStride = in + 32, yStride = out + 64;
  auto w = randomFloats(size_t(experts * out * in), -1, 1, 81);
  const size_t rowBytes = *gguf::ggmlRowBytes(type, in);
  std::vector<uint8_t> q(rowBytes * size_t(experts * out));
  ASSERT_TRUE(quant::quantize(type, w.data(), q.data(), w.size()).ok());
  std::vector<float> weights(w.size());
  ASSERT_TRUE(quant::dequantize(type, q.data(), weights.data(), w.size()).ok());
  if (type != gguf::GgmlType::Q8_0)
    for (float &v : weights)
      v = bf16Rounded(v);
  auto x = randomFloats(size_t(tokens * xStride), -2, 2, 82);
  int64_t assignments = 0;
  for (int64_t size : sizes)
    assignments += size;
  std::mt19937 random(83);
  std::vector<int32_t> rowIndex(static_cast<size_t>(assignments)),
      outRows(static_cast<size_t>(assignments));
  for (int64_t j = 0; j < assignments; ++j) {
    rowIndex[size_t(j)] = int32_t(random() % tokens);
    outRows[size_t(j)] = int32_t(j);
  }
  std::shuffle(outRows.begin(), outRows.end(), random);
  std::vector<double> expected(size_t(assignments * out));
  for (int64_t e = 0, j = 0; e < experts; ++e)
    for (int64_t end = j + sizes[size_t(e)]; j < end; ++j)
      for (int64_t o = 0; o < out; ++o) {
        double sum = 0;
        for (int64_t i = 0; i < in; ++i)
          sum += double(weights[size_t((e * out + o) * in + i)]) *
                 bf16Rounded(x[size_t(rowIndex[size_t(j)] * xStride + i)]);
        expected[size_t(outRows[size_t(j)] * out + o)] = sum;
      }
  const std::vector<int32_t> tiles = expertRowTiles(sizes, kMmaGemmTileRows);
  ASSERT_EQ(tiles.size(), 12u); // 2 + 0 + 1 + 1 tiles
  LoadedKernel kernel = t.load(gemmMmaSpec(type, out, in));
  ASSERT_NE(kernel.function, nullptr);
  DevicePointer dw = t.upload(q.data(), q.size()), dx = t.upload(x.data(), x.size() * 4),
                dy = t.allocate(size_t(assignments * yStride) * 4),
                dTiles = t.upload(tiles.data(), tiles.size() * 4),
                dRowIndex = t.upload(rowIndex.data(), rowIndex.size() * 4),
                dOutRows = t.upload(outRows.data(), outRows.size() * 4);
  int xs = int(xStride), ys = int(yStride), rows = 0;
  t.run(kernel, {unsigned(out / 64), unsigned(tiles.size() / 3), 1, 128, 1, 1, 0},
        {&dw, &dx, &xs, &dy, &ys, &rows, &dTiles, &dRowIndex, &dOutRows});
  const std::vector<float> packed =
      packRows(t.download(dy, size_t(assignments * yStride)), assignments, out, yStride);
  const double error = relativeL2(packed, expected);
  EXPECT_LE(error, tolerance);
  std::printf("[ gpu      ] grouped %s (%s) %lld assignments of 4 experts x %lldx%lld: relative "
              "L2 %.2e\n",
              gguf::ggmlTypeName(type).data(), t.arch.c_str(), (long long)assignments,
              (long long)out, (long long)in, error);
}

TEST_P(GpuKernels, GroupedGgufMmaGemmsMatchTheDoubleReference) {
  std::string whyNone;
  if (queryGpus(whyNone)[0].computeMajor < 8)
    GTEST_SKIP() << "mma.sync on bf16 needs sm_80";
  expectGroupedGgufMmaGemmMatchesDouble(*this, gguf::GgmlType::Q8_0, 128, 512, 1e-5);
  expectGroupedGgufMmaGemmMatchesDouble(*this, gguf::GgmlType::Q4_K, 192, 512, 1e-4);
  expectGroupedGgufMmaGemmMatchesDouble(*this, gguf::GgmlType::Q6_K, 64, 256, 1e-4);
}

// Runs everywhere: tiles of up to `tileRows` rows within each expert's group.
TEST(ExpertRowTiles, TilesWithinEachGroup) {
  EXPECT_EQ(expertRowTiles({70, 0, 5, 64}, 64),
            std::vector<int32_t>({0, 0, 70, 0, 64, 70, 2, 70, 75, 3, 75, 139}));
  EXPECT_EQ(expertRowTiles({130}, 128), std::vector<int32_t>({0, 0, 130, 0, 128, 130}));
  EXPECT_TRUE(expertRowTiles({0, 0}, 64).empty());
}

// Runs everywhere: 3 tokens choosing 2 of 3 experts each, in expert order
// (within an expert, assignment order), each row with its token and
// assignment; an id out of range is named and nothing else is promised.
TEST(OrderAssignmentsByExpert, RowsInExpertOrderWithTheirTokens) {
  const std::vector<int32_t> expertOf = {2, 0, 2, 1, 0, 2};
  std::vector<int64_t> sizes, next;
  std::vector<int32_t> rowIndex(6, -1), outRows(6, -1);
  EXPECT_FALSE(orderAssignmentsByExpert(expertOf.data(), 6, 2, 3, sizes, next, rowIndex.data(),
                                        outRows.data()));
  EXPECT_EQ(sizes, std::vector<int64_t>({2, 1, 3}));
  EXPECT_EQ(outRows, std::vector<int32_t>({1, 4, 3, 0, 2, 5}));
  EXPECT_EQ(rowIndex, std::vector<int32_t>({0, 2, 1, 0, 1, 2}));
  const std::vector<int32_t> damaged = {0, 3};
  EXPECT_EQ(orderAssignmentsByExpert(damaged.data(), 2, 2, 3, sizes, next, rowIndex.data(),
                                     outRows.data()),
            std::optional<int32_t>(3));
}

TEST_P(GpuKernels, SecondLoadComesFromTheCache) {
  auto spec = rmsNormSpec(7168, 1e-6f);
  load(spec);
  load(spec);
  EXPECT_EQ(cache->stats().misses, 1u);
  EXPECT_EQ(cache->stats().hits, 1u);
}

// Runs everywhere: K is split only where the output tiles leave most SMs
// idle, into parts of at least 4 slices, and the partials fit their scratch.
// Dense q8_0 matrices of whole runs of 8 blocks decode over planes; the
// warps a row grow for matrices of few rows, never past a chunk a lane.
TEST(GemvQ8_0Planes, SplitRowsWhereRowsAreRunsOfEightBlocks) {
  using gguf::GgmlType;
  EXPECT_EQ(denseGemvVariant(GgmlType::Q8_0, 7168), GemvVariant::SplitRows);
  EXPECT_EQ(denseGemvVariant(GgmlType::Q8_0, 7200), GemvVariant::Plain);
  EXPECT_EQ(denseGemvVariant(GgmlType::Q6_K, 7168), GemvVariant::Plain);
  EXPECT_FALSE(gemvSpec(GgmlType::Q6_K, 64, 7168, 1, GemvVariant::SplitRows).ok());
  EXPECT_FALSE(gemvSpec(GgmlType::Q8_0, 64, 7200, 1, GemvVariant::SplitRows).ok());
  EXPECT_EQ(gemvQ8_0PlanesSplit(7168, 16384), 4u) << "o_proj";
  EXPECT_EQ(gemvQ8_0PlanesSplit(24576, 1536), 1u) << "q_b_proj: rows enough";
  EXPECT_EQ(gemvQ8_0PlanesSplit(576, 7168), 8u) << "kv_a: at most 8";
  EXPECT_EQ(gemvQ8_0PlanesSplit(7168, 2048), 4u) << "one chunk a lane";
  EXPECT_EQ(gemvQ8_0PlanesSplit(33, 256), 1u) << "16 chunks: one warp's lanes";
  EXPECT_EQ(gemvQ8_0PlanesGridBlocks(7168, 16384), 7168u);
  EXPECT_EQ(gemvQ8_0PlanesGridBlocks(24576, 1536), 24576u / 4);
  // A dense matrix's kernels: decode, prefill tiles, planes, their
  // quantization and the tensor-core GEMM; a per-head stack's keep GGUF rows.
  auto entries = [](const std::vector<StatusOr<KernelSpec>> &specs) {
    std::vector<std::string> names;
    for (const StatusOr<KernelSpec> &spec : specs) {
      EXPECT_TRUE(spec.ok()) << spec.message();
      if (spec)
        names.push_back(spec->entry + (spec->defines.count("SPLIT_ROWS") ? " split" : ""));
    }
    return names;
  };
  EXPECT_EQ(entries(denseMatrixSpecs(GgmlType::Q8_0, 1536, 7168, false, true)),
            (std::vector<std::string>{"gemv_q8_0 split", "gemv_q8_0 split", "gemv_q8_0_planes",
                                      "quantize_planes", "gemm_q8_0_mma split"}));
  EXPECT_EQ(entries(denseMatrixSpecs(GgmlType::Q8_0, 128, 512, true, true)),
            (std::vector<std::string>{"gemv_q8_0", "gemv_q8_0"}));
}

TEST(Fp8GemmSplits, SplitOnlyWhereTilesAreFew) {
  EXPECT_EQ(fp8GemmSplits(4096, 7168, 16384, 132, 128), 1u); // 32 x 56 tiles
  EXPECT_EQ(fp8GemmSplits(128, 24576, 1536, 132, 128), 1u);  // 192 tiles
  EXPECT_EQ(fp8GemmSplits(128, 1536, 7168, 132, 128), 11u);  // 12 tiles
  EXPECT_EQ(fp8GemmSplits(128, 1536, 7168, 132, 256), 14u);  // 6 tiles, 56 slices
  EXPECT_EQ(fp8GemmSplits(128, 576, 7168, 132, 64), 14u);    // 9 tiles
  EXPECT_EQ(fp8GemmSplits(128, 1536, 512, 132, 128), 1u);    // 4 slices: one part
  // The most partials: 128, 256 or 896 rows (14, 7 or 2 parts).
  EXPECT_EQ(fp8GemmPartialFloats(4096, 576, 7168, 132, 64), size_t(14) * 128 * 576);
  EXPECT_FALSE(fp8GemmFits(100, 512));
  EXPECT_FALSE(fp8GemmFits(128, 200));
  EXPECT_TRUE(fp8GemmFits(576, 7168));
}

// Runs everywhere: 256-column tiles where they take fewer waves (a wide
// tile costing 1.8 narrow ones) and the narrow tiles need no split; the
// cases the H100 measured (docs/gpu-kernels.md).
TEST(Fp8GemmPrefersWide, WhereWideTilesTakeFewerWaves) {
  EXPECT_TRUE(fp8GemmPrefersWide(4096, 7168, 132));  // o_proj: 7 wide waves against 14
  EXPECT_TRUE(fp8GemmPrefersWide(512, 7168, 132));   // 112 wide tiles: 1 wave against 2
  EXPECT_FALSE(fp8GemmPrefersWide(4096, 1536, 132)); // q_a: 2 wide waves (3.6) against 3
  EXPECT_FALSE(fp8GemmPrefersWide(512, 18432, 132)); // dense gate/up: 3 (5.4) against 5
  EXPECT_TRUE(fp8GemmPrefersWide(128, 18432, 132));  // 72 wide tiles: 1 wave against 2
  EXPECT_FALSE(fp8GemmPrefersWide(128, 7168, 132));  // 56 narrow tiles split K instead
  EXPECT_FALSE(fp8GemmPrefersWide(4096, 576, 132));  // 576 rows: no wide tiles
}

// Runs everywhere: the tile width and K split per step, on the cases the
// H100 measured (docs/gpu-kernels.md): 64-column tiles unsplit where they
// about fill the SMs (o_proj at 128 tokens: 48.6 us against 57.4 on 128
// columns split in 2), split only where even they are few.
TEST(Fp8GemmTiling, NarrowTilesBeforeSplittingK) {
  auto tiling = [](int64_t rows, int64_t out, int64_t in) {
    const Fp8GemmTiling t = fp8GemmTiling(rows, out, in, 132);
    return std::make_pair(t.blockN, t.splits);
  };
  using Pick = std::pair<unsigned, unsigned>;
  EXPECT_EQ(tiling(128, 7168, 16384), Pick(64, 1));  // o_proj: 112 tiles of 64
  EXPECT_EQ(tiling(32, 7168, 16384), Pick(128, 2));  // part of a tile: 50.5 us against 68.9
  EXPECT_EQ(tiling(32, 576, 7168), Pick(64, 14));    // kv_a's tiles are 64 wide anyway
  EXPECT_EQ(tiling(512, 2048, 7168), Pick(64, 1));   // shared gate/up: 128 tiles
  EXPECT_EQ(tiling(128, 2048, 7168), Pick(64, 4));   // 32 tiles of 64, in 4 parts
  EXPECT_EQ(tiling(128, 1536, 7168), Pick(64, 5));   // q_a: 24 tiles
  EXPECT_EQ(tiling(128, 576, 7168), Pick(64, 14));   // kv_a: 9 tiles
  EXPECT_EQ(tiling(128, 18432, 7168), Pick(256, 1)); // 72 wide tiles: one wave
  EXPECT_EQ(tiling(128, 24576, 1536), Pick(256, 1)); // q_b: 96 wide tiles: one wave
  EXPECT_EQ(tiling(512, 18432, 7168), Pick(128, 1)); // dense gate/up: 576 tiles of 128
  EXPECT_EQ(tiling(512, 7168, 16384), Pick(256, 1)); // o_proj: 112 wide tiles
  EXPECT_EQ(tiling(4096, 1536, 7168), Pick(128, 1)); // q_a: 384 tiles
  EXPECT_EQ(tiling(4096, 7168, 16384), Pick(256, 1));
  EXPECT_EQ(tiling(4096, 576, 7168), Pick(144, 1)); // kv_a: 128 tiles of 144, not 288 of 64
  EXPECT_EQ(tiling(2048, 576, 7168), Pick(144, 2)); // 64 of 144 in 2 parts, not 144 of 64
  EXPECT_EQ(tiling(1024, 576, 7168), Pick(64, 1));  // 72 tiles of 64: one wave
}

// Runs everywhere: the widths a weight's plan lists; 144 only where 128 does not tile.
TEST(Fp8GemmTileWidths, EveryWidthTheRowsDivideInto) {
  using Widths = std::vector<unsigned>;
  EXPECT_EQ(fp8GemmTileWidths(576), Widths({64, 144}));
  EXPECT_EQ(fp8GemmTileWidths(1152), Widths({64, 128}));
  EXPECT_EQ(fp8GemmTileWidths(1536), Widths({64, 128, 256}));
  EXPECT_EQ(fp8GemmTileWidths(320), Widths({64}));
  EXPECT_EQ(fp8GemmTileWidths(100), Widths());
  StatusOr<std::vector<KernelSpec>> specs = gemmFp8TileSpecs(576, 7168);
  ASSERT_TRUE(specs.ok()) << specs.message();
  ASSERT_EQ(specs->size(), 2u);
  EXPECT_EQ((*specs)[1].defines.at("BLOCK_N"), "144");
  EXPECT_EQ((*specs)[1].defines.count("PROMOTE_BEHIND"), 0u);
}

// Runs everywhere: tile configurations, their rings within sm_90's shared
// memory, and the ones refused.
TEST(Fp8GemmConfig, TilesTheRowsWithinSharedMemory) {
  StatusOr<Fp8GemmConfig> narrow = fp8GemmConfig(576), wide = fp8GemmConfig(1536, 256);
  ASSERT_TRUE(narrow.ok() && wide.ok());
  EXPECT_EQ(narrow->blockN, 64u); // 576 rows: 9 tiles of 64
  EXPECT_EQ(narrow->stages, 8u);
  EXPECT_EQ(wide->stages, 4u);
  EXPECT_EQ(fp8GemmConfig(1536)->stages, 6u);
  EXPECT_TRUE(narrow->promoteBehind && fp8GemmConfig(1536)->promoteBehind);
  EXPECT_FALSE(wide->promoteBehind); // no registers for a second 256-column fragment
  Fp8GemmConfig wideBehind = *wide;
  wideBehind.promoteBehind = true;
  EXPECT_FALSE(gemmFp8Spec(1536, 7168, wideBehind).ok());
  // The activations' scales: slices a multiple of 4 floats apart (TMA rows).
  EXPECT_EQ(fp8GemmScaleStride(203), 204);
  EXPECT_EQ(fp8GemmScaleStride(4096), 4096);
  EXPECT_EQ(fp8GemmScaleBytes(203, 1536), size_t(12 * 204 * 4));
  for (const Fp8GemmConfig &config : {*narrow, *wide, *fp8GemmConfig(1536)})
    EXPECT_LE(fp8GemmSharedBytes(config), 227u * 1024);
  StatusOr<Fp8GemmConfig> straddling = fp8GemmConfig(576, 144);
  ASSERT_TRUE(straddling.ok()) << straddling.message();
  EXPECT_EQ(straddling->stages, 6u);
  EXPECT_FALSE(straddling->promoteBehind);
  EXPECT_LE(fp8GemmSharedBytes(*straddling), 227u * 1024);
  EXPECT_FALSE(fp8GemmConfig(1536, 144).ok());   // 10.7 tiles
  EXPECT_FALSE(fp8GemmConfig(576, 128).ok());    // 4.5 tiles
  EXPECT_FALSE(fp8GemmConfig(1536, 96).ok());
  StatusOr<KernelSpec> sum = gemmFp8SumSpec(1536, 7168), spec = gemmFp8Spec(1536, 7168);
  ASSERT_TRUE(sum.ok() && spec.ok());
  EXPECT_EQ(sum->entry, "gemm_fp8_sum_splits");
  EXPECT_EQ(sum->defines, spec->defines);
}

// Runs everywhere: every assignment with a matrix lands in exactly one tile
// of its matrix, tiles hold at most kGemvPrefillTokenTile and pad with -1.
TEST(GroupAssignments, TilesCoverEachAssignmentOnceByMatrix) {
  const int64_t assignments = 100, width = 1 + kGemvPrefillTokenTile;
  std::vector<int32_t> matrixOf(assignments);
  for (int64_t a = 0; a < assignments; ++a)
    matrixOf[a] = a % 9 == 0 ? -1 : int32_t((a * 7) % 6);
  std::vector<int32_t> tiles(size_t(assignments * width), 12345);
  const int64_t count = groupAssignments(matrixOf.data(), assignments, tiles.data());
  std::vector<int> seen(assignments, 0);
  std::vector<int64_t> perMatrix(6, 0);
  for (int64_t t = 0; t < count; ++t) {
    const int32_t *tile = tiles.data() + t * width;
    ASSERT_GE(tile[0], 0);
    bool padding = false;
    for (int64_t i = 1; i < width; ++i) {
      if (tile[i] < 0) {
        padding = true;
        continue;
      }
      ASSERT_FALSE(padding) << "an assignment after the padding";
      EXPECT_EQ(matrixOf[tile[i]], tile[0]);
      ++seen[tile[i]];
    }
    ++perMatrix[size_t(tile[0])];
  }
  for (int64_t a = 0; a < assignments; ++a)
    EXPECT_EQ(seen[a], matrixOf[a] < 0 ? 0 : 1) << "assignment " << a;
  // As few tiles as the counts allow: ceil(count / tile) per matrix.
  for (int m = 0; m < 6; ++m) {
    const int64_t chosen = std::count(matrixOf.begin(), matrixOf.end(), m);
    EXPECT_EQ(perMatrix[size_t(m)], (chosen + kGemvPrefillTokenTile - 1) / kGemvPrefillTokenTile);
  }
}

INSTANTIATE_TEST_SUITE_P(CubinAndPtx, GpuKernels, ::testing::Values(true, false),
                         [](const auto &info) { return info.param ? "Cubin" : "Ptx"; });

} // namespace
} // namespace kt::cuda
