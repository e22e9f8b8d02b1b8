// RUN: kt-opt %s --split-input-file --kt-partition-stages --verify-diagnostics | FileCheck %s

#c0 = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#c1 = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "default">
#cpu = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "default">

// Two GPUs in turn; CPU ops belong to the stage they sit in, and ops before
// the first GPU op to stage 0.
// CHECK-LABEL: module @two_stages
// CHECK-SAME: ktgraph.stages = ["cuda:0", "cuda:1"]
module @two_stages {
func.func @f(%t: tensor<?xi32>) -> tensor<?x64xf32> {
  // CHECK: ktgraph.embedding {{.*}}ktgraph.stage = 0 : i64
  %h = ktgraph.embedding %t {path = "model.embed_tokens", weight = #ktgraph.weight<"e", "f32", [64, 100]>, ktgraph.placement = #cpu} : tensor<?xi32> -> tensor<?x64xf32>
  // CHECK: ktgraph.stage = 0 : i64{{.*}}path = "model.layers.0.input_layernorm"
  %a = ktgraph.rms_norm %h {path = "model.layers.0.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c0} : tensor<?x64xf32>
  // CHECK: ktgraph.stage = 0 : i64{{.*}}path = "model.layers.0.post_attention_layernorm"
  %b = ktgraph.rms_norm %a {path = "model.layers.0.post_attention_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #cpu} : tensor<?x64xf32>
  // CHECK: ktgraph.stage = 1 : i64{{.*}}path = "model.layers.1.input_layernorm"
  %c = ktgraph.rms_norm %b {path = "model.layers.1.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c1} : tensor<?x64xf32>
  return %c : tensor<?x64xf32>
}
}

// -----

#cpu = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "default">

// CPU only: one stage on the CPU.
// CHECK-LABEL: module @cpu_only
// CHECK-SAME: ktgraph.stages = ["cpu"]
module @cpu_only {
func.func @f(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  // CHECK: ktgraph.stage = 0 : i64
  %a = ktgraph.rms_norm %x {path = "model.norm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #cpu} : tensor<?x64xf32>
  return %a : tensor<?x64xf32>
}
}

// -----

#c0 = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#c1 = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "default">

func.func @back_and_forth(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  %a = ktgraph.rms_norm %x {path = "model.layers.0.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c0} : tensor<?x64xf32>
  %b = ktgraph.rms_norm %a {path = "model.layers.1.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c1} : tensor<?x64xf32>
  // expected-error @+1 {{returns to cuda:0 after the pipeline left it (stage 2); a pipeline visits each GPU once}}
  %c = ktgraph.rms_norm %b {path = "model.layers.2.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c0} : tensor<?x64xf32>
  return %c : tensor<?x64xf32>
}

// -----

#c0 = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#c1 = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "default">

// The rules' transfer_map and the layers' placement agree.
// CHECK-LABEL: module @map_agrees
// CHECK-SAME: ktgraph.stages = ["cuda:0", "cuda:1"]
module @map_agrees attributes {ktgraph.transfer_map = {"0" = "cuda:0", "1" = "cuda:1"}} {
func.func @f(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  %a = ktgraph.rms_norm %x {path = "model.layers.0.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c0} : tensor<?x64xf32>
  %b = ktgraph.rms_norm %a {path = "model.layers.1.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c1} : tensor<?x64xf32>
  %c = ktgraph.rms_norm %b {path = "model.layers.2.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c1} : tensor<?x64xf32>
  return %c : tensor<?x64xf32>
}
}

// -----

#c0 = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#c1 = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "default">

// Layer 1 runs on cuda:0 although the map moves layers 1.. to cuda:1.
module @map_disagrees attributes {ktgraph.transfer_map = {"0" = "cuda:0", "1" = "cuda:1"}} {
func.func @f(%x: tensor<?x64xf32>) -> tensor<?x64xf32> {
  %a = ktgraph.rms_norm %x {path = "model.layers.0.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c0} : tensor<?x64xf32>
  // expected-error @+1 {{module 'model.layers.1.input_layernorm' decodes on cuda:0, but the rules' transfer_map moves layer 1 to cuda:1; make the layer's rules and the transfer_map agree}}
  %b = ktgraph.rms_norm %a {path = "model.layers.1.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c0} : tensor<?x64xf32>
  %c = ktgraph.rms_norm %b {path = "model.layers.2.input_layernorm", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #c1} : tensor<?x64xf32>
  return %c : tensor<?x64xf32>
}
}
