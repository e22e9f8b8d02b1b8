// RUN: kt-opt %s --split-input-file --kt-plan-memory="cache-lens=1024 chunk-size=64" --verify-diagnostics | FileCheck %s

// Weights on their decode device, the latent KV cache on the attention's
// device, staging for experts prefilled on the GPU but decoded on the CPU.
// CHECK-LABEL: module @fits
// CHECK-SAME: ktgraph.memory_plan = {
// cpu: the experts' weights, 3 x 64 x 32 x 8 f32; pinned staging for 64 tokens
// in and out, 2 x 64 x 64 x 4 bytes.
// CHECK-SAME: cpu = {activations = 81920 : i64, kv_cache = 0 : i64, staging = 32768 : i64, total = 311296 : i64, weights = 196608 : i64}
// cuda:0: kv cache 1024 tokens x (32 + 8) x 2 bytes; weights 16928 f32 values;
// activations 3 x 64 x 64 x 4 + 64 x 4 x (2 x 24 + 16) x 4 + 64 x 64 x 4 x 4;
// staging two experts of 3 x 64 x 32 f32; budget 2 GiB less the 1 GiB reserve.
// CHECK-SAME: "cuda:0" = {activations = 180224 : i64, budget = 1073741824 : i64, kv_cache = 81920 : i64, staging = 49152 : i64, total = 379008 : i64, weights = 67712 : i64}
module @fits attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 2147483648>]>} {
func.func @forward(%x: tensor<?x64xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x64xf32> {
  %a = ktgraph.mla_attention %x {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 0 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 1.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.0 : f64,
      q_proj = #ktgraph.weight<"blk.0.attn_q.weight", "f32", [64, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "f32", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "f32", [32]>,
      kv_b_proj = #ktgraph.weight<"blk.0.attn_kv_b.weight", "f32", [32, 128]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "f32", [64, 64]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mla_attention">} : tensor<?x64xf32>
  %e = ktgraph.routed_experts %a, %ids, %w {path = "model.layers.0.mlp.experts",
      gate_proj = #ktgraph.weight<"blk.0.ffn_gate_exps.weight", "f32", [64, 32, 8]>,
      up_proj = #ktgraph.weight<"blk.0.ffn_up_exps.weight", "f32", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"blk.0.ffn_down_exps.weight", "f32", [32, 64, 8]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "experts_cpu", out = "cuda:0">}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  return %e : tensor<?x64xf32>
}
}

// -----

// FP8 weights: one byte per value and an f32 per 128x128 block; the GEMM's
// quantized input adds a byte per value and an f32 per 128 of the widest
// input (down_proj's 256) to the MLP's f32 buffers for the chunk.
// CHECK-LABEL: module @fp8
// weights: 3 x (128 x 256 + 2 x 4); activations: 3 x 64 x 128 x 4 + 2 x 64 x
// 256 x 4, then 64 x 256 + 64 x 2 x 4.
// CHECK-SAME: "cuda:0" = {activations = 246272 : i64, budget = 1073741824 : i64, kv_cache = 0 : i64, staging = 0 : i64, total = 344600 : i64, weights = 98328 : i64}
module @fp8 attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 2147483648>]>} {
func.func @forward(%x: tensor<?x128xf32>) -> tensor<?x128xf32> {
  %d = ktgraph.mlp %x {path = "model.layers.0.mlp",
      gate_proj = #ktgraph.weight<"model.layers.0.mlp.gate_proj.weight", "f8_e4m3", [128, 256]>,
      up_proj = #ktgraph.weight<"model.layers.0.mlp.up_proj.weight", "f8_e4m3", [128, 256]>,
      down_proj = #ktgraph.weight<"model.layers.0.mlp.down_proj.weight", "f8_e4m3", [256, 128]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mlp">} : tensor<?x128xf32>
  return %d : tensor<?x128xf32>
}
}

// -----

// Over budget: the whole table and the largest modules on the device.
// expected-error @+1 {{the plan does not fit in memory}}
module @over attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 1073807360>]>} {
func.func @forward(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  %d = ktgraph.mlp %x {path = "model.layers.0.mlp",
      gate_proj = #ktgraph.weight<"blk.0.ffn_gate.weight", "f32", [64, 96]>,
      up_proj = #ktgraph.weight<"blk.0.ffn_up.weight", "f32", [64, 96]>,
      down_proj = #ktgraph.weight<"blk.0.ffn_down.weight", "f32", [96, 64]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mlp">} : tensor<?x64xf32>
  return %d : tensor<?x64xf32>
}
}

// -----

// No placement yet.
module @unplaced attributes {ktgraph.target = #ktgraph.target<cpu = "haswell", cpu_features = [], cores = 4, gpus = []>} {
func.func @forward(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{module 'model.norm' has no placement; run kt-apply-rules first}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}
}

// -----

// A GPU the target does not have.
// expected-error @+1 {{device cuda:1 is used by the placement but the target has no such GPU}}
module @no_gpu attributes {ktgraph.target = #ktgraph.target<cpu = "haswell", cpu_features = [], cores = 4, gpus = [#ktgraph.gpu<arch = "sm_80", memory = 85899345920>]>} {
func.func @forward(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "rms_norm">} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}
}
