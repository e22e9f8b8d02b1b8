// Helpers shared by the rule tests.
#pragma once

#include "compiler/Rules/Operators.h"
#include "compiler/Rules/RuleSet.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace kt::rules::test {

struct Parsed {
  std::vector<Diagnostic> diagnostics;
  std::optional<RuleSet> set; // set when the parse had no error
  std::string status;         // the error message otherwise
};

inline Parsed parse(const std::string &text, const std::string &name = "rules.yaml") {
  Parsed parsed;
  StatusOr<RuleSet> result = parseRuleText(text, name, parsed.diagnostics);
  if (result.ok())
    parsed.set = std::move(*result);
  else
    parsed.status = result.message();
  return parsed;
}

inline std::string dump(const std::vector<Diagnostic> &diagnostics) {
  std::string out;
  for (const Diagnostic &d : diagnostics)
    out += d.str() + "\n";
  return out;
}

inline std::vector<Diagnostic> withSeverity(const std::vector<Diagnostic> &diagnostics,
                                            Severity severity) {
  std::vector<Diagnostic> out;
  for (const Diagnostic &d : diagnostics)
    if (d.severity == severity)
      out.push_back(d);
  return out;
}

// Index of the placement of `path` in a module list.
inline size_t indexOf(const std::vector<ModuleRef> &modules, const std::string &path) {
  for (size_t i = 0; i < modules.size(); ++i)
    if (modules[i].path == path)
      return i;
  ADD_FAILURE() << "no module " << path;
  return 0;
}

} // namespace kt::rules::test
