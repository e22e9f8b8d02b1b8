// Import of a GGUF model into the ktgraph dialect.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/safetensors/Safetensors.h"
#include "runtime/support/Status.h"

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/OwningOpRef.h"

namespace kt::compiler {

// Builds `func.func @forward(%tokens: tensor<?xi32>) -> tensor<?x<vocab>xf32>`
// holding one ktgraph op per model module, and verifies it. The module carries
// `ktgraph.source` (the model path) and `ktgraph.architecture`. Fails with a
// message naming the file and the tensor or key for anything the graph cannot
// be built from: unknown architecture, a missing tensor, a shape the
// hyper-parameters contradict, a storage type ktc cannot run.
//
// With `fp8`, a native FP8 checkpoint of the same model (DeepSeek's release,
// `quantization_config` fp8 e4m3 with 128x128 blocks): the projections of
// attention (but kv_b_proj, which the MLA operator splits itself), of dense
// MLPs and of shared experts take its F8_E4M3 weights (`#ktgraph.weight<
// "model.layers.0.self_attn.q_a_proj.weight", "f8_e4m3", ...>`); the routed
// experts, norms, router, embeddings and lm_head stay GGUF. A projection the
// checkpoint lacks, holds in another dtype or shape, or without its
// weight_scale_inv, is an error naming both files.
kt::StatusOr<mlir::OwningOpRef<mlir::ModuleOp>>
importGgufModel(mlir::MLIRContext &context, const kt::gguf::GgufModel &model,
                const std::string &sourcePath,
                const kt::safetensors::Checkpoint *fp8 = nullptr);

} // namespace kt::compiler
