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
};
int runTarget(const TargetCommandOptions &options);

// Prints "ktc: error: <message>" to stderr and returns the failure exit code.
int reportError(const std::string &message);

} // namespace kt::tools
