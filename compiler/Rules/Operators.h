// The operator table: what a rule's `replace: class:` may name, which module
// kinds each operator replaces, the kwargs it takes, its kernel families
// (generate_op / prefill_op) and the devices each runs on; and the table of
// `match: class:` names (HF / anchor module classes and our short names).
// docs/rules.md documents both tables; a unit test keeps them in step.
#pragma once

#include "compiler/Rules/RuleSet.h"

#include <string>
#include <string_view>
#include <vector>

namespace kt::rules {

enum DeviceMask : unsigned { kCpuDevices = 1u, kCudaDevices = 2u, kAllDevices = 3u };
bool deviceAllowed(unsigned mask, const Device &device);
std::string deviceMaskString(unsigned mask); // "cpu", "cuda", "cpu and cuda"

// An anchor spelling of a kernel family: e.g. KLinearMarlin is our linear
// `quant` family restricted to cuda, as the anchor's Marlin kernels are.
struct KernelOpAlias {
  std::string anchorName;
  unsigned devices;
  std::string note;
};

// A kernel family: the implementation an operator uses in one phase.
struct KernelOpInfo {
  std::string name; // our short name, e.g. "quant"
  unsigned devices;
  std::string summary;
  std::vector<KernelOpAlias> aliases;
};

enum class KwargType {
  Device,          // cpu | cuda | cuda:N
  KernelOp,        // a kernel family of the operator (our name or an anchor alias)
  Bool,            // true / false, unquoted
  NonNegativeInt,  // unquoted integer >= 0
  Choice,          // one of `choices`
  TransferMap,     // mapping: layer (unquoted int) -> device
};

struct KwargSpec {
  std::string name;
  KwargType type;
  std::string summary;
  std::vector<std::string> choices; // Choice only
};

struct OperatorInfo {
  std::string name;                       // our short name ("linear", "experts", ...)
  std::string summary;
  std::vector<ModuleKind> kinds;          // module kinds it can replace; empty = every kind
  std::vector<std::string> anchorClasses; // full ktransformers class paths that map to it
  std::vector<KwargSpec> kwargs;
  unsigned devices = kAllDevices;         // operators without kernel families
  std::vector<KernelOpInfo> kernelOps;    // empty: no generate_op / prefill_op
  Device defaultGenerateDevice = Device::cuda(0);
  Device defaultPrefillDevice = Device::cuda(0);
  std::optional<Device> defaultOutDevice;
  std::string defaultGenerateOp, defaultPrefillOp; // kernel family names

  bool replacesKind(ModuleKind kind) const;
  const KwargSpec *findKwarg(std::string_view name) const;
  const KernelOpInfo *findKernelOp(std::string_view ourName) const;
  // Our name or an anchor alias -> the family and the devices that spelling allows.
  std::optional<KernelChoice> resolveKernelOp(std::string_view written) const;
  std::vector<std::string> kernelOpSpellings() const; // our names and all aliases
};

const std::vector<OperatorInfo> &operatorTable();
const OperatorInfo &defaultOperator();
// By our short name or by an anchor class path; nullptr when unknown.
const OperatorInfo *findOperator(std::string_view name);

// Anchor classes we know and do not implement (Intel XPU, Ascend NPU, ...),
// with the reason and our equivalent; nullopt when `name` is not one of them.
struct UnsupportedName {
  std::string name;
  std::string reason; // a full sentence naming what to use instead
};
std::optional<UnsupportedName> findUnsupportedName(std::string_view name);

// `match: class:` names.
struct MatchClassInfo {
  std::string name;               // as accepted ("torch.nn.Linear", "mla_attention", ...)
  std::vector<ModuleKind> kinds;  // the kinds isinstance() would accept
  ModelFamily family = ModelFamily::Any;
  std::string note;
};
const std::vector<MatchClassInfo> &matchClassTable();
const MatchClassInfo *findMatchClass(std::string_view name);

// Names a user may have meant: the candidates within a small edit distance,
// closest first (for "did you mean" hints).
std::vector<std::string> closestNames(std::string_view written,
                                      const std::vector<std::string> &candidates,
                                      size_t maxResults = 1);
size_t editDistance(std::string_view a, std::string_view b);

} // namespace kt::rules
