// C = A B^T on sm_90a's FP8 tensor cores, with DeepSeek's block scales: the
// prefill GEMM of the fp8 family.
//   A  activations [M][K] e4m3, one f32 per token and 128 columns
//      (scales [K / 128][stride], fp8_quantize.cu writes both);
//   B  weight [N][K] e4m3, one f32 per 128x128 block
//      (bScales[ceil(N / 128)][K / 128], the checkpoint's weight_scale_inv);
//   C  f32 [M][N], rows `outStride` floats apart (an even number; a
//      multiple of 4 with C 16-byte aligned takes the line-wide stores
//      described at kStagedStores).
// A, B and A's scales reach shared memory through the TMA engine (tensor
// maps built by the host: A and B over 128-column slices with the 128-byte
// swizzle, the scales as a [K / 128][M] f32 matrix; rows past M read as
// zeros), in a ring of STAGES buffers. A block is 3 warpgroups: the first
// issues the copies (one thread), the other two each multiply 64 rows of
// the block's 128 by BLOCK_N columns. Per slice of 128 columns, four k32
// wgmma accumulate into a fresh f32 fragment, which is then added to the
// result times the slice's two scales (A's per row, from shared memory;
// B's per block): the products are exact per slice, as DeepSeek's recipe
// promotes every 128.
// Blocks are persistent (the host launches at most one per SM): block b
// takes work items b, b + gridDim.x, ... and the copying thread runs ahead
// across items, so a tile's loads overlap the previous tile's epilogue.
// Tiles are ordered in groups of 8 row tiles, so the weight slices and
// activations in flight are shared through L2.
// Split-K (`splits` > 1): split s of a tile takes an equal share of the
// slices and writes its partial result at out + s * splitStride; entry
// gemm_fp8_sum_splits adds the partials into C.
// GROUPED (routed experts in prefill): B stacks the experts' weights
// [experts * N_FEATURES][K] and bScales theirs [experts][N_FEATURES / 128]
// [K / 128]; A holds the assignments' rows grouped by expert. Item x takes
// column tile x % (N_FEATURES / BLOCK_N) of entry e = x / (N_FEATURES /
// BLOCK_N) of `groupTiles` (`groupEntries` of them), {expert, first row,
// end row}: the 128 rows of A from the first row against that expert's
// weight, written up to the end row (the next expert's rows follow). No
// split-K. With `outRows`, row r of the result goes to row outRows[r] of C
// (back to the assignments' order).
// Specialization defines:
//   GROUPED     (optional) the routed-experts form above
//   N_FEATURES  output columns (weight rows), a multiple of BLOCK_N
//   K_FEATURES  reduction length, a multiple of 128
//   BLOCK_N     64 or 128 (within one 128-row scale block of B), 144
//               (straddles two of B's scale blocks: the promotion picks each
//               8-column chunk's scale; the one width that tiles 576 rows,
//               kv_a's, in fewer tiles than the SMs), or 256 (two 128-column
//               parts, each with its B scale, one after the other). Above
//               128 the consumers take 232 registers, the copying warpgroup 40
//   STAGES      buffers in the ring
//   PROMOTE_BEHIND (optional, BLOCK_N up to 128) each slice's products are
//               issued before the previous slice's are promoted, into two
//               fragments in turn (the consumers take 232 registers), so a
//               warpgroup's tensor work does not wait for its promotion
#include "common.cuh"

#if !defined(N_FEATURES) || !defined(K_FEATURES) || !defined(BLOCK_N) || !defined(STAGES)
#error "gemm_fp8 needs N_FEATURES, K_FEATURES, BLOCK_N and STAGES"
#endif
static_assert(K_FEATURES % 128 == 0, "whole 128-column slices");
static_assert(BLOCK_N == 64 || BLOCK_N == 128 || BLOCK_N == 144 || BLOCK_N == 256,
              "BLOCK_N is 64, 128, 144 or 256");
static_assert(N_FEATURES % BLOCK_N == 0, "whole column tiles");

constexpr int kBlockM = 128;
constexpr int kSlices = K_FEATURES / 128;
constexpr int kColumnTiles = N_FEATURES / BLOCK_N;
constexpr int kGroupM = 8;
constexpr int kATileBytes = kBlockM * 128;
constexpr int kBTileBytes = BLOCK_N * 128;
constexpr int kStageBytes = kATileBytes + kBTileBytes;
// A slice's activation scales of the tile's rows: a box of 132 from the
// 4-aligned row at or before the first (a TMA box starts 16-byte aligned in
// memory; the grouped form's tiles start on any row), 128-byte aligned.
constexpr int kScaleBoxRows = kBlockM + 4;
constexpr int kScaleBytes = 640;
static_assert(kScaleBoxRows * 4 <= kScaleBytes && kScaleBytes % 128 == 0, "scale box space");
constexpr int kConsumerWarps = 8;
constexpr int kFragment = BLOCK_N / 2; // f32 values per thread of an m64 x BLOCK_N fragment
// wgmma covers at most 144 columns here (a 256-wide fragment and its part
// would not fit the registers): BLOCK_N 256 runs as two parts of 128.
constexpr int kPartColumns = BLOCK_N > 144 ? 128 : BLOCK_N;
constexpr int kParts = BLOCK_N / kPartColumns;
constexpr int kPartFragment = kPartColumns / 2;
// A tile straddling two of B's 128-row scale blocks (BLOCK_N 144 starts
// on a multiple of 16): chunks of 8 columns before the tile's boundary
// take the first block's scale, the rest the next one's. The boundary
// falls 16 to 128 columns in, so the first two chunks and those from 128
// on need no choice.
constexpr bool kStraddles = BLOCK_N == 144;
// The epilogue of tiles a whole number of 32 columns wide: each consumer
// warp passes its 16 rows, 32 columns at a time, through 2 KiB of shared
// memory, so that each store instruction writes 4 whole 128-byte lines
// instead of 32 bytes of 8 rows. The buffers are the warpgroup's own rows
// of the tile's last A slice (no other wgmma reads them; that stage is
// freed after the stores); a 4-float group's place within its row is XORed
// with the row (mod 8) against bank conflicts.
constexpr bool kStagedStores = BLOCK_N % 32 == 0;

// A CUtensorMap as the driver encodes it (opaque, 128 bytes).
struct __align__(64) TensorMap {
  unsigned long long words[16];
};

__device__ __forceinline__ unsigned sharedAddress(const void *pointer) {
  return static_cast<unsigned>(__cvta_generic_to_shared(pointer));
}

__device__ __forceinline__ void barrierInit(unsigned barrier, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(barrier), "r"(count));
}
__device__ __forceinline__ void barrierExpectBytes(unsigned barrier, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(barrier),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void barrierArrive(unsigned barrier) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" ::"r"(barrier) : "memory");
}
// Waits until the barrier's phase of parity `parity` has completed (a fresh
// barrier counts the phase before its first as completed, parity 1).
__device__ __forceinline__ void barrierWait(unsigned barrier, unsigned parity) {
  unsigned done = 0;
  do {
    asm volatile("{\n.reg .pred p;\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
                 "selp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(done)
                 : "r"(barrier), "r"(parity)
                 : "memory");
  } while (!done);
}

// A box of the tensor map at (column, row) into shared memory; the barrier
// counts its bytes.
__device__ __forceinline__ void tmaLoad(unsigned destination, const TensorMap *map,
                                        unsigned barrier, int column, int row) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
               " [%0], [%1, {%3, %4}], [%2];" ::"r"(destination),
               "l"(reinterpret_cast<unsigned long long>(map)), "r"(barrier), "r"(column),
               "r"(row)
               : "memory");
}

// wgmma's descriptor of a K-major operand in rows of 128 bytes with the
// 128-byte swizzle (as TMA wrote them): start address, 1024 bytes between
// groups of 8 rows, swizzle mode 1.
__device__ __forceinline__ unsigned long long operandDescriptor(unsigned address) {
  return static_cast<unsigned long long>((address & 0x3ffff) >> 4) | (1ull << 16) |
         (static_cast<unsigned long long>(1024 >> 4) << 32) | (1ull << 62);
}

// Keeps the compiler from moving reads or writes of the fragment across the
// asynchronous wgmma (it does not know the registers are in flight).
__device__ __forceinline__ void pinFragment(float (&d)[kPartFragment]) {
#pragma unroll
  for (int i = 0; i < kPartFragment; ++i)
    asm volatile("" : "+f"(d[i])::"memory");
}

#define KT_ACC8(b)                                                                                 \
  "+f"(d[b]), "+f"(d[b + 1]), "+f"(d[b + 2]), "+f"(d[b + 3]), "+f"(d[b + 4]), "+f"(d[b + 5]),      \
      "+f"(d[b + 6]), "+f"(d[b + 7])

// d (+)= A B^T for a 64 x 32 slice of A and a kPartColumns x 32 slice of B.
__device__ __forceinline__ void wgmma(float (&d)[kPartFragment], unsigned long long a,
                                      unsigned long long b, int accumulate) {
#if BLOCK_N == 144
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %74, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n144k32.f32.e4m3.e4m3 "
               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
               "%64, %65, %66, %67, %68, %69, %70, %71}, "
               "%72, %73, p, 1, 1;\n}\n"
               : KT_ACC8(0), KT_ACC8(8), KT_ACC8(16), KT_ACC8(24), KT_ACC8(32), KT_ACC8(40),
                 KT_ACC8(48), KT_ACC8(56), KT_ACC8(64)
               : "l"(a), "l"(b), "r"(accumulate));
#elif BLOCK_N >= 128
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 "
               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
               "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
               "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
               "%64, %65, p, 1, 1;\n}\n"
               : KT_ACC8(0), KT_ACC8(8), KT_ACC8(16), KT_ACC8(24), KT_ACC8(32), KT_ACC8(40),
                 KT_ACC8(48), KT_ACC8(56)
               : "l"(a), "l"(b), "r"(accumulate));
#else
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k32.f32.e4m3.e4m3 "
               "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
               "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
               "%32, %33, p, 1, 1;\n}\n"
               : KT_ACC8(0), KT_ACC8(8), KT_ACC8(16), KT_ACC8(24)
               : "l"(a), "l"(b), "r"(accumulate));
#endif
}
#undef KT_ACC8

// One output tile's work: rows m0.. (written up to rowEnd) against weight
// rows bRow0.. (columns n0.. of C), slices [sliceBegin, sliceEnd) of K, its
// partial result at split `split`.
struct TileWork {
  int m0, n0, rowEnd, bRow0, sliceBegin, sliceEnd, split;
  const float *bScaleRow;
};

// One slice's product scales for a thread's two rows (the fragment's row
// and the one 8 below): A's per row times B's per block; `next*` with the
// next block's scale where the tile straddles two.
struct SliceScales {
  float first0 = 0, first8 = 0, next0 = 0, next8 = 0;
};
// The scale of fragment value v, whose columns are 8 * (v / 4) on from the
// tile's start; `firstChunks`: the straddling tile's 8-column chunks in
// the first block.
__device__ __forceinline__ float promotionScale(int v, const SliceScales &s, int firstChunks) {
  const int chunk = v / 4;
  const bool first = !kStraddles || chunk < 2 || (chunk < 16 && chunk < firstChunks);
  return (v & 2) ? (first ? s.first8 : s.next8) : (first ? s.first0 : s.next0);
}

// Work items: tiles x splits, or the grouped form's entries x column tiles.
__device__ __forceinline__ int workItems(int rows, int splits, int groupEntries) {
#if defined(GROUPED)
  return groupEntries * kColumnTiles;
#else
  return (rows + kBlockM - 1) / kBlockM * kColumnTiles * splits;
#endif
}

__device__ __forceinline__ TileWork workOf(int item, int rows, int splits,
                                           const int *__restrict__ groupTiles,
                                           const float *__restrict__ bScales) {
  TileWork w;
#if defined(GROUPED)
  static_assert(N_FEATURES % 128 == 0, "whole scale blocks per expert");
  const int entry = item / kColumnTiles;
  const int expert = groupTiles[3 * entry];
  w.m0 = groupTiles[3 * entry + 1];
  w.rowEnd = groupTiles[3 * entry + 2];
  w.n0 = item % kColumnTiles * BLOCK_N;
  w.bRow0 = expert * N_FEATURES + w.n0;
  w.bScaleRow =
      bScales + (static_cast<long long>(expert) * (N_FEATURES / 128) + w.n0 / 128) * kSlices;
  w.split = 0;
  w.sliceBegin = 0;
  w.sliceEnd = kSlices;
#else
  // Which tile: groups of kGroupM row tiles, rows fastest within a group;
  // the splits of a tile are tiles apart.
  const int rowTiles = (rows + kBlockM - 1) / kBlockM;
  const int tiles = rowTiles * kColumnTiles;
  const int tile = item % tiles;
  w.split = item / tiles;
  const int firstRowTile = tile / (kGroupM * kColumnTiles) * kGroupM;
  const int groupRows = min(rowTiles - firstRowTile, kGroupM);
  const int inGroup = tile % (kGroupM * kColumnTiles);
  w.m0 = (firstRowTile + inGroup % groupRows) * kBlockM;
  w.n0 = inGroup / groupRows * BLOCK_N;
  w.rowEnd = rows;
  w.bRow0 = w.n0;
  w.bScaleRow = bScales + (w.n0 / 128) * kSlices;
  w.sliceBegin = w.split * kSlices / splits;
  w.sliceEnd = (w.split + 1) * kSlices / splits;
#endif
  return w;
}

extern "C" __global__ void __launch_bounds__(384, 1)
    gemm_fp8(const __grid_constant__ TensorMap aMap, const __grid_constant__ TensorMap bMap,
             const __grid_constant__ TensorMap aScaleMap, const float *__restrict__ bScales,
             float *__restrict__ out, int outStride, long long splitStride, int rows, int splits,
             int groupEntries, const int *__restrict__ groupTiles,
             const int *__restrict__ outRows) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  extern __shared__ kt::u8 sharedBytes[];
  // Swizzled tiles start on 1024-byte boundaries (the host asks for 1 KiB more).
  const unsigned base = (sharedAddress(sharedBytes) + 1023u) & ~1023u;
  const unsigned scaleBase = base + STAGES * kStageBytes;     // A's scales, kScaleBytes a stage
  const unsigned barriers = scaleBase + STAGES * kScaleBytes; // full[STAGES], empty[STAGES]
  const float *stageScales =
      reinterpret_cast<const float *>(sharedBytes + (scaleBase - sharedAddress(sharedBytes)));
  auto aTile = [&](int stage) { return base + stage * kStageBytes; };
  auto bTile = [&](int stage) { return base + stage * kStageBytes + kATileBytes; };
  auto full = [&](int stage) { return barriers + 8 * stage; };
  auto empty = [&](int stage) { return barriers + 8 * (STAGES + stage); };
  const int items = workItems(rows, splits, groupEntries);

  if (threadIdx.x == 0) {
    for (int stage = 0; stage < STAGES; ++stage) {
      barrierInit(full(stage), 1);
      barrierInit(empty(stage), kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  // Persistent: block b takes items b, b + gridDim.x, ...; the ring runs on
  // across items, so the next tile's copies start while this one's results
  // are written.
  if (threadIdx.x < 128) { // the copying warpgroup
#if BLOCK_N > 128 || defined(PROMOTE_BEHIND)
    asm volatile("setmaxnreg.dec.sync.aligned.u32 40;");
#endif
    if (threadIdx.x == 0) {
      int step = 0;
      for (int item = blockIdx.x; item < items; item += gridDim.x) {
        const TileWork w = workOf(item, rows, splits, groupTiles, bScales);
        for (int slice = w.sliceBegin; slice < w.sliceEnd; ++slice, ++step) {
          const int stage = step % STAGES;
          barrierWait(empty(stage), ((step / STAGES) & 1) ^ 1);
          barrierExpectBytes(full(stage), kStageBytes + kScaleBoxRows * 4);
          tmaLoad(aTile(stage), &aMap, full(stage), slice * 128, w.m0);
          tmaLoad(bTile(stage), &bMap, full(stage), slice * 128, w.bRow0);
          tmaLoad(scaleBase + stage * kScaleBytes, &aScaleMap, full(stage), w.m0 & ~3, slice);
        }
      }
    }
    return;
  }

#if BLOCK_N > 128 || defined(PROMOTE_BEHIND)
  asm volatile("setmaxnreg.inc.sync.aligned.u32 232;");
#endif
  const int group = threadIdx.x / 128 - 1; // rows group*64 .. +63 of the tile
  const int warp = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32;
  const int tileRow = group * 64 + warp * 16 + lane / 4; // and tileRow + 8
  int step = 0;
  for (int item = blockIdx.x; item < items; item += gridDim.x) {
    const TileWork w = workOf(item, rows, splits, groupTiles, bScales);
    float result[kFragment];
#pragma unroll
    for (int i = 0; i < kFragment; ++i)
      result[i] = 0.0f;
    const int firstChunks = (128 - w.n0 % 128) / 8; // a straddling tile's, in its first block

#if defined(PROMOTE_BEHIND)
    static_assert(kParts == 1, "one fragment per slice");
    // Slice i + 1's products run while slice i's are promoted: two
    // fragments in turn, each slice's scales read before its buffer is freed.
    float fragment0[kPartFragment], fragment1[kPartFragment];
    SliceScales scalesA, scalesB;
    const int count = w.sliceEnd - w.sliceBegin;
    auto issue = [&](float(&d)[kPartFragment], int i, SliceScales &sliceScales) {
      const int at = step + i, stage = at % STAGES;
      const float bScale = w.bScaleRow[w.sliceBegin + i];
      const float bNext = kStraddles ? w.bScaleRow[kSlices + w.sliceBegin + i] : 0.0f;
      barrierWait(full(stage), (at / STAGES) & 1);
      const float *scales = stageScales + stage * (kScaleBytes / 4) + (w.m0 & 3) + tileRow;
      sliceScales.first0 = scales[0] * bScale;
      sliceScales.first8 = scales[8] * bScale;
      if constexpr (kStraddles) {
        sliceScales.next0 = scales[0] * bNext;
        sliceScales.next8 = scales[8] * bNext;
      }
      pinFragment(d);
      asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
      for (int k = 0; k < 4; ++k)
        wgmma(d, operandDescriptor(aTile(stage) + group * 64 * 128 + k * 32),
              operandDescriptor(bTile(stage) + k * 32), k);
      asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    };
    auto promote = [&](float(&d)[kPartFragment], int i, const SliceScales &sliceScales) {
      pinFragment(d);
      if (lane == 0 && i + 1 < count) // the last stage is freed after the epilogue
        barrierArrive(empty((step + i) % STAGES));
#pragma unroll
      for (int v = 0; v < kPartFragment; ++v)
        result[v] += d[v] * promotionScale(v, sliceScales, firstChunks);
    };
    auto waitAllButOne = [] { asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory"); };
    auto waitAll = [] { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); };
    // Straight-line steps (fragment 0 in flight at the top of each), so
    // ptxas can tell which fragment each wait completes.
    if (count > 0) {
      issue(fragment0, 0, scalesA);
      int i = 0;
      for (; i + 2 < count; i += 2) {
        issue(fragment1, i + 1, scalesB);
        waitAllButOne();
        promote(fragment0, i, scalesA);
        issue(fragment0, i + 2, scalesA);
        waitAllButOne();
        promote(fragment1, i + 1, scalesB);
      }
      if (i + 1 < count) {
        issue(fragment1, i + 1, scalesB);
        waitAllButOne();
        promote(fragment0, i, scalesA);
        waitAll();
        promote(fragment1, i + 1, scalesB);
      } else {
        waitAll();
        promote(fragment0, i, scalesA);
      }
    }
    step += count;
#else
    float part[kPartFragment];
    for (int slice = w.sliceBegin; slice < w.sliceEnd; ++slice, ++step) {
      const int stage = step % STAGES;
      // The weight's scales load while the copy and the products run (a
      // straddling tile's second block's in bScale[1]).
      float bScale[kStraddles ? 2 : kParts];
#pragma unroll
      for (int p = 0; p < (kStraddles ? 2 : kParts); ++p)
        bScale[p] = w.bScaleRow[p * kSlices + slice];
      barrierWait(full(stage), (step / STAGES) & 1);
      const float *scales = stageScales + stage * (kScaleBytes / 4) + (w.m0 & 3) + tileRow;
      const float aScale0 = scales[0], aScale8 = scales[8];
#pragma unroll
      for (int p = 0; p < kParts; ++p) {
        pinFragment(part);
        asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#pragma unroll
        for (int k = 0; k < 4; ++k)
          wgmma(part, operandDescriptor(aTile(stage) + group * 64 * 128 + k * 32),
                operandDescriptor(bTile(stage) + p * kPartColumns * 128 + k * 32), k);
        asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
        asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
        pinFragment(part);
        if (p == kParts - 1 && lane == 0 && slice + 1 < w.sliceEnd) // the last: after the epilogue
          barrierArrive(empty(stage));
        SliceScales sliceScales;
        sliceScales.first0 = aScale0 * bScale[p];
        sliceScales.first8 = aScale8 * bScale[p];
        if constexpr (kStraddles) {
          sliceScales.next0 = aScale0 * bScale[1];
          sliceScales.next8 = aScale8 * bScale[1];
        }
#pragma unroll
        for (int i = 0; i < kPartFragment; ++i)
          result[p * kPartFragment + i] += part[i] * promotionScale(i, sliceScales, firstChunks);
      }
    }

#endif

    // Fragment layout: value i is at row (+8 where i & 2), column
    // 8 * (i / 4) + 2 * (lane % 4) + (i & 1).
    float *split = out + static_cast<long long>(w.split) * splitStride;
    // The tile's last slice's stage (none where a split has no slices).
    const bool holdsStage = w.sliceEnd > w.sliceBegin;
    const int lastStage = (step + STAGES - 1) % STAGES;
    // 16-byte stores need rows a multiple of 4 floats apart from an aligned
    // start, and the buffers a last slice's stage; other outputs take the
    // fragment's own stores.
    if (kStagedStores && holdsStage && (outStride & 3) == 0 &&
        (reinterpret_cast<unsigned long long>(out) & 15) == 0 && (splitStride & 3) == 0) {
      float *buffer =
          reinterpret_cast<float *>(sharedBytes + (aTile(lastStage) - sharedAddress(sharedBytes)) +
                                    group * 64 * 128 + warp * 2048);
      auto at = [](int row, int column) { return row * 32 + (column ^ (4 * (row % 8))); };
      const int warpRow = w.m0 + group * 64 + warp * 16;
#pragma unroll
      for (int part = 0; part < BLOCK_N / 32; ++part) {
        // The fragment's values of these 32 columns, at their rows...
#pragma unroll
        for (int chunk = 0; chunk < 4; ++chunk)
#pragma unroll
          for (int half = 0; half < 2; ++half)
            *reinterpret_cast<float2 *>(buffer +
                                        at(lane / 4 + 8 * half, 8 * chunk + 2 * (lane % 4))) =
                make_float2(result[4 * (4 * part + chunk) + 2 * half],
                            result[4 * (4 * part + chunk) + 2 * half + 1]);
        __syncwarp();
        // ...then 4 rows of 128 bytes a store.
#pragma unroll
        for (int quarter = 0; quarter < 4; ++quarter) {
          const int row = 4 * quarter + lane / 8, r = warpRow + row;
          const float4 values = *reinterpret_cast<const float4 *>(buffer + at(row, 4 * (lane % 8)));
          if (r < w.rowEnd) {
            const long long target = outRows ? outRows[r] : r;
            *reinterpret_cast<float4 *>(split + target * outStride + w.n0 + 32 * part +
                                        4 * (lane % 8)) = values;
          }
        }
        __syncwarp();
      }
    } else {
      const int column = w.n0 + 2 * (lane % 4);
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int r = w.m0 + tileRow + 8 * half;
        if (r >= w.rowEnd)
          continue;
        const long long target = outRows ? outRows[r] : r;
        float *outRow = split + target * outStride + column;
#pragma unroll
        for (int chunk = 0; chunk < BLOCK_N / 8; ++chunk)
          *reinterpret_cast<float2 *>(outRow + 8 * chunk) =
              make_float2(result[4 * chunk + 2 * half], result[4 * chunk + 2 * half + 1]);
      }
    }
    // The last stage back to the copies (its generic-proxy reads and writes
    // ordered before the TMA engine's next writes).
    if (holdsStage) {
      asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
      __syncwarp();
      if (lane == 0)
        barrierArrive(empty(lastStage));
    }
  }
#endif
}

// C[r][c] = the sum over `splits` partial results [splits][rows][N_FEATURES]
// (in split order, so results do not depend on timing).
extern "C" __global__ void __launch_bounds__(256)
gemm_fp8_sum_splits(const float *__restrict__ partials, int splits, float *__restrict__ out,
                    int outStride, int rows) {
  const long long count = static_cast<long long>(rows) * N_FEATURES;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  for (long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s)
      sum += partials[s * count + i];
    out[i / N_FEATURES * outStride + i % N_FEATURES] = sum;
  }
}
