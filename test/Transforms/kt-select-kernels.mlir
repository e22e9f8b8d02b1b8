// RUN: kt-opt %s --split-input-file --kt-select-kernels --verify-diagnostics | FileCheck %s

// Hopper with a Sapphire Rapids host: wgmma-class GPU kernels; AMX for CPU
// prefill, VNNI for CPU decode of quantized experts.
// CHECK-LABEL: func.func @hopper
module attributes {ktgraph.target = #ktgraph.target<cpu = "sapphirerapids", cpu_features = ["amx-bf16", "amx-int8", "amx-tile", "avx2", "avx512bf16", "avx512bw", "avx512f", "avx512vnni", "f16c", "fma"], cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>} {
func.func @hopper(%x: tensor<?x256xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x512xf32> {
  // CHECK: ktgraph.routed_experts {{.*}}ktgraph.kernels = {decode = "routed_experts.quant.avx512_vnni", prefill = "routed_experts.quant.amx"}
  %e = ktgraph.routed_experts %x, %ids, %w {path = "model.layers.1.mlp.experts",
      gate_proj = #ktgraph.weight<"a", "q4_K", [256, 32, 8]>, up_proj = #ktgraph.weight<"b", "q4_K", [256, 32, 8]>,
      down_proj = #ktgraph.weight<"c", "q8_0", [32, 256, 8]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "experts", out = "cuda:0", kwargs = {generate_op = "quant", prefill_op = "quant"}>}
      : tensor<?x256xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x256xf32>
  // The kernel follows the largest weight's type.
  // CHECK: ktgraph.lm_head {{.*}}ktgraph.kernels = {decode = "lm_head.quant.gemv_q6_K", prefill = "lm_head.quant.mma_bf16_q6_K"}
  %l = ktgraph.lm_head %e {path = "lm_head", weight = #ktgraph.weight<"output.weight", "q6_K", [256, 512]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", kwargs = {generate_op = "quant", prefill_op = "quant"}>} : tensor<?x256xf32> -> tensor<?x512xf32>
  // CHECK: ktgraph.rms_norm {{.*}}ktgraph.kernels = {decode = "rms_norm.cuda", prefill = "rms_norm.cuda"}
  %n = ktgraph.rms_norm %e {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [256]>, eps = 1.0e-6 : f32,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">} : tensor<?x256xf32>
  // FP8 on sm_90a: wgmma; dense: cuBLASLt in bf16. Linear sub-modules get their own.
  // CHECK: ktgraph.mlp
  // CHECK-SAME: ktgraph.sub_kernels = {down_proj = {decode = "linear.dense.cublaslt_bf16", prefill = "linear.dense.cublaslt_bf16"}, gate_proj = {decode = "linear.fp8.fp8_wgmma", prefill = "linear.fp8.fp8_wgmma"}}
  %m = ktgraph.mlp %n {path = "model.layers.0.mlp",
      gate_proj = #ktgraph.weight<"g", "bf16", [256, 96]>, up_proj = #ktgraph.weight<"u", "bf16", [256, 96]>,
      down_proj = #ktgraph.weight<"d", "bf16", [96, 256]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "mlp">,
      ktgraph.sub_placements = {gate_proj = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>,
                                down_proj = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", kwargs = {generate_op = "dense", prefill_op = "dense"}>}} : tensor<?x256xf32>
  return %l : tensor<?x512xf32>
}
}

// -----

// Older GPUs get the fallbacks: FP8 tensor cores need sm_89 (mma) or sm_90a
// (wgmma); sm_80/86 dequantize to bf16, Turing (sm_75) to f16.
// CHECK-LABEL: func.func @fallbacks
module attributes {ktgraph.target = #ktgraph.target<cpu = "haswell", cpu_features = ["avx2", "f16c", "fma"], cores = 8, gpus = [#ktgraph.gpu<arch = "sm_89", memory = 25769803776>, #ktgraph.gpu<arch = "sm_80", memory = 85899345920>, #ktgraph.gpu<arch = "sm_75", memory = 17179869184>]>} {
func.func @fallbacks(%x: tensor<?x256xf32>) -> tensor<?x512xf32> {
  // CHECK: ktgraph.kernels = {decode = "lm_head.fp8.fp8_mma", prefill = "lm_head.fp8.fp8_mma"}{{.*}}path = "a"
  %a = ktgraph.lm_head %x {path = "a", weight = #ktgraph.weight<"w", "bf16", [256, 512]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "linear", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>} : tensor<?x256xf32> -> tensor<?x512xf32>
  // CHECK: ktgraph.kernels = {decode = "lm_head.fp8.fp8_dequant_bf16", prefill = "lm_head.fp8.fp8_dequant_bf16"}{{.*}}path = "b"
  %b = ktgraph.lm_head %x {path = "b", weight = #ktgraph.weight<"w", "bf16", [256, 512]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "linear", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>} : tensor<?x256xf32> -> tensor<?x512xf32>
  // CHECK: ktgraph.kernels = {decode = "lm_head.fp8.fp8_dequant_f16", prefill = "lm_head.fp8.fp8_dequant_f16"}{{.*}}path = "c"
  %c = ktgraph.lm_head %x {path = "c", weight = #ktgraph.weight<"w", "bf16", [256, 512]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:2", decode = "cuda:2", op = "linear", kwargs = {generate_op = "fp8", prefill_op = "fp8"}>} : tensor<?x256xf32> -> tensor<?x512xf32>
  // CHECK: ktgraph.kernels = {decode = "lm_head.quant.gemv_q4_K", prefill = "lm_head.quant.mma_f16_q4_K"}{{.*}}path = "d"
  %d = ktgraph.lm_head %x {path = "d", weight = #ktgraph.weight<"w", "q4_K", [256, 512]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cuda:2", decode = "cuda:2", op = "linear", kwargs = {generate_op = "quant", prefill_op = "quant"}>} : tensor<?x256xf32> -> tensor<?x512xf32>
  // A Haswell host: AVX2 code on the CPU.
  // CHECK: ktgraph.kernels = {decode = "lm_head.quant.avx2", prefill = "lm_head.quant.avx2"}{{.*}}path = "e"
  %e = ktgraph.lm_head %x {path = "e", weight = #ktgraph.weight<"w", "q4_K", [256, 512]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "linear", kwargs = {generate_op = "quant", prefill_op = "quant"}>} : tensor<?x256xf32> -> tensor<?x512xf32>
  return %e : tensor<?x512xf32>
}
}

// -----

// A CPU without AVX2: the generic fallback.
// CHECK-LABEL: func.func @old_cpu
module attributes {ktgraph.target = #ktgraph.target<cpu = "x86-64", cpu_features = ["sse2"], cores = 2, gpus = []>} {
func.func @old_cpu(%x: tensor<?x256xf32>) -> tensor<?x256xf32> {
  // CHECK: ktgraph.kernels = {decode = "rms_norm.generic", prefill = "rms_norm.generic"}
  %n = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [256]>, eps = 1.0e-6 : f32,
      ktgraph.placement = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "default">} : tensor<?x256xf32>
  return %n : tensor<?x256xf32>
}
}

// -----

// An AMX backend on a host without AMX is refused.
module attributes {ktgraph.target = #ktgraph.target<cpu = "skylake-avx512", cpu_features = ["avx2", "avx512bw", "avx512f", "f16c", "fma"], cores = 8, gpus = []>} {
func.func @no_amx(%x: tensor<?x256xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x256xf32> {
  // expected-error @+1 {{module 'model.layers.1.mlp.experts' asks for backend AMXInt8 (r.yaml:9:3), but the target CPU skylake-avx512 has no AMX; remove the backend kwarg or compile for an AMX host with --target-cpu sapphirerapids}}
  %e = ktgraph.routed_experts %x, %ids, %w {path = "model.layers.1.mlp.experts",
      gate_proj = #ktgraph.weight<"a", "q4_K", [256, 32, 8]>, up_proj = #ktgraph.weight<"b", "q4_K", [256, 32, 8]>,
      down_proj = #ktgraph.weight<"c", "q8_0", [32, 256, 8]>,
      ktgraph.placement = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "experts", rule = "r.yaml:9:3", kwargs = {backend = "AMXInt8", generate_op = "quant", prefill_op = "quant"}>}
      : tensor<?x256xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x256xf32>
  return %e : tensor<?x256xf32>
}
}
