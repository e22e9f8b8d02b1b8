#include "runtime/cpu/GeneratedKernels.h"

#include "runtime/quant/Quant.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include <filesystem>
#include <fstream>
#include <sys/syscall.h>
#include <unistd.h>
#include <xxhash.h>

namespace kt::cpu {

bool hasGeneratedRowKernel(gguf::GgmlType type) {
  return type == gguf::GgmlType::Q8_0 || type == gguf::GgmlType::Q4_K ||
         type == gguf::GgmlType::Q5_K || type == gguf::GgmlType::Q6_K;
}

std::string rowKernelSymbol(gguf::GgmlType type, int64_t cols) {
  return "kt_rows_" + std::string(gguf::ggmlTypeName(type)) + "_" + std::to_string(cols);
}

std::string rowKernelInputSymbol(gguf::GgmlType type, int64_t cols) {
  return rowKernelSymbol(type, cols) + "_input";
}

const char *rowKernelInputRecord(void *handle, gguf::GgmlType type, int64_t cols) {
  return static_cast<const char *>(dlsym(handle, rowKernelInputSymbol(type, cols).c_str()));
}

void sumRunsOf32(const float *x, int64_t ldx, int64_t cols, int64_t tokens, float *xsum) {
  const int64_t runs = cols / 32;
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < runs; ++r) {
      const float *v = x + t * ldx + r * 32;
      float sum = 0;
      for (int i = 0; i < 32; ++i)
        sum += v[i];
      xsum[t * runs + r] = sum;
    }
}

namespace {

// One run of 256 values: its scale and its values x / scale rounded to
// nearest (ties to even) and clamped to [-127, 127]. SSE2 (every x86-64)
// rounds in the default mode as std::nearbyint does, without a libm call
// per value: quantizing decode's activations was a visible part of each
// MoE layer's CPU time.
float quantizeRun(const float *v, int8_t *q) {
#if defined(__SSE2__)
  const __m128 absMask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  __m128 m = _mm_setzero_ps();
  for (int i = 0; i < 256; i += 4) // a NaN value is skipped, as std::max(amax, NaN) does
    m = _mm_max_ps(_mm_and_ps(_mm_loadu_ps(v + i), absMask), m);
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  const float amax = _mm_cvtss_f32(m);
#else
  float amax = 0;
  for (int i = 0; i < 256; ++i)
    amax = std::max(amax, std::fabs(v[i]));
#endif
  const float inverse = amax > 0 ? 127.0f / amax : 0.0f;
#if defined(__SSE2__)
  const __m128 scale = _mm_set1_ps(inverse);
  const __m128i high = _mm_set1_epi16(127), low = _mm_set1_epi16(-127);
  for (int i = 0; i < 256; i += 16) {
    __m128i r[4];
    for (int j = 0; j < 4; ++j)
      r[j] = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(v + i + 4 * j), scale));
    const __m128i a = _mm_max_epi16(_mm_min_epi16(_mm_packs_epi32(r[0], r[1]), high), low);
    const __m128i b = _mm_max_epi16(_mm_min_epi16(_mm_packs_epi32(r[2], r[3]), high), low);
    _mm_storeu_si128(reinterpret_cast<__m128i *>(q + i), _mm_packs_epi16(a, b));
  }
#else
  for (int i = 0; i < 256; ++i)
    q[i] = static_cast<int8_t>(std::clamp(std::nearbyint(v[i] * inverse), -127.0f, 127.0f));
#endif
  return amax / 127.0f;
}

} // namespace

void quantizeActivations(const float *x, int64_t ldx, int64_t cols, int64_t tokens, int8_t *xq,
                         float *xqScale, int16_t *xqSum16, int8_t *xqNibbleOrder) {
  const int64_t runs = cols / 256;
  int8_t q[256];
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t r = 0; r < runs; ++r) {
      xqScale[t * runs + r] = quantizeRun(x + t * ldx + r * 256, q);
      if (xq)
        std::copy(q, q + 256, xq + t * cols + r * 256);
      if (xqNibbleOrder) // groups of 32 in the order 0, 2, 1, 3 per 128 values
        for (int g = 0; g < 8; ++g) {
          const int slot = g / 4 * 4 + (g % 2) * 2 + g % 4 / 2;
          std::copy(q + 32 * g, q + 32 * g + 32, xqNibbleOrder + t * cols + r * 256 + 32 * slot);
        }
      for (int j = 0; j < 16; ++j) {
        int32_t sum = 0;
        for (int i = 0; i < 16; ++i)
          sum += q[16 * j + i];
        xqSum16[t * (cols / 16) + r * 16 + j] = static_cast<int16_t>(sum);
      }
    }
}

std::string tileKernelSymbol(gguf::GgmlType type, int64_t cols) {
  return "kt_tiles_" + std::string(gguf::ggmlTypeName(type)) + "_" + std::to_string(cols);
}

void packTileActivations(const float *x, int64_t ldx, int64_t cols, int64_t tokens, uint16_t *out) {
  const int64_t padded = (tokens + kTileTokens - 1) / kTileTokens * kTileTokens;
  const int64_t steps = cols / 32;
  for (int64_t t = 0; t < padded; ++t) {
    uint16_t *tiles = out + (t / 16) * steps * 512 + (t % 16) * 2;
    if (t >= tokens) {
      for (int64_t s = 0; s < steps; ++s)
        for (int64_t p = 0; p < 16; ++p)
          std::memset(tiles + s * 512 + p * 32, 0, 2 * sizeof(uint16_t));
      continue;
    }
    const float *row = x + t * ldx;
    for (int64_t c = 0; c < cols; ++c)
      tiles[(c / 32) * 512 + (c % 32 / 2) * 32 + c % 2] = quant::floatToBf16(row[c]);
  }
}

std::string enableAmxTiles() {
  // arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): once per process.
  static const std::string refusal = [] {
    constexpr int kRequestPermission = 0x1023, kTileData = 18;
    if (syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0)
      return std::string();
    return "the kernel refuses AMX tile data (" + std::string(std::strerror(errno)) +
           "; Linux 5.16 or newer grants it)";
  }();
  return refusal;
}

StatusOr<std::string> codeFileHash(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Status::error("cannot read " + path);
  XXH3_state_t *state = XXH3_createState();
  XXH3_64bits_reset(state);
  std::vector<char> buffer(1 << 16);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    XXH3_64bits_update(state, buffer.data(), static_cast<size_t>(in.gcount()));
  }
  uint64_t hash = XXH3_64bits_digest(state);
  XXH3_freeState(state);
  char text[17];
  std::snprintf(text, sizeof text, "%016" PRIx64, hash);
  return std::string(text);
}

StatusOr<std::unique_ptr<GeneratedKernels>> GeneratedKernels::load(
    const plan::CpuCode &code, const std::string &planPath,
    const std::vector<std::string> &hostFeatures) {
  namespace fs = std::filesystem;
  const fs::path planDirectory = fs::path(planPath).parent_path();
  // Absolute: dlopen() searches the library path for a name without a slash.
  std::error_code absoluteError;
  const std::string path = fs::absolute(planDirectory / code.file, absoluteError).string();
  const std::string recompile = "; recompile the plan with ktc compile (it writes the code "
                                "object beside the plan).";
  // The ISA first: a plan for another CPU is refused before anything is loaded.
  for (const std::string &feature : code.features)
    if (std::find(hostFeatures.begin(), hostFeatures.end(), feature) == hostFeatures.end())
      return Status::error(planPath + ": its CPU expert code " + path + " was compiled for " +
                           code.cpu + " and uses " + feature +
                           ", which this host lacks. Recompile the plan on this host (ktc "
                           "compile without --target-cpu) or for an older CPU this host "
                           "covers (--target-cpu haswell, or --target-cpu x86-64 for any "
                           "x86-64).");
  std::error_code error;
  const uint64_t size = fs::file_size(path, error);
  if (error)
    return Status::error(planPath + ": its CPU expert code " + path + " is missing" + recompile);
  StatusOr<std::string> hash = codeFileHash(path);
  if (!hash)
    return hash.status();
  if (size != code.size || *hash != code.hash)
    return Status::error(planPath + ": its CPU expert code " + path +
                         " is not the file the plan was compiled with (size " +
                         std::to_string(size) + ", hash " + *hash + "; the plan recorded " +
                         std::to_string(code.size) + ", " + code.hash + ")" + recompile);

  std::unique_ptr<GeneratedKernels> kernels(new GeneratedKernels());
  kernels->path_ = path;
  kernels->handle_ = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!kernels->handle_)
    return Status::error(planPath + ": cannot load its CPU expert code " + path + ": " +
                         dlerror() + recompile);
  for (const plan::CpuCodeKernel &kernel : code.kernels) {
    std::optional<gguf::GgmlType> type = gguf::parseGgmlType(kernel.type);
    const bool tiles = kernel.input == "bf16-tiles";
    if (!type || kernel.symbol != (tiles ? tileKernelSymbol(*type, kernel.cols)
                                         : rowKernelSymbol(*type, kernel.cols)))
      return Status::error(planPath + ": cpu_code lists the kernel '" + kernel.symbol +
                           "' for " + kernel.type + " rows of " + std::to_string(kernel.cols) +
                           " values, which this runtime does not know" + recompile);
    void *symbol = dlsym(kernels->handle_, kernel.symbol.c_str());
    if (!symbol)
      return Status::error(planPath + ": its CPU expert code " + path + " lacks the kernel " +
                           kernel.symbol + recompile);
    if (tiles) {
      kernels->tilesUnavailable_ = enableAmxTiles(); // asked once per process
      if (kernels->tilesUnavailable_.empty())
        kernels->kernels_[{*type, kernel.cols}].tiles = reinterpret_cast<TileKernel>(symbol);
      continue;
    }
    const bool nibbleOrder = kernel.input == kNibbleOrderInput;
    const bool quantized = kernel.input == "q8" || nibbleOrder;
    if (kernel.input != "f32" && !quantized)
      return Status::error(planPath + ": cpu_code's kernel " + kernel.symbol +
                           " reads activations as '" + kernel.input +
                           "', which this runtime does not know" + recompile);
    // The object says what each row kernel reads; it must be what the plan
    // recorded (objects without the record predate nibble order: "q8" or "f32").
    if (const char *input = rowKernelInputRecord(kernels->handle_, *type, kernel.cols);
        input && kernel.input != input)
      return Status::error(planPath + ": cpu_code's kernel " + kernel.symbol + " reads '" + input +
                           "' activations, not '" + kernel.input + "' as recorded" + recompile);
    if (quantized && kernel.cols % 256 != 0)
      return Status::error(planPath + ": cpu_code's kernel " + kernel.symbol +
                           " reads int8 activations of rows that are not whole 256-value runs" +
                           recompile);
    LoadedKernel &loaded = kernels->kernels_[{*type, kernel.cols}];
    loaded.function = reinterpret_cast<RowKernel>(symbol);
    loaded.quantizedInput = quantized;
    loaded.nibbleOrderInput = nibbleOrder;
  }
  return kernels;
}

GeneratedKernels::~GeneratedKernels() {
  if (handle_)
    dlclose(handle_);
}

LoadedKernel GeneratedKernels::find(gguf::GgmlType type, int64_t cols) const {
  auto it = kernels_.find({type, cols});
  return it == kernels_.end() ? LoadedKernel{} : it->second;
}

} // namespace kt::cpu
