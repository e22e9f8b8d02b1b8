// RUN: kt-opt %s --kt-mark-graph-regions | FileCheck %s

#gpu = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#experts = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "experts_cpu", out = "cuda:0">

// A CPU-decoded op and the transfers to and from the CPU split the decode
// graph; ops of another stage start a new region.
// CHECK-LABEL: module
// CHECK-SAME: ktgraph.graph_regions = 3 : i64
func.func @f(%x: tensor<?x64xf32>, %ids: tensor<?x2xi32>, %w: tensor<?x2xf32>) -> tensor<?x64xf32> {
  // CHECK: ktgraph.graph_region = 0 : i64{{.*}}path = "a"
  %a = ktgraph.rms_norm %x {path = "a", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  // CHECK: ktgraph.graph_region = 0 : i64{{.*}}path = "b"
  %b = ktgraph.rms_norm %a {path = "b", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  // CHECK: ktgraph.transfer
  // CHECK-NOT: graph_region
  // CHECK-SAME: : tensor<?x64xf32>
  %t = ktgraph.transfer %b {prefill_from = "cuda:0", prefill_to = "cuda:0", decode_from = "cuda:0", decode_to = "cpu", ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  // CHECK: ktgraph.routed_experts
  // CHECK-NOT: graph_region
  // CHECK-SAME: -> tensor<?x64xf32>
  %e = ktgraph.routed_experts %t, %ids, %w {path = "model.layers.1.mlp.experts",
      gate_proj = #ktgraph.weight<"a", "f32", [64, 32, 8]>, up_proj = #ktgraph.weight<"b", "f32", [64, 32, 8]>,
      down_proj = #ktgraph.weight<"c", "f32", [32, 64, 8]>, ktgraph.placement = #experts, ktgraph.stage = 0 : i64}
      : tensor<?x64xf32>, tensor<?x2xi32>, tensor<?x2xf32> -> tensor<?x64xf32>
  // CHECK: ktgraph.graph_region = 1 : i64{{.*}}path = "c"
  %c = ktgraph.rms_norm %e {path = "c", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  // A GPU-to-GPU transfer into the next stage: the new stage opens region 2.
  // CHECK: ktgraph.transfer {{.*}}ktgraph.graph_region = 2 : i64
  %d = ktgraph.transfer %c {prefill_from = "cuda:0", prefill_to = "cuda:1", decode_from = "cuda:0", decode_to = "cuda:1", ktgraph.stage = 1 : i64} : tensor<?x64xf32>
  return %d : tensor<?x64xf32>
}
