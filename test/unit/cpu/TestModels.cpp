#include "test/unit/cpu/TestModels.h"

#include "runtime/gguf/GgufWriter.h"
#include "runtime/quant/Quant.h"
#include "tools/kt-gen-model/Vocabulary.h"

#include <cmath>
#include <cstring>
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

  compilePlan("--gguf-path '" + out.ggufPath + "'", out.planPath, rules, targetGpu, extraFlags);
  if (::testing::Test::HasFatalFailure())
    return;

  StatusOr<std::unique_ptr<gguf::GgufModel>> model = gguf::GgufModel::open(out.ggufPath);
  ASSERT_TRUE(model.ok()) << model.message();
  out.model = std::move(*model);
  StatusOr<plan::Plan> plan = plan::readPlan(out.planPath);
  ASSERT_TRUE(plan.ok()) << plan.message();
  out.plan = std::move(*plan);
}

std::string testDirectory() { return TempDirEnvironment::path().string(); }

void compilePlan(const std::string &modelFlags, const std::string &planPath,
                 const std::string &rules, const std::string &targetGpu,
                 const std::string &extraFlags) {
  const std::string log = planPath + ".ktc.log";
  const std::string command = "'" + ktcPath() + "' compile " + modelFlags +
                              " --optimize-config-path '" +
                              (rules.rfind('/', 0) == 0 ? rules
                                                        : std::string(KT_SOURCE_DIR) + "/" + rules) +
                              "' --target-gpu " + targetGpu + " " + extraFlags + " -o '" +
                              planPath + "' > '" + log + "' 2>&1";
  int status = std::system(command.c_str());
  std::ifstream logFile(log);
  std::stringstream logText;
  logText << logFile.rdbuf();
  ASSERT_EQ(status, 0) << command << "\n" << logText.str();
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

std::vector<float> checkpointTensorValues(const gguf::TensorInfo &tensor) {
  std::vector<float> values(static_cast<size_t>(tensor.elements()));
  if (!tensor.fp8) {
    EXPECT_TRUE(quant::dequantize(tensor.type, tensor.data, values.data(), tensor.elements()).ok());
    return values;
  }
  const int64_t cols = tensor.ne[0], rows = tensor.ne[1], block = gguf::BlockScaledFp8::kBlock;
  for (size_t slice = 0; slice < tensor.fp8->values.size(); ++slice)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        values[(slice * size_t(rows) + size_t(r)) * size_t(cols) + size_t(c)] =
            quant::fp8E4m3ToFloat(tensor.fp8->values[slice][r * cols + c]) *
            tensor.fp8->scales[slice][(r / block) * ((cols + block - 1) / block) + c / block];
  return values;
}

std::string writeCheckpointAsGguf(const gguf::GgufModel &view, const std::string &path,
                                  CheckpointWeights weights) {
  gguf::GgufWriter writer;
  for (const gguf::KeyValue &entry : view.metadata())
    writer.addValue(entry.key, entry.value);
  for (const gguf::TensorInfo &tensor : view.tensors()) {
    std::vector<float> values = checkpointTensorValues(tensor);
    const bool f32Expert = weights == CheckpointWeights::Q8_0CopiesF32Experts && tensor.fp8 &&
                           tensor.ne.size() == 3;
    if (weights != CheckpointWeights::ExactF32 && tensor.fp8 && !f32Expert) {
      std::vector<uint8_t> bytes(values.size() / 32 * 34);
      EXPECT_TRUE(quant::quantize(gguf::GgmlType::Q8_0, values.data(), bytes.data(),
                                  int64_t(values.size()))
                      .ok());
      writer.addTensor(tensor.name, tensor.ne, gguf::GgmlType::Q8_0, std::move(bytes));
    } else if (weights != CheckpointWeights::ExactF32 && !f32Expert) {
      writer.addTensor(tensor.name, tensor.ne, tensor.type,
                       std::vector<uint8_t>(tensor.data, tensor.data + tensor.nbytes));
    } else {
      std::vector<uint8_t> bytes(values.size() * sizeof(float));
      std::memcpy(bytes.data(), values.data(), bytes.size());
      writer.addTensor(tensor.name, tensor.ne, gguf::GgmlType::F32, std::move(bytes));
    }
  }
  Status status = writer.write(path);
  EXPECT_TRUE(status.ok()) << status.message();
  return path;
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
