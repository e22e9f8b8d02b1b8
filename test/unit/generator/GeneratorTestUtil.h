// Helpers shared by the model generator tests.
#pragma once

#include "test/unit/common/RunCommand.h"
#include "test/unit/common/SharedData.h"
#include "test/unit/common/TempDir.h"

#include "runtime/gguf/GgufFile.h"
#include "runtime/quant/Quant.h"
#include "tools/kt-gen-model/ModelGenerator.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <unistd.h>
#include <vector>

namespace kt::gen::test {

namespace fs = std::filesystem;

using TempDir = ::kt::test::TempDir;

using ::kt::test::deepseekTokenizerJson;
using ::kt::test::sharedDataDir;

#define KT_REQUIRE_DEEPSEEK_TOKENIZER()                                                        \
  do {                                                                                         \
    if (!std::filesystem::exists(::kt::gen::test::deepseekTokenizerJson()))                    \
      GTEST_SKIP() << "DeepSeek-V3 tokenizer not found at "                                    \
                   << ::kt::gen::test::deepseekTokenizerJson()                                 \
                   << "; set KT_SHARED_DIR to the directory holding "                          \
                      "data/deepseek-v3-tokenizer/tokenizer.json";                             \
  } while (0)

inline ModelConfig tinyConfig() {
  StatusOr<ModelConfig> config = presetConfig("tiny");
  EXPECT_TRUE(config.ok());
  return *config;
}

// Plans and writes a model in-process; fails the test on error.
inline WriteResult writeTiny(const ModelConfig &config, const std::string &path,
                             WriteOptions options = {}) {
  StatusOr<ModelPlan> plan = planModel(config, builtinVocabulary());
  EXPECT_TRUE(plan.ok()) << (plan.ok() ? "" : plan.message());
  if (!plan.ok())
    return {};
  options.outputPath = path;
  StatusOr<WriteResult> result = writeModel(*plan, options);
  EXPECT_TRUE(result.ok()) << (result.ok() ? "" : result.message());
  return result.ok() ? *result : WriteResult{};
}

inline std::vector<uint8_t> readBytes(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// All values of a tensor, dequantized to f32.
inline std::vector<float> dequantizeTensor(const gguf::TensorInfo &tensor) {
  std::vector<float> values(static_cast<size_t>(tensor.elements()));
  Status status = quant::dequantize(tensor.type, tensor.data, values.data(), tensor.elements());
  EXPECT_TRUE(status.ok()) << tensor.name << ": " << (status.ok() ? "" : status.message());
  return values;
}

struct Moments {
  double mean = 0;
  double stddev = 0;
};

inline Moments moments(const std::vector<float> &values) {
  double sum = 0, squares = 0;
  for (float v : values) {
    sum += v;
    squares += double(v) * v;
  }
  Moments m;
  m.mean = sum / values.size();
  m.stddev = std::sqrt(std::max(0.0, squares / values.size() - m.mean * m.mean));
  return m;
}

using kt::test::CommandResult;

inline std::string generatorBinary() { return std::string(KT_BINARY_DIR) + "/bin/kt-gen-model"; }

// Runs kt-gen-model with `arguments` (already shell-quoted where needed);
// `redirect` decides what the result's output captures.
inline CommandResult runGenerator(const std::string &arguments,
                                  const std::string &redirect = "2>&1") {
  return kt::test::runCommand(generatorBinary() + " " + arguments + " " + redirect);
}

} // namespace kt::gen::test
