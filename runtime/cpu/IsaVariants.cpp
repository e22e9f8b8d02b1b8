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

const std::vector<std::string> &checkedIsaFeatures() {
  static const std::vector<std::string> features = {
      "sse3",       "ssse3",       "sse4.1",       "sse4.2",      "popcnt",
      "avx",        "avx2",        "fma",          "f16c",        "bmi",
      "bmi2",       "lzcnt",       "movbe",        "avx512f",     "avx512bw",
      "avx512dq",   "avx512vl",    "avx512cd",     "avx512vnni",  "avx512bf16",
      "avx512fp16", "avx512vbmi",  "avx512vbmi2",  "avx512ifma",  "avx512bitalg",
      "avx512vpopcntdq", "avxvnni", "amx-tile",    "amx-int8",    "amx-bf16",
      "gfni",       "vpclmulqdq"};
  return features;
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
  // /proc/cpuinfo spells some features differently from LLVM.
  auto llvmName = [](std::string flag) {
    static const std::vector<std::pair<std::string, std::string>> renamed = {
        {"pni", "sse3"},           {"sse4_1", "sse4.1"},
        {"sse4_2", "sse4.2"},      {"bmi1", "bmi"},
        {"abm", "lzcnt"},          {"avx512_vnni", "avx512vnni"},
        {"avx512_bf16", "avx512bf16"}, {"avx512_fp16", "avx512fp16"},
        {"avx512_vbmi2", "avx512vbmi2"}, {"avx512_bitalg", "avx512bitalg"},
        {"avx512_vpopcntdq", "avx512vpopcntdq"}, {"avx_vnni", "avxvnni"}};
    for (const auto &[proc, llvm] : renamed)
      if (flag == proc)
        return llvm;
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
