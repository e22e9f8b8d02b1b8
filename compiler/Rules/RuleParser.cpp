// Rule file parser: yaml-cpp nodes -> typed rules, with a diagnostic (file,
// line, column) for everything the file gets wrong. yaml-cpp throws; every
// exception is caught here and becomes a diagnostic.
#include "compiler/Rules/Operators.h"
#include "compiler/Rules/RuleSet.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace kt::rules {
namespace {

// "a, b and c"
std::string joinNames(const std::vector<std::string> &names, const char *lastSeparator = " and ") {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0)
      out += i + 1 == names.size() ? lastSeparator : ", ";
    out += names[i];
  }
  return out;
}

// Groups dotted names by module path so long class lists stay readable:
// "torch.nn.{Linear, Embedding}, ktransformers.models.modeling_deepseek_v3.{...}, moe".
std::string groupedNameList(const std::vector<std::string> &names) {
  std::vector<std::pair<std::string, std::vector<std::string>>> groups;
  for (const std::string &name : names) {
    size_t dot = name.rfind('.');
    std::string prefix = dot == std::string::npos ? "" : name.substr(0, dot + 1);
    std::string last = dot == std::string::npos ? name : name.substr(dot + 1);
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto &g) { return g.first == prefix; });
    if (it == groups.end())
      groups.push_back({prefix, {last}});
    else
      it->second.push_back(last);
  }
  // Names without a module path (ours, "default") go last.
  std::stable_partition(groups.begin(), groups.end(),
                        [](const auto &g) { return !g.first.empty(); });
  std::string out;
  for (const auto &group : groups) {
    if (!out.empty())
      out += "; ";
    if (group.first.empty())
      out += joinNames(group.second, ", ");
    else if (group.second.size() == 1)
      out += group.first + group.second.front();
    else
      out += group.first + "{" + joinNames(group.second, ", ") + "}";
  }
  return out;
}

std::string quote(const std::string &text) { return "\"" + text + "\""; }

std::string didYouMean(const std::string &written, const std::vector<std::string> &candidates) {
  std::vector<std::string> best = closestNames(written, candidates, 1);
  return best.empty() ? "" : " (did you mean " + quote(best.front()) + "?)";
}

// A regex for the decimal integers lo..hi of the same number of digits.
std::string sameLengthRange(const std::string &lo, const std::string &hi) {
  if (lo.size() == 1)
    return lo == hi ? lo : "[" + lo + "-" + hi + "]";
  if (lo[0] == hi[0])
    return lo.substr(0, 1) + sameLengthRange(lo.substr(1), hi.substr(1));
  const std::string nines(lo.size() - 1, '9'), zeros(lo.size() - 1, '0');
  std::vector<std::string> parts;
  parts.push_back(lo.substr(0, 1) + sameLengthRange(lo.substr(1), nines));
  if (hi[0] - lo[0] > 1) {
    std::string middle = hi[0] - lo[0] == 2 ? std::string(1, char(lo[0] + 1))
                                            : "[" + std::string(1, char(lo[0] + 1)) + "-" +
                                                  std::string(1, char(hi[0] - 1)) + "]";
    for (size_t i = 1; i < lo.size(); ++i)
      middle += "[0-9]";
    parts.push_back(middle);
  }
  parts.push_back(hi.substr(0, 1) + sameLengthRange(zeros, hi.substr(1)));
  return joinNames(parts, "|");
}

// A regex group for the decimal integers lo..hi (no leading zeros).
std::string numberRangeRegex(int lo, int hi) {
  std::vector<std::string> parts;
  for (int digits = 1, first = 0, last = 9; digits <= 4; ++digits) {
    int a = std::max(lo, first), b = std::min(hi, last);
    if (a <= b)
      parts.push_back(sameLengthRange(std::to_string(a), std::to_string(b)));
    first = last + 1;
    last = last * 10 + 9;
  }
  return "(?:" + joinNames(parts, "|") + ")";
}

// A bracket expression like [4-10] or [1-15]: a digit range followed by more
// digits, which reads like a number range but is a set of single characters.
struct NumberLikeClass {
  std::string text; // "[4-10]"
  int lo = 0, hi = 0; // what the author probably meant
  bool reversed = false; // the range inside is reversed ([4-1...]): a regex error
};
std::optional<NumberLikeClass> findNumberLikeClass(const std::string &pattern) {
  static const std::regex numberClass(R"(\[([0-9])-([0-9])([0-9]+)\])");
  std::smatch m;
  if (!std::regex_search(pattern, m, numberClass))
    return std::nullopt;
  NumberLikeClass found;
  found.text = m.str(0);
  found.lo = m.str(1)[0] - '0';
  std::string hiDigits = m.str(2) + m.str(3);
  if (hiDigits.size() > 4)
    return std::nullopt;
  found.hi = std::stoi(hiDigits);
  found.reversed = m.str(1)[0] > m.str(2)[0];
  return found;
}

std::string numberLikeClassAdvice(const NumberLikeClass &c) {
  return c.text + " is a character class (one character), not the numbers " +
         std::to_string(c.lo) + " to " + std::to_string(c.hi) + "; write " +
         numberRangeRegex(c.lo, c.hi) + " to match those layer numbers";
}

std::string nodeTypeName(const YAML::Node &node) {
  switch (node.Type()) {
  case YAML::NodeType::Null:
    return "nothing (null)";
  case YAML::NodeType::Scalar:
    return "the scalar " + quote(node.Scalar());
  case YAML::NodeType::Sequence:
    return "a list";
  case YAML::NodeType::Map:
    return "a mapping";
  case YAML::NodeType::Undefined:
    return "nothing";
  }
  return "nothing";
}

bool isQuoted(const YAML::Node &node) { return node.IsScalar() && node.Tag() == "!"; }

std::string flowText(const YAML::Node &node) {
  YAML::Emitter out;
  out << YAML::Flow << node;
  return out.c_str();
}

class Parser {
public:
  Parser(std::string file, std::vector<Diagnostic> &diagnostics)
      : file_(std::move(file)), diagnostics_(diagnostics) {}

  StatusOr<RuleSet> parse(const std::string &text) {
    RuleSet set;
    set.file = file_;
    try {
      YAML::Node root;
      try {
        root = YAML::Load(text);
      } catch (const YAML::ParserException &e) {
        error(at(e.mark), "YAML syntax error: " + e.msg);
        return finish(std::move(set));
      }
      if (root.IsNull()) {
        error(SourceLocation{file_, 1, 1},
              "the rule file is empty: write a YAML list of rules, each \"- match: ... "
              "replace: ...\"");
        return finish(std::move(set));
      }
      if (!root.IsSequence()) {
        error(at(root), "a rule file is a YAML list of rules (\"- match: ...\"), not " +
                            nodeTypeName(root));
        return finish(std::move(set));
      }
      for (const YAML::Node &item : root)
        parseRule(item, set);
      if (root.size() == 0)
        warning(at(root), "the rule file has no rules; every module gets the default placement");
    } catch (const std::exception &e) {
      // yaml-cpp conversions can throw on input the checks above let through.
      error(SourceLocation{file_, 0, 0}, std::string("cannot read the rule file: ") + e.what());
    }
    return finish(std::move(set));
  }

private:
  StatusOr<RuleSet> finish(RuleSet set) {
    if (errors_ == 0)
      return set;
    return Status::error(file_ + ": " + std::to_string(errors_) + " error" +
                         (errors_ == 1 ? "" : "s") +
                         " in the rule file; fix the diagnostics above and compile again.");
  }

  SourceLocation at(const YAML::Mark &mark) const {
    if (mark.is_null() || mark.line < 0)
      return SourceLocation{file_, 0, 0};
    return SourceLocation{file_, mark.line + 1, mark.column + 1};
  }
  SourceLocation at(const YAML::Node &node) const { return at(node.Mark()); }
  // Null values (a key with nothing after it) may carry no mark; use the key's.
  SourceLocation at(const YAML::Node &value, const YAML::Node &key) const {
    SourceLocation loc = at(value);
    return loc.line > 0 ? loc : at(key);
  }

  void error(SourceLocation loc, std::string message) {
    ++errors_;
    diagnostics_.push_back({Severity::Error, std::move(loc), std::move(message), ""});
  }
  void warning(SourceLocation loc, std::string message) {
    diagnostics_.push_back({Severity::Warning, std::move(loc), std::move(message), ""});
  }

  // Iterates a mapping's entries with string keys, reporting non-string and
  // duplicate keys and keys outside `allowed` (with a "did you mean").
  template <typename Fn>
  void forEachKey(const YAML::Node &map, const std::vector<std::string> &allowed,
                  const std::string &where, Fn &&fn) {
    std::map<std::string, SourceLocation> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first, value = it->second;
      if (!key.IsScalar()) {
        error(at(key), "a key of " + where + " must be a name, not " + nodeTypeName(key));
        continue;
      }
      const std::string name = key.Scalar();
      auto previous = seen.find(name);
      if (previous != seen.end()) {
        error(at(key), "duplicate key " + quote(name) + " in " + where + " (first given at " +
                           previous->second.str() + ")");
        continue;
      }
      seen.emplace(name, at(key));
      if (!allowed.empty() && std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
        error(at(key), "unknown key " + quote(name) + " in " + where +
                           didYouMean(name, allowed) + "; " + where + " takes " +
                           joinNames(allowed));
        continue;
      }
      fn(name, key, value);
    }
  }

  std::optional<std::string> stringValue(const YAML::Node &value, const YAML::Node &key,
                                         const std::string &what) {
    if (!value.IsScalar()) {
      error(at(value, key), what + " must be a string, not " + nodeTypeName(value));
      return std::nullopt;
    }
    return value.Scalar();
  }

  void parseRule(const YAML::Node &item, RuleSet &set) {
    Rule rule;
    rule.location = at(item);
    const int index = static_cast<int>(set.rules.size());
    if (!item.IsMap()) {
      error(rule.location, "a rule is a mapping with the keys match, replace and recursive, not " +
                               nodeTypeName(item));
      return;
    }
    std::optional<YAML::Node> match, replace, matchKey, replaceKey;
    forEachKey(item, {"match", "replace", "recursive"}, "a rule",
               [&](const std::string &name, const YAML::Node &key, const YAML::Node &value) {
                 if (name == "match") {
                   match = value;
                   matchKey = key;
                 } else if (name == "replace") {
                   replace = value;
                   replaceKey = key;
                 } else {
                   rule.recursiveLocation = at(value, key);
                   parseRecursive(value, key, rule);
                 }
               });
    if (!match)
      error(rule.location, "the rule has no match: give match: with name: (a regular expression "
                           "over module paths), class: or both");
    else
      parseMatch(*match, *matchKey, rule);
    if (!replace)
      error(rule.location, "the rule has no replace: give replace: with class: and kwargs:");
    else
      parseReplace(*replace, *replaceKey, rule, set, index);
    checkMatchAgainstOperator(rule);
    if (rule.op && rule.op->name == "model" && !sawModelRule_) {
      sawModelRule_ = true;
      set.layerwisePrefillThreshold = rule.layerwisePrefillThreshold.value_or(kAnchorLayerwisePrefillThreshold);
    }
    // Rules with errors are kept too, so rule indices follow the file.
    set.rules.push_back(std::move(rule));
  }

  void parseRecursive(const YAML::Node &value, const YAML::Node &key, Rule &rule) {
    bool flag = false;
    if (value.IsScalar() && !isQuoted(value) && YAML::convert<bool>::decode(value, flag)) {
      rule.recursive = flag;
      return;
    }
    std::string what = isQuoted(value) ? "the string " + quote(value.Scalar()) +
                                             " (remove the quotes: Python's bool() of any "
                                             "non-empty string is True)"
                                       : nodeTypeName(value);
    error(at(value, key), "recursive must be true or false, not " + what);
  }

  void parseMatch(const YAML::Node &match, const YAML::Node &matchKey, Rule &rule) {
    if (!match.IsMap()) {
      error(at(match, matchKey),
            "match must be a mapping with name:, class: or both, not " + nodeTypeName(match));
      return;
    }
    forEachKey(match, {"name", "class"}, "match",
               [&](const std::string &name, const YAML::Node &key, const YAML::Node &value) {
                 if (name == "name")
                   parseNamePattern(value, key, rule);
                 else
                   parseMatchClass(value, key, rule);
               });
    // Unknown keys have their own error, which lists the two keys match takes.
    if (match.size() == 0)
      error(at(match, matchKey), "match must give name: (a regular expression over module "
                                 "paths), class: or both");
  }

  void parseNamePattern(const YAML::Node &value, const YAML::Node &key, Rule &rule) {
    std::optional<std::string> pattern = stringValue(value, key, "match name");
    if (!pattern)
      return;
    rule.namePattern = *pattern;
    rule.nameLocation = at(value, key);
    std::optional<NumberLikeClass> numberLike = findNumberLikeClass(*pattern);
    try {
      rule.nameRegex.emplace(*pattern, std::regex::ECMAScript);
    } catch (const std::regex_error &e) {
      std::string message = "invalid regular expression " + quote(*pattern) + ": " + e.what();
      if (numberLike)
        message += "; " + numberLikeClassAdvice(*numberLike);
      else if (pattern->find("(?P") != std::string::npos ||
               pattern->find("(?<") != std::string::npos ||
               pattern->find("(?i") != std::string::npos || pattern->find("\\A") != std::string::npos ||
               pattern->find("\\Z") != std::string::npos)
        message += "; patterns are ECMAScript regular expressions, which have no named groups "
                   "(?P<...>), lookbehind (?<=...), inline flags (?i) or \\A / \\Z";
      error(rule.nameLocation, message);
      return;
    }
    if (numberLike)
      warning(rule.nameLocation, numberLikeClassAdvice(*numberLike));
  }

  void parseMatchClass(const YAML::Node &value, const YAML::Node &key, Rule &rule) {
    std::optional<std::string> name = stringValue(value, key, "match class");
    if (!name)
      return;
    rule.matchClass = *name;
    rule.classLocation = at(value, key);
    const MatchClassInfo *info = findMatchClass(*name);
    if (!info) {
      std::vector<std::string> accepted;
      for (const MatchClassInfo &c : matchClassTable())
        accepted.push_back(c.name);
      if (std::optional<UnsupportedName> unsupported = findUnsupportedName(*name))
        error(rule.classLocation, unsupported->reason);
      else
        error(rule.classLocation, "unknown match class " + quote(*name) +
                                      didYouMean(*name, accepted) +
                                      "; accepted: " + groupedNameList(accepted));
      return;
    }
    rule.matchKinds = info->kinds;
    rule.matchFamily = info->family;
  }

  void parseReplace(const YAML::Node &replace, const YAML::Node &replaceKey, Rule &rule,
                    RuleSet &set, int index) {
    if (!replace.IsMap()) {
      error(at(replace, replaceKey),
            "replace must be a mapping with class: and kwargs:, not " + nodeTypeName(replace));
      return;
    }
    std::optional<YAML::Node> kwargs, kwargsKey;
    rule.replaceClassLocation = at(replace, replaceKey);
    bool classOk = true;
    forEachKey(replace, {"class", "kwargs"}, "replace",
               [&](const std::string &name, const YAML::Node &key, const YAML::Node &value) {
                 if (name == "kwargs") {
                   kwargs = value;
                   kwargsKey = key;
                   return;
                 }
                 std::optional<std::string> cls = stringValue(value, key, "replace class");
                 if (!cls) {
                   classOk = false;
                   return;
                 }
                 rule.replaceClass = *cls;
                 rule.replaceClassLocation = at(value, key);
               });
    if (!classOk)
      return;
    rule.op = findOperator(rule.replaceClass);
    if (!rule.op) {
      std::vector<std::string> accepted;
      for (const OperatorInfo &op : operatorTable())
        for (const std::string &cls : op.anchorClasses)
          accepted.push_back(cls);
      for (const OperatorInfo &op : operatorTable())
        if (op.name != "default")
          accepted.push_back(op.name);
      if (std::optional<UnsupportedName> unsupported = findUnsupportedName(rule.replaceClass))
        error(rule.replaceClassLocation, unsupported->reason);
      else
        error(rule.replaceClassLocation, "unknown replace class " + quote(rule.replaceClass) +
                                             didYouMean(rule.replaceClass, accepted) +
                                             "; accepted: " + groupedNameList(accepted));
      return;
    }
    const OperatorInfo &op = *rule.op;
    const std::string opLabel = quote(rule.replaceClass) +
                                (rule.replaceClass == op.name ? "" : " (our " + op.name + ")");
    if (kwargs && !kwargs->IsNull()) {
      if (!kwargs->IsMap()) {
        error(at(*kwargs, *kwargsKey), "kwargs must be a mapping of names to values, not " +
                                           nodeTypeName(*kwargs));
      } else {
        std::vector<std::string> accepted;
        for (const KwargSpec &spec : op.kwargs)
          accepted.push_back(spec.name);
        forEachKey(*kwargs, {}, "kwargs",
                   [&](const std::string &name, const YAML::Node &key, const YAML::Node &value) {
                     const KwargSpec *spec = op.findKwarg(name);
                     if (!spec) {
                       error(at(key), "kwarg " + quote(name) + " is not taken by " + opLabel +
                                          didYouMean(name, accepted) + "; it takes " +
                                          (accepted.empty() ? "no kwargs" : joinNames(accepted)));
                       return;
                     }
                     parseKwarg(*spec, key, value, rule, set, index);
                   });
      }
    }
    resolveDefaultsAndCheckDevices(rule, opLabel);
  }

  void parseKwarg(const KwargSpec &spec, const YAML::Node &key, const YAML::Node &value,
                  Rule &rule, RuleSet &set, int index) {
    KwargValue kv;
    kv.location = at(value, key);
    kv.quoted = isQuoted(value);
    if (value.IsScalar()) {
      kv.kind = KwargValue::Kind::Scalar;
      kv.text = value.Scalar();
    } else if (value.IsNull()) {
      kv.kind = KwargValue::Kind::Null;
    } else {
      kv.kind = value.IsMap() ? KwargValue::Kind::Mapping : KwargValue::Kind::Sequence;
      kv.text = flowText(value);
    }
    const std::string what = spec.name;
    auto requireScalar = [&]() {
      if (kv.kind == KwargValue::Kind::Scalar)
        return true;
      error(kv.location, what + " must be a single value, not " + nodeTypeName(value));
      return false;
    };
    switch (spec.type) {
    case KwargType::Device: {
      if (!requireScalar())
        return;
      std::optional<Device> device = parseDevice(kv.text);
      if (!device) {
        error(kv.location, deviceError(kv.text, what));
        return;
      }
      if (spec.name == "generate_device")
        rule.generateDevice = *device;
      else if (spec.name == "prefill_device")
        rule.prefillDevice = *device;
      else
        rule.outDevice = *device;
      break;
    }
    case KwargType::KernelOp: {
      if (!requireScalar())
        return;
      std::optional<KernelChoice> choice = rule.op->resolveKernelOp(kv.text);
      if (!choice) {
        std::vector<std::string> spellings = rule.op->kernelOpSpellings();
        if (std::optional<UnsupportedName> unsupported = findUnsupportedName(kv.text))
          error(kv.location, unsupported->reason);
        else
          error(kv.location, "unknown " + what + " " + quote(kv.text) + " for " +
                                 quote(rule.replaceClass) + didYouMean(kv.text, spellings) +
                                 "; accepted: " + joinNames(spellings));
        return;
      }
      (spec.name == "generate_op" ? rule.generateOp : rule.prefillOp) = *choice;
      break;
    }
    case KwargType::Bool: {
      bool flag = false;
      if (kv.kind != KwargValue::Kind::Scalar || kv.quoted ||
          !YAML::convert<bool>::decode(value, flag)) {
        error(kv.location, what + " must be true or false, not " +
                               (kv.quoted ? "the string " + quote(kv.text) : nodeTypeName(value)));
        return;
      }
      break;
    }
    case KwargType::NonNegativeInt: {
      std::optional<long long> number = nonNegativeInt(value);
      if (!number) {
        error(kv.location, what + " must be a whole number >= 0, not " +
                               (kv.quoted ? "the string " + quote(kv.text) : nodeTypeName(value)));
        return;
      }
      if (spec.name == "per_layer_prefill_intput_threshold")
        rule.layerwisePrefillThreshold = *number;
      break;
    }
    case KwargType::Choice: {
      if (!requireScalar())
        return;
      if (std::find(spec.choices.begin(), spec.choices.end(), kv.text) == spec.choices.end()) {
        error(kv.location, "unknown " + what + " " + quote(kv.text) +
                               didYouMean(kv.text, spec.choices) + "; accepted: " +
                               joinNames(spec.choices, " or "));
        return;
      }
      break;
    }
    case KwargType::TransferMap:
      parseTransferMap(value, key, rule, set, index);
      break;
    }
    rule.kwargs.emplace(spec.name, std::move(kv));
  }

  std::string deviceError(const std::string &text, const std::string &what) {
    std::string message = "unknown device " + quote(text) + " for " + what +
                          ": valid devices are cpu, cuda and cuda:N (N = 0, 1, ...)";
    if (text.rfind("xpu", 0) == 0 || text.rfind("npu", 0) == 0 || text.rfind("mps", 0) == 0)
      message += "; " + text.substr(0, 3) + " devices are not supported, only CPUs and CUDA GPUs";
    return message;
  }

  std::optional<long long> nonNegativeInt(const YAML::Node &value) {
    if (!value.IsScalar() || isQuoted(value))
      return std::nullopt;
    const std::string &text = value.Scalar();
    if (text.empty() || text.size() > 9)
      return std::nullopt;
    for (char c : text)
      if (c < '0' || c > '9')
        return std::nullopt;
    return std::stoll(text);
  }

  void parseTransferMap(const YAML::Node &value, const YAML::Node &key, Rule &rule, RuleSet &set,
                        int index) {
    if (!value.IsMap()) {
      error(at(value, key), "transfer_map must be a mapping of layer numbers to devices "
                            "(e.g. {30: \"cuda:1\"}), not " +
                                nodeTypeName(value));
      return;
    }
    if (set.transferMapRule >= 0) {
      error(at(key), "transfer_map is given twice: the rule at " +
                         set.rules[set.transferMapRule].location.str() +
                         " already has one; keep a single transfer_map");
      return;
    }
    std::vector<TransferMapEntry> entries;
    bool ok = true;
    for (auto it = value.begin(); it != value.end(); ++it) {
      const YAML::Node layerNode = it->first, deviceNode = it->second;
      std::optional<long long> layer = nonNegativeInt(layerNode);
      if (!layer) {
        error(at(layerNode), "a transfer_map key must be a layer number (a whole number >= 0, "
                             "unquoted), not " +
                                 (isQuoted(layerNode) ? "the string " + quote(layerNode.Scalar())
                                                      : nodeTypeName(layerNode)));
        ok = false;
        continue;
      }
      if (!entries.empty() && *layer <= entries.back().layer) {
        error(at(layerNode), "transfer_map layers must increase: layer " + std::to_string(*layer) +
                                 " comes after layer " + std::to_string(entries.back().layer) +
                                 " (at " + entries.back().location.str() + ")");
        ok = false;
        continue;
      }
      std::optional<Device> device;
      if (deviceNode.IsScalar())
        device = parseDevice(deviceNode.Scalar());
      if (!device) {
        error(at(deviceNode, layerNode),
              deviceNode.IsScalar()
                  ? deviceError(deviceNode.Scalar(), "transfer_map layer " + std::to_string(*layer))
                  : "the device of transfer_map layer " + std::to_string(*layer) +
                        " must be a device name, not " + nodeTypeName(deviceNode));
        ok = false;
        continue;
      }
      entries.push_back({static_cast<int>(*layer), *device, at(layerNode)});
    }
    if (!ok)
      return;
    if (entries.empty())
      warning(at(value, key), "transfer_map is empty; every layer stays on one device");
    rule.transferMap = entries;
    set.transferMap = entries;
    set.transferMapRule = index;
  }

  void resolveDefaultsAndCheckDevices(Rule &rule, const std::string &opLabel) {
    const OperatorInfo &op = *rule.op;
    if (!rule.kwargs.count("generate_device"))
      rule.generateDevice = op.defaultGenerateDevice;
    if (!rule.kwargs.count("prefill_device"))
      rule.prefillDevice = op.defaultPrefillDevice;
    if (!rule.kwargs.count("out_device"))
      rule.outDevice = op.defaultOutDevice;
    if (op.kernelOps.empty()) {
      checkDevice(rule, "generate_device", rule.generateDevice, op.devices, opLabel, nullptr);
      checkDevice(rule, "prefill_device", rule.prefillDevice, op.devices, opLabel, nullptr);
      return;
    }
    // Kernel families the rule did not name come from the operator's defaults.
    auto fill = [&](KernelChoice &choice, const std::string &family) {
      if (choice.op)
        return;
      const KernelOpInfo *info = op.findKernelOp(family);
      choice = KernelChoice{info, "", info ? info->devices : 0u};
    };
    fill(rule.generateOp, op.defaultGenerateOp);
    fill(rule.prefillOp, op.defaultPrefillOp);
    checkDevice(rule, "generate_device", rule.generateDevice, rule.generateOp.devices, opLabel,
                &rule.generateOp);
    checkDevice(rule, "prefill_device", rule.prefillDevice, rule.prefillOp.devices, opLabel,
                &rule.prefillOp);
  }

  void checkDevice(const Rule &rule, const std::string &deviceKwarg, const Device &device,
                   unsigned allowed, const std::string &opLabel, const KernelChoice *choice) {
    if (deviceAllowed(allowed, device))
      return;
    const std::string phaseOp = deviceKwarg == "generate_device" ? "generate_op" : "prefill_op";
    auto deviceIt = rule.kwargs.find(deviceKwarg);
    auto opIt = rule.kwargs.find(phaseOp);
    SourceLocation loc = deviceIt != rule.kwargs.end() ? deviceIt->second.location
                         : opIt != rule.kwargs.end()   ? opIt->second.location
                                                       : rule.replaceClassLocation;
    std::string who;
    if (choice) {
      who = phaseOp + " " +
            (choice->written.empty() ? quote(choice->op->name) + " (the default of " + opLabel + ")"
                                     : quote(choice->written));
    } else {
      who = opLabel;
    }
    std::string fix = choice ? "; choose a " + phaseOp + " that runs on " + device.str() +
                                   " or another " + deviceKwarg
                             : "; choose another " + deviceKwarg;
    error(loc, who + " runs only on " + deviceMaskString(allowed) + ", but " + deviceKwarg +
                   " is " + device.str() +
                   (deviceIt == rule.kwargs.end() ? " (the default)" : "") + fix);
  }

  void checkMatchAgainstOperator(const Rule &rule) {
    if (!rule.op || rule.matchKinds.empty())
      return;
    for (ModuleKind kind : rule.matchKinds)
      if (rule.op->replacesKind(kind))
        return;
    std::vector<std::string> opKinds, matchKinds;
    for (ModuleKind kind : rule.op->kinds)
      opKinds.push_back(moduleKindName(kind));
    for (ModuleKind kind : rule.matchKinds)
      matchKinds.push_back(moduleKindName(kind));
    error(rule.replaceClassLocation,
          quote(rule.replaceClass) + " replaces only " + joinNames(opKinds, " and ") +
              " modules, but match class " + quote(*rule.matchClass) + " names " +
              joinNames(matchKinds, " and ") + " modules");
  }

  // KDeepseekV2Model's default per_layer_prefill_intput_threshold.
  static constexpr long long kAnchorLayerwisePrefillThreshold = 30000;

  std::string file_;
  std::vector<Diagnostic> &diagnostics_;
  int errors_ = 0;
  bool sawModelRule_ = false;
};

} // namespace

StatusOr<RuleSet> parseRuleText(const std::string &text, const std::string &displayName,
                                std::vector<Diagnostic> &diagnostics) {
  return Parser(displayName, diagnostics).parse(text);
}

StatusOr<RuleSet> parseRuleFile(const std::string &path, std::vector<Diagnostic> &diagnostics) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    return Status::error("the rule file " + path +
                         " is a directory; give the path of a .yaml rule file.");
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error("cannot open the rule file " + path + ": " + std::strerror(errno) +
                         "; check the path given with --optimize-config-path.");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad())
    return Status::error("cannot read the rule file " + path + ": " + std::strerror(errno) + ".");
  return parseRuleText(text.str(), path, diagnostics);
}

} // namespace kt::rules
