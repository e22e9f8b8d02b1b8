// libFuzzer target: the plan loader refuses or accepts any text without
// undefined behaviour, and what it accepts writes back to a plan that loads
// to the same text (the runtime never trusts a damaged plan half-way).
#include "runtime/plan/Plan.h"

#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  std::string text(reinterpret_cast<const char *>(data), size);
  kt::StatusOr<kt::plan::Plan> plan = kt::plan::planFromJson(text, "fuzz.plan");
  if (!plan.ok())
    return 0;
  std::string written = kt::plan::planToJson(*plan);
  kt::StatusOr<kt::plan::Plan> again = kt::plan::planFromJson(written, "fuzz.plan");
  if (!again.ok() || kt::plan::planToJson(*again) != written)
    __builtin_trap();
  return 0;
}
