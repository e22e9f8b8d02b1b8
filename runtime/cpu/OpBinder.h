// Reads one plan op's weights and hyper-parameters against the model, with
// the messages every executor gives for a plan that does not fit the model:
// the first problem becomes the binding's error and later reads return
// neutral values.
#pragma once

#include "runtime/cpu/Attention.h"
#include "runtime/cpu/Linear.h"
#include "runtime/cpu/MoeRouting.h"
#include "runtime/cpu/Rope.h"
#include "runtime/cpu/WeightConversions.h"
#include "runtime/gguf/GgufFile.h"
#include "runtime/plan/Plan.h"
#include "runtime/quant/Quant.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace kt::cpu {

inline std::string shapeText(const std::vector<int64_t> &shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "]";
}

// The module path of the gate that routes the experts at `expertsPath`
// ("model.layers.3.mlp.experts" -> "model.layers.3.mlp.gate"), the name the
// routing statistics carry.
inline std::string gatePathOf(const std::string &expertsPath) {
  const size_t dot = expertsPath.rfind(".experts");
  return dot == std::string::npos ? expertsPath : expertsPath.substr(0, dot) + ".gate";
}

class OpBinder {
public:
  // `conversions` turns FP8 weights into q8_0 (and finds those of the
  // plan's --fp8-path checkpoint); without it they are refused.
  OpBinder(const plan::Op &op, size_t index, const gguf::GgufModel &model,
           const std::string &planName, WeightConversions *conversions = nullptr)
      : op_(op), index_(index), model_(model), planName_(planName), conversions_(conversions) {}

  const gguf::GgufModel &model() const { return model_; }

  std::string where() const {
    std::string text = "Op " + std::to_string(index_) + " (" + op_.kind;
    if (!op_.path.empty())
      text += " " + op_.path;
    return text + ") of " + planName_;
  }

  void fail(const std::string &message) {
    if (!error_)
      error_ = where() + " " + message;
  }
  void require(bool condition, const std::string &message) {
    if (!condition)
      fail(message);
  }
  bool ok() const { return !error_.has_value(); }
  Status status() const { return error_ ? Status::error(*error_) : Status::success(); }

  // The tensor of weight `role`, checked against the plan and expected to
  // have `dims` dimensions; null if absent (an error when required).
  const gguf::TensorInfo *tensor(const std::string &role, size_t dims, bool required = true) {
    const plan::Weight *weight = nullptr;
    for (const plan::Weight &w : op_.weights)
      if (w.role == role)
        weight = &w;
    if (!weight) {
      if (required)
        fail("has no '" + role + "' weight; recompile the plan with this version of ktc.");
      return nullptr;
    }
    const gguf::TensorInfo *info = model_.findTensor(weight->tensor);
    if (!info && conversions_ && weight->type == "f8_e4m3")
      info = conversions_->checkpointTensor(weight->tensor);
    const std::string name = "tensor '" + weight->tensor + "' (" + role + ")";
    const std::string recompile =
        "; the model is not the one the plan was compiled for: recompile the plan with "
        "ktc compile for this model.";
    if (!info) {
      fail("needs " + name + ", which the model lacks" + recompile);
      return nullptr;
    }
    const std::string actualType(gguf::ggmlTypeName(info->type));
    if (actualType != weight->type) {
      fail("expects " + name + " of type " + weight->type + ", but the model stores it as " +
           actualType + recompile);
      return nullptr;
    }
    if (info->ne != weight->shape) {
      fail("expects " + name + " of shape " + shapeText(weight->shape) + ", but the model's is " +
           shapeText(info->ne) + recompile);
      return nullptr;
    }
    if (info->type == gguf::GgmlType::F8_E4M3_B128 && conversions_) {
      StatusOr<const gguf::TensorInfo *> converted = conversions_->q8_0(*info);
      if (!converted) {
        fail("cannot use " + name + ": " + converted.message());
        return nullptr;
      }
      info = *converted;
    }
    if (!gguf::ggmlTypeTraits(info->type).dequantizable ||
        !gguf::ggmlRowBytes(info->type, info->ne[0])) {
      fail("cannot use " + name + ": the CPU executor has no kernel for type " + actualType +
           "; requantize the model to a supported type (f32, f16, bf16, q8_0, q4_0, q4_1, "
           "q5_0, q5_1, q2_K ... q6_K).");
      return nullptr;
    }
    if (info->ne.size() != dims) {
      fail("expects " + name + " to have " + std::to_string(dims) + " dimensions, not " +
           std::to_string(info->ne.size()) + "; the plan is damaged: recompile it.");
      return nullptr;
    }
    return info;
  }

  // A 1-D weight as f32 values (norm weights may be stored as f16/bf16).
  std::vector<float> vector(const std::string &role, int64_t length, bool required = true) {
    const gguf::TensorInfo *info = tensor(role, 1, required);
    if (!info)
      return {};
    if (info->ne[0] != length) {
      fail("expects '" + role + "' to have " + std::to_string(length) + " values, not " +
           std::to_string(info->ne[0]) + "; the plan is damaged: recompile it.");
      return {};
    }
    std::vector<float> values(static_cast<size_t>(length));
    Status decoded = quant::dequantize(info->type, info->data, values.data(), length);
    if (!decoded.ok())
      fail("cannot decode '" + role + "': " + decoded.message());
    return values;
  }

  // A 2-D weight [cols, rows] (GGML order) as a matrix, checked for shape.
  WeightMatrix matrix(const std::string &role, int64_t cols, int64_t rows) {
    const gguf::TensorInfo *info = tensor(role, 2);
    if (!info)
      return {};
    checkShape(role, *info, {cols, rows});
    return weightMatrix(*info);
  }

  void checkShape(const std::string &role, const gguf::TensorInfo &info,
                  const std::vector<int64_t> &expected) {
    if (info.ne != expected)
      fail("expects '" + role + "' of shape " + shapeText(expected) +
           " from the module's hyper-parameters, but it is " + shapeText(info.ne) +
           "; the plan is damaged: recompile it.");
  }

  const plan::Param *param(const std::string &name) {
    auto it = op_.params.find(name);
    if (it == op_.params.end()) {
      fail("lacks the hyper-parameter '" + name +
           "'; recompile the plan with this version of ktc.");
      return nullptr;
    }
    return &it->second;
  }
  int64_t integer(const std::string &name) {
    const plan::Param *p = param(name);
    if (!p)
      return 0;
    if (const int64_t *v = std::get_if<int64_t>(p))
      return *v;
    fail("has a non-integer hyper-parameter '" + name + "'; recompile the plan.");
    return 0;
  }
  double real(const std::string &name) {
    const plan::Param *p = param(name);
    if (!p)
      return 0;
    if (const double *v = std::get_if<double>(p))
      return *v;
    if (const int64_t *v = std::get_if<int64_t>(p))
      return static_cast<double>(*v);
    fail("has a non-numeric hyper-parameter '" + name + "'; recompile the plan.");
    return 0;
  }
  bool boolean(const std::string &name) {
    const plan::Param *p = param(name);
    if (!p)
      return false;
    if (const bool *v = std::get_if<bool>(p))
      return *v;
    fail("has a non-boolean hyper-parameter '" + name + "'; recompile the plan.");
    return false;
  }
  std::string text(const std::string &name) {
    const plan::Param *p = param(name);
    if (!p)
      return {};
    if (const std::string *v = std::get_if<std::string>(p))
      return *v;
    fail("has a non-string hyper-parameter '" + name + "'; recompile the plan.");
    return {};
  }

  // The op reads only values earlier ops wrote (or the token ids, value 0)
  // and writes new values; `defined` says whether value id (0 .. maxValue)
  // was written already.
  Status checkDataflow(int maxValue, const std::function<bool(int)> &defined) const {
    for (int id : op_.inputs)
      if (id < 0 || id > maxValue || !defined(id))
        return Status::error(where() + " reads value " + std::to_string(id) +
                             ", which no earlier op produces; the plan is damaged: recompile "
                             "it.");
    for (int id : op_.outputs)
      if (id <= 0 || id > maxValue || defined(id))
        return Status::error(where() + " writes value " + std::to_string(id) +
                             ", which is the token input or written twice; the plan is "
                             "damaged: recompile it.");
    return Status::success();
  }

  // The op has `inputs` inputs and `outputs` outputs (else the binding fails).
  bool operands(size_t inputs, size_t outputs) {
    require(op_.inputs.size() == inputs && op_.outputs.size() == outputs,
            "has " + std::to_string(op_.inputs.size()) + " inputs and " +
                std::to_string(op_.outputs.size()) + " outputs instead of " +
                std::to_string(inputs) + " and " + std::to_string(outputs) +
                "; the plan is damaged: recompile it.");
    return ok();
  }

  // An mla_attention's dimensions (input width `hidden`) and RoPE, checked.
  void attention(int64_t hidden, MlaShape &s, RopeConfig &rope) {
    s.hidden = hidden;
    s.heads = integer("num_heads");
    s.qLoraRank = integer("q_lora_rank");
    s.kvLoraRank = integer("kv_lora_rank");
    s.nope = integer("qk_nope_head_dim");
    s.rope = integer("qk_rope_head_dim");
    s.v = integer("v_head_dim");
    s.eps = static_cast<float>(real("eps"));
    rope.dims = s.rope;
    rope.theta = real("rope_theta");
    rope.factor = real("rope_scaling_factor");
    rope.originalContext = integer("rope_original_context_length");
    rope.yarnLogMultiplier = real("rope_yarn_log_multiplier");
    if (!ok())
      return;
    require(s.heads > 0 && s.kvLoraRank > 0 && s.nope > 0 && s.v > 0 && s.rope > 0 &&
                s.rope % 2 == 0 && s.qLoraRank >= 0,
            "has invalid attention dimensions; the plan is damaged: recompile it.");
    require(!rope.yarn() || rope.originalContext > 0,
            "uses YaRN without an original context length; recompile the plan.");
  }

  // A routed_experts op's gate, up and down tensors [hidden, ffn, experts]
  // ([ffn, hidden, experts] for down), checked against the gate's expert
  // count; all null after a failure.
  struct ExpertTensors {
    const gguf::TensorInfo *gate = nullptr, *up = nullptr, *down = nullptr;
  };
  ExpertTensors experts(int64_t hidden, int64_t expertCount) {
    ExpertTensors t{tensor("gate_proj", 3), tensor("up_proj", 3), tensor("down_proj", 3)};
    if (!ok())
      return {};
    const int64_t ffn = t.gate->ne[1];
    checkShape("gate_proj", *t.gate, {hidden, ffn, expertCount});
    checkShape("up_proj", *t.up, {hidden, ffn, expertCount});
    checkShape("down_proj", *t.down, {ffn, hidden, expertCount});
    return ok() ? t : ExpertTensors{};
  }

  // A moe_gate's routing hyper-parameters, checked for consistency.
  RoutingParams routing() {
    RoutingParams p;
    p.experts = integer("num_experts");
    p.topK = integer("top_k");
    p.groups = integer("n_group");
    p.groupsUsed = integer("topk_group");
    const std::string scoring = text("scoring_func");
    p.normalize = boolean("norm_topk_prob");
    p.scale = static_cast<float>(real("routed_scaling_factor"));
    if (!ok())
      return p;
    require(scoring == "sigmoid" || scoring == "softmax",
            "has the unknown scoring function '" + scoring +
                "'; DeepSeek models use sigmoid or softmax.");
    p.scoring = scoring == "sigmoid" ? GateScoring::Sigmoid : GateScoring::Softmax;
    require(p.experts > 0 && p.groups > 0 && p.experts % p.groups == 0 && p.groupsUsed > 0 &&
                p.groupsUsed <= p.groups && p.topK > 0 &&
                p.topK <= p.groupsUsed * (p.experts / p.groups),
            "has inconsistent routing hyper-parameters (num_experts " + std::to_string(p.experts) +
                ", top_k " + std::to_string(p.topK) + ", n_group " + std::to_string(p.groups) +
                ", topk_group " + std::to_string(p.groupsUsed) +
                "); the plan is damaged: recompile it.");
    return p;
  }

private:
  const plan::Op &op_;
  size_t index_;
  const gguf::GgufModel &model_;
  const std::string &planName_;
  WeightConversions *conversions_;
  std::optional<std::string> error_;
};

} // namespace kt::cpu
