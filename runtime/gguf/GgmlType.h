// GGML tensor element types as stored in GGUF files, with their block layout.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace kt::gguf {

// Values are the on-disk ids of the GGML type enum; gaps are ids GGML retired.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
  // Not a GGML type and never read from GGUF files: e4m3 values with one f32
  // scale per 128x128 block kept beside them (TensorInfo::fp8), as native FP8
  // checkpoints store projections. Models opened from a checkpoint
  // (runtime/model/CheckpointModel.h) present such tensors with it.
  F8_E4M3_B128 = 0x10000,
};

struct GgmlTypeTraits {
  GgmlType type;
  std::string_view name;  // GGML's spelling: "f32", "q4_K", ...
  int64_t blockSize;      // elements per block
  int64_t blockBytes;     // bytes per block
  bool dequantizable;     // this project can dequantize it to f32
  bool quantizable;       // this project can quantize f32 to it
};

// Traits of a known GGUF type id, or nullopt for an id GGML never defined or
// retired (F8_E4M3_B128 is not a GGUF type id either).
std::optional<GgmlTypeTraits> ggmlTypeTraits(uint32_t typeId);
const GgmlTypeTraits &ggmlTypeTraits(GgmlType type);
// Parses GGML's name of a type ("q4_K", case-insensitive).
std::optional<GgmlType> parseGgmlType(std::string_view name);
std::string_view ggmlTypeName(GgmlType type);

// Bytes of a row of `elements` values; nullopt if elements is not a multiple of
// the block size (such a tensor cannot be stored in this type).
std::optional<uint64_t> ggmlRowBytes(GgmlType type, int64_t elements);

} // namespace kt::gguf
