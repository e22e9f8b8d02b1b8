// The kt-gen-model command: options, errors and output.
#include "test/unit/generator/GeneratorTestUtil.h"

#include <csignal>

namespace kt::gen::test {
namespace {

using gguf::GgufModel;

TEST(GeneratorCli, TinyPresetWritesAModelAndASummary) {
  TempDir dir;
  std::string path = dir.file("tiny.gguf");
  CommandResult run = runGenerator("--preset tiny -o '" + path + "'");
  ASSERT_EQ(run.exitCode, 0) << run.output;
  EXPECT_NE(run.output.find("wrote " + path), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("52 tensors"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("parameters"), std::string::npos) << run.output;
  auto model = GgufModel::open(path);
  ASSERT_TRUE(model.ok()) << model.message();
  // "A few MB" for unit tests.
  EXPECT_LT(std::filesystem::file_size(path), 8'000'000u);
  // No temporary file is left behind.
  for (const auto &entry : std::filesystem::directory_iterator(dir.path()))
    EXPECT_EQ(entry.path().filename(), "tiny.gguf");
}

TEST(GeneratorCli, OptionsOverrideThePreset) {
  TempDir dir;
  std::string path = dir.file("custom.gguf");
  CommandResult run = runGenerator(
      "--preset tiny --layers 4 --dense-layers 2 --experts 8 --top-k 2 --groups 2 "
      "--groups-used 1 --heads 2 --q-lora-rank 0 --attention joint --gating softmax "
      "--type-experts q8_0 --type-norm f16 --seed 99 --yarn-factor 1 -q -o '" + path + "'");
  ASSERT_EQ(run.exitCode, 0) << run.output;
  EXPECT_TRUE(run.output.empty()) << "--quiet printed: " << run.output;
  auto model = GgufModel::open(path);
  ASSERT_TRUE(model.ok()) << model.message();
  const GgufModel &m = **model;
  EXPECT_EQ(m.find("deepseek2.block_count")->u, 4u);
  EXPECT_EQ(m.find("deepseek2.leading_dense_block_count")->u, 2u);
  EXPECT_EQ(m.find("deepseek2.expert_count")->u, 8u);
  EXPECT_EQ(m.find("deepseek2.expert_used_count")->u, 2u);
  EXPECT_EQ(m.find("deepseek2.expert_gating_func")->u, 1u);
  EXPECT_EQ(m.find("deepseek2.rope.scaling.type"), nullptr);
  EXPECT_NE(m.findTensor("blk.0.attn_q.weight"), nullptr);
  EXPECT_NE(m.findTensor("blk.0.attn_kv_b.weight"), nullptr);
  EXPECT_EQ(m.findTensor("blk.0.attn_k_b.weight"), nullptr);
  EXPECT_NE(m.findTensor("blk.1.ffn_up.weight"), nullptr);
  EXPECT_EQ(m.findTensor("blk.2.ffn_gate_exps.weight")->ne, (std::vector<int64_t>{256, 256, 8}));
  EXPECT_EQ(m.findTensor("blk.2.ffn_gate_exps.weight")->type, GgmlType::Q8_0);
  EXPECT_EQ(m.findTensor("blk.2.ffn_norm.weight")->type, GgmlType::F16);
  EXPECT_EQ(m.findTensor("blk.0.attn_q.weight")->ne, (std::vector<int64_t>{256, 2 * 48}));
}

TEST(GeneratorCli, ProgressBarGoesToStderrOnRequest) {
  TempDir dir;
  std::string path = dir.file("p.gguf");
  CommandResult run = runGenerator("--preset tiny --progress -o '" + path + "'", "2>&1 >/dev/null");
  ASSERT_EQ(run.exitCode, 0) << run.output;
  EXPECT_NE(run.output.find("] 100%"), std::string::npos) << run.output;
  EXPECT_EQ(run.output.find("wrote"), std::string::npos) << "the summary went to stderr";
}

TEST(GeneratorCli, DryRunListsTensorsAndWritesNothing) {
  TempDir dir;
  CommandResult run = runGenerator("--preset v3 --layers 5 --dry-run -o '" + dir.file("x.gguf") + "'");
  ASSERT_EQ(run.exitCode, 0) << run.output;
  EXPECT_NE(run.output.find("blk.4.ffn_down_exps.weight"), std::string::npos);
  EXPECT_NE(run.output.find("{2048, 7168, 256}"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir.file("x.gguf")));
}

struct ErrorCase {
  const char *arguments;
  const char *messagePart;
};
void PrintTo(const ErrorCase &c, std::ostream *os) { *os << c.arguments; }

class GeneratorCliErrors : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(GeneratorCliErrors, FailWithAClearMessage) {
  TempDir dir;
  std::string path = dir.file("bad.gguf");
  CommandResult run = runGenerator(std::string(GetParam().arguments) + " -o '" + path + "'");
  EXPECT_NE(run.exitCode, 0) << run.output;
  EXPECT_NE(run.output.find(GetParam().messagePart), std::string::npos)
      << "expected '" << GetParam().messagePart << "' in: " << run.output;
  EXPECT_FALSE(std::filesystem::exists(path));
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GeneratorCliErrors,
    ::testing::Values(
        ErrorCase{"--preset tiny --type-experts q4_x", "Unknown weight type 'q4_x' for --type-experts"},
        ErrorCase{"--preset tiny --type-attn iq2_xxs", "cannot quantize to that type"},
        ErrorCase{"--preset tiny --type-norm q8_0", "norm weights are stored as f32, f16 or bf16"},
        ErrorCase{"--preset tiny --experts 8 --experts-used 9 --groups 1 --groups-used 1",
                  "--experts-used (9) must not exceed --experts (8)"},
        ErrorCase{"--preset tiny --groups 3", "--groups (3) must divide --experts (16)"},
        ErrorCase{"--preset tiny --groups-used 5", "--groups-used (5) must not exceed --groups (4)"},
        ErrorCase{"--preset tiny --groups 8 --groups-used 1",
                  "leaves 2 experts to choose from, fewer than --experts-used (4)"},
        ErrorCase{"--preset tiny --dense-layers 4", "--dense-layers (4) must be between 0 and --layers (3)"},
        ErrorCase{"--preset tiny --qk-rope-dim 15", "must be even"},
        ErrorCase{"--preset tiny --hidden 0", "--hidden must be at least 1"},
        ErrorCase{"--preset tiny --shared-experts 0", "--shared-experts must be at least 1"},
        ErrorCase{"--preset huge", "Unknown preset 'huge'"},
        ErrorCase{"--preset tiny --attention fused", "Unknown --attention 'fused'"},
        ErrorCase{"--preset tiny --gating relu", "Unknown --gating 'relu'"},
        ErrorCase{"--preset tiny --vocab-size 100", "more than --vocab-size 100"},
        ErrorCase{"--preset tiny --split-count 2 --split-max-tensors 5",
                  "either --split-count or --split-max-tensors"},
        ErrorCase{"--preset tiny --tokenizer-json /nonexistent/tokenizer.json",
                  "/nonexistent/tokenizer.json"},
        ErrorCase{"--preset tiny --layers abc", "--layers"},
        ErrorCase{"--preset tiny --no-such-option", "no-such-option"}),
    [](const ::testing::TestParamInfo<ErrorCase> &param) {
      return "case" + std::to_string(param.index);
    });

TEST(GeneratorCli, MissingOutputIsAnError) {
  CommandResult run = runGenerator("--preset tiny");
  EXPECT_NE(run.exitCode, 0);
  EXPECT_NE(run.output.find("--output"), std::string::npos) << run.output;
}

TEST(GeneratorCli, UnwritableOutputIsReported) {
  TempDir dir;
  CommandResult run = runGenerator("--preset tiny -o '" + dir.file("missing/dir/x.gguf") + "'");
  EXPECT_EQ(run.exitCode, 1) << run.output;
  EXPECT_NE(run.output.find("missing/dir/x.gguf"), std::string::npos) << run.output;
}

TEST(GeneratorCli, InterruptedRunLeavesNoFile) {
  // A model big enough to take a while; SIGINT soon after the start.
  TempDir dir;
  std::string path = dir.file("big.gguf");
  std::string command = generatorBinary() +
                        " --preset v3 --layers 1 --dense-layers 1 -t 1 -q -o '" + path + "'";
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::execl("/bin/sh", "sh", "-c", ("exec " + command).c_str(), static_cast<char *>(nullptr));
    ::_exit(127);
  }
  // Wait until the temporary file exists, then interrupt.
  bool started = false;
  for (int i = 0; i < 200 && !started; ++i) {
    for (const auto &entry : std::filesystem::directory_iterator(dir.path()))
      started |= entry.path().filename().string().find(".tmp-") != std::string::npos;
    if (!started)
      ::usleep(50 * 1000);
  }
  ASSERT_TRUE(started) << "the generator never created its temporary file";
  ::kill(child, SIGINT);
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path())) << "files were left behind";
}

} // namespace
} // namespace kt::gen::test
