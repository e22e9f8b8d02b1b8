#include "runtime/cpu/IsaVariants.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace kt::cpu {

const std::vector<IsaVariant> &isaVariants() {
  static const std::vector<IsaVariant> variants = {
      {"amx", {"amx-tile", "amx-int8", "amx-bf16", "avx512f"}},
      {"avx512_bf16", {"avx512f", "avx512bw", "avx512bf16"}},
      {"avx512_vnni", {"avx512f", "avx512bw", "avx512vnni"}},
      {"avx512", {"avx512f", "avx512bw"}},
      {"avx2", {"avx2", "fma", "f16c"}},
      {"generic", {}},
  };
  return variants;
}

const IsaVariant *findIsaVariant(std::string_view name) {
  for (const IsaVariant &variant : isaVariants())
    if (variant.name == name)
      return &variant;
  return nullptr;
}

std::vector<std::string> hostCpuFeatures() {
  std::vector<std::string> features;
  if (const char *override = std::getenv("KT_HOST_CPU_FEATURES")) {
    std::string text(override);
    std::replace(text.begin(), text.end(), ',', ' ');
    std::istringstream words(text);
    for (std::string word; words >> word;)
      features.push_back(word);
    return features;
  }
  // /proc/cpuinfo spells a few features differently from LLVM.
  auto llvmName = [](std::string flag) {
    if (flag == "avx512_vnni")
      return std::string("avx512vnni");
    if (flag == "avx512_bf16")
      return std::string("avx512bf16");
    std::replace(flag.begin(), flag.end(), '_', '-'); // amx_tile -> amx-tile
    return flag;
  };
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("flags", 0) != 0)
      continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    for (std::string word; words >> word;)
      features.push_back(llvmName(word));
    break;
  }
  return features;
}

Status checkHostRunsPlan(const plan::Plan &plan, const std::vector<std::string> &hostFeatures,
                         const std::string &planName) {
  for (const plan::Op &op : plan.ops)
    for (const char *phase : {"prefill", "decode"}) {
      const std::string &device = std::string(phase) == "prefill" ? op.prefillDevice
                                                                  : op.decodeDevice;
      auto kernel = op.kernels.find(phase);
      if (device != "cpu" || kernel == op.kernels.end())
        continue;
      // "routed_experts.quant.avx512_vnni": the variant is the last part.
      std::string variantName = kernel->second.substr(kernel->second.rfind('.') + 1);
      const IsaVariant *variant = findIsaVariant(variantName);
      if (!variant)
        continue; // not an ISA-specific kernel
      for (const std::string &feature : variant->features)
        if (std::find(hostFeatures.begin(), hostFeatures.end(), feature) == hostFeatures.end())
          return Status::error(
              planName + ": module '" + op.path + "' runs the CPU kernel '" + kernel->second +
              "' chosen for the target CPU " + plan.target.cpu + ", which needs " + feature +
              "; this host lacks it. Recompile the plan on this host (ktc compile without "
              "--target-cpu), or with --target-cpu naming this host's CPU");
    }
  return Status::success();
}

} // namespace kt::cpu
