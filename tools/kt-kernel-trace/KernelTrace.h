// Kernel traces of CUDA graphs: the records the CUPTI recorder
// (CuptiRecorder.cpp, loaded through CUDA_INJECTION64_PATH) writes, read
// back and summarized per graph: each kernel node's mean time and how much
// it adds to the graph's span. Nsight Compute times kernels one at a time;
// inside a decode graph, with launches overlapping, what a kernel costs is
// the time its end adds to the ends before it.
#pragma once

#include "runtime/support/Status.h"

#include <cstdint>
#include <istream>
#include <string>
#include <vector>

namespace kt::kerneltrace {

// One line of a trace file.
struct TraceRecord {
  bool kernel = true; // else a memory copy
  uint64_t start = 0; // GPU timestamps, ns
  uint64_t end = 0;
  uint32_t stream = 0;
  uint32_t graph = 0; // 0: not launched from a graph
  uint64_t node = 0;  // the graph node (each launch of a graph runs each once)
  int gridX = 0, gridY = 0, gridZ = 0, blockX = 0;
  std::string name; // the kernel's entry, or the copy's direction
};

// The header line the recorder writes and readTrace expects.
inline constexpr const char *kTraceHeader =
    "kind,start,end,stream,graph,node,grid_x,grid_y,grid_z,block_x,name";

// Parses a trace file's text; `path` names it in errors (with the line).
StatusOr<std::vector<TraceRecord>> readTrace(std::istream &in, const std::string &path);

struct KernelNodeSummary {
  std::string name;
  int gridX = 0, gridY = 0, gridZ = 0, blockX = 0;
  double meanSeconds = 0;      // from its start to its end
  double meanAddedSeconds = 0; // its end minus the latest end before it in the launch
};

struct GraphSummary {
  uint32_t graph = 0;
  size_t launches = 0;                    // summarized (the same kernel count, past the warm-up)
  size_t skippedLaunches = 0;             // warm-up, or another kernel count
  double meanSpanSeconds = 0;             // first start to last end
  std::vector<KernelNodeSummary> kernels; // in start order within a launch
};

// Each graph's launches (its kernels in start order, a launch ending where
// a node comes again), the first
// `warmUpFraction` of them skipped, summarized over those with the most
// common kernel count; graphs in order of their total time, largest first.
std::vector<GraphSummary> summarizeGraphs(const std::vector<TraceRecord> &records,
                                          double warmUpFraction);

} // namespace kt::kerneltrace
