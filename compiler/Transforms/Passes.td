#ifndef KT_TRANSFORMS_PASSES
#define KT_TRANSFORMS_PASSES

include "mlir/Pass/PassBase.td"

def PlanMemory : Pass<"kt-plan-memory", "mlir::ModuleOp"> {
  let summary = "Sizes weights, KV cache, activations and staging per device against its budget";
  let description = [{
    Adds up, for every device the placement uses, the bytes a run needs:

    - weights: each module's weights live on its decode device (a module
      prefilled on a GPU but decoded on the CPU streams its weights to the
      GPU during prefill; see staging);
    - kv cache: the MLA latent cache, `cache-lens` tokens × (kv_lora_rank +
      qk_rope_head_dim) values × 2 bytes per attention layer, on the
      attention's decode device;
    - activations: the buffers of one prefill chunk of `chunk-size` tokens on
      each device that computes (an estimate: the widest intermediate of each
      module kind, counted once per device because layers run in turn);
    - staging: on a GPU, two expert-sized buffers for streaming CPU-resident
      expert weights during prefill; on the CPU, pinned buffers for the
      activations that cross between CPU and GPU.

    Each GPU's budget is its `--gpu-mem` value or, without one, the target's
    memory for it minus `gpu-reserve` (CUDA context, library workspaces).
    A device over budget is an error that prints the whole table and the
    largest modules on that device, so the user sees what to move.

    The result is recorded on the module:

    ```mlir
    module attributes {ktgraph.memory_plan = {
        "cuda:0" = {activations = 1048576 : i64, budget = 85362475008 : i64,
                    kv_cache = 2359296 : i64, staging = 0 : i64,
                    total = 9633792 : i64, weights = 6225920 : i64}, ...}}
    ```
  }];
  let options = [
    Option<"cacheLens", "cache-lens", "int64_t", "4096",
           "Tokens of context the KV cache holds">,
    Option<"chunkSize", "chunk-size", "int64_t", "512",
           "Tokens per prefill chunk">,
    ListOption<"gpuMemory", "gpu-mem", "std::string",
               "Budgets as DEVICE=SIZE (cuda:0=24GiB), overriding the target's memory">,
    Option<"gpuReserve", "gpu-reserve", "std::string", "\"1GiB\"",
           "Memory kept free on each GPU when its budget comes from the target">,
  ];
}

def InsertTransfers : Pass<"kt-insert-transfers", "mlir::ModuleOp"> {
  let summary = "Moves activations to the device of each consumer";
  let description = [{
    A value lives, in each phase (prefill, decode), on its producer's
    `out` device if the placement has one, else on the device that ran the
    producer. Where a consumer runs elsewhere in either phase, a
    `ktgraph.transfer` is inserted before it (one per value and destination,
    shared by consumers on the same devices). Function arguments (the token
    ids) are uploaded by the runtime and need none.

    Before (decode of the experts on the CPU, everything else on cuda:0):
    ```mlir
    %n = ktgraph.rms_norm %h {..., ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cuda:0", op = "rms_norm">}
    %e = ktgraph.routed_experts %n, ... {..., ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "experts_cpu", out = "cuda:0">}
    ```
    After:
    ```mlir
    %t = ktgraph.transfer %n {decode_from = "cuda:0", decode_to = "cpu", prefill_from = "cuda:0", prefill_to = "cuda:0"}
    %e = ktgraph.routed_experts %t, ...
    ```
  }];
}

def PartitionStages : Pass<"kt-partition-stages", "mlir::ModuleOp"> {
  let summary = "Splits the graph into pipeline stages, one per GPU in turn";
  let description = [{
    A stage is a maximal run of ops, in program order, whose GPU (the decode
    device of each op that decodes on a GPU) stays the same; ops decoded on
    the CPU belong to the stage they sit in. Each op gets `ktgraph.stage`;
    the module gets `ktgraph.stages`, the device of each stage. A placement
    that comes back to a GPU it already left (cuda:0, cuda:1, cuda:0) is an
    error: a pipeline visits each GPU once.
  }];
}

def MarkGraphRegions : Pass<"kt-mark-graph-regions", "mlir::ModuleOp"> {
  let summary = "Marks the decode regions the runtime captures as CUDA graphs";
  let description = [{
    A region is a maximal run of consecutive ops of one stage that decode on
    that stage's GPU; an op decoded on the CPU, or a transfer from or to the
    CPU in decode, ends it (the host must take part there). Each op in a
    region gets `ktgraph.graph_region` (regions are numbered from 0 in
    program order); the module gets `ktgraph.graph_regions`, their count.
  }];
}

#endif // KT_TRANSFORMS_PASSES
