#ifndef KT_GRAPH_BASE
#define KT_GRAPH_BASE

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"

def KtGraph_Dialect : Dialect {
  let name = "ktgraph";
  let cppNamespace = "::kt::graph";
  let summary = "Model-level graph of a DeepSeek-class MoE language model";
  let description = [{
    One op per model module (embedding, RMSNorm, MLA attention, dense MLP,
    MoE gate, routed experts, shared experts, lm_head). Each op carries the
    Hugging Face module path it stands for (`model.layers.3.mlp.experts`),
    the weight tensors it reads (`#ktgraph.weight`) and the hyper-parameters
    its math needs. Activations are ranked tensors whose leading dimension is
    the (dynamic) number of tokens.
  }];
  let useDefaultAttributePrinterParser = 1;
  let useFoldAPI = kEmitFoldAdaptorFolder;
}

class KtGraph_Attr<string name, string attrMnemonic, list<Trait> traits = []>
    : AttrDef<KtGraph_Dialect, name, traits> {
  let mnemonic = attrMnemonic;
}

class KtGraph_Op<string mnemonic, list<Trait> traits = []>
    : Op<KtGraph_Dialect, mnemonic, traits>;

#endif // KT_GRAPH_BASE
