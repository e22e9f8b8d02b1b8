// The small value types of RuleSet.h and the DeepSeek module tree.
#include "compiler/Rules/RuleSet.h"

#include <algorithm>
#include <cctype>

namespace kt::rules {

std::string SourceLocation::str() const {
  if (line <= 0)
    return file;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column);
}

const char *severityName(Severity severity) {
  switch (severity) {
  case Severity::Error:
    return "error";
  case Severity::Warning:
    return "warning";
  case Severity::Note:
    return "note";
  }
  return "error";
}

std::string Diagnostic::str() const {
  return location.str() + ": " + severityName(severity) + ": " + message;
}

bool hasErrors(const std::vector<Diagnostic> &diagnostics) {
  return std::any_of(diagnostics.begin(), diagnostics.end(),
                     [](const Diagnostic &d) { return d.severity == Severity::Error; });
}

const char *moduleKindName(ModuleKind kind) {
  switch (kind) {
  case ModuleKind::Embedding:
    return "embedding";
  case ModuleKind::RmsNorm:
    return "rms_norm";
  case ModuleKind::MlaAttention:
    return "mla_attention";
  case ModuleKind::Mlp:
    return "mlp";
  case ModuleKind::MoeGate:
    return "moe_gate";
  case ModuleKind::RoutedExperts:
    return "routed_experts";
  case ModuleKind::SharedExperts:
    return "shared_experts";
  case ModuleKind::LmHead:
    return "lm_head";
  case ModuleKind::Linear:
    return "linear";
  case ModuleKind::RotaryEmbedding:
    return "rotary_embedding";
  case ModuleKind::Moe:
    return "moe";
  case ModuleKind::Model:
    return "model";
  case ModuleKind::DecoderLayer:
    return "decoder_layer";
  }
  return "unknown";
}

std::optional<ModuleKind> parseModuleKind(std::string_view name) {
  for (int k = 0; k < kModuleKindCount; ++k)
    if (name == moduleKindName(static_cast<ModuleKind>(k)))
      return static_cast<ModuleKind>(k);
  return std::nullopt;
}

const char *modelFamilyName(ModelFamily family) {
  switch (family) {
  case ModelFamily::Any:
    return "any";
  case ModelFamily::DeepseekV2:
    return "DeepSeek-V2";
  case ModelFamily::DeepseekV3:
    return "DeepSeek-V3";
  }
  return "any";
}

std::string Device::str() const {
  return type == Type::Cpu ? "cpu" : "cuda:" + std::to_string(index);
}

std::optional<Device> parseDevice(std::string_view text) {
  if (text == "cpu")
    return Device::cpu();
  if (text == "cuda")
    return Device::cuda(0);
  const std::string_view prefix = "cuda:";
  if (text.substr(0, prefix.size()) != prefix)
    return std::nullopt;
  std::string_view digits = text.substr(prefix.size());
  if (digits.empty() || digits.size() > 4)
    return std::nullopt;
  int index = 0;
  for (char c : digits) {
    if (!std::isdigit(static_cast<unsigned char>(c)))
      return std::nullopt;
    index = index * 10 + (c - '0');
  }
  return Device::cuda(index);
}

bool Rule::matches(const std::string &modulePath, ModuleKind kind, ModelFamily family,
                   std::string *error) const {
  if (!matchKinds.empty()) {
    if (std::find(matchKinds.begin(), matchKinds.end(), kind) == matchKinds.end())
      return false;
    if (matchFamily != ModelFamily::Any && family != ModelFamily::Any && matchFamily != family)
      return false;
  }
  if (nameRegex) {
    try {
      return std::regex_search(modulePath, *nameRegex);
    } catch (const std::exception &e) {
      if (error)
        *error = e.what();
      return false;
    }
  }
  return true;
}

std::optional<Device> RuleSet::stageDevice(int layer) const {
  std::optional<Device> device;
  for (const TransferMapEntry &entry : transferMap)
    if (entry.layer <= layer)
      device = entry.device;
  return device;
}

const char *placementSourceName(Placement::Source source) {
  switch (source) {
  case Placement::Source::Rule:
    return "rule";
  case Placement::Source::Inherited:
    return "inherited";
  case Placement::Source::Unplaced:
    return "unplaced";
  }
  return "unplaced";
}

std::vector<ModuleRef> buildDeepseekModuleTree(const DeepseekTreeShape &shape) {
  // Children in the order HF's modeling_deepseek(_v3).py declares them.
  std::vector<ModuleRef> modules;
  auto add = [&](std::string path, ModuleKind kind) { modules.push_back({std::move(path), kind}); };
  auto addGatedMlp = [&](const std::string &prefix) {
    add(prefix + ".gate_proj", ModuleKind::Linear);
    add(prefix + ".up_proj", ModuleKind::Linear);
    add(prefix + ".down_proj", ModuleKind::Linear);
  };
  add("model", ModuleKind::Model);
  add("model.embed_tokens", ModuleKind::Embedding);
  for (int layer = 0; layer < shape.layers; ++layer) {
    const std::string prefix = "model.layers." + std::to_string(layer);
    add(prefix, ModuleKind::DecoderLayer);
    const std::string attn = prefix + ".self_attn";
    add(attn, ModuleKind::MlaAttention);
    if (shape.qLora) {
      add(attn + ".q_a_proj", ModuleKind::Linear);
      add(attn + ".q_a_layernorm", ModuleKind::RmsNorm);
      add(attn + ".q_b_proj", ModuleKind::Linear);
    } else {
      add(attn + ".q_proj", ModuleKind::Linear);
    }
    add(attn + ".kv_a_proj_with_mqa", ModuleKind::Linear);
    add(attn + ".kv_a_layernorm", ModuleKind::RmsNorm);
    add(attn + ".kv_b_proj", ModuleKind::Linear);
    add(attn + ".o_proj", ModuleKind::Linear);
    add(attn + ".rotary_emb", ModuleKind::RotaryEmbedding);
    const std::string mlp = prefix + ".mlp";
    if (layer < shape.leadingDenseLayers) {
      add(mlp, ModuleKind::Mlp);
      addGatedMlp(mlp);
    } else {
      add(mlp, ModuleKind::Moe);
      add(mlp + ".experts", ModuleKind::RoutedExperts);
      add(mlp + ".gate", ModuleKind::MoeGate);
      if (shape.sharedExperts) {
        add(mlp + ".shared_experts", ModuleKind::SharedExperts);
        addGatedMlp(mlp + ".shared_experts");
      }
    }
    add(prefix + ".input_layernorm", ModuleKind::RmsNorm);
    add(prefix + ".post_attention_layernorm", ModuleKind::RmsNorm);
  }
  add("model.norm", ModuleKind::RmsNorm);
  add("lm_head", ModuleKind::LmHead);
  return modules;
}

} // namespace kt::rules
