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

// Whether the build has ktc (it needs the MLIR half of the project).
bool haveCompiler();

std::unique_ptr<CpuExecutor> makeExecutor(const TestModel &m, ExecutorOptions options = {});

// |a - b| / |b| over two vectors of equal length.
double relativeL2(const std::vector<float> &a, const std::vector<float> &b);

// Token ids inside the tiny vocabulary, varied.
std::vector<int32_t> sampleTokens(size_t count, uint32_t seed = 1);

} // namespace kt::cpu::test

#define KT_REQUIRE_COMPILER()                                                                 \
  do {                                                                                        \
    if (!::kt::cpu::test::haveCompiler())                                                     \
      GTEST_SKIP() << "ktc is not built (configure with the compiler enabled)";               \
  } while (0)
