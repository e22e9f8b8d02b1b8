#include "runtime/cuda/KernelCache.h"

#include <xxhash.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef KT_VERSION
#error "KT_VERSION must name the project version (set by runtime/CMakeLists.txt)"
#endif

namespace kt::cuda {
namespace {

constexpr char kMagic[8] = {'K', 'T', 'K', 'E', 'R', 'N', 'E', 'L'};

void putLe(std::string &out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i)
    out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}
uint64_t getLe(const char *in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i)
    value |= static_cast<uint64_t>(static_cast<unsigned char>(in[i])) << (8 * i);
  return value;
}

std::string hex(const uint8_t *bytes, size_t count) {
  static const char digits[] = "0123456789abcdef";
  std::string text;
  for (size_t i = 0; i < count; ++i) {
    text.push_back(digits[bytes[i] >> 4]);
    text.push_back(digits[bytes[i] & 15]);
  }
  return text;
}

// Creates `path` and its parents (mkdir -p).
Status makeDirectories(const std::string &path) {
  std::string prefix;
  size_t position = 0;
  while (position != std::string::npos) {
    position = path.find('/', position + 1);
    prefix = path.substr(0, position);
    if (prefix.empty())
      continue;
    if (mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST)
      return Status::error("cannot create the kernel cache directory " + prefix + ": " +
                           std::strerror(errno) +
                           "; set KT_CACHE_DIR to a writable directory.");
  }
  return Status::success();
}

// Reads the whole file; false if it does not exist or cannot be read.
bool readFile(const std::string &path, std::string &contents) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return false;
  contents.clear();
  char buffer[1 << 16];
  ssize_t n;
  while ((n = read(fd, buffer, sizeof buffer)) > 0)
    contents.append(buffer, static_cast<size_t>(n));
  close(fd);
  return n == 0;
}

} // namespace

KernelCache::KernelCache(std::string directory, const Nvrtc &nvrtc)
    : directory_(std::move(directory)), nvrtc_(nvrtc) {}

StatusOr<std::string> KernelCache::resolveDirectory(const char *ktCacheDir,
                                                    const char *xdgCacheHome, const char *home) {
  if (ktCacheDir && *ktCacheDir)
    return std::string(ktCacheDir);
  if (xdgCacheHome && *xdgCacheHome)
    return std::string(xdgCacheHome) + "/ktc/kernels";
  if (home && *home)
    return std::string(home) + "/.cache/ktc/kernels";
  return Status::error("no directory for the kernel cache: KT_CACHE_DIR, XDG_CACHE_HOME and "
                       "HOME are all unset; set KT_CACHE_DIR to a writable directory.");
}

StatusOr<std::string> KernelCache::defaultDirectory() {
  return resolveDirectory(std::getenv("KT_CACHE_DIR"), std::getenv("XDG_CACHE_HOME"),
                          std::getenv("HOME"));
}

StatusOr<KernelCache::Key> KernelCache::computeKey(const KernelSpec &spec,
                                                   const std::string &arch) const {
  auto target = parseArch(arch);
  if (!target.ok())
    return target.status();
  XXH3_state_t *state = XXH3_createState();
  if (!state)
    return Status::error("out of memory while hashing a kernel cache key.");
  XXH3_128bits_reset(state);
  // Every field is length-prefixed so that no two different inputs hash the
  // same byte stream.
  auto field = [&](const std::string &text) {
    uint64_t size = text.size();
    XXH3_128bits_update(state, &size, sizeof size);
    XXH3_128bits_update(state, text.data(), text.size());
  };
  field("ktc kernel cache key");
  field(KT_VERSION);
  field(std::to_string(kFormatVersion));
  field(nvrtc_.version());
  field(arch);
  field(spec.file);
  field(spec.entry);
  field(spec.source);
  field(std::to_string(spec.headers.size()));
  for (const auto &header : spec.headers) {
    field(header.name);
    field(header.text);
  }
  // The options hold the arch, the sorted defines and the kernel's own options.
  const auto options = Nvrtc::compileOptions(spec, *target);
  field(std::to_string(options.size()));
  for (const auto &option : options)
    field(option);
  XXH128_hash_t hash = XXH3_128bits_digest(state);
  XXH3_freeState(state);
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, hash);
  Key key;
  std::memcpy(key.bytes, canonical.digest, sizeof key.bytes);
  return key;
}

StatusOr<std::string> KernelCache::keyHex(const KernelSpec &spec, const std::string &arch) const {
  auto key = computeKey(spec, arch);
  if (!key.ok())
    return key.status();
  return hex(key->bytes, sizeof key->bytes);
}

StatusOr<std::string> KernelCache::entryPath(const KernelSpec &spec,
                                             const std::string &arch) const {
  auto key = keyHex(spec, arch);
  if (!key.ok())
    return key.status();
  auto target = parseArch(arch);
  return directory_ + "/" + *key + (target->cubin ? ".cubin" : ".ptx");
}

KernelCacheStats KernelCache::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

std::string KernelCache::lastWriteError() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return lastWriteError_;
}

Status KernelCache::store(const std::string &path, const Key &key,
                          const std::string &payload) const {
  if (Status made = makeDirectories(directory_); !made.ok())
    return made;
  std::string entry(kMagic, sizeof kMagic);
  putLe(entry, kFormatVersion, 4);
  entry.append(reinterpret_cast<const char *>(key.bytes), sizeof key.bytes);
  putLe(entry, payload.size(), 8);
  putLe(entry, XXH3_64bits(payload.data(), payload.size()), 8);
  entry += payload;

  // Unique per process and per call, in the same directory so rename() is atomic.
  static std::atomic<uint64_t> counter{0};
  const std::string temp = path + ".tmp." + std::to_string(getpid()) + "." +
                           std::to_string(counter.fetch_add(1));
  int fd = open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0)
    return Status::error("cannot create " + temp + " in the kernel cache: " +
                         std::strerror(errno) + "; set KT_CACHE_DIR to a writable directory.");
  size_t written = 0;
  while (written < entry.size()) {
    ssize_t n = write(fd, entry.data() + written, entry.size() - written);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      break;
    written += static_cast<size_t>(n);
  }
  // fsync before rename: after a crash the name points at complete data.
  const bool ok = written == entry.size() && fsync(fd) == 0;
  const int savedErrno = errno;
  close(fd);
  if (!ok || rename(temp.c_str(), path.c_str()) != 0) {
    const int error = ok ? errno : savedErrno;
    unlink(temp.c_str());
    return Status::error("cannot write the kernel cache entry " + path + ": " +
                         std::strerror(error) + "; check the free space and permissions of " +
                         directory_ + " or set KT_CACHE_DIR.");
  }
  return Status::success();
}

StatusOr<CompiledKernel> KernelCache::getOrCompile(const KernelSpec &spec,
                                                   const std::string &arch) {
  auto key = computeKey(spec, arch);
  if (!key.ok())
    return key.status();
  auto path = entryPath(spec, arch);
  const bool cubin = parseArch(arch)->cubin;

  std::string contents;
  if (readFile(*path, contents)) {
    const bool valid =
        contents.size() >= kHeaderBytes && std::memcmp(contents.data(), kMagic, 8) == 0 &&
        getLe(contents.data() + 8, 4) == kFormatVersion &&
        std::memcmp(contents.data() + 12, key->bytes, 16) == 0 &&
        getLe(contents.data() + 28, 8) == contents.size() - kHeaderBytes &&
        getLe(contents.data() + 36, 8) ==
            XXH3_64bits(contents.data() + kHeaderBytes, contents.size() - kHeaderBytes);
    if (valid) {
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.hits;
      CompiledKernel kernel;
      kernel.entry = spec.entry;
      kernel.arch = arch;
      kernel.isCubin = cubin;
      kernel.image = contents.substr(kHeaderBytes);
      return kernel;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.badEntries;
  }

  const auto start = std::chrono::steady_clock::now();
  auto compiled = nvrtc_.compile(spec, arch);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.misses;
    stats_.compileSeconds += seconds;
  }
  if (!compiled.ok())
    return compiled;
  if (Status stored = store(*path, *key, compiled->image); !stored.ok()) {
    // A cache that cannot be written costs time on the next run, not correctness.
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.writeFailures;
    lastWriteError_ = stored.message();
  }
  return compiled;
}

} // namespace kt::cuda
