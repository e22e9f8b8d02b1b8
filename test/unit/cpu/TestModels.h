// Generated models and their CPU plans for the executor tests.
#pragma once

#include "runtime/cpu/CpuExecutor.h"
#include "runtime/gguf/GgufFile.h"
#include "runtime/plan/Plan.h"
#include "tools/kt-gen-model/ModelGenerator.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace kt::cpu::test {

// The tiny preset with f32 weights: small enough for many runs per test.
gen::ModelConfig tinyF32Config();

struct TestModel {
  std::string ggufPath, planPath;
  std::unique_ptr<gguf::GgufModel> model;
  plan::Plan plan;
};

// Writes `config` as `name`.gguf in the test's temporary directory and
// compiles it with the build's ktc (`rules` relative to the source tree,
// `targetGpu` as ktc's --target-gpu, `extraFlags` appended). Fails the test (fatally) on error.
void buildModel(const std::string &name, const gen::ModelConfig &config, TestModel &out,
                const std::string &rules = "rules/DeepSeek-V3-Chat-cpu-only.yaml",
                const std::string &targetGpu = "none", const std::string &extraFlags = "");

// Compiles with the build's ktc: `modelFlags` names the model ("--gguf-path
// X" or "--fp8-path X"); `rules` relative to the source tree, or absolute.
// Fails the test (fatally) on error.
void compilePlan(const std::string &modelFlags, const std::string &planPath,
                 const std::string &rules = "rules/DeepSeek-V3-Chat-cpu-only.yaml",
                 const std::string &targetGpu = "none", const std::string &extraFlags = "");

// The test process's temporary directory (removed when the tests end).
std::string testDirectory();

// Whether the build has ktc (it needs the MLIR half of the project).
bool haveCompiler();

std::unique_ptr<CpuExecutor> makeExecutor(const TestModel &m, ExecutorOptions options = {});

// |a - b| / |b| over two vectors of equal length.
double relativeL2(const std::vector<float> &a, const std::vector<float> &b);

// The exact values of a checkpoint view's tensor (runtime/model/
// CheckpointModel.h): e4m3 times its block scale, or the stored BF16/F32.
std::vector<float> checkpointTensorValues(const gguf::TensorInfo &tensor);

// A checkpoint view written as a GGUF file with its keys: every tensor in
// f32 (its exact values), or the e4m3 ones as GGML's q8_0 of their values
// and the rest as stored (what the executors make of them on the CPU), or
// that with the routed experts in f32 (what GPU FP8 experts compute).
// Returns `path`.
enum class CheckpointWeights { ExactF32, Q8_0Copies, Q8_0CopiesF32Experts };
std::string writeCheckpointAsGguf(const gguf::GgufModel &view, const std::string &path,
                                  CheckpointWeights weights);

// Token ids inside the tiny vocabulary, varied.
std::vector<int32_t> sampleTokens(size_t count, uint32_t seed = 1);

} // namespace kt::cpu::test

#define KT_REQUIRE_COMPILER()                                                                 \
  do {                                                                                        \
    if (!::kt::cpu::test::haveCompiler())                                                     \
      GTEST_SKIP() << "ktc is not built (configure with the compiler enabled)";               \
  } while (0)
