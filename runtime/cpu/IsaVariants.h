// The CPU kernel variants kt-select-kernels chooses from and the ISA
// features each needs, and the check that a plan's CPU kernels run on this
// host: a plan compiled for a newer CPU is refused with the feature it
// lacks, never run into illegal instructions or NaNs.
#pragma once

#include "runtime/plan/Plan.h"
#include "runtime/support/Status.h"

#include <string>
#include <string_view>
#include <vector>

namespace kt::cpu {

struct IsaVariant {
  std::string name;                  // "amx", "avx512_vnni", ...
  std::vector<std::string> features; // LLVM feature names it needs
};

// Best first: amx, avx512_bf16, avx512_vnni, avx512, avx2, generic.
const std::vector<IsaVariant> &isaVariants();
const IsaVariant *findIsaVariant(std::string_view name);

// The ISA features generated CPU code may use (LLVM names), all of which
// hostCpuFeatures() reports reliably: the code is compiled for the x86-64
// baseline plus those of them the target CPU has, so checking them is
// enough to know a host runs it.
const std::vector<std::string> &checkedIsaFeatures();

// This host's ISA features under LLVM's names (avx512vnni, amx-tile, ...),
// from /proc/cpuinfo. $KT_HOST_CPU_FEATURES (names separated by spaces or
// commas) replaces them, to check a plan against another machine.
std::vector<std::string> hostCpuFeatures();

// Fails, naming the op, its kernel and the first missing feature, when a
// kernel the plan runs on the CPU needs a feature `hostFeatures` lacks.
Status checkHostRunsPlan(const plan::Plan &plan, const std::vector<std::string> &hostFeatures,
                         const std::string &planName);

} // namespace kt::cpu
