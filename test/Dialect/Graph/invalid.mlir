// RUN: kt-opt %s --split-input-file --verify-diagnostics

func.func @unknown_dtype(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{weight 'w' has unknown storage type 'q9_X'}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "q9_X", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @fp8_vector(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{FP8 weight 'w' must be a matrix or a stack of matrices with positive dimensions}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f8_e4m3", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @row_not_multiple_of_block(%x: tensor<?x64xf32>) -> tensor<?x512xf32> {
  // expected-error @+1 {{weight 'output.weight' of type q4_K has rows of 64 values, not a multiple of the block size 256}}
  %y = ktgraph.lm_head %x {path = "lm_head", weight = #ktgraph.weight<"output.weight", "q4_K", [64, 512]>} : tensor<?x64xf32> -> tensor<?x512xf32>
  return %y : tensor<?x512xf32>
}

// -----

func.func @norm_shape(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{'ktgraph.rms_norm' op weight 'weight' (output_norm.weight) has shape [32], expected [64]}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"output_norm.weight", "f32", [32]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @norm_eps(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{'eps' must be positive}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"output_norm.weight", "f32", [64]>, eps = 0.0 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @add_rms_norm_addends(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{'ktgraph.add_rms_norm' op adds 2 or 3 values, got 1}}
  %s, %y = ktgraph.add_rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"output_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @add_rms_norm_four(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{'ktgraph.add_rms_norm' op adds 2 or 3 values, got 4}}
  %s, %y = ktgraph.add_rms_norm %x, %x, %x, %x {path = "model.norm", weight = #ktgraph.weight<"output_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @add_rms_norm_shape(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{'ktgraph.add_rms_norm' op weight 'weight' (output_norm.weight) has shape [32], expected [64]}}
  %s, %y = ktgraph.add_rms_norm %x, %x {path = "model.norm", weight = #ktgraph.weight<"output_norm.weight", "f32", [32]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @add_rms_norm_eps(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{'eps' must be positive}}
  %s, %y = ktgraph.add_rms_norm %x, %x {path = "model.norm", weight = #ktgraph.weight<"output_norm.weight", "f32", [64]>, eps = -1.0 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @embedding_hidden(%t: tensor<?xi32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{weight 'weight' (token_embd.weight) has shape [32, 512], expected [64, ?]}}
  %h = ktgraph.embedding %t {path = "model.embed_tokens", weight = #ktgraph.weight<"token_embd.weight", "f32", [32, 512]>} : tensor<?xi32> -> tensor<?x64xf32>
  return %h : tensor<?x64xf32>
}

// -----

func.func @q_lora_without_q_b(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{q_lora_rank 32 needs weights 'q_a_proj', 'q_a_norm' and 'q_b_proj'}}
  %a = ktgraph.mla_attention %x {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 32 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 1.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.0 : f64,
      q_a_proj = #ktgraph.weight<"blk.0.attn_q_a.weight", "f32", [64, 32]>,
      q_a_norm = #ktgraph.weight<"blk.0.attn_q_a_norm.weight", "f32", [32]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "f32", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "f32", [32]>,
      kv_b_proj = #ktgraph.weight<"blk.0.attn_kv_b.weight", "f32", [32, 128]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "f32", [64, 64]>} : tensor<?x64xf32>
  return %a : tensor<?x64xf32>
}

// -----

func.func @no_kv_b(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{needs 'kv_b_proj' or the split 'k_b_proj'/'v_b_proj'}}
  %a = ktgraph.mla_attention %x {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 0 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 1.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.0 : f64,
      q_proj = #ktgraph.weight<"blk.0.attn_q.weight", "f32", [64, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "f32", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "f32", [32]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "f32", [64, 64]>} : tensor<?x64xf32>
  return %a : tensor<?x64xf32>
}

// -----

func.func @k_b_without_v_b(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{weights 'k_b_proj' and 'v_b_proj' come together}}
  %a = ktgraph.mla_attention %x {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 0 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 1.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.0 : f64,
      q_proj = #ktgraph.weight<"blk.0.attn_q.weight", "f32", [64, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "f32", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "f32", [32]>,
      k_b_proj = #ktgraph.weight<"blk.0.attn_k_b.weight", "f32", [16, 32, 4]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "f32", [64, 64]>} : tensor<?x64xf32>
  return %a : tensor<?x64xf32>
}

// -----

func.func @v_b_shape(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{weight 'v_b_proj' (blk.0.attn_v_b.weight) has shape [16, 32, 4], expected [32, 16, 4]}}
  %a = ktgraph.mla_attention %x {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 0 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 1.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.0 : f64,
      q_proj = #ktgraph.weight<"blk.0.attn_q.weight", "f32", [64, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "f32", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "f32", [32]>,
      k_b_proj = #ktgraph.weight<"blk.0.attn_k_b.weight", "f32", [16, 32, 4]>,
      v_b_proj = #ktgraph.weight<"blk.0.attn_v_b.weight", "f32", [16, 32, 4]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "f32", [64, 64]>} : tensor<?x64xf32>
  return %a : tensor<?x64xf32>
}

// -----

func.func @yarn_without_original_context(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{YaRN scaling needs a positive 'rope_original_context_length'}}
  %a = ktgraph.mla_attention %x {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 0 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 40.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.1 : f64,
      q_proj = #ktgraph.weight<"blk.0.attn_q.weight", "f32", [64, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "f32", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "f32", [32]>,
      kv_b_proj = #ktgraph.weight<"blk.0.attn_kv_b.weight", "f32", [32, 128]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "f32", [64, 64]>} : tensor<?x64xf32>
  return %a : tensor<?x64xf32>
}

// -----

func.func @groups_do_not_divide(%x: tensor<?x64xf32>) -> tensor<?x2xi32> {
  // expected-error @+1 {{num_experts 8 is not divisible by n_group 3}}
  %ids, %w = ktgraph.moe_gate %x {path = "model.layers.1.mlp.gate", num_experts = 8 : i64,
      top_k = 2 : i64, n_group = 3 : i64, topk_group = 1 : i64, scoring_func = "sigmoid",
      norm_topk_prob = true, routed_scaling_factor = 1.0 : f64,
      weight = #ktgraph.weight<"blk.1.ffn_gate_inp.weight", "f32", [64, 8]>}
      : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  return %ids : tensor<?x2xi32>
}

// -----

func.func @top_k_beyond_groups(%x: tensor<?x64xf32>) -> tensor<?x6xi32> {
  // expected-error @+1 {{top_k 6 exceeds the 4 experts in the 2 selected groups}}
  %ids, %w = ktgraph.moe_gate %x {path = "model.layers.1.mlp.gate", num_experts = 8 : i64,
      top_k = 6 : i64, n_group = 4 : i64, topk_group = 2 : i64, scoring_func = "sigmoid",
      norm_topk_prob = true, routed_scaling_factor = 1.0 : f64,
      weight = #ktgraph.weight<"blk.1.ffn_gate_inp.weight", "f32", [64, 8]>}
      : tensor<?x64xf32> -> tensor<?x6xi32>, tensor<?x6xf32>
  return %ids : tensor<?x6xi32>
}

// -----

func.func @bad_scoring(%x: tensor<?x64xf32>) -> tensor<?x2xi32> {
  // expected-error @+1 {{'scoring_func' must be "sigmoid" or "softmax", got "relu"}}
  %ids, %w = ktgraph.moe_gate %x {path = "model.layers.1.mlp.gate", num_experts = 8 : i64,
      top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, scoring_func = "relu",
      norm_topk_prob = true, routed_scaling_factor = 1.0 : f64,
      weight = #ktgraph.weight<"blk.1.ffn_gate_inp.weight", "f32", [64, 8]>}
      : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  return %ids : tensor<?x2xi32>
}

// -----

func.func @gate_columns(%x: tensor<?x64xf32>) -> tensor<?x3xi32> {
  // expected-error @+1 {{results must have top_k = 2 columns, got 3}}
  %ids, %w = ktgraph.moe_gate %x {path = "model.layers.1.mlp.gate", num_experts = 8 : i64,
      top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, scoring_func = "softmax",
      norm_topk_prob = false, routed_scaling_factor = 1.0 : f64,
      weight = #ktgraph.weight<"blk.1.ffn_gate_inp.weight", "f32", [64, 8]>}
      : tensor<?x64xf32> -> tensor<?x3xi32>, tensor<?x3xf32>
  return %ids : tensor<?x3xi32>
}

// -----

func.func @bias_shape(%x: tensor<?x64xf32>) -> tensor<?x2xi32> {
  // expected-error @+1 {{weight 'e_score_correction_bias' (blk.1.exp_probs_b.bias) has shape [16], expected [8]}}
  %ids, %w = ktgraph.moe_gate %x {path = "model.layers.1.mlp.gate", num_experts = 8 : i64,
      top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, scoring_func = "sigmoid",
      norm_topk_prob = true, routed_scaling_factor = 1.0 : f64,
      weight = #ktgraph.weight<"blk.1.ffn_gate_inp.weight", "f32", [64, 8]>,
      e_score_correction_bias = #ktgraph.weight<"blk.1.exp_probs_b.bias", "f32", [16]>}
      : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  return %ids : tensor<?x2xi32>
}

// -----

func.func @experts_down_shape(%x: tensor<?x64xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{weight 'down_proj' (blk.1.ffn_down_exps.weight) has shape [32, 64, 4], expected [32, 64, 8]}}
  %e = ktgraph.routed_experts %x, %ids, %w {path = "model.layers.1.mlp.experts",
      gate_proj = #ktgraph.weight<"blk.1.ffn_gate_exps.weight", "f32", [64, 32, 8]>,
      up_proj = #ktgraph.weight<"blk.1.ffn_up_exps.weight", "f32", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"blk.1.ffn_down_exps.weight", "f32", [32, 64, 4]>}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  return %e : tensor<?x64xf32>
}

// -----

func.func @mlp_down_shape(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{weight 'down_proj' (blk.0.ffn_down.weight) has shape [64, 96], expected [96, 64]}}
  %d = ktgraph.mlp %x {path = "model.layers.0.mlp",
      gate_proj = #ktgraph.weight<"blk.0.ffn_gate.weight", "f32", [64, 96]>,
      up_proj = #ktgraph.weight<"blk.0.ffn_up.weight", "f32", [64, 96]>,
      down_proj = #ktgraph.weight<"blk.0.ffn_down.weight", "f32", [64, 96]>} : tensor<?x64xf32>
  return %d : tensor<?x64xf32>
}

// -----

func.func @lm_head_vocab(%x: tensor<?x64xf32>) -> tensor<?x100xf32> {
  // expected-error @+1 {{weight 'weight' (output.weight) has shape [64, 512], expected [64, 100]}}
  %y = ktgraph.lm_head %x {path = "lm_head", weight = #ktgraph.weight<"output.weight", "f32", [64, 512]>} : tensor<?x64xf32> -> tensor<?x100xf32>
  return %y : tensor<?x100xf32>
}

// -----

func.func @missing_path(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{requires attribute 'path'}}
  %y = ktgraph.rms_norm %x {weight = #ktgraph.weight<"output_norm.weight", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

func.func @placement_device(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+2 {{placement decode device 'gpu0' is not "cpu" or "cuda:N"}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "gpu0", op = "rms_norm">} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}

// -----

// expected-error @+2 {{GPU architecture 'sm_61' is not sm_NN or compute_NN with NN >= 75}}
// expected-error @+1 {{failed to parse KtGraph_TargetAttr parameter 'gpus'}}
module attributes {ktgraph.target = #ktgraph.target<cpu = "haswell", cpu_features = [], cores = 4, gpus = [#ktgraph.gpu<arch = "sm_61", memory = 1024>]>} {}

// -----

// expected-error @+1 {{target must have at least one CPU core}}
module attributes {ktgraph.target = #ktgraph.target<cpu = "haswell", cpu_features = [], cores = 0, gpus = []>} {}
