// How decode attention splits the positions a token sees over a fixed number
// of pieces (the grid's y dimension of mla_decode_split.cu and
// mla_decode_mma.cu, `chunks` of mla_combine): each piece takes a chunk of
// at least ceil(positions / pieces) positions, rounded up to the tensor-core
// core's 32-position tile. The pieces follow the token's position (read from
// device memory), so a decode graph keeps every block busy at every step
// while replaying one launch.
#pragma once

namespace kt::mla {

__device__ __forceinline__ int decodeChunk(int positions, int pieces) {
  const int perPiece = (positions + pieces - 1) / pieces;
  return (perPiece + 31) / 32 * 32;
}

} // namespace kt::mla
