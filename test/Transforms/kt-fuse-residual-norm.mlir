// RUN: kt-opt %s --kt-fuse-residual-norm | FileCheck %s

#gpu0 = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default">
#gpu1 = #ktgraph.placement<prefill = "cuda:1", decode = "cuda:1", op = "default">
#cpu = #ktgraph.placement<prefill = "cpu", decode = "cpu", op = "default">
#split = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "default">
#elsewhere = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "default", out = "cpu">

// CHECK-LABEL: func.func @layer
// CHECK-SAME: (%[[X:[^:]+]]: {{.*}}, %[[A:[^:]+]]: {{.*}}, %[[E:[^:]+]]: {{.*}}, %[[S:[^:]+]]: {{.*}})
func.func @layer(%x: tensor<?x64xf32>, %attn: tensor<?x64xf32>, %routed: tensor<?x64xf32>,
                 %shared: tensor<?x64xf32>) -> (tensor<?x64xf32>, tensor<?x64xf32>) {
  // The residual add after attention and the norm before the MLP: one op
  // with the norm's attributes, its sum read by the next residual add.
  // CHECK: %[[H:[^,]+]], %[[N:[^ ]+]] = ktgraph.add_rms_norm %[[X]], %[[A]] {eps = 9.99999997E-7 : f32, ktgraph.placement = #{{.+}}, ktgraph.quantize_fp8 = true, ktgraph.stage = 0 : i64, path = "post_attention_layernorm", weight = #ktgraph.weight<"w1", "f32", [64]>} : tensor<?x64xf32>
  // CHECK-NOT: ktgraph.add
  // CHECK-NOT: ktgraph.rms_norm
  %h = ktgraph.add %x, %attn {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %n = ktgraph.rms_norm %h {path = "post_attention_layernorm", weight = #ktgraph.weight<"w1", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64, ktgraph.quantize_fp8 = true} : tensor<?x64xf32>
  // The experts' sum, read only by the residual add, is the third addend,
  // in the adds' order: h + (routed + shared).
  // CHECK: %[[H2:[^,]+]], %[[N2:[^ ]+]] = ktgraph.add_rms_norm %[[H]], %[[E]], %[[N]] {{{.*}}path = "input_layernorm"
  %experts = ktgraph.add %routed, %n {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %h2 = ktgraph.add %h, %experts {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %n2 = ktgraph.rms_norm %h2 {path = "input_layernorm", weight = #ktgraph.weight<"w2", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  // The inner add on the left: the other addend first.
  // CHECK: %[[H3:[^,]+]], %{{[^ ]+}} = ktgraph.add_rms_norm %[[N2]], %[[H2]], %[[S]] {{{.*}}path = "left"
  %inner = ktgraph.add %h2, %shared {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %h3 = ktgraph.add %inner, %n2 {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %n3 = ktgraph.rms_norm %h3 {path = "left", weight = #ktgraph.weight<"w3", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  // An inner add read twice stays an add; the outer one is fused alone.
  // CHECK: %[[TWICE:.+]] = ktgraph.add %[[H3]], %[[S]]
  // CHECK: %[[H4:[^,]+]], %{{[^ ]+}} = ktgraph.add_rms_norm %[[A]], %[[TWICE]] {{{.*}}path = "twice"
  %twice = ktgraph.add %h3, %shared {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %h4 = ktgraph.add %attn, %twice {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %n4 = ktgraph.rms_norm %h4 {path = "twice", weight = #ktgraph.weight<"w4", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  // CHECK: ktgraph.add %[[TWICE]], %[[N3:[^ ]+]]
  %r = ktgraph.add %twice, %n3 {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %out = ktgraph.add %r, %n4 {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  return %out, %h4 : tensor<?x64xf32>, tensor<?x64xf32>
}

// What does not fuse: the add and the norm on the CPU, on two GPUs, a norm
// that decodes on the CPU, in two stages, or a norm whose result goes
// elsewhere.
// CHECK-LABEL: func.func @apart
// CHECK-NOT: add_rms_norm
// CHECK: return
func.func @apart(%x: tensor<?x64xf32>, %y: tensor<?x64xf32>) -> (tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>) {
  %a = ktgraph.add %x, %y {ktgraph.placement = #cpu} : tensor<?x64xf32>
  %na = ktgraph.rms_norm %a {path = "cpu", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #cpu} : tensor<?x64xf32>
  %b = ktgraph.add %x, %y {ktgraph.placement = #gpu1} : tensor<?x64xf32>
  %nb = ktgraph.rms_norm %b {path = "two_gpus", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0} : tensor<?x64xf32>
  %c = ktgraph.add %x, %y {ktgraph.placement = #gpu0} : tensor<?x64xf32>
  %nc = ktgraph.rms_norm %c {path = "decodes_on_cpu", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #split} : tensor<?x64xf32>
  %d = ktgraph.add %x, %y {ktgraph.placement = #gpu0, ktgraph.stage = 0 : i64} : tensor<?x64xf32>
  %nd = ktgraph.rms_norm %d {path = "next_stage", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #gpu0, ktgraph.stage = 1 : i64} : tensor<?x64xf32>
  %e = ktgraph.add %x, %y {ktgraph.placement = #gpu0} : tensor<?x64xf32>
  %ne = ktgraph.rms_norm %e {path = "out_elsewhere", weight = #ktgraph.weight<"w", "f32", [64]>, eps = 1.0e-6 : f32, ktgraph.placement = #elsewhere} : tensor<?x64xf32>
  return %na, %nb, %nc, %nd, %ne : tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>, tensor<?x64xf32>
}
