// NVRTC, loaded at run time (libnvrtc.so.13), so binaries build and run on hosts
// without the CUDA toolkit and report its absence as an error value.
#pragma once

#include "runtime/cuda/KernelSpec.h"
#include "runtime/support/Status.h"

#include <memory>
#include <string>
#include <vector>

namespace kt::cuda {

// What NVRTC makes for an architecture name: sm_XY / sm_XYa give a CUBIN for
// that exact GPU; compute_XY gives PTX that the driver compiles for any GPU of
// that capability or newer (the fallback for GPUs newer than we compile for).
struct ArchTarget {
  std::string arch;
  bool cubin = false;
};
StatusOr<ArchTarget> parseArch(const std::string &arch);

class Nvrtc {
public:
  // The process-wide instance: the first call loads the library (trying
  // libnvrtc.so.13, libnvrtc.so, then $CUDA_HOME/lib64 and /usr/local/cuda/lib64);
  // later calls return the same instance or the same error.
  static StatusOr<const Nvrtc *> instance();
  // Loads the first of `candidates` (dlopen names or paths) that opens.
  static StatusOr<std::unique_ptr<Nvrtc>> loadFrom(const std::vector<std::string> &candidates);
  static const std::vector<std::string> &defaultLibraryCandidates();

  ~Nvrtc();
  Nvrtc(const Nvrtc &) = delete;
  Nvrtc &operator=(const Nvrtc &) = delete;

  int versionMajor() const { return major_; }
  int versionMinor() const { return minor_; }
  std::string version() const; // "13.0"
  const std::string &libraryPath() const { return libraryPath_; }
  // The sm numbers this NVRTC can compile for (75, 80, ..., 90, ...).
  std::vector<int> supportedArchs() const;

  // Every option passed to NVRTC for `spec` on `arch`, in order; the cache
  // key includes them.
  static std::vector<std::string> compileOptions(const KernelSpec &spec, const ArchTarget &target);

  // Compiles; a failure carries NVRTC's log, the kernel and its specialization.
  // Thread-safe (each call uses its own NVRTC program).
  StatusOr<CompiledKernel> compile(const KernelSpec &spec, const std::string &arch) const;

  struct Api;

private:
  Nvrtc() = default;
  void *library_ = nullptr;
  std::string libraryPath_;
  int major_ = 0;
  int minor_ = 0;
  std::unique_ptr<Api> api_;
};

} // namespace kt::cuda
