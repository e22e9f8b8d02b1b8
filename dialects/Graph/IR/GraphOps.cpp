#include "dialects/Graph/IR/GraphDialect.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/Support/FormatVariadic.h"

using namespace mlir;
using namespace kt::graph;

#include "dialects/Graph/IR/GraphInterfaces.cpp.inc"

#define GET_OP_CLASSES
#include "dialects/Graph/IR/GraphOps.cpp.inc"

namespace {

// Stands for a dimension the verifier cannot know (a dynamic activation dim).
constexpr int64_t kAnyDim = ShapedType::kDynamic;

std::string formatShape(ArrayRef<int64_t> shape) {
  std::string text = "[";
  llvm::interleave(
      shape,
      [&](int64_t dim) { text += dim == kAnyDim ? "?" : std::to_string(dim); },
      [&] { text += ", "; });
  return text + "]";
}

// Checks a weight's shape against the one the op's math needs; kAnyDim in
// `expected` matches any size.
LogicalResult verifyWeightShape(Operation *op, StringRef role, WeightAttr weight,
                                ArrayRef<int64_t> expected) {
  ArrayRef<int64_t> shape = weight.getShape();
  bool matches = shape.size() == expected.size();
  for (size_t i = 0; matches && i < shape.size(); ++i)
    matches = expected[i] == kAnyDim || expected[i] == shape[i];
  if (matches)
    return success();
  return op->emitOpError() << "weight '" << role << "' (" << weight.getName()
                           << ") has shape " << formatShape(shape)
                           << ", expected " << formatShape(expected);
}

int64_t featureDim(Value activation) {
  return activation.getType().cast<RankedTensorType>().getDimSize(1);
}

LogicalResult verifyPositive(Operation *op, StringRef name, int64_t value) {
  if (value > 0)
    return success();
  return op->emitOpError() << "'" << name << "' must be positive, got " << value;
}

// Gate/up [hidden, ffn] and down [ffn, hidden], as in the dense MLP and the
// shared experts.
LogicalResult verifyGatedMlpWeights(Operation *op, int64_t hidden, WeightAttr gate,
                                    WeightAttr up, WeightAttr down) {
  if (gate.getShape().size() != 2)
    return op->emitOpError() << "weight 'gate_proj' (" << gate.getName()
                             << ") must have 2 dimensions";
  int64_t ffn = gate.getShape()[1];
  if (failed(verifyWeightShape(op, "gate_proj", gate, {hidden, ffn})) ||
      failed(verifyWeightShape(op, "up_proj", up, {hidden, ffn})) ||
      failed(verifyWeightShape(op, "down_proj", down, {ffn, hidden})))
    return failure();
  return success();
}

} // namespace

//===----------------------------------------------------------------------===//
// Module kinds: our short names, used by placement rules.
//===----------------------------------------------------------------------===//

StringRef EmbeddingOp::getModuleKind() { return "embedding"; }
StringRef RmsNormOp::getModuleKind() { return "rms_norm"; }
// The norm's module: rules placed it as one before the fusion.
StringRef AddRmsNormOp::getModuleKind() { return "rms_norm"; }
StringRef MlaAttentionOp::getModuleKind() { return "mla_attention"; }
StringRef MlpOp::getModuleKind() { return "mlp"; }
StringRef SharedExpertsOp::getModuleKind() { return "shared_experts"; }
StringRef MoeGateOp::getModuleKind() { return "moe_gate"; }
StringRef RoutedExpertsOp::getModuleKind() { return "routed_experts"; }
StringRef LmHeadOp::getModuleKind() { return "lm_head"; }

//===----------------------------------------------------------------------===//
// Verifiers
//===----------------------------------------------------------------------===//

LogicalResult EmbeddingOp::verify() {
  int64_t hidden = featureDim(getResult());
  if (getWeight().getShape().size() != 2)
    return emitOpError() << "weight 'weight' (" << getWeight().getName()
                         << ") must have 2 dimensions [hidden, vocab]";
  if (failed(verifyWeightShape(*this, "weight", getWeight(), {hidden, kAnyDim})))
    return failure();
  auto tokens = getTokens().getType().cast<RankedTensorType>().getDimSize(0);
  auto rows = getResult().getType().cast<RankedTensorType>().getDimSize(0);
  if (!ShapedType::isDynamic(tokens) && !ShapedType::isDynamic(rows) && tokens != rows)
    return emitOpError() << "result has " << rows << " rows for " << tokens << " tokens";
  return success();
}

LogicalResult RmsNormOp::verify() {
  if (!(getEps().convertToFloat() > 0.0f))
    return emitOpError() << "'eps' must be positive";
  return verifyWeightShape(*this, "weight", getWeight(), {featureDim(getInput())});
}

LogicalResult AddRmsNormOp::verify() {
  if (getAddends().size() < 2 || getAddends().size() > 3)
    return emitOpError() << "adds 2 or 3 values, got " << getAddends().size();
  if (!(getEps().convertToFloat() > 0.0f))
    return emitOpError() << "'eps' must be positive";
  return verifyWeightShape(*this, "weight", getWeight(), {featureDim(getSum())});
}

LogicalResult MlaAttentionOp::verify() {
  Operation *op = getOperation();
  int64_t hidden = featureDim(getInput());
  int64_t heads = getNumHeads(), qLora = getQLoraRank(), kvLora = getKvLoraRank();
  int64_t nope = getQkNopeHeadDim(), rope = getQkRopeHeadDim(), v = getVHeadDim();
  if (failed(verifyPositive(op, "num_heads", heads)) ||
      failed(verifyPositive(op, "kv_lora_rank", kvLora)) ||
      failed(verifyPositive(op, "qk_nope_head_dim", nope)) ||
      failed(verifyPositive(op, "qk_rope_head_dim", rope)) ||
      failed(verifyPositive(op, "v_head_dim", v)))
    return failure();
  if (qLora < 0)
    return emitOpError() << "'q_lora_rank' must be 0 (no query compression) or positive";
  if (rope % 2 != 0)
    return emitOpError() << "'qk_rope_head_dim' must be even, got " << rope;
  if (!(getEps().convertToFloat() > 0.0f))
    return emitOpError() << "'eps' must be positive";
  if (getRopeScalingFactor().convertToDouble() < 1.0)
    return emitOpError() << "'rope_scaling_factor' must be at least 1";
  if (getRopeScalingFactor().convertToDouble() > 1.0 && getRopeOriginalContextLength() <= 0)
    return emitOpError() << "YaRN scaling needs a positive 'rope_original_context_length'";

  int64_t qHeadDim = nope + rope;
  if (qLora > 0) {
    if (!getQAProj() || !getQANorm() || !getQBProj())
      return emitOpError() << "q_lora_rank " << qLora
                           << " needs weights 'q_a_proj', 'q_a_norm' and 'q_b_proj'";
    if (getQProj())
      return emitOpError() << "has both 'q_proj' and a q_lora_rank; use one form";
    if (failed(verifyWeightShape(op, "q_a_proj", *getQAProj(), {hidden, qLora})) ||
        failed(verifyWeightShape(op, "q_a_norm", *getQANorm(), {qLora})) ||
        failed(verifyWeightShape(op, "q_b_proj", *getQBProj(), {qLora, heads * qHeadDim})))
      return failure();
  } else {
    if (!getQProj())
      return emitOpError() << "q_lora_rank 0 needs weight 'q_proj'";
    if (getQAProj() || getQANorm() || getQBProj())
      return emitOpError() << "q_lora_rank 0 does not take 'q_a_proj', 'q_a_norm' or 'q_b_proj'";
    if (failed(verifyWeightShape(op, "q_proj", *getQProj(), {hidden, heads * qHeadDim})))
      return failure();
  }
  if (failed(verifyWeightShape(op, "kv_a_proj_with_mqa", getKvAProjWithMqa(),
                               {hidden, kvLora + rope})) ||
      failed(verifyWeightShape(op, "kv_a_norm", getKvANorm(), {kvLora})))
    return failure();
  if (bool(getKBProj()) != bool(getVBProj()))
    return emitOpError() << "weights 'k_b_proj' and 'v_b_proj' come together";
  if (!getKvBProj() && !getKBProj())
    return emitOpError() << "needs 'kv_b_proj' or the split 'k_b_proj'/'v_b_proj'";
  if (getKvBProj() && failed(verifyWeightShape(op, "kv_b_proj", *getKvBProj(),
                                               {kvLora, heads * (nope + v)})))
    return failure();
  if (getKBProj() &&
      (failed(verifyWeightShape(op, "k_b_proj", *getKBProj(), {nope, kvLora, heads})) ||
       failed(verifyWeightShape(op, "v_b_proj", *getVBProj(), {kvLora, v, heads}))))
    return failure();
  return verifyWeightShape(op, "o_proj", getOProj(), {heads * v, hidden});
}

LogicalResult MlpOp::verify() {
  return verifyGatedMlpWeights(*this, featureDim(getInput()), getGateProj(),
                               getUpProj(), getDownProj());
}

LogicalResult SharedExpertsOp::verify() {
  return verifyGatedMlpWeights(*this, featureDim(getInput()), getGateProj(),
                               getUpProj(), getDownProj());
}

LogicalResult MoeGateOp::verify() {
  Operation *op = getOperation();
  int64_t experts = getNumExperts(), topK = getTopK();
  int64_t groups = getNGroup(), groupsUsed = getTopkGroup();
  if (failed(verifyPositive(op, "num_experts", experts)) ||
      failed(verifyPositive(op, "top_k", topK)) ||
      failed(verifyPositive(op, "n_group", groups)) ||
      failed(verifyPositive(op, "topk_group", groupsUsed)))
    return failure();
  if (experts % groups != 0)
    return emitOpError() << "num_experts " << experts << " is not divisible by n_group "
                         << groups;
  if (groupsUsed > groups)
    return emitOpError() << "topk_group " << groupsUsed << " exceeds n_group " << groups;
  if (topK > groupsUsed * (experts / groups))
    return emitOpError() << "top_k " << topK << " exceeds the " << groupsUsed * (experts / groups)
                         << " experts in the " << groupsUsed << " selected groups";
  if (getScoringFunc() != "sigmoid" && getScoringFunc() != "softmax")
    return emitOpError() << "'scoring_func' must be \"sigmoid\" or \"softmax\", got \""
                         << getScoringFunc() << "\"";
  if (!(getRoutedScalingFactor().convertToDouble() > 0.0))
    return emitOpError() << "'routed_scaling_factor' must be positive";
  if (failed(verifyWeightShape(op, "weight", getWeight(), {featureDim(getInput()), experts})))
    return failure();
  if (getEScoreCorrectionBias() &&
      failed(verifyWeightShape(op, "e_score_correction_bias", *getEScoreCorrectionBias(),
                               {experts})))
    return failure();
  for (Value result : {getTopkIds(), getTopkWeights()}) {
    int64_t columns = result.getType().cast<RankedTensorType>().getDimSize(1);
    if (!ShapedType::isDynamic(columns) && columns != topK)
      return emitOpError() << "results must have top_k = " << topK << " columns, got "
                           << columns;
  }
  return success();
}

LogicalResult RoutedExpertsOp::verify() {
  Operation *op = getOperation();
  int64_t hidden = featureDim(getInput());
  if (getGateProj().getShape().size() != 3)
    return emitOpError() << "weight 'gate_proj' (" << getGateProj().getName()
                         << ") must have 3 dimensions [hidden, ffn, experts]";
  int64_t ffn = getGateProj().getShape()[1], experts = getGateProj().getShape()[2];
  if (failed(verifyWeightShape(op, "gate_proj", getGateProj(), {hidden, ffn, experts})) ||
      failed(verifyWeightShape(op, "up_proj", getUpProj(), {hidden, ffn, experts})) ||
      failed(verifyWeightShape(op, "down_proj", getDownProj(), {ffn, hidden, experts})))
    return failure();
  if (getTopkIds().getType().cast<RankedTensorType>().getShape() !=
      getTopkWeights().getType().cast<RankedTensorType>().getShape())
    return emitOpError() << "'topk_ids' and 'topk_weights' must have the same shape";
  return success();
}

LogicalResult LmHeadOp::verify() {
  if (getWeight().getShape().size() != 2)
    return emitOpError() << "weight 'weight' (" << getWeight().getName()
                         << ") must have 2 dimensions [hidden, vocab]";
  return verifyWeightShape(*this, "weight", getWeight(),
                           {featureDim(getInput()), featureDim(getLogits())});
}
