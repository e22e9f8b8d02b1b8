// Byte sizes as users write them on command lines: "24GiB", "80GB", "512M".
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace kt {

// Parses a non-negative size with an optional unit: B, K/KB/KiB, M/MB/MiB,
// G/GB/GiB, T/TB/TiB (case-insensitive). Decimal units (KB, MB, GB, TB) are
// powers of 1000, binary ones (KiB, ...) and the bare letters powers of 1024.
// Fractions are allowed ("1.5GiB"). nullopt for anything else.
std::optional<uint64_t> parseByteSize(const std::string &text);

// "80.00 GiB", "512.00 MiB", "17 B".
std::string formatByteSize(uint64_t bytes);

} // namespace kt
