// The on-disk kernel cache: hits and misses, what the key covers, verification
// of entries, concurrent writers, directory resolution. Needs NVRTC, no GPU.
#include "runtime/cuda/KernelCache.h"
#include "runtime/cuda/KernelCatalog.h"
#include "test/unit/cuda/CudaTestSupport.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <set>
#include <sys/stat.h>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace kt::cuda {
namespace {

std::string readAll(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void writeAll(const std::string &path, const std::string &data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
}

class KernelCacheTest : public ::testing::Test {
protected:
  void SetUp() override {
    auto loaded = Nvrtc::instance();
    if (!loaded.ok())
      GTEST_SKIP() << loaded.message();
    nvrtc = *loaded;
    auto made = rmsNormSpec(256, 1e-6f);
    ASSERT_TRUE(made.ok()) << made.message();
    spec = *made;
  }
  const Nvrtc *nvrtc = nullptr;
  KernelSpec spec;
  test::TempDir dir;
};

TEST_F(KernelCacheTest, MissThenHitWithoutCompilingAgain) {
  KernelCache cache(dir.path() + "/nested/kernels", *nvrtc);
  auto first = cache.getOrCompile(spec, "sm_90a");
  ASSERT_TRUE(first.ok()) << first.message();
  EXPECT_EQ(cache.stats().misses, 1u);
  EXPECT_EQ(cache.stats().hits, 0u);
  EXPECT_GT(cache.stats().compileSeconds, 0.0);
  EXPECT_EQ(cache.stats().writeFailures, 0u) << cache.lastWriteError();

  auto second = cache.getOrCompile(spec, "sm_90a");
  ASSERT_TRUE(second.ok()) << second.message();
  EXPECT_EQ(cache.stats().misses, 1u);
  EXPECT_EQ(cache.stats().hits, 1u);
  EXPECT_EQ(second->image, first->image);
  EXPECT_TRUE(second->isCubin);

  // A new cache object (as in a new process) finds the entry on disk.
  KernelCache fresh(dir.path() + "/nested/kernels", *nvrtc);
  auto third = fresh.getOrCompile(spec, "sm_90a");
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(fresh.stats().hits, 1u);
  EXPECT_EQ(fresh.stats().misses, 0u);
  EXPECT_EQ(third->image, first->image);
  EXPECT_EQ(test::listDirectory(dir.path() + "/nested/kernels").size(), 1u);
}

TEST_F(KernelCacheTest, PtxEntriesRoundTrip) {
  KernelCache cache(dir.path(), *nvrtc);
  auto first = cache.getOrCompile(spec, "compute_90");
  ASSERT_TRUE(first.ok()) << first.message();
  auto second = cache.getOrCompile(spec, "compute_90");
  ASSERT_TRUE(second.ok());
  EXPECT_FALSE(second->isCubin);
  EXPECT_EQ(second->image, first->image);
  EXPECT_EQ(cache.stats().hits, 1u);
  auto path = cache.entryPath(spec, "compute_90");
  EXPECT_EQ(path->substr(path->size() - 4), ".ptx");
}

TEST_F(KernelCacheTest, KeyCoversSourceHeadersDefinesOptionsAndArch) {
  KernelCache cache(dir.path(), *nvrtc);
  const std::string base = *cache.keyHex(spec, "sm_90a");
  EXPECT_EQ(base.size(), 32u);
  EXPECT_EQ(*cache.keyHex(spec, "sm_90a"), base); // deterministic

  std::vector<std::pair<std::string, KernelSpec>> variants;
  KernelSpec changed = spec;
  changed.source += " ";
  variants.push_back({"source", changed});
  changed = spec;
  changed.headers[0].text += "\n// comment";
  variants.push_back({"header text", changed});
  changed = spec;
  changed.headers[0].name = "other.cuh";
  variants.push_back({"header name", changed});
  changed = spec;
  changed.defines["HIDDEN"] = "257";
  variants.push_back({"define value", changed});
  changed = spec;
  changed.defines["EXTRA"] = "1";
  variants.push_back({"added define", changed});
  changed = spec;
  changed.options.push_back("--use_fast_math");
  variants.push_back({"options", changed});
  changed = spec;
  changed.entry = "other_entry";
  variants.push_back({"entry", changed});
  std::set<std::string> keys = {base};
  for (const auto &[what, variant] : variants) {
    auto key = cache.keyHex(variant, "sm_90a");
    ASSERT_TRUE(key.ok());
    EXPECT_NE(*key, base) << what;
    keys.insert(*key);
  }
  for (const char *arch : {"sm_90", "sm_80", "compute_90"}) {
    EXPECT_NE(*cache.keyHex(spec, arch), base) << arch;
    keys.insert(*cache.keyHex(spec, arch));
  }
  EXPECT_EQ(keys.size(), variants.size() + 4); // all distinct from each other too

  // Defines are a sorted map: insertion order cannot change the key.
  KernelSpec reordered = spec;
  reordered.defines.clear();
  for (auto it = spec.defines.rbegin(); it != spec.defines.rend(); ++it)
    reordered.defines.insert(*it);
  EXPECT_EQ(*cache.keyHex(reordered, "sm_90a"), base);
}

TEST_F(KernelCacheTest, ChangedSourceIsCompiledAgain) {
  KernelCache cache(dir.path(), *nvrtc);
  ASSERT_TRUE(cache.getOrCompile(spec, "sm_80").ok());
  KernelSpec changed = spec;
  changed.defines["HIDDEN"] = "512";
  ASSERT_TRUE(cache.getOrCompile(changed, "sm_80").ok());
  EXPECT_EQ(cache.stats().misses, 2u);
  EXPECT_EQ(test::listDirectory(dir.path()).size(), 2u);
}

// Each corruption is detected, recompiled, rewritten, and then hits.
void expectRecovers(const Nvrtc &nvrtc, const KernelSpec &spec, const std::string &dir,
                    const std::function<void(std::string &)> &corrupt, const char *what) {
  SCOPED_TRACE(what);
  KernelCache cache(dir, nvrtc);
  auto original = cache.getOrCompile(spec, "sm_90a");
  ASSERT_TRUE(original.ok());
  const std::string path = *cache.entryPath(spec, "sm_90a");
  const std::string good = readAll(path);
  ASSERT_EQ(good.size(), KernelCache::kHeaderBytes + original->image.size());
  std::string bad = good;
  corrupt(bad);
  ASSERT_NE(bad, good);
  writeAll(path, bad);

  KernelCache reader(dir, nvrtc);
  auto recovered = reader.getOrCompile(spec, "sm_90a");
  ASSERT_TRUE(recovered.ok()) << recovered.message();
  EXPECT_EQ(reader.stats().badEntries, 1u);
  EXPECT_EQ(reader.stats().misses, 1u);
  EXPECT_EQ(reader.stats().hits, 0u);
  EXPECT_EQ(recovered->image, original->image); // never the corrupted bytes
  EXPECT_EQ(readAll(path), good);               // rewritten

  KernelCache again(dir, nvrtc);
  ASSERT_TRUE(again.getOrCompile(spec, "sm_90a").ok());
  EXPECT_EQ(again.stats().hits, 1u);
}

TEST_F(KernelCacheTest, CorruptedEntriesAreRecompiledAndRewritten) {
  const size_t header = KernelCache::kHeaderBytes;
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e[header + e.size() / 3] ^= 0x40; },
                 "flipped payload byte");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e.resize(e.size() - 100); },
                 "truncated payload");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e.resize(20); },
                 "truncated header");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e.clear(); }, "empty file");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e[0] = 'X'; }, "wrong magic");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e[8] = 99; }, "wrong version");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e[12] ^= 1; }, "wrong key");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e[28] ^= 1; }, "wrong length");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e[36] ^= 1; },
                 "wrong checksum");
  expectRecovers(*nvrtc, spec, dir.path(), [&](std::string &e) { e += "trailing"; },
                 "appended bytes");
}

TEST_F(KernelCacheTest, EntryCopiedUnderAnotherKeyIsRejected) {
  KernelCache cache(dir.path(), *nvrtc);
  KernelSpec other = spec;
  other.defines["HIDDEN"] = "512";
  ASSERT_TRUE(cache.getOrCompile(spec, "sm_90a").ok());
  writeAll(*cache.entryPath(other, "sm_90a"), readAll(*cache.entryPath(spec, "sm_90a")));
  auto compiled = cache.getOrCompile(other, "sm_90a");
  ASSERT_TRUE(compiled.ok());
  EXPECT_EQ(cache.stats().badEntries, 1u);
  EXPECT_EQ(cache.stats().misses, 2u);
}

TEST_F(KernelCacheTest, CompileErrorsAreReturnedAndNothingIsStored) {
  KernelCache cache(dir.path(), *nvrtc);
  KernelSpec broken = spec;
  broken.source += "\nthis is not C++;\n";
  auto compiled = cache.getOrCompile(broken, "sm_90a");
  ASSERT_FALSE(compiled.ok());
  EXPECT_NE(compiled.message().find("rms_norm.cu"), std::string::npos);
  EXPECT_TRUE(test::listDirectory(dir.path()).empty());
}

TEST_F(KernelCacheTest, UnwritableDirectoryStillReturnsTheKernel) {
  if (geteuid() == 0)
    GTEST_SKIP() << "root can write into a read-only directory";
  const std::string readOnly = dir.path() + "/ro";
  ASSERT_EQ(mkdir(readOnly.c_str(), 0555), 0);
  KernelCache cache(readOnly, *nvrtc);
  auto compiled = cache.getOrCompile(spec, "sm_90a");
  ASSERT_TRUE(compiled.ok()) << compiled.message();
  EXPECT_EQ(cache.stats().writeFailures, 1u);
  EXPECT_NE(cache.lastWriteError().find("KT_CACHE_DIR"), std::string::npos)
      << cache.lastWriteError();
}

TEST_F(KernelCacheTest, ThreadsCompilingTheSameKernelShareOneEntry) {
  KernelCache cache(dir.path(), *nvrtc);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      if (!cache.getOrCompile(spec, "sm_89").ok())
        ++failures;
    });
  for (auto &t : threads)
    t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(cache.stats().hits + cache.stats().misses, 4u);
  EXPECT_EQ(test::listDirectory(dir.path()).size(), 1u);
}

// Run by the test below in child processes (disabled in normal runs): waits
// for a common start time, then compiles into KT_TEST_CACHE_DIR.
TEST(KernelCacheHelper, DISABLED_CompileIntoCacheAtStartTime) {
  const char *cacheDir = std::getenv("KT_TEST_CACHE_DIR");
  const char *startAt = std::getenv("KT_TEST_START_NS");
  ASSERT_TRUE(cacheDir && startAt) << "run only by TwoProcessesCompileTheSameKernelAtOnce";
  auto nvrtc = Nvrtc::instance();
  ASSERT_TRUE(nvrtc.ok()) << nvrtc.message();
  auto spec = rmsNormSpec(7168, 1e-6f);
  ASSERT_TRUE(spec.ok());
  KernelCache cache(cacheDir, **nvrtc);
  const long long start = std::atoll(startAt);
  timespec now;
  do
    clock_gettime(CLOCK_REALTIME, &now);
  while (now.tv_sec * 1000000000LL + now.tv_nsec < start);
  auto compiled = cache.getOrCompile(*spec, "sm_90a");
  ASSERT_TRUE(compiled.ok()) << compiled.message();
  EXPECT_EQ(cache.stats().writeFailures, 0u) << cache.lastWriteError();
  std::printf("helper %d: %llu hits, %llu misses\n", getpid(),
              static_cast<unsigned long long>(cache.stats().hits),
              static_cast<unsigned long long>(cache.stats().misses));
}

TEST_F(KernelCacheTest, ConcurrentProcessesCompilingTheSameKernelLeaveOneValidEntry) {
  constexpr int kProcesses = 4;
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  // All children start compiling at the same instant, 300 ms from now.
  const long long startNs = now.tv_sec * 1000000000LL + now.tv_nsec + 300000000LL;
  // Built before fork(): only exec-safe calls happen in the child.
  std::string dirVar = "KT_TEST_CACHE_DIR=" + dir.path();
  std::string startVar = "KT_TEST_START_NS=" + std::to_string(startNs);
  std::vector<std::string> envStrings = {dirVar, startVar};
  for (char **e = environ; *e; ++e)
    if (std::string(*e).rfind("KT_TEST_", 0) != 0)
      envStrings.push_back(*e);
  std::vector<char *> envp;
  for (auto &s : envStrings)
    envp.push_back(s.data());
  envp.push_back(nullptr);
  std::string self = "/proc/self/exe";
  std::string filter = "--gtest_filter=KernelCacheHelper.DISABLED_CompileIntoCacheAtStartTime";
  std::string disabled = "--gtest_also_run_disabled_tests";
  char *argv[] = {self.data(), filter.data(), disabled.data(), nullptr};

  std::vector<pid_t> children;
  for (int i = 0; i < kProcesses; ++i) {
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      execve(argv[0], argv, envp.data());
      _exit(127);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 0) << "helper process " << pid << " failed";
  }

  // One entry, no temp files left, and it verifies: a new cache hits.
  auto names = test::listDirectory(dir.path());
  ASSERT_EQ(names.size(), 1u) << (names.empty() ? "" : names[0]);
  auto spec7168 = rmsNormSpec(7168, 1e-6f);
  KernelCache cache(dir.path(), *nvrtc);
  auto path = cache.entryPath(*spec7168, "sm_90a");
  EXPECT_EQ(dir.path() + "/" + names[0], *path);
  auto compiled = cache.getOrCompile(*spec7168, "sm_90a");
  ASSERT_TRUE(compiled.ok());
  EXPECT_EQ(cache.stats().hits, 1u);
  EXPECT_EQ(cache.stats().badEntries, 0u);
}

TEST(KernelCacheDirectory, ResolutionOrder) {
  EXPECT_EQ(*KernelCache::resolveDirectory("/a", "/x", "/h"), "/a");
  EXPECT_EQ(*KernelCache::resolveDirectory("", "/x", "/h"), "/x/ktc/kernels");
  EXPECT_EQ(*KernelCache::resolveDirectory(nullptr, nullptr, "/h"), "/h/.cache/ktc/kernels");
  auto none = KernelCache::resolveDirectory(nullptr, "", nullptr);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.message().find("KT_CACHE_DIR"), std::string::npos);
}

TEST(KernelCacheDirectory, DefaultReadsTheEnvironment) {
  auto saved = [](const char *name) {
    const char *value = std::getenv(name);
    return value ? std::optional<std::string>(value) : std::nullopt;
  };
  auto kt = saved("KT_CACHE_DIR"), xdg = saved("XDG_CACHE_HOME"), home = saved("HOME");
  setenv("KT_CACHE_DIR", "/tmp/kt-a", 1);
  setenv("XDG_CACHE_HOME", "/tmp/xdg", 1);
  setenv("HOME", "/tmp/home", 1);
  EXPECT_EQ(*KernelCache::defaultDirectory(), "/tmp/kt-a");
  unsetenv("KT_CACHE_DIR");
  EXPECT_EQ(*KernelCache::defaultDirectory(), "/tmp/xdg/ktc/kernels");
  unsetenv("XDG_CACHE_HOME");
  EXPECT_EQ(*KernelCache::defaultDirectory(), "/tmp/home/.cache/ktc/kernels");
  auto restore = [](const char *name, const std::optional<std::string> &value) {
    if (value)
      setenv(name, value->c_str(), 1);
    else
      unsetenv(name);
  };
  restore("KT_CACHE_DIR", kt);
  restore("XDG_CACHE_HOME", xdg);
  restore("HOME", home);
}

} // namespace
} // namespace kt::cuda
