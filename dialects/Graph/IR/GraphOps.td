#ifndef KT_GRAPH_OPS
#define KT_GRAPH_OPS

include "dialects/Graph/IR/GraphBase.td"
include "mlir/IR/BuiltinAttributeInterfaces.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"

//===----------------------------------------------------------------------===//
// Attributes
//===----------------------------------------------------------------------===//

def KtGraph_WeightAttr : KtGraph_Attr<"Weight", "weight"> {
  let summary = "A weight tensor of the model file";
  let description = [{
    Names a tensor of the model source by its file name (GGUF tensor name),
    with its storage type (GGML's spelling, e.g. `q4_K`) and its shape in
    GGML order (the first dimension is contiguous: a row).

    ```mlir
    #ktgraph.weight<"blk.0.attn_q_a.weight", "q4_K", [7168, 1536]>
    ```
  }];
  let parameters = (ins
    StringRefParameter<"tensor name in the model file">:$name,
    StringRefParameter<"storage type, GGML spelling">:$dtype,
    ArrayRefParameter<"int64_t", "shape, GGML order">:$shape
  );
  let assemblyFormat = "`<` $name `,` $dtype `,` `[` $shape `]` `>`";
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    // Number of elements.
    int64_t getElementCount() const;
    // Bytes the tensor occupies in its storage type.
    uint64_t getStorageBytes() const;
  }];
}

// A string parameter that may be left out (then empty).
class KtGraph_OptionalStringParameter<string desc> : StringRefParameter<desc> {
  let defaultValue = "\"\"";
}

def KtGraph_PlacementAttr : KtGraph_Attr<"Placement", "placement"> {
  let summary = "Where and how a model module runs, as placement rules decided";
  let description = [{
    The devices that run the module in prefill and in decode ("cpu",
    "cuda:N"), the operator that implements it, the device its output goes
    to, the rule that placed it (`file:line:col`, empty for the documented
    default) and the rule's other kwargs.

    ```mlir
    #ktgraph.placement<prefill = "cuda:0", decode = "cpu", op = "experts_cpu",
                       out = "cuda:0", rule = "rules/DeepSeek-V3-Chat.yaml:40:3">
    ```
  }];
  let parameters = (ins
    StringRefParameter<"device in prefill">:$prefill,
    StringRefParameter<"device in decode">:$decode,
    StringRefParameter<"operator">:$op,
    KtGraph_OptionalStringParameter<"device of the output">:$out,
    KtGraph_OptionalStringParameter<"rule that placed it, file:line:col">:$rule,
    OptionalParameter<"::mlir::DictionaryAttr", "other kwargs of the rule">:$kwargs
  );
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
}

def KtGraph_GpuAttr : KtGraph_Attr<"Gpu", "gpu"> {
  let summary = "One GPU of the target machine";
  let description = [{
    The GPU's architecture as NVRTC names it and the memory the plan may use.

    ```mlir
    #ktgraph.gpu<arch = "sm_90a", memory = 85899345920>
    ```
  }];
  let parameters = (ins StringRefParameter<"architecture, e.g. sm_90a">:$arch,
                        "uint64_t":$memory);
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    // The compute capability, e.g. 90 for sm_90a.
    unsigned getComputeCapability() const;
  }];
}

def KtGraph_TargetAttr : KtGraph_Attr<"Target", "target"> {
  let summary = "The machine a plan is compiled for";
  let description = [{
    The host CPU (LLVM's name for it, its ISA features, cores and NUMA
    nodes; `numa_nodes` may be left out when 1) and the GPUs (`cuda:0` is
    the first). Detected on the compiling host or given
    with `--target-cpu` / `--target-gpu`, so a plan for another machine can be
    compiled here.

    ```mlir
    #ktgraph.target<cpu = "sapphirerapids", cpu_features = ["avx512f", "amx-tile"],
                    cores = 16, gpus = [#ktgraph.gpu<arch = "sm_90a", memory = 85899345920>]>
    ```
  }];
  let parameters = (ins StringRefParameter<"LLVM CPU name">:$cpu,
                        "::mlir::ArrayAttr":$cpu_features,
                        "unsigned":$cores,
                        DefaultValuedParameter<"unsigned", "1", "NUMA nodes">:$numa_nodes,
                        "::mlir::ArrayAttr":$gpus);
  let assemblyFormat = "`<` struct(params) `>`";
  let genVerifyDecl = 1;
  let extraClassDeclaration = [{
    bool hasCpuFeature(::llvm::StringRef feature) const;
    unsigned getGpuCount() const { return getGpus().size(); }
    GpuAttr getGpu(unsigned index) const;
  }];
}

//===----------------------------------------------------------------------===//
// Interfaces
//===----------------------------------------------------------------------===//

def KtGraph_ModelModuleOpInterface : OpInterface<"ModelModuleOpInterface"> {
  let cppNamespace = "::kt::graph";
  let description = [{
    An op that stands for one module of the model: it has the module's
    Hugging Face path and reads weights. Placement rules match on the path.
  }];
  let methods = [
    InterfaceMethod<"The Hugging Face module path (`model.layers.3.self_attn`).",
      "::llvm::StringRef", "getModulePath", (ins), [{}], [{
        return $_op.getPath();
      }]>,
    InterfaceMethod<"The module's kind, as rule files name it (`DeepseekV3MoE`...).",
      "::llvm::StringRef", "getModuleKind", (ins)>,
    InterfaceMethod<"The weights the op reads, with their roles.",
      "::llvm::SmallVector<std::pair<::llvm::StringRef, ::kt::graph::WeightAttr>>",
      "getWeights", (ins), [{}], [{
        ::llvm::SmallVector<std::pair<::llvm::StringRef, ::kt::graph::WeightAttr>> weights;
        for (::mlir::NamedAttribute attr : $_op->getAttrs())
          if (auto weight = attr.getValue().template dyn_cast<::kt::graph::WeightAttr>())
            weights.emplace_back(attr.getName().getValue(), weight);
        return weights;
      }]>,
  ];
}

//===----------------------------------------------------------------------===//
// Ops
//===----------------------------------------------------------------------===//

// Activations: [tokens, features] f32 tensors; tokens is usually dynamic.
def KtGraph_Activation : 2DTensorOf<[F32]>;
def KtGraph_TokenIds : 1DTensorOf<[I32]>;

class KtGraph_ModuleOp<string mnemonic, list<Trait> traits = []>
    : KtGraph_Op<mnemonic, !listconcat(traits, [Pure,
        DeclareOpInterfaceMethods<KtGraph_ModelModuleOpInterface, ["getModuleKind"]>])> {
  let hasVerifier = 1;
}

def KtGraph_EmbeddingOp : KtGraph_ModuleOp<"embedding"> {
  let summary = "Token embedding lookup";
  let description = [{
    `weight` has shape [hidden, vocab]; the result has `hidden` features.

    ```mlir
    %h = ktgraph.embedding %tokens {path = "model.embed_tokens",
        weight = #ktgraph.weight<"token_embd.weight", "q4_K", [7168, 129280]>}
        : tensor<?xi32> -> tensor<?x7168xf32>
    ```
  }];
  let arguments = (ins KtGraph_TokenIds:$tokens, StrAttr:$path,
                       KtGraph_WeightAttr:$weight);
  let results = (outs KtGraph_Activation:$result);
  let assemblyFormat = "$tokens attr-dict `:` type($tokens) `->` type($result)";
}

def KtGraph_RmsNormOp : KtGraph_ModuleOp<"rms_norm", [SameOperandsAndResultType]> {
  let summary = "RMS normalization with a learned scale";
  let description = [{
    `y = x / sqrt(mean(x^2) + eps) * weight`; `weight` has shape [hidden].
  }];
  let arguments = (ins KtGraph_Activation:$input, StrAttr:$path,
                       KtGraph_WeightAttr:$weight, F32Attr:$eps);
  let results = (outs KtGraph_Activation:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def KtGraph_AddRmsNormOp : KtGraph_ModuleOp<"add_rms_norm", [SameOperandsAndResultType]> {
  let summary = "A residual sum and its RMS normalization in one op";
  let description = [{
    `sum = a + b` (or `a + (b + c)` with three addends, the order of the
    adds it replaces) and `result = sum / sqrt(mean(sum^2) + eps) * weight`.
    Made by kt-fuse-residual-norm from an `add` (and an `add` feeding it)
    and the `rms_norm` reading it; the op is the norm's module (its path,
    weight and placement), and `sum` is the residual stream the next add
    reads.
  }];
  let arguments = (ins Variadic<KtGraph_Activation>:$addends, StrAttr:$path,
                       KtGraph_WeightAttr:$weight, F32Attr:$eps);
  let results = (outs KtGraph_Activation:$sum, KtGraph_Activation:$result);
  let assemblyFormat = "$addends attr-dict `:` type($sum)";
}

def KtGraph_MlaAttentionOp : KtGraph_ModuleOp<"mla_attention", [SameOperandsAndResultType]> {
  let summary = "DeepSeek multi-head latent attention (MLA) with YaRN RoPE";
  let description = [{
    Causal self-attention whose keys and values are rebuilt from a compressed
    latent (`kv_lora_rank` + `qk_rope_head_dim` values per token) that is
    what the KV cache stores. Queries go through a low-rank projection
    (`q_a_proj`, `q_a_norm`, `q_b_proj`) when `q_lora_rank` > 0, else through
    `q_proj` (the V2-Lite form). The latent is expanded by `kv_b_proj`
    [kv_lora, heads * (nope + v)] or by its split form `k_b_proj`
    [nope, kv_lora, heads] and `v_b_proj` [kv_lora, v, heads] (used for
    weight absorption in decode); a model may carry both.
    RoPE is YaRN-scaled when `rope_scaling_factor` > 1.
  }];
  let arguments = (ins KtGraph_Activation:$input, StrAttr:$path,
    I64Attr:$num_heads, I64Attr:$q_lora_rank, I64Attr:$kv_lora_rank,
    I64Attr:$qk_nope_head_dim, I64Attr:$qk_rope_head_dim, I64Attr:$v_head_dim,
    F32Attr:$eps, F64Attr:$rope_theta, F64Attr:$rope_scaling_factor,
    I64Attr:$rope_original_context_length, F64Attr:$rope_yarn_log_multiplier,
    OptionalAttr<KtGraph_WeightAttr>:$q_a_proj,
    OptionalAttr<KtGraph_WeightAttr>:$q_a_norm,
    OptionalAttr<KtGraph_WeightAttr>:$q_b_proj,
    OptionalAttr<KtGraph_WeightAttr>:$q_proj,
    KtGraph_WeightAttr:$kv_a_proj_with_mqa,
    KtGraph_WeightAttr:$kv_a_norm,
    OptionalAttr<KtGraph_WeightAttr>:$kv_b_proj,
    OptionalAttr<KtGraph_WeightAttr>:$k_b_proj,
    OptionalAttr<KtGraph_WeightAttr>:$v_b_proj,
    KtGraph_WeightAttr:$o_proj);
  let results = (outs KtGraph_Activation:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def KtGraph_MlpOp : KtGraph_ModuleOp<"mlp", [SameOperandsAndResultType]> {
  let summary = "Dense SiLU-gated MLP (the leading dense layers)";
  let description = [{
    `down(silu(gate(x)) * up(x))`; `gate_proj`/`up_proj` [hidden, ffn],
    `down_proj` [ffn, hidden].
  }];
  let arguments = (ins KtGraph_Activation:$input, StrAttr:$path,
    KtGraph_WeightAttr:$gate_proj, KtGraph_WeightAttr:$up_proj,
    KtGraph_WeightAttr:$down_proj);
  let results = (outs KtGraph_Activation:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def KtGraph_SharedExpertsOp : KtGraph_ModuleOp<"shared_experts", [SameOperandsAndResultType]> {
  let summary = "The always-active shared experts of a MoE layer";
  let description = [{
    A SiLU-gated MLP over every token; `gate_proj`/`up_proj`
    [hidden, ffn * shared count], `down_proj` [ffn * shared count, hidden].
  }];
  let arguments = (ins KtGraph_Activation:$input, StrAttr:$path,
    KtGraph_WeightAttr:$gate_proj, KtGraph_WeightAttr:$up_proj,
    KtGraph_WeightAttr:$down_proj);
  let results = (outs KtGraph_Activation:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

def KtGraph_MoeGateOp : KtGraph_ModuleOp<"moe_gate"> {
  let summary = "Expert routing: scores, group-limited top-k and weights";
  let description = [{
    Scores every token against `num_experts` experts (`weight` [hidden,
    experts]) with `scoring_func` ("sigmoid" for V3, "softmax" for V2). The
    optional `e_score_correction_bias` [experts] is added to the scores for
    selection only. Experts are split into `n_group` groups; the best
    `topk_group` groups are kept and `top_k` experts chosen among them. The
    weights are normalized to sum 1 when `norm_topk_prob` and multiplied by
    `routed_scaling_factor`. Results: [tokens, top_k] expert ids and weights.
  }];
  let arguments = (ins KtGraph_Activation:$input, StrAttr:$path,
    I64Attr:$num_experts, I64Attr:$top_k, I64Attr:$n_group, I64Attr:$topk_group,
    StrAttr:$scoring_func, BoolAttr:$norm_topk_prob, F64Attr:$routed_scaling_factor,
    KtGraph_WeightAttr:$weight,
    OptionalAttr<KtGraph_WeightAttr>:$e_score_correction_bias);
  let results = (outs 2DTensorOf<[I32]>:$topk_ids, 2DTensorOf<[F32]>:$topk_weights);
  let assemblyFormat =
      "$input attr-dict `:` type($input) `->` type($topk_ids) `,` type($topk_weights)";
}

def KtGraph_RoutedExpertsOp : KtGraph_ModuleOp<"routed_experts"> {
  let summary = "The routed experts of a MoE layer";
  let description = [{
    For each token, the weighted sum over its `top_k` routed experts of a
    SiLU-gated MLP. Weights are 3-D, one slice per expert: `gate_proj` and
    `up_proj` [hidden, ffn, experts], `down_proj` [ffn, hidden, experts].
  }];
  let arguments = (ins KtGraph_Activation:$input, 2DTensorOf<[I32]>:$topk_ids,
    2DTensorOf<[F32]>:$topk_weights, StrAttr:$path,
    KtGraph_WeightAttr:$gate_proj, KtGraph_WeightAttr:$up_proj,
    KtGraph_WeightAttr:$down_proj);
  let results = (outs KtGraph_Activation:$result);
  let assemblyFormat = [{
    $input `,` $topk_ids `,` $topk_weights attr-dict `:` type($input) `,`
    type($topk_ids) `,` type($topk_weights) `->` type($result)
  }];
}

def KtGraph_LmHeadOp : KtGraph_ModuleOp<"lm_head"> {
  let summary = "Output projection to vocabulary logits";
  let description = [{ `weight` [hidden, vocab]. }];
  let arguments = (ins KtGraph_Activation:$input, StrAttr:$path,
                       KtGraph_WeightAttr:$weight);
  let results = (outs KtGraph_Activation:$logits);
  let assemblyFormat = "$input attr-dict `:` type($input) `->` type($logits)";
}

def KtGraph_AddOp : KtGraph_Op<"add", [Pure, SameOperandsAndResultType]> {
  let summary = "Elementwise sum (residual connections, expert outputs)";
  let arguments = (ins KtGraph_Activation:$lhs, KtGraph_Activation:$rhs);
  let results = (outs KtGraph_Activation:$result);
  let assemblyFormat = "$lhs `,` $rhs attr-dict `:` type($result)";
}

def KtGraph_TransferOp : KtGraph_Op<"transfer", [Pure, SameOperandsAndResultType]> {
  let summary = "Moves an activation between devices";
  let description = [{
    Inserted by kt-insert-transfers where a value is produced on one device
    and consumed on another. Devices may differ between prefill and decode
    (routed experts prefilled on the GPU but decoded on the CPU); in a phase
    whose two devices are equal the transfer does nothing.

    ```mlir
    %y = ktgraph.transfer %x {prefill_from = "cuda:0", prefill_to = "cuda:0",
                              decode_from = "cuda:0", decode_to = "cpu"} : tensor<?x7168xf32>
    ```
  }];
  let arguments = (ins AnyRankedTensor:$input, StrAttr:$prefill_from, StrAttr:$prefill_to,
                       StrAttr:$decode_from, StrAttr:$decode_to);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "$input attr-dict `:` type($input)";
}

#endif // KT_GRAPH_OPS
