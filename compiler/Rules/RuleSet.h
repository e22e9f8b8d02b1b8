// Placement rules: KTransformers-compatible YAML rule files parsed into a
// typed rule set, and applied to the modules of a model. No MLIR here: the
// parser uses yaml-cpp (which throws), so it lives in a library of its own
// built with exceptions; nothing throws across this API.
//
// The format and its semantics (first match wins, recursive: false prunes,
// re.search-style name patterns, the operator table) are documented in
// docs/rules.md.
#pragma once

#include "runtime/support/Status.h"

#include <map>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace kt::rules {

struct OperatorInfo;
struct KernelOpInfo;

struct SourceLocation {
  std::string file;
  int line = 0;   // 1-based; 0 when unknown
  int column = 0; // 1-based
  std::string str() const; // "file:line:col", or "file" when the line is unknown
};

enum class Severity { Error, Warning, Note };
const char *severityName(Severity severity); // "error", "warning", "note"

struct Diagnostic {
  Severity severity = Severity::Error;
  SourceLocation location;
  std::string message;
  std::string modulePath; // the module concerned, if any (also named in the message)
  std::string str() const; // "file:line:col: error: message"
};
bool hasErrors(const std::vector<Diagnostic> &diagnostics);

// Kinds of model modules a rule can match. Our graph ops are the first eight;
// the rest are HF sub-modules (linear projections inside attention and MLPs,
// the rotary embedding, norms inside attention) and containers.
enum class ModuleKind {
  Embedding,      // model.embed_tokens (nn.Embedding)
  RmsNorm,        // *.input_layernorm, *.post_attention_layernorm, model.norm, q_a_layernorm...
  MlaAttention,   // model.layers.N.self_attn (DeepseekV2Attention / DeepseekV3Attention)
  Mlp,            // dense model.layers.N.mlp (DeepseekV3MLP)
  MoeGate,        // model.layers.N.mlp.gate (MoEGate)
  RoutedExperts,  // model.layers.N.mlp.experts (an nn.ModuleList in HF)
  SharedExperts,  // model.layers.N.mlp.shared_experts (a DeepseekV3MLP in HF)
  LmHead,         // lm_head (nn.Linear)
  Linear,         // any other nn.Linear sub-module (q_a_proj, kv_b_proj, gate_proj, ...)
  RotaryEmbedding,// model.layers.N.self_attn.rotary_emb
  Moe,            // model.layers.N.mlp of MoE layers (DeepseekV3MoE), a container
  Model,          // "model" (DeepseekV3Model), a container
  DecoderLayer,   // model.layers.N, a container
};
inline constexpr int kModuleKindCount = 13;
// Snake-case names, equal to the graph's getModuleKind() for graph ops:
// "embedding", "rms_norm", ..., "routed_experts", "lm_head", "linear",
// "rotary_embedding", "moe", "model", "decoder_layer".
const char *moduleKindName(ModuleKind kind);
std::optional<ModuleKind> parseModuleKind(std::string_view name);

// The anchor picks its HF modeling file by architecture, so a class of
// modeling_deepseek (V2) never matches a module of a V3 model and vice versa.
// DeepSeek-R1 is a DeepseekV3 model.
enum class ModelFamily { Any, DeepseekV2, DeepseekV3 };
const char *modelFamilyName(ModelFamily family);

// A device: "cpu", "cuda" (= cuda:0) or "cuda:N".
struct Device {
  enum class Type { Cpu, Cuda } type = Type::Cpu;
  int index = 0;
  static Device cpu() { return Device{}; }
  static Device cuda(int index = 0) { return Device{Type::Cuda, index}; }
  std::string str() const; // "cpu" / "cuda:N"
  bool operator==(const Device &o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device &o) const { return !(*this == o); }
};
// Exactly "cpu", "cuda" or "cuda:N" (N decimal, at most 4 digits); anything
// else (xpu, npu, CPU, cuda:-1, ...) is nullopt.
std::optional<Device> parseDevice(std::string_view text);

// A kwarg value as written, with its location.
struct KwargValue {
  enum class Kind { Scalar, Null, Mapping, Sequence };
  Kind kind = Kind::Scalar;
  std::string text;   // scalars: as written, unquoted; others: a flow-style rendering
  bool quoted = false; // a quoted scalar ('x' or "x"): always a string, never a bool/int
  SourceLocation location;
};

// One entry of the multi-GPU pipeline map: from `layer` on, the hidden states
// move to `device` (the anchor's KDeepseekV2Model `transfer_map` kwarg).
struct TransferMapEntry {
  int layer = 0;
  Device device;
  SourceLocation location;
};

// A kernel family chosen by generate_op / prefill_op, with the devices the
// name written allows (an anchor alias may allow fewer than our family).
struct KernelChoice {
  const KernelOpInfo *op = nullptr;
  std::string written;      // as written; empty when the operator's default applies
  unsigned devices = 0;     // DeviceMask bits (Operators.h)
};

struct Rule {
  SourceLocation location; // of the list item (its first key)
  // match
  std::optional<std::string> namePattern; // as written
  SourceLocation nameLocation;
  std::optional<std::regex> nameRegex;    // ECMAScript, searched like Python's re.search
  std::optional<std::string> matchClass;  // as written
  SourceLocation classLocation;
  std::vector<ModuleKind> matchKinds;     // kinds the class names; empty = any kind
  ModelFamily matchFamily = ModelFamily::Any;
  // replace
  std::string replaceClass = "default";   // as written ("default" keeps the module as it is)
  SourceLocation replaceClassLocation;
  const OperatorInfo *op = nullptr;       // our operator the class maps to; never null after a successful parse
  // Devices with the operator's defaults applied where the rule gives none.
  Device generateDevice, prefillDevice;
  std::optional<Device> outDevice;
  KernelChoice generateOp, prefillOp;     // op == nullptr for operators without kernel families
  std::map<std::string, KwargValue> kwargs; // every kwarg as written, including the above
  std::vector<TransferMapEntry> transferMap; // the model operator's transfer_map, layers increasing
  bool recursive = true;
  SourceLocation recursiveLocation;
  std::optional<long long> layerwisePrefillThreshold; // model operator: per_layer_prefill_intput_threshold

  // Whether the rule matches a module with this path and kind (class and name
  // must both match when both are given). Never throws: a regex engine error
  // (complexity or stack limit) counts as no match and sets *error if given.
  bool matches(const std::string &modulePath, ModuleKind kind,
               ModelFamily family = ModelFamily::Any, std::string *error = nullptr) const;
};

struct RuleSet {
  std::string file; // the display name diagnostics use
  std::vector<Rule> rules;
  std::vector<TransferMapEntry> transferMap; // copy of the one rule's map that has one; sorted by layer
  int transferMapRule = -1;                  // index of that rule
  // Layer-wise prefill (the anchor's per_layer_prefill_intput_threshold of the
  // model operator; 30000 when a model rule omits it, 0 = off, and off when no
  // rule replaces the model). In the anchor, linear and experts operators use
  // their prefill_device / prefill_op only in layer-wise prefill, for prompts
  // longer than this; otherwise both phases use generate_*. See docs/rules.md.
  long long layerwisePrefillThreshold = 0;

  // The device the pipeline runs layer `layer` on according to transfer_map:
  // the device of the last entry at or before it; nullopt when no entry is
  // (no transfer_map, or a layer before the first entry: it runs on the
  // model operator's device, cuda:0 unless the model rule says otherwise).
  std::optional<Device> stageDevice(int layer) const;
};

// Parses a rule file. Errors and warnings go to `diagnostics` (each with
// file:line:col); the result is an error (its message counts the errors) if
// any diagnostic is an error.
StatusOr<RuleSet> parseRuleFile(const std::string &path, std::vector<Diagnostic> &diagnostics);
StatusOr<RuleSet> parseRuleText(const std::string &text, const std::string &displayName,
                                std::vector<Diagnostic> &diagnostics);

// ---- Applying rules to a model -------------------------------------------

// One module of the model: its HF path and its kind.
struct ModuleRef {
  std::string path;
  ModuleKind kind;
};

// The module tree of a DeepSeek model in pre-order, named like HF:
// model, model.embed_tokens, model.layers.N (+ norms, self_attn and its
// projections, norms and rotary_emb, mlp and its children), model.norm, lm_head.
struct DeepseekTreeShape {
  int layers = 61;
  int leadingDenseLayers = 3; // dense MLP layers before the MoE ones
  bool qLora = true;          // q_a_proj/q_a_layernorm/q_b_proj (false: q_proj, V2-Lite)
  bool sharedExperts = true;
};
std::vector<ModuleRef> buildDeepseekModuleTree(const DeepseekTreeShape &shape);

struct ApplyOptions {
  bool strict = false; // a module no rule places is an error (ktc --strict)
  ModelFamily family = ModelFamily::Any;
  Device defaultDevice = Device::cuda(0); // the anchor's default_device
  int maxUnplacedErrors = 20;            // strict mode: further ones are counted in a note
};

struct Placement {
  enum class Source {
    Rule,      // the first rule that matched it
    Inherited, // inside a module a recursive: false rule placed: the parent's operator owns it
    Unplaced,  // no rule matched: the documented default (default operator on defaultDevice)
  };
  Source source = Source::Unplaced;
  int ruleIndex = -1;              // Rule: that rule; Inherited: the rule of the pruning ancestor
  std::string inheritedFrom;       // Inherited: the path of the pruning ancestor
  const OperatorInfo *op = nullptr; // Rule: the rule's operator; Inherited/Unplaced: the default operator
  Device generateDevice, prefillDevice;
  std::optional<Device> outDevice;
  KernelChoice generateOp, prefillOp;
  std::map<std::string, KwargValue> kwargs; // Rule: the rule's kwargs as written
};
const char *placementSourceName(Placement::Source source);

// Applies the rules to the modules (any order; a module's parent is the
// longest proper dotted prefix of its path in the list). Parents are placed
// before children; for each module the first matching rule wins; a rule with
// recursive: false leaves the module's descendants to it (Inherited). Reports
// errors (operator cannot replace a matched module's kind; strict: unplaced
// modules) and warnings (a rule that places no module; transfer_map entries
// past the last layer). The result has one placement per input module, in
// input order.
std::vector<Placement> applyRules(const RuleSet &rules, const std::vector<ModuleRef> &modules,
                                  const ApplyOptions &options,
                                  std::vector<Diagnostic> &diagnostics);

} // namespace kt::rules
