// The FP8 prefill GEMM (kernels/gemm_fp8.cu) from the host: activations
// quantized per token and 128 columns (kernels/fp8_quantize.cu), then
// y = x W^T on sm_90a's tensor cores, split along K where the output tiles
// alone would leave most SMs idle.
#pragma once

#include "runtime/cuda/CudaDevice.h"
#include "runtime/cuda/KernelCatalog.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <vector>

namespace kt::cuda {

// The loaded kernels of one weight shape: gemmFp8Spec with `config`,
// gemmFp8SumSpec and fp8QuantizeSpec (KernelCatalog.h).
struct Fp8GemmKernels {
  const LoadedKernel *quantize = nullptr, *gemm = nullptr, *sumSplits = nullptr;
  Fp8GemmConfig config;
};

// An FP8 weight in GPU memory: [out][in] e4m3 and its [ceil(out/128)][in/128]
// block scales, with the tensor map the GEMM copies it through (boxes of
// the config's columns per block).
struct Fp8GemmWeight {
  DevicePointer data = 0, scales = 0;
  int64_t out = 0, in = 0;
  TensorMap map;
};
StatusOr<Fp8GemmWeight> prepareFp8GemmWeight(CudaDevice &device, DevicePointer data,
                                             DevicePointer scales, int64_t out, int64_t in,
                                             const Fp8GemmConfig &config);
// Lets the GEMM kernel use its shared memory.
Status allowFp8GemmSharedBytes(CudaDevice &device, const LoadedKernel &gemm,
                               const Fp8GemmConfig &config);

// How many parts K is split into for `rows` tokens: as many as keep the
// blocks (tiles x parts) within one wave on `multiprocessors`, each part at
// least 4 slices of 128; 1 once the tiles alone fill half the SMs.
unsigned fp8GemmSplits(int64_t rows, int64_t out, int64_t in, int multiprocessors, unsigned blockN);

// Whether `rows` tokens run faster on 256-column tiles than on 128-column
// ones (rows a multiple of 256): where the narrow tiles need no split and
// the wide ones take fewer waves of blocks, a wide tile taking 1.8 times as
// long (measured on the H100 at V3's shapes, docs/gpu-kernels.md).
bool fp8GemmPrefersWide(int64_t rows, int64_t out, int multiprocessors);

// The tile width (one of gemmFp8TileSpecs') and K split for `rows` tokens
// of an [out][in] weight: 256 columns where fp8GemmPrefersWide; 144 where
// the rows divide into 144s but not 128s and 64-column tiles would take
// more than one wave (kv_a at 2048 and 4096 tokens: 30.1 us split in 2 and
// 38.4 against 35.9 and 58.4 on the H100; at 1024, 19.6 against 19.2); else 128
// where those tiles fill the SMs at least once or the step has fewer rows
// than a tile (mostly empty activation tiles: narrower ones would copy more
// of them); else 64 (more tiles rather than split K, which costs a pass
// over the partial results); split only while the tiles fill less than
// half the SMs (measured on the H100: fp8_gemm_bench --split-sweep,
// docs/gpu-kernels.md).
struct Fp8GemmTiling {
  unsigned blockN = 128, splits = 1;
};
Fp8GemmTiling fp8GemmTiling(int64_t rows, int64_t out, int64_t in, int multiprocessors);

// GPU memory the GEMM works in, for up to `rows` tokens of up to `in`
// values and `partialFloats` floats of split-K partial results.
struct Fp8GemmScratch {
  DevicePointer activations = 0; // e4m3 [rows][in]
  DevicePointer scales = 0;      // f32 [in / 128][fp8GemmScaleStride(rows)]
  DevicePointer partials = 0;    // f32 [splits][rows][out]
  int64_t rows = 0, in = 0;
  size_t partialFloats = 0;
  // Whose quantization the activations hold (queued last): x, its row index
  // (0: in order), rows, stride and width.
  struct Holds {
    DevicePointer x = 0, rowIndex = 0;
    int64_t rows = 0, stride = 0, in = 0;
    bool operator==(const Holds &o) const {
      return x == o.x && rowIndex == o.rowIndex && rows == o.rows && stride == o.stride &&
             in == o.in;
    }
  };
  mutable Holds holds;
  // A quantization a fused producer (rms_norm_fp8) wrote, and its run
  // (runFp8Gemm's quantizedBy): kept over other GEMVs until the scratch is
  // written again.
  struct Produced {
    Holds holds;
    uint64_t run = 0;
  };
  mutable Produced producer;
};
// Floats between slices of the activations' scales for up to `rows` tokens
// (a multiple of 4: the GEMM copies them through a tensor map).
int64_t fp8GemmScaleStride(int64_t rows);
// Bytes of each part, for the largest `rows`, `in` and `partialFloats`.
size_t fp8GemmActivationBytes(int64_t rows, int64_t in);
size_t fp8GemmScaleBytes(int64_t rows, int64_t in);
// Floats of partial results of the largest split of `rows` tokens by `out`.
size_t fp8GemmPartialFloats(int64_t rows, int64_t out, int64_t in, int multiprocessors,
                            unsigned blockN);

// y[t] = W x[t] for `rows` tokens: x f32 rows `xStride` floats apart, y
// rows `yStride` apart; `splits` from fp8GemmSplits. Queued on the device's
// stream (CUDA graphs may capture it). `xUnchanged`: the caller has not
// written x since the last GEMM that read it, so where the scratch still
// holds x's quantization (no other quantization since) it is used again
// (q_a and kv_a, gate and up read the same x).
// `quantizedBy` (non-zero): the producer run that wrote x's quantization
// into the scratch (Fp8GemmScratch::producer), used where it is still there.
Status runFp8Gemm(CudaDevice &device, const Fp8GemmKernels &kernels, const Fp8GemmWeight &weight,
                  DevicePointer x, int64_t xStride, int64_t rows, DevicePointer y, int64_t yStride,
                  const Fp8GemmScratch &scratch, unsigned splits, bool xUnchanged = false,
                  uint64_t quantizedBy = 0);

// The GEMM's block tile: 128 tokens (or assignment rows).
constexpr int64_t kFp8GemmTileRows = 128;

// Y[j] = W[expert of j] x[rowIndex[j]] for the `rows` assignment rows j,
// grouped by expert as `tiles` (expertRowTiles of kFp8GemmTileRows, `tileCount` of them, on
// the device) says. `experts` holds every expert's [out][in] weight stacked
// (prepareFp8GemmWeight over experts * out rows, scales [experts][out /
// 128][in / 128]); `rowIndex` (device ints, or 0 for the identity) picks x's
// rows as the quantization reads them; `outRows` (device ints, or 0) the
// rows of y the results go to. `gemm` is gemmFp8GroupedSpec's.
Status runFp8GroupedGemm(CudaDevice &device, const Fp8GemmKernels &kernels,
                         const Fp8GemmWeight &experts, int64_t out, DevicePointer x,
                         int64_t xStride, DevicePointer rowIndex, int64_t rows,
                         DevicePointer tiles, int64_t tileCount, DevicePointer y,
                         int64_t yStride, const Fp8GemmScratch &scratch,
                         DevicePointer outRows = 0);

// The GEMM kernel alone (what runFp8Gemm and runFp8GroupedGemm launch after
// quantizing): `rows` e4m3 activations [rows][weight.in] at `activations`
// with their scales [in / 128][scaleStride] at `scales`, against `weight`,
// into `out` (rows `outStride` floats apart). `outFeatures` is the kernel's
// N (the weight's rows; an expert's in the grouped form). With `splits` >
// 1, split s writes its partial result at out + s * rows * outFeatures; with
// `groupTiles` (device ints, `groupEntries` tiles), the grouped form. At
// most one persistent block per SM.
struct Fp8GemmOperands {
  DevicePointer activations = 0, scales = 0, out = 0;
  int64_t rows = 0, scaleStride = 0, outFeatures = 0, outStride = 0;
  unsigned splits = 1;
  DevicePointer groupTiles = 0, outRows = 0;
  int64_t groupEntries = 0;
};
Status launchFp8GemmKernel(CudaDevice &device, const LoadedKernel &gemm,
                           const Fp8GemmConfig &config, const Fp8GemmWeight &weight,
                           const Fp8GemmOperands &operands);

} // namespace kt::cuda
