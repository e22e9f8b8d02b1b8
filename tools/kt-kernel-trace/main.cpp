// kt-kernel-trace: summarizes a kernel trace recorded with the CUPTI
// recorder (libkt-cupti-trace.so) per CUDA graph: each kernel node's mean
// time and the time it adds to the graph's span. See docs/gpu-execution.md.
#include "tools/kt-kernel-trace/KernelTrace.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <fstream>

using namespace kt::kerneltrace;

int main(int argc, char **argv) {
  CLI::App app{
      "Summarizes a trace of the kernels a program ran on the GPU, per CUDA graph: each kernel "
      "node's mean time from start to end and the mean time its end adds to the ends before it "
      "in the same launch (what it costs the graph when launches overlap). Record a trace with "
      "the CUPTI recorder built beside this tool, e.g.\n"
      "  CUDA_INJECTION64_PATH=$PWD/build/lib/libkt-cupti-trace.so KT_KERNEL_TRACE=trace.csv \\\n"
      "    build/bin/ktrun plan --bench --bench-tokens 32\n"
      "  build/bin/kt-kernel-trace trace.csv --graphs 3",
      "kt-kernel-trace"};
  std::string path;
  double warmUp = 0.25;
  size_t graphs = 0;
  uint32_t only = 0;
  app.add_option("trace", path, "Trace file (KT_KERNEL_TRACE of the recorded run)")
      ->required()
      ->check(CLI::ExistingFile);
  app.add_option("--warm-up", warmUp, "Fraction of each graph's first launches left out")
      ->check(CLI::Range(0.0, 0.99))
      ->capture_default_str();
  app.add_option("--graphs", graphs, "Show only the N graphs of the most GPU time (0: all)");
  app.add_option("--graph", only, "Show only the graph with this id (as the trace numbers it)");
  CLI11_PARSE(app, argc, argv);

  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "kt-kernel-trace: cannot read %s\n", path.c_str());
    return 1;
  }
  kt::StatusOr<std::vector<TraceRecord>> records = readTrace(in, path);
  if (!records) {
    std::fprintf(stderr, "kt-kernel-trace: %s\n", records.message().c_str());
    return 1;
  }
  const std::vector<GraphSummary> summaries = summarizeGraphs(*records, warmUp);
  size_t shown = 0;
  for (const GraphSummary &g : summaries) {
    if ((only != 0 && g.graph != only) || (graphs != 0 && shown == graphs))
      continue;
    ++shown;
    std::printf("graph %u: %zu launches summarized (%zu skipped), %zu kernels, span %.1f us\n",
                g.graph, g.launches, g.skippedLaunches, g.kernels.size(), g.meanSpanSeconds * 1e6);
    std::printf("  %3s  %-28s %-16s %6s %10s %10s\n", "#", "kernel", "grid", "block", "time us",
                "added us");
    for (size_t i = 0; i < g.kernels.size(); ++i) {
      const KernelNodeSummary &k = g.kernels[i];
      const std::string grid =
          std::to_string(k.gridX) + "x" + std::to_string(k.gridY) + "x" + std::to_string(k.gridZ);
      std::printf("  %3zu  %-28.28s %-16s %6d %10.1f %10.1f\n", i, k.name.c_str(), grid.c_str(),
                  k.blockX, k.meanSeconds * 1e6, k.meanAddedSeconds * 1e6);
    }
  }
  if (shown == 0) {
    std::fprintf(stderr, "kt-kernel-trace: %s holds no graph launches%s\n", path.c_str(),
                 only != 0 ? " of that graph" : "");
    return 1;
  }
  return 0;
}
