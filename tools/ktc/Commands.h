// Subcommands of ktc. Each returns the process exit code.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace kt::tools {

struct InspectOptions {
  std::string modelPath;
  std::string tensorName;                          // empty: print the model overview
  std::optional<std::pair<int64_t, int64_t>> rows; // [begin, end) rows of the tensor
};
int runInspect(const InspectOptions &options);

struct ImportOptions {
  std::string modelPath;
  std::string outputPath = "-";
  bool summary = false;
};
int runImport(const ImportOptions &options);

struct TargetCommandOptions {
  std::string cpu;               // --target-cpu
  std::vector<std::string> gpus; // --target-gpu
  unsigned cores = 0;            // --target-cores
  unsigned numaNodes = 0;        // --target-numa
};
int runTarget(const TargetCommandOptions &options);

struct CompileOptions {
  std::string modelPath;  // --gguf-path
  std::string fp8Path;    // --fp8-path: FP8 checkpoint for the projections
  std::string rulesPath;  // --optimize-config-path
  std::string outputPath; // -o
  TargetCommandOptions target;
  std::vector<std::string> gpuMemory; // --gpu-mem cuda:0=24GiB
  std::string gpuExpertCache;         // --gpu-expert-cache 20GiB
  int64_t cacheLens = 4096;
  int64_t chunkSize = 512;
  bool strict = false;
  bool printIrAfterAll = false;
  bool explain = false; // print the decisions instead of writing a plan
  bool precompile = false; // also compile the plan's GPU kernels into the cache
  bool cpuCode = true;     // generate the CPU expert code beside the plan
  bool f32CpuExperts = false; // generated expert kernels read f32 activations, never int8
  bool amxTiles = true;       // AMX tile kernels on AMX-BF16 targets (--no-amx-tiles)
};
int runCompile(const CompileOptions &options);

// `ktc cpu-kernels`: row kernels for chosen types and widths, for a target
// CPU, as a shared object (benchmarks, disassembly tests) or LLVM IR.
struct CpuKernelsOptions {
  std::string cpu;                  // --target-cpu; empty: this host
  std::vector<std::string> kernels; // TYPE:COLS
  std::string outputPath;           // -o FILE.so
  bool printIr = false;
  bool f32Activations = false;      // --f32-cpu-experts
  bool amxTiles = true;        // --no-amx-tiles
  int prefetchBytes = -1;           // --prefetch-bytes; -1: the default
  int nearPrefetchBytes = -1;       // --near-prefetch-bytes; -1: the default
};
int runCpuKernels(const CpuKernelsOptions &options);

struct TokenizeOptions {
  std::string ggufPath;      // --gguf-path: the model whose tokenizer is used
  std::string tokenizerJson; // --tokenizer-json: a Hugging Face tokenizer.json instead
  bool special = false;      // parse special tokens in text / print them when decoding
  bool decode = false;       // ids in, text out
  bool addBos = false;       // prepend the beginning-of-sentence token
  std::vector<std::string> arguments; // text or ids; empty: read stdin
};
int runTokenize(const TokenizeOptions &options);

// Reads a plan as the runtime does; checks its model (the plan's, or
// `modelPath`) is the one it was compiled for.
int runVerifyPlan(const std::string &planPath, const std::string &modelPath);

// Prints "ktc: error: <message>" to stderr and returns the failure exit code.
int reportError(const std::string &message);

} // namespace kt::tools
