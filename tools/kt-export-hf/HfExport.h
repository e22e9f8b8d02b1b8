// Export of a DeepSeek GGUF model (architecture `deepseek2`) to the Hugging
// Face layout that transformers' DeepseekV3ForCausalLM (sigmoid routing) or
// DeepseekV2ForCausalLM (softmax routing) loads: config.json and one
// model.safetensors with every weight dequantized to f32 under its Hugging
// Face name. The project uses it to run transformers as the numerical oracle
// on exactly the weights the runtime reads (test/golden, docs/golden-fixtures.md).
//
// Use: planExport() (validates, builds config.json, lists the tensors; fast)
// -> writeExport(). Nothing here throws; errors are Status messages naming
// the file, the tensor or key, and what to do.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"
#include "runtime/tokenizer/Tokenizer.h"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kt::hfexport {

enum class HfModelType {
  DeepseekV3, // model_type deepseek_v3: sigmoid scores, correction bias, group top-k
  DeepseekV2, // model_type deepseek_v2: softmax scores, greedy top-k
};
std::string_view hfModelTypeName(HfModelType type);    // "deepseek_v3"
std::string_view hfArchitectureName(HfModelType type); // "DeepseekV3ForCausalLM"

// Where the values of one exported tensor come from.
enum class TensorSource {
  Whole,        // all of inputs[0]
  ExpertSlice,  // expert `expert` of the 3-D expert tensor inputs[0]
  KvBFromSplit, // kv_b_proj rebuilt from attn_k_b (inputs[0]) and attn_v_b (inputs[1])
  Zeros,        // e_score_correction_bias of a sigmoid model without exp_probs_b
};

struct ExportTensor {
  std::string name;           // Hugging Face name
  std::vector<int64_t> shape; // PyTorch shape (row-major, outermost first)
  TensorSource source = TensorSource::Whole;
  std::vector<const gguf::TensorInfo *> inputs; // point into the GgufModel's tensors
  int64_t expert = 0;                           // ExpertSlice only

  int64_t elements() const;
};

// Which form of the MLA up-projection to export when a file has both
// (kt-gen-model --attention both): the joint attn_kv_b, or kv_b rebuilt from
// attn_k_b/attn_v_b. Auto takes the joint tensor when present.
enum class KvBSource { Auto, Joint, Split };

struct ExportOptions {
  KvBSource kvB = KvBSource::Auto;
};

struct ExportPlan {
  HfModelType modelType = HfModelType::DeepseekV3;
  std::string configJson;            // the text of config.json
  std::vector<ExportTensor> tensors; // in the order their data is written
  std::string sourcePath;            // the GGUF file (first part), for messages
  // tokenizer.json and tokenizer_config.json of the GGUF vocabulary, when
  // the model has one (both writers write them).
  std::optional<tokenizer::TokenizerJsonFiles> tokenizer;

  uint64_t dataBytes() const; // f32 bytes of all tensors
};

// Checks that transformers can represent the model exactly and lists what
// to write. The plan points into `model`, which must outlive it.
StatusOr<ExportPlan> planExport(const gguf::GgufModel &model, const ExportOptions &options = {});

// The f32 values of one planned tensor, in PyTorch's row-major order.
// `out` holds tensor.elements() floats.
Status materializeTensor(const ExportTensor &tensor, float *out);

// Writes `directory`/config.json, `directory`/model.safetensors and the
// tokenizer files (creating
// the directory). Each file is written under a temporary name and renamed
// when complete, so a reader never sees a partial file.
Status writeExport(const ExportPlan &plan, const std::string &directory);

// The safetensors header (8-byte little-endian length + JSON, padded with
// spaces to a multiple of 8) for F32 tensors stored back to back in order.
std::string safetensorsHeader(const std::vector<ExportTensor> &tensors);

// An FP8 checkpoint in the form DeepSeek publishes V3/R1: the projection
// matrices (*_proj.weight, kv_a_proj_with_mqa, experts included) as F8_E4M3 with an F32
// `weight_scale_inv` per block x block tile (amax / 448), norms, embeddings,
// router and lm_head as BF16, the correction bias as F32; config.json with
// quantization_config {fp8, e4m3, dynamic, [block, block]}; shards of at most
// `shardBytes` (0: one model.safetensors) listed by
// model.safetensors.index.json. The reference for such a checkpoint is the
// model on its dequantized values, not on the GGUF ones.
struct Fp8ExportOptions {
  int64_t block = 128;
  uint64_t shardBytes = 0;
};
Status writeFp8Export(const ExportPlan &plan, const std::string &directory,
                      const Fp8ExportOptions &options);

} // namespace kt::hfexport
