// The on-disk cache of compiled kernels (docs/gpu-kernels.md).
//
// Key: XXH3-128 over the kernel source, every header it includes, the sorted
// specialization defines, the NVRTC options, the NVRTC version, the arch and
// the project version. Entry file <dir>/<key>.<cubin|ptx>:
//   "KTKERNEL" | u32 format version | 16-byte key | u64 payload length |
//   u64 XXH3-64 of the payload | payload          (little-endian)
// Entries are written to a unique temp file in the same directory and
// rename()d into place, so readers and concurrent writers only ever see whole
// entries. Every read is verified; a bad entry is a miss: recompiled and
// rewritten, never loaded.
#pragma once

#include "runtime/cuda/KernelSpec.h"
#include "runtime/cuda/Nvrtc.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <mutex>
#include <string>

namespace kt::cuda {

struct KernelCacheStats {
  uint64_t hits = 0;          // loaded from disk
  uint64_t misses = 0;        // compiled (no entry, or a bad one)
  uint64_t badEntries = 0;    // entries rejected by verification (subset of misses)
  uint64_t writeFailures = 0; // compiled but not stored (the kernel is still returned)
  double compileSeconds = 0;  // NVRTC time over all misses
};

class KernelCache {
public:
  static constexpr uint32_t kFormatVersion = 1;
  static constexpr size_t kHeaderBytes = 8 + 4 + 16 + 8 + 8;

  KernelCache(std::string directory, const Nvrtc &nvrtc);

  // $KT_CACHE_DIR, else $XDG_CACHE_HOME/ktc/kernels, else $HOME/.cache/ktc/kernels.
  static StatusOr<std::string> defaultDirectory();
  // The same rule on given values (null or empty = unset).
  static StatusOr<std::string> resolveDirectory(const char *ktCacheDir, const char *xdgCacheHome,
                                                const char *home);

  StatusOr<CompiledKernel> getOrCompile(const KernelSpec &spec, const std::string &arch);

  // The 32 hex digits of the key, and the entry's path (for tests and tools).
  StatusOr<std::string> keyHex(const KernelSpec &spec, const std::string &arch) const;
  StatusOr<std::string> entryPath(const KernelSpec &spec, const std::string &arch) const;
  const std::string &directory() const { return directory_; }
  KernelCacheStats stats() const;
  // Why the last store failed, empty if none did.
  std::string lastWriteError() const;

private:
  struct Key {
    uint8_t bytes[16];
  };
  StatusOr<Key> computeKey(const KernelSpec &spec, const std::string &arch) const;
  Status store(const std::string &path, const Key &key, const std::string &payload) const;

  std::string directory_;
  const Nvrtc &nvrtc_;
  mutable std::mutex mutex_;
  KernelCacheStats stats_;
  std::string lastWriteError_;
};

} // namespace kt::cuda
