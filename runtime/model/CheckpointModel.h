// A Hugging Face DeepSeek checkpoint (config.json, safetensors shards,
// tokenizer.json; DeepSeek's FP8 release or one kt-export-hf --fp8 wrote)
// seen as a GGUF model: config.json becomes the deepseek2.* keys a GGUF
// converter writes, tokenizer.json the tokenizer.* keys, and every tensor
// gets its GGUF name (model.layers.3.self_attn.q_a_proj.weight ->
// blk.3.attn_q_a.weight), so the importer and the executors take either
// source alike. Nothing is copied: BF16/F32 tensors point into the mapped
// shards; e4m3 ones are F8_E4M3_B128 tensors whose values and block scales
// stay in place (routed experts become one [cols, rows, experts] tensor of
// per-expert slices). Layers past num_hidden_layers (V3's multi-token
// prediction module) are left out.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"

#include <memory>
#include <string>

namespace kt::model {

// Whether `path` is a directory holding a checkpoint's config.json and no
// .gguf file.
bool isCheckpointDirectory(const std::string &path);

StatusOr<std::unique_ptr<gguf::GgufModel>> openCheckpointModel(const std::string &path);

// A model as ktc and ktrun take it: GGUF file(s), or a checkpoint directory.
StatusOr<std::unique_ptr<gguf::GgufModel>> openModel(const std::string &path);

// The q8_0 form of an F8_E4M3_B128 tensor (what the CPU expert code reads):
// each value times its block's scale, quantized per 32 values as GGML does.
// `out` holds elements / 32 * 34 bytes. Rows are converted on `threads`
// threads (0: all cores). Error relative to the FP8 values: about 0.3%.
Status convertFp8ToQ8_0(const gguf::TensorInfo &tensor, uint8_t *out, unsigned threads = 0);

} // namespace kt::model
