// SiLU-gated feed-forward blocks: dense MLPs, shared experts and the routed
// experts of MoE layers.
#pragma once

#include "runtime/cpu/AnonymousMemory.h"
#include "runtime/cpu/ExpertGemm.h"
#include "runtime/cpu/Linear.h"
#include "runtime/cpu/Math.h"
#include "runtime/cpu/ThreadPool.h"
#include "runtime/exec/Executor.h"
#include "runtime/gguf/GgufFile.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace kt::cpu {

struct FfnMatrices {
  WeightMatrix gate; // [ffn][hidden]
  WeightMatrix up;   // [ffn][hidden]
  WeightMatrix down; // [hidden][ffn]
};

// One NUMA node's copy of a band of rows of an expert's three matrices:
// gate and up rows [gateUpFirst, gateUpFirst + w.gate.rows), down rows
// [downFirst, downFirst + w.down.rows), as matrices of their own.
struct FfnBand {
  FfnMatrices w;
  int64_t gateUpFirst = 0, downFirst = 0;
};

// What generated kernels read of the input rows of a matrix product besides
// the rows themselves (GeneratedKernels.h); scratch the caller provides
// where a kernel needs it, else null.
struct KernelInput {
  float *sums = nullptr;       // tokens x cols / 32
  int8_t *quantized = nullptr; // tokens x cols ("q8" kernels)
  int8_t *quantizedNibbleOrder = nullptr; // the same in nibble order ("q8-nibble-order")
  float *scales = nullptr;     // tokens x cols / 256
  int16_t *sums16 = nullptr;   // tokens x cols / 16
};

// One feed-forward over a batch of token rows.
struct FfnBatch {
  FfnMatrices w;
  const float *x = nullptr; // tokens x hidden
  int64_t tokens = 0;
  float *out = nullptr;     // tokens x hidden
  float *gate = nullptr;    // tokens x ffn scratch: silu(gate x) * up x
  float *up = nullptr;      // tokens x ffn scratch
  // With generated kernels (FfnMatrices' WeightMatrix::kernel): their
  // inputs derived from x (gate and up) and from the gated product (down).
  KernelInput xInput;
  KernelInput gateInput;
  // With NUMA placement: a band per node of the pool (node n's threads
  // multiply band n's rows); null: every row from w.
  const FfnBand *bands = nullptr;
  // The first givenGatedRows of the gated rows are given (in `gate`, by
  // runFeedForward's beforeDown): the gate and up products cover the rows
  // after them only; all of them (the matrices' rows): only the down
  // product runs.
  int64_t givenGatedRows = 0;
};

// out = down(silu(gate x) * up x) for every batch. The rows of all batches
// are split over the pool together (first the gate/up rows, then the down
// rows), and each weight row is decoded once for all the batch's tokens.
// `beforeDown` runs between the two (batches with givenGatedRows get those
// rows there). `callerFirst`, if given, runs once on the calling
// thread while the other threads start the gate/up rows (ThreadPool), or
// first when there are none.
void runFeedForward(
    ThreadPool &pool, const std::vector<FfnBatch> &batches, FunctionRef<void()> beforeDown = [] {},
    const std::function<void()> *callerFirst = nullptr);

// Assignments of RoutedExperts::forward whose gated rows silu(gate x) * (up
// x) another device computes, all of them or the first few: forward() skips
// those rows of their experts' gate and up products and, between its
// gate/up and down products, has `fill` write each such assignment's given
// rows. Every assignment of such an expert must be given as many.
struct GivenGatedRows {
  const int32_t *rows = nullptr; // per assignment (tokens x topK): leading rows given, 0: none
  std::function<void(int64_t assignment, float *row, int64_t rows)> fill;
};

// One feed-forward through the generated AMX tile kernels (prefill: every
// matrix has WeightMatrix::kernel.tiles and rows a multiple of kTileRows).
struct TileFfnBatch {
  FfnMatrices w;
  const float *x = nullptr; // tokens x hidden
  int64_t tokens = 0;
  float *out = nullptr;         // tokens x hidden
  float *gate = nullptr;        // tokens x ffn scratch
  float *up = nullptr;          // tokens x ffn scratch
  uint16_t *xBf16 = nullptr;    // paddedTileTokens(tokens) x hidden scratch
  uint16_t *gateBf16 = nullptr; // paddedTileTokens(tokens) x ffn scratch
  const FfnBand *bands = nullptr; // as FfnBatch::bands
};
int64_t paddedTileTokens(int64_t tokens);
// Whether the tile kernels can run `w` (all three matrices).
bool runsOnTiles(const FfnMatrices &w);
// out = down(silu(gate x) * up x) for every batch: the activations rounded
// to bf16 once, then kTileRows-row panels of all batches over the pool (gate/up,
// then down), each panel decoded once for all its batch's tokens.
void runTileFeedForward(ThreadPool &pool, const std::vector<TileFfnBatch> &batches);
// y = W x through `w`'s tile kernel (x: f32 rows of w.cols; xBf16 scratch
// of paddedTileTokens(tokens) x w.cols), panels over the pool.
void tileMatmul(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens,
                uint16_t *xBf16, float *y, int64_t ldy);

// The routed experts of a MoE layer: 3-D gate/up [hidden, ffn, experts] and
// down [ffn, hidden, experts] tensors (GGML order).
class RoutedExperts {
public:
  // With `kernels`, the matrices use the plan's generated kernels for their
  // type and width where it has them.
  RoutedExperts(const gguf::TensorInfo &gate, const gguf::TensorInfo &up,
                const gguf::TensorInfo &down, const GeneratedKernels *kernels = nullptr);
  // Whether gate, up and down run generated code.
  bool usesGeneratedKernels() const;
  // Experts chosen by at least this many tokens of a step run their three
  // products as bf16 GEMMs (ExpertGemm) when the build has oneDNN; 0: never.
  void setGemmTokens(int64_t tokens) { gemmTokens_ = tokens; }
  // An expert's rows of one sequence run its three products through the
  // plan's AMX tile kernels (where it has them) when at least this many of
  // that sequence's tokens in the step chose it; 0: never.
  void setTileTokens(int64_t tokens) { tileTokens_ = tokens; }
  // Whether the experts' matrices have tile kernels.
  bool hasTileKernels() const;
  // On a pool over several NUMA nodes: copies every expert's rows into the
  // memory of the node whose threads multiply them (a band of rows per
  // node, written by that node's threads: first touch), and releases the
  // pages of the model file's mapping it read. Returns the bytes copied
  // (0 on a single node, where nothing changes).
  StatusOr<uint64_t> placeOnNodes(ThreadPool &pool);
  // On one node: copies all experts' weights into one anonymous mapping in
  // transparent huge pages (fewer TLB misses while the kernels stream them:
  // about 5% more bytes/s on the GPU machine, docs/cpu-codegen.md), reads
  // them there from then on, and releases the pages of the model file's
  // mapping it read. Refused where the host's transparent huge pages are
  // off or its available memory is short of the copy. Returns the bytes
  // copied (the tensors', without the padding to huge pages).
  StatusOr<uint64_t> copyIntoHugePages(ThreadPool &pool);

  int64_t experts() const { return experts_; }
  int64_t hidden() const { return hidden_; }
  // The gate, up and down bytes where forward() reads them (the model
  // file's mapping or the huge-page copy); empty after placeOnNodes.
  std::vector<exec::HostBytes> bytes() const;

  // out[t] = sum_k weights[t][k] * expert_{ids[t][k]}(x[t]). Tokens are
  // grouped by expert so that every chosen expert's matrices are read once
  // for all the tokens that chose it. A negative id skips its assignment
  // (its expert runs elsewhere: the GPU expert cache).
  // `segmentStarts`: the first token of each sequence of the step (in
  // order; null: one sequence). With `phases`, adds the wall time of its
  // parts to it.
  // With `given`, the assignments it marks get their gated rows from it.
  // `callerFirst` runs once on the calling thread, as runFeedForward's
  // (after the tile and GEMM experts of many tokens), before any gated row
  // is filled.
  void forward(ThreadPool &pool, Workspace &workspace, const float *x, int64_t tokens,
               const int32_t *ids, const float *weights, int64_t topK, float *out,
               const std::vector<int64_t> *segmentStarts = nullptr,
               exec::ExpertPhaseSeconds *phases = nullptr, const GivenGatedRows *given = nullptr,
               const std::function<void()> *callerFirst = nullptr) const;

private:
  FfnMatrices expert(int64_t e) const;
  const FfnBand *bandsOf(int64_t e) const; // null without NUMA placement

  struct NodeCopies; // the NUMA bands of every expert and their memory

  WeightMatrix gate_, up_, down_; // all experts' rows
  std::shared_ptr<const NodeCopies> nodeCopies_; // null: no NUMA placement
  std::shared_ptr<const AnonymousMemory>
      hugePageCopy_; // gate_, up_, down_'s bytes; null: the file's
  int64_t experts_, hidden_, ffn_;
  int64_t gemmTokens_ = 0;
  int64_t tileTokens_ = 0;
  mutable ExpertGemm gemm_; // scratch reused by forward()
};

// The routed experts' bytes (RoutedExperts::bytes) of every step among an
// executor's bound `steps` that is an `ExpertsStep` (whose experts() gives
// its RoutedExperts), in order: Executor::routedExpertBytes.
template <class ExpertsStep, class BoundSteps>
std::vector<exec::HostBytes> routedExpertBytesOf(const BoundSteps &steps) {
  std::vector<exec::HostBytes> ranges;
  for (const auto &bound : steps)
    if (auto *experts = dynamic_cast<const ExpertsStep *>(bound.step.get()))
      for (const exec::HostBytes &range : experts->experts().bytes())
        ranges.push_back(range);
  return ranges;
}

// RoutedExperts::placeOnNodes for an executor (on one node with
// `hugePages`, copyIntoHugePages): adds the bytes and time to `placement`
// and, on the first call, describes the pool's nodes there.
Status placeExperts(RoutedExperts &experts, ThreadPool &pool, exec::NumaPlacement &placement,
                    bool hugePages = false);

} // namespace kt::cpu
