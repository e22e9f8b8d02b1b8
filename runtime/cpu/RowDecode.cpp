#include "runtime/cpu/RowDecode.h"

#include "runtime/quant/Quant.h"

#include <cassert>

namespace kt::cpu {

void decodeValues(gguf::GgmlType type, const uint8_t *src, float *dst, int64_t elements) {
  // kt_quant's decoders are multiversioned for the host's vector ISA.
  Status status = quant::dequantize(type, src, dst, elements);
  assert(status.ok() && "the executor checks weight types at load");
  (void)status;
}

} // namespace kt::cpu
