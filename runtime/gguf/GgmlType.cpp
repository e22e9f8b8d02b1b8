#include "runtime/gguf/GgmlType.h"

#include <array>
#include <cassert>
#include <cctype>

namespace kt::gguf {
namespace {

// Block layouts follow GGML's type_traits table.
constexpr std::array<GgmlTypeTraits, 32> kTraits = {{
    {GgmlType::F32, "f32", 1, 4, true, true},
    {GgmlType::F16, "f16", 1, 2, true, true},
    {GgmlType::Q4_0, "q4_0", 32, 18, true, false},
    {GgmlType::Q4_1, "q4_1", 32, 20, true, false},
    {GgmlType::Q5_0, "q5_0", 32, 22, true, false},
    {GgmlType::Q5_1, "q5_1", 32, 24, true, false},
    {GgmlType::Q8_0, "q8_0", 32, 34, true, true},
    {GgmlType::Q8_1, "q8_1", 32, 36, false, false},
    {GgmlType::Q2_K, "q2_K", 256, 84, true, false},
    {GgmlType::Q3_K, "q3_K", 256, 110, true, false},
    {GgmlType::Q4_K, "q4_K", 256, 144, true, true},
    {GgmlType::Q5_K, "q5_K", 256, 176, true, true},
    {GgmlType::Q6_K, "q6_K", 256, 210, true, true},
    {GgmlType::Q8_K, "q8_K", 256, 292, false, false},
    {GgmlType::IQ2_XXS, "iq2_xxs", 256, 66, false, false},
    {GgmlType::IQ2_XS, "iq2_xs", 256, 74, false, false},
    {GgmlType::IQ3_XXS, "iq3_xxs", 256, 98, false, false},
    {GgmlType::IQ1_S, "iq1_s", 256, 50, false, false},
    {GgmlType::IQ4_NL, "iq4_nl", 32, 18, false, false},
    {GgmlType::IQ3_S, "iq3_s", 256, 110, false, false},
    {GgmlType::IQ2_S, "iq2_s", 256, 82, false, false},
    {GgmlType::IQ4_XS, "iq4_xs", 256, 136, false, false},
    {GgmlType::I8, "i8", 1, 1, false, false},
    {GgmlType::I16, "i16", 1, 2, false, false},
    {GgmlType::I32, "i32", 1, 4, false, false},
    {GgmlType::I64, "i64", 1, 8, false, false},
    {GgmlType::F64, "f64", 1, 8, false, false},
    {GgmlType::IQ1_M, "iq1_m", 256, 56, false, false},
    {GgmlType::BF16, "bf16", 1, 2, true, true},
    {GgmlType::TQ1_0, "tq1_0", 256, 54, false, false},
    {GgmlType::TQ2_0, "tq2_0", 256, 66, false, false},
    {GgmlType::MXFP4, "mxfp4", 32, 17, false, false},
}};

// One byte per value; the block scales live outside the tensor's data.
constexpr GgmlTypeTraits kFp8Traits = {GgmlType::F8_E4M3_B128, "f8_e4m3", 1, 1, false, false};

bool equalsIgnoringCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size())
    return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

} // namespace

std::optional<GgmlTypeTraits> ggmlTypeTraits(uint32_t typeId) {
  for (const GgmlTypeTraits &traits : kTraits)
    if (static_cast<uint32_t>(traits.type) == typeId)
      return traits;
  return std::nullopt;
}

const GgmlTypeTraits &ggmlTypeTraits(GgmlType type) {
  if (type == GgmlType::F8_E4M3_B128)
    return kFp8Traits;
  for (const GgmlTypeTraits &traits : kTraits)
    if (traits.type == type)
      return traits;
  // Every enumerator has a row above; reaching here is a programming error.
  assert(false && "GgmlType without traits");
  return kTraits[0];
}

std::optional<GgmlType> parseGgmlType(std::string_view name) {
  for (const GgmlTypeTraits &traits : kTraits)
    if (equalsIgnoringCase(traits.name, name))
      return traits.type;
  if (equalsIgnoringCase(kFp8Traits.name, name))
    return kFp8Traits.type;
  return std::nullopt;
}

std::string_view ggmlTypeName(GgmlType type) { return ggmlTypeTraits(type).name; }

std::optional<uint64_t> ggmlRowBytes(GgmlType type, int64_t elements) {
  const GgmlTypeTraits &traits = ggmlTypeTraits(type);
  if (elements < 0 || elements % traits.blockSize != 0)
    return std::nullopt;
  return static_cast<uint64_t>(elements / traits.blockSize) *
         static_cast<uint64_t>(traits.blockBytes);
}

} // namespace kt::gguf
