// Quantization from f32, producing the same bytes as GGML's reference
// quantizers (quantize_row_q8_0_ref, quantize_row_q{4,5,6}_K_ref). The
// searches for block scales below repeat GGML's float arithmetic operation by
// operation, in the same order: any reordering (or a fused multiply-add; the
// target is built with -ffp-contract=off) changes the chosen scales.
#include "runtime/quant/Quant.h"
#include "runtime/quant/QuantInternal.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace kt::quant {
namespace {

using detail::loadU16;
using detail::storeHalf;
using detail::unpackScaleMinK4;

constexpr int kQK = 32;
constexpr int kQK_K = 256;
// Below this magnitude GGML treats a group as all zeros.
constexpr float kGroupMaxEps = 1e-15f;

// Rounds to nearest, ties to even, by adding 1.5 * 2^23 so that the integer
// lands in the low mantissa bits. Exact for |value| < 2^22; outside that range
// (and for NaN) it returns the same wrapped value GGML's helper does.
inline int nearestInt(float value) {
  const float shifted = value + 12582912.f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  return (bits & 0x007fffff) - 0x00400000;
}

// Finds scale and min for n values quantized to [0, nmax] as
// x ~ scale * L + min (min <= 0), minimising the weighted squared error.
// Starts from the plain min/max mapping, then tries nstep + 1 stretched
// grids and for each solves the weighted least-squares fit of scale and min
// to the rounded levels. Returns the scale; *negatedMin gets -min.
float fitScaleAndMin(int n, int nmax, const float *x, const float *weights, uint8_t *levels,
                     float *negatedMin, uint8_t *candidateLevels, float rmin, float rdelta,
                     int nstep) {
  float min = x[0];
  float max = x[0];
  float sumW = weights[0];
  float sumX = sumW * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min)
      min = x[i];
    if (x[i] > max)
      max = x[i];
    const float w = weights[i];
    sumW += w;
    sumX += w * x[i];
  }
  if (min > 0)
    min = 0;
  if (max == min) {
    std::fill(levels, levels + n, uint8_t(0));
    *negatedMin = -min;
    return 0.f;
  }
  float iscale = float(nmax) / (max - min);
  float scale = 1 / iscale;
  float bestError = 0;
  for (int i = 0; i < n; ++i) {
    const int l = nearestInt(iscale * (x[i] - min));
    levels[i] = uint8_t(std::max(0, std::min(nmax, l)));
    const float diff = scale * float(levels[i]) + min - x[i];
    bestError += weights[i] * (diff * diff);
  }
  for (int step = 0; step <= nstep; ++step) {
    iscale = (rmin + rdelta * float(step) + float(nmax)) / (max - min);
    float sumL = 0, sumL2 = 0, sumXL = 0;
    for (int i = 0; i < n; ++i) {
      int l = nearestInt(iscale * (x[i] - min));
      l = std::max(0, std::min(nmax, l));
      candidateLevels[i] = uint8_t(l);
      const float w = weights[i];
      const float fl = float(l);
      sumL += w * fl;
      sumL2 += w * fl * fl;
      sumXL += w * fl * x[i];
    }
    const float det = sumW * sumL2 - sumL * sumL;
    if (det > 0) {
      float candidateScale = (sumW * sumXL - sumX * sumL) / det;
      float candidateMin = (sumL2 * sumX - sumL * sumXL) / det;
      if (candidateMin > 0) {
        candidateMin = 0;
        candidateScale = sumXL / sumL2;
      }
      float error = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = candidateScale * float(candidateLevels[i]) + candidateMin - x[i];
        error += weights[i] * (diff * diff);
      }
      if (error < bestError) {
        std::copy(candidateLevels, candidateLevels + n, levels);
        bestError = error;
        scale = candidateScale;
        min = candidateMin;
      }
    }
  }
  *negatedMin = -min;
  return scale;
}

// Finds a symmetric scale for n values quantized to [-nmax, nmax - 1] (stored
// biased by nmax), weighting each value by x^2: tries 19 grids around
// nmax / max|x| and keeps the best least-squares scale.
float fitSymmetricScale(int n, int nmax, const float *x, int8_t *levels) {
  float max = 0;
  float amax = 0;
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > amax) {
      amax = ax;
      max = x[i];
    }
  }
  if (amax < kGroupMaxEps) {
    std::fill(levels, levels + n, int8_t(0));
    return 0.f;
  }
  auto clampLevel = [nmax](int l) { return std::max(-nmax, std::min(nmax - 1, l)); };
  float iscale = float(-nmax) / max;
  float sumLX = 0;
  float sumL2 = 0;
  for (int i = 0; i < n; ++i) {
    const int l = clampLevel(nearestInt(iscale * x[i]));
    levels[i] = int8_t(l + nmax);
    const float w = x[i] * x[i];
    const float fl = float(l);
    sumLX += w * x[i] * fl;
    sumL2 += w * fl * fl;
  }
  float scale = sumL2 != 0 ? sumLX / sumL2 : 0.0f;
  float best = scale * sumLX;
  for (int step = -9; step <= 9; ++step) {
    if (step == 0)
      continue;
    iscale = -(float(nmax) + 0.1f * float(step)) / max;
    sumLX = sumL2 = 0;
    for (int i = 0; i < n; ++i) {
      const int l = clampLevel(nearestInt(iscale * x[i]));
      const float w = x[i] * x[i];
      const float fl = float(l);
      sumLX += w * x[i] * fl;
      sumL2 += w * fl * fl;
    }
    if (sumL2 > 0 && sumLX * sumLX > best * sumL2) {
      for (int i = 0; i < n; ++i)
        levels[i] = int8_t(nmax + clampLevel(nearestInt(iscale * x[i])));
      scale = sumLX / sumL2;
      best = scale * sumLX;
    }
  }
  return scale;
}

// Q8_0 block: d = max|x| / 127 (stored as f16), q = round(x / d) with ties
// away from zero, computed with the f32 reciprocal of the unrounded d.
void quantizeBlockQ8_0(const float *x, uint8_t *out) {
  float amax = 0.0f;
  for (int j = 0; j < kQK; ++j)
    amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127.0f;
  const float id = d != 0 ? 1.0f / d : 0.0f;
  storeHalf(out, d);
  int8_t *qs = reinterpret_cast<int8_t *>(out + 2);
  // When d is so small that 1/d overflows, the f16 scale is zero anyway and
  // the quants carry no information; GGML's float-to-int8 conversion is then
  // undefined, x86 builds store 0.
  const bool reciprocalFinite = std::isfinite(id);
  for (int j = 0; j < kQK; ++j)
    qs[j] = reciprocalFinite ? int8_t(std::round(x[j] * id)) : int8_t(0);
}

// Shared first half of Q4_K and Q5_K: fits (scale, min) for the eight
// 32-element sub-blocks, quantizes those to 6 bits against the f16 super-block
// scales d and dmin (written to out[0..3], packed scales to out[4..15]), and
// requantizes each sub-block against the rounded scales into `levels`.
void quantizeKScalesAndLevels(const float *x, uint8_t *out, uint8_t levels[kQK_K], int nmax,
                              float rmin, int nstep) {
  float scales[kQK_K / 32];
  float mins[kQK_K / 32];
  float weights[32];
  uint8_t candidateLevels[32];
  float maxScale = 0;
  float maxMin = 0;
  for (int j = 0; j < kQK_K / 32; ++j) {
    const float *sub = x + 32 * j;
    float sumX2 = 0;
    for (int l = 0; l < 32; ++l)
      sumX2 += sub[l] * sub[l];
    const float averageMagnitude = std::sqrt(sumX2 / 32.0f);
    for (int l = 0; l < 32; ++l)
      weights[l] = averageMagnitude + std::fabs(sub[l]);
    scales[j] = fitScaleAndMin(32, nmax, sub, weights, levels + 32 * j, &mins[j],
                               candidateLevels, rmin, 0.1f, nstep);
    if (scales[j] > maxScale)
      maxScale = scales[j];
    if (mins[j] > maxMin)
      maxMin = mins[j];
  }

  uint8_t *packed = out + 4;
  const float inverseScale = maxScale > 0 ? 63.f / maxScale : 0.f;
  const float inverseMin = maxMin > 0 ? 63.f / maxMin : 0.f;
  for (int j = 0; j < kQK_K / 32; ++j) {
    // Truncation to uint8_t before the clamp is deliberate: GGML does the same,
    // so a (degenerate) negative scale wraps and then clamps to 63.
    const uint8_t ls = std::min<uint8_t>(63, uint8_t(nearestInt(inverseScale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, uint8_t(nearestInt(inverseMin * mins[j])));
    if (j < 4) {
      packed[j] = ls;
      packed[j + 4] = lm;
    } else {
      packed[j + 4] = uint8_t((ls & 0xF) | ((lm & 0xF) << 4));
      packed[j - 4] |= uint8_t((ls >> 4) << 6);
      packed[j] |= uint8_t((lm >> 4) << 6);
    }
  }
  storeHalf(out, maxScale / 63.f);
  storeHalf(out + 2, maxMin / 63.f);

  const float superScale = halfToFloat(loadU16(out));
  const float superMin = halfToFloat(loadU16(out + 2));
  for (int j = 0; j < kQK_K / 32; ++j) {
    uint8_t sc, m;
    unpackScaleMinK4(j, packed, sc, m);
    const float d = superScale * float(sc);
    if (d == 0)
      continue; // keeps the levels of the unrounded fit, as GGML does
    const float dm = superMin * float(m);
    for (int l = 0; l < 32; ++l) {
      const int q = nearestInt((x[32 * j + l] + dm) / d);
      levels[32 * j + l] = uint8_t(std::max(0, std::min(nmax, q)));
    }
  }
}

// Q4_K (144 bytes): d, dmin, packed scales, then per 64 elements 32 bytes with
// the first 32 levels in the low nibbles and the next 32 in the high ones.
void quantizeBlockQ4_K(const float *x, uint8_t *out) {
  uint8_t levels[kQK_K];
  quantizeKScalesAndLevels(x, out, levels, 15, -1.f, 20);
  uint8_t *q = out + 16;
  for (int j = 0; j < kQK_K; j += 64, q += 32)
    for (int l = 0; l < 32; ++l)
      q[l] = uint8_t(levels[j + l] | (levels[j + l + 32] << 4));
}

// Q5_K (176 bytes): as Q4_K, with the fifth bits in 32 bytes after the scales.
void quantizeBlockQ5_K(const float *x, uint8_t *out) {
  uint8_t levels[kQK_K];
  quantizeKScalesAndLevels(x, out, levels, 31, -0.5f, 15);
  uint8_t *qh = out + 16;
  uint8_t *ql = out + 48;
  std::memset(qh, 0, kQK_K / 8);
  for (int pair = 0; pair < 4; ++pair, ql += 32) {
    const uint8_t lowBit = uint8_t(1 << (2 * pair));
    const uint8_t highBit = uint8_t(2 << (2 * pair));
    for (int l = 0; l < 32; ++l) {
      int low = levels[64 * pair + l];
      if (low > 15) {
        low -= 16;
        qh[l] |= lowBit;
      }
      int high = levels[64 * pair + l + 32];
      if (high > 15) {
        high -= 16;
        qh[l] |= highBit;
      }
      ql[l] = uint8_t(low | (high << 4));
    }
  }
}

// Q6_K (210 bytes): ql[128], qh[64], int8 scales[16], f16 d.
void quantizeBlockQ6_K(const float *x, uint8_t *out) {
  int8_t levels[kQK_K];
  float scales[kQK_K / 16];
  float maxScale = 0;
  float maxAbsScale = 0;
  for (int group = 0; group < kQK_K / 16; ++group) {
    const float scale = fitSymmetricScale(16, 32, x + 16 * group, levels + 16 * group);
    scales[group] = scale;
    const float absScale = std::fabs(scale);
    if (absScale > maxAbsScale) {
      maxAbsScale = absScale;
      maxScale = scale;
    }
  }
  if (maxAbsScale < kGroupMaxEps) {
    std::memset(out, 0, 210);
    return;
  }

  uint8_t *ql = out;
  uint8_t *qh = out + 128;
  int8_t *blockScales = reinterpret_cast<int8_t *>(out + 192);
  const float iscale = -128.f / maxScale;
  storeHalf(out + 208, 1 / iscale);
  for (int group = 0; group < kQK_K / 16; ++group)
    // May wrap below -128 exactly as GGML's int-to-int8 store does.
    blockScales[group] = int8_t(std::min(127, nearestInt(iscale * scales[group])));

  const float superScale = halfToFloat(loadU16(out + 208));
  for (int group = 0; group < kQK_K / 16; ++group) {
    const float d = superScale * float(blockScales[group]);
    if (d == 0)
      continue; // keeps the levels of the unrounded fit, as GGML does
    for (int l = 0; l < 16; ++l) {
      const int q = nearestInt(x[16 * group + l] / d);
      levels[16 * group + l] = int8_t(std::max(-32, std::min(31, q)) + 32);
    }
  }

  for (int j = 0; j < kQK_K; j += 128, ql += 64, qh += 32) {
    for (int l = 0; l < 32; ++l) {
      const uint8_t q1 = uint8_t(levels[j + l]);
      const uint8_t q2 = uint8_t(levels[j + l + 32]);
      const uint8_t q3 = uint8_t(levels[j + l + 64]);
      const uint8_t q4 = uint8_t(levels[j + l + 96]);
      ql[l] = uint8_t((q1 & 0xF) | ((q3 & 0xF) << 4));
      ql[l + 32] = uint8_t((q2 & 0xF) | ((q4 & 0xF) << 4));
      qh[l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
    }
  }
}

template <typename BlockFn>
void quantizeBlocks(const float *src, uint8_t *dst, int64_t blocks, int64_t blockSize,
                    int64_t blockBytes, BlockFn quantizeBlock) {
  for (int64_t b = 0; b < blocks; ++b)
    quantizeBlock(src + b * blockSize, dst + b * blockBytes);
}

} // namespace

Status quantize(GgmlType type, const float *src, void *dst, int64_t elements) {
  const gguf::GgmlTypeTraits &traits = gguf::ggmlTypeTraits(type);
  if (!traits.quantizable)
    return Status::error("Cannot quantize to type " + std::string(traits.name) +
                         ": this project does not support producing it; choose "
                         "f32, f16, bf16, q8_0, q4_K, q5_K or q6_K.");
  if (Status status = detail::checkElementCount(traits, elements, "quantize"); !status.ok())
    return status;
  if (elements == 0)
    return Status::success();
  if (src == nullptr || dst == nullptr)
    return Status::error("Cannot quantize " + std::to_string(elements) + " values to type " +
                         std::string(traits.name) +
                         ": the source or destination buffer is null.");

  auto *out = static_cast<uint8_t *>(dst);
  switch (type) {
  case GgmlType::F32:
    std::memcpy(out, src, size_t(elements) * sizeof(float));
    return Status::success();
  case GgmlType::F16:
    for (int64_t i = 0; i < elements; ++i)
      detail::storeU16(out + 2 * i, floatToHalf(src[i]));
    return Status::success();
  case GgmlType::BF16:
    for (int64_t i = 0; i < elements; ++i)
      detail::storeU16(out + 2 * i, floatToBf16(src[i]));
    return Status::success();
  default:
    break;
  }

  // Block formats have no encoding for NaN or infinity; GGML's reference code
  // would produce garbage (or undefined behaviour) for them.
  for (int64_t i = 0; i < elements; ++i)
    if (!std::isfinite(src[i]))
      return Status::error("Cannot quantize to type " + std::string(traits.name) +
                           ": input value " + std::to_string(i) +
                           " is not finite (NaN or infinity); fix the source "
                           "tensor or keep it in f32/f16/bf16.");

  const int64_t blocks = elements / traits.blockSize;
  switch (type) {
  case GgmlType::Q8_0:
    quantizeBlocks(src, out, blocks, kQK, 34, quantizeBlockQ8_0);
    break;
  case GgmlType::Q4_K:
    quantizeBlocks(src, out, blocks, kQK_K, 144, quantizeBlockQ4_K);
    break;
  case GgmlType::Q5_K:
    quantizeBlocks(src, out, blocks, kQK_K, 176, quantizeBlockQ5_K);
    break;
  case GgmlType::Q6_K:
    quantizeBlocks(src, out, blocks, kQK_K, 210, quantizeBlockQ6_K);
    break;
  default:
    return Status::error("Cannot quantize to type " + std::string(traits.name) +
                         ": the type table marks it quantizable but no encoder "
                         "exists; this is a bug in runtime/gguf/GgmlType.cpp.");
  }
  return Status::success();
}

} // namespace kt::quant
