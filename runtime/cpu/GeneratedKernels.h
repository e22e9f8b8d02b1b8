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
// and xqSum16[t * cols / 16 + j], the sums of xq over runs of 16; the "f32"
// kernels read x and ignore those.
using RowKernel = void (*)(const uint8_t *w, uint64_t rowBytes, int64_t rows, const float *x,
                           int64_t ldx, const float *xsum, const int8_t *xq,
                           const float *xqScale, const int32_t *xqSum16, int64_t tokens,
                           float *y, int64_t ldy);

// A kernel and what it reads.
struct LoadedKernel {
  RowKernel function = nullptr;
  bool quantizedInput = false; // "q8": needs quantizeActivations()
};

// Weight types the generator has kernels for.
bool hasGeneratedRowKernel(gguf::GgmlType type);
// "kt_rows_q4_K_7168": the kernel for `cols`-wide rows of `type`.
std::string rowKernelSymbol(gguf::GgmlType type, int64_t cols);

// XXH3-64 of a file as 16 hex digits (the plan's record of the code object).
StatusOr<std::string> codeFileHash(const std::string &path);

// xsum for `tokens` rows of x (cols a multiple of 32).
void sumRunsOf32(const float *x, int64_t ldx, int64_t cols, int64_t tokens, float *xsum);

// xq, xqScale and xqSum16 for `tokens` rows of x (cols a multiple of 256):
// per 256 values, scale = max|x| / 127 and xq = x / scale rounded to nearest.
void quantizeActivations(const float *x, int64_t ldx, int64_t cols, int64_t tokens, int8_t *xq,
                         float *xqScale, int32_t *xqSum16);

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

private:
  GeneratedKernels() = default;
  void *handle_ = nullptr;
  std::string path_;
  std::map<std::pair<gguf::GgmlType, int64_t>, LoadedKernel> kernels_;
};

} // namespace kt::cpu
