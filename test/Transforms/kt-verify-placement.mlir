// RUN: kt-opt %s --split-input-file --kt-verify-placement --verify-diagnostics | FileCheck %s

// A valid placement passes unchanged.
// CHECK-LABEL: func.func @valid
module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @valid(%x: tensor<?x64xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x64xf32> {
  %e = ktgraph.routed_experts %x, %ids, %w {path = "model.layers.1.mlp.experts",
      gate_proj = #ktgraph.weight<"a", "q4_0", [64, 32, 8]>, up_proj = #ktgraph.weight<"b", "q4_0", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"c", "q4_0", [32, 64, 8]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "experts", out = "cuda:0", rule = "r.yaml:9:3", kwargs = {generate_op = "quant", prefill_op = "quant"}>}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  return %e : tensor<?x64xf32>
}
}

// -----

module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @missing_gpu(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{module 'model.norm' is placed on cuda:1 by the rule at r.yaml:4:3, but the target has 1 GPU(s); change the rule or describe the machine with --target-gpu}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "default", rule = "r.yaml:4:3">} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}
}

// -----

module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @sub_module_gpu(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{module 'model.layers.0.mlp.down_proj' is placed on cuda:3}}
  %d = ktgraph.mlp %x {path = "model.layers.0.mlp",
      gate_proj = #ktgraph.weight<"g", "f32", [64, 96]>, up_proj = #ktgraph.weight<"u", "f32", [64, 96]>,
      down_proj = #ktgraph.weight<"d", "f32", [96, 64]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mlp">,
      ktgraph.sub_placements = {down_proj = #ktgraph.placement<prefill = "cuda:3", decode = "cuda:3", op = "linear">}} : tensor<?x64xf32>
  return %d : tensor<?x64xf32>
}
}

// -----

module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @gpu_kernel_on_cpu(%x: tensor<?x64xf32>) -> tensor<?x512xf32> {
  // expected-error @+1 {{module 'lm_head' runs decode on cpu with operator 'linear', which runs on cuda only (the rule at r.yaml:7:3)}}
  %y = ktgraph.lm_head %x {path = "lm_head", weight = #ktgraph.weight<"output.weight", "f32", [64, 512]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "linear", rule = "r.yaml:7:3", kwargs = {generate_op = "fp8"}>} : tensor<?x64xf32> -> tensor<?x512xf32>
  return %y : tensor<?x512xf32>
}
}

// -----

module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @wrong_kind(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{operator 'experts' chosen by the default placement cannot run module 'model.norm' (a rms_norm)}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32,
      ktgraph.placement = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "experts">} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}
}

// -----

module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @type_without_gpu_kernel(%x: tensor<?x64xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{weight 'c' of module 'model.layers.1.mlp.experts' has storage type q4_0, which the GPU kernels do not read, but the rule at r.yaml:9:3 runs it on cuda:0; place the module on cpu or use a model quantized to F16, BF16, Q8_0, Q4_K, Q5_K or Q6_K}}
  %e = ktgraph.routed_experts %x, %ids, %w {path = "model.layers.1.mlp.experts",
      gate_proj = #ktgraph.weight<"a", "q4_0", [64, 32, 8]>, up_proj = #ktgraph.weight<"b", "q4_0", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"c", "q4_0", [32, 64, 8]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "experts", rule = "r.yaml:9:3", kwargs = {generate_op = "quant", prefill_op = "quant"}>}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  return %e : tensor<?x64xf32>
}
}

// -----

// expected-error @+1 {{the module has no ktgraph.target}}
module {
func.func @no_target(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}
}

// -----

module attributes {ktgraph.target = #ktgraph.target<cpu = "haswell", cpu_features = [], cores = 4, gpus = []>} {
func.func @unplaced(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{module 'model.norm' has no placement; run kt-apply-rules first}}
  %y = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %y : tensor<?x64xf32>
}
}

// -----

module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @fp8_on_gguf(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{module 'model.layers.0.mlp.gate_proj' runs the fp8 kernel family (the rule at r.yaml:30:3), which needs FP8 weights from a native FP8 checkpoint, but weight 'g' is q8_0; give the model's FP8 checkpoint with --fp8-path, or for a GGUF model use the quant family (KLinearMarlin) or the dense one (KLinearTorch)}}
  %d = ktgraph.mlp %x {path = "model.layers.0.mlp",
      gate_proj = #ktgraph.weight<"g", "q8_0", [64, 96]>, up_proj = #ktgraph.weight<"u", "q8_0", [64, 96]>,
      down_proj = #ktgraph.weight<"d", "q8_0", [96, 64]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mlp">,
      ktgraph.sub_placements = {gate_proj = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", rule = "r.yaml:30:3", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>}} : tensor<?x64xf32>
  return %d : tensor<?x64xf32>
}
}

// -----

// FP8 weights (ktc compile --fp8-path) on a sub-module the rules run with the
// quant family.
module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @fp8_weight_quant_family(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{weight 'model.layers.0.mlp.gate_proj.weight' of module 'model.layers.0.mlp.gate_proj' is FP8 (from a native FP8 checkpoint), but the rule at r.yaml:30:3 runs it on a GPU without the fp8 kernel family; use generate_op/prefill_op KLinearFP8 there (see rules/DeepSeek-V3-Chat-fp8-linear-ggml-experts.yaml), or place it on the CPU, which converts it to q8_0 at load}}
  %d = ktgraph.mlp %x {path = "model.layers.0.mlp",
      gate_proj = #ktgraph.weight<"model.layers.0.mlp.gate_proj.weight", "f8_e4m3", [64, 96]>, up_proj = #ktgraph.weight<"u", "q8_0", [64, 96]>,
      down_proj = #ktgraph.weight<"d", "q8_0", [96, 64]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mlp">,
      ktgraph.sub_placements = {gate_proj = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", rule = "r.yaml:30:3", kwargs = {generate_op = "quant", prefill_op = "quant"}>}} : tensor<?x64xf32>
  return %d : tensor<?x64xf32>
}
}

// -----

// FP8 weights of a checkpoint model placed on the CPU (converted to q8_0 at
// load), and an FP8 kv_b_proj in attention on a GPU (the operator converts
// and splits it), pass.
// CHECK-LABEL: func.func @fp8_on_cpu_and_kv_b
module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @fp8_on_cpu_and_kv_b(%x: tensor<?x64xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x64xf32> {
  %a = ktgraph.mla_attention %x {path = "model.layers.0.self_attn",
      num_heads = 4 : i64, q_lora_rank = 0 : i64, kv_lora_rank = 32 : i64,
      qk_nope_head_dim = 16 : i64, qk_rope_head_dim = 8 : i64, v_head_dim = 16 : i64,
      eps = 1.0e-6 : f32, rope_theta = 10000.0 : f64, rope_scaling_factor = 1.0 : f64,
      rope_original_context_length = 0 : i64, rope_yarn_log_multiplier = 0.0 : f64,
      q_proj = #ktgraph.weight<"blk.0.attn_q.weight", "f8_e4m3", [64, 96]>,
      kv_a_proj_with_mqa = #ktgraph.weight<"blk.0.attn_kv_a_mqa.weight", "f8_e4m3", [64, 40]>,
      kv_a_norm = #ktgraph.weight<"blk.0.attn_kv_a_norm.weight", "bf16", [32]>,
      kv_b_proj = #ktgraph.weight<"blk.0.attn_kv_b.weight", "f8_e4m3", [32, 128]>,
      o_proj = #ktgraph.weight<"blk.0.attn_output.weight", "f8_e4m3", [64, 64]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mla_attention">,
      ktgraph.sub_placements = {
        q_proj = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>,
        kv_a_proj_with_mqa = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "linear", kwargs = {generate_op = "quant", prefill_op = "quant"}>,
        o_proj = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>}} : tensor<?x64xf32>
  %e = ktgraph.routed_experts %a, %ids, %w {path = "model.layers.0.mlp.experts",
      gate_proj = #ktgraph.weight<"blk.0.ffn_gate_exps.weight", "f8_e4m3", [64, 32, 8]>,
      up_proj = #ktgraph.weight<"blk.0.ffn_up_exps.weight", "f8_e4m3", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"blk.0.ffn_down_exps.weight", "f8_e4m3", [32, 64, 8]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "experts", out = "cuda:0", kwargs = {generate_op = "quant", prefill_op = "quant"}>}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  return %e : tensor<?x64xf32>
}
}

// -----

// FP8 routed experts whose prefill runs on a GPU and decode on the CPU
// (streamed there) are refused.
module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = [], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @fp8_experts_on_gpu(%x: tensor<?x64xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{the routed experts 'model.layers.0.mlp.experts' are FP8 and the rule at r.yaml:9:3 runs their prefill and decode on different devices; FP8 experts run on one GPU for both, or on the CPU (converted to q8_0 at load)}}
  %e = ktgraph.routed_experts %x, %ids, %w {path = "model.layers.0.mlp.experts",
      gate_proj = #ktgraph.weight<"blk.0.ffn_gate_exps.weight", "f8_e4m3", [64, 32, 8]>,
      up_proj = #ktgraph.weight<"blk.0.ffn_up_exps.weight", "f8_e4m3", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"blk.0.ffn_down_exps.weight", "f8_e4m3", [32, 64, 8]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "experts", out = "cuda:0", rule = "r.yaml:9:3", kwargs = {generate_op = "quant", prefill_op = "quant"}>}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  return %e : tensor<?x64xf32>
}
}
