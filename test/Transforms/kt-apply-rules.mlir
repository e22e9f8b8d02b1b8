// RUN: kt-opt %S/Inputs/model.mlir --kt-apply-rules="rules=%S/Inputs/rules-basic.yaml" | FileCheck %s

// CHECK-LABEL: module attributes {ktgraph.rules = "{{[^"]*}}rules-basic.yaml"}
// The first rule that matches a module places it.
// CHECK: ktgraph.embedding {{.*}}ktgraph.placement = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "default", rule = "{{[^"]*}}rules-basic.yaml:2:3">
// CHECK: path = "model.layers.0.input_layernorm"{{.*}}: tensor
// Attention: its own rule; its linear sub-modules of layer 0 by the Linear rule,
// the norms inside it by the catch-all layer rule.
// CHECK: ktgraph.mla_attention
// CHECK-SAME: ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mla_attention", rule = "{{[^"]*}}rules-basic.yaml:27:3", kwargs = {absorb_for_prefill = "False"}>
// CHECK-SAME: ktgraph.sub_placements = {
// CHECK-SAME: kv_a_layernorm = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default", rule = "{{[^"]*}}rules-basic.yaml:45:3">
// CHECK-SAME: q_a_proj = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", rule = "{{[^"]*}}rules-basic.yaml:35:3", kwargs = {generate_op = "{{.+}}", prefill_op = "{{.+}}"}>
// The residual add runs where the module output it adds in lives.
// CHECK: ktgraph.add {{.*}}{ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "add">}
// CHECK: ktgraph.mlp
// CHECK-SAME: ktgraph.sub_placements = {down_proj = #ktgraph.placement<{{.*}}op = "linear", rule = "{{[^"]*}}rules-basic.yaml:35:3"
// Layer 1 is not matched by the layer-0 Linear rule.
// CHECK: ktgraph.moe_gate {{.*}}ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "moe_gate", rule = "{{[^"]*}}rules-basic.yaml:20:3">
// CHECK: ktgraph.routed_experts {{.*}}ktgraph.placement = #ktgraph.placement<prefill = "{{cpu|cuda:0}}", decode = "cpu", op = "experts", out = "cuda:0", rule = "{{[^"]*}}rules-basic.yaml:9:3", kwargs = {generate_op = "{{.+}}", prefill_op = "{{.+}}"}>
// CHECK: ktgraph.shared_experts
// CHECK-SAME: ktgraph.sub_placements = {down_proj = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default", rule = "{{[^"]*}}rules-basic.yaml:45:3">
// CHECK: ktgraph.rms_norm {{.*}}ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default", rule = "{{[^"]*}}rules-basic.yaml:52:3">, path = "model.norm"
// CHECK: ktgraph.lm_head {{.*}}rule = "{{[^"]*}}rules-basic.yaml:52:3"
