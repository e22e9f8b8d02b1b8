#include "runtime/cuda/Nvrtc.h"

#include <dlfcn.h>
#include <nvrtc.h> // types and signatures only; the library is dlopen()ed

#include <cstdlib>
#include <mutex>

namespace kt::cuda {

std::string KernelSpec::describe() const {
  std::string text = entry + " (" + file + ";";
  for (const auto &[name, value] : defines)
    text += " " + name + "=" + value;
  for (const auto &option : options)
    text += " " + option;
  return text + ")";
}

struct Nvrtc::Api {
  decltype(&::nvrtcGetErrorString) getErrorString = nullptr;
  decltype(&::nvrtcVersion) version = nullptr;
  decltype(&::nvrtcGetNumSupportedArchs) getNumSupportedArchs = nullptr;
  decltype(&::nvrtcGetSupportedArchs) getSupportedArchs = nullptr;
  decltype(&::nvrtcCreateProgram) createProgram = nullptr;
  decltype(&::nvrtcDestroyProgram) destroyProgram = nullptr;
  decltype(&::nvrtcCompileProgram) compileProgram = nullptr;
  decltype(&::nvrtcGetPTXSize) getPtxSize = nullptr;
  decltype(&::nvrtcGetPTX) getPtx = nullptr;
  decltype(&::nvrtcGetCUBINSize) getCubinSize = nullptr;
  decltype(&::nvrtcGetCUBIN) getCubin = nullptr;
  decltype(&::nvrtcGetProgramLogSize) getLogSize = nullptr;
  decltype(&::nvrtcGetProgramLog) getLog = nullptr;
};

StatusOr<ArchTarget> parseArch(const std::string &arch) {
  auto digitsFrom = [&](size_t start) {
    size_t end = start;
    while (end < arch.size() && arch[end] >= '0' && arch[end] <= '9')
      ++end;
    return end;
  };
  for (const char *prefix : {"sm_", "compute_"}) {
    const std::string p = prefix;
    if (arch.compare(0, p.size(), p) != 0)
      continue;
    size_t end = digitsFrom(p.size());
    // Two or three digits, then an optional architecture-specific suffix.
    if (end - p.size() >= 2 && end - p.size() <= 3 &&
        (end == arch.size() || (end + 1 == arch.size() && (arch[end] == 'a' || arch[end] == 'f'))))
      return ArchTarget{arch, p == "sm_"};
  }
  return Status::error("'" + arch +
                       "' is not a GPU architecture NVRTC accepts; use sm_XY (e.g. sm_80, "
                       "sm_90a) for a CUBIN or compute_XY (e.g. compute_90) for PTX.");
}

const std::vector<std::string> &Nvrtc::defaultLibraryCandidates() {
  static const std::vector<std::string> candidates = [] {
    std::vector<std::string> names = {"libnvrtc.so.13", "libnvrtc.so"};
    if (const char *cudaHome = std::getenv("CUDA_HOME"); cudaHome && *cudaHome)
      names.push_back(std::string(cudaHome) + "/lib64/libnvrtc.so.13");
    names.push_back("/usr/local/cuda/lib64/libnvrtc.so.13");
    return names;
  }();
  return candidates;
}

StatusOr<std::unique_ptr<Nvrtc>> Nvrtc::loadFrom(const std::vector<std::string> &candidates) {
  void *library = nullptr;
  std::string loaded;
  std::string tried;
  for (const auto &candidate : candidates) {
    library = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (library) {
      loaded = candidate;
      break;
    }
    tried += (tried.empty() ? "" : ", ") + candidate;
  }
  if (!library)
    return Status::error("NVRTC, the CUDA runtime compiler that builds the GPU kernels, could "
                         "not be loaded (tried " + tried +
                         "); install the CUDA toolkit (13.x) or set LD_LIBRARY_PATH to the "
                         "directory holding libnvrtc.so.13.");
  std::unique_ptr<Nvrtc> nvrtc(new Nvrtc());
  nvrtc->library_ = library;
  nvrtc->libraryPath_ = loaded;
  nvrtc->api_ = std::make_unique<Api>();
  Api &api = *nvrtc->api_;
  std::string missing;
  auto bind = [&](auto &slot, const char *name) {
    slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(library, name));
    if (!slot)
      missing += std::string(missing.empty() ? "" : ", ") + name;
  };
  bind(api.getErrorString, "nvrtcGetErrorString");
  bind(api.version, "nvrtcVersion");
  bind(api.getNumSupportedArchs, "nvrtcGetNumSupportedArchs");
  bind(api.getSupportedArchs, "nvrtcGetSupportedArchs");
  bind(api.createProgram, "nvrtcCreateProgram");
  bind(api.destroyProgram, "nvrtcDestroyProgram");
  bind(api.compileProgram, "nvrtcCompileProgram");
  bind(api.getPtxSize, "nvrtcGetPTXSize");
  bind(api.getPtx, "nvrtcGetPTX");
  bind(api.getCubinSize, "nvrtcGetCUBINSize");
  bind(api.getCubin, "nvrtcGetCUBIN");
  bind(api.getLogSize, "nvrtcGetProgramLogSize");
  bind(api.getLog, "nvrtcGetProgramLog");
  if (!missing.empty())
    return Status::error(loaded + " lacks the NVRTC functions " + missing +
                         "; install the CUDA 13 toolkit's NVRTC or point LD_LIBRARY_PATH at it.");
  if (api.version(&nvrtc->major_, &nvrtc->minor_) != NVRTC_SUCCESS)
    return Status::error("nvrtcVersion failed in " + loaded + "; reinstall the CUDA toolkit.");
  return nvrtc;
}

StatusOr<const Nvrtc *> Nvrtc::instance() {
  static std::once_flag once;
  static std::unique_ptr<Nvrtc> loaded;
  static std::string error;
  std::call_once(once, [] {
    auto result = loadFrom(defaultLibraryCandidates());
    if (result.ok())
      loaded = std::move(*result);
    else
      error = result.message();
  });
  if (!loaded)
    return Status::error(error);
  return static_cast<const Nvrtc *>(loaded.get());
}

Nvrtc::~Nvrtc() {
  // The library stays loaded: NVRTC keeps process-wide state that is not
  // safe to unload while other instances may use it.
}

std::string Nvrtc::version() const {
  return std::to_string(major_) + "." + std::to_string(minor_);
}

std::vector<int> Nvrtc::supportedArchs() const {
  int count = 0;
  if (api_->getNumSupportedArchs(&count) != NVRTC_SUCCESS || count <= 0)
    return {};
  std::vector<int> archs(count);
  if (api_->getSupportedArchs(archs.data()) != NVRTC_SUCCESS)
    return {};
  return archs;
}

std::vector<std::string> Nvrtc::compileOptions(const KernelSpec &spec, const ArchTarget &target) {
  std::vector<std::string> options = {"--gpu-architecture=" + target.arch, "-std=c++17",
                                      "-default-device"};
  for (const auto &[name, value] : spec.defines)
    options.push_back("-D" + name + "=" + value);
  options.insert(options.end(), spec.options.begin(), spec.options.end());
  return options;
}

StatusOr<CompiledKernel> Nvrtc::compile(const KernelSpec &spec, const std::string &arch) const {
  auto target = parseArch(arch);
  if (!target.ok())
    return target.status();
  const Api &api = *api_;
  auto fail = [&](const std::string &what, nvrtcResult result, const std::string &log) {
    std::string message = "NVRTC " + version() + " could not " + what + " kernel " +
                          spec.describe() + " for " + arch + ": " +
                          api.getErrorString(result) + ".";
    if (!log.empty())
      message += "\n" + log;
    return Status::error(message);
  };

  std::vector<const char *> headerTexts, headerNames;
  for (const auto &header : spec.headers) {
    headerTexts.push_back(header.text.c_str());
    headerNames.push_back(header.name.c_str());
  }
  nvrtcProgram program = nullptr;
  nvrtcResult result =
      api.createProgram(&program, spec.source.c_str(), spec.file.c_str(),
                        static_cast<int>(spec.headers.size()), headerTexts.data(),
                        headerNames.data());
  if (result != NVRTC_SUCCESS)
    return fail("create a program for", result, "");
  struct ProgramGuard {
    const Api &api;
    nvrtcProgram &program;
    ~ProgramGuard() { api.destroyProgram(&program); }
  } guard{api, program};

  const std::vector<std::string> options = compileOptions(spec, *target);
  std::vector<const char *> optionPointers;
  for (const auto &option : options)
    optionPointers.push_back(option.c_str());
  result = api.compileProgram(program, static_cast<int>(optionPointers.size()),
                              optionPointers.data());
  std::string log;
  size_t logSize = 0;
  if (api.getLogSize(program, &logSize) == NVRTC_SUCCESS && logSize > 1) {
    log.resize(logSize);
    if (api.getLog(program, log.data()) != NVRTC_SUCCESS)
      log.clear();
    while (!log.empty() && (log.back() == '\0' || log.back() == '\n'))
      log.pop_back();
  }
  if (result != NVRTC_SUCCESS)
    return fail("compile", result, log);

  CompiledKernel compiled;
  compiled.log = log;
  compiled.entry = spec.entry;
  compiled.arch = arch;
  compiled.isCubin = target->cubin;
  size_t size = 0;
  if (target->cubin) {
    if ((result = api.getCubinSize(program, &size)) != NVRTC_SUCCESS || size == 0)
      return fail("get the CUBIN of", result, log);
    compiled.image.resize(size);
    if ((result = api.getCubin(program, compiled.image.data())) != NVRTC_SUCCESS)
      return fail("get the CUBIN of", result, log);
  } else {
    if ((result = api.getPtxSize(program, &size)) != NVRTC_SUCCESS || size == 0)
      return fail("get the PTX of", result, log);
    compiled.image.resize(size); // includes the terminating NUL the driver needs
    if ((result = api.getPtx(program, compiled.image.data())) != NVRTC_SUCCESS)
      return fail("get the PTX of", result, log);
  }
  return compiled;
}

} // namespace kt::cuda
