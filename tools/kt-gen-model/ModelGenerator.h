// Random-weight DeepSeek-V2/V3-architecture GGUF models for tests, demos and
// benchmarks: the metadata keys and tensor names/shapes llama.cpp's converter
// writes for `general.architecture = deepseek2`, with seeded, zero-mean
// weights that route tokens to many different experts.
//
// Use: presetConfig() (or a ModelConfig filled by hand) -> planModel() ->
// writeModel(). Nothing here throws; errors are Status messages meant for
// the user of kt-gen-model.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"
#include "tools/kt-gen-model/Vocabulary.h"

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kt::gen {

using gguf::GgmlType;

// How the MLA up-projection of the compressed KV is stored.
enum class AttentionLayout {
  Joint, // blk.N.attn_kv_b {kv_lora, n_head*(nope+v)}: files converted before April 2025
  Split, // blk.N.attn_k_b {nope, kv_lora, n_head} + blk.N.attn_v_b {kv_lora, v, n_head}:
         // what llama.cpp's converter writes today (default)
  Both,  // all three (the project's runtime accepts it; llama.cpp refuses extra tensors)
};
std::string_view attentionLayoutName(AttentionLayout layout);
std::optional<AttentionLayout> parseAttentionLayout(std::string_view name);

// deepseek2.expert_gating_func values (llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE).
enum class GatingFunction : uint32_t { Softmax = 1, Sigmoid = 2 };
std::string_view gatingFunctionName(GatingFunction gating);
std::optional<GatingFunction> parseGatingFunction(std::string_view name);

// Which option sets a tensor's type.
enum class WeightClass {
  Embedding,     // token_embd                         --type-embed
  Output,        // output                             --type-output
  Attention,     // attn_q*, attn_kv*, attn_k_b, ...   --type-attn
  Dense,         // ffn_gate/up/down of dense layers   --type-dense
  SharedExperts, // ffn_*_shexp                        --type-shared-experts
  Experts,       // ffn_*_exps                         --type-experts
  Router,        // ffn_gate_inp                       --type-router
  Norm,          // every *_norm                       --type-norm
  ExpertBias,    // exp_probs_b.bias: always f32
};
std::string_view weightClassName(WeightClass weightClass);

// "f32, f16, ..., q6_K": the types runtime/quant can encode, for messages.
std::string quantizableTypeNames();

struct TensorTypes {
  GgmlType embedding = GgmlType::Q8_0;
  GgmlType output = GgmlType::Q8_0;
  GgmlType attention = GgmlType::Q8_0;
  GgmlType dense = GgmlType::Q8_0;
  GgmlType sharedExperts = GgmlType::Q8_0;
  GgmlType experts = GgmlType::Q4_K;
  GgmlType router = GgmlType::F32;
  GgmlType norm = GgmlType::F32;

  GgmlType of(WeightClass weightClass) const;
};

struct ModelConfig {
  std::string name;               // general.name
  int64_t hiddenSize = 0;         // embedding_length
  int64_t layerCount = 0;         // block_count
  int64_t denseLayerCount = 0;    // leading_dense_block_count
  int64_t denseFfnSize = 0;       // feed_forward_length
  int64_t expertCount = 0;        // expert_count
  int64_t expertsUsed = 0;        // expert_used_count (top-k)
  int64_t sharedExpertCount = 0;  // expert_shared_count
  int64_t expertFfnSize = 0;      // expert_feed_forward_length
  int64_t expertGroupCount = 1;   // expert_group_count
  int64_t expertGroupsUsed = 1;   // expert_group_used_count
  int64_t headCount = 0;          // attention.head_count
  int64_t qLoraRank = 0;          // 0: no query compression (attn_q, the V2-Lite form)
  int64_t kvLoraRank = 0;
  int64_t qkNopeHeadDim = 0;
  int64_t qkRopeHeadDim = 0;      // rope.dimension_count
  int64_t vHeadDim = 0;
  int64_t contextLength = 163840;
  double ropeFreqBase = 10000.0;
  double yarnFactor = 40.0;       // <= 1: no rope.scaling keys
  int64_t yarnOriginalContext = 4096;
  double yarnLogMultiplier = 0.1; // 0.1 * mscale_all_dim, as the converter writes it
  double rmsNormEps = 1e-6;
  GatingFunction gating = GatingFunction::Sigmoid;
  double routedScalingFactor = 2.5; // expert_weights_scale
  bool normTopkProb = true;         // expert_weights_norm
  AttentionLayout attention = AttentionLayout::Split;
  TensorTypes types;
  uint64_t seed = 0;
  int64_t vocabSize = 0;          // 0: the vocabulary's own size
  // Zero-mean q4_K tensors are written as synthesized blocks (see
  // synthesizeQ4KRows) rather than by quantizing f32 values with the
  // reference quantizer, which is about 10x slower than everything else
  // together and would dominate writing a V3-sized model.
  bool synthesizeQ4K = true;
};

// "tiny" (unit tests, a few MB), "demo" (the README's first command, < 30 MB)
// or "v3" (DeepSeek-V3's real dimensions, 61 layers).
StatusOr<ModelConfig> presetConfig(std::string_view preset);
const std::vector<std::string> &presetNames();

// Checks the hyper-parameters against each other; the message names the
// command-line option to change.
Status validateConfig(const ModelConfig &config);

// How a tensor's values are made.
enum class WeightInit {
  Gaussian,     // mean + stddev * N(0,1)-like, independent rows
  KvBSplitK,    // attn_k_b: the key half of the layer's attn_kv_b values, transposed
  KvBSplitV,    // attn_v_b: the value half of the layer's attn_kv_b values
};

struct PlannedTensor {
  std::string name;
  std::vector<int64_t> ne;   // GGML order
  GgmlType type;             // as written
  GgmlType requestedType;    // from the options; differs when the rows don't fit its blocks
  WeightClass weightClass;
  WeightInit init = WeightInit::Gaussian;
  float mean = 0.0f;
  float stddev = 0.0f;
  uint64_t seed = 0;         // of this tensor's values (attn_k_b/v_b: of the layer's attn_kv_b)

  int64_t elements() const;
  int64_t rows() const { return elements() / ne[0]; }
  uint64_t bytes() const;
};

struct ModelPlan {
  ModelConfig config;
  Vocabulary vocabulary; // padded to the embedding's row count
  std::vector<gguf::KeyValue> metadata;
  std::vector<PlannedTensor> tensors; // in file order

  uint64_t tensorBytes() const;
  uint64_t parameterCount() const;
};

// Validates the config, pads the vocabulary to config.vocabSize and lists
// every key and tensor. Fast: nothing is generated.
StatusOr<ModelPlan> planModel(const ModelConfig &config, Vocabulary vocabulary);

// The deepseek2.* / general.* / tokenizer.* metadata of a model, in the order
// written.
std::vector<gguf::KeyValue> buildMetadata(const ModelConfig &config, const Vocabulary &vocab);

// The f32 values of rows [firstRow, firstRow + rowCount) of a planned tensor
// (each row ne[0] values, rows in GGML order), before conversion to its type.
// The same rows always get the same values, whatever the chunking or thread.
void generateRows(const PlannedTensor &tensor, const ModelConfig &config, int64_t firstRow,
                  int64_t rowCount, float *out);

// Whether a tensor is written by synthesizeQ4KRows (else generateRows + quantize).
bool usesQ4KSynthesis(const PlannedTensor &tensor, const ModelConfig &config);

// q4_K blocks for rows [firstRow, firstRow + rowCount) whose dequantized
// values are stddev * (q - 7.5) * const with 4-bit levels q drawn from a
// discretized Gaussian symmetric about 7.5: exactly what quantizing zero-mean
// Gaussian weights looks like, zero-mean in every block, with the tensor's
// standard deviation. Every sub-block has scale 2 and min 15 (so dmin = d
// centres the levels). Writes rowCount * ggmlRowBytes(q4_K, ne[0]) bytes.
void synthesizeQ4KRows(const PlannedTensor &tensor, int64_t firstRow, int64_t rowCount,
                       uint8_t *out);

struct WriteOptions {
  std::string outputPath;          // "model.gguf"; split parts: model-00001-of-0000N.gguf
  int64_t splitCount = 0;          // > 1: that many files, balanced by bytes
  int64_t splitMaxTensors = 0;     // > 0: at most that many tensors per file
  int threads = 0;                 // 0: all hardware threads
  // Write the header and size the files but leave the tensor data as holes:
  // sparse files of the full size that read as zeros and use almost no disk,
  // for compiling full-size models where only the graph matters.
  bool metadataOnly = false;
  // Called from the writing thread about five times a second and at the end.
  std::function<void(uint64_t bytesDone, uint64_t bytesTotal)> progress;
  // Set (e.g. from a SIGINT handler) to stop early; the output is removed.
  const std::atomic<bool> *cancel = nullptr;
};

struct WrittenFile {
  std::string path;
  uint64_t bytes = 0;
  size_t tensorCount = 0;
};

struct WriteResult {
  std::vector<WrittenFile> files;
  uint64_t totalBytes = 0;
  size_t tensorCount = 0;
  uint64_t parameterCount = 0;
};

// The part files a split model is written to ("x.gguf" -> "x-00001-of-00003.gguf", ...),
// named as llama.cpp's gguf-split names them.
std::vector<std::string> splitPaths(const std::string &outputPath, int64_t count);

// Which file (0-based) each tensor goes to.
StatusOr<std::vector<int64_t>> assignSplits(const ModelPlan &plan, const WriteOptions &options);

// Generates and writes the model; every file appears complete or not at all.
StatusOr<WriteResult> writeModel(const ModelPlan &plan, const WriteOptions &options);

} // namespace kt::gen
