// The kernels of kernels/ and their specializations for a model's shapes.
#pragma once

#include "runtime/cuda/KernelSpec.h"
#include "runtime/exec/TokenSampling.h"
#include "runtime/gguf/GgmlType.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kt::cuda {

// A spec for `file` (an embedded kernels/ file) with its included headers
// resolved transitively from the embedded .cuh files.
StatusOr<KernelSpec> makeKernelSpec(const std::string &file, const std::string &entry,
                                    std::map<std::string, std::string> defines,
                                    unsigned blockThreads);

// Spellings of constants in defines, so equal values give equal cache keys.
std::string floatLiteral(float value); // "1e-06f", exact round trip

// RMSNorm over rows of `width` floats (one block per row).
StatusOr<KernelSpec> rmsNormSpec(int64_t width, float eps);
// rms_norm that also writes its result quantized for the FP8 GEMM (entry
// rms_norm_fp8; width a multiple of 128): for norms whose result the FP8
// wgmma GEMM multiplies in prefill (ktc's kt-fuse-norm-quantize).
StatusOr<KernelSpec> rmsNormFp8Spec(int64_t width, float eps);
// A residual sum of `addends` (2 or 3) rows and its RMSNorm in one kernel
// (entry add_rms_norm): the add_rms_norm ops of kt-fuse-residual-norm.
StatusOr<KernelSpec> addRmsNormSpec(int64_t width, float eps, int addends);
// Embedding rows of a [vocab][hidden] table of f32, f16, bf16 or q8_0 (one block per token).
StatusOr<KernelSpec> embeddingSpec(int64_t hidden, int64_t vocab, gguf::GgmlType tableType);
// The GEMV kernels' last argument (kernels/common.cuh): grid y runs over
// tiles of the spec's token tile, grid z over the heads of a per-head batch
// of matrices; strides in floats. One token: {in, out, 0, 0} with a grid of
// 1 x 1.
struct GemvLayout {
  int xTokenStride = 0, yTokenStride = 0, xHeadStride = 0, yHeadStride = 0;
  int tokens = 1;
  // Device int32 [tokens][grid z]: the matrix of each slot; 0: slot s uses matrix s.
  uint64_t matrixIds = 0;
  // Device int32 [tiles][1 + kGemvPrefillTokenTile]: each tile's matrix and
  // assignments (groupAssignments()); 0: tiles of consecutive tokens.
  uint64_t groups = 0;
  int assignmentsPerX = 1; // with groups: assignment a reads x row a / assignmentsPerX
  uint64_t upWeight = 0;   // GemvVariant::GateUp: the up matrices, stacked as the gate's
};

// What a GEMV specialization computes: y = W x over consecutive tokens;
// over tiles of assignments grouped by matrix (GemvLayout::groups: routed
// experts in prefill); or silu(W x) * (U x) with U at GemvLayout::upWeight
// (the gate and up products of routed experts in decode, one token per block);
// or Plain over a dense Q8_0 matrix the GPU keeps with split rows
// (quant::q8_0RowsSplit, kernels/common.cuh).
enum class GemvVariant { Plain, Grouped, GateUp, SplitRows };

// Groups the assignments of a prefill step's routed experts (assignment a:
// token a / top_k's (a % top_k)-th choice) by the matrix each uses
// (`matrixOf[a]`, -1: none) into tiles of up to kGemvPrefillTokenTile
// assignments of one matrix, written to `tiles` as [matrix, a0, ..., -1
// pads] (room for `assignments` tiles); returns how many. Each tile's GEMV
// block then reads its matrix once for all its assignments.
int64_t groupAssignments(const int32_t *matrixOf, int64_t assignments, int32_t *tiles);
// Tokens per block of the GEMVs that serve prefill steps (decode uses 1):
// each weight read from memory serves this many tokens.
constexpr int64_t kGemvPrefillTokenTile = 8;

// The GEMVs below take `tokenTile` tokens per block.
// y = W x for a Q8_0 matrix of `outFeatures` rows of `inFeatures` (one warp per row).
StatusOr<KernelSpec> gemvQ8_0Spec(int64_t outFeatures, int64_t inFeatures, int64_t tokenTile = 1,
                                  GemvVariant variant = GemvVariant::Plain);
constexpr unsigned kGemvRowsPerBlock = 4;
// The variant of a dense matrix's GEMVs (not a per-head stack, not routed
// experts): SplitRows for Q8_0 rows of whole runs of 8 blocks, which the
// executor splits at upload.
GemvVariant denseGemvVariant(gguf::GgmlType type, int64_t inFeatures);
// Decode over a split-row Q8_0 matrix: x quantized into three int8 planes
// (quantizePlanesSpec: within about f32's rounding, kernels/common.cuh),
// then gemv_q8_0_planes with 16-byte loads and dp4a (one token, one matrix).
StatusOr<KernelSpec> quantizePlanesSpec(int64_t inFeatures);
constexpr unsigned kQuantizePlanesThreads = 256; // 8 blocks of 32 values each
inline unsigned quantizePlanesGridBlocks(int64_t inFeatures) {
  return unsigned((inFeatures + kQuantizePlanesThreads - 1) / kQuantizePlanesThreads);
}
// Bytes of one token's planes and their f32 block scales.
inline int64_t planesBytes(int64_t inFeatures) { return 3 * inFeatures; }
inline int64_t planeScalesBytes(int64_t inFeatures) { return inFeatures / 32 * 4; }
StatusOr<KernelSpec> gemvQ8_0PlanesSpec(int64_t outFeatures, int64_t inFeatures);
// Its warps a row: doubled while the matrix has fewer than
// kGemvPlanesWarps of them and each warp keeps at least one 16-value chunk
// a lane, at most 8 (H200 measurements: docs/gpu-kernels.md).
unsigned gemvQ8_0PlanesSplit(int64_t outFeatures, int64_t inFeatures);
constexpr int64_t kGemvPlanesWarps = 16384;
unsigned gemvQ8_0PlanesGridBlocks(int64_t outFeatures, int64_t inFeatures);
// y = W x for a q4_K, q5_K or q6_K matrix (one warp per row).
StatusOr<KernelSpec> gemvKQuantSpec(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                                    int64_t tokenTile = 1,
                                    GemvVariant variant = GemvVariant::Plain);
// Rows per warp of the k-quant GEMV: 4 for large matrices (activations
// loaded once for four rows), fewer where that would leave SMs idle in
// decode; always 4 with a token tile (the tiles fill the GPU, and each
// activation loaded then serves four rows).
unsigned gemvKQuantRowsPerWarp(int64_t outFeatures, int64_t tokenTile = 1);
// Rows per warp of the q8_0 GEMV: 4 with a token tile; in decode one, or
// up to 8 for rows of at most 256 values (whose columns are never split).
unsigned gemvQ8_0RowsPerWarp(int64_t inFeatures, int64_t tokenTile);
// y = W x for an f32, f16 or bf16 matrix (one warp per row).
StatusOr<KernelSpec> gemvFloatSpec(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                                   int64_t tokenTile = 1,
                                    GemvVariant variant = GemvVariant::Plain);
// The decode GEMV of a matrix of `type` (q8_0, a k-quant, f32, f16 or bf16); an error for
// types without a GPU GEMV.
StatusOr<KernelSpec> gemvSpec(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                              int64_t tokenTile = 1,
                                    GemvVariant variant = GemvVariant::Plain);
bool hasGpuGemv(gguf::GgmlType type);
// y = W x for a native FP8 (e4m3, 128x128 block scales) matrix; the decode
// kernel of the fp8 family (one warp per row, kGemvRowsPerBlock rows per block).
StatusOr<KernelSpec> gemvFp8Spec(int64_t outFeatures, int64_t inFeatures);
// The FP8 prefill GEMM on sm_90a's tensor cores (kernels/gemm_fp8.cu, entry
// "gemm_fp8", 3 warpgroups per block; entry "gemm_fp8_sum_splits" adds the
// partial results of a split-K launch) for a weight of `outFeatures` rows of
// `inFeatures` e4m3, and the activation quantization it reads
// (kernels/fp8_quantize.cu, per token and 128 columns). fp8GemmFits: the
// shapes it takes (rows a multiple of 64, columns of 128); others keep the GEMV.
bool fp8GemmFits(int64_t outFeatures, int64_t inFeatures);
// How a GEMM specialization tiles: columns per block (64, 128, 144 or 256)
// and buffers in its ring; `promoteBehind` (64 and 128 columns): each
// slice's products run while the previous slice's are promoted, in two
// fragments.
struct Fp8GemmConfig {
  unsigned blockN = 128, stages = 6;
  bool promoteBehind = true;
};
// The configuration for a weight of `outFeatures` rows: `blockN` as asked
// (0: the default), the ring as deep as shared memory allows, promotion
// behind the products on 64- and 128-column tiles; an error where the rows
// do not divide into such tiles.
StatusOr<Fp8GemmConfig> fp8GemmConfig(int64_t outFeatures, unsigned blockN = 0);
// Dynamic shared memory of a GEMM block: the ring, its scales and barriers, 1 KiB to align.
unsigned fp8GemmSharedBytes(const Fp8GemmConfig &config);
StatusOr<KernelSpec> gemmFp8Spec(int64_t outFeatures, int64_t inFeatures,
                                 const Fp8GemmConfig &config);
StatusOr<KernelSpec> gemmFp8Spec(int64_t outFeatures, int64_t inFeatures); // the default config
// The routed experts' form (GROUPED): weights of every expert stacked, tiles
// of assignments grouped by expert (runFp8GroupedGemm); out % 128 == 0.
StatusOr<KernelSpec> gemmFp8GroupedSpec(int64_t outFeatures, int64_t inFeatures,
                                        const Fp8GemmConfig &config);
// The tile widths a weight of `outFeatures` rows gets, narrowest first:
// 64, 128 and 256 where the rows divide into them; 144 where they divide
// into it but not into 128 (kv_a's 576: 4 tiles that straddle scale blocks
// instead of 9 of 64).
std::vector<unsigned> fp8GemmTileWidths(int64_t outFeatures);
// Whether the rows take 144-column tiles (straddling the scale blocks).
bool fp8GemmHasStraddlingTiles(int64_t outFeatures);
// Every tile width's GEMM a weight gets (fp8GemmTileWidths, each with
// fp8GemmConfig's ring): the default (128 columns, or 64 where the rows
// are not whole 128s) and the others for small steps (more tiles instead of
// split K) and large ones. runtime/cuda/Fp8Gemm.h, fp8GemmTiling, picks one
// per step.
StatusOr<std::vector<KernelSpec>> gemmFp8TileSpecs(int64_t outFeatures, int64_t inFeatures);
StatusOr<KernelSpec> gemmFp8SumSpec(int64_t outFeatures, int64_t inFeatures);
StatusOr<KernelSpec> fp8QuantizeSpec(int64_t inFeatures);
// The FP8 prefill GEMM on GPUs without FP8 tensor cores, sm_80 to sm_89
// (kernels/gemm_fp8_bf16.cu: e4m3 weights and f32 activations to bf16,
// mma.sync; 128 threads, grid (out / 64, ceil(tokens / 64))), for the
// shapes fp8GemmFits takes.
StatusOr<KernelSpec> gemmFp8Bf16Spec(int64_t outFeatures, int64_t inFeatures);

// The prefill GEMM of a GGUF matrix on tensor cores, for sm_80 and newer,
// where the type and shape fit (rows, the outputs, in 64-row tiles):
// q8_0 (kernels/gemm_q8_0_mma.cu: int8 weights exact in bf16, each 32-value
// block's sums times its scale) and q4_K/q5_K/q6_K (kernels/gemm_kquant_mma.cu:
// weights dequantized and rounded to bf16); activations rounded to bf16,
// mma.sync with f32 sums.
// The same kernels multiply routed experts in prefill (their grouped form,
// chosen by arguments: a tile table of up to kMmaGemmTileRows rows of one
// expert each, expertRowTiles).
bool gemmMmaFits(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures);
// `splitRows`: a dense Q8_0 matrix kept with split rows (GemvVariant::SplitRows).
StatusOr<KernelSpec> gemmMmaSpec(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                                 bool splitRows = false);
constexpr int64_t kMmaGemmTileRows = 64;
// Every kernel the products of a dense matrix use: its decode and prefill
// GEMVs, the planes and their quantization where its rows are split (not for
// `perHead` stacks), and the tensor-core GEMM with `mma` where it fits.
std::vector<StatusOr<KernelSpec>> denseMatrixSpecs(gguf::GgmlType type, int64_t outFeatures,
                                                   int64_t inFeatures, bool perHead, bool mma);
// The tile table of a grouped GEMM: assignment rows grouped by expert
// (`groupSizes[e]` rows of expert e after expert e-1's) in tiles of up to
// `tileRows` rows within one expert, each {expert, first row, end row}.
std::vector<int32_t> expertRowTiles(const std::vector<int64_t> &groupSizes, int64_t tileRows);
// The `assignments` assignments (assignment a: token a / topK's choice of
// expert expertOf[a]) in expert order, as the grouped GEMMs read them:
// `sizes` (resized to `experts`) gets each expert's rows, and row j of the
// order reads x row rowIndex[j] (its token) into result row outRows[j] (its
// assignment). `next` is working room, kept by callers that group every
// step. Returns the first id outside [0, experts), or nothing where all are
// valid (then the order is written).
std::optional<int32_t> orderAssignmentsByExpert(const int32_t *expertOf, int64_t assignments,
                                                int64_t topK, int64_t experts,
                                                std::vector<int64_t> &sizes,
                                                std::vector<int64_t> &next, int32_t *rowIndex,
                                                int32_t *outRows);
// Whether `arch` ("sm_86", "compute_80", "sm_90a") has mma.sync for bf16.
bool archHasBf16Mma(const std::string &arch);
// Whether every kernel entry of `source` (a kernel file's text) waits for
// the kernel queued before it (KT_WAIT_FOR_PRIOR_GRID, common.cuh), so that
// it may be launched to overlap that kernel.
bool kernelWaitsForPriorGrid(std::string_view source);
// Thread blocks of the GEMV of `type` for `outFeatures` rows of `inFeatures`.
unsigned gemvGridBlocks(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                        int64_t tokenTile = 1);
// Warps sharing each row of a one-token GEMV (K_SPLIT; their
// partial sums added in shared memory): matrices of few rows get warps
// enough to keep the GPU's memory busy (kGemvDecodeWarps, twice as many for
// k-quants), long rows at most kGemvWarpSteps 16-byte steps per lane and warp
// while the matrix has fewer than kGemvLongRowWarps warps, and every warp at
// least two steps (k-quants 1.75). 1 for token tiles and grouped GEMVs. (H100 measurements behind
// the constants: docs/gpu-kernels.md, gpu_kernel_bench --gemv-sweep.)
unsigned gemvColumnSplit(gguf::GgmlType type, int64_t outFeatures, int64_t inFeatures,
                         int64_t tokenTile = 1, GemvVariant variant = GemvVariant::Plain);
// Rows per block of a GEMV whose rows take `split` warps each: blocks of
// kGemvRowsPerBlock warps, or one row of `split` warps.
unsigned gemvSplitRowsPerBlock(unsigned split);
// Sets a GEMV specialization's ROWS_PER_BLOCK and K_SPLIT for `split` warps
// a row; returns the block's threads.
unsigned gemvSetColumnSplit(std::map<std::string, std::string> &defines, unsigned split);
constexpr int64_t kGemvDecodeWarps = 4096;
constexpr int64_t kGemvWarpSteps = 16;
constexpr int64_t kGemvLongRowWarps = 32768;
constexpr unsigned kGemvMaxColumnSplit = 16;

// A kernel of independent f32 FMA chains, `iterations` steps of 8 per
// thread: the FLOP ceiling benchmarks compare compute-bound kernels with
// (2 FLOP per FMA).
StatusOr<KernelSpec> fmaCeilingSpec(int64_t iterations);
constexpr int64_t kFmaCeilingChains = 8;

// DeepSeek's expert choice from router logits (one block per token; the
// runtime/cpu/MoeRouting rules).
struct MoeGateShape {
  int64_t experts = 0, topK = 0, groups = 1, groupsUsed = 1;
  bool sigmoid = true, hasBias = false, normalize = true;
  float scale = 1.0f;
};
StatusOr<KernelSpec> moeGateSpec(const MoeGateShape &shape);

// RoPE over `heads` heads of `headStride` floats per token, the `dims`
// values at `ropeOffset` of each (the inverse frequencies are an argument).
struct RopeShape {
  int64_t dims = 64, heads = 1, headStride = 64, ropeOffset = 0;
  float cosSinScale = 1.0f;
};
StatusOr<KernelSpec> ropeSpec(const RopeShape &shape);

// MLA attention of several tokens over the latent cache, each over its
// causal prefix (flash-style: one block per token and group of heads).
StatusOr<KernelSpec> mlaPrefillSpec(int64_t kvLoraRank, int64_t ropeDims, float softmaxScale,
                                    int64_t heads);
// The same core on tensor cores (kernels/mla_prefill_mma.cu, sm_80+): bf16
// products, for long prefills; blocks of 64 (token, head) rows and 256
// threads with mlaPrefillMmaSharedBytes() of dynamic shared memory.
StatusOr<KernelSpec> mlaPrefillMmaSpec(int64_t kvLoraRank, int64_t ropeDims, float softmaxScale,
                                       int64_t heads);
unsigned mlaPrefillMmaSharedBytes(int64_t kvLoraRank, int64_t ropeDims);
// Decode on the same core (kernels/mla_decode_mma.cu, sm_80+): one block per
// 16 rowGroups heads and piece of the positions (kMlaDecodePieces), 64 rowGroups
// threads with mlaDecodeMmaSharedBytes(); its pieces go to mla_combine. It
// works for tokens that see at least its `mmaFrom` argument positions, and
// mla_decode_split (given the same) for the others.
// 64 heads a block: staging the chunk (f32 cache to bf16) is shared by more
// rows; on the H100 16 and 32 heads a block took 1.7x and 1.1x as long at
// 4096 positions, 2.0x and 1.3x at 32768.
constexpr int kMlaDecodeMmaRowGroups = 4;
StatusOr<KernelSpec> mlaDecodeMmaSpec(int64_t kvLoraRank, int64_t ropeDims, float softmaxScale,
                                      int64_t heads, int rowGroups = kMlaDecodeMmaRowGroups);
unsigned mlaDecodeMmaSharedBytes(int64_t kvLoraRank, int64_t ropeDims,
                                 int rowGroups = kMlaDecodeMmaRowGroups);
// Positions from which decode attention runs on tensor cores (below, the
// f32 kernel is as fast and exact to 1e-6).
constexpr int kMlaDecodeMmaFrom = 1024;
constexpr int64_t kMlaPrefillMmaRows = 64;
// Heads (warps) per block of mla_prefill and mla_decode_split: the largest
// of 16, 8, 4, 2, 1 dividing `heads`; their grids have heads / this blocks
// per token or chunk.
int64_t mlaHeadsPerBlock(int64_t heads);

// The decode attention split over kMlaDecodePieces chunks of the positions
// the token sees (entry "mla_decode_split", one block per piece and group of
// mlaHeadsPerBlock(heads) heads; kernels/mla_pieces.cuh) and the merge of
// the pieces (entry "mla_combine", one block per head); the token's position
// is read from device memory, so CUDA graphs replay them.
// 64 pieces: at 576 positions, chunks of 256 over the cache's length (3
// chunks used) took 130 us in a decode graph on the H100, 64 pieces 28 us;
// the tensor-core core gets 2 x 64 blocks (2 fit an SM) from 1024 positions
// on: 105 -> 72 us at 4096 positions, 337 -> 276 us at 32768.
constexpr int64_t kMlaDecodePieces = 64;
// mla_combine takes the pieces' factors a thread each (256 threads).
static_assert(kMlaDecodePieces <= 256, "at most a piece per thread of mla_combine");
StatusOr<KernelSpec> mlaDecodeSplitSpec(int64_t kvLoraRank, int64_t ropeDims, float softmaxScale,
                                        int64_t heads, const std::string &entry);
// Appends rows of kv_a's [latent | rope key] to the latent cache at
// positions read from device memory (one block per token), the latent
// normalized (kv_a_norm, epsilon `eps`) and the rope key rotated on the way.
StatusOr<KernelSpec> mlaCacheAppendSpec(int64_t kvLoraRank, int64_t ropeDims, float eps,
                                        float cosSinScale);

// Entry "moe_combine": out[t] = sum over the TOP_K slots of weights[t][k] *
// y[t][k] ([hidden] each), the routed experts' outputs combined with the
// gate's weights; entry "expert_counts": adds each chosen id to a u64 count
// per expert (routing statistics).
StatusOr<KernelSpec> moeCombineSpec(int64_t hidden, int64_t topK,
                                    const std::string &entry = "moe_combine");

// silu_mul and add over `count` floats per token (entry "silu_mul" or "add"),
// or silu_mul_fp8: silu_mul's values quantized for the FP8 GEMM instead
// (count a multiple of 128).
StatusOr<KernelSpec> elementwiseSpec(const std::string &entry, int64_t count);
// Greedy sampling over `vocab` logits per row (one block per row).
StatusOr<KernelSpec> argmaxSpec(int64_t vocab);
// Sampling at a temperature with top-k and top-p (kernels/sample.cu), one
// block per row; its parameters are packed per row by packSampleParams.
StatusOr<KernelSpec> sampleSpec(int64_t vocab);
constexpr size_t kSampleParamsBytes = 32;
void packSampleParams(const exec::TokenSampling &sampling, uint8_t *out);

// The shapes of a model that the GPU kernels are specialized on.
struct ModelKernelShapes {
  int64_t hidden = 0;
  int64_t vocab = 0;
  float rmsNormEps = 1e-6f;
  gguf::GgmlType embeddingType = gguf::GgmlType::F32;
  std::vector<int64_t> extraNormWidths; // e.g. q_lora_rank, kv_lora_rank
  struct Matrix {
    gguf::GgmlType type;
    int64_t out, in;
    bool perHead = false; // MLA's k_b and v_b stacks
  };
  std::vector<Matrix> gemvMatrices; // q8_0, q4_K, q5_K and q6_K matrices
  std::vector<MoeGateShape> gates;
  std::vector<RopeShape> ropes;
  struct Mla {
    int64_t kvLoraRank, ropeDims;
    float softmaxScale;
    int64_t heads;
    float cosSinScale = 1.0f; // the rope's
  };
  std::vector<Mla> mlaDecode;
  std::vector<int64_t> elementwiseCounts;               // hidden, ffn widths
  std::vector<std::pair<int64_t, int64_t>> fp8Matrices; // {out, in}
  bool fp8Gemm = false;     // the target runs the FP8 prefill GEMM (sm_90a)
  bool fp8Bf16Gemm = false; // the target runs the bf16 one (sm_80 to sm_89)
  bool mmaGemm = false;     // the target has bf16 mma.sync (sm_80 and newer)
  // Routed experts placed on the GPU.
  struct Experts {
    gguf::GgmlType type;
    int64_t hidden, ffn, topK;
  };
  std::vector<Experts> gpuExperts;
};

// Every specialization the model needs, without duplicates.
StatusOr<std::vector<KernelSpec>> allKernelSpecializations(const ModelKernelShapes &shapes);

} // namespace kt::cuda
