#include "runtime/cpu/IsaVariants.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

namespace kt::cpu {
namespace {

plan::Plan planWith(const std::string &device, const std::string &kernel) {
  plan::Plan plan;
  plan.target.cpu = "sapphirerapids";
  plan::Op op;
  op.kind = "routed_experts";
  op.path = "model.layers.3.mlp.experts";
  op.prefillDevice = op.decodeDevice = device;
  op.kernels = {{"prefill", kernel}, {"decode", kernel}};
  plan.ops.push_back(op);
  return plan;
}

TEST(IsaVariants, BestFirstAndKnownFeatures) {
  ASSERT_EQ(isaVariants().front().name, "amx");
  EXPECT_EQ(isaVariants().back().name, "generic");
  EXPECT_TRUE(isaVariants().back().features.empty());
  ASSERT_NE(findIsaVariant("avx512_vnni"), nullptr);
  EXPECT_EQ(findIsaVariant("avx512_vnni")->features,
            (std::vector<std::string>{"avx512f", "avx512bw", "avx512vnni"}));
  EXPECT_EQ(findIsaVariant("cuda"), nullptr);
}

TEST(IsaVariants, RefusesAHostWithoutTheKernelsFeature) {
  std::vector<std::string> host = {"avx2", "fma", "f16c", "avx512f", "avx512bw",
                                   "amx-tile", "amx-bf16"};
  Status status = checkHostRunsPlan(planWith("cpu", "routed_experts.quant.amx"), host, "p.plan");
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("p.plan: module 'model.layers.3.mlp.experts' runs the CPU "
                                  "kernel 'routed_experts.quant.amx' chosen for the target CPU "
                                  "sapphirerapids, which needs amx-int8; this host lacks it"),
            std::string::npos)
      << status.message();
  host.push_back("amx-int8");
  EXPECT_TRUE(checkHostRunsPlan(planWith("cpu", "routed_experts.quant.amx"), host, "p").ok());
}

TEST(IsaVariants, GpuOpsAndGenericKernelsNeedNothing) {
  std::vector<std::string> none;
  EXPECT_TRUE(checkHostRunsPlan(planWith("cuda:0", "routed_experts.quant.amx"), none, "p").ok());
  EXPECT_TRUE(checkHostRunsPlan(planWith("cpu", "routed_experts.quant.generic"), none, "p").ok());
  EXPECT_FALSE(checkHostRunsPlan(planWith("cpu", "rms_norm.avx2"), none, "p").ok());
}

TEST(IsaVariants, EnvironmentStandsForAnotherHost) {
  ::setenv("KT_HOST_CPU_FEATURES", "avx2,fma f16c", 1);
  std::vector<std::string> features = hostCpuFeatures();
  ::unsetenv("KT_HOST_CPU_FEATURES");
  EXPECT_EQ(features, (std::vector<std::string>{"avx2", "fma", "f16c"}));
}

TEST(IsaVariants, HostFeaturesUseLlvmNames) {
  std::vector<std::string> features = hostCpuFeatures();
  for (const std::string &feature : features) {
    EXPECT_NE(feature, "avx512_vnni");
    EXPECT_NE(feature, "amx_tile");
  }
#if defined(__x86_64__)
  // Every x86-64 host has SSE2.
  EXPECT_NE(std::find(features.begin(), features.end(), "sse2"), features.end());
#endif
}

} // namespace
} // namespace kt::cpu
