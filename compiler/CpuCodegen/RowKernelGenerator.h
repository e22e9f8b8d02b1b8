// Generates the CPU expert code of a plan through LLVM: row kernels (the
// dot products of quantized weight rows with f32 activations, the inner loop
// of the routed experts) specialized to the weight type and row width and
// compiled for the target CPU's ISA, never for the machine running ktc.
// The kernel ABI is runtime/cpu/GeneratedKernels.h.
#pragma once

#include "runtime/gguf/GgmlType.h"
#include "runtime/plan/Plan.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <string>
#include <vector>

namespace kt::codegen {

struct CpuCodeTarget {
  std::string cpu;                   // LLVM CPU name: "sapphirerapids", "haswell", "x86-64"
  std::vector<std::string> features; // LLVM feature names the code may use
  // On AVX2 and newer targets, kernels may quantize the activations to int8
  // (per 256 values) for integer dot products; false keeps f32 everywhere.
  bool int8Activations = true;
  // Bytes ahead of the block being decoded that the row kernels prefetch
  // into L2 (the hardware streamers stop at 4 KiB pages, about one row), and
  // into L1; 0: none.
  int prefetchBytes = kDefaultPrefetchBytes;
  int nearPrefetchBytes = kDefaultNearPrefetchBytes;
  // On AMX-BF16 targets, also emit tile kernels (bf16 AMX tile products
  // for experts that many tokens chose in prefill); false: row kernels only.
  bool amxTiles = true;
  // On the 16-core SPR host, L2 at 6144 plus L1 at 768 read about 5% more
  // bytes/s than L1 alone at 3072 (the best of 0-3072 before), in q4_K and
  // q5_K decode; L2 alone at 3072 or 6144 did not.
  static constexpr int kDefaultPrefetchBytes = 6144;
  static constexpr int kDefaultNearPrefetchBytes = 768;
};

struct RowKernelRequest {
  gguf::GgmlType type;
  int64_t cols = 0;
};

// A named LLVM CPU ("x86-64", "haswell", "sapphirerapids") with the
// features LLVM implies for it; fails for a name LLVM does not know.
StatusOr<CpuCodeTarget> namedCpuTarget(const std::string &cpu);

// The vector width the kernels use on `target`: 512 with AVX-512F, 256 with
// AVX2, else 128 (SSE2, every x86-64).
int vectorBitsFor(const CpuCodeTarget &target);

// Whether `target` gets tile kernels beside its row kernels: AMX-BF16, with
// AVX-512 BW and BF16 to decode the weights and round them (every AMX-BF16
// CPU has both), and tiles not turned off.
bool emitsTileKernels(const CpuCodeTarget &target);

// Why `request` cannot get a kernel (an unsupported type, or a row width
// that is not a whole number of blocks), or an empty string.
std::string unsupportedReason(const RowKernelRequest &request);

// The row kernels of the routed experts `plan` places on the CPU (weights
// whose type or width has no generated kernel are left out: they keep the
// runtime's reference kernels).
std::vector<RowKernelRequest> expertKernelRequests(const plan::Plan &plan);

// The LLVM IR of the kernels, as text (for tests and --print-ir).
StatusOr<std::string> rowKernelIr(const std::vector<RowKernelRequest> &requests,
                                  const CpuCodeTarget &target);

// Compiles the kernels for `target` and links them into the shared object
// `sharedPath` (written to a temporary file and renamed, so a failure never
// leaves a partial file). Returns the plan's record of it, its file named
// relative to `planDirectory`.
StatusOr<plan::CpuCode> buildCpuCode(const std::vector<RowKernelRequest> &requests,
                                     const CpuCodeTarget &target, const std::string &sharedPath,
                                     const std::string &planDirectory);

} // namespace kt::codegen
