// Applying a rule set to the modules of a model, as the anchor's
// gen_optimize_config does: parents before children, the first matching rule
// wins, recursive: false leaves a module's descendants to its operator.
#include "compiler/Rules/Operators.h"
#include "compiler/Rules/RuleSet.h"

#include <algorithm>
#include <numeric>
#include <unordered_map>

namespace kt::rules {
namespace {

int depthOf(const std::string &path) {
  return static_cast<int>(std::count(path.begin(), path.end(), '.'));
}

// The index of the nearest proper ancestor of `path` in the list, or -1.
int parentIndex(const std::string &path, const std::unordered_map<std::string, int> &byPath) {
  std::string prefix = path;
  for (size_t dot = prefix.rfind('.'); dot != std::string::npos; dot = prefix.rfind('.')) {
    prefix.resize(dot);
    auto it = byPath.find(prefix);
    if (it != byPath.end())
      return it->second;
  }
  return -1;
}

// The layer number of a module under model.layers.N, or -1.
int layerOf(const std::string &path) {
  const std::string prefix = "model.layers.";
  if (path.compare(0, prefix.size(), prefix) != 0)
    return -1;
  size_t end = path.find('.', prefix.size());
  std::string digits = path.substr(prefix.size(), end == std::string::npos ? end : end - prefix.size());
  if (digits.empty() || digits.size() > 6 ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoi(digits);
}

std::string kindList(const std::vector<ModuleKind> &kinds) {
  std::string out;
  for (size_t i = 0; i < kinds.size(); ++i) {
    if (i > 0)
      out += i + 1 == kinds.size() ? " and " : ", ";
    out += moduleKindName(kinds[i]);
  }
  return out;
}

} // namespace

std::vector<Placement> applyRules(const RuleSet &set, const std::vector<ModuleRef> &modules,
                                  const ApplyOptions &options,
                                  std::vector<Diagnostic> &diagnostics) {
  const size_t n = modules.size();
  std::vector<Placement> placements(n);
  std::unordered_map<std::string, int> byPath;
  for (size_t i = 0; i < n; ++i)
    byPath.emplace(modules[i].path, static_cast<int>(i));

  // Parents first: shallower paths before deeper ones, input order otherwise.
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return depthOf(modules[a].path) < depthOf(modules[b].path);
  });

  // pruneRoot[i]: the module whose recursive: false rule owns module i, or -1.
  std::vector<int> pruneRoot(n, -1);
  std::vector<bool> prunes(n, false);
  std::vector<int> applied(set.rules.size(), 0);
  struct Mismatch {
    std::string firstPath;
    ModuleKind firstKind;
    int count = 0;
  };
  std::map<int, Mismatch> mismatches; // by rule
  std::vector<int> unplaced;
  const OperatorInfo &defaultOp = defaultOperator();

  for (int i : order) {
    const ModuleRef &module = modules[i];
    Placement &placement = placements[i];
    int parent = parentIndex(module.path, byPath);
    if (parent >= 0 && (prunes[parent] || pruneRoot[parent] >= 0)) {
      int root = prunes[parent] ? parent : pruneRoot[parent];
      pruneRoot[i] = root;
      const Placement &owner = placements[root];
      placement.source = Placement::Source::Inherited;
      placement.ruleIndex = owner.ruleIndex;
      placement.inheritedFrom = modules[root].path;
      placement.op = &defaultOp;
      placement.generateDevice = owner.generateDevice;
      placement.prefillDevice = owner.prefillDevice;
      placement.outDevice = owner.outDevice;
      continue;
    }
    int winner = -1;
    for (size_t r = 0; r < set.rules.size(); ++r) {
      std::string regexError;
      if (set.rules[r].matches(module.path, module.kind, options.family, &regexError)) {
        winner = static_cast<int>(r);
        break;
      }
      if (!regexError.empty())
        diagnostics.push_back({Severity::Error, set.rules[r].nameLocation,
                               "the regular expression failed on " + module.path + ": " +
                                   regexError + "; simplify the pattern",
                               module.path});
    }
    if (winner < 0) {
      placement.source = Placement::Source::Unplaced;
      placement.op = &defaultOp;
      placement.generateDevice = options.defaultDevice;
      placement.prefillDevice = options.defaultDevice;
      unplaced.push_back(i);
      continue;
    }
    const Rule &rule = set.rules[winner];
    ++applied[winner];
    placement.source = Placement::Source::Rule;
    placement.ruleIndex = winner;
    placement.op = rule.op ? rule.op : &defaultOp;
    placement.generateDevice = rule.generateDevice;
    placement.prefillDevice = rule.prefillDevice;
    placement.outDevice = rule.outDevice;
    placement.generateOp = rule.generateOp;
    placement.prefillOp = rule.prefillOp;
    placement.kwargs = rule.kwargs;
    prunes[i] = !rule.recursive;
    if (!placement.op->replacesKind(module.kind)) {
      Mismatch &m = mismatches[winner];
      if (m.count++ == 0) {
        m.firstPath = module.path;
        m.firstKind = module.kind;
      }
    }
  }

  for (const auto &[ruleIndex, m] : mismatches) {
    const Rule &rule = set.rules[ruleIndex];
    std::string others =
        m.count > 1 ? " and " + std::to_string(m.count - 1) + " more module" +
                          (m.count > 2 ? "s" : "") + " it cannot replace"
                    : "";
    diagnostics.push_back(
        {Severity::Error, rule.location,
         "the rule matches " + m.firstPath + " (" + moduleKindName(m.firstKind) + ")" + others +
             ", but \"" + rule.replaceClass + "\" replaces only " + kindList(rule.op->kinds) +
             " modules; narrow its name pattern or add a match class",
         m.firstPath});
  }

  // Rules that place nothing: say why when another rule took their modules.
  for (size_t r = 0; r < set.rules.size(); ++r) {
    if (applied[r] > 0)
      continue;
    const Rule &rule = set.rules[r];
    int example = -1;
    for (size_t i = 0; i < n && example < 0; ++i)
      if (rule.matches(modules[i].path, modules[i].kind, options.family))
        example = static_cast<int>(i);
    std::string message;
    std::string path;
    if (example < 0) {
      message = "rule at " + rule.location.str() + " matches no module";
    } else {
      const Placement &p = placements[example];
      path = modules[example].path;
      std::string owner = p.ruleIndex >= 0 ? set.rules[p.ruleIndex].location.str() : "?";
      if (p.source == Placement::Source::Inherited)
        message = "rule at " + rule.location.str() + " never applies: the modules it matches, e.g. " +
                  path + ", are inside " + p.inheritedFrom + ", which the rule at " + owner +
                  " places with recursive: false";
      else
        message = "rule at " + rule.location.str() +
                  " never applies: an earlier rule takes every module it matches (e.g. " + path +
                  " is placed by the rule at " + owner + "; the first matching rule wins)";
    }
    diagnostics.push_back({Severity::Warning, rule.location, message, path});
  }

  if (!set.transferMap.empty()) {
    int lastLayer = -1;
    for (const ModuleRef &module : modules)
      lastLayer = std::max(lastLayer, layerOf(module.path));
    for (const TransferMapEntry &entry : set.transferMap)
      if (lastLayer >= 0 && entry.layer > lastLayer)
        diagnostics.push_back({Severity::Warning, entry.location,
                               "transfer_map layer " + std::to_string(entry.layer) +
                                   " is past the model's last layer (" +
                                   std::to_string(lastLayer) + "); the entry has no effect",
                               ""});
  }

  if (!unplaced.empty()) {
    std::sort(unplaced.begin(), unplaced.end());
    const SourceLocation fileLocation{set.file, 0, 0};
    const std::string defaultText =
        "the default operator on " + options.defaultDevice.str();
    if (options.strict) {
      int reported = 0;
      for (int i : unplaced) {
        if (reported == options.maxUnplacedErrors)
          break;
        ++reported;
        diagnostics.push_back({Severity::Error, fileLocation,
                               "no rule places " + modules[i].path + " (" +
                                   moduleKindName(modules[i].kind) +
                                   "); add a rule for it (strict mode does not apply " +
                                   defaultText + ")",
                               modules[i].path});
      }
      if (static_cast<int>(unplaced.size()) > reported)
      {
        const size_t more = unplaced.size() - reported;
        diagnostics.push_back({Severity::Note, fileLocation,
                               std::to_string(more) + " more module" +
                                   (more == 1 ? " is" : "s are") + " placed by no rule",
                               ""});
      }
    } else {
      diagnostics.push_back({Severity::Note, fileLocation,
                             std::to_string(unplaced.size()) + " module" +
                                 (unplaced.size() == 1 ? " is" : "s are") +
                                 " placed by no rule and get " + defaultText + " (e.g. " +
                                 modules[unplaced.front()].path + ")",
                             ""});
    }
  }
  return placements;
}

} // namespace kt::rules
