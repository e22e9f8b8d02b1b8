// MLA decode attention on tensor cores (sm_80+), split over the cached
// positions like mla_decode_split.cu (flash-decoding): one token's heads are
// the rows of mla_mma.cuh's core (16 ROW_GROUPS per block), each block takes
// one chunk of the positions (mla_pieces.cuh) and writes, per head, the chunk's softmax piece
// {max score m, sum of exp(score - m), sum of exp(score - m) * latent} to
// partial[(head * chunks + chunk)], which mla_decode_split.cu's mla_combine
// merges. Decode is compute-bound on CUDA cores (about 280 kFLOP per cached
// position for 128 heads); here the products run on bf16 tensor cores
// (about 1e-3 relative error, against 1e-6).
// The token's position comes from device memory and the chunks follow it,
// so a decode graph replays the launch at every step. Both this
// kernel and mla_decode_split are launched: this one works when the token
// sees at least `mmaFrom` positions, mla_decode_split below that.
// Grid: (ceil(HEADS / (16 ROW_GROUPS)), pieces), 64 ROW_GROUPS
// threads, dynamic shared memory mlaDecodeMmaSharedBytes(). Specialization
// defines:
//   KV_LORA, ROPE, SCALE, HEADS   as mla_prefill_mma.cu
//   ROW_GROUPS                    16-row groups per block (1, 2 or 4)
#if !defined(KV_LORA) || !defined(ROPE) || !defined(SCALE) || !defined(HEADS) ||                   \
    !defined(ROW_GROUPS)
#error "mla_decode_mma needs KV_LORA, ROPE, SCALE, HEADS and ROW_GROUPS"
#endif
#include "mla_mma.cuh"
#include "mla_pieces.cuh"

using namespace kt::mla_mma;
constexpr int kPartial = KV_LORA + 2; // m, l, then the weighted latent sum

extern "C" __global__ void __launch_bounds__(kThreads)
    mla_decode_mma(const float *__restrict__ qLatent, const float *__restrict__ qRope,
                   int qRopeHeadStride, const float *__restrict__ latent,
                   const float *__restrict__ ropeKey, const int *__restrict__ position, int mmaFrom,
                   float *__restrict__ partial) {
  KT_WAIT_FOR_PRIOR_GRID();
#if __CUDA_ARCH__ >= 800
  const int positions = position[0] + 1; // the token sees itself and everything before
  const int size = kt::mla::decodeChunk(positions, gridDim.y);
  const int first = blockIdx.y * size, last = min(positions, first + size);
  if (positions < mmaFrom || first >= positions)
    return; // the whole block: no thread of it reaches a barrier
  extern __shared__ __align__(16) kt::u16 shared[];
  kt::u16 *qTile = shared;                  // [kRows][kPitch]
  kt::u16 *kTile = shared + kRows * kPitch; // [kPositions][kPitch]
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rowGroup = warp % ROW_GROUPS, dimBase = (warp / ROW_GROUPS) * kHalf;
  const int r0 = blockIdx.x * kRows;
  loadQueries(qTile, qLatent, qRope, qRopeHeadStride, 0, r0, HEADS);
  RowState s;
  s.clear();
  attend(s, qTile, kTile, latent, ropeKey, first, last, last, last);

  // This thread's two heads (rows A and B): their unnormalized sums, and
  // from one lane of the row and one of the row group's two warps the
  // maximum and the sum of exponentials.
  const int headA = r0 + rowGroup * 16 + lane / 4, headB = headA + 8, kColumn = (lane % 4) * 2;
  const long long chunks = gridDim.y;
  float *outA = partial + (headA * chunks + blockIdx.y) * kPartial;
  float *outB = partial + (headB * chunks + blockIdx.y) * kPartial;
  if (lane % 4 == 0 && warp < ROW_GROUPS) {
    if (headA < HEADS) {
      outA[0] = s.maxA;
      outA[1] = s.sumA;
    }
    if (headB < HEADS) {
      outB[0] = s.maxB;
      outB[1] = s.sumB;
    }
  }
#pragma unroll
  for (int t = 0; t < kDimTiles; ++t) {
    const int d = 2 + dimBase + 8 * t + kColumn;
    if (headA < HEADS) {
      outA[d] = s.out[t][0];
      outA[d + 1] = s.out[t][1];
    }
    if (headB < HEADS) {
      outB[d] = s.out[t][2];
      outB[d + 1] = s.out[t][3];
    }
  }
#endif
}
