#ifndef KT_TRANSFORMS_PASSES
#define KT_TRANSFORMS_PASSES

include "mlir/Pass/PassBase.td"

def ApplyRules : Pass<"kt-apply-rules", "mlir::ModuleOp"> {
  let summary = "Places every model module by the first placement rule that matches it";
  let description = [{
    Reads a KTransformers-compatible rule file (docs/rules.md) and applies it
    to the model's module tree, named like Hugging Face's: the graph's ops,
    their sub-modules (the linear projections inside attention and MLPs, the
    norms inside attention, the rotary embedding) and the containers
    (`model`, `model.layers.N`, `model.layers.N.mlp` of MoE layers). Parents
    are matched before children; the first matching rule wins; a rule with
    `recursive: false` leaves the module's descendants to it.

    Each graph op gets `ktgraph.placement`; an op whose linear sub-modules
    were placed gets `ktgraph.sub_placements` (role -> placement). Ops that
    are not modules (`ktgraph.add`) run where their last operand (the
    module output they add in) lives.
    The module gets `ktgraph.rules` (the rule file) and, when the rules have
    one, `ktgraph.transfer_map`. Rule diagnostics point at the rule file's
    line and column. A module no rule places gets the documented default
    (`default-device`), or an error with `strict`.

    Before:
    ```mlir
    %e = ktgraph.routed_experts %x, %ids, %w {path = "model.layers.3.mlp.experts", ...}
    ```
    After (rules/DeepSeek-V3-Chat.yaml):
    ```mlir
    %e = ktgraph.routed_experts %x, %ids, %w {path = "model.layers.3.mlp.experts",
        ktgraph.placement = #ktgraph.placement<prefill = "cuda:0", decode = "cpu",
            op = "experts", out = "cuda:0", rule = "rules/DeepSeek-V3-Chat.yaml:55:3",
            kwargs = {generate_op = "cpu", prefill_op = "torch"}>, ...}
    ```
  }];
  let options = [
    Option<"rulesPath", "rules", "std::string", "", "The rule file (YAML)">,
    Option<"strict", "strict", "bool", "false", "A module no rule places is an error">,
    Option<"defaultDevice", "default-device", "std::string", "",
           "Device of modules no rule places; default cuda:0, or cpu for a target without GPUs">,
  ];
}

def VerifyPlacement : Pass<"kt-verify-placement", "mlir::ModuleOp"> {
  let summary = "Checks that every placement can run on the target";
  let description = [{
    Every module op has a placement; every device it names exists in the
    target (`cpu`, or `cuda:N` with N below the target's GPU count); the
    operator replaces the module's kind and runs on the devices chosen; every
    weight's storage type has a kernel on its device (GPU kernels cover
    F32, F16, BF16, Q8_0, Q4_K, Q5_K and Q6_K; the CPU path every type the
    reader dequantizes); the fp8 kernel family gets FP8 weights. Errors
    name the module, the rule (file:line:col) and what to change.
  }];
}

def SelectKernels : Pass<"kt-select-kernels", "mlir::ModuleOp"> {
  let summary = "Picks the kernel variant of every module for each phase";
  let description = [{
    From the placement's device and kernel family (`generate_op`,
    `prefill_op`), the weights' storage type and the target (GPU
    architecture, CPU ISA features), chooses the kernel each phase runs:
    `<module kind>.<family>.<variant>`. Each module op gets
    `ktgraph.kernels = {prefill = "...", decode = "..."}`; ops whose linear
    sub-modules were placed separately also get `ktgraph.sub_kernels`.

    GPU (by compute capability):
    - `quant` (GGUF blocks, dequantized in registers): decode `gemv_<type>`;
      prefill `mma_bf16_<type>` on sm_80+, `mma_f16_<type>` on sm_75
      (Turing has no bf16 tensor cores).
    - `dense` (bf16 copies): `cublaslt_bf16` on sm_80+, `cublaslt_f16` on sm_75.
    - `fp8`: `fp8_wgmma` on sm_90a, `fp8_mma` on sm_89, otherwise
      `fp8_dequant_bf16` (sm_80/86) or `fp8_dequant_f16` (sm_75).
    - modules without a family: `cuda` (`cuda_f16` on sm_75).

    CPU (by ISA features of the target CPU, best first; the table is
    runtime/cpu/IsaVariants.cpp, which the runtime checks the host against):
    - `amx` (amx-tile, amx-int8, amx-bf16): prefill of `quant`/`dense`
      families and whenever `backend: AMXInt8`/`AMXBF16` asks for it;
    - `avx512_vnni` (avx512f, avx512bw, avx512vnni): int8 dot products on
      quantized weights;
    - `avx512_bf16` (avx512f, avx512bw, avx512bf16): the `dense` family;
    - `avx512` (avx512f, avx512bw), `avx2` (avx2, fma, f16c), `generic`.
    A `backend` the target cannot run (AMX on a CPU without it) is an error.

    ```mlir
    %e = ktgraph.routed_experts ... {ktgraph.kernels = {decode = "routed_experts.quant.avx512_vnni",
                                                        prefill = "routed_experts.quant.amx"}, ...}
    ```
  }];
}

def PlanMemory : Pass<"kt-plan-memory", "mlir::ModuleOp"> {
  let summary = "Sizes weights, KV cache, activations and staging per device against its budget";
  let description = [{
    Adds up, for every device the placement uses, the bytes a run needs:

    - weights: each module's weights live on its decode device (a module
      prefilled on a GPU but decoded on the CPU streams its weights to the
      GPU during prefill; see staging);
    - kv cache: the MLA latent cache, `cache-lens` tokens × (kv_lora_rank +
      qk_rope_head_dim) values × 2 bytes (bf16 on a GPU; 4, f32, on the CPU)
      per attention layer, on the attention's decode device;
    - activations: the buffers of one prefill chunk of `chunk-size` tokens on
      each device that computes (an estimate: the widest intermediate of each
      module kind, counted once per device because layers run in turn);
    - staging: on a GPU, two expert-sized buffers for streaming CPU-resident
      expert weights during prefill; on the CPU, pinned buffers for the
      activations that cross between CPU and GPU;
    - expert cache: with `expert-cache`, that many bytes on cuda:0 for copies
      of the most often routed experts of CPU-placed layers (the runtime
      fills them; ktc compile --gpu-expert-cache).

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
    Option<"expertCache", "expert-cache", "std::string", "\"\"",
           "Bytes reserved on cuda:0 for the GPU expert cache (a size, e.g. 20GiB)">,
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
    error: a pipeline visits each GPU once. When the rules have a
    `transfer_map`, every layer must decode on the GPU the map gives it.
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

def FuseNormQuantize : Pass<"kt-fuse-norm-quantize", "mlir::ModuleOp"> {
  let summary = "Lets RMSNorms quantize their results for the FP8 GEMMs that read them";
  let description = [{
    The FP8 wgmma GEMM (sm_90a) multiplies activations quantized to e4m3 per
    token and 128 columns. Where a GEMM's input is an RMSNorm's result on the
    same GPU, the norm can write that quantization in the pass that writes
    its result, so prefill skips a kernel and a read of the activations.

    An `rms_norm` gets `ktgraph.quantize_fp8 = true` when one of its users
    (not through a transfer) multiplies it first by a linear sub-module whose
    prefill kernel is `linear.fp8.fp8_wgmma`, placed on the norm's prefill
    device, with `in` equal to the norm's width (a multiple of 128): the
    attention's `q_a_proj` or `q_proj` (`kv_a_proj_with_mqa` reads the same
    quantization), the MLP's or shared experts' `gate_proj` (`up_proj` too).
    An `mla_attention` gets `ktgraph.quantize_fp8_q_norm = true` when its
    `q_b_proj` is such a sub-module: `q_a_norm` quantizes for it. An `mlp`
    or `shared_experts` gets `ktgraph.quantize_fp8_act = true` when its
    `down_proj` is: the SiLU-gated product quantizes for it (and is not
    written as floats).
  }];
}

def FuseResidualNorm : Pass<"kt-fuse-residual-norm", "mlir::ModuleOp"> {
  let summary = "Fuses residual adds and the RMSNorms reading them on a GPU";
  let description = [{
    Each decoder layer adds a module's output to the residual stream and
    normalizes the sum for the next module; on a GPU these are separate
    kernels of microseconds each, most of it launch and latency, in a decode
    step of one token. Where an `rms_norm` reads an `add` that runs on the
    same GPU in both phases (same stage, its result kept there), the two
    become one `add_rms_norm` with the norm's attributes (path, weight,
    placement, kernels, `ktgraph.quantize_fp8`) and two results, the sum
    and its normalization. An `add` that only the first one reads, on the
    same GPU (routed plus shared experts before the residual add), is taken
    in as a third addend: `a + (b + c)`, the adds' order, so the sum's bits
    do not change. Runs after kt-fuse-norm-quantize, before
    kt-mark-graph-regions.

    Before:
    ```mlir
    %s = ktgraph.add %routed, %shared : tensor<?x7168xf32>
    %h = ktgraph.add %residual, %s : tensor<?x7168xf32>
    %n = ktgraph.rms_norm %h {path = "model.layers.4.input_layernorm", ...}
    ```
    After:
    ```mlir
    %h, %n = ktgraph.add_rms_norm %residual, %routed, %shared
        {path = "model.layers.4.input_layernorm", ...} : tensor<?x7168xf32>
    ```
  }];
}

#endif // KT_TRANSFORMS_PASSES
