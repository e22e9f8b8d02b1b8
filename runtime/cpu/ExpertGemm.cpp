#include "runtime/cpu/ExpertGemm.h"

#include "runtime/quant/Quant.h"

#ifdef KT_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>
#endif

#include <algorithm>

namespace kt::cpu {
namespace {
// The reference product, into rows `ldy` apart.
void referenceProduct(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens,
                      float *y, int64_t ldy) {
  if (ldy == w.rows) {
    matmul(pool, w, x, tokens, y);
    return;
  }
  std::vector<float> packed(static_cast<size_t>(tokens * w.rows));
  matmul(pool, w, x, tokens, packed.data());
  for (int64_t t = 0; t < tokens; ++t)
    std::copy_n(packed.data() + t * w.rows, w.rows, y + t * ldy);
}
} // namespace

#ifdef KT_HAVE_DNNL
bool haveExpertGemm() {
  // oneDNN multiplies bf16 only on AVX-512 (or AMX) hosts; elsewhere it
  // cannot create the primitive, and the row kernels stay.
  static const bool offered = [] {
    try {
      using namespace dnnl;
      using dt = memory::data_type;
      engine cpu(engine::kind::cpu, 0);
      memory::desc src({16, 32}, dt::bf16, memory::format_tag::ab);
      memory::desc weights({32, 16}, dt::bf16, memory::format_tag::ba);
      memory::desc dst({16, 16}, dt::f32, memory::format_tag::ab);
      matmul::primitive_desc(matmul::desc(src, weights, dst), cpu);
      return true;
    } catch (const dnnl::error &) {
      return false;
    }
  }();
  return offered;
}

void ExpertGemm::multiply(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens,
                          float *y, int64_t ldy) {
  if (!haveExpertGemm()) {
    referenceProduct(pool, w, x, tokens, y, ldy);
    return;
  }
  const int64_t rows = w.rows, cols = w.cols;
  weights_.resize(static_cast<size_t>(rows * cols));
  input_.resize(static_cast<size_t>(tokens * cols));
  // The weights decoded to f32 and rounded to bf16, 16 rows per step, and
  // the activations rounded to bf16: on oneDNN's OpenMP threads, which
  // would otherwise spin against the pool's threads between the products.
  constexpr int64_t kRowsPerTask = 16;
  const int64_t tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  const size_t scratchFloats = static_cast<size_t>(kRowsPerTask * cols);
  omp_set_num_threads(pool.threadCount());
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t first = task * kRowsPerTask, count = std::min(kRowsPerTask, rows - first);
    const float *decoded = decodeRows(w, first, count, threadScratch(0, scratchFloats));
    uint16_t *out = weights_.data() + first * cols;
    for (int64_t i = 0; i < count * cols; ++i)
      out[i] = quant::floatToBf16(decoded[i]);
  }
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t c = 0; c < cols; ++c)
      input_[static_cast<size_t>(t * cols + c)] = quant::floatToBf16(x[t * cols + c]);

  using namespace dnnl;
  using dt = memory::data_type;
  static engine cpu(engine::kind::cpu, 0);
  static stream s(cpu);
  memory::desc src({tokens, cols}, dt::bf16, memory::format_tag::ab);
  memory::desc weights({cols, rows}, dt::bf16, memory::format_tag::ba); // GGUF's rows of `cols`
  memory::desc dst({tokens, rows}, dt::f32, memory::dims{ldy, 1});
  // oneDNN keeps created primitives in its cache: a shape seen before is cheap.
  dnnl::matmul product(dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, weights, dst), cpu));
  memory a(src, cpu, input_.data()), b(weights, cpu, weights_.data()), c(dst, cpu, y);
  product.execute(s, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
  s.wait();
}
#else
bool haveExpertGemm() { return false; }

void ExpertGemm::multiply(ThreadPool &pool, const WeightMatrix &w, const float *x, int64_t tokens,
                          float *y, int64_t ldy) {
  referenceProduct(pool, w, x, tokens, y, ldy);
}
#endif

} // namespace kt::cpu
