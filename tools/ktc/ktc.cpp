// ktc: the model compiler's command-line driver.
#include "tools/ktc/Commands.h"

#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdlib>

using namespace llvm;

namespace {

cl::OptionCategory ktcCategory("ktc options");

cl::SubCommand inspectCommand(
    "inspect", "Print a GGUF model's architecture, hyper-parameters, tensor table and "
               "totals, or the dequantized values of one tensor");
cl::opt<std::string> inspectModel(cl::cat(ktcCategory), cl::Positional, cl::Required, cl::sub(inspectCommand),
                                  cl::desc("<model: .gguf file, split part or directory>"));
cl::opt<std::string> inspectTensor(cl::cat(ktcCategory), 
    "tensor", cl::sub(inspectCommand), cl::value_desc("name"),
    cl::desc("Print the dequantized values of this tensor instead of the overview"));
cl::opt<std::string> inspectRows(cl::cat(ktcCategory), 
    "rows", cl::sub(inspectCommand), cl::value_desc("A:B"),
    cl::desc("With --tensor: rows A up to but not including B (a row is ne[0] values); "
             "default: all rows"));

cl::SubCommand importCommand("import",
                             "Import a GGUF model into the ktgraph dialect and print the IR");
cl::opt<std::string> importModel(cl::cat(ktcCategory), cl::Positional, cl::Required, cl::sub(importCommand),
                                 cl::desc("<model: .gguf file, split part or directory>"));
cl::opt<std::string> importOutput(cl::cat(ktcCategory), "o", cl::sub(importCommand), cl::value_desc("file"),
                                  cl::desc("Write the IR to this file (default: stdout)"),
                                  cl::init("-"));
cl::opt<bool> importSummary(cl::cat(ktcCategory), 
    "summary", cl::sub(importCommand),
    cl::desc("Append a size summary (parameters and bytes per module kind) as comments"));

cl::SubCommand targetCommand(
    "target", "Print the target description (CPU, ISA features, GPUs) a plan would be "
              "compiled for: this host's, or the one the --target-* flags describe");
cl::opt<std::string> targetCpu(
    "target-cpu", cl::cat(ktcCategory), cl::sub(targetCommand), cl::value_desc("cpu"),
    cl::desc("LLVM CPU name of the host that will run the plan (haswell, skylake-avx512, "
             "sapphirerapids, ...); default: this host's CPU and its real features"));
cl::list<std::string> targetGpus(
    "target-gpu", cl::cat(ktcCategory), cl::sub(targetCommand), cl::value_desc("arch:memory"),
    cl::desc("A GPU of the target, e.g. sm_90a:80GiB; repeat for cuda:1, cuda:2, ...; "
             "'none' for a CPU-only target; default: this host's GPUs"));
cl::opt<unsigned> targetCores("target-cores", cl::cat(ktcCategory), cl::sub(targetCommand),
                              cl::desc("CPU cores of the target; default: this host's"),
                              cl::init(0));
cl::opt<unsigned> targetNuma("target-numa", cl::cat(ktcCategory), cl::sub(targetCommand),
                             cl::desc("NUMA nodes of the target; default: this host's"),
                             cl::init(0));

cl::SubCommand compileCommand(
    "compile", "Compile a model and placement rules into an execution plan file");
cl::SubCommand explainCommand(
    "explain", "Print, for every module, the rule (file:line) that placed it, its devices, "
               "operator, kernels and bytes; then memory per device and the stages");
// Options of both compile and explain. The anchor's underscore spellings
// (--gguf_path, --optimize_config_path, --cache_lens) are accepted too.
cl::opt<std::string> compileModel(
    "gguf-path", cl::cat(ktcCategory), cl::sub(compileCommand), cl::sub(explainCommand),
    cl::value_desc("model"),
    cl::desc("The model: a .gguf file, any part of a split model, or a directory (of .gguf "
             "files, or a Hugging Face checkpoint: config.json, safetensors, tokenizer.json)"));
cl::alias compileModelUnderscore("gguf_path", cl::aliasopt(compileModel), cl::NotHidden,
                                 cl::desc("Alias for --gguf-path"));
cl::opt<std::string> compileRules(
    "optimize-config-path", cl::cat(ktcCategory), cl::sub(compileCommand),
    cl::sub(explainCommand), cl::value_desc("rules.yaml"),
    cl::desc("Placement rules (KTransformers format); see rules/ and docs/rules.md"));
cl::alias compileRulesUnderscore("optimize_config_path", cl::aliasopt(compileRules),
                                 cl::desc("Alias for --optimize-config-path"));
cl::opt<std::string> compileFp8Path(
    "fp8-path", cl::cat(ktcCategory), cl::sub(compileCommand), cl::sub(explainCommand),
    cl::value_desc("checkpoint"),
    cl::desc("A native FP8 checkpoint of the same model (DeepSeek's release: config.json with "
             "quantization_config fp8, safetensors shards): attention, dense and shared-expert "
             "projections use its e4m3 weights, the rest the GGUF model (for the "
             "fp8-linear-ggml-experts rules). Without --gguf-path the checkpoint is the whole "
             "model: FP8 weights placed on the CPU (the routed experts) are converted to q8_0 "
             "at load (docs/safetensors.md)"));
cl::opt<std::string> compileOutput("o", cl::cat(ktcCategory), cl::sub(compileCommand),
                                   cl::value_desc("file.plan"),
                                   cl::desc("Where to write the plan"));
cl::opt<std::string> compileTargetCpu(
    "target-cpu", cl::cat(ktcCategory), cl::sub(compileCommand), cl::sub(explainCommand),
    cl::value_desc("cpu"), cl::desc("CPU of the machine that runs the plan (default: this host)"));
cl::list<std::string> compileTargetGpus(
    "target-gpu", cl::cat(ktcCategory), cl::sub(compileCommand), cl::sub(explainCommand),
    cl::value_desc("arch:memory"),
    cl::desc("A GPU of that machine, e.g. sm_90a:80GiB (compute_80:40GiB: PTX, for that GPU "
             "or newer), repeated per GPU; 'none' for no GPU (default: this host's GPUs)"));
cl::opt<unsigned> compileTargetCores("target-cores", cl::cat(ktcCategory),
                                     cl::sub(compileCommand), cl::sub(explainCommand),
                                     cl::desc("CPU cores of that machine (default: this host's)"),
                                     cl::init(0));
cl::opt<unsigned> compileTargetNuma("target-numa", cl::cat(ktcCategory),
                                    cl::sub(compileCommand), cl::sub(explainCommand),
                                    cl::desc("NUMA nodes of that machine (default: this host's)"),
                                    cl::init(0));
cl::list<std::string> compileGpuMemory(
    "gpu-mem", cl::cat(ktcCategory), cl::sub(compileCommand), cl::sub(explainCommand),
    cl::value_desc("cuda:N=SIZE"),
    cl::desc("Memory budget of a GPU, e.g. cuda:0=24GiB (default: its memory less 1 GiB)"));
cl::opt<std::string> compileGpuExpertCache(
    "gpu-expert-cache", cl::cat(ktcCategory), cl::sub(compileCommand), cl::sub(explainCommand),
    cl::value_desc("SIZE"),
    cl::desc("Reserve SIZE (e.g. 20GiB) on cuda:0 for copies of the most often routed experts "
             "of CPU-placed layers; ktrun fills it from the routing of the first prefill or "
             "from --expert-profile and runs those experts on the GPU (docs/gpu-execution.md)"));
cl::opt<int64_t> compileCacheLens(
    "cache-lens", cl::cat(ktcCategory), cl::sub(compileCommand), cl::sub(explainCommand),
    cl::desc("Tokens of context the KV cache holds"), cl::init(4096));
cl::alias compileCacheLensUnderscore("cache_lens", cl::aliasopt(compileCacheLens),
                                     cl::desc("Alias for --cache-lens"));
cl::opt<int64_t> compileChunkSize("chunk-size", cl::cat(ktcCategory), cl::sub(compileCommand),
                                  cl::sub(explainCommand),
                                  cl::desc("Tokens per prefill chunk"), cl::init(512));
cl::opt<bool> compileStrict("strict", cl::cat(ktcCategory), cl::sub(compileCommand),
                            cl::sub(explainCommand),
                            cl::desc("A module no rule places is an error instead of getting "
                                     "the default placement"));
cl::opt<bool> compilePrecompile(
    "precompile", cl::cat(ktcCategory), cl::sub(compileCommand),
    cl::desc("Also compile the plan's GPU kernels with NVRTC into the kernel cache "
             "($KT_CACHE_DIR, else $XDG_CACHE_HOME/ktc/kernels), so the first prefill does "
             "not wait for them"));
cl::opt<bool> compilePrintIr("print-ir-after-all", cl::cat(ktcCategory),
                             cl::sub(compileCommand), cl::sub(explainCommand),
                             cl::desc("Print the IR after every pass (to stderr)"));

cl::SubCommand tokenizeCommand(
    "tokenize", "Print the token ids of a text, space-separated on one line (or, with "
                "--decode, the text of token ids), with a model's tokenizer");
cl::opt<std::string> tokenizeModel(
    "gguf-path", cl::cat(ktcCategory), cl::sub(tokenizeCommand), cl::value_desc("model"),
    cl::desc("Use the tokenizer of this GGUF model (file, split part or directory)"));
cl::opt<std::string> tokenizeJson(
    "tokenizer-json", cl::cat(ktcCategory), cl::sub(tokenizeCommand), cl::value_desc("file"),
    cl::desc("Use this Hugging Face tokenizer.json instead (its tokenizer_config.json is read "
             "too)"));
cl::opt<bool> tokenizeSpecial(
    "special", cl::cat(ktcCategory), cl::sub(tokenizeCommand),
    cl::desc("Encoding: text that spells a special token, such as <｜User｜>, becomes that "
             "token, as in a rendered chat prompt; without it, that text is tokenized as "
             "plain characters. Decoding: print special tokens; without it, leave them out"));
cl::opt<bool> tokenizeDecode(
    "decode", cl::cat(ktcCategory), cl::sub(tokenizeCommand),
    cl::desc("Take token ids (separated by spaces) and print their text, with no newline "
             "added"));
cl::opt<bool> tokenizeAddBos("add-bos", cl::cat(ktcCategory), cl::sub(tokenizeCommand),
                             cl::desc("Prepend the beginning-of-sentence token"));
cl::list<std::string> tokenizeInput(
    cl::Positional, cl::ZeroOrMore, cl::cat(ktcCategory), cl::sub(tokenizeCommand),
    cl::desc("<text (arguments are joined by spaces), or ids with --decode; default: all "
             "of stdin, as is>"));

cl::opt<bool> compileReferenceCpuKernels(
    "reference-cpu-kernels", cl::cat(ktcCategory), cl::sub(compileCommand),
    cl::desc("Do not generate CPU expert code: the runtime then runs the CPU-placed routed "
             "experts with its reference kernels (the default writes X.cpu.so beside X.plan, "
             "compiled for the target CPU)"));

cl::opt<bool> compileF32CpuExperts(
    "f32-cpu-experts", cl::cat(ktcCategory), cl::sub(compileCommand),
    cl::desc("Generated CPU expert kernels read f32 activations on every target (f32 rounding; "
             "on AVX2 and newer targets the default quantizes activations to int8 per 256 "
             "values for integer dot products, two to three times as fast, within the "
             "quantized tolerance)"));

cl::SubCommand cpuKernelsCommand(
    "cpu-kernels", "Generate CPU expert kernels (row kernels, and AMX tile kernels on AMX "
                   "targets) for weight types and row widths, compiled for a target CPU, into "
                   "a shared object (or print their LLVM IR)");
cl::opt<std::string> cpuKernelsCpu(
    "target-cpu", cl::cat(ktcCategory), cl::sub(cpuKernelsCommand), cl::value_desc("cpu"),
    cl::desc("LLVM CPU name to compile for (x86-64, haswell, skylake-avx512, sapphirerapids, "
             "...); default: this host's CPU and its real features"));
cl::list<std::string> cpuKernelsList(
    "kernel", cl::cat(ktcCategory), cl::sub(cpuKernelsCommand), cl::value_desc("type:cols"),
    cl::desc("A kernel: weight type (q8_0, q4_K, q5_K, q6_K) and values per row, e.g. "
             "q4_K:7168; repeat for more"));
cl::opt<std::string> cpuKernelsOutput("o", cl::cat(ktcCategory), cl::sub(cpuKernelsCommand),
                                      cl::value_desc("file.so"),
                                      cl::desc("The shared object to write"));
cl::opt<bool> cpuKernelsPrintIr("print-ir", cl::cat(ktcCategory), cl::sub(cpuKernelsCommand),
                                cl::desc("Print the LLVM IR instead of writing an object"));
cl::opt<bool> noAmxTiles(
    "no-amx-tiles", cl::cat(ktcCategory), cl::sub(compileCommand), cl::sub(cpuKernelsCommand),
    cl::desc("Generate no AMX tile kernels (on AMX-BF16 targets the default adds them for "
             "experts that many tokens of a prefill step chose; ktrun --expert-tile-tokens "
             "sets how many)"));
cl::opt<bool> cpuKernelsF32("f32-cpu-experts", cl::cat(ktcCategory), cl::sub(cpuKernelsCommand),
                            cl::desc("f32 activations even on targets with integer dot products"));
cl::opt<int> cpuKernelsPrefetch(
    "prefetch-bytes", cl::cat(ktcCategory), cl::sub(cpuKernelsCommand), cl::init(-1),
    cl::desc("How far ahead of the weights being decoded the row kernels prefetch into L2, in "
             "bytes (0: no prefetch; default 6144), for tuning with cpu_expert_bench"));
cl::opt<int> cpuKernelsNearPrefetch(
    "near-prefetch-bytes", cl::cat(ktcCategory), cl::sub(cpuKernelsCommand), cl::init(-1),
    cl::desc("How far ahead of the weights being decoded the row kernels prefetch into L1, in "
             "bytes (0: no prefetch; default 768)"));

cl::SubCommand verifyPlanCommand(
    "verify-plan", "Read a plan file as the runtime does and check that its model is the one "
                   "it was compiled for");
cl::opt<std::string> verifyPlanPath(cl::Positional, cl::Required, cl::sub(verifyPlanCommand),
                                    cl::desc("<plan file>"));
cl::opt<std::string> verifyPlanModel(
    "gguf-path", cl::cat(ktcCategory), cl::sub(verifyPlanCommand), cl::value_desc("model"),
    cl::desc("Check against this model instead of the one the plan names"));

// "A:B" with 0 <= A < B.
std::optional<std::pair<int64_t, int64_t>> parseRows(const std::string &text) {
  size_t colon = text.find(':');
  if (colon == std::string::npos)
    return std::nullopt;
  char *end = nullptr;
  std::string first = text.substr(0, colon), second = text.substr(colon + 1);
  if (first.empty() || second.empty())
    return std::nullopt;
  long long begin = std::strtoll(first.c_str(), &end, 10);
  if (*end != '\0')
    return std::nullopt;
  long long stop = std::strtoll(second.c_str(), &end, 10);
  if (*end != '\0' || begin < 0 || stop <= begin)
    return std::nullopt;
  return std::make_pair(static_cast<int64_t>(begin), static_cast<int64_t>(stop));
}

} // namespace

int main(int argc, char **argv) {
  InitLLVM initLLVM(argc, argv);
  // Only ktc's own options belong in --help, not those of linked LLVM libraries.
  for (cl::SubCommand *sub : {&*cl::TopLevelSubCommand, &inspectCommand, &importCommand,
                              &targetCommand, &compileCommand, &explainCommand,
                              &tokenizeCommand})
    cl::HideUnrelatedOptions(ktcCategory, *sub);
  cl::ParseCommandLineOptions(
      argc, argv,
      "ktc: compiles DeepSeek-class MoE models (GGUF) into execution plans\n\n"
      "  ktc inspect MODEL                       model overview\n"
      "  ktc inspect MODEL --tensor NAME --rows A:B   dequantized tensor values\n"
      "  ktc import MODEL [--summary] [-o FILE]  print the model graph (ktgraph IR)\n"
      "  ktc target [--target-cpu C] [--target-gpu ARCH:MEM]...  the target machine\n"
      "  ktc compile --gguf-path MODEL --optimize-config-path RULES.yaml -o MODEL.plan\n"
      "  ktc explain --gguf-path MODEL --optimize-config-path RULES.yaml\n"
      "  ktc tokenize --gguf-path MODEL [--special] [TEXT]   token ids of TEXT or stdin\n"
      "  ktc tokenize --gguf-path MODEL --decode IDS...      text of token ids\n\n"
      "MODEL is a .gguf file, any part of a split model, or a directory holding one "
      "model.\n");

  if (inspectCommand) {
    kt::tools::InspectOptions options;
    options.modelPath = inspectModel;
    options.tensorName = inspectTensor;
    if (!inspectRows.empty()) {
      if (inspectTensor.empty())
        return kt::tools::reportError("--rows needs --tensor NAME");
      options.rows = parseRows(inspectRows);
      if (!options.rows)
        return kt::tools::reportError("--rows must be A:B with 0 <= A < B, got '" +
                                      inspectRows + "'");
    }
    return kt::tools::runInspect(options);
  }
  if (importCommand) {
    kt::tools::ImportOptions options;
    options.modelPath = importModel;
    options.outputPath = importOutput;
    options.summary = importSummary;
    return kt::tools::runImport(options);
  }
  if (compileCommand || explainCommand) {
    kt::tools::CompileOptions options;
    options.modelPath = compileModel;
    options.rulesPath = compileRules;
    options.outputPath = compileOutput;
    options.target.cpu = compileTargetCpu;
    options.target.gpus.assign(compileTargetGpus.begin(), compileTargetGpus.end());
    options.target.cores = compileTargetCores;
    options.target.numaNodes = compileTargetNuma;
    options.gpuMemory.assign(compileGpuMemory.begin(), compileGpuMemory.end());
    options.gpuExpertCache = compileGpuExpertCache;
    options.cacheLens = compileCacheLens;
    options.chunkSize = compileChunkSize;
    options.strict = compileStrict;
    options.printIrAfterAll = compilePrintIr;
    options.explain = bool(explainCommand);
    options.precompile = compilePrecompile;
    options.cpuCode = !compileReferenceCpuKernels;
    options.fp8Path = compileFp8Path;
    options.f32CpuExperts = compileF32CpuExperts;
    options.amxTiles = !noAmxTiles;
    if (options.cacheLens <= 0 || options.chunkSize <= 0)
      return kt::tools::reportError("--cache-lens and --chunk-size must be positive");
    return kt::tools::runCompile(options);
  }
  if (verifyPlanCommand)
    return kt::tools::runVerifyPlan(verifyPlanPath, verifyPlanModel);
  if (cpuKernelsCommand) {
    kt::tools::CpuKernelsOptions options;
    options.cpu = cpuKernelsCpu;
    options.kernels.assign(cpuKernelsList.begin(), cpuKernelsList.end());
    options.outputPath = cpuKernelsOutput;
    options.printIr = cpuKernelsPrintIr;
    options.f32Activations = cpuKernelsF32;
    options.amxTiles = !noAmxTiles;
    options.prefetchBytes = cpuKernelsPrefetch;
    options.nearPrefetchBytes = cpuKernelsNearPrefetch;
    return kt::tools::runCpuKernels(options);
  }
  if (targetCommand) {
    kt::tools::TargetCommandOptions options;
    options.cpu = targetCpu;
    options.gpus.assign(targetGpus.begin(), targetGpus.end());
    options.cores = targetCores;
    options.numaNodes = targetNuma;
    return kt::tools::runTarget(options);
  }
  if (tokenizeCommand) {
    kt::tools::TokenizeOptions options;
    options.ggufPath = tokenizeModel;
    options.tokenizerJson = tokenizeJson;
    options.special = tokenizeSpecial;
    options.decode = tokenizeDecode;
    options.addBos = tokenizeAddBos;
    options.arguments.assign(tokenizeInput.begin(), tokenizeInput.end());
    if (options.decode && options.addBos)
      return kt::tools::reportError("--add-bos only applies to encoding, not to --decode");
    return kt::tools::runTokenize(options);
  }
  cl::PrintHelpMessage(false, true);
  return EXIT_FAILURE;
}
