// A kernel specialization (source, headers, constants, options) and the code
// NVRTC made of it for one GPU architecture.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace kt::cuda {

struct KernelHeader {
  std::string name; // as the source includes it: #include "common.cuh"
  std::string text;
};

struct KernelSpec {
  std::string file;   // kernel source file name, e.g. "rms_norm.cu" (NVRTC's program name)
  std::string entry;  // the extern "C" __global__ function to launch
  std::string source; // full text of `file`
  std::vector<KernelHeader> headers;          // every header the source includes
  std::map<std::string, std::string> defines; // -DNAME=VALUE, sorted by name
  std::vector<std::string> options;           // extra NVRTC options the kernel asks for
  unsigned blockThreads = 0;                  // launch block size the defines assume

  // "rms_norm (rms_norm.cu; EPS=1e-06f HIDDEN=7168)", for messages.
  std::string describe() const;
};

struct CompiledKernel {
  std::string entry;
  std::string arch;   // as requested: sm_90a, sm_80, compute_90, ...
  bool isCubin = false; // CUBIN for sm_XY, else PTX (JIT-compiled by the driver)
  std::string image;  // the CUBIN bytes, or the PTX text
  std::string log;    // the compiler's notes on a fresh compile (warnings, ptxas notes)
};

} // namespace kt::cuda
