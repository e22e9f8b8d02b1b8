// The text of every file under kernels/ (*.cu and *.cuh), embedded at build
// time by kernels/EmbedKernels.cmake.
#pragma once

#include <string_view>
#include <vector>

namespace kt::cuda {

struct EmbeddedKernelFile {
  std::string_view name; // file name, e.g. "rms_norm.cu" or "common.cuh"
  std::string_view text;
};

const std::vector<EmbeddedKernelFile> &embeddedKernelFiles();

} // namespace kt::cuda
