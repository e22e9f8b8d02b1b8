// Expert selection of DeepSeek-V2/V3 MoE layers (the `moe_gate` op).
#pragma once

#include <cstdint>

namespace kt::cpu {

enum class GateScoring { Softmax, Sigmoid };

struct RoutingParams {
  int64_t experts = 0;     // n_routed_experts
  int64_t topK = 0;        // num_experts_per_tok
  int64_t groups = 1;      // n_group
  int64_t groupsUsed = 1;  // topk_group
  GateScoring scoring = GateScoring::Sigmoid;
  bool normalize = false;  // norm_topk_prob
  float scale = 1.0f;      // routed_scaling_factor
};

// Chooses the experts of one token from its router logits (`experts`
// values) and the optional e_score_correction_bias (null when the model has
// none):
//  - scores: sigmoid(logits) (V3) or softmax(logits) (V2);
//  - selection scores: scores + bias;
//  - with groups > 1, experts are split into `groups` consecutive groups; a
//    group's score is the sum of its two best selection scores for sigmoid
//    scoring (V3's noaux_tc) or its best one for softmax (V2's
//    group_limited_greedy); only the `groupsUsed` best groups stay eligible;
//  - the topK eligible experts with the highest selection scores win (ties:
//    the lower index first), written to ids in decreasing order;
//  - weights are their scores without the bias, divided by their sum
//    (+1e-20) when `normalize`, then multiplied by `scale`.
// `scratch` holds 2 * experts + groups floats.
void routeToken(const RoutingParams &params, const float *logits, const float *bias,
                int32_t *ids, float *weights, float *scratch);

} // namespace kt::cpu
