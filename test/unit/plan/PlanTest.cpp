#include "runtime/plan/Plan.h"

#include "runtime/gguf/GgufWriter.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

namespace kt::plan {
namespace {

namespace fs = std::filesystem;

Plan samplePlan() {
  Plan plan;
  plan.compiler = "ktc test";
  plan.model.path = "/models/tiny.gguf";
  plan.model.architecture = "deepseek2";
  plan.model.name = "tiny";
  plan.model.files = {{"/models/tiny.gguf", 12345}};
  plan.model.tensorBytes = 9999;
  plan.model.fingerprint = "00112233445566778899aabbccddeeff";
  plan.target.cpu = "sapphirerapids";
  plan.target.cpuFeatures = {"amx-tile", "avx512f"};
  plan.target.cores = 16;
  plan.target.gpus = {{"sm_90a", 85899345920ull}};
  plan.memory = {{"cpu", 10, 0, 5, 2, 17, std::nullopt}, {"cuda:0", 1, 2, 3, 4, 10, 1000, 512}};
  Op embed;
  embed.kind = "embedding";
  embed.path = "model.embed_tokens";
  embed.inputs = {0};
  embed.outputs = {1};
  embed.prefillDevice = embed.decodeDevice = "cuda:0";
  embed.op = "embedding";
  embed.rule = "rules/x.yaml:3:3";
  embed.weights = {{"weight", "token_embd.weight", "q8_0", {256, 408}, 110976}};
  embed.kernels = {{"prefill", "embedding.cuda"}, {"decode", "embedding.cuda"},
                   {"q_a_proj.decode", "linear.quant.gemv_q8_0"}};
  Op norm;
  norm.kind = "rms_norm";
  norm.path = "model.norm";
  norm.inputs = {1};
  norm.outputs = {2};
  norm.prefillDevice = "cuda:0";
  norm.decodeDevice = "cpu";
  norm.outDevice = "cuda:0";
  norm.op = "rms_norm";
  norm.params = {{"eps", 1e-6}, {"num_heads", int64_t{128}}, {"scoring_func", std::string("sigmoid")},
                 {"norm_topk_prob", true}};
  plan.ops = {embed, norm};
  plan.outputValue = 2;
  plan.buffers = {{0, "i32", 1, "host", "host"},
                  {1, "f32", 256, "cuda:0", "cuda:0"},
                  {2, "f32", 256, "cuda:0", "cpu"}};
  plan.kernelSpecializations = {{"rms_norm", "rms_norm.cu", {{"EPS", "1e-06f"}, {"HIDDEN", "7168"}},
                                 "sm_90a", "00112233445566778899aabbccddeeff", {"model.norm"}}};
  plan.defaults.cacheLens = 8192;
  plan.defaults.chunkSize = 256;
  return plan;
}

void expectSamePlan(const Plan &a, const Plan &b) {
  // The JSON form covers every field; comparing it compares the plans.
  EXPECT_EQ(planToJson(a), planToJson(b));
}

TEST(PlanTest, RoundTripsThroughJson) {
  Plan plan = samplePlan();
  StatusOr<Plan> back = planFromJson(planToJson(plan), "sample.plan");
  ASSERT_TRUE(back.ok()) << back.message();
  expectSamePlan(plan, *back);
  EXPECT_EQ(back->ops[1].params.at("num_heads"), Param(int64_t{128}));
  EXPECT_EQ(back->ops[1].params.at("eps"), Param(1e-6));
  EXPECT_EQ(back->ops[1].params.at("norm_topk_prob"), Param(true));
  EXPECT_EQ(back->memory[1].budget, 1000u);
  EXPECT_EQ(back->memory[1].expertCache, 512u);
  EXPECT_EQ(back->memory[0].expertCache, 0u);
  EXPECT_EQ(back->ops[0].kernels.at("q_a_proj.decode"), "linear.quant.gemv_q8_0");
  ASSERT_EQ(back->buffers.size(), 3u);
  EXPECT_EQ(back->buffers[2].decodeDevice, "cpu");
  EXPECT_EQ(back->buffers[1].width, 256);
  ASSERT_EQ(back->kernelSpecializations.size(), 1u);
  EXPECT_EQ(back->kernelSpecializations[0].defines.at("HIDDEN"), "7168");
  EXPECT_EQ(back->kernelSpecializations[0].usedBy, std::vector<std::string>{"model.norm"});
  EXPECT_FALSE(back->memory[0].budget.has_value());
}

// The optional sections: CPU expert code and the FP8 checkpoint.
TEST(PlanTest, RoundTripsCpuCodeAndFp8Checkpoint) {
  Plan plan = samplePlan();
  EXPECT_FALSE(planFromJson(planToJson(plan), "p")->cpuCode.has_value());
  EXPECT_FALSE(planFromJson(planToJson(plan), "p")->model.fp8.has_value());
  plan.cpuCode = CpuCode{"tiny.cpu.so", 17384, "0123456789abcdef", "sapphirerapids",
                         {"avx2", "avx512vnni"}, 512,
                         {{"q4_K", 7168, "kt_rows_q4_K_7168", "q8"}, {"q8_0", 96, "kt_rows_q8_0_96", "f32"}}};
  plan.model.fp8 = Fp8Checkpoint{"/models/fp8", {{"/models/fp8/model-00001-of-00002.safetensors", 10}},
                                 "ffeeddccbbaa99887766554433221100"};
  StatusOr<Plan> back = planFromJson(planToJson(plan), "sample.plan");
  ASSERT_TRUE(back.ok()) << back.message();
  expectSamePlan(plan, *back);
  ASSERT_TRUE(back->cpuCode.has_value());
  EXPECT_EQ(back->cpuCode->kernels[0].input, "q8");
  EXPECT_EQ(back->cpuCode->kernels[1].cols, 96);
  EXPECT_EQ(back->cpuCode->vectorBits, 512);
  ASSERT_TRUE(back->model.fp8.has_value());
  EXPECT_EQ(back->model.fp8->files[0].size, 10u);
  EXPECT_EQ(back->model.fp8->fingerprint, "ffeeddccbbaa99887766554433221100");
}

TEST(PlanTest, RoundTripsThroughAFile) {
  fs::path dir = fs::path(KT_BINARY_DIR) / "test-tmp" / ("plan-" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::string path = (dir / "model.plan").string();
  ASSERT_TRUE(writePlan(samplePlan(), path).ok());
  StatusOr<Plan> back = readPlan(path);
  ASSERT_TRUE(back.ok()) << back.message();
  expectSamePlan(samplePlan(), *back);
  for (const auto &entry : fs::directory_iterator(dir))
    EXPECT_EQ(entry.path().filename(), "model.plan") << "temp file left behind";
  fs::remove_all(dir);
}

TEST(PlanTest, RefusesOtherVersions) {
  Plan plan = samplePlan();
  plan.version = kPlanFormatVersion + 1;
  StatusOr<Plan> back = planFromJson(planToJson(plan), "new.plan");
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.message().find("new.plan: the plan has format version " +
                                std::to_string(kPlanFormatVersion + 1)),
            std::string::npos)
      << back.message();
  EXPECT_NE(back.message().find("recompile"), std::string::npos);
}

TEST(PlanTest, RefusesFilesThatAreNotPlans) {
  for (const char *text : {"", "{", "[1,2]", "{\"format\": \"other\", \"version\": 1}",
                           "{\"format\": \"ktc-plan\"}"}) {
    StatusOr<Plan> back = planFromJson(text, "x.plan");
    ASSERT_FALSE(back.ok()) << text;
    EXPECT_EQ(back.message().rfind("x.plan: ", 0), 0u) << back.message();
  }
}

TEST(PlanTest, NamesTheDamagedField) {
  std::string text = planToJson(samplePlan());
  std::string damaged = text;
  damaged.replace(damaged.find("\"path\": \"model.norm\""), 20, "\"path\": 7");
  StatusOr<Plan> back = planFromJson(damaged, "d.plan");
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.message().find("field 'ops[1].path' has the wrong type"), std::string::npos)
      << back.message();

  damaged = text;
  damaged.replace(damaged.find("\"tensor_bytes\""), 14, "\"tensor_bytez\"");
  back = planFromJson(damaged, "d.plan");
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.message().find("field 'model.tensor_bytes' is missing"), std::string::npos)
      << back.message();
}

TEST(PlanTest, RefusesValuesUsedBeforeDefinition) {
  Plan plan = samplePlan();
  plan.ops[0].inputs = {2};
  StatusOr<Plan> back = planFromJson(planToJson(plan), "v.plan");
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.message().find("reads value 2 before it is defined"), std::string::npos)
      << back.message();
}

TEST(PlanTest, RefusesBuffersThatDoNotMatchTheValues) {
  Plan plan = samplePlan();
  plan.buffers.pop_back();
  StatusOr<Plan> back = planFromJson(planToJson(plan), "b.plan");
  ASSERT_FALSE(back.ok());
  EXPECT_NE(back.message().find("buffers do not match its values"), std::string::npos)
      << back.message();
}

TEST(PlanTest, FingerprintFollowsTheModel) {
  fs::path dir = fs::path(KT_BINARY_DIR) / "test-tmp" / ("fingerprint-" + std::to_string(getpid()));
  fs::create_directories(dir);
  auto write = [&](const std::string &name, float value, uint8_t fill = 0) {
    gguf::GgufWriter writer;
    writer.addString("general.architecture", "deepseek2");
    writer.addFloat32("test.value", value);
    std::vector<uint8_t> bytes(64 * sizeof(float), fill);
    writer.addTensor("t", {64}, gguf::GgmlType::F32, bytes);
    std::string path = (dir / name).string();
    EXPECT_TRUE(writer.write(path).ok());
    return path;
  };
  std::string a = write("a.gguf", 1.0f), b = write("b.gguf", 2.0f), a2 = write("a2.gguf", 1.0f),
              c = write("c.gguf", 1.0f, 7);
  auto modelA = gguf::GgufModel::open(a), modelB = gguf::GgufModel::open(b),
       modelA2 = gguf::GgufModel::open(a2);
  ASSERT_TRUE(modelA.ok() && modelB.ok() && modelA2.ok());
  StatusOr<std::string> fa = modelFingerprint(**modelA), fb = modelFingerprint(**modelB),
                        fa2 = modelFingerprint(**modelA2);
  ASSERT_TRUE(fa.ok() && fb.ok() && fa2.ok());
  EXPECT_EQ(fa->size(), 32u);
  EXPECT_EQ(*fa, *fa2) << "same content, same fingerprint";
  EXPECT_NE(*fa, *fb) << "a metadata change must change the fingerprint";
  auto modelC = gguf::GgufModel::open(c);
  ASSERT_TRUE(modelC.ok());
  StatusOr<std::string> fc = modelFingerprint(**modelC);
  ASSERT_TRUE(fc.ok());
  EXPECT_NE(*fa, *fc) << "other weights under the same header must change the fingerprint";

  Plan plan = samplePlan();
  plan.model = describeModel(**modelA, a);
  plan.model.fingerprint = *fa;
  EXPECT_TRUE(checkModelMatches(plan, **modelA2).ok());
  Status mismatch = checkModelMatches(plan, **modelB);
  ASSERT_FALSE(mismatch.ok());
  EXPECT_NE(mismatch.message().find("not the one the plan was compiled for"), std::string::npos);
  fs::remove_all(dir);
}

} // namespace
} // namespace kt::plan
