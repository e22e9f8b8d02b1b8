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

#endif // KT_TRANSFORMS_PASSES
