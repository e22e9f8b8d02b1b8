// The execution plan file: everything the runtime does, decided by the
// compiler. JSON, versioned, readable and diffable. The compiler builds a
// Plan and writes it with writePlan(); the runtime reads it back with
// readPlan() and never re-derives a decision the compiler made.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace kt::plan {

// Bumped whenever the meaning or layout of the file changes; a runtime reads
// only plans of its own version.
constexpr int kPlanFormatVersion = 4; // 2: cpu_code; 3: its kernels read 16-bit xqSum16;
                                      // 4: add_rms_norm
constexpr const char *kPlanFormatName = "ktc-plan";

struct ModelFile {
  std::string path;
  uint64_t size = 0;
};

// The native FP8 checkpoint whose projections a plan uses (ktc compile
// --fp8-path), beside the GGUF model.
struct Fp8Checkpoint {
  std::string path;
  std::vector<ModelFile> files;
  std::string fingerprint; // safetensors::fingerprint()
};

struct ModelSource {
  std::string path;          // as given to ktc compile (file or directory)
  std::string architecture;  // "deepseek2"
  std::string name;          // general.name
  std::vector<ModelFile> files;
  uint64_t tensorBytes = 0;
  // Hash of every file's size, header (metadata and tensor table) and 16
  // evenly spaced 4 KiB samples of its tensor data: a re-quantized,
  // re-converted, truncated or re-generated model changes it.
  std::string fingerprint;
  std::optional<Fp8Checkpoint> fp8;
};

struct Gpu {
  std::string arch; // "sm_90a"
  uint64_t memory = 0;
};

struct Target {
  std::string cpu;
  std::vector<std::string> cpuFeatures;
  unsigned cores = 0;
  unsigned numaNodes = 1;
  std::vector<Gpu> gpus;
};

struct DeviceMemory {
  std::string device; // "cpu", "cuda:0"
  uint64_t weights = 0, kvCache = 0, activations = 0, staging = 0, total = 0;
  std::optional<uint64_t> budget;
  uint64_t expertCache = 0; // reserved for the GPU expert cache (ktc --gpu-expert-cache)
};

struct Weight {
  std::string role;   // "q_a_proj"
  std::string tensor; // "blk.0.attn_q_a.weight"
  std::string type;   // "q4_K"
  std::vector<int64_t> shape;
  uint64_t bytes = 0;
};

using Param = std::variant<int64_t, double, bool, std::string>;

struct Op {
  std::string kind;   // "mla_attention", "routed_experts", ... ("add" has no module)
  std::string path;   // "model.layers.3.self_attn"
  std::vector<int> inputs;  // value ids; value 0 is the token ids
  std::vector<int> outputs;
  std::string prefillDevice, decodeDevice, outDevice;
  std::string op;     // the operator placement chose
  std::string rule;   // "file:line:col" of the rule that placed it; empty for the default
  std::vector<Weight> weights;
  // Kernel per phase: "prefill", "decode", and "<sub-module>.prefill" /
  // "<sub-module>.decode" for linear sub-modules placed on their own.
  std::map<std::string, std::string> kernels;
  std::map<std::string, Param> params; // hyper-parameters of the module
};

// An activation buffer: one value of the graph, [tokens, width] elements of
// `dtype`, on a device per phase (value 0, the token ids, lives on the host).
struct Buffer {
  int value = 0;
  std::string dtype; // "f32", "i32"
  int64_t width = 1;
  std::string prefillDevice, decodeDevice;
};

// A GPU kernel specialization the plan runs: the kernel (entry point and
// source file), the constants it is specialized with, the architecture it is
// compiled for and its key in the on-disk kernel cache (empty when the
// compiling host had no NVRTC to tell its version).
struct KernelSpecialization {
  std::string entry;
  std::string file;
  std::map<std::string, std::string> defines;
  std::string arch;
  std::string cacheKey;
  std::vector<std::string> usedBy; // module paths
};

// Expert code ktc generated for the target CPU: a shared object beside the
// plan with one row kernel per (weight type, row width) of the CPU-placed
// routed experts (runtime/cpu/GeneratedKernels.h has the ABI).
struct CpuCodeKernel {
  std::string type;   // "q4_K"
  int64_t cols = 0;   // values per row
  std::string symbol; // "kt_rows_q4_K_7168"
  // What the kernel reads of the activations: "f32" (x and its sums of 32),
  // "q8" (x quantized to int8 per 256 values, integer dot products), or
  // "q8-nibble-order" (the same int8 values, each 128's groups of 32 in the
  // order 0, 2, 1, 3; runtime/cpu/GeneratedKernels.h).
  std::string input = "f32";
};
struct CpuCode {
  std::string file;   // relative to the plan's directory
  uint64_t size = 0;
  std::string hash;   // XXH3-64 of the file, 16 hex digits
  std::string cpu;    // the LLVM CPU it was compiled for
  // The ISA features the code may use; a host lacking one is refused.
  std::vector<std::string> features;
  int vectorBits = 0; // 128, 256 or 512
  std::vector<CpuCodeKernel> kernels;
};

struct RuntimeDefaults {
  int64_t cacheLens = 4096;
  int64_t chunkSize = 512;
};

struct Plan {
  int version = kPlanFormatVersion;
  std::string compiler; // "ktc <version>"
  ModelSource model;
  Target target;
  std::vector<DeviceMemory> memory;
  std::vector<Op> ops;
  std::vector<Buffer> buffers; // one per value, by value id
  int outputValue = -1; // the logits
  std::vector<KernelSpecialization> kernelSpecializations;
  std::optional<CpuCode> cpuCode; // absent: the reference CPU kernels
  RuntimeDefaults defaults;
  // Where readPlan() read the plan from (not stored in the file): files the
  // plan names relative to itself (cpu_code) are found from there.
  std::string sourcePath;
};

// Writes atomically (temp file + rename).
Status writePlan(const Plan &plan, const std::string &path);
std::string planToJson(const Plan &plan);
// Reads and validates a plan; a file of another format version is refused
// with a message that says to recompile it.
StatusOr<Plan> readPlan(const std::string &path);
StatusOr<Plan> planFromJson(const std::string &text, const std::string &displayName);

// Whether any op runs on, or sends its output to, a GPU.
bool usesGpu(const Plan &plan);

// The fingerprint of a model's files (see ModelSource::fingerprint).
StatusOr<std::string> modelFingerprint(const gguf::GgufModel &model);
// The model's files as the plan records them.
ModelSource describeModel(const gguf::GgufModel &model, const std::string &path);
// Fails, naming what changed and how to fix it, if `model` is not the model
// the plan was compiled for.
Status checkModelMatches(const Plan &plan, const gguf::GgufModel &model);

} // namespace kt::plan
