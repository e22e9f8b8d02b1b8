// RUN: kt-opt %s --split-input-file --kt-insert-transfers --verify-diagnostics | FileCheck %s

#gpu = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#experts = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "experts_cpu", out = "cuda:0">
#cpu = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "default">

// Experts decoded on the CPU: their inputs move to the CPU in decode only;
// their output comes back through out = "cuda:0", so the add needs nothing.
// CHECK-LABEL: func.func @experts_on_cpu
func.func @experts_on_cpu(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // CHECK: %[[N:.+]] = ktgraph.rms_norm
  %n = ktgraph.rms_norm %x {path = "model.layers.1.post_attention_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu} : tensor<?x64xf32>
  // Transfers sit right after the producer of their value, one per value.
  // CHECK-NEXT: %[[NT:.+]] = ktgraph.transfer %[[N]] {decode_from = "cuda:0", decode_to = "cpu", prefill_from = "cuda:0", prefill_to = "cuda:0"} : tensor<?x64xf32>
  // CHECK-NEXT: %[[IDS0:.+]], %[[W0:.+]] = ktgraph.moe_gate %[[N]]
  %ids, %w = ktgraph.moe_gate %n {path = "model.layers.1.mlp.gate", num_experts = 8 : i64,
      top_k = 2 : i64, n_group = 1 : i64, topk_group = 1 : i64, scoring_func = "sigmoid",
      norm_topk_prob = true, routed_scaling_factor = 1.0 : f64,
      weight = #ktgraph.weight<"g", "f32", [64, 8]>, ktgraph.placement = #gpu}
      : tensor<?x64xf32> -> tensor<?x2xi32>, tensor<?x2xf32>
  // CHECK-DAG: %[[IDS:.+]] = ktgraph.transfer %[[IDS0]] {decode_from = "cuda:0", decode_to = "cpu", prefill_from = "cuda:0", prefill_to = "cuda:0"} : tensor<?x2xi32>
  // CHECK-DAG: %[[W:.+]] = ktgraph.transfer %[[W0]] {decode_from = "cuda:0", decode_to = "cpu", prefill_from = "cuda:0", prefill_to = "cuda:0"} : tensor<?x2xf32>
  // CHECK: %[[E:.+]] = ktgraph.routed_experts %[[NT]], %[[IDS]], %[[W]]
  %e = ktgraph.routed_experts %n, %ids, %w {path = "model.layers.1.mlp.experts",
      gate_proj = #ktgraph.weight<"a", "f32", [64, 32, 8]>, up_proj = #ktgraph.weight<"b", "f32", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"c", "f32", [32, 64, 8]>, ktgraph.placement = #experts}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  // CHECK-NEXT: ktgraph.add %[[N]], %[[E]]
  %r = ktgraph.add %n, %e {ktgraph.placement = #gpu} : tensor<?x64xf32>
  return %r : tensor<?x64xf32>
}

// -----

#gpu = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#cpu = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "default">

// A CPU embedding feeding the GPU: one transfer shared by both consumers.
// CHECK-LABEL: func.func @shared_transfer
func.func @shared_transfer(%t: tensor<?xi32>) -> tensor<?x64xf32> {
  // CHECK: %[[H:.+]] = ktgraph.embedding
  %h = ktgraph.embedding %t {path = "model.embed_tokens", weight = #ktgraph.weight<"token_embd.weight", "f32", [64, 100]>, ktgraph.placement = #cpu} : tensor<?xi32> -> tensor<?x64xf32>
  // CHECK-NEXT: %[[T:.+]] = ktgraph.transfer %[[H]] {decode_from = "cpu", decode_to = "cuda:0", prefill_from = "cpu", prefill_to = "cuda:0"}
  // CHECK-NEXT: %[[N:.+]] = ktgraph.rms_norm %[[T]]
  %n = ktgraph.rms_norm %h {path = "model.layers.0.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu} : tensor<?x64xf32>
  // CHECK-NEXT: ktgraph.add %[[T]], %[[N]]
  %r = ktgraph.add %h, %n {ktgraph.placement = #gpu} : tensor<?x64xf32>
  // CHECK-NOT: ktgraph.transfer
  return %r : tensor<?x64xf32>
}

// -----

func.func @unplaced(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // expected-error @+1 {{'ktgraph.rms_norm' op has no placement; run kt-apply-rules first}}
  %n = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32} : tensor<?x64xf32>
  return %n : tensor<?x64xf32>
}
