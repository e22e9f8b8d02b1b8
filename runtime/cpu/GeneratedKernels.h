// The interface between the CPU expert code ktc generates for a target ISA
// (compiler/CpuCodegen) and the runtime that loads it: the kernel ABI, the
// symbol names, and the loader of the shared object a plan names.
#pragma once

#include "runtime/gguf/GgmlType.h"
#include "runtime/plan/Plan.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kt::cpu {

// y[t * ldy + r] = <row r of w, x[t * ldx ...]> for r in [0, rows), t in
// [0, tokens). `w` points at the first row (rows are `rowBytes` apart, each
// `cols` values in the kernel's GGUF type; cols is fixed per kernel). `xsum`
// holds, per token, the sums of x over each run of 32 values
// (xsum[t * cols / 32 + b]); the kernels of types with per-block minimums
// (q4_K, q5_K) read it. Kernels whose input is "q8" (integer dot products)
// read x quantized: xq[t * cols + i] = round(x / xqScale[t * cols / 256 + i / 256])
// and xqSum16[t * cols / 16 + j], the sums of xq over runs of 16 (16 bits
// suffice: |sum| <= 16 * 127; the kernels multiply-add them as words); the "f32"
// kernels read x and ignore those. "q8-nibble-order" kernels (q4_K and q5_K
// on 512-bit vectors) read xq with the 32-value groups of every 128 values in
// the order 0, 2, 1, 3 (the groups of a 64-byte piece of qs's low nibbles,
// then its high ones); xqScale and xqSum16 stay in order.
using RowKernel = void (*)(const uint8_t *w, uint64_t rowBytes, int64_t rows, const float *x,
                           int64_t ldx, const float *xsum, const int8_t *xq, const float *xqScale,
                           const int16_t *xqSum16, int64_t tokens, float *y, int64_t ldy);

// Tile kernels ("bf16-tiles", AMX targets; prefill): y[t * ldy + r] = <row
// r of w, x[t]> for r in [0, rows), t in [0, tokens), weights and
// activations rounded to bf16, sums in f32. `rows` is a multiple of
// kTileRows; x holds the activations packed as AMX B tiles
// (packTileActivations), through the next multiple of kTileTokens tokens;
// y is written only for the tokens; `scratch` is
// tileKernelScratchBytes(cols), 64-byte aligned, one per thread. The
// thread must have AMX tile data (enableAmxTiles()).
using TileKernel = void (*)(const uint8_t *w, uint64_t rowBytes, int64_t rows, const uint16_t *x,
                            int64_t tokens, float *y, int64_t ldy, uint8_t *scratch);
constexpr int64_t kTileRows = 64, kTileTokens = 16;
// The decoded panel (kTileRows rows of bf16) and the f32 accumulators.
constexpr size_t tileKernelScratchBytes(int64_t cols) {
  return static_cast<size_t>(cols * 2 * kTileRows + kTileRows * kTileTokens * 4);
}
// `tokens` rows of x (f32, `ldx` apart, `cols` values) rounded to bf16 (to
// nearest, ties to even) in the layout of AMX B tiles: per 16 tokens and 32
// values one 1 KiB tile, row p holding the pairs (2p, 2p + 1) of the 16
// tokens side by side: out[((t / 16) * (cols / 32) + c / 32) * 512 +
// (c % 32 / 2) * 32 + (t % 16) * 2 + c % 2]. Tokens after `tokens` up to the
// next multiple of kTileTokens are zero. A range of tokens starting at a
// multiple of 16 packs on its own at out + first * cols.
void packTileActivations(const float *x, int64_t ldx, int64_t cols, int64_t tokens, uint16_t *out);
// Asks the kernel for AMX tile data for this process (Linux 5.16+); the
// reason when it refuses, else empty.
std::string enableAmxTiles();

// A kernel and what it reads.
struct LoadedKernel {
  RowKernel function = nullptr;
  bool quantizedInput = false;   // "q8" or "q8-nibble-order": needs quantizeActivations()
  bool nibbleOrderInput = false; // "q8-nibble-order": xq in nibble order
  TileKernel tiles = nullptr;  // prefill tile kernel, if the code has one
};

// Weight types the generator has kernels for.
bool hasGeneratedRowKernel(gguf::GgmlType type);
// "kt_rows_q4_K_7168": the kernel for `cols`-wide rows of `type`.
std::string rowKernelSymbol(gguf::GgmlType type, int64_t cols);

// "kt_rows_q4_K_7168_input": a C string in the code object naming what that
// kernel reads ("f32", "q8" or kNibbleOrderInput).
std::string rowKernelInputSymbol(gguf::GgmlType type, int64_t cols);
// That record in the code object `handle` (dlopen()ed), or null where the
// object has none (objects from before nibble order).
const char *rowKernelInputRecord(void *handle, gguf::GgmlType type, int64_t cols);
// The input of kernels that read xq in nibble order.
inline constexpr const char *kNibbleOrderInput = "q8-nibble-order";

// "kt_tiles_q4_K_7168": the tile kernel for `cols`-wide rows of `type`.
std::string tileKernelSymbol(gguf::GgmlType type, int64_t cols);

// XXH3-64 of a file as 16 hex digits (the plan's record of the code object).
StatusOr<std::string> codeFileHash(const std::string &path);

// xsum for `tokens` rows of x (cols a multiple of 32).
void sumRunsOf32(const float *x, int64_t ldx, int64_t cols, int64_t tokens, float *xsum);

// xq, xqScale and xqSum16 for `tokens` rows of x (cols a multiple of 256):
// per 256 values, scale = max|x| / 127 and xq = x / scale rounded to nearest;
// xq in order where `xq` is not null, in nibble order where `xqNibbleOrder`
// is not null.
void quantizeActivations(const float *x, int64_t ldx, int64_t cols, int64_t tokens, int8_t *xq,
                         float *xqScale, int16_t *xqSum16, int8_t *xqNibbleOrder = nullptr);

// The kernels of a plan's CPU code object, dlopen()ed.
class GeneratedKernels {
public:
  // Loads `code` (path relative to the plan's directory), after checking
  // that the file is the one the plan recorded (size and hash) and that this
  // host has every ISA feature it was compiled for. Every kernel the plan
  // lists must resolve.
  static StatusOr<std::unique_ptr<GeneratedKernels>> load(const plan::CpuCode &code,
                                                          const std::string &planPath,
                                                          const std::vector<std::string> &hostFeatures);
  ~GeneratedKernels();
  GeneratedKernels(const GeneratedKernels &) = delete;
  GeneratedKernels &operator=(const GeneratedKernels &) = delete;

  // The kernel for rows of `type` and `cols` (a null function if the object
  // has none).
  LoadedKernel find(gguf::GgmlType type, int64_t cols) const;
  const std::string &path() const { return path_; }
  // Why the code's tile kernels are not used on this host (the kernel
  // refused AMX tile data), or empty.
  const std::string &tilesUnavailable() const { return tilesUnavailable_; }

private:
  GeneratedKernels() = default;
  void *handle_ = nullptr;
  std::string path_;
  std::string tilesUnavailable_;
  std::map<std::pair<gguf::GgmlType, int64_t>, LoadedKernel> kernels_;
};

} // namespace kt::cpu
