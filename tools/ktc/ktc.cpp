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
  for (cl::SubCommand *sub :
       {&*cl::TopLevelSubCommand, &inspectCommand, &importCommand, &targetCommand})
    cl::HideUnrelatedOptions(ktcCategory, *sub);
  cl::ParseCommandLineOptions(
      argc, argv,
      "ktc: compiles DeepSeek-class MoE models (GGUF) into execution plans\n\n"
      "  ktc inspect MODEL                       model overview\n"
      "  ktc inspect MODEL --tensor NAME --rows A:B   dequantized tensor values\n"
      "  ktc import MODEL [--summary] [-o FILE]  print the model graph (ktgraph IR)\n"
      "  ktc target [--target-cpu C] [--target-gpu ARCH:MEM]...  the target machine\n\n"
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
  if (targetCommand) {
    kt::tools::TargetCommandOptions options;
    options.cpu = targetCpu;
    options.gpus.assign(targetGpus.begin(), targetGpus.end());
    options.cores = targetCores;
    return kt::tools::runTarget(options);
  }
  cl::PrintHelpMessage(false, true);
  return EXIT_FAILURE;
}
