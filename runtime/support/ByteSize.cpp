#include "runtime/support/ByteSize.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace kt {

std::optional<uint64_t> parseByteSize(const std::string &text) {
  if (text.empty() || !(std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '.'))
    return std::nullopt;
  char *end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  std::string unit(end);
  for (char &c : unit)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  double multiplier;
  if (unit.empty() || unit == "b")
    multiplier = 1;
  else if (unit == "k" || unit == "kib")
    multiplier = 1024.0;
  else if (unit == "kb")
    multiplier = 1e3;
  else if (unit == "m" || unit == "mib")
    multiplier = 1024.0 * 1024;
  else if (unit == "mb")
    multiplier = 1e6;
  else if (unit == "g" || unit == "gib")
    multiplier = 1024.0 * 1024 * 1024;
  else if (unit == "gb")
    multiplier = 1e9;
  else if (unit == "t" || unit == "tib")
    multiplier = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "tb")
    multiplier = 1e12;
  else
    return std::nullopt;
  double bytes = value * multiplier;
  if (!std::isfinite(bytes) || bytes < 0 || bytes >= 1.8e19)
    return std::nullopt;
  return static_cast<uint64_t>(std::llround(bytes));
}

std::string formatByteSize(uint64_t bytes) {
  const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024.0 && unit < 4) {
    value /= 1024.0;
    ++unit;
  }
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, unit == 0 ? "%.0f %s" : "%.2f %s", value, units[unit]);
  return buffer;
}

} // namespace kt
