// Produces golden fixtures for kt_quant from GGML's reference functions.
// Not part of the build: it links GGML's ggml-quants.c; README.md says how to
// compile and run it.
#include "ggml-common.h"
#include "ggml-quants.h"
#include "ggml-impl.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Symbols ggml-quants.o references but the functions used here never reach.
void ggml_abort(const char *file, int line, const char *fmt, ...) {
  fprintf(stderr, "ggml_abort %s:%d %s\n", file, line, fmt);
  abort();
}
size_t ggml_row_size(enum ggml_type t, int64_t n) { (void)t; (void)n; abort(); }
const char *ggml_type_name(enum ggml_type t) { (void)t; abort(); }
size_t ggml_type_size(enum ggml_type t) { (void)t; abort(); }

static uint64_t rngState = 0x6b745f7175616e74ull; // "kt_quant"
static uint64_t nextU64(void) { // splitmix64
  uint64_t z = (rngState += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static double uniform01(void) { return (double)(nextU64() >> 11) * (1.0 / 9007199254740992.0); }
static double gauss(void) {
  double u1 = uniform01(), u2 = uniform01();
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static void writeFile(const char *dir, const char *name, const void *data, size_t bytes) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(data, 1, bytes, f) != bytes) { perror(path); exit(1); }
  fclose(f);
}

// A finite fp16 of moderate magnitude: |v| in [2^-14, 2^8), sometimes zero or subnormal.
static uint16_t moderateHalf(void) {
  uint64_t r = nextU64();
  uint16_t sign = (r & 1) ? 0x8000 : 0;
  unsigned kind = (r >> 1) & 15;
  uint16_t mant = (r >> 8) & 0x3ff;
  if (kind == 0) return sign;                                // zero
  if (kind == 1) return sign | (mant ? mant : 1);            // subnormal
  uint16_t exp = 1 + (uint16_t)((r >> 20) % 22);             // 1..22
  return sign | (uint16_t)(exp << 10) | mant;
}

typedef void (*DequantFn)(const void *, float *, int64_t);
struct DequantCase {
  const char *name;
  int blockSize, blockBytes, blocks;
  int halfOffsets[2]; int halfCount;
  DequantFn fn;
};

static void deqF32(const void *x, float *y, int64_t k) { memcpy(y, x, (size_t)k * 4); }
static void deqF16(const void *x, float *y, int64_t k) {
  const uint16_t *h = x; for (int64_t i = 0; i < k; ++i) y[i] = ggml_compute_fp16_to_fp32(h[i]);
}
static void deqBF16(const void *x, float *y, int64_t k) {
  const uint16_t *h = x;
  for (int64_t i = 0; i < k; ++i) { ggml_bf16_t b; b.bits = h[i]; y[i] = ggml_compute_bf16_to_fp32(b); }
}
#define WRAP(t) static void deq_##t(const void *x, float *y, int64_t k) { dequantize_row_##t((const block_##t *)x, y, k); }
WRAP(q8_0) WRAP(q4_0) WRAP(q4_1) WRAP(q5_0) WRAP(q5_1) WRAP(q2_K) WRAP(q3_K) WRAP(q4_K) WRAP(q5_K) WRAP(q6_K)

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: driver OUTDIR\n"); return 2; }
  const char *dir = argv[1];

  // (a) dequantization of random blocks
  const struct DequantCase cases[] = {
      {"f32", 1, 4, 1024, {0}, 0, deqF32},
      {"f16", 1, 2, 1024, {0}, 0, deqF16},
      {"bf16", 1, 2, 1024, {0}, 0, deqBF16},
      {"q8_0", 32, 34, 32, {0}, 1, deq_q8_0},
      {"q4_0", 32, 18, 32, {0}, 1, deq_q4_0},
      {"q4_1", 32, 20, 32, {0, 2}, 2, deq_q4_1},
      {"q5_0", 32, 22, 32, {0}, 1, deq_q5_0},
      {"q5_1", 32, 24, 32, {0, 2}, 2, deq_q5_1},
      {"q2_K", 256, 84, 8, {80, 82}, 2, deq_q2_K},
      {"q3_K", 256, 110, 8, {108}, 1, deq_q3_K},
      {"q4_K", 256, 144, 8, {0, 2}, 2, deq_q4_K},
      {"q5_K", 256, 176, 8, {0, 2}, 2, deq_q5_K},
      {"q6_K", 256, 210, 8, {208}, 1, deq_q6_K},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; ++c) {
    const struct DequantCase *dc = &cases[c];
    size_t inBytes = (size_t)dc->blockBytes * dc->blocks;
    int64_t elements = (int64_t)dc->blockSize * dc->blocks;
    unsigned char *in = malloc(inBytes);
    float *out = malloc((size_t)elements * 4);
    for (size_t i = 0; i < inBytes; ++i) in[i] = (unsigned char)nextU64();
    if (!strcmp(dc->name, "f16") || !strcmp(dc->name, "bf16")) {
      // Make sure the special encodings are present besides random bits.
      const uint16_t special[] = {0x0000, 0x8000, 0x0001, 0x8001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00,
                                  0x7c01, 0x7e00, 0xfe00, 0x7fff, 0x3c00, 0x7f80, 0xff80, 0x7f81, 0x7fc0,
                                  0x0080, 0x007f, 0x7f7f, 0xffff};
      memcpy(in, special, sizeof special);
    }
    for (int b = 0; b < dc->blocks; ++b)
      for (int h = 0; h < dc->halfCount; ++h) {
        uint16_t v = moderateHalf();
        memcpy(in + (size_t)b * dc->blockBytes + dc->halfOffsets[h], &v, 2);
      }
    dc->fn(in, out, elements);
    char name[64];
    snprintf(name, sizeof name, "dequant_%s.bin", dc->name);
    writeFile(dir, name, in, inBytes);
    snprintf(name, sizeof name, "dequant_%s.f32", dc->name);
    writeFile(dir, name, out, (size_t)elements * 4);
    free(in);
    free(out);
  }

  // (b) quantization of f32 rows
  enum { kRows = 24, kCols = 256 };
  static float rows[kRows][kCols];
  for (int r = 0; r < kRows; ++r) {
    float *x = rows[r];
    for (int i = 0; i < kCols; ++i) {
      double g = gauss();
      double v;
      switch (r) {
      case 0: v = g; break;                                   // unit Gaussian
      case 1: v = 0.02 * g; break;                            // typical weight scale
      case 2: v = 2.0 * uniform01() - 1.0; break;             // uniform
      case 3: v = 0.0; break;                                 // zeros
      case 4: v = 0.5; break;                                 // positive constant
      case 5: v = -3.0; break;                                // negative constant
      case 6: v = (i % 53 == 7) ? 100.0 * g : g; break;       // outliers
      case 7: v = 1e-8 * g; break;                            // tiny
      case 8: v = 1e-20 * g; break;                           // below GGML's group epsilon
      case 9: v = 1e-40 * g; break;                           // f32 subnormals
      case 10: v = fabs(g) + 1.0; break;                      // all positive, min > 0
      case 11: v = -fabs(g) - 0.25; break;                    // all negative
      case 12: v = (i % 37 == 3) ? g : 0.0; break;            // sparse
      case 13: v = g * pow(10.0, (i / 16) - 8); break;        // sub-blocks of very different scale
      case 14: v = 1e5 * g; break;                            // large
      case 15: v = 1e7 * g; break;                            // fp16 super-block scale overflows
      case 16: v = (i == 77) ? 1.0 : 0.0; break;              // single non-zero
      case 17: v = ((i % 16) - 8) * 0.5; break;               // exact grid values (rounding ties)
      case 18: v = (i & 1) ? 1.0 : -1.0; break;               // alternating signs
      case 19: v = g + 2.0; break;                            // offset mean
      case 20: { double u = uniform01() - 0.5; v = (u < 0 ? 1 : -1) * log(1 - 2 * fabs(u)) * 0.1; } break; // Laplace
      case 21: v = (i < 128) ? 0.0 : g; break;                // half-zero super-block
      case 22: v = g * g * g; break;                          // heavy-tailed
      default: v = 0.1 * g - 0.05; break;
      }
      x[i] = (float)v;
    }
  }
  writeFile(dir, "quant_input.f32", rows, sizeof rows);
  {
    static unsigned char out[kRows * (kCols / 32) * 34];
    quantize_row_q8_0_ref(&rows[0][0], (block_q8_0 *)out, kRows * kCols);
    writeFile(dir, "quant_q8_0.bin", out, kRows * (kCols / 32) * 34);
  }
  {
    static unsigned char out[kRows * 210];
    quantize_row_q4_K_ref(&rows[0][0], (block_q4_K *)out, kRows * kCols);
    writeFile(dir, "quant_q4_K.bin", out, kRows * 144);
    quantize_row_q5_K_ref(&rows[0][0], (block_q5_K *)out, kRows * kCols);
    writeFile(dir, "quant_q5_K.bin", out, kRows * 176);
    quantize_row_q6_K_ref(&rows[0][0], (block_q6_K *)out, kRows * kCols);
    writeFile(dir, "quant_q6_K.bin", out, kRows * 210);
  }

  // (c) f32 -> f16 / bf16 conversion
  enum { kConv = 1024 };
  static float conv[kConv];
  static uint16_t f16[kConv], bf16[kConv];
  for (int i = 0; i < kConv; ++i) {
    uint32_t bits;
    uint64_t r = nextU64();
    switch (i % 4) {
    case 0: bits = (uint32_t)r; break;                                              // any bit pattern
    case 1: bits = ((uint32_t)(101 + (r >> 40) % 46) << 23) | ((uint32_t)r & 0x807fffff); break; // f16 range
    case 2: bits = ((uint32_t)(101 + (r >> 40) % 46) << 23) | ((uint32_t)r & 0x807fe000) | 0x1000; break; // f16 ties
    default: bits = ((uint32_t)r & 0xffff0000) | 0x8000 | (uint32_t)((r >> 32) & 1); break; // bf16 ties and near-ties
    }
    memcpy(&conv[i], &bits, 4);
    f16[i] = ggml_compute_fp32_to_fp16(conv[i]);
    bf16[i] = ggml_compute_fp32_to_bf16(conv[i]).bits;
  }
  writeFile(dir, "convert_input.f32", conv, sizeof conv);
  writeFile(dir, "convert_f16.bin", f16, sizeof f16);
  writeFile(dir, "convert_bf16.bin", bf16, sizeof bf16);
  return 0;
}
