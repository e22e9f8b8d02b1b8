// Every kernel specialization compiles with NVRTC for every CI architecture;
// compile errors come back as a Status with NVRTC's log. No GPU needed.
#include "runtime/cuda/EmbeddedKernels.h"
#include "runtime/cuda/KernelCatalog.h"
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/CudaTestSupport.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <set>
#include <string>
#include <tuple>

namespace kt::cuda {
namespace {

const Nvrtc *nvrtcOrNull(std::string &why) {
  auto nvrtc = Nvrtc::instance();
  if (!nvrtc.ok()) {
    why = nvrtc.message();
    return nullptr;
  }
  return *nvrtc;
}

#define REQUIRE_NVRTC(nvrtc)                                                                       \
  std::string whyNoNvrtc;                                                                          \
  const Nvrtc *nvrtc = nvrtcOrNull(whyNoNvrtc);                                                    \
  if (!nvrtc)                                                                                      \
  GTEST_SKIP() << whyNoNvrtc

void compileAll(const Nvrtc &nvrtc, const std::vector<KernelSpec> &specs) {
  ASSERT_FALSE(specs.empty());
  for (const auto &arch : test::ciArchitectures()) {
    for (const auto &spec : specs) {
      const auto start = std::chrono::steady_clock::now();
      auto compiled = nvrtc.compile(spec, arch);
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      ASSERT_TRUE(compiled.ok()) << compiled.message();
      EXPECT_EQ(compiled->entry, spec.entry);
      EXPECT_EQ(compiled->arch, arch);
      if (arch.rfind("sm_", 0) == 0) {
        ASSERT_TRUE(compiled->isCubin);
        ASSERT_GE(compiled->image.size(), 4u);
        EXPECT_EQ(compiled->image.substr(0, 4), std::string("\x7f"
                                                            "ELF"));
      } else {
        ASSERT_FALSE(compiled->isCubin);
        EXPECT_NE(compiled->image.find(".visible .entry " + spec.entry), std::string::npos);
        EXPECT_NE(compiled->image.find(".target sm_90"), std::string::npos);
      }
      std::printf("[ nvrtc    ] %-8s %6.0f ms  %s\n", arch.c_str(), ms, spec.describe().c_str());
    }
  }
}

// The benchmarks' FLOP ceiling kernel (bench/GpuKernelBench.cpp) compiles
// too, and bad step counts are refused.
TEST(NvrtcCompile, FmaCeilingKernelCompilesForEveryArch) {
  REQUIRE_NVRTC(nvrtc);
  StatusOr<KernelSpec> spec = fmaCeilingSpec(4096);
  ASSERT_TRUE(spec.ok()) << spec.message();
  compileAll(*nvrtc, {*spec});
  EXPECT_FALSE(fmaCeilingSpec(0).ok());
}

// Compiles every spec of `entry` for each of `archs` (each must compile);
// returns how many specs there were.
int compileEntry(const Nvrtc &nvrtc, const std::vector<KernelSpec> &specs, const std::string &entry,
                 std::initializer_list<const char *> archs) {
  int count = 0;
  for (const KernelSpec &spec : specs) {
    if (spec.entry != entry)
      continue;
    ++count;
    for (const char *arch : archs) {
      auto result = nvrtc.compile(spec, arch);
      EXPECT_TRUE(result.ok()) << arch << ": " << result.message();
    }
  }
  return count;
}

TEST(NvrtcCompile, EveryDeepseekV3SpecializationCompilesForEveryArch) {
  REQUIRE_NVRTC(nvrtc);
  auto specs = allKernelSpecializations(test::deepseekV3Shapes());
  ASSERT_TRUE(specs.ok()) << specs.message();
  // embedding + 2 norms + the residual adds with the norm after them (2 and
  // 3 addends) + 9 q8_0 and 4 k-quant matrices + the f32 router +
  // 4 per-head k_b/v_b matrices + the gate + the queries' rope + MLA (prefill
  // core, split decode core and its combine, cache append with the latent's
  // norm and the key's rope, the prefill and decode
  // cores on tensor cores) + argmax and sampling + silu_mul and add for 2 widths + 4
  // FP8 matrices, the prefill (token-tiled) GEMV of each of the 18 GEMV
  // matrices, and Q4_K experts on the GPU (their two GEMVs, their two grouped
  // prefill GEMVs, the fused gate and up GEMV of decode, the weighted sum and
  // the routing counts); and the 9 dense q8_0 matrices' planes GEMVs with the
  // quantization of their 5 input widths.
  EXPECT_EQ(specs->size(), 80u);
  int planes = 0;
  for (const KernelSpec &spec : *specs)
    planes += spec.entry == "gemv_q8_0_planes" ||
              (spec.entry == "gemv_q8_0" && spec.defines.count("SPLIT_ROWS"));
  EXPECT_EQ(planes, 9 * 3) << "each split-row matrix: decode, prefill and planes GEMVs";
  compileAll(*nvrtc, *specs);
}

// ptxas serializes every wgmma of a kernel (C7514: "wgmma.mma_async
// instructions are serialized") where it cannot prove which accumulators a
// wait completes; the FP8 GEMM then loses 10-15% with no other sign. NVRTC
// passes that note on in its log.
void expectWgmmaNotSerialized(const CompiledKernel &compiled, const KernelSpec &spec) {
  EXPECT_EQ(compiled.log.find("C7514"), std::string::npos) << spec.describe() << ":\n"
                                                           << compiled.log;
  EXPECT_EQ(compiled.log.find("serialized"), std::string::npos) << spec.describe();
}

// On sm_90a targets the FP8 matrices add the prefill GEMM (wgmma; also on
// 256-column tiles where the rows allow), its split-K sum, the activation
// quantization and the norms and SiLU products fused with it; they compile
// for sm_90a.
TEST(NvrtcCompile, Fp8GemmSpecializationsCompileForSm90a) {
  REQUIRE_NVRTC(nvrtc);
  ModelKernelShapes shapes = test::deepseekV3Shapes();
  auto without = allKernelSpecializations(shapes);
  shapes.fp8Gemm = true;
  auto with = allKernelSpecializations(shapes);
  ASSERT_TRUE(without.ok() && with.ok());
  // 4 FP8 matrices x (GEMM, split sum), the 64- and 256-column GEMMs of
  // the 3 whose rows divide by 256, kv_a's 144-column GEMM (its default is
  // 64), quantization for 3 input widths, and the producers that quantize
  // for the GEMMs: norms of 2 widths (hidden, q_lora) and SiLU products of
  // 2 (dense and expert FFN).
  ASSERT_EQ(with->size(), without->size() + 4 * 2 + 3 * 2 + 1 + 3 + 2 + 2);
  std::set<std::string> before;
  for (const KernelSpec &spec : *without)
    before.insert(spec.describe());
  for (const KernelSpec &spec : *with) {
    if (before.count(spec.describe()))
      continue;
    auto compiled = nvrtc->compile(spec, "sm_90a");
    ASSERT_TRUE(compiled.ok()) << compiled.message();
    EXPECT_TRUE(compiled->isCubin);
    expectWgmmaNotSerialized(*compiled, spec);
    std::printf("[ nvrtc    ] sm_90a %s\n", spec.describe().c_str());
  }
  // The in-order promotion on narrow tiles (the bench's baseline) too.
  StatusOr<Fp8GemmConfig> inOrder = fp8GemmConfig(1536);
  ASSERT_TRUE(inOrder.ok());
  inOrder->promoteBehind = false;
  StatusOr<KernelSpec> spec = gemmFp8Spec(1536, 7168, *inOrder);
  ASSERT_TRUE(spec.ok()) << spec.message();
  auto compiled = nvrtc->compile(*spec, "sm_90a");
  ASSERT_TRUE(compiled.ok()) << compiled.message();
  expectWgmmaNotSerialized(*compiled, *spec);
}

// The routed experts' grouped FP8 GEMM at DeepSeek-V3's expert shapes
// (gate/up 2048x7168, down 7168x2048) in every tile width.
TEST(NvrtcCompile, Fp8GroupedGemmCompilesForSm90a) {
  REQUIRE_NVRTC(nvrtc);
  for (auto [out, in] : {std::pair<int64_t, int64_t>{2048, 7168}, {7168, 2048}})
    for (unsigned blockN : {64u, 128u, 256u}) {
      StatusOr<Fp8GemmConfig> config = fp8GemmConfig(out, blockN);
      ASSERT_TRUE(config.ok()) << config.message();
      StatusOr<KernelSpec> spec = gemmFp8GroupedSpec(out, in, *config);
      ASSERT_TRUE(spec.ok()) << spec.message();
      EXPECT_EQ(spec->defines.at("GROUPED"), "1");
      auto compiled = nvrtc->compile(*spec, "sm_90a");
      ASSERT_TRUE(compiled.ok()) << compiled.message();
      EXPECT_TRUE(compiled->isCubin);
      expectWgmmaNotSerialized(*compiled, *spec);
    }
  // Experts must be whole 128-row scale blocks.
  StatusOr<Fp8GemmConfig> config = fp8GemmConfig(576, 64);
  ASSERT_TRUE(config.ok());
  EXPECT_FALSE(gemmFp8GroupedSpec(576, 7168, *config).ok());
}

// On sm_80 to sm_89 targets the FP8 matrices add the bf16 mma GEMM; it
// compiles for those archs and as compute_80 PTX.
TEST(NvrtcCompile, Fp8Bf16GemmSpecializationsCompileForAmpereAndAda) {
  REQUIRE_NVRTC(nvrtc);
  ModelKernelShapes shapes = test::deepseekV3Shapes();
  shapes.fp8Bf16Gemm = true;
  auto specs = allKernelSpecializations(shapes);
  ASSERT_TRUE(specs.ok()) << specs.message();
  // V3's 4 FP8 matrices, all of whose shapes it takes.
  EXPECT_EQ(
      compileEntry(*nvrtc, *specs, "gemm_fp8_bf16", {"sm_80", "sm_86", "sm_89", "compute_80"}), 4);
}

// On sm_80 and newer the Q8_0 and k-quant matrices add the tensor-core
// prefill GEMMs (and the GPU experts' grouped ones); they compile for those
// archs and as compute_80 PTX.
TEST(NvrtcCompile, GgufMmaGemmsCompileForSm80AndNewer) {
  REQUIRE_NVRTC(nvrtc);
  ModelKernelShapes shapes = test::deepseekV3Shapes();
  auto without = allKernelSpecializations(shapes);
  shapes.mmaGemm = true;
  auto with = allKernelSpecializations(shapes);
  ASSERT_TRUE(without.ok() && with.ok());
  int matrices = 0;
  for (const char *entry : {"gemm_q8_0_mma", "gemm_kquant_mma"}) {
    const int count =
        compileEntry(*nvrtc, *with, entry, {"sm_80", "sm_86", "sm_89", "sm_90a", "compute_80"});
    EXPECT_GT(count, 0) << entry;
    matrices += count;
  }
  // Every q8_0 and k-quant matrix of V3 whose rows fill 64-row tiles, and
  // the GPU experts' two shapes (the grouped form of the same kernels).
  int fitting = 0;
  for (const ModelKernelShapes::Matrix &m : shapes.gemvMatrices)
    fitting += !m.perHead && gemmMmaFits(m.type, m.out, m.in); // stacks keep the GEMV
  ASSERT_EQ(shapes.gpuExperts.size(), 1u);
  const ModelKernelShapes::Experts &e = shapes.gpuExperts[0];
  ASSERT_TRUE(gemmMmaFits(e.type, e.ffn, e.hidden) && gemmMmaFits(e.type, e.hidden, e.ffn));
  fitting += 2;
  EXPECT_EQ(matrices, fitting);
  EXPECT_EQ(with->size(), without->size() + size_t(fitting));
  EXPECT_FALSE(gemmMmaSpec(gguf::GgmlType::Q4_0, 64, 256).ok());
  EXPECT_FALSE(gemmMmaSpec(gguf::GgmlType::Q4_K, 64, 96).ok()) << "whole super-blocks";
}

TEST(NvrtcCompile, EverySmallModelSpecializationAndTableTypeCompiles) {
  REQUIRE_NVRTC(nvrtc);
  auto specs = allKernelSpecializations(test::smallModelShapes());
  ASSERT_TRUE(specs.ok()) << specs.message();
  for (auto type : {gguf::GgmlType::F16, gguf::GgmlType::BF16, gguf::GgmlType::Q8_0}) {
    auto spec = embeddingSpec(256, 1024, type);
    ASSERT_TRUE(spec.ok()) << spec.message();
    specs->push_back(*spec);
  }
  compileAll(*nvrtc, *specs);
}

TEST(NvrtcCompile, SupportsEveryCiArchitecture) {
  REQUIRE_NVRTC(nvrtc);
  EXPECT_GE(nvrtc->versionMajor(), 12);
  const auto archs = nvrtc->supportedArchs();
  for (int sm : {75, 80, 89, 90})
    EXPECT_NE(std::find(archs.begin(), archs.end(), sm), archs.end()) << "sm_" << sm;
}

TEST(NvrtcCompile, BrokenKernelReportsTheLogTheKernelAndTheSpecialization) {
  REQUIRE_NVRTC(nvrtc);
  auto spec = rmsNormSpec(64, 1e-5f);
  ASSERT_TRUE(spec.ok());
  spec->source += "\nextern \"C\" __global__ void broken(float *p) { p[0] = undeclared_name; }\n";
  auto compiled = nvrtc->compile(*spec, "sm_80");
  ASSERT_FALSE(compiled.ok());
  const std::string &message = compiled.message();
  EXPECT_NE(message.find("undeclared_name"), std::string::npos) << message;
  EXPECT_NE(message.find("rms_norm.cu("), std::string::npos) << message; // the log's file(line)
  EXPECT_NE(message.find("error"), std::string::npos) << message;
  EXPECT_NE(message.find("HIDDEN=64"), std::string::npos) << message;
  EXPECT_NE(message.find("sm_80"), std::string::npos) << message;
}

TEST(NvrtcCompile, MissingSpecializationDefineIsACompileError) {
  REQUIRE_NVRTC(nvrtc);
  auto spec = rmsNormSpec(64, 1e-5f);
  ASSERT_TRUE(spec.ok());
  spec->defines.erase("EPS");
  auto compiled = nvrtc->compile(*spec, "sm_90a");
  ASSERT_FALSE(compiled.ok());
  EXPECT_NE(compiled.message().find("rms_norm needs EPS"), std::string::npos) << compiled.message();
}

TEST(NvrtcCompile, UnknownArchitectureIsRejectedBeforeCompiling) {
  REQUIRE_NVRTC(nvrtc);
  auto spec = rmsNormSpec(64, 1e-5f);
  ASSERT_TRUE(spec.ok());
  auto compiled = nvrtc->compile(*spec, "hopper");
  ASSERT_FALSE(compiled.ok());
  EXPECT_NE(compiled.message().find("sm_XY"), std::string::npos) << compiled.message();
}

TEST(NvrtcLoad, MissingLibraryExplainsHowToFixIt) {
  auto nvrtc = Nvrtc::loadFrom({"/nonexistent/libnvrtc.so.13", "libnvrtc-not-here.so.99"});
  ASSERT_FALSE(nvrtc.ok());
  EXPECT_NE(nvrtc.message().find("install the CUDA toolkit"), std::string::npos);
  EXPECT_NE(nvrtc.message().find("LD_LIBRARY_PATH"), std::string::npos);
  EXPECT_NE(nvrtc.message().find("/nonexistent/libnvrtc.so.13"), std::string::npos);
}

TEST(ArchNames, CubinForSmPtxForCompute) {
  struct Case {
    const char *arch;
    bool ok, cubin;
  } cases[] = {{"sm_75", true, true},       {"sm_90a", true, true},       {"sm_100f", true, true},
               {"compute_90", true, false}, {"compute_120", true, false}, {"sm_9", false, false},
               {"sm_90b", false, false},    {"gfx90a", false, false},     {"", false, false}};
  for (const auto &c : cases) {
    auto target = parseArch(c.arch);
    ASSERT_EQ(target.ok(), c.ok) << c.arch;
    if (c.ok)
      EXPECT_EQ(target->cubin, c.cubin) << c.arch;
  }
}

TEST(KernelCatalog, HeadersAreResolvedAndShapesValidated) {
  auto spec = gemvQ8_0Spec(100, 64);
  ASSERT_TRUE(spec.ok());
  ASSERT_EQ(spec->headers.size(), 1u);
  EXPECT_EQ(spec->headers[0].name, "common.cuh");
  EXPECT_NE(spec->headers[0].text.find("halfToFloat"), std::string::npos);
  EXPECT_EQ(spec->defines.at("IN_FEATURES"), "64");
  EXPECT_EQ(spec->blockThreads, kGemvRowsPerBlock * 32);
  EXPECT_FALSE(gemvQ8_0Spec(100, 48).ok());
  EXPECT_FALSE(embeddingSpec(48, 10, gguf::GgmlType::Q8_0).ok());
  EXPECT_FALSE(embeddingSpec(64, 10, gguf::GgmlType::Q4_K).ok());
  EXPECT_FALSE(makeKernelSpec("no_such_kernel.cu", "x", {}, 32).ok());
  EXPECT_EQ(floatLiteral(1e-6f), "9.99999997e-07f");
  EXPECT_EQ(floatLiteral(2.0f), "2.0f");
}

// The cache append normalizes the latent as rms_norm does: the same thread
// count for the width (so the sum of squares adds up in the same order) and
// the same epsilon; odd rope widths and no epsilon are refused.
TEST(KernelCatalog, CacheAppendNormalizesAsRmsNormDoes) {
  for (int64_t width : {int64_t(64), int64_t(512), int64_t(1536)}) {
    StatusOr<KernelSpec> append = mlaCacheAppendSpec(width, 64, 1e-6f, 1.25f);
    StatusOr<KernelSpec> norm = rmsNormSpec(width, 1e-6f);
    ASSERT_TRUE(append.ok() && norm.ok()) << width;
    EXPECT_EQ(append->blockThreads, norm->blockThreads) << width;
    EXPECT_EQ(append->defines.at("BLOCK_THREADS"), norm->defines.at("BLOCK_THREADS"));
    EXPECT_EQ(append->defines.at("EPS"), norm->defines.at("EPS"));
    EXPECT_EQ(append->defines.at("COS_SIN_SCALE"), "1.25f");
  }
  EXPECT_FALSE(mlaCacheAppendSpec(512, 63, 1e-6f, 1.0f).ok());
  EXPECT_FALSE(mlaCacheAppendSpec(512, 64, 0.0f, 1.0f).ok());
}

// Kernels launched to overlap the one before them must wait for it in every
// entry: a file's entries all do or none does, and the decode graph's
// kernels do.
TEST(KernelCatalog, KernelFilesWaitForThePriorGridInEveryEntryOrNone) {
  size_t waiting = 0;
  for (const EmbeddedKernelFile &file : embeddedKernelFiles()) {
    if (file.name.size() < 3 || file.name.substr(file.name.size() - 3) != ".cu")
      continue;
    const bool calls = file.text.find("KT_WAIT_FOR_PRIOR_GRID();") != std::string_view::npos;
    EXPECT_EQ(calls, kernelWaitsForPriorGrid(file.text)) << file.name << ": some entries only";
    waiting += calls;
  }
  EXPECT_GE(waiting, 14u);
  for (const char *name : {"gemv_q8_0.cu", "gemv_float.cu", "rms_norm.cu", "rope.cu",
                           "mla_decode_split.cu", "moe_gate.cu", "elementwise.cu"})
    for (const EmbeddedKernelFile &file : embeddedKernelFiles())
      if (file.name == name)
        EXPECT_TRUE(kernelWaitsForPriorGrid(file.text)) << name;
  EXPECT_FALSE(
      kernelWaitsForPriorGrid("extern \"C\" __global__ void a() { KT_WAIT_FOR_PRIOR_GRID(); }\n"
                              "extern \"C\" __global__ void b() {}"));
  EXPECT_FALSE(kernelWaitsForPriorGrid("extern \"C\" __global__ void a() {}"));
}

// Decode GEMVs of few rows split each row's columns between warps (enough
// warps for the GPU); large matrices, token tiles and k-quants keep one warp
// a row; the grid and the block size agree with the split.
TEST(KernelCatalog, DecodeGemvsOfFewRowsSplitTheirColumns) {
  using gguf::GgmlType;
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 1536, 7168), 4u);  // q_a_proj
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 576, 7168), 8u);   // kv_a: 28 steps, 3.5 a warp
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 2048, 7168), 2u);  // shared gate
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 7168, 16384), 4u); // o_proj: 16 steps a warp
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 7168, 2048), 1u);  // shared down: 8 steps
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 24576, 1536), 1u); // q_b_proj: rows enough
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 18432, 7168), 2u); // dense gate: 28 steps
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 129280, 7168), 1u); // lm_head: warps enough
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 512, 128), 1u);    // k_b per head: too short
  EXPECT_EQ(gemvColumnSplit(GgmlType::F32, 256, 7168), 16u);   // the router
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 1536, 7168, kGemvPrefillTokenTile), 1u);
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q8_0, 1536, 7168, 1, GemvVariant::Grouped), 1u);
  // k-quants: a warp step is 4 super-blocks; rows per warp count too.
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q4_K, 1536, 7168), 4u); // 7 steps: 1.75 a warp
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q6_K, 576, 7168), 4u);
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q4_K, 7168, 16384), 4u);  // 2 rows a warp: 3584 warps
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q4_K, 7168, 2048), 1u);   // shared down: 2 steps
  EXPECT_EQ(gemvColumnSplit(GgmlType::Q4_K, 129280, 7168), 1u); // lm_head: 4 rows a warp
  for (auto [type, out, in] : {std::tuple{GgmlType::Q8_0, 1536, 7168},
                               {GgmlType::Q8_0, 7168, 16384},
                               {GgmlType::F32, 256, 7168},
                               {GgmlType::BF16, 1001, 7168},
                               {GgmlType::Q4_K, 1536, 7168},
                               {GgmlType::Q6_K, 4096, 7168}}) {
    SCOPED_TRACE(std::to_string(out) + "x" + std::to_string(in));
    const unsigned split = gemvColumnSplit(type, out, in);
    StatusOr<KernelSpec> spec = gemvSpec(type, out, in);
    ASSERT_TRUE(spec.ok()) << spec.message();
    EXPECT_EQ(spec->defines.count("K_SPLIT") ? spec->defines.at("K_SPLIT") : "1",
              std::to_string(split));
    const unsigned warpRowsPerBlock = unsigned(std::stoi(spec->defines.at("ROWS_PER_BLOCK")));
    const unsigned rowsPerWarp = spec->defines.count("ROWS_PER_WARP")
                                     ? unsigned(std::stoi(spec->defines.at("ROWS_PER_WARP")))
                                     : 1u;
    EXPECT_EQ(spec->blockThreads, 32 * warpRowsPerBlock * split);
    const unsigned rowsPerBlock = warpRowsPerBlock * rowsPerWarp;
    EXPECT_EQ(gemvGridBlocks(type, out, in), unsigned((out + rowsPerBlock - 1) / rowsPerBlock));
    // The fused gate and up kernel runs on the same grid as the plain one.
    StatusOr<KernelSpec> gateUp = gemvSpec(type, out, in, 1, GemvVariant::GateUp);
    ASSERT_TRUE(gateUp.ok()) << gateUp.message();
    EXPECT_EQ(gateUp->blockThreads, spec->blockThreads);
  }
}

} // namespace
} // namespace kt::cuda
