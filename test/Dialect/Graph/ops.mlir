// RUN: kt-opt %s | FileCheck %s
// Printing and parsing again gives the same IR.
// RUN: kt-opt %s | kt-opt | FileCheck %s
// RUN: kt-opt %s --mlir-print-op-generic | kt-opt | FileCheck %s

// CHECK: module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = ["amx-tile", "avx512f"], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>}
module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = ["amx-tile", "avx512f"], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
// CHECK-LABEL: func.func @moe_layer
func.func @moe_layer(%tokens: tensor<?xi32>) -> tensor<?x512xf32> {
  // CHECK: %[[H:.+]] = ktgraph.embedding %{{.+}} {path = "model.embed_tokens", weight = #ktgraph.weight<"token_embd.weight", "q8_0", [64, 512]>} : tensor<?xi32> -> tensor<?x64xf32>
  %h = ktgraph.embedding %tokens {path = "model.embed_tokens", weight = #ktgraph.weight<"token_embd.weight", "q8_0", [64, 512]>} : tensor<?xi32> -> tensor<?x64xf32>
  // CHECK: %[[N:.+]] = ktgraph.rms_norm %[[H]] {eps = 9.99999997E-7 : f32, path = "model.layers.0.input_layernorm"
  %n = ktgraph.rms_norm %h {path = "model.layers.0.input_layernorm", weight = #ktgraph.weight<"blk.0.attn_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  // CHECK: %[[A:.+]] = ktgraph.mla_attention %[[N]]
  // CHECK-SAME: k_b_proj = #ktgraph.weight<"blk.0.attn_k_b.weight", "f32", [16, 32, 4]>
  // CHECK-SAME: q_lora_rank = 32 : i64
  %a = ktgraph.mla_attention %n {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 32 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 40.0 : f64,
      rope_original_context_length = 4096 : i64, rope_yarn_log_multiplier = 0.1 : f64,
      q_a_proj = #ktgraph.weight<"blk.0.attn_q_a.weight", "f32", [64, 32]>,
      q_a_norm = #ktgraph.weight<"blk.0.attn_q_a_norm.weight", "f32", [32]>,
      q_b_proj = #ktgraph.weight<"blk.0.attn_q_b.weight", "f32", [32, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "f32", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "f32", [32]>,
      kv_b_proj = #ktgraph.weight<"blk.0.attn_kv_b.weight", "f32", [32, 128]>,
      k_b_proj = #ktgraph.weight<"blk.0.attn_k_b.weight", "f32", [16, 32, 4]>,
      v_b_proj = #ktgraph.weight<"blk.0.attn_v_b.weight", "f32", [32, 16, 4]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "f32", [64, 64]>} : tensor<?x64xf32>
  // CHECK: %[[R1:.+]] = ktgraph.add %[[H]], %[[A]] : tensor<?x64xf32>
  %r1 = ktgraph.add %h, %a : tensor<?x64xf32>
  // CHECK: %[[IDS:.+]], %[[W:.+]] = ktgraph.moe_gate %[[R1]]
  // CHECK-SAME: scoring_func = "sigmoid"
  // CHECK-SAME: -> tensor<?x2xi32>, tensor<?x2xf32>
  %ids, %w = ktgraph.moe_gate %r1 {path = "model.layers.0.mlp.gate", num_experts = 8 : i64,
      top_k = 2 : i64, n_group = 4 : i64, topk_group = 2 : i64, scoring_func = "sigmoid",
      norm_topk_prob = true, routed_scaling_factor = 2.5 : f64,
      weight = #ktgraph.weight<"blk.0.ffn_gate_inp.weight", "f32", [64, 8]>,
      e_score_correction_bias = #ktgraph.weight<"blk.0.exp_probs_b.bias", "f32", [8]>}
      : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  // CHECK: ktgraph.routed_experts %[[R1]], %[[IDS]], %[[W]]
  %e = ktgraph.routed_experts %r1, %ids, %w {path = "model.layers.0.mlp.experts",
      gate_proj = #ktgraph.weight<"blk.0.ffn_gate_exps.weight", "q8_0", [64, 32, 8]>,
      up_proj = #ktgraph.weight<"blk.0.ffn_up_exps.weight", "q8_0", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"blk.0.ffn_down_exps.weight", "q8_0", [32, 64, 8]>}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  %s = ktgraph.shared_experts %r1 {path = "model.layers.0.mlp.shared_experts",
      gate_proj = #ktgraph.weight<"blk.0.ffn_gate_shexp.weight", "f32", [64, 32]>,
      up_proj = #ktgraph.weight<"blk.0.ffn_up_shexp.weight", "f32", [64, 32]>,
      down_proj = #ktgraph.weight<"blk.0.ffn_down_shexp.weight", "f32", [32, 64]>} : tensor<?x64xf32>
  %m = ktgraph.add %e, %s : tensor<?x64xf32>
  // A residual sum and its norm (kt-fuse-residual-norm's op): two results.
  // CHECK: %[[SUM:[^,]+]], %[[NORMED:[^ ]+]] = ktgraph.add_rms_norm %[[R1]], %{{.+}}, %{{.+}} {eps = 9.99999997E-7 : f32, path = "model.layers.1.input_layernorm", weight = #ktgraph.weight<"blk.1.attn_norm.weight", "f32", [64]>} : tensor<?x64xf32>
  %sum, %normed = ktgraph.add_rms_norm %r1, %e, %s {path = "model.layers.1.input_layernorm", weight = #ktgraph.weight<"blk.1.attn_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  // CHECK: ktgraph.add_rms_norm %[[SUM]], %[[NORMED]] {
  %sum2, %normed2 = ktgraph.add_rms_norm %sum, %normed {path = "model.layers.1.post_attention_layernorm", weight = #ktgraph.weight<"blk.1.ffn_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  %m2 = ktgraph.add %m, %normed2 : tensor<?x64xf32>
  %d = ktgraph.mlp %m2 {path = "model.layers.1.mlp",
      gate_proj = #ktgraph.weight<"blk.1.ffn_gate.weight", "f32", [64, 96]>,
      up_proj = #ktgraph.weight<"blk.1.ffn_up.weight", "f32", [64, 96]>,
      down_proj = #ktgraph.weight<"blk.1.ffn_down.weight", "f32", [96, 64]>} : tensor<?x64xf32>
  // CHECK: ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "experts_cpu", out = "cuda:0", rule = "rules/x.yaml:3:3", kwargs = {backend = "llamafile"}>
  %placed = ktgraph.rms_norm %d {path = "model.norm", weight = #ktgraph.weight<"output_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "experts_cpu", out = "cuda:0", rule = "rules/x.yaml:3:3", kwargs = {backend = "llamafile"}>} : tensor<?x64xf32>
  // CHECK: ktgraph.transfer %{{.+}} {decode_from = "cuda:0", decode_to = "cpu", prefill_from = "cuda:0", prefill_to = "cuda:0"} : tensor<?x64xf32>
  %moved = ktgraph.transfer %placed {prefill_from = "cuda:0", prefill_to = "cuda:0", decode_from = "cuda:0", decode_to = "cpu"} : tensor<?x64xf32>
  // CHECK: ktgraph.lm_head %{{.+}} {path = "lm_head", {{.+}}} : tensor<?x64xf32> -> tensor<?x512xf32>
  %logits = ktgraph.lm_head %moved {path = "lm_head", weight = #ktgraph.weight<"output.weight", "q8_0", [64, 512]>}
      : tensor<?x64xf32> -> tensor<?x512xf32>
  return %logits : tensor<?x512xf32>
}
}
