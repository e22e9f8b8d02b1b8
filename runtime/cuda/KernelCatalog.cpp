#include "runtime/cuda/KernelCatalog.h"

#include "runtime/cuda/EmbeddedKernels.h"
#include "runtime/quant/Quant.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

namespace kt::cuda {
namespace {

const EmbeddedKernelFile *findFile(const std::string &name) {
  for (const auto &file : embeddedKernelFiles())
    if (file.name == name)
      return &file;
  return nullptr;
}

// The names in `#include "name"` lines (angle-bracket includes are NVRTC's own).
std::vector<std::string> quotedIncludes(std::string_view text) {
  std::vector<std::string> names;
  size_t position = 0;
  while ((position = text.find("#include", position)) != std::string_view::npos) {
    size_t lineEnd = text.find('\n', position);
    std::string_view line = text.substr(position, lineEnd - position);
    size_t open = line.find('"');
    size_t close = open == std::string_view::npos ? open : line.find('"', open + 1);
    if (close != std::string_view::npos)
      names.emplace_back(line.substr(open + 1, close - open - 1));
    position += 8;
  }
  return names;
}

std::string integer(int64_t value) { return std::to_string(value); }

// TOKEN_TILE only where it is not 1 and GROUPED or GATE_UP only where set,
// so the other specializations keep their keys.
std::map<std::string, std::string> withTokenTile(std::map<std::string, std::string> defines,
                                                 int64_t tokenTile,
                                                 GemvVariant variant = GemvVariant::Plain) {
  if (tokenTile > 1)
    defines["TOKEN_TILE"] = integer(tokenTile);
  if (variant == GemvVariant::Grouped)
    defines["GROUPED"] = "1";
  if (variant == GemvVariant::GateUp)
    defines["GATE_UP"] = "1";
  if (variant == GemvVariant::SplitRows)
    defines["SPLIT_ROWS"] = "1";
  return defines;
}

} // namespace

std::string floatLiteral(float value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.9g", static_cast<double>(value));
  std::string text = buffer;
  if (text.find_first_of(".e") == std::string::npos)
    text += ".0";
  return text + "f";
}

StatusOr<KernelSpec> makeKernelSpec(const std::string &file, const std::string &entry,
                                    std::map<std::string, std::string> defines,
                                    unsigned blockThreads) {
  const EmbeddedKernelFile *source = findFile(file);
  if (!source)
    return Status::error("no kernel source " + file +
                         " is embedded in this binary; add it to kernels/ and rebuild.");
  KernelSpec spec;
  spec.file = file;
  spec.entry = entry;
  spec.source = std::string(source->text);
  spec.defines = std::move(defines);
  spec.blockThreads = blockThreads;
  // Breadth-first over includes, each header once, in a stable order.
  std::vector<std::string> pending = quotedIncludes(source->text);
  std::set<std::string> seen;
  while (!pending.empty()) {
    std::string name = pending.front();
    pending.erase(pending.begin());
    if (!seen.insert(name).second)
      continue;
    const EmbeddedKernelFile *header = findFile(name);
    if (!header)
      return Status::error("kernel source " + file + " includes \"" + name +
                           "\", which is not embedded; add it to kernels/ and rebuild.");
    spec.headers.push_back({name, std::string(header->text)});
    for (auto &next : quotedIncludes(header->text))
      pending.push_back(std::move(next));
  }
  return spec;
}

StatusOr<KernelSpec> rmsNormSpec(int64_t width, float eps) {
  if (width <= 0 || !(eps > 0))
    return Status::error("rms_norm needs a positive width and epsilon (got " + integer(width) +
                         ", " + floatLiteral(eps) + ").");
  // A row is one block's: decode's single row is as fast as the loads one
  // SM keeps in flight, and a 7168-wide residual sum with its norm took 3.3
  // us with 1024 threads against 4.6 with 256 (docs/gpu-kernels.md).
  const unsigned threads = width >= 4096 ? 1024 : width >= 1024 ? 256 : 128;
  return makeKernelSpec("rms_norm.cu", "rms_norm",
                        {{"HIDDEN", integer(width)},
                         {"EPS", floatLiteral(eps)},
                         {"BLOCK_THREADS", std::to_string(threads)}},
                        threads);
}

StatusOr<KernelSpec> addRmsNormSpec(int64_t width, float eps, int addends) {
  StatusOr<KernelSpec> spec = rmsNormSpec(width, eps);
  if (!spec)
    return spec;
  if (addends != 2 && addends != 3)
    return Status::error("add_rms_norm adds 2 or 3 values, not " + std::to_string(addends) + ".");
  spec->defines["ADDENDS"] = std::to_string(addends);
  return makeKernelSpec("rms_norm.cu", "add_rms_norm", spec->defines, spec->blockThreads);
}

StatusOr<KernelSpec> rmsNormFp8Spec(int64_t width, float eps) {
  StatusOr<KernelSpec> spec = rmsNormSpec(width, eps);
  if (!spec)
    return spec;
  if (width % 128 != 0)
    return Status::error("rms_norm_fp8 quantizes whole 128-column slices; " + integer(width) +
                         " values are not.");
  spec->defines["FP8_OUT"] = "1";
  return makeKernelSpec("rms_norm.cu", "rms_norm_fp8", spec->defines, spec->blockThreads);
}

StatusOr<KernelSpec> embeddingSpec(int64_t hidden, int64_t vocab, gguf::GgmlType tableType) {
  int typeCode;
  switch (tableType) {
  case gguf::GgmlType::F32:
    typeCode = 0;
    break;
  case gguf::GgmlType::F16:
    typeCode = 1;
    break;
  case gguf::GgmlType::BF16:
    typeCode = 2;
    break;
  case gguf::GgmlType::Q8_0:
    typeCode = 3;
    break;
  default:
    return Status::error("the GPU embedding kernel reads f32, f16, bf16 or q8_0 tables, not "
                         "GGML type " +
                         std::to_string(static_cast<uint32_t>(tableType)) +
                         "; place the embedding on the CPU in the rule file.");
  }
  if (hidden <= 0 || vocab <= 0 || vocab > INT32_MAX || (typeCode == 3 && hidden % 32 != 0))
    return Status::error("embedding shape [" + integer(vocab) + "][" + integer(hidden) +
                         "] is not supported on the GPU (rows must be positive, q8_0 rows a "
                         "multiple of 32, the vocabulary below 2^31).");
  return makeKernelSpec("embedding.cu", "embedding",
                        {{"HIDDEN", integer(hidden)},
                         {"VOCAB", integer(vocab)},
                         {"TABLE_TYPE", std::to_string(typeCode)},
                         {"BLOCK_THREADS", "256"}},
                        256);
}

StatusOr<KernelSpec> gemvQ8_0Spec(int64_t outFeatures, int64_t inFeatures, int64_t tokenTile,
                                  GemvVariant variant) {
  if (outFeatures <= 0 || inFeatures <= 0 || inFeatures % 32 != 0 || outFeatures > INT32_MAX)
    return Status::error("q8_0 matrix [" + integer(outFeatures) + "][" + integer(inFeatures) +
                         "] cannot be multiplied on the GPU: rows must be whole 32-value "
                         "blocks.");
  if (variant == GemvVariant::SplitRows && !quant::q8_0RowsSplit(gguf::GgmlType::Q8_0, inFeatures))
    return Status::error("q8_0 rows of " + integer(inFeatures) +
                         " values are not split on the GPU (a multiple of 256 values are).");
  std::map<std::string, std::string> defines = {{"IN_FEATURES", integer(inFeatures)},
                                                {"OUT_FEATURES", integer(outFeatures)}};
  if (const unsigned rows = gemvQ8_0RowsPerWarp(inFeatures, tokenTile); rows > 1)
    defines["ROWS_PER_WARP"] = std::to_string(rows);
  const unsigned threads = gemvSetColumnSplit(
      defines, gemvColumnSplit(gguf::GgmlType::Q8_0, outFeatures, inFeatures, tokenTile, variant));
  return makeKernelSpec("gemv_q8_0.cu", "gemv_q8_0", withTokenTile(defines, tokenTile, variant),
                        threads);
}

GemvVariant denseGemvVariant(gguf::GgmlType type, int64_t inFeatures) {
  return quant::q8_0RowsSplit(type, inFeatures) ? GemvVariant::SplitRows : GemvVariant::Plain;
}

StatusOr<KernelSpec> quantizePlanesSpec(int64_t inFeatures) {
  if (inFeatures <= 0 || inFeatures % 32 != 0 || inFeatures > INT32_MAX / 3)
    return Status::error("activations of " + integer(inFeatures) +
                         " values cannot be quantized into planes (whole 32-value blocks).");
  return makeKernelSpec("quantize_planes.cu", "quantize_planes",
                        {{"IN_FEATURES", integer(inFeatures)}}, kQuantizePlanesThreads);
}

unsigned gemvQ8_0PlanesSplit(int64_t outFeatures, int64_t inFeatures) {
  const int64_t chunks = inFeatures / 16;
  unsigned split = 1;
  while (split < 8 && outFeatures * split < kGemvPlanesWarps && chunks >= int64_t(64) * split)
    split *= 2;
  return split;
}

unsigned gemvQ8_0PlanesGridBlocks(int64_t outFeatures, int64_t inFeatures) {
  const int64_t rows = gemvSplitRowsPerBlock(gemvQ8_0PlanesSplit(outFeatures, inFeatures));
  return static_cast<unsigned>((outFeatures + rows - 1) / rows);
}

StatusOr<KernelSpec> gemvQ8_0PlanesSpec(int64_t outFeatures, int64_t inFeatures) {
  if (outFeatures <= 0 || outFeatures > INT32_MAX ||
      !quant::q8_0RowsSplit(gguf::GgmlType::Q8_0, inFeatures))
    return Status::error("q8_0 matrix [" + integer(outFeatures) + "][" + integer(inFeatures) +
                         "] has no split rows for the planes GEMV (rows of a multiple of 256 "
                         "values).");
  std::map<std::string, std::string> defines = {{"IN_FEATURES", integer(inFeatures)},
                                                {"OUT_FEATURES", integer(outFeatures)}};
  const unsigned threads =
      gemvSetColumnSplit(defines, gemvQ8_0PlanesSplit(outFeatures, inFeatures));
  return makeKernelSpec("gemv_q8_0_planes.cu", "gemv_q8_0_planes", std::move(defines), threads);
}

StatusOr<KernelSpec> gemvKQuantSpec(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                                    int64_t tokenTile, GemvVariant variant) {
  const int qtype = type == gguf::GgmlType::Q4_K   ? 4
                    : type == gguf::GgmlType::Q5_K ? 5
                    : type == gguf::GgmlType::Q6_K ? 6
                                                   : 0;
  const std::string name(gguf::ggmlTypeName(type));
  if (qtype == 0)
    return Status::error("the GPU k-quant GEMV reads q4_K, q5_K or q6_K, not " + name);
  if (outFeatures <= 0 || inFeatures <= 0 || inFeatures % 256 != 0 || outFeatures > INT32_MAX)
    return Status::error(name + " matrix [" + integer(outFeatures) + "][" + integer(inFeatures) +
                         "] cannot be multiplied on the GPU: rows must be whole 256-value "
                         "super-blocks.");
  std::map<std::string, std::string> defines = {
      {"QTYPE", std::to_string(qtype)},
      {"IN_FEATURES", integer(inFeatures)},
      {"OUT_FEATURES", integer(outFeatures)},
      {"ROWS_PER_WARP", std::to_string(gemvKQuantRowsPerWarp(outFeatures, tokenTile))}};
  const unsigned threads = gemvSetColumnSplit(
      defines, gemvColumnSplit(type, outFeatures, inFeatures, tokenTile, variant));
  return makeKernelSpec("gemv_kquant.cu", "gemv_kquant", withTokenTile(defines, tokenTile, variant),
                        threads);
}

StatusOr<KernelSpec> fmaCeilingSpec(int64_t iterations) {
  if (iterations <= 0 || iterations > INT32_MAX)
    return Status::error("the FMA ceiling kernel takes 1 to 2^31 - 1 steps, not " +
                         integer(iterations) + ".");
  return makeKernelSpec("fma_ceiling.cu", "fma_ceiling",
                        {{"ITERATIONS", integer(iterations)}, {"BLOCK_THREADS", "256"}}, 256);
}

StatusOr<KernelSpec> moeGateSpec(const MoeGateShape &g) {
  if (g.experts <= 0 || g.experts > 1024 || g.topK <= 0 || g.groups <= 0 ||
      g.experts % g.groups != 0 || g.groupsUsed <= 0 || g.groupsUsed > g.groups ||
      g.topK > g.groupsUsed * (g.experts / g.groups))
    return Status::error("routing of " + integer(g.experts) + " experts, top " + integer(g.topK) +
                         ", " + integer(g.groups) + " groups (" + integer(g.groupsUsed) +
                         " used) is not supported on the GPU (at most 1024 experts in whole "
                         "groups, enough of them for the top-k).");
  const int64_t threads = (g.experts + 31) / 32 * 32;
  return makeKernelSpec("moe_gate.cu", "moe_gate",
                        {{"EXPERTS", integer(g.experts)},
                         {"TOP_K", integer(g.topK)},
                         {"GROUPS", integer(g.groups)},
                         {"GROUPS_USED", integer(g.groupsUsed)},
                         {"SIGMOID", g.sigmoid ? "1" : "0"},
                         {"HAS_BIAS", g.hasBias ? "1" : "0"},
                         {"NORMALIZE", g.normalize ? "1" : "0"},
                         {"SCALE", floatLiteral(g.scale)},
                         {"BLOCK_THREADS", integer(threads)}},
                        static_cast<unsigned>(threads));
}

StatusOr<KernelSpec> ropeSpec(const RopeShape &r) {
  if (r.dims <= 0 || r.dims % 2 != 0 || r.dims > 512 || r.heads <= 0 || r.ropeOffset < 0 ||
      r.ropeOffset + r.dims > r.headStride)
    return Status::error("rope of " + integer(r.dims) + " values at " + integer(r.ropeOffset) +
                         " of " + integer(r.heads) + " heads of " + integer(r.headStride) +
                         " floats is not supported on the GPU (even dims up to 512 within the "
                         "head).");
  // Whole heads per block: a multiple of the pairs per head near 256 threads.
  const int64_t half = r.dims / 2;
  const int64_t threads = std::max<int64_t>(half, 256 / half * half);
  return makeKernelSpec("rope.cu", "rope",
                        {{"DIMS", integer(r.dims)},
                         {"HEADS", integer(r.heads)},
                         {"HEAD_STRIDE", integer(r.headStride)},
                         {"ROPE_OFFSET", integer(r.ropeOffset)},
                         {"COS_SIN_SCALE", floatLiteral(r.cosSinScale)},
                         {"BLOCK_THREADS", integer(threads)}},
                        static_cast<unsigned>(threads));
}

int64_t mlaHeadsPerBlock(int64_t heads) {
  for (int64_t perBlock : {16, 8, 4, 2})
    if (heads % perBlock == 0)
      return perBlock;
  return 1;
}

StatusOr<KernelSpec> mlaPrefillSpec(int64_t kvLoraRank, int64_t ropeDims, float softmaxScale,
                                    int64_t heads) {
  constexpr int64_t kChunk = 16;
  // The chunk of latent rows and rope keys is staged in static shared memory.
  if (kvLoraRank <= 0 || ropeDims <= 0 || heads <= 0 || !(softmaxScale > 0) ||
      kChunk * (kvLoraRank + ropeDims) * 4 > 48 * 1024)
    return Status::error("MLA prefill with kv_lora_rank " + integer(kvLoraRank) + ", rope " +
                         integer(ropeDims) + " and " + integer(heads) +
                         " heads is not supported on the GPU.");
  const int64_t perBlock = mlaHeadsPerBlock(heads);
  return makeKernelSpec("mla_prefill.cu", "mla_prefill",
                        {{"KV_LORA", integer(kvLoraRank)},
                         {"ROPE", integer(ropeDims)},
                         {"SCALE", floatLiteral(softmaxScale)},
                         {"HEADS_PER_BLOCK", integer(perBlock)},
                         {"CHUNK", integer(kChunk)}},
                        static_cast<unsigned>(perBlock * 32));
}

StatusOr<KernelSpec> mlaPrefillMmaSpec(int64_t kvLoraRank, int64_t ropeDims, float softmaxScale,
                                       int64_t heads) {
  if (kvLoraRank <= 0 || ropeDims <= 0 || heads <= 0 || !(softmaxScale > 0) ||
      kvLoraRank % 16 != 0 || (kvLoraRank + ropeDims) % 16 != 0 ||
      mlaPrefillMmaSharedBytes(kvLoraRank, ropeDims) > 200 * 1024)
    return Status::error("MLA prefill on tensor cores with kv_lora_rank " + integer(kvLoraRank) +
                         " and rope " + integer(ropeDims) + " is not supported.");
  return makeKernelSpec("mla_prefill_mma.cu", "mla_prefill_mma",
                        {{"KV_LORA", integer(kvLoraRank)},
                         {"ROPE", integer(ropeDims)},
                         {"SCALE", floatLiteral(softmaxScale)},
                         {"HEADS", integer(heads)}},
                        256);
}

StatusOr<KernelSpec> mlaDecodeMmaSpec(int64_t kvLoraRank, int64_t ropeDims, float softmaxScale,
                                      int64_t heads, int rowGroups) {
  StatusOr<KernelSpec> prefill = mlaPrefillMmaSpec(kvLoraRank, ropeDims, softmaxScale, heads);
  if (!prefill || (rowGroups != 1 && rowGroups != 2 && rowGroups != 4))
    return Status::error("MLA decode on tensor cores with kv_lora_rank " + integer(kvLoraRank) +
                         ", rope " + integer(ropeDims) + " and " + integer(rowGroups) +
                         " row groups is not supported.");
  return makeKernelSpec("mla_decode_mma.cu", "mla_decode_mma",
                        {{"KV_LORA", integer(kvLoraRank)},
                         {"ROPE", integer(ropeDims)},
                         {"SCALE", floatLiteral(softmaxScale)},
                         {"HEADS", integer(heads)},
                         {"ROW_GROUPS", integer(rowGroups)}},
                        static_cast<unsigned>(64 * rowGroups));
}

unsigned mlaDecodeMmaSharedBytes(int64_t kvLoraRank, int64_t ropeDims, int rowGroups) {
  // 16 query rows per group and 32 positions of bf16, rows padded by 8 values.
  return unsigned((16 * rowGroups + 32) * (kvLoraRank + ropeDims + 8) * 2);
}

unsigned mlaPrefillMmaSharedBytes(int64_t kvLoraRank, int64_t ropeDims) {
  // 64 query rows and 32 positions of bf16, rows padded by 8 values.
  return unsigned((kMlaPrefillMmaRows + 32) * (kvLoraRank + ropeDims + 8) * 2);
}

StatusOr<KernelSpec> mlaDecodeSplitSpec(int64_t kvLoraRank, int64_t ropeDims, float softmaxScale,
                                        int64_t heads, const std::string &entry) {
  // Stages of 16 latent rows and rope keys live in static shared memory.
  if (kvLoraRank <= 0 || ropeDims <= 0 || heads <= 0 ||
      16 * (kvLoraRank + ropeDims) * 4 > 48 * 1024 || !(softmaxScale > 0) ||
      (entry != "mla_decode_split" && entry != "mla_combine"))
    return Status::error("MLA split decode (" + entry + ") with kv_lora_rank " +
                         integer(kvLoraRank) + " and rope " + integer(ropeDims) +
                         " is not supported on the GPU.");
  // Two heads a warp where a block has an even number of them: each latent
  // value read from shared memory serves both (one head a warp, the stages'
  // reads bounded the kernel: 27 us at 576 positions in a V3 decode graph).
  const int64_t perBlock = mlaHeadsPerBlock(heads), perWarp = perBlock % 2 == 0 ? 2 : 1;
  return makeKernelSpec("mla_decode_split.cu", entry,
                        {{"KV_LORA", integer(kvLoraRank)},
                         {"ROPE", integer(ropeDims)},
                         {"SCALE", floatLiteral(softmaxScale)},
                         {"HEADS_PER_BLOCK", integer(perBlock)},
                         {"HEADS_PER_WARP", integer(perWarp)},
                         {"BLOCK_THREADS", "256"}},
                        entry == "mla_combine" ? 256u
                                               : static_cast<unsigned>(perBlock / perWarp * 32));
}

StatusOr<KernelSpec> mlaCacheAppendSpec(int64_t kvLoraRank, int64_t ropeDims, float eps,
                                        float cosSinScale) {
  if (kvLoraRank <= 0 || ropeDims <= 0 || ropeDims % 2 != 0 || kvLoraRank > 4096 ||
      ropeDims > 512 || !(eps > 0))
    return Status::error("an MLA cache of kv_lora_rank " + integer(kvLoraRank) + " and rope " +
                         integer(ropeDims) + " is not supported on the GPU.");
  // rms_norm's threads for the latent's width: the norm adds up in its order.
  StatusOr<KernelSpec> norm = rmsNormSpec(kvLoraRank, eps);
  if (!norm)
    return norm.status();
  return makeKernelSpec("mla_cache.cu", "mla_cache_append",
                        {{"KV_LORA", integer(kvLoraRank)},
                         {"ROPE", integer(ropeDims)},
                         {"EPS", floatLiteral(eps)},
                         {"COS_SIN_SCALE", floatLiteral(cosSinScale)},
                         {"BLOCK_THREADS", std::to_string(norm->blockThreads)}},
                        norm->blockThreads);
}

StatusOr<KernelSpec> moeCombineSpec(int64_t hidden, int64_t topK, const std::string &entry) {
  if (hidden <= 0 || topK <= 0 || topK > 64 || hidden > INT32_MAX ||
      (entry != "moe_combine" && entry != "expert_counts"))
    return Status::error("combining " + integer(topK) + " experts of " + integer(hidden) +
                         " values is not supported on the GPU.");
  return makeKernelSpec(
      "moe_combine.cu", entry,
      {{"HIDDEN", integer(hidden)}, {"TOP_K", integer(topK)}, {"BLOCK_THREADS", "256"}}, 256);
}

StatusOr<KernelSpec> elementwiseSpec(const std::string &entry, int64_t count) {
  if ((entry != "silu_mul" && entry != "add" && entry != "silu_mul_fp8") || count <= 0 ||
      count > INT32_MAX || (entry == "silu_mul_fp8" && count % 128 != 0))
    return Status::error("no element-wise GPU kernel '" + entry + "' over " + integer(count) +
                         " values (silu_mul and add exist; silu_mul_fp8 over whole 128-value "
                         "slices).");
  return makeKernelSpec("elementwise.cu", entry,
                        {{"COUNT", integer(count)}, {"BLOCK_THREADS", "256"}}, 256);
}

StatusOr<KernelSpec> argmaxSpec(int64_t vocab) {
  if (vocab <= 0 || vocab > INT32_MAX)
    return Status::error("greedy sampling over " + integer(vocab) + " logits is not supported.");
  return makeKernelSpec("argmax.cu", "argmax",
                        {{"VOCAB", integer(vocab)}, {"BLOCK_THREADS", "1024"}}, 1024);
}

StatusOr<KernelSpec> sampleSpec(int64_t vocab) {
  if (vocab <= 0 || vocab > INT32_MAX)
    return Status::error("sampling over " + integer(vocab) + " logits is not supported.");
  return makeKernelSpec("sample.cu", "sample_rows",
                        {{"VOCAB", integer(vocab)}, {"BLOCK_THREADS", "1024"}}, 1024);
}

// sample.cu's SampleParams: temperature, top-k, top-p, padding, seed, draw.
void packSampleParams(const exec::TokenSampling &sampling, uint8_t *out) {
  const int32_t pad = 0;
  std::memcpy(out, &sampling.temperature, 4);
  std::memcpy(out + 4, &sampling.topK, 4);
  std::memcpy(out + 8, &sampling.topP, 4);
  std::memcpy(out + 12, &pad, 4);
  std::memcpy(out + 16, &sampling.seed, 8);
  std::memcpy(out + 24, &sampling.draw, 8);
}

unsigned gemvKQuantRowsPerWarp(int64_t outFeatures, int64_t tokenTile) {
  // Measured on an H200 (docs/gpu-kernels.md): four rows per warp doubled
  // lm_head and o_proj, one row per warp kept 576..2048-row matrices fastest
  // in decode; in prefill, loading the tile's activations bounds the kernel
  // unless four rows share them.
  if (tokenTile > 1)
    return 4;
  return outFeatures >= 16384 ? 4 : outFeatures >= 4096 ? 2 : 1;
}

int64_t groupAssignments(const int32_t *matrixOf, int64_t assignments, int32_t *tiles) {
  std::vector<std::pair<int32_t, int32_t>> byMatrix; // (matrix, assignment)
  byMatrix.reserve(size_t(assignments));
  for (int64_t a = 0; a < assignments; ++a)
    if (matrixOf[a] >= 0)
      byMatrix.emplace_back(matrixOf[a], int32_t(a));
  std::sort(byMatrix.begin(), byMatrix.end());
  const int64_t width = 1 + kGemvPrefillTokenTile;
  int64_t count = 0;
  for (size_t i = 0; i < byMatrix.size();) {
    int32_t *tile = tiles + count * width;
    tile[0] = byMatrix[i].first;
    int64_t filled = 0;
    for (; filled < kGemvPrefillTokenTile && i < byMatrix.size() && byMatrix[i].first == tile[0];
         ++filled, ++i)
      tile[1 + filled] = byMatrix[i].second;
    std::fill(tile + 1 + filled, tile + width, -1);
    ++count;
  }
  return count;
}

unsigned gemvQ8_0RowsPerWarp(int64_t inFeatures, int64_t tokenTile) {
  if (tokenTile > 1)
    return 4;
  // Decode: rows of at most 256 values (one warp step or less) go 1024 /
  // length to a warp, at most 8, whose loads of them are in flight
  // together (rows of 1, 2 or 4 blocks side by side in a step). On the H100,
  // in a decode graph: `k_b`'s 128 x 512 rows of 128, 19.8 us one a warp,
  // 7.0 eight a warp (two a step; 8.8-9.0 us at 4 or 8 in gpu_kernel_bench's
  // sweep, 12.2 at 16); `v_b`'s rows of 512 5.7 us one a warp, 6.3 two a
  // warp, so longer rows stay one.
  if (inFeatures > 256)
    return 1;
  return unsigned(std::clamp<int64_t>(1024 / std::max<int64_t>(inFeatures, 1), 1, 8));
}

bool kernelWaitsForPriorGrid(std::string_view source) {
  auto count = [&](std::string_view what) {
    size_t n = 0;
    for (size_t at = source.find(what); at != std::string_view::npos;
         at = source.find(what, at + what.size()))
      ++n;
    return n;
  };
  const size_t waits = count("KT_WAIT_FOR_PRIOR_GRID();");
  return waits > 0 && waits == count("extern \"C\" __global__");
}

unsigned gemvSplitRowsPerBlock(unsigned split) {
  return split >= kGemvRowsPerBlock ? 1 : kGemvRowsPerBlock / split;
}

unsigned gemvSetColumnSplit(std::map<std::string, std::string> &defines, unsigned split) {
  defines["ROWS_PER_BLOCK"] = std::to_string(gemvSplitRowsPerBlock(split));
  if (split > 1)
    defines["K_SPLIT"] = std::to_string(split);
  else
    defines.erase("K_SPLIT");
  return gemvSplitRowsPerBlock(split) * split * 32;
}

unsigned gemvColumnSplit(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                         int64_t tokenTile, GemvVariant variant) {
  if (tokenTile != 1 || variant == GemvVariant::Grouped || outFeatures <= 0)
    return 1;
  // A warp's steps along a row, each 16 bytes of quants or weights a lane:
  // q8_0 lanes take 8 values of a block (a warp 8 blocks a step), float
  // lanes one 16-byte vector, k-quant lanes an eighth of a super-block (a
  // warp 4 super-blocks a step, for each of its rows).
  int64_t warpSteps = 0, warps = outFeatures;
  // Splits stop at 2 steps a warp (k-quants: 1.75, their steps being 2-3
  // times as many bytes) and, for rows, at kGemvDecodeWarps warps (k-quants,
  // which decode more per byte, at twice as many).
  int64_t minQuarterSteps = 8, targetWarps = kGemvDecodeWarps;
  if (type == gguf::GgmlType::Q8_0)
    warpSteps = inFeatures / (8 * 32);
  else if (type == gguf::GgmlType::F32)
    warpSteps = inFeatures / (4 * 32);
  else if (type == gguf::GgmlType::F16 || type == gguf::GgmlType::BF16)
    warpSteps = inFeatures / (8 * 32);
  else if (type == gguf::GgmlType::Q4_K || type == gguf::GgmlType::Q5_K ||
           type == gguf::GgmlType::Q6_K) {
    warpSteps = inFeatures / (4 * 256);
    const int64_t rowsPerWarp = gemvKQuantRowsPerWarp(outFeatures, tokenTile);
    warps = (outFeatures + rowsPerWarp - 1) / rowsPerWarp;
    minQuarterSteps = 7;
    targetWarps = 2 * kGemvDecodeWarps;
  }
  unsigned split = 1;
  while (split < kGemvMaxColumnSplit && 4 * warpSteps >= minQuarterSteps * 2 * int64_t(split) &&
         (warps * split < targetWarps ||
          (warpSteps > kGemvWarpSteps * split && warps * split < kGemvLongRowWarps)))
    split *= 2;
  return split;
}

unsigned gemvGridBlocks(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                        int64_t tokenTile) {
  const bool kQuant =
      type == gguf::GgmlType::Q4_K || type == gguf::GgmlType::Q5_K || type == gguf::GgmlType::Q6_K;
  const unsigned rowsPerWarp = kQuant ? gemvKQuantRowsPerWarp(outFeatures, tokenTile)
                               : type == gguf::GgmlType::Q8_0
                                   ? gemvQ8_0RowsPerWarp(inFeatures, tokenTile)
                                   : 1;
  // A block's warps: kGemvRowsPerBlock rows, or fewer rows of split columns.
  const unsigned rowsPerBlockOfWarps =
      gemvSplitRowsPerBlock(gemvColumnSplit(type, outFeatures, inFeatures, tokenTile));
  const int64_t rowsPerBlock = int64_t(rowsPerBlockOfWarps) * rowsPerWarp;
  return static_cast<unsigned>((outFeatures + rowsPerBlock - 1) / rowsPerBlock);
}

StatusOr<KernelSpec> gemvFp8Spec(int64_t outFeatures, int64_t inFeatures) {
  if (outFeatures <= 0 || inFeatures <= 0 || inFeatures % 16 != 0 || outFeatures > INT32_MAX)
    return Status::error("FP8 matrix [" + integer(outFeatures) + "][" + integer(inFeatures) +
                         "] cannot be multiplied on the GPU: rows must be a multiple of 16 "
                         "values.");
  return makeKernelSpec("gemv_fp8.cu", "gemv_fp8",
                        {{"IN_FEATURES", integer(inFeatures)},
                         {"OUT_FEATURES", integer(outFeatures)},
                         {"ROWS_PER_BLOCK", std::to_string(kGemvRowsPerBlock)}},
                        kGemvRowsPerBlock * 32);
}

bool fp8GemmFits(int64_t outFeatures, int64_t inFeatures) {
  return outFeatures > 0 && inFeatures > 0 && outFeatures % 64 == 0 && inFeatures % 128 == 0 &&
         outFeatures <= INT32_MAX && inFeatures <= INT32_MAX;
}

namespace {
// Why the FP8 GEMMs cannot take a weight (success where they can).
Status fp8GemmShapeCheck(int64_t outFeatures, int64_t inFeatures) {
  if (fp8GemmFits(outFeatures, inFeatures))
    return Status::success();
  return Status::error("the FP8 GEMM takes weights of a multiple of 64 rows of a multiple of 128 "
                       "values, not [" +
                       integer(outFeatures) + "][" + integer(inFeatures) + "].");
}
} // namespace

namespace {
// Per stage of the FP8 GEMM's ring besides its tiles: room for 132
// activation scales (kScaleBytes in gemm_fp8.cu) and a full and an empty
// barrier.
constexpr unsigned kFp8GemmStageExtraBytes = 640 + 16;
} // namespace

StatusOr<Fp8GemmConfig> fp8GemmConfig(int64_t outFeatures, unsigned blockN) {
  Fp8GemmConfig config;
  config.blockN = blockN ? blockN : outFeatures % 128 == 0 ? 128 : 64;
  if ((config.blockN != 64 && config.blockN != 128 && config.blockN != 144 &&
       config.blockN != 256) ||
      outFeatures <= 0 || outFeatures % config.blockN != 0)
    return Status::error("the FP8 GEMM cannot tile " + integer(outFeatures) + " rows by " +
                         integer(config.blockN) + ".");
  // As deep a ring as sm_90's 227 KiB allow: 8 x 24, 6 x 32, 6 x 34 or 4 x
  // 48 KiB of tiles, each stage with its scales and two barriers.
  const unsigned stageBytes = 128 * 128 + config.blockN * 128 + kFp8GemmStageExtraBytes;
  config.stages = std::min(8u, (227u * 1024 - 1024) / stageBytes);
  // Measured on the H100 at V3's shapes (fp8_gemm_bench): promoting behind
  // the next slice's products is faster on narrow tiles in 20 of 22 cases.
  config.promoteBehind = config.blockN <= 128;
  return config;
}

unsigned fp8GemmSharedBytes(const Fp8GemmConfig &config) {
  return config.stages * (128 * 128 + config.blockN * 128 + kFp8GemmStageExtraBytes) + 1024;
}

StatusOr<KernelSpec> gemmFp8Spec(int64_t outFeatures, int64_t inFeatures,
                                 const Fp8GemmConfig &config) {
  if (Status s = fp8GemmShapeCheck(outFeatures, inFeatures); !s.ok())
    return s;
  if (config.promoteBehind && config.blockN > 128)
    return Status::error("the FP8 GEMM promotes behind the products only on tiles of up to 128 "
                         "columns, not " +
                         integer(config.blockN) + ".");
  StatusOr<KernelSpec> spec = makeKernelSpec("gemm_fp8.cu", "gemm_fp8",
                                             {{"N_FEATURES", integer(outFeatures)},
                                              {"K_FEATURES", integer(inFeatures)},
                                              {"BLOCK_N", integer(config.blockN)},
                                              {"STAGES", integer(config.stages)}},
                                             384);
  if (spec && config.promoteBehind)
    spec->defines["PROMOTE_BEHIND"] = "1";
  return spec;
}

StatusOr<KernelSpec> gemmFp8Spec(int64_t outFeatures, int64_t inFeatures) {
  StatusOr<Fp8GemmConfig> config = fp8GemmConfig(outFeatures);
  if (!config)
    return config.status();
  return gemmFp8Spec(outFeatures, inFeatures, *config);
}

StatusOr<KernelSpec> gemmFp8GroupedSpec(int64_t outFeatures, int64_t inFeatures,
                                        const Fp8GemmConfig &config) {
  if (outFeatures % 128 != 0)
    return Status::error("the grouped FP8 GEMM needs experts of whole 128-row scale blocks, not " +
                         integer(outFeatures) + " rows.");
  StatusOr<KernelSpec> spec = gemmFp8Spec(outFeatures, inFeatures, config);
  if (!spec)
    return spec;
  spec->defines["GROUPED"] = "1";
  return spec;
}

bool fp8GemmHasStraddlingTiles(int64_t outFeatures) {
  return outFeatures > 0 && outFeatures % 144 == 0 && outFeatures % 128 != 0;
}

std::vector<unsigned> fp8GemmTileWidths(int64_t outFeatures) {
  std::vector<unsigned> widths;
  for (unsigned blockN : {64u, 128u, 144u, 256u})
    if (blockN == 144 ? fp8GemmHasStraddlingTiles(outFeatures)
                      : outFeatures > 0 && outFeatures % blockN == 0)
      widths.push_back(blockN);
  return widths;
}

StatusOr<std::vector<KernelSpec>> gemmFp8TileSpecs(int64_t outFeatures, int64_t inFeatures) {
  std::vector<KernelSpec> specs;
  for (unsigned blockN : fp8GemmTileWidths(outFeatures)) {
    StatusOr<Fp8GemmConfig> config = fp8GemmConfig(outFeatures, blockN);
    if (!config)
      return config.status();
    StatusOr<KernelSpec> spec = gemmFp8Spec(outFeatures, inFeatures, *config);
    if (!spec)
      return spec.status();
    specs.push_back(std::move(*spec));
  }
  return specs;
}

StatusOr<KernelSpec> gemmFp8SumSpec(int64_t outFeatures, int64_t inFeatures) {
  StatusOr<KernelSpec> spec = gemmFp8Spec(outFeatures, inFeatures);
  if (!spec)
    return spec;
  spec->entry = "gemm_fp8_sum_splits";
  spec->blockThreads = 256;
  return spec;
}

StatusOr<KernelSpec> gemmFp8Bf16Spec(int64_t outFeatures, int64_t inFeatures) {
  if (Status s = fp8GemmShapeCheck(outFeatures, inFeatures); !s.ok())
    return s;
  return makeKernelSpec("gemm_fp8_bf16.cu", "gemm_fp8_bf16",
                        {{"N_FEATURES", integer(outFeatures)}, {"K_FEATURES", integer(inFeatures)}},
                        128);
}

namespace {
// 4, 5, 6 for q4_K, q5_K, q6_K; 0 otherwise.
int kquantNumber(gguf::GgmlType type) {
  return type == gguf::GgmlType::Q4_K   ? 4
         : type == gguf::GgmlType::Q5_K ? 5
         : type == gguf::GgmlType::Q6_K ? 6
                                        : 0;
}
} // namespace

bool gemmMmaFits(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures) {
  const int64_t block = type == gguf::GgmlType::Q8_0 ? 32 : kquantNumber(type) ? 256 : 0;
  return block > 0 && outFeatures > 0 && outFeatures % 64 == 0 && outFeatures <= INT32_MAX &&
         inFeatures > 0 && inFeatures % block == 0 && inFeatures <= INT32_MAX;
}

std::vector<int32_t> expertRowTiles(const std::vector<int64_t> &groupSizes, int64_t tileRows) {
  std::vector<int32_t> tiles;
  int64_t first = 0;
  for (size_t expert = 0; expert < groupSizes.size(); ++expert) {
    const int64_t end = first + groupSizes[expert];
    for (int64_t row = first; row < end; row += tileRows)
      tiles.insert(tiles.end(), {int32_t(expert), int32_t(row), int32_t(end)});
    first = end;
  }
  return tiles;
}

std::optional<int32_t> orderAssignmentsByExpert(const int32_t *expertOf, int64_t assignments,
                                                int64_t topK, int64_t experts,
                                                std::vector<int64_t> &sizes,
                                                std::vector<int64_t> &next, int32_t *rowIndex,
                                                int32_t *outRows) {
  sizes.assign(size_t(experts), 0);
  for (int64_t a = 0; a < assignments; ++a) {
    const int32_t id = expertOf[a];
    if (id < 0 || id >= experts)
      return id;
    ++sizes[size_t(id)];
  }
  next.assign(size_t(experts), 0);
  for (int64_t e = 1; e < experts; ++e)
    next[size_t(e)] = next[size_t(e - 1)] + sizes[size_t(e - 1)];
  for (int64_t a = 0; a < assignments; ++a) {
    const int64_t j = next[size_t(expertOf[a])]++;
    rowIndex[j] = int32_t(a / topK);
    outRows[j] = int32_t(a);
  }
  return std::nullopt;
}

StatusOr<KernelSpec> gemmMmaSpec(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                                 bool splitRows) {
  if (splitRows && !quant::q8_0RowsSplit(type, inFeatures))
    return Status::error("a " + integer(outFeatures) + "x" + integer(inFeatures) + " " +
                         std::string(gguf::ggmlTypeName(type)) + " matrix has no split rows.");
  if (!gemmMmaFits(type, outFeatures, inFeatures))
    return Status::error("a " + integer(outFeatures) + "x" + integer(inFeatures) + " " +
                         std::string(gguf::ggmlTypeName(type)) +
                         " matrix does not fit a tensor-core GEMM (q8_0 or k-quant weights, rows "
                         "in 64-row tiles, whole blocks).");
  std::map<std::string, std::string> defines = {{"N_FEATURES", integer(outFeatures)},
                                                {"K_FEATURES", integer(inFeatures)}};
  if (splitRows)
    defines["SPLIT_ROWS"] = "1";
  if (type == gguf::GgmlType::Q8_0)
    return makeKernelSpec("gemm_q8_0_mma.cu", "gemm_q8_0_mma", std::move(defines), 128);
  defines["QTYPE"] = std::to_string(kquantNumber(type));
  return makeKernelSpec("gemm_kquant_mma.cu", "gemm_kquant_mma", std::move(defines), 128);
}

std::vector<StatusOr<KernelSpec>> denseMatrixSpecs(gguf::GgmlType type, int64_t outFeatures,
                                                   int64_t inFeatures, bool perHead, bool mma) {
  const GemvVariant variant = perHead ? GemvVariant::Plain : denseGemvVariant(type, inFeatures);
  std::vector<StatusOr<KernelSpec>> specs;
  for (int64_t tile : {int64_t(1), kGemvPrefillTokenTile})
    specs.push_back(gemvSpec(type, outFeatures, inFeatures, tile, variant));
  if (variant == GemvVariant::SplitRows) {
    specs.push_back(gemvQ8_0PlanesSpec(outFeatures, inFeatures));
    specs.push_back(quantizePlanesSpec(inFeatures));
  }
  if (mma && !perHead && gemmMmaFits(type, outFeatures, inFeatures))
    specs.push_back(gemmMmaSpec(type, outFeatures, inFeatures, variant == GemvVariant::SplitRows));
  return specs;
}

bool archHasBf16Mma(const std::string &arch) {
  const size_t underscore = arch.find('_');
  if (underscore == std::string::npos)
    return false;
  return std::atoi(arch.c_str() + underscore + 1) >= 80;
}

StatusOr<KernelSpec> fp8QuantizeSpec(int64_t inFeatures) {
  if (inFeatures <= 0 || inFeatures % 128 != 0 || inFeatures > INT32_MAX)
    return Status::error("activations of " + integer(inFeatures) +
                         " values cannot be quantized to FP8 per 128 columns.");
  return makeKernelSpec("fp8_quantize.cu", "fp8_quantize", {{"IN_FEATURES", integer(inFeatures)}},
                        256);
}

StatusOr<KernelSpec> gemvFloatSpec(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                                   int64_t tokenTile, GemvVariant variant) {
  const char *weightType = type == gguf::GgmlType::F32    ? "0"
                           : type == gguf::GgmlType::F16  ? "1"
                           : type == gguf::GgmlType::BF16 ? "2"
                                                          : nullptr;
  if (!weightType || outFeatures <= 0 || inFeatures <= 0 || outFeatures > INT32_MAX ||
      inFeatures > INT32_MAX)
    return Status::error("no GPU GEMV for a " + std::string(gguf::ggmlTypeName(type)) +
                         " matrix [" + integer(outFeatures) + "][" + integer(inFeatures) + "].");
  std::map<std::string, std::string> defines = {{"WEIGHT_TYPE", weightType},
                                                {"IN_FEATURES", integer(inFeatures)},
                                                {"OUT_FEATURES", integer(outFeatures)}};
  const unsigned threads = gemvSetColumnSplit(
      defines, gemvColumnSplit(type, outFeatures, inFeatures, tokenTile, variant));
  return makeKernelSpec("gemv_float.cu", "gemv_float", withTokenTile(defines, tokenTile, variant),
                        threads);
}

bool hasGpuGemv(gguf::GgmlType type) {
  return type == gguf::GgmlType::Q8_0 || type == gguf::GgmlType::Q4_K ||
         type == gguf::GgmlType::Q5_K || type == gguf::GgmlType::Q6_K ||
         type == gguf::GgmlType::F32 || type == gguf::GgmlType::F16 || type == gguf::GgmlType::BF16;
}

StatusOr<KernelSpec> gemvSpec(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                              int64_t tokenTile, GemvVariant variant) {
  if (tokenTile < 1 || tokenTile > 16)
    return Status::error("GEMV token tiles hold 1 to 16 tokens, not " + integer(tokenTile) + ".");
  if (variant == GemvVariant::GateUp && tokenTile != 1)
    return Status::error("the fused gate and up GEMV takes one token per block.");
  if (variant == GemvVariant::SplitRows && type != gguf::GgmlType::Q8_0)
    return Status::error("only q8_0 matrices are kept with split rows, not " +
                         std::string(gguf::ggmlTypeName(type)) + ".");
  if (type == gguf::GgmlType::Q8_0)
    return gemvQ8_0Spec(outFeatures, inFeatures, tokenTile, variant);
  if (type == gguf::GgmlType::F32 || type == gguf::GgmlType::F16 || type == gguf::GgmlType::BF16)
    return gemvFloatSpec(type, outFeatures, inFeatures, tokenTile, variant);
  return gemvKQuantSpec(type, outFeatures, inFeatures, tokenTile, variant);
}

StatusOr<std::vector<KernelSpec>> allKernelSpecializations(const ModelKernelShapes &shapes) {
  std::vector<KernelSpec> specs;
  std::set<std::string> described;
  auto add = [&](StatusOr<KernelSpec> spec) -> Status {
    if (!spec.ok())
      return spec.status();
    if (described.insert(spec->describe()).second)
      specs.push_back(std::move(*spec));
    return Status::success();
  };
  if (Status s = add(embeddingSpec(shapes.hidden, shapes.vocab, shapes.embeddingType)); !s.ok())
    return s;
  if (Status s = add(rmsNormSpec(shapes.hidden, shapes.rmsNormEps)); !s.ok())
    return s;
  for (int64_t width : shapes.extraNormWidths)
    if (Status s = add(rmsNormSpec(width, shapes.rmsNormEps)); !s.ok())
      return s;
  // The residual adds with the norms after them (kt-fuse-residual-norm).
  for (int addends : {2, 3})
    if (Status s = add(addRmsNormSpec(shapes.hidden, shapes.rmsNormEps, addends)); !s.ok())
      return s;
  for (const ModelKernelShapes::Matrix &m : shapes.gemvMatrices)
    for (StatusOr<KernelSpec> &spec :
         denseMatrixSpecs(m.type, m.out, m.in, m.perHead, shapes.mmaGemm))
      if (Status s = add(std::move(spec)); !s.ok())
        return s;
  for (const MoeGateShape &gate : shapes.gates)
    if (Status s = add(moeGateSpec(gate)); !s.ok())
      return s;
  for (const RopeShape &rope : shapes.ropes)
    if (Status s = add(ropeSpec(rope)); !s.ok())
      return s;
  if (Status s = add(argmaxSpec(shapes.vocab)); !s.ok())
    return s;
  if (Status s = add(sampleSpec(shapes.vocab)); !s.ok())
    return s;
  for (const char *entry : {"silu_mul", "add"})
    for (int64_t count : shapes.elementwiseCounts)
      if (Status s = add(elementwiseSpec(entry, count)); !s.ok())
        return s;
  for (const ModelKernelShapes::Experts &e : shapes.gpuExperts)
    for (StatusOr<KernelSpec> spec :
         {gemvSpec(e.type, e.ffn, e.hidden), gemvSpec(e.type, e.hidden, e.ffn),
          gemvSpec(e.type, e.ffn, e.hidden, kGemvPrefillTokenTile, GemvVariant::Grouped),
          gemvSpec(e.type, e.hidden, e.ffn, kGemvPrefillTokenTile, GemvVariant::Grouped),
          gemvSpec(e.type, e.ffn, e.hidden, 1, GemvVariant::GateUp),
          elementwiseSpec("silu_mul", e.ffn), moeCombineSpec(e.hidden, e.topK),
          moeCombineSpec(e.hidden, e.topK, "expert_counts")})
      if (Status s = add(std::move(spec)); !s.ok())
        return s;
  // The routed experts' grouped tensor-core GEMMs (the dense form's kernels).
  for (const ModelKernelShapes::Experts &e : shapes.gpuExperts)
    for (auto [out, in] : {std::pair{e.ffn, e.hidden}, std::pair{e.hidden, e.ffn}})
      if (shapes.mmaGemm && gemmMmaFits(e.type, out, in))
        if (Status s = add(gemmMmaSpec(e.type, out, in)); !s.ok())
          return s;
  for (const auto &[out, in] : shapes.fp8Matrices) {
    if (Status s = add(gemvFp8Spec(out, in)); !s.ok())
      return s;
    if (shapes.fp8Gemm && fp8GemmFits(out, in)) {
      StatusOr<std::vector<KernelSpec>> gemms = gemmFp8TileSpecs(out, in);
      if (!gemms)
        return gemms.status();
      for (KernelSpec &gemm : *gemms)
        if (Status s = add(std::move(gemm)); !s.ok())
          return s;
      for (StatusOr<KernelSpec> spec : {gemmFp8SumSpec(out, in), fp8QuantizeSpec(in)})
        if (Status s = add(std::move(spec)); !s.ok())
          return s;
    }
    if (shapes.fp8Bf16Gemm && fp8GemmFits(out, in))
      if (Status s = add(gemmFp8Bf16Spec(out, in)); !s.ok())
        return s;
  }
  // The norms feeding FP8 GEMMs (the layers' and q_a's) quantize their
  // results for them.
  if (shapes.fp8Gemm && !shapes.fp8Matrices.empty()) {
    std::vector<int64_t> widths = shapes.extraNormWidths;
    widths.push_back(shapes.hidden);
    for (int64_t width : widths)
      if (width % 128 == 0)
        if (Status s = add(rmsNormFp8Spec(width, shapes.rmsNormEps)); !s.ok())
          return s;
    // And the SiLU-gated products for the down projections.
    for (int64_t count : shapes.elementwiseCounts)
      if (count % 128 == 0)
        if (Status s = add(elementwiseSpec("silu_mul_fp8", count)); !s.ok())
          return s;
  }
  for (const ModelKernelShapes::Mla &mla : shapes.mlaDecode)
    for (StatusOr<KernelSpec> spec :
         {mlaPrefillSpec(mla.kvLoraRank, mla.ropeDims, mla.softmaxScale, mla.heads),
          mlaPrefillMmaSpec(mla.kvLoraRank, mla.ropeDims, mla.softmaxScale, mla.heads),
          mlaDecodeMmaSpec(mla.kvLoraRank, mla.ropeDims, mla.softmaxScale, mla.heads),
          mlaDecodeSplitSpec(mla.kvLoraRank, mla.ropeDims, mla.softmaxScale, mla.heads,
                             "mla_decode_split"),
          mlaDecodeSplitSpec(mla.kvLoraRank, mla.ropeDims, mla.softmaxScale, mla.heads,
                             "mla_combine"),
          mlaCacheAppendSpec(mla.kvLoraRank, mla.ropeDims, shapes.rmsNormEps, mla.cosSinScale)})
      if (Status s = add(std::move(spec)); !s.ok())
        return s;
  return specs;
}

} // namespace kt::cuda
