#include "runtime/cuda/Fp8Gemm.h"

#include "runtime/cuda/KernelCatalog.h"

#include <algorithm>

namespace kt::cuda {
namespace {

constexpr int64_t kSlice = 128;     // columns per scale (and per TMA box)
constexpr int64_t kMinSlicesPerSplit = 4;

int64_t ceilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

int64_t tiles(int64_t rows, int64_t out, unsigned blockN) {
  return ceilDiv(rows, kFp8GemmTileRows) * (out / blockN);
}

// Activations to e4m3 (rows `rowIndex` picks, or all in order), one warp
// per token and slice, into the scratch.
Status quantizeActivations(CudaDevice &device, const Fp8GemmKernels &kernels, int64_t in,
                           DevicePointer x, int64_t xStride, DevicePointer rowIndex, int64_t rows,
                           const Fp8GemmScratch &scratch) {
  int xs = int(xStride), tokens = int(rows), scaleStride = int(fp8GemmScaleStride(scratch.rows));
  DevicePointer q = scratch.activations, qScales = scratch.scales;
  LaunchShape quantize;
  quantize.gridX = unsigned(ceilDiv(rows * (in / kSlice) * 32, 256));
  quantize.blockX = 256;
  scratch.holds = {};
  scratch.producer = {};
  Status s = device.launch(*kernels.quantize, quantize,
                           {&x, &xs, &tokens, &q, &qScales, &scaleStride, &rowIndex});
  if (s.ok())
    scratch.holds = {x, rowIndex, rows, xStride, in};
  return s;
}

// The GEMM's operands for `rows` activations quantized into the scratch,
// against a kernel of `outFeatures` columns, into `out` (rows `outStride`
// floats apart).
Fp8GemmOperands scratchOperands(const Fp8GemmScratch &scratch, int64_t rows, int64_t outFeatures,
                                DevicePointer out, int64_t outStride) {
  Fp8GemmOperands operands;
  operands.activations = scratch.activations;
  operands.scales = scratch.scales;
  operands.scaleStride = fp8GemmScaleStride(scratch.rows);
  operands.rows = rows;
  operands.outFeatures = outFeatures;
  operands.out = out;
  operands.outStride = outStride;
  return operands;
}

} // namespace

Status runFp8GroupedGemm(CudaDevice &device, const Fp8GemmKernels &kernels,
                         const Fp8GemmWeight &experts, int64_t out, DevicePointer x,
                         int64_t xStride, DevicePointer rowIndex, int64_t rows,
                         DevicePointer tiles, int64_t tileCount, DevicePointer y,
                         int64_t yStride, const Fp8GemmScratch &scratch, DevicePointer outRows) {
  if (rows <= 0 || tileCount <= 0)
    return Status::success();
  if (rows > scratch.rows || experts.in > scratch.in)
    return Status::error("the FP8 GEMM's scratch holds " + std::to_string(scratch.rows) +
                         " rows of " + std::to_string(scratch.in) + " values, not " +
                         std::to_string(rows) + " of " + std::to_string(experts.in) + ".");
  if (out <= 0 || out % kernels.config.blockN != 0 || experts.out % out != 0)
    return Status::error("the grouped FP8 GEMM's experts have " + std::to_string(out) +
                         " rows, which do not divide the stacked weight's " +
                         std::to_string(experts.out) + ".");
  if (Status s =
          quantizeActivations(device, kernels, experts.in, x, xStride, rowIndex, rows, scratch);
      !s.ok())
    return s;
  Fp8GemmOperands operands = scratchOperands(scratch, rows, out, y, yStride);
  operands.groupTiles = tiles;
  operands.groupEntries = tileCount;
  operands.outRows = outRows;
  return launchFp8GemmKernel(device, *kernels.gemm, kernels.config, experts, operands);
}

Status launchFp8GemmKernel(CudaDevice &device, const LoadedKernel &gemm,
                           const Fp8GemmConfig &config, const Fp8GemmWeight &weight,
                           const Fp8GemmOperands &operands) {
  const int64_t rows = operands.rows;
  if (operands.outStride % 2 != 0 || operands.out % 8 != 0)
    return Status::error("the FP8 GEMM stores pairs of floats: its output must start 8-byte "
                         "aligned with rows an even number of floats apart, not " +
                         std::to_string(operands.outStride) + ".");
  StatusOr<TensorMap> aMap =
      device.byteMatrixTensorMap(operands.activations, uint64_t(weight.in), uint64_t(rows),
                                 uint64_t(weight.in), kSlice, unsigned(kFp8GemmTileRows));
  if (!aMap)
    return aMap.status();
  // A's scales as a [in / 128][rows] matrix: a box is one slice's scales of
  // a tile's rows, from the 4-aligned row at or before its first.
  StatusOr<TensorMap> scaleMap = device.floatMatrixTensorMap(
      operands.scales, uint64_t(rows), uint64_t(weight.in / kSlice),
      uint64_t(operands.scaleStride) * 4, unsigned(kFp8GemmTileRows + 4), 1);
  if (!scaleMap)
    return scaleMap.status();
  StatusOr<int> multiprocessors = device.multiprocessors();
  if (!multiprocessors)
    return multiprocessors.status();
  const int64_t columnTiles = operands.outFeatures / config.blockN;
  const int64_t items = operands.groupTiles
                            ? operands.groupEntries * columnTiles
                            : ceilDiv(rows, kFp8GemmTileRows) * columnTiles * operands.splits;
  if (items <= 0)
    return Status::success();
  TensorMap bMap = weight.map;
  DevicePointer bScales = weight.scales, out = operands.out, groupTiles = operands.groupTiles,
                outRows = operands.outRows;
  int outStride = int(operands.outStride), count = int(rows), splits = int(operands.splits),
      groupEntries = int(operands.groupEntries);
  long long splitStride = operands.splits > 1 ? rows * operands.outFeatures : 0;
  LaunchShape launch;
  launch.gridX = unsigned(std::min<int64_t>(items, *multiprocessors)); // persistent blocks
  launch.blockX = 384;
  launch.sharedBytes = fp8GemmSharedBytes(config);
  return device.launch(gemm, launch,
                       {&*aMap, &bMap, &*scaleMap, &bScales, &out, &outStride, &splitStride, &count,
                        &splits, &groupEntries, &groupTiles, &outRows});
}

StatusOr<Fp8GemmWeight> prepareFp8GemmWeight(CudaDevice &device, DevicePointer data,
                                             DevicePointer scales, int64_t out, int64_t in,
                                             const Fp8GemmConfig &config) {
  if (!fp8GemmFits(out, in))
    return Status::error("the FP8 GEMM cannot take a [" + std::to_string(out) + "][" +
                         std::to_string(in) + "] weight.");
  StatusOr<TensorMap> map = device.byteMatrixTensorMap(data, uint64_t(in), uint64_t(out),
                                                       uint64_t(in), kSlice, config.blockN);
  if (!map)
    return map.status();
  Fp8GemmWeight weight;
  weight.data = data;
  weight.scales = scales;
  weight.out = out;
  weight.in = in;
  weight.map = *map;
  return weight;
}

Status allowFp8GemmSharedBytes(CudaDevice &device, const LoadedKernel &gemm,
                               const Fp8GemmConfig &config) {
  return device.allowSharedBytes(gemm, fp8GemmSharedBytes(config));
}

unsigned fp8GemmSplits(int64_t rows, int64_t out, int64_t in, int multiprocessors,
                       unsigned blockN) {
  // As many parts as fit one wave of blocks beside the tiles.
  const int64_t parts = multiprocessors / tiles(rows, out, blockN);
  return unsigned(std::max<int64_t>(1, std::min(parts, in / kSlice / kMinSlicesPerSplit)));
}

bool fp8GemmPrefersWide(int64_t rows, int64_t out, int multiprocessors) {
  if (out <= 0 || out % 256 != 0 || multiprocessors <= 0)
    return false;
  const int64_t narrow = tiles(rows, out, 128), wide = tiles(rows, out, 256);
  if (narrow * 2 < multiprocessors)
    return false; // the narrow tiles split K instead
  const double narrowWaves = double(ceilDiv(narrow, multiprocessors));
  const double wideWaves = double(ceilDiv(wide, multiprocessors)) * 1.8;
  return wideWaves < narrowWaves;
}

Fp8GemmTiling fp8GemmTiling(int64_t rows, int64_t out, int64_t in, int multiprocessors) {
  Fp8GemmTiling tiling;
  if (fp8GemmPrefersWide(rows, out, multiprocessors))
    tiling.blockN = 256;
  else if (fp8GemmHasStraddlingTiles(out) && tiles(rows, out, 64) > multiprocessors)
    tiling.blockN = 144;
  else if (out % 128 != 0 || (rows >= kFp8GemmTileRows && tiles(rows, out, 128) < multiprocessors))
    tiling.blockN = 64;
  tiling.splits = fp8GemmSplits(rows, out, in, multiprocessors, tiling.blockN);
  return tiling;
}

size_t fp8GemmActivationBytes(int64_t rows, int64_t in) { return size_t(rows * in); }

int64_t fp8GemmScaleStride(int64_t rows) { return (rows + 3) / 4 * 4; }

size_t fp8GemmScaleBytes(int64_t rows, int64_t in) {
  return size_t(in / kSlice * fp8GemmScaleStride(rows)) * 4;
}

size_t fp8GemmPartialFloats(int64_t rows, int64_t out, int64_t in, int multiprocessors,
                            unsigned blockN) {
  // The most over every step size up to `rows` that splits K (only steps
  // of few tiles do).
  size_t most = 0;
  for (int64_t r = kFp8GemmTileRows; r < rows + kFp8GemmTileRows; r += kFp8GemmTileRows) {
    const int64_t n = std::min(r, rows);
    const unsigned splits = fp8GemmSplits(n, out, in, multiprocessors, blockN);
    if (splits > 1)
      most = std::max(most, size_t(splits) * size_t(n * out));
  }
  return most;
}

Status runFp8Gemm(CudaDevice &device, const Fp8GemmKernels &kernels, const Fp8GemmWeight &weight,
                  DevicePointer x, int64_t xStride, int64_t rows, DevicePointer y, int64_t yStride,
                  const Fp8GemmScratch &scratch, unsigned splits, bool xUnchanged,
                  uint64_t quantizedBy) {
  if (rows <= 0)
    return Status::success();
  if (rows > scratch.rows || weight.in > scratch.in)
    return Status::error("the FP8 GEMM's scratch holds " + std::to_string(scratch.rows) +
                         " tokens of " + std::to_string(scratch.in) + " values, not " +
                         std::to_string(rows) + " of " + std::to_string(weight.in) + ".");
  if (splits > 1 && splits * size_t(rows * weight.out) > scratch.partialFloats)
    return Status::error("the FP8 GEMM's scratch has no room for " + std::to_string(splits) +
                         " partial results.");
  const Fp8GemmScratch::Holds wanted{x, 0, rows, xStride, weight.in};
  const bool quantized =
      (xUnchanged && scratch.holds == wanted) ||
      (quantizedBy != 0 && scratch.producer.run == quantizedBy && scratch.producer.holds == wanted);
  if (!quantized)
    if (Status s = quantizeActivations(device, kernels, weight.in, x, xStride, 0, rows, scratch);
        !s.ok())
      return s;
  Fp8GemmOperands operands =
      splits > 1 ? scratchOperands(scratch, rows, weight.out, scratch.partials, weight.out)
                 : scratchOperands(scratch, rows, weight.out, y, yStride);
  operands.splits = splits;
  if (Status s = launchFp8GemmKernel(device, *kernels.gemm, kernels.config, weight, operands);
      !s.ok() || splits <= 1)
    return s;
  int tokens = int(rows);
  int splitCount = int(splits), yStrideInt = int(yStride);
  DevicePointer partials = scratch.partials;
  LaunchShape sum;
  sum.gridX = unsigned(std::min<int64_t>(ceilDiv(rows * weight.out, 256), 2048));
  sum.blockX = 256;
  return device.launch(*kernels.sumSplits, sum, {&partials, &splitCount, &y, &yStrideInt, &tokens});
}

} // namespace kt::cuda
