// RUN: kt-opt %s --kt-fuse-norm-quantize | FileCheck %s

#gpu0 = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#fp8_0 = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>
#fp8_1 = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "linear", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>
#quant0 = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", kwargs = {generate_op = "quant", prefill_op = "quant"}>
#wgmma = {decode = "linear.fp8.fp8_wgmma", prefill = "linear.fp8.fp8_wgmma"}
#mma = {decode = "linear.fp8.fp8_mma", prefill = "linear.fp8.fp8_mma"}
#q8 = {decode = "linear.quant.gemv_q8_0", prefill = "linear.quant.mma_bf16_q8_0"}

// CHECK-LABEL: func.func @f
func.func @f(%x: tensor<?x256xf32>, %y: tensor<?x192xf32>) -> tensor<?x256xf32> {
  // An FP8 wgmma gate on the norm's GPU: the norm quantizes for it; an FP8
  // wgmma down projection: the SiLU-gated product does.
  // CHECK: ktgraph.rms_norm {{.*}}ktgraph.quantize_fp8 = true{{.*}}path = "fp8_gate"
  // CHECK: ktgraph.mlp {{.*}}ktgraph.quantize_fp8_act = true{{.*}}path = "m0"
  %a = ktgraph.rms_norm %x {path = "fp8_gate", weight = #ktgraph.weight<"w", "f32", [256]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0} : tensor<?x256xf32>
  %ma = ktgraph.mlp %a {path = "m0",
      gate_proj = #ktgraph.weight<"g", "f8_e4m3", [256, 128]>, up_proj = #ktgraph.weight<"u", "f8_e4m3", [256, 128]>,
      down_proj = #ktgraph.weight<"d", "f8_e4m3", [128, 256]>, ktgraph.placement = #gpu0,
      ktgraph.sub_placements = {gate_proj = #fp8_0, up_proj = #fp8_0, down_proj = #fp8_0},
      ktgraph.sub_kernels = {gate_proj = #wgmma, up_proj = #wgmma, down_proj = #wgmma}} : tensor<?x256xf32>

  // GGUF weights, sm_89's FP8 mma, a gate on another GPU: each reads f32.
  // CHECK: ktgraph.rms_norm
  // CHECK-NOT: quantize_fp8
  // CHECK-SAME: path = "quant_gate"
  %b = ktgraph.rms_norm %ma {path = "quant_gate", weight = #ktgraph.weight<"w", "f32", [256]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0} : tensor<?x256xf32>
  %mb = ktgraph.shared_experts %b {path = "s0",
      gate_proj = #ktgraph.weight<"g", "q8_0", [256, 128]>, up_proj = #ktgraph.weight<"u", "q8_0", [256, 128]>,
      down_proj = #ktgraph.weight<"d", "q8_0", [128, 256]>, ktgraph.placement = #gpu0,
      ktgraph.sub_placements = {gate_proj = #quant0, up_proj = #quant0, down_proj = #quant0},
      ktgraph.sub_kernels = {gate_proj = #q8, up_proj = #q8, down_proj = #q8}} : tensor<?x256xf32>
  // CHECK: ktgraph.shared_experts
  // CHECK-NOT: quantize_fp8
  // CHECK-SAME: path = "s0"
  // CHECK: ktgraph.rms_norm
  // CHECK-NOT: quantize_fp8
  // CHECK-SAME: path = "mma_gate"
  // CHECK: ktgraph.mlp
  // CHECK-NOT: quantize_fp8
  // CHECK-SAME: path = "m1"
  %c = ktgraph.rms_norm %mb {path = "mma_gate", weight = #ktgraph.weight<"w", "f32", [256]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0} : tensor<?x256xf32>
  %mc = ktgraph.mlp %c {path = "m1",
      gate_proj = #ktgraph.weight<"g", "f8_e4m3", [256, 128]>, up_proj = #ktgraph.weight<"u", "f8_e4m3", [256, 128]>,
      down_proj = #ktgraph.weight<"d", "f8_e4m3", [128, 256]>, ktgraph.placement = #gpu0,
      ktgraph.sub_placements = {gate_proj = #fp8_0, up_proj = #fp8_0, down_proj = #fp8_0},
      ktgraph.sub_kernels = {gate_proj = #mma, up_proj = #mma, down_proj = #mma}} : tensor<?x256xf32>
  // CHECK: ktgraph.rms_norm
  // CHECK-NOT: quantize_fp8
  // CHECK-SAME: path = "other_gpu"
  %d = ktgraph.rms_norm %mc {path = "other_gpu", weight = #ktgraph.weight<"w", "f32", [256]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0} : tensor<?x256xf32>
  %md = ktgraph.mlp %d {path = "m2",
      gate_proj = #ktgraph.weight<"g", "f8_e4m3", [256, 128]>, up_proj = #ktgraph.weight<"u", "f8_e4m3", [256, 128]>,
      down_proj = #ktgraph.weight<"d", "f8_e4m3", [128, 256]>, ktgraph.placement = #gpu0,
      ktgraph.sub_placements = {gate_proj = #fp8_1, up_proj = #fp8_0, down_proj = #fp8_0},
      ktgraph.sub_kernels = {gate_proj = #wgmma, up_proj = #wgmma, down_proj = #wgmma}} : tensor<?x256xf32>

  // Attention: q_a on FP8 wgmma (the norm quantizes x for q_a and kv_a);
  // q_b too, so q_a_norm quantizes for it.
  // CHECK: ktgraph.rms_norm {{.*}}ktgraph.quantize_fp8 = true{{.*}}path = "attn_norm"
  %e = ktgraph.rms_norm %md {path = "attn_norm", weight = #ktgraph.weight<"w", "f32", [256]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0} : tensor<?x256xf32>
  // CHECK: ktgraph.mla_attention {{.*}}ktgraph.quantize_fp8_q_norm = true
  %att = ktgraph.mla_attention %e {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 128 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 1.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.0 : f64,
      q_a_proj = #ktgraph.weight<"qa", "f8_e4m3", [256, 128]>,
      q_a_norm = #ktgraph.weight<"qn", "f32", [128]>,
      q_b_proj = #ktgraph.weight<"qb", "f8_e4m3", [128, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"kva", "f8_e4m3", [256, 40]>,
      kv_a_norm = #ktgraph.weight<"kvn", "f32", [32]>,
      kv_b_proj = #ktgraph.weight<"kvb", "f32", [32, 128]>,
      o_proj = #ktgraph.weight<"o", "f8_e4m3", [64, 256]>, ktgraph.placement = #gpu0,
      ktgraph.sub_placements = {q_a_proj = #fp8_0, q_b_proj = #fp8_0, kv_a_proj_with_mqa = #fp8_0, o_proj = #fp8_0},
      ktgraph.sub_kernels = {q_a_proj = #wgmma, q_b_proj = #wgmma, kv_a_proj_with_mqa = #wgmma, o_proj = #wgmma}} : tensor<?x256xf32>

  // A width that is not whole 128-column slices is never marked.
  // CHECK: ktgraph.rms_norm
  // CHECK-NOT: quantize_fp8
  // CHECK-SAME: path = "narrow"
  %n = ktgraph.rms_norm %y {path = "narrow", weight = #ktgraph.weight<"w", "f32", [192]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0} : tensor<?x192xf32>
  %mn = ktgraph.mlp %n {path = "m3",
      gate_proj = #ktgraph.weight<"g", "f8_e4m3", [192, 128]>, up_proj = #ktgraph.weight<"u", "f8_e4m3", [192, 128]>,
      down_proj = #ktgraph.weight<"d", "f8_e4m3", [128, 192]>, ktgraph.placement = #gpu0,
      ktgraph.sub_placements = {gate_proj = #fp8_0, up_proj = #fp8_0, down_proj = #fp8_0},
      ktgraph.sub_kernels = {gate_proj = #wgmma, up_proj = #wgmma, down_proj = #wgmma}} : tensor<?x192xf32>
  return %att : tensor<?x256xf32>
}
