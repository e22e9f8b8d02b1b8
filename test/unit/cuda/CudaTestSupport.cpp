#include "test/unit/cuda/CudaTestSupport.h"

#include <dirent.h>
#include <stdexcept>
#include <cstdlib>
#include <unistd.h>

namespace kt::cuda::test {

TempDir::TempDir() {
  const char *base = std::getenv("TMPDIR");
  std::string pattern = std::string(base && *base ? base : "/tmp") + "/kt-cuda-test-XXXXXX";
  if (!mkdtemp(pattern.data()))
    throw std::runtime_error("mkdtemp failed for " + pattern);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::string command = "rm -rf '" + path_ + "'";
  (void)!std::system(command.c_str());
}

std::vector<std::string> listDirectory(const std::string &path) {
  std::vector<std::string> names;
  if (DIR *dir = opendir(path.c_str())) {
    while (dirent *entry = readdir(dir)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..")
        names.push_back(name);
    }
    closedir(dir);
  }
  return names;
}

ModelKernelShapes deepseekV3Shapes() {
  ModelKernelShapes shapes;
  shapes.hidden = 7168;
  shapes.vocab = 129280;
  shapes.rmsNormEps = 1e-6f;
  shapes.embeddingType = gguf::GgmlType::Q8_0;
  shapes.extraNormWidths = {1536}; // q_lora_rank (the latent's norm is the cache append's)
  shapes.gemvMatrices = {
      {gguf::GgmlType::Q8_0, 1536, 7168},   // q_a_proj
      {gguf::GgmlType::Q8_0, 24576, 1536},  // q_b_proj: 128 heads x 192
      {gguf::GgmlType::Q8_0, 576, 7168},    // kv_a_proj_with_mqa: 512 + 64
      {gguf::GgmlType::Q8_0, 7168, 16384},  // o_proj: 128 heads x 128
      {gguf::GgmlType::Q8_0, 2048, 7168},   // shared expert gate/up
      {gguf::GgmlType::Q8_0, 7168, 2048},   // shared expert down
      {gguf::GgmlType::Q8_0, 18432, 7168},  // dense layer gate/up
      {gguf::GgmlType::Q8_0, 7168, 18432},  // dense layer down
      {gguf::GgmlType::Q8_0, 129280, 7168}, // lm_head
      // Q4_K_M-style GGUF files: k-quant attention, shared experts and lm_head.
      {gguf::GgmlType::Q4_K, 1536, 7168},
      {gguf::GgmlType::Q5_K, 24576, 1536},
      {gguf::GgmlType::Q6_K, 7168, 16384},
      {gguf::GgmlType::Q6_K, 129280, 7168},
      // The router (f32), and MLA's per-head k_b and v_b matrices.
      {gguf::GgmlType::F32, 256, 7168},
      {gguf::GgmlType::Q8_0, 512, 128, true},
      {gguf::GgmlType::Q8_0, 128, 512, true},
      {gguf::GgmlType::BF16, 512, 128, true},
      {gguf::GgmlType::F16, 128, 512, true},
  };
  shapes.gates = {{256, 8, 8, 4, true, true, true, 2.5f}};
  // Queries: 128 heads of 192, rope at 128 (the new key's rope is the
  // cache append's).
  shapes.ropes = {{64, 128, 192, 128, 1.0f}};
  shapes.mlaDecode = {{512, 64, 0.1352f, 128}};
  shapes.elementwiseCounts = {7168, 2048};
  shapes.fp8Matrices = {{1536, 7168}, {24576, 1536}, {576, 7168}, {7168, 16384}};
  shapes.gpuExperts = {{gguf::GgmlType::Q4_K, 7168, 2048, 8}};
  return shapes;
}

ModelKernelShapes smallModelShapes() {
  ModelKernelShapes shapes;
  shapes.hidden = 256;
  shapes.vocab = 1024;
  shapes.rmsNormEps = 1e-6f;
  shapes.embeddingType = gguf::GgmlType::F32;
  shapes.extraNormWidths = {96, 64};
  shapes.gemvMatrices = {{gguf::GgmlType::Q8_0, 96, 256},  {gguf::GgmlType::Q8_0, 256, 128},
                         {gguf::GgmlType::Q8_0, 1024, 256}, {gguf::GgmlType::Q4_K, 96, 256},
                         {gguf::GgmlType::Q5_K, 256, 512},  {gguf::GgmlType::Q6_K, 1024, 256},
                         {gguf::GgmlType::F32, 16, 256},    {gguf::GgmlType::F16, 64, 32}};
  shapes.mlaDecode = {{64, 16, 0.25f, 4}};
  shapes.gpuExperts = {{gguf::GgmlType::Q4_K, 256, 256, 4}, {gguf::GgmlType::Q8_0, 256, 128, 2}};
  shapes.gates = {{16, 4, 4, 2, true, true, true, 2.5f}, {64, 6, 1, 1, false, false, false, 1.0f}};
  return shapes;
}

const std::vector<std::string> &ciArchitectures() {
  static const std::vector<std::string> archs = {"sm_75", "sm_80", "sm_89", "sm_90a",
                                                 "compute_90"};
  return archs;
}

} // namespace kt::cuda::test
