#include "compiler/Import/GgufImporter.h"

#include "dialects/Graph/IR/GraphDialect.h"
#include "runtime/model/DeepseekConfig.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/Diagnostics.h"
#include "mlir/IR/Verifier.h"
#include "llvm/Support/raw_ostream.h"

#include <string>

using namespace mlir;

namespace kt::compiler {
namespace {

using kt::gguf::GgmlTypeTraits;
using kt::gguf::TensorInfo;
using kt::model::DeepseekConfig;

class Importer {
public:
  Importer(MLIRContext &context, const gguf::GgufModel &model, const DeepseekConfig &config,
           const safetensors::Checkpoint *fp8)
      : context_(context), builder_(&context), model_(model), config_(config), fp8_(fp8) {}

  StatusOr<OwningOpRef<ModuleOp>> run(const std::string &sourcePath);

private:
  // The weight attribute of tensor `name`, or nullptr after recording an error
  // (missing tensor, or a type ktc cannot run).
  graph::WeightAttr weight(const std::string &name);
  // Like weight(), but a missing tensor is not an error.
  graph::WeightAttr optionalWeight(const std::string &name);
  void fail(std::string message) {
    if (error_.empty())
      error_ = std::move(message);
  }
  const std::string &file() const { return model_.sourcePath(); }

  StringAttr path(const std::string &modulePath) { return builder_.getStringAttr(modulePath); }
  Value buildLayer(int64_t layer, Value hidden);
  Value buildMoe(int64_t layer, const std::string &prefix, Value input);

  MLIRContext &context_;
  OpBuilder builder_;
  // The FP8 checkpoint's weight for GGUF tensor `name` when it is one of
  // the projections the checkpoint provides; null otherwise (or on error).
  graph::WeightAttr fp8Weight(const std::string &name, const TensorInfo &gguf);

  const gguf::GgufModel &model_;
  const DeepseekConfig &config_;
  const safetensors::Checkpoint *fp8_;
  Location loc_ = UnknownLoc::get(&context_);
  RankedTensorType activation_;
  std::string error_;
};

// The Hugging Face module of GGUF projection `blk.N.<kind>.weight` that an
// FP8 checkpoint stores in FP8, or an empty string. attn_kv_b stays GGUF: the
// MLA operator splits it into its absorbed halves.
std::string fp8ProjectionName(const std::string &name) {
  static const std::pair<const char *, const char *> kProjections[] = {
      {"attn_q_a", "self_attn.q_a_proj"},
      {"attn_q_b", "self_attn.q_b_proj"},
      {"attn_q", "self_attn.q_proj"},
      {"attn_kv_a_mqa", "self_attn.kv_a_proj_with_mqa"},
      {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},
      {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
      {"ffn_gate_shexp", "mlp.shared_experts.gate_proj"},
      {"ffn_up_shexp", "mlp.shared_experts.up_proj"},
      {"ffn_down_shexp", "mlp.shared_experts.down_proj"},
  };
  const std::string prefix = "blk.", suffix = ".weight";
  if (name.compare(0, prefix.size(), prefix) != 0 || name.size() <= suffix.size() ||
      name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0)
    return {};
  const size_t dot = name.find('.', prefix.size());
  if (dot == std::string::npos)
    return {};
  const std::string layer = name.substr(prefix.size(), dot - prefix.size());
  const std::string kind = name.substr(dot + 1, name.size() - suffix.size() - dot - 1);
  for (const auto &[gguf, hf] : kProjections)
    if (kind == gguf)
      return "model.layers." + layer + "." + hf + ".weight";
  return {};
}

graph::WeightAttr Importer::fp8Weight(const std::string &name, const TensorInfo &gguf) {
  const std::string hf = fp8ProjectionName(name);
  if (!fp8_ || hf.empty())
    return {};
  const std::string checkpoint = fp8_->path();
  const safetensors::TensorInfo *weight = fp8_->findTensor(hf);
  const safetensors::TensorInfo *scale = fp8_->findTensor(hf + "_scale_inv");
  const std::vector<int64_t> rowsCols = {gguf.ne.size() == 2 ? gguf.ne[1] : 0, gguf.ne[0]};
  const auto blocks = [&](int64_t n) { return (n + 127) / 128; };
  if (!weight || weight->dtype != safetensors::Dtype::F8_E4M3 || weight->shape != rowsCols) {
    fail(checkpoint + ": the FP8 checkpoint has no F8_E4M3 tensor '" + hf + "' of shape [" +
         std::to_string(rowsCols[0]) + ", " + std::to_string(rowsCols[1]) + "] for " + file() +
         "'s '" + name + "'; give the FP8 checkpoint of the same model to --fp8-path");
    return {};
  }
  if (!scale || scale->dtype != safetensors::Dtype::F32 ||
      scale->shape != std::vector<int64_t>{blocks(rowsCols[0]), blocks(rowsCols[1])}) {
    fail(checkpoint + ": '" + hf + "' has no F32 weight_scale_inv of shape [" +
         std::to_string(blocks(rowsCols[0])) + ", " + std::to_string(blocks(rowsCols[1])) +
         "] (one per 128x128 block); the checkpoint is incomplete");
    return {};
  }
  return graph::WeightAttr::get(&context_, hf, graph::kFp8E4m3, gguf.ne);
}

graph::WeightAttr Importer::optionalWeight(const std::string &name) {
  const TensorInfo *tensor = model_.findTensor(name);
  if (!tensor)
    return {};
  if (graph::WeightAttr fp8 = fp8Weight(name, *tensor))
    return fp8;
  if (!error_.empty())
    return {};
  const GgmlTypeTraits &traits = gguf::ggmlTypeTraits(tensor->type);
  // A checkpoint's e4m3 weight (its block scales ride with it).
  if (tensor->type == gguf::GgmlType::F8_E4M3_B128)
    return graph::WeightAttr::get(&context_, name, graph::kFp8E4m3, tensor->ne);
  if (!traits.dequantizable) {
    fail(file() + ": tensor '" + name + "' has storage type " + std::string(traits.name) +
         ", which ktc cannot run yet; use a model quantized to F32, F16, BF16, Q8_0, Q4_0, "
         "Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K");
    return {};
  }
  return graph::WeightAttr::get(&context_, name, traits.name, tensor->ne);
}

graph::WeightAttr Importer::weight(const std::string &name) {
  if (!model_.findTensor(name)) {
    fail(file() + ": tensor '" + name +
         "' is missing; the file is incomplete or was converted for another model layout");
    return {};
  }
  return optionalWeight(name);
}

Value Importer::buildMoe(int64_t layer, const std::string &prefix, Value input) {
  const DeepseekConfig &c = config_;
  std::string module = "model.layers." + std::to_string(layer) + ".mlp";
  auto idsType = RankedTensorType::get({ShapedType::kDynamic, c.expertsUsed},
                                       builder_.getI32Type());
  auto weightsType = RankedTensorType::get({ShapedType::kDynamic, c.expertsUsed},
                                           builder_.getF32Type());
  graph::WeightAttr gateWeight = weight(prefix + "ffn_gate_inp.weight");
  graph::WeightAttr bias = optionalWeight(prefix + "exp_probs_b.bias");
  graph::WeightAttr gateExps = weight(prefix + "ffn_gate_exps.weight");
  graph::WeightAttr upExps = weight(prefix + "ffn_up_exps.weight");
  graph::WeightAttr downExps = weight(prefix + "ffn_down_exps.weight");
  if (!error_.empty())
    return {};
  auto gate = builder_.create<graph::MoeGateOp>(
      loc_, idsType, weightsType, input, path(module + ".gate"),
      builder_.getI64IntegerAttr(c.experts), builder_.getI64IntegerAttr(c.expertsUsed),
      builder_.getI64IntegerAttr(c.expertGroups),
      builder_.getI64IntegerAttr(c.expertGroupsUsed),
      builder_.getStringAttr(model::expertScoringName(c.scoring)),
      builder_.getBoolAttr(c.expertWeightsNorm),
      builder_.getF64FloatAttr(c.expertWeightsScale), gateWeight, bias);
  Value routed = builder_.create<graph::RoutedExpertsOp>(
      loc_, activation_, input, gate.getTopkIds(), gate.getTopkWeights(),
      path(module + ".experts"), gateExps, upExps, downExps);
  if (c.sharedExperts == 0)
    return routed;
  graph::WeightAttr gateShexp = weight(prefix + "ffn_gate_shexp.weight");
  graph::WeightAttr upShexp = weight(prefix + "ffn_up_shexp.weight");
  graph::WeightAttr downShexp = weight(prefix + "ffn_down_shexp.weight");
  if (!error_.empty())
    return {};
  Value shared = builder_.create<graph::SharedExpertsOp>(
      loc_, activation_, input, path(module + ".shared_experts"), gateShexp, upShexp,
      downShexp);
  return builder_.create<graph::AddOp>(loc_, routed, shared);
}

Value Importer::buildLayer(int64_t layer, Value hidden) {
  const DeepseekConfig &c = config_;
  std::string prefix = "blk." + std::to_string(layer) + ".";
  std::string module = "model.layers." + std::to_string(layer);
  FloatAttr eps = builder_.getF32FloatAttr(c.rmsEps);

  graph::WeightAttr attnNorm = weight(prefix + "attn_norm.weight");
  graph::WeightAttr qA, qANorm, qB, q;
  if (c.qLoraRank > 0) {
    qA = weight(prefix + "attn_q_a.weight");
    qANorm = weight(prefix + "attn_q_a_norm.weight");
    qB = weight(prefix + "attn_q_b.weight");
  } else {
    q = weight(prefix + "attn_q.weight");
  }
  graph::WeightAttr kvA = weight(prefix + "attn_kv_a_mqa.weight");
  graph::WeightAttr kvANorm = weight(prefix + "attn_kv_a_norm.weight");
  graph::WeightAttr kvB = optionalWeight(prefix + "attn_kv_b.weight");
  graph::WeightAttr kB = optionalWeight(prefix + "attn_k_b.weight");
  graph::WeightAttr vB = optionalWeight(prefix + "attn_v_b.weight");
  if (!kvB && !(kB && vB))
    fail(file() + ": layer " + std::to_string(layer) + " has neither '" + prefix +
         "attn_kv_b.weight' nor both '" + prefix + "attn_k_b.weight' and '" + prefix +
         "attn_v_b.weight'; the file is incomplete");
  graph::WeightAttr out = weight(prefix + "attn_output.weight");
  graph::WeightAttr ffnNorm = weight(prefix + "ffn_norm.weight");
  if (!error_.empty())
    return {};

  Value normed = builder_.create<graph::RmsNormOp>(
      loc_, activation_, hidden, path(module + ".input_layernorm"), attnNorm, eps);
  Value attention = builder_.create<graph::MlaAttentionOp>(
      loc_, activation_, normed, path(module + ".self_attn"),
      builder_.getI64IntegerAttr(c.heads), builder_.getI64IntegerAttr(c.qLoraRank),
      builder_.getI64IntegerAttr(c.kvLoraRank), builder_.getI64IntegerAttr(c.qkNopeHeadDim),
      builder_.getI64IntegerAttr(c.qkRopeHeadDim), builder_.getI64IntegerAttr(c.vHeadDim),
      eps, builder_.getF64FloatAttr(c.ropeTheta),
      builder_.getF64FloatAttr(c.ropeScalingFactor),
      builder_.getI64IntegerAttr(c.ropeOriginalContextLength),
      builder_.getF64FloatAttr(c.ropeYarnLogMultiplier), qA, qANorm, qB, q, kvA, kvANorm,
      kvB, kB && vB ? kB : graph::WeightAttr(), kB && vB ? vB : graph::WeightAttr(), out);
  Value afterAttention = builder_.create<graph::AddOp>(loc_, hidden, attention);
  Value ffnInput = builder_.create<graph::RmsNormOp>(
      loc_, activation_, afterAttention, path(module + ".post_attention_layernorm"), ffnNorm,
      eps);

  Value ffn;
  if (c.isMoeLayer(layer)) {
    ffn = buildMoe(layer, prefix, ffnInput);
  } else {
    graph::WeightAttr gate = weight(prefix + "ffn_gate.weight");
    graph::WeightAttr up = weight(prefix + "ffn_up.weight");
    graph::WeightAttr down = weight(prefix + "ffn_down.weight");
    if (!error_.empty())
      return {};
    ffn = builder_.create<graph::MlpOp>(loc_, activation_, ffnInput, path(module + ".mlp"),
                                        gate, up, down);
  }
  if (!ffn)
    return {};
  return builder_.create<graph::AddOp>(loc_, afterAttention, ffn);
}

StatusOr<OwningOpRef<ModuleOp>> Importer::run(const std::string &sourcePath) {
  const DeepseekConfig &c = config_;
  loc_ = NameLoc::get(builder_.getStringAttr(sourcePath));
  OwningOpRef<ModuleOp> module = ModuleOp::create(loc_);
  module->getOperation()->setAttr("ktgraph.source", builder_.getStringAttr(sourcePath));
  module->getOperation()->setAttr("ktgraph.architecture", builder_.getStringAttr("deepseek2"));
  if (!c.name.empty())
    module->getOperation()->setAttr("ktgraph.model_name", builder_.getStringAttr(c.name));
  module->getOperation()->setAttr("ktgraph.context_length",
                                  builder_.getI64IntegerAttr(c.contextLength));

  activation_ = RankedTensorType::get({ShapedType::kDynamic, c.hidden}, builder_.getF32Type());
  auto tokensType = RankedTensorType::get({ShapedType::kDynamic}, builder_.getI32Type());
  auto logitsType = RankedTensorType::get({ShapedType::kDynamic, c.vocab}, builder_.getF32Type());

  builder_.setInsertionPointToEnd(module->getBody());
  auto function = builder_.create<func::FuncOp>(
      loc_, "forward", builder_.getFunctionType({tokensType}, {logitsType}));
  Block *body = function.addEntryBlock();
  builder_.setInsertionPointToEnd(body);

  graph::WeightAttr embedding = weight("token_embd.weight");
  if (!error_.empty())
    return Status::error(error_);
  Value hidden = builder_.create<graph::EmbeddingOp>(
      loc_, activation_, body->getArgument(0), path("model.embed_tokens"), embedding);
  for (int64_t layer = 0; layer < c.blockCount && hidden; ++layer)
    hidden = buildLayer(layer, hidden);
  graph::WeightAttr outputNorm = weight("output_norm.weight");
  graph::WeightAttr output = weight("output.weight");
  if (!error_.empty())
    return Status::error(error_);
  Value normed = builder_.create<graph::RmsNormOp>(loc_, activation_, hidden,
                                                   path("model.norm"), outputNorm,
                                                   builder_.getF32FloatAttr(c.rmsEps));
  Value logits = builder_.create<graph::LmHeadOp>(loc_, logitsType, normed, path("lm_head"),
                                                  output);
  builder_.create<func::ReturnOp>(loc_, logits);

  // The op verifiers check every weight shape against the hyper-parameters;
  // collect their messages so the caller gets one error naming the file.
  std::string diagnostics;
  {
    ScopedDiagnosticHandler handler(&context_, [&](Diagnostic &diag) {
      llvm::raw_string_ostream os(diagnostics);
      os << "\n  " << diag;
      for (Diagnostic &note : diag.getNotes())
        os << "\n    note: " << note;
      return success();
    });
    if (failed(verify(*module)))
      return Status::error(file() +
                           ": the tensors do not match the model's hyper-parameters:" +
                           diagnostics);
  }
  return module;
}

} // namespace

StatusOr<OwningOpRef<ModuleOp>> importGgufModel(MLIRContext &context,
                                                const gguf::GgufModel &model,
                                                const std::string &sourcePath,
                                                const safetensors::Checkpoint *fp8) {
  context.loadDialect<graph::KtGraphDialect, func::FuncDialect>();
  StatusOr<DeepseekConfig> config = DeepseekConfig::fromGguf(model);
  if (!config)
    return config.status();
  if (fp8) {
    if (!fp8->fp8())
      return Status::error(fp8->path() + ": not an FP8 checkpoint (its config.json has no "
                                         "quantization_config with quant_method fp8)");
    if (fp8->fp8()->blockSize[0] != static_cast<int64_t>(graph::kFp8Block))
      return Status::error(fp8->path() + ": FP8 blocks of " +
                           std::to_string(fp8->fp8()->blockSize[0]) +
                           "; the FP8 kernels take DeepSeek's 128x128 blocks");
  }
  return Importer(context, model, *config, fp8).run(sourcePath);
}

} // namespace kt::compiler
