// A two-layer DeepSeek-V3 graph (layer 0 dense, layer 1 MoE) for the
// placement tests.
module {
func.func @forward(%tokens: tensor<?xi32>) -> tensor<?x512xf32> {
  %h = ktgraph.embedding %tokens {path = "model.embed_tokens", weight = #ktgraph.weight<"token_embd.weight", "q8_0", [64, 512]>} : tensor<?xi32> -> tensor<?x64xf32>
  %n0 = ktgraph.rms_norm %h {path = "model.layers.0.input_layernorm", weight = #ktgraph.weight<"blk.0.attn_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  %a0 = ktgraph.mla_attention %n0 {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 32 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 1.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.0 : f64,
      q_a_proj = #ktgraph.weight<"blk.0.attn_q_a.weight", "q8_0", [64, 32]>,
      q_a_norm = #ktgraph.weight<"blk.0.attn_q_a_norm.weight", "f32", [32]>,
      q_b_proj = #ktgraph.weight<"blk.0.attn_q_b.weight", "q8_0", [32, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "q8_0", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "f32", [32]>,
      kv_b_proj = #ktgraph.weight<"blk.0.attn_kv_b.weight", "q8_0", [32, 128]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "q8_0", [64, 64]>} : tensor<?x64xf32>
  %r0 = ktgraph.add %h, %a0 : tensor<?x64xf32>
  %f0 = ktgraph.rms_norm %r0 {path = "model.layers.0.post_attention_layernorm", weight = #ktgraph.weight<"blk.0.ffn_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  %m0 = ktgraph.mlp %f0 {path = "model.layers.0.mlp",
      gate_proj = #ktgraph.weight<"blk.0.ffn_gate.weight", "q8_0", [64, 96]>,
      up_proj = #ktgraph.weight<"blk.0.ffn_up.weight", "q8_0", [64, 96]>,
      down_proj = #ktgraph.weight<"blk.0.ffn_down.weight", "q8_0", [96, 64]>} : tensor<?x64xf32>
  %h1 = ktgraph.add %r0, %m0 : tensor<?x64xf32>
  %f1 = ktgraph.rms_norm %h1 {path = "model.layers.1.post_attention_layernorm", weight = #ktgraph.weight<"blk.1.ffn_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  %ids, %w = ktgraph.moe_gate %f1 {path = "model.layers.1.mlp.gate", num_experts = 8 : i64,
      top_k = 2 : i64, n_group = 4 : i64, topk_group = 2 : i64, scoring_func = "sigmoid",
      norm_topk_prob = true, routed_scaling_factor = 2.5 : f64,
      weight = #ktgraph.weight<"blk.1.ffn_gate_inp.weight", "f32", [64, 8]>,
      e_score_correction_bias = #ktgraph.weight<"blk.1.exp_probs_b.bias", "f32", [8]>}
      : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  %e = ktgraph.routed_experts %f1, %ids, %w {path = "model.layers.1.mlp.experts",
      gate_proj = #ktgraph.weight<"blk.1.ffn_gate_exps.weight", "q8_0", [64, 32, 8]>,
      up_proj = #ktgraph.weight<"blk.1.ffn_up_exps.weight", "q8_0", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"blk.1.ffn_down_exps.weight", "q8_0", [32, 64, 8]>}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  %s = ktgraph.shared_experts %f1 {path = "model.layers.1.mlp.shared_experts",
      gate_proj = #ktgraph.weight<"blk.1.ffn_gate_shexp.weight", "q8_0", [64, 32]>,
      up_proj = #ktgraph.weight<"blk.1.ffn_up_shexp.weight", "q8_0", [64, 32]>,
      down_proj = #ktgraph.weight<"blk.1.ffn_down_shexp.weight", "q8_0", [32, 64]>} : tensor<?x64xf32>
  %moe = ktgraph.add %e, %s : tensor<?x64xf32>
  %h2 = ktgraph.add %h1, %moe : tensor<?x64xf32>
  %n = ktgraph.rms_norm %h2 {path = "model.norm", weight = #ktgraph.weight<"output_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  %logits = ktgraph.lm_head %n {path = "lm_head", weight = #ktgraph.weight<"output.weight", "q8_0", [64, 512]>} : tensor<?x64xf32> -> tensor<?x512xf32>
  return %logits : tensor<?x512xf32>
}
}
