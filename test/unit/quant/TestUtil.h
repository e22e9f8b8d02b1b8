// Helpers shared by the quantization tests.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace kt::quant::test {

// Reads a fixture from test/unit/quant/golden (see README.md there).
inline std::vector<uint8_t> readGolden(const std::string &name) {
  const std::string path = std::string(KT_SOURCE_DIR) + "/test/unit/quant/golden/" + name;
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

inline std::vector<float> bytesToFloats(const std::vector<uint8_t> &bytes) {
  std::vector<float> floats(bytes.size() / sizeof(float));
  std::memcpy(floats.data(), bytes.data(), floats.size() * sizeof(float));
  return floats;
}

inline uint32_t bitsOf(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

inline float fromBits(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// Deterministic Gaussian samples (splitmix64 + Box-Muller), identical on every
// platform unlike std::normal_distribution.
class GaussianSource {
public:
  explicit GaussianSource(uint64_t seed) : state_(seed) {}
  uint64_t nextBits() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(nextBits() >> 11) * (1.0 / 9007199254740992.0); }
  double next();

private:
  uint64_t state_;
};

inline double GaussianSource::next() {
  double u1 = uniform();
  const double u2 = uniform();
  if (u1 < 1e-300)
    u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

} // namespace kt::quant::test
