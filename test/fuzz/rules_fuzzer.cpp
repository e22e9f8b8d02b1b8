// libFuzzer target: the rule parser turns any text into a rule set or
// diagnostics, never a crash, and applying a parsed rule set to a DeepSeek
// module tree places every module.
#include "compiler/Rules/RuleSet.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string text(reinterpret_cast<const char *>(data), size);
  std::vector<kt::rules::Diagnostic> diagnostics;
  kt::StatusOr<kt::rules::RuleSet> rules =
      kt::rules::parseRuleText(text, "fuzz.yaml", diagnostics);
  for (const kt::rules::Diagnostic &diagnostic : diagnostics)
    if (diagnostic.str().empty())
      __builtin_trap();
  if (!rules.ok())
    return 0;
  kt::rules::DeepseekTreeShape shape;
  shape.layers = 4;
  shape.leadingDenseLayers = 1;
  std::vector<kt::rules::ModuleRef> modules = kt::rules::buildDeepseekModuleTree(shape);
  std::vector<kt::rules::Diagnostic> applied;
  std::vector<kt::rules::Placement> placements =
      kt::rules::applyRules(*rules, modules, kt::rules::ApplyOptions(), applied);
  if (placements.size() != modules.size())
    __builtin_trap();
  return 0;
}
