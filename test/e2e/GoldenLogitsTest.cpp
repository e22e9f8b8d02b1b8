// The execution paths against Hugging Face transformers: for every fixture
// in test/golden/fixtures, regenerate the case's model, compile a CPU plan
// (and, where the host has a GPU, a plan with the default GPU placement),
// and compare the logits of every prompt position, 32 greedy tokens and the
// decode logits with the reference (test/golden/README.md).
#include "runtime/cuda/DeviceQuery.h"
#include "runtime/exec/CreateExecutor.h"
#include "runtime/plan/Plan.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace kt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string run(const std::string &command) {
  std::string output;
  FILE *pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe)
    return "popen failed";
  char buffer[4096];
  while (size_t n = fread(buffer, 1, sizeof buffer, pipe))
    output.append(buffer, n);
  int status = pclose(pipe);
  return status == 0 ? std::string() : "`" + command + "` failed: " + output;
}

std::string sha256(const fs::path &file) {
  FILE *pipe = popen(("sha256sum '" + file.string() + "'").c_str(), "r");
  char buffer[65] = {0};
  size_t n = pipe ? fread(buffer, 1, 64, pipe) : 0;
  if (pipe)
    pclose(pipe);
  return std::string(buffer, n);
}

// Matrices are stored as JSON text inside the fixture (compact, 8 digits).
std::vector<std::vector<double>> matrix(const json &field) {
  json parsed = field.is_string() ? json::parse(field.get<std::string>()) : field;
  return parsed.get<std::vector<std::vector<double>>>();
}

double relativeL2(const std::vector<float> &actual, const std::vector<double> &expected) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    double d = actual[i] - expected[i];
    diff += d * d;
    norm += expected[i] * expected[i];
  }
  return std::sqrt(diff / norm);
}

int32_t argmax(const float *logits, int64_t vocab) {
  return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
}

std::vector<fs::path> fixtures() {
  std::vector<fs::path> files;
  for (const auto &entry : fs::directory_iterator(fs::path(KT_SOURCE_DIR) / "test/golden/fixtures"))
    if (entry.path().extension() == ".json")
      files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

// The first GPU as ktc's --target-gpu names it, empty without one.
std::string hostGpu() {
  std::string whyNone;
  std::vector<cuda::GpuInfo> gpus = cuda::queryGpus(whyNone);
  return gpus.empty() ? std::string() : gpus[0].arch() + ":" +
                                            std::to_string(gpus[0].totalMemory >> 30) + "GiB";
}

// Runs one fixture on a CPU plan (gpu empty) or a GPU plan for `gpu`.
void checkFixture(const fs::path &fixturePath, const std::string &gpu) {
  std::ifstream in(fixturePath);
  json fixture = json::parse(in);
  std::string name = fixture["case"].get<std::string>();
  fs::path dir = fs::path(KT_BINARY_DIR) / "test-tmp" /
                 ("golden-" + std::string(gpu.empty() ? "cpu-" : "gpu-") +
                  std::to_string(getpid()));
  fs::create_directories(dir);
  fs::path model = dir / (name + ".gguf"), planPath = dir / (name + ".plan");

  // The case's model, exactly as the fixture was made from it.
  std::string generate = fixture["kt_gen_model"].get<std::string>();
  ASSERT_EQ(generate.rfind("kt-gen-model ", 0), 0u) << generate;
  std::string error = run(std::string(KT_TOOLS_DIR) + "/" + generate + " -q -o '" +
                          model.string() + "'");
  ASSERT_EQ(error, "");
  ASSERT_EQ(sha256(model), fixture["gguf_sha256"].get<std::string>())
      << "kt-gen-model no longer writes the bytes this fixture was made from; remake the "
         "fixtures as test/golden/README.md says";
  const std::string rules = gpu.empty() ? "DeepSeek-V3-Chat-cpu-only.yaml" : "DeepSeek-V3-Chat.yaml";
  error = run(std::string(KT_TOOLS_DIR) + "/ktc compile --gguf-path '" + model.string() +
              "' --optimize-config-path '" + KT_SOURCE_DIR + "/rules/" + rules +
              "' --target-gpu " + (gpu.empty() ? "none" : gpu) + " -o '" + planPath.string() +
              "'");
  ASSERT_EQ(error, "");

  StatusOr<plan::Plan> plan = plan::readPlan(planPath.string());
  ASSERT_TRUE(plan.ok()) << plan.message();
  StatusOr<std::unique_ptr<gguf::GgufModel>> weights = gguf::GgufModel::open(model.string());
  ASSERT_TRUE(weights.ok()) << weights.message();
  exec::ExecutorOptions options;
  options.threads = 2;
  StatusOr<std::unique_ptr<exec::Executor>> executor =
      exec::createExecutor(*plan, **weights, options);
  ASSERT_TRUE(executor.ok()) << executor.message();
  ASSERT_EQ((*executor)->deviceDescription() == "cpu", gpu.empty());
  int64_t vocab = (*executor)->vocabSize();
  // Quantized experts of a type the generator covers run generated code,
  // so these fixtures check it end to end.
  const int generatedLayers = (*executor)->generatedExpertLayers();
  if (plan->cpuCode)
    EXPECT_GT(generatedLayers, 0) << "the plan has CPU expert code but no layer uses it";
  double tolerance = fixture["tolerance"]["logits_rel_l2"].get<double>();

  for (const json &prompt : fixture["prompts"]) {
    SCOPED_TRACE(name + " / " + prompt["name"].get<std::string>());
    (*executor)->reset();
    std::vector<int32_t> ids = prompt["token_ids"].get<std::vector<int32_t>>();
    StatusOr<std::vector<float>> logits = (*executor)->forward(ids, /*allPositions=*/true);
    ASSERT_TRUE(logits.ok()) << logits.message();
    std::vector<std::vector<double>> expected = matrix(prompt["prompt_logits"]);
    ASSERT_EQ(expected.size(), ids.size());
    std::vector<double> flat;
    for (const auto &row : expected)
      flat.insert(flat.end(), row.begin(), row.end());
    ASSERT_EQ(static_cast<int64_t>(flat.size()), static_cast<int64_t>(ids.size()) * vocab);
    double promptError = relativeL2(*logits, flat);
    EXPECT_LE(promptError, tolerance) << "prompt logits, relative L2";

    // Greedy decoding with the cache, decode logits at the recorded steps.
    std::vector<int32_t> greedy = prompt["greedy_tokens"].get<std::vector<int32_t>>();
    std::vector<int64_t> steps = prompt["decode_steps"].get<std::vector<int64_t>>();
    std::vector<std::vector<double>> decodeExpected = matrix(prompt["decode_logits"]);
    std::vector<int32_t> produced = {argmax(logits->data() + (ids.size() - 1) * vocab, vocab)};
    double worstDecode = 0;
    for (size_t step = 1; step < greedy.size(); ++step) {
      // Feed the reference's token so one early flip does not hide later checks.
      StatusOr<std::vector<float>> next = (*executor)->forward({greedy[step - 1]});
      ASSERT_TRUE(next.ok()) << next.message();
      produced.push_back(argmax(next->data(), vocab));
      auto at = std::find(steps.begin(), steps.end(), static_cast<int64_t>(step));
      if (at != steps.end())
        worstDecode = std::max(worstDecode,
                               relativeL2(*next, decodeExpected[at - steps.begin()]));
    }
    EXPECT_EQ(produced, greedy) << "greedy tokens";
    EXPECT_LE(worstDecode, tolerance) << "decode logits, relative L2";
    std::printf("[ golden   ] %s %s/%s: prompt logits rel L2 %.2e, decode %.2e (limit %.0e), "
                "%zu greedy tokens %s; experts: %s\n",
                gpu.empty() ? "cpu" : "gpu", name.c_str(),
                prompt["name"].get<std::string>().c_str(), promptError,
                worstDecode, tolerance, greedy.size(), produced == greedy ? "identical" : "DIFFER",
                generatedLayers ? "generated code" : "reference kernels");
  }
  fs::remove_all(dir);
}

class GoldenLogits : public ::testing::TestWithParam<fs::path> {};

TEST_P(GoldenLogits, CpuPlanMatchesTransformers) { checkFixture(GetParam(), ""); }

// Attention, dense layers, shared experts, gate and lm_head on the GPU,
// routed experts on the CPU.
TEST_P(GoldenLogits, GpuPlanMatchesTransformers) {
  const std::string gpu = hostGpu();
  if (gpu.empty())
    GTEST_SKIP() << "no GPU on this host";
  checkFixture(GetParam(), gpu);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenLogits, ::testing::ValuesIn(fixtures()),
                         [](const ::testing::TestParamInfo<fs::path> &info) {
                           std::string name = info.param.stem().string();
                           for (char &c : name)
                             if (!isalnum(static_cast<unsigned char>(c)))
                               c = '_';
                           return name;
                         });

} // namespace
} // namespace kt
