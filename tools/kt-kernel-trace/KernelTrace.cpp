#include "tools/kt-kernel-trace/KernelTrace.h"

#include <algorithm>
#include <charconv>
#include <map>

namespace kt::kerneltrace {

namespace {

template <typename T> bool parseNumber(const std::string &field, T &out) {
  const char *first = field.data(), *last = field.data() + field.size();
  auto [end, error] = std::from_chars(first, last, out);
  return error == std::errc() && end == last && first != last;
}

} // namespace

StatusOr<std::vector<TraceRecord>> readTrace(std::istream &in, const std::string &path) {
  std::vector<TraceRecord> records;
  std::string line;
  size_t lineNumber = 0;
  auto failure = [&](const std::string &why) {
    return Status::error(path + ":" + std::to_string(lineNumber) + ": " + why +
                         " (kt-kernel-trace reads the files of its CUPTI recorder; record "
                         "again with CUDA_INJECTION64_PATH and KT_KERNEL_TRACE).");
  };
  while (std::getline(in, line)) {
    ++lineNumber;
    if (lineNumber == 1) {
      if (line != kTraceHeader)
        return failure("not a kernel trace: the first line is not \"" + std::string(kTraceHeader) +
                       "\"");
      continue;
    }
    if (line.empty())
      continue;
    // Ten numeric fields, then the name (the rest of the line).
    std::vector<std::string> fields;
    size_t at = 0;
    for (int i = 0; i < 10; ++i) {
      const size_t comma = line.find(',', at);
      if (comma == std::string::npos)
        return failure("expected 11 comma-separated fields");
      fields.push_back(line.substr(at, comma - at));
      at = comma + 1;
    }
    TraceRecord r;
    r.name = line.substr(at);
    if (fields[0] != "kernel" && fields[0] != "copy")
      return failure("unknown record kind \"" + fields[0] + "\"");
    r.kernel = fields[0] == "kernel";
    if (!parseNumber(fields[1], r.start) || !parseNumber(fields[2], r.end) ||
        !parseNumber(fields[3], r.stream) || !parseNumber(fields[4], r.graph) ||
        !parseNumber(fields[5], r.node) || !parseNumber(fields[6], r.gridX) ||
        !parseNumber(fields[7], r.gridY) || !parseNumber(fields[8], r.gridZ) ||
        !parseNumber(fields[9], r.blockX))
      return failure("a field that should be a number is not");
    if (r.end < r.start)
      return failure("the record ends before it starts");
    records.push_back(std::move(r));
  }
  if (lineNumber == 0)
    return Status::error(path + ": empty file; the traced program wrote nothing (did it run "
                                "with CUDA_INJECTION64_PATH set and exit normally?).");
  return records;
}

std::vector<GraphSummary> summarizeGraphs(const std::vector<TraceRecord> &records,
                                          double warmUpFraction) {
  // graph -> its kernels in start order.
  std::map<uint32_t, std::vector<const TraceRecord *>> byGraph;
  for (const TraceRecord &r : records)
    if (r.kernel && r.graph != 0)
      byGraph[r.graph].push_back(&r);

  std::vector<std::pair<double, GraphSummary>> summaries; // (total seconds, summary)
  for (auto &[graph, kernelsOfGraph] : byGraph) {
    std::stable_sort(
        kernelsOfGraph.begin(), kernelsOfGraph.end(),
        [](const TraceRecord *a, const TraceRecord *b) { return a->start < b->start; });
    std::vector<std::vector<const TraceRecord *>> launches;
    std::vector<uint64_t> nodesOfLaunch;
    for (const TraceRecord *r : kernelsOfGraph) {
      if (launches.empty() ||
          std::find(nodesOfLaunch.begin(), nodesOfLaunch.end(), r->node) != nodesOfLaunch.end()) {
        launches.emplace_back();
        nodesOfLaunch.clear();
      }
      launches.back().push_back(r);
      nodesOfLaunch.push_back(r->node);
    }
    GraphSummary summary;
    summary.graph = graph;
    const size_t warmUp = std::min(launches.size() - 1,
                                   size_t(std::max(0.0, warmUpFraction) * double(launches.size())));
    std::map<size_t, size_t> countOfSizes;
    for (size_t i = warmUp; i < launches.size(); ++i)
      ++countOfSizes[launches[i].size()];
    size_t kernels = 0, most = 0;
    for (auto [size, count] : countOfSizes)
      if (count > most)
        kernels = size, most = count;
    summary.kernels.resize(kernels);
    double totalSeconds = 0;
    for (size_t i = 0; i < launches.size(); ++i) {
      const auto &launch = launches[i];
      if (i < warmUp || launch.size() != kernels) {
        ++summary.skippedLaunches;
        continue;
      }
      ++summary.launches;
      uint64_t latestEnd = launch.front()->start;
      for (size_t k = 0; k < kernels; ++k) {
        const TraceRecord &r = *launch[k];
        KernelNodeSummary &node = summary.kernels[k];
        if (summary.launches == 1) {
          node.name = r.name;
          node.gridX = r.gridX, node.gridY = r.gridY, node.gridZ = r.gridZ, node.blockX = r.blockX;
        }
        node.meanSeconds += double(r.end - r.start) * 1e-9;
        node.meanAddedSeconds += double(r.end > latestEnd ? r.end - latestEnd : 0) * 1e-9;
        latestEnd = std::max(latestEnd, r.end);
      }
      const double span = double(latestEnd - launch.front()->start) * 1e-9;
      summary.meanSpanSeconds += span;
      totalSeconds += span;
    }
    if (summary.launches == 0)
      continue;
    for (KernelNodeSummary &node : summary.kernels) {
      node.meanSeconds /= double(summary.launches);
      node.meanAddedSeconds /= double(summary.launches);
    }
    summary.meanSpanSeconds /= double(summary.launches);
    summaries.emplace_back(totalSeconds, std::move(summary));
  }
  std::stable_sort(summaries.begin(), summaries.end(),
                   [](const auto &a, const auto &b) { return a.first > b.first; });
  std::vector<GraphSummary> out;
  for (auto &s : summaries)
    out.push_back(std::move(s.second));
  return out;
}

} // namespace kt::kerneltrace
