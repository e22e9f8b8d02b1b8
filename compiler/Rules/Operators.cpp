#include "compiler/Rules/Operators.h"

#include <algorithm>
#include <cctype>

namespace kt::rules {

bool deviceAllowed(unsigned mask, const Device &device) {
  return device.type == Device::Type::Cpu ? (mask & kCpuDevices) != 0
                                          : (mask & kCudaDevices) != 0;
}

std::string deviceMaskString(unsigned mask) {
  if (mask == kAllDevices)
    return "cpu and cuda";
  if (mask == kCpuDevices)
    return "cpu";
  if (mask == kCudaDevices)
    return "cuda";
  return "no device";
}

bool OperatorInfo::replacesKind(ModuleKind kind) const {
  return kinds.empty() || std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
}

const KwargSpec *OperatorInfo::findKwarg(std::string_view kwargName) const {
  for (const KwargSpec &spec : kwargs)
    if (spec.name == kwargName)
      return &spec;
  return nullptr;
}

const KernelOpInfo *OperatorInfo::findKernelOp(std::string_view ourName) const {
  for (const KernelOpInfo &op : kernelOps)
    if (op.name == ourName)
      return &op;
  return nullptr;
}

std::optional<KernelChoice> OperatorInfo::resolveKernelOp(std::string_view written) const {
  for (const KernelOpInfo &op : kernelOps) {
    if (op.name == written)
      return KernelChoice{&op, std::string(written), op.devices};
    for (const KernelOpAlias &alias : op.aliases)
      if (alias.anchorName == written)
        return KernelChoice{&op, std::string(written), alias.devices & op.devices};
  }
  return std::nullopt;
}

std::vector<std::string> OperatorInfo::kernelOpSpellings() const {
  std::vector<std::string> names;
  for (const KernelOpInfo &op : kernelOps)
    names.push_back(op.name);
  for (const KernelOpInfo &op : kernelOps)
    for (const KernelOpAlias &alias : op.aliases)
      names.push_back(alias.anchorName);
  return names;
}

namespace {

KwargSpec deviceKwarg(const char *name, const char *summary) {
  return {name, KwargType::Device, summary, {}};
}

std::vector<KwargSpec> placementKwargs() {
  return {deviceKwarg("generate_device", "device for decode (token generation)"),
          deviceKwarg("prefill_device", "device for prefill (the prompt)")};
}

std::vector<KwargSpec> kernelKwargs() {
  std::vector<KwargSpec> specs = placementKwargs();
  specs.push_back({"generate_op", KwargType::KernelOp, "kernel family for decode", {}});
  specs.push_back({"prefill_op", KwargType::KernelOp, "kernel family for prefill", {}});
  specs.push_back(deviceKwarg("out_device", "device the output is moved to"));
  return specs;
}

std::vector<OperatorInfo> buildOperatorTable() {
  const std::string ops = "ktransformers.operators.";
  std::vector<OperatorInfo> table;

  {
    OperatorInfo op;
    op.name = "default";
    op.summary = "the module as it is (its standard implementation), placed on the given devices";
    op.anchorClasses = {"default"};
    op.kwargs = placementKwargs();
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "linear";
    op.summary = "a linear projection with a kernel family per phase";
    op.kinds = {ModuleKind::Linear, ModuleKind::LmHead};
    op.anchorClasses = {ops + "linear.KTransformersLinear"};
    op.kwargs = kernelKwargs();
    op.kernelOps = {
        {"quant", kAllDevices,
         "GEMV/GEMM on the GGUF-quantized weights as stored, dequantized on the fly "
         "(CUDA kernels compiled by NVRTC; CPU kernels for the host ISA)",
         {{"KLinearMarlin", kCudaDevices, "the anchor's Marlin kernels are GPU-only"},
          {"VLinearMarlin", kCudaDevices, "the anchor's Marlin kernels are GPU-only"},
          {"KLinearCPUInfer", kCpuDevices, "the anchor's llamafile CPU kernels"},
          {"KLinearQ8", kAllDevices,
           "the anchor requantizes to int8 per row; we compute on the GGUF blocks as stored"}}},
        {"dense", kAllDevices,
         "weights dequantized once at load to bf16, then a dense GEMM (cuBLASLt / oneDNN)",
         {{"KLinearTorch", kAllDevices, ""}}},
        {"fp8", kCudaDevices,
         "FP8 e4m3 weights with 128x128 block scales (DeepSeek-V3 native checkpoints): "
         "FP8 tensor-core GEMM on sm_89 and newer, a dequantizing kernel on older GPUs",
         {{"KLinearFP8", kCudaDevices, ""}}},
    };
    op.defaultGenerateOp = "quant";
    op.defaultPrefillOp = "dense";
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "experts";
    op.summary = "the routed experts of a MoE layer, with a kernel family per phase";
    op.kinds = {ModuleKind::RoutedExperts};
    op.anchorClasses = {ops + "experts.KTransformersExperts", ops + "experts.KTransformersExpertsV2"};
    op.kwargs = kernelKwargs();
    op.kwargs.push_back({"backend", KwargType::Choice,
                         "CPU expert kernels: llamafile (GGUF blocks), AMXInt8 or AMXBF16 "
                         "(need AMX and BF16 expert weights)",
                         {"llamafile", "AMXInt8", "AMXBF16"}});
    op.kernelOps = {
        {"quant", kAllDevices,
         "expert GEMMs on the GGUF-quantized weights as stored: CPU code for the host ISA, "
         "CUDA kernels on a GPU",
         {{"KExpertsCPU", kCpuDevices, "the anchor's CPU experts"},
          {"KSFTExpertsCPU", kCpuDevices, "the anchor's fine-tuning CPU experts; inference only here"},
          {"KExpertsMarlin", kCudaDevices, "the anchor's Marlin kernels are GPU-only"}}},
        {"dense", kAllDevices, "expert weights dequantized once at load to bf16, dense GEMMs",
         {{"KExpertsTorch", kAllDevices, ""}}},
    };
    op.defaultGenerateDevice = Device::cpu();
    op.defaultGenerateOp = "quant";
    op.defaultPrefillOp = "dense";
    op.defaultOutDevice = Device::cuda(0);
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "moe";
    op.summary = "the MoE block: routes tokens, runs routed and shared experts, sums them";
    op.kinds = {ModuleKind::Moe};
    op.anchorClasses = {ops + "experts.KDeepseekV3MoE", ops + "experts.KDeepseekV2MoE",
                        ops + "experts.KDeepseekV3MoEV2"};
    op.kwargs = placementKwargs();
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "moe_gate";
    op.summary = "the router: expert scores (softmax or sigmoid + correction bias), "
                 "group-limited top-k, weight normalization and scaling";
    op.kinds = {ModuleKind::MoeGate};
    op.anchorClasses = {ops + "gate.KMoEGate"};
    op.kwargs = placementKwargs();
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "mla_attention";
    op.summary = "multi-head latent attention with the compressed latent KV cache";
    op.kinds = {ModuleKind::MlaAttention};
    op.anchorClasses = {ops + "attention.KDeepseekV2Attention",
                        ops + "balance_serve_attention.flashinfer_attn"};
    op.kwargs = placementKwargs();
    op.kwargs.push_back({"absorb_for_prefill", KwargType::Bool,
                         "absorb kv_b_proj into the query/output in prefill as in decode "
                         "(saves memory for long prompts; prefill may be slower)",
                         {}});
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "rotary_embedding";
    op.summary = "rotary position embedding (YaRN-scaled for DeepSeek-V2/V3)";
    op.kinds = {ModuleKind::RotaryEmbedding};
    op.anchorClasses = {ops + "RoPE.YarnRotaryEmbeddingV3", ops + "RoPE.YarnRotaryEmbedding",
                        ops + "RoPE.RotaryEmbeddingV3", ops + "RoPE.RotaryEmbedding"};
    op.kwargs = placementKwargs();
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "rms_norm";
    op.summary = "RMS normalization";
    op.kinds = {ModuleKind::RmsNorm};
    op.anchorClasses = {ops + "layernorm.RMSNorm", ops + "layernorm.DeepseekV3RMSNormTorch"};
    op.kwargs = placementKwargs();
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "mlp";
    op.summary = "a dense gated MLP (dense layers' mlp, the shared experts)";
    op.kinds = {ModuleKind::Mlp, ModuleKind::SharedExperts};
    op.anchorClasses = {ops + "mlp.kDeepseekV3MLP"};
    op.kwargs = placementKwargs();
    table.push_back(op);
  }
  {
    OperatorInfo op;
    op.name = "model";
    op.summary = "the decoder stack: runs the layers in order, moving activations between "
                 "devices where transfer_map says";
    op.kinds = {ModuleKind::Model};
    op.anchorClasses = {ops + "models.KDeepseekV2Model"};
    op.kwargs = placementKwargs(); // where the stack starts: layers before transfer_map's first entry
    op.kwargs[0].summary = "device the layers before the first transfer_map entry run on (decode)";
    op.kwargs[1].summary = "device the layers before the first transfer_map entry run on (prefill)";
    op.kwargs.insert(op.kwargs.end(), {
        {"per_layer_prefill_intput_threshold", KwargType::NonNegativeInt,
         "prompts longer than this load layers to the GPU one at a time in prefill; "
         "0 disables it (the anchor's spelling)",
         {}},
        {"transfer_map", KwargType::TransferMap,
         "pipeline stages: layer index -> device the activations move to at that layer",
         {}},
    });
    table.push_back(op);
  }
  return table;
}

std::vector<MatchClassInfo> buildMatchClassTable() {
  using K = ModuleKind;
  std::vector<MatchClassInfo> table = {
      {"torch.nn.Linear", {K::Linear, K::LmHead}, ModelFamily::Any, "every nn.Linear, lm_head included"},
      {"torch.nn.Embedding", {K::Embedding}, ModelFamily::Any, ""},
      {"torch.nn.ModuleList", {K::RoutedExperts}, ModelFamily::Any,
       "HF keeps the routed experts in an nn.ModuleList"},
      {"torch.nn.Module",
       {K::Embedding, K::RmsNorm, K::MlaAttention, K::Mlp, K::MoeGate, K::RoutedExperts,
        K::SharedExperts, K::LmHead, K::Linear, K::RotaryEmbedding, K::Moe, K::Model,
        K::DecoderLayer},
       ModelFamily::Any, "every module"},
  };
  struct FamilyPrefix {
    const char *prefix;
    const char *v; // "V2" / "V3"
    ModelFamily family;
  };
  for (const FamilyPrefix &f :
       {FamilyPrefix{"ktransformers.models.modeling_deepseek.", "V2", ModelFamily::DeepseekV2},
        FamilyPrefix{"ktransformers.models.modeling_deepseek_v3.", "V3", ModelFamily::DeepseekV3}}) {
    std::string p = f.prefix, d = std::string("Deepseek") + f.v;
    table.push_back({p + d + "RMSNorm", {K::RmsNorm}, f.family, ""});
    table.push_back({p + d + "RotaryEmbedding", {K::RotaryEmbedding}, f.family,
                     "isinstance: also the YaRN subclass DeepSeek models use"});
    table.push_back({p + d + "YarnRotaryEmbedding", {K::RotaryEmbedding}, f.family,
                     "every DeepSeek-V2/V3 checkpoint uses YaRN"});
    table.push_back({p + d + "MLP", {K::Mlp, K::SharedExperts}, f.family,
                     "dense layers' mlp and the shared experts"});
    table.push_back({p + "MoEGate", {K::MoeGate}, f.family, ""});
    table.push_back({p + d + "MoE", {K::Moe}, f.family, ""});
    table.push_back({p + d + "Attention", {K::MlaAttention}, f.family, ""});
    table.push_back({p + d + "FlashAttention2", {K::MlaAttention}, f.family,
                     "the anchor's flash-attention subclass of the same module"});
    table.push_back({p + d + "DecoderLayer", {K::DecoderLayer}, f.family, ""});
    table.push_back({p + d + "Model", {K::Model}, f.family, ""});
  }
  for (int k = 0; k < kModuleKindCount; ++k) {
    auto kind = static_cast<ModuleKind>(k);
    table.push_back({moduleKindName(kind), {kind}, ModelFamily::Any, "our name"});
  }
  return table;
}

std::vector<UnsupportedName> buildUnsupportedTable() {
  const std::string xpu = " is an Intel XPU (IPEX-LLM) operator; this project runs on cpu and "
                          "CUDA devices: use ";
  const std::string ops = "ktransformers.operators.";
  return {
      {ops + "layernorm.KDeepseekRMSNormIPEXLLM", ops + "layernorm.KDeepseekRMSNormIPEXLLM" + xpu +
                                                     ops + "layernorm.RMSNorm or \"default\""},
      {ops + "gate.KMoEGateIPEXLLM", ops + "gate.KMoEGateIPEXLLM" + xpu + ops + "gate.KMoEGate"},
      {"KLinearIPEXLLM", "KLinearIPEXLLM" + xpu + "KLinearMarlin, KLinearTorch or KLinearCPUInfer"},
      {"KExpertsCPUW8A8", "KExpertsCPUW8A8 is an Ascend NPU operator; use KExpertsCPU"},
      {"KLinearTorchW8A8A2", "KLinearTorchW8A8A2 is an Ascend NPU operator; use KLinearTorch"},
  };
}

std::string lastComponent(std::string_view name) {
  size_t dot = name.rfind('.');
  return std::string(dot == std::string_view::npos ? name : name.substr(dot + 1));
}

std::string lower(std::string_view text) {
  std::string out(text);
  for (char &c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

} // namespace

const std::vector<OperatorInfo> &operatorTable() {
  static const std::vector<OperatorInfo> table = buildOperatorTable();
  return table;
}

const OperatorInfo &defaultOperator() { return operatorTable().front(); }

const OperatorInfo *findOperator(std::string_view name) {
  for (const OperatorInfo &op : operatorTable()) {
    if (op.name == name)
      return &op;
    for (const std::string &cls : op.anchorClasses)
      if (cls == name)
        return &op;
  }
  return nullptr;
}

std::optional<UnsupportedName> findUnsupportedName(std::string_view name) {
  static const std::vector<UnsupportedName> table = buildUnsupportedTable();
  for (const UnsupportedName &entry : table)
    if (entry.name == name)
      return entry;
  // Every Ascend NPU operator lives under ktransformers.operators.ascend.
  const std::string_view ascendPrefix = "ktransformers.operators.ascend.";
  if (name.substr(0, ascendPrefix.size()) == ascendPrefix)
    return UnsupportedName{std::string(name),
                           std::string(name) +
                               " is an Ascend NPU operator; this project runs on cpu and CUDA "
                               "devices: use the operator of the same module kind under "
                               "ktransformers.operators (see docs/rules.md)"};
  return std::nullopt;
}

const std::vector<MatchClassInfo> &matchClassTable() {
  static const std::vector<MatchClassInfo> table = buildMatchClassTable();
  return table;
}

const MatchClassInfo *findMatchClass(std::string_view name) {
  for (const MatchClassInfo &info : matchClassTable())
    if (info.name == name)
      return &info;
  return nullptr;
}

size_t editDistance(std::string_view a, std::string_view b) {
  // Optimal string alignment distance: a transposition ("devcie") costs 1.
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<size_t>> d(n + 1, std::vector<size_t>(m + 1));
  for (size_t i = 0; i <= n; ++i)
    d[i][0] = i;
  for (size_t j = 0; j <= m; ++j)
    d[0][j] = j;
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[n][m];
}

std::vector<std::string> closestNames(std::string_view written,
                                      const std::vector<std::string> &candidates,
                                      size_t maxResults) {
  // Scores: a candidate whose last dotted component equals what was written
  // (a class without its module path) or that differs only in case ranks
  // first; otherwise the edit distance, within about a third of the length.
  std::vector<std::pair<size_t, std::string>> scored;
  const std::string writtenLower = lower(written);
  const size_t limit = std::max<size_t>(2, std::min<size_t>(4, written.size() / 3));
  for (const std::string &candidate : candidates) {
    size_t score;
    if (lower(candidate) == writtenLower || lower(lastComponent(candidate)) == writtenLower ||
        lower(lastComponent(candidate)) == lower(lastComponent(written)))
      score = 0;
    else {
      size_t distance = editDistance(written, candidate);
      size_t lastDistance = editDistance(lastComponent(written), lastComponent(candidate));
      distance = std::min(distance, lastDistance + 1);
      if (distance > limit)
        continue;
      score = distance;
    }
    scored.emplace_back(score, candidate);
  }
  std::stable_sort(scored.begin(), scored.end(),
                   [](const auto &a, const auto &b) { return a.first < b.first; });
  std::vector<std::string> result;
  for (const auto &entry : scored) {
    if (result.size() >= maxResults)
      break;
    if (std::find(result.begin(), result.end(), entry.second) == result.end())
      result.push_back(entry.second);
  }
  return result;
}

} // namespace kt::rules
