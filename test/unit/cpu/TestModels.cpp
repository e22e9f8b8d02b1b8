#include "test/unit/cpu/TestModels.h"

#include "tools/kt-gen-model/Vocabulary.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unistd.h>

namespace kt::cpu::test {

namespace fs = std::filesystem;

namespace {

// One directory per test process, removed when the tests end.
class TempDirEnvironment : public ::testing::Environment {
public:
  static const fs::path &path() {
    static const fs::path dir = [] {
      fs::path p = fs::temp_directory_path() / ("kt-cpu-tests-" + std::to_string(getpid()));
      fs::create_directories(p);
      return p;
    }();
    return dir;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(path(), ignored);
  }
};

[[maybe_unused]] ::testing::Environment *const gTempDir =
    ::testing::AddGlobalTestEnvironment(new TempDirEnvironment);

std::string ktcPath() { return std::string(KT_TOOLS_DIR) + "/ktc"; }

} // namespace

bool haveCompiler() { return fs::exists(ktcPath()); }

gen::ModelConfig tinyF32Config() {
  gen::ModelConfig config = *gen::presetConfig("tiny");
  for (gguf::GgmlType *type : {&config.types.embedding, &config.types.output,
                               &config.types.attention, &config.types.dense,
                               &config.types.sharedExperts, &config.types.experts})
    *type = gguf::GgmlType::F32;
  return config;
}

void buildModel(const std::string &name, const gen::ModelConfig &config, TestModel &out,
                const std::string &rules, const std::string &targetGpu,
                const std::string &extraFlags) {
  const fs::path dir = TempDirEnvironment::path();
  out.ggufPath = (dir / (name + ".gguf")).string();
  out.planPath = (dir / (name + ".plan")).string();

  StatusOr<gen::ModelPlan> modelPlan = gen::planModel(config, gen::builtinVocabulary());
  ASSERT_TRUE(modelPlan.ok()) << modelPlan.message();
  gen::WriteOptions write;
  write.outputPath = out.ggufPath;
  write.threads = 2;
  StatusOr<gen::WriteResult> written = gen::writeModel(*modelPlan, write);
  ASSERT_TRUE(written.ok()) << written.message();

  const std::string log = (dir / (name + ".ktc.log")).string();
  const std::string command = "'" + ktcPath() + "' compile --gguf-path '" + out.ggufPath +
                              "' --optimize-config-path '" + std::string(KT_SOURCE_DIR) + "/" +
                              rules + "' --target-gpu " + targetGpu + " " + extraFlags + " -o '" + out.planPath +
                              "' > '" + log + "' 2>&1";
  int status = std::system(command.c_str());
  std::ifstream logFile(log);
  std::stringstream logText;
  logText << logFile.rdbuf();
  ASSERT_EQ(status, 0) << command << "\n" << logText.str();

  StatusOr<std::unique_ptr<gguf::GgufModel>> model = gguf::GgufModel::open(out.ggufPath);
  ASSERT_TRUE(model.ok()) << model.message();
  out.model = std::move(*model);
  StatusOr<plan::Plan> plan = plan::readPlan(out.planPath);
  ASSERT_TRUE(plan.ok()) << plan.message();
  out.plan = std::move(*plan);
}

std::unique_ptr<CpuExecutor> makeExecutor(const TestModel &m, ExecutorOptions options) {
  if (options.threads == 0)
    options.threads = 2;
  StatusOr<std::unique_ptr<CpuExecutor>> executor =
      CpuExecutor::create(m.plan, *m.model, options);
  EXPECT_TRUE(executor.ok()) << executor.message();
  return executor.ok() ? std::move(*executor) : nullptr;
}

double relativeL2(const std::vector<float> &a, const std::vector<float> &b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    norm += double(b[i]) * b[i];
  }
  return std::sqrt(diff / norm);
}

std::vector<int32_t> sampleTokens(size_t count, uint32_t seed) {
  std::vector<int32_t> tokens(count);
  uint32_t state = seed * 2654435761u + 12345u;
  for (int32_t &t : tokens) {
    state = state * 1664525u + 1013904223u;
    t = static_cast<int32_t>((state >> 8) % 400u);
  }
  return tokens;
}

} // namespace kt::cpu::test
